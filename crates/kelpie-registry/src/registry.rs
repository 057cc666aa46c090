//! [`Registry`]: the lease state machine applied to a [`PlacementStore`],
//! with time from the environment's clock.
//!
//! Each operation reads the record, decides with [`lease::step`], and writes
//! with one compare-and-set; if another writer got there first it decides
//! again on the fresh record, a bounded number of times.
//!
//! Lease expiry uses the clock's wall time, because records outlive the
//! process (a monotonic clock restarts at zero). In a cluster the PostgreSQL
//! backend decides expiry with the database's clock instead.

use std::sync::Arc;

use kelpie_core::limits::LEASE_DURATION_MS;
use kelpie_core::{ActorId, Clock, Error, NodeId, Result};

use crate::lease::{self, LeaseCommand, LeaseOutcome, PlacementRecord, LEASE_DURATION_MS_MAX};
use crate::store::{CasResult, PlacementStore};

/// Most read-decide-write rounds one operation tries before reporting a
/// retriable conflict. Each lost round means another writer made progress.
pub const REGISTRY_CAS_ATTEMPTS_COUNT_MAX: u32 = 16;

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn PlacementStore>,
    clock: Arc<dyn Clock>,
    lease_ms: u64,
}

impl Registry {
    pub fn new(store: Arc<dyn PlacementStore>, clock: Arc<dyn Clock>) -> Self {
        Self::with_lease(store, clock, LEASE_DURATION_MS)
    }

    pub fn with_lease(store: Arc<dyn PlacementStore>, clock: Arc<dyn Clock>, lease_ms: u64) -> Self {
        assert!(lease_ms > 0 && lease_ms <= LEASE_DURATION_MS_MAX, "lease {lease_ms} ms out of range");
        Registry { store, clock, lease_ms }
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Claims `actor_id` for `node_id`: `Claimed` with a new, larger epoch, or
    /// `HeldByOther` while another node's lease runs.
    pub async fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> Result<LeaseOutcome> {
        let lease_ms = self.lease_ms;
        let clock = self.clock.clone();
        let node_id = node_id.clone();
        self.apply(actor_id, move || LeaseCommand::Claim {
            node_id: node_id.clone(),
            now_ms: clock.wall_ms(),
            lease_ms,
        })
        .await
    }

    /// Extends the lease of the holder `node_id` at `epoch`.
    pub async fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> Result<LeaseOutcome> {
        let lease_ms = self.lease_ms;
        let clock = self.clock.clone();
        let node_id = node_id.clone();
        self.apply(actor_id, move || LeaseCommand::Renew {
            node_id: node_id.clone(),
            epoch,
            now_ms: clock.wall_ms(),
            lease_ms,
        })
        .await
    }

    /// Gives up the placement; the epoch stays so later claims are newer.
    pub async fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> Result<LeaseOutcome> {
        let node_id = node_id.clone();
        self.apply(actor_id, move || LeaseCommand::Release { node_id: node_id.clone(), epoch }).await
    }

    /// The wall time leases are judged by.
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    pub async fn lookup(&self, actor_id: &ActorId) -> Result<Option<PlacementRecord>> {
        self.store.get(actor_id).await
    }

    async fn apply(&self, actor_id: &ActorId, command: impl Fn() -> LeaseCommand) -> Result<LeaseOutcome> {
        let mut current = self.store.get(actor_id).await?;
        for _ in 0..REGISTRY_CAS_ATTEMPTS_COUNT_MAX {
            let (next, outcome) = lease::step(actor_id, current.as_ref(), &command());
            let Some(next) = next else { return Ok(outcome) };
            match self.store.compare_and_set(current.clone(), next).await? {
                CasResult::Applied => return Ok(outcome),
                CasResult::Mismatch(stored) => current = stored,
            }
        }
        Err(Error::TransactionConflict { actor_id: actor_id.clone(), key: "placement".to_string() })
    }
}
