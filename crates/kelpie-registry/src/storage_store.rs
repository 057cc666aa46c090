//! Placements kept where actor state lives, so fencing and placement agree.
//!
//! The fencing epoch and its holder are the actor's placement in
//! `kelpie-storage`: a claim here is `Storage::claim_placement`, an atomic
//! compare-and-set on the epoch, and every state commit checks that same
//! placement in the same transaction as its writes. Leases are node-local on
//! a single node: they live in this process's memory, so after a restart no
//! lease is live and the first request claims the actor again with a newer
//! epoch, fencing anything the previous process left in flight.
//!
//! The PostgreSQL registry of a cluster keeps lease expiry in the database
//! row instead, judged by the database's clock.

use std::collections::BTreeMap;

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Error, Result};
use kelpie_storage::{ClaimOutcome, Placement, Storage};
use std::sync::{Arc, Mutex};

use crate::lease::{Holder, PlacementRecord};
use crate::store::{CasResult, PlacementStore};

/// Lock stripes: compare-and-sets of actors on different stripes run
/// concurrently, so their storage claims can share one group commit.
const CAS_LOCK_STRIPES_COUNT: usize = 64;

pub struct StoragePlacementStore {
    storage: Storage,
    /// Leases of this node's activations.
    leases: Arc<Mutex<BTreeMap<ActorId, Holder>>>,
    /// Held across one compare-and-set, storage claim included, so the
    /// check and the write are one critical section per actor.
    stripes: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// A planted defect (see [`StoragePlacementStore::plant_claim_without_compare`]).
    claim_without_compare: bool,
}

impl StoragePlacementStore {
    pub fn new(storage: Storage) -> Self {
        let stripes = (0..CAS_LOCK_STRIPES_COUNT).map(|_| tokio::sync::Mutex::new(())).collect();
        StoragePlacementStore {
            storage,
            leases: Arc::new(Mutex::new(BTreeMap::new())),
            stripes: Arc::new(stripes),
            claim_without_compare: false,
        }
    }

    /// Plants a defect for the DST to find (FoundationDB's BUGGIFY): the
    /// compare-and-set no longer compares the record its caller read with
    /// the current one before it sets, so two nodes that read the same
    /// free placement both get it (the "distributed TOCTOU" of a claim).
    /// Only tests call this; `kelpie serve` never does.
    pub fn plant_claim_without_compare(mut self) -> Self {
        self.claim_without_compare = true;
        self
    }
}

/// FNV-1a over the id's text: a fixed hash, the same in every process.
fn stripe_of(actor_id: &ActorId) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in actor_id.namespace().bytes().chain([b'/']).chain(actor_id.id().bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % CAS_LOCK_STRIPES_COUNT as u64) as usize
}

fn lease_of(leases: &Mutex<BTreeMap<ActorId, Holder>>, actor_id: &ActorId) -> Option<Holder> {
    leases.lock().unwrap_or_else(|p| p.into_inner()).get(actor_id).cloned()
}

fn record(
    placement: Option<Placement>,
    lease: Option<&Holder>,
    actor_id: &ActorId,
) -> Option<PlacementRecord> {
    let placement = placement?;
    assert_eq!(&placement.actor_id, actor_id);
    let holder = lease.filter(|holder| holder.node_id == placement.node_id).cloned();
    Some(PlacementRecord { actor_id: placement.actor_id, epoch: placement.epoch, holder })
}

impl PlacementStore for StoragePlacementStore {
    fn get(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        let storage = self.storage.clone();
        let leases = self.leases.clone();
        let stripes = self.stripes.clone();
        let actor_id = actor_id.clone();
        Box::pin(async move {
            let _guard = stripes[stripe_of(&actor_id)].lock().await;
            let placement = storage.get_placement(&actor_id).await?;
            Ok(record(placement, lease_of(&leases, &actor_id).as_ref(), &actor_id))
        })
    }

    fn compare_and_set(
        &self,
        expected: Option<PlacementRecord>,
        next: PlacementRecord,
    ) -> BoxFuture<Result<CasResult>> {
        let storage = self.storage.clone();
        let leases = self.leases.clone();
        let stripes = self.stripes.clone();
        let compares = !self.claim_without_compare;
        Box::pin(async move {
            let actor_id = next.actor_id.clone();
            let _guard = stripes[stripe_of(&actor_id)].lock().await;
            let placement = storage.get_placement(&actor_id).await?;
            let current = record(placement, lease_of(&leases, &actor_id).as_ref(), &actor_id);
            if current != expected && compares {
                return Ok(CasResult::Mismatch(current));
            }
            let expected_epoch = current.as_ref().map_or(0, |r| r.epoch);
            if next.epoch != expected_epoch {
                // (The planted defect lets a stale claim through, whose
                // epoch may be any; it is the invariants' to catch.)
                assert!(!compares || next.epoch == expected_epoch + 1, "a claim raises the epoch by one");
                let Some(holder) = &next.holder else {
                    return Err(Error::Internal("claim without a holder".into()));
                };
                let claimed =
                    storage.claim_placement(actor_id.clone(), holder.node_id.clone(), expected_epoch).await?;
                if let ClaimOutcome::Stale { current: stored } = claimed {
                    return Ok(CasResult::Mismatch(record(
                        stored,
                        lease_of(&leases, &actor_id).as_ref(),
                        &actor_id,
                    )));
                }
            }
            let mut leases = leases.lock().unwrap_or_else(|p| p.into_inner());
            match next.holder {
                Some(holder) => leases.insert(actor_id, holder),
                None => leases.remove(&actor_id),
            };
            Ok(CasResult::Applied)
        })
    }
}
