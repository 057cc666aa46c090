//! [`PostgresRegistry`]: the cluster's placement directory, in the same
//! PostgreSQL rows (`kelpie_placements`) that fenced state commits check.
//!
//! Every claim, renewal and release is one SQL transaction
//! ([`PostgresBackend::update_leased_placement`]): it takes the actor's lock
//! (the one fenced commits take), reads the row and the database's clock,
//! decides with the pure [`lease::step`] and stores the result. So:
//!
//! - lease expiry is judged by one clock, the database's: a node whose own
//!   clock is skewed or jumps cannot see a live lease as expired, because no
//!   node clock is ever read here;
//! - two nodes claiming at once are serialized by the actor lock: exactly
//!   one wins, the other sees its live lease;
//! - once a claim commits, no commit fenced with an older epoch can succeed,
//!   so a paused or partitioned former owner is harmless.
//!
//! A released placement keeps its node and epoch with no lease, so the next
//! claim anywhere gets a larger epoch.
//!
//! Renewals are batched: one node's renewals that arrive while a batch is
//! in flight wait for it and then go together, as one SQL transaction
//! ([`PostgresBackend::update_leased_placements`], five round trips) that
//! decides each with the same `lease::step`. The runtime renews its
//! activations at shared instants (`kelpie_runtime`), so they arrive
//! together.

use std::sync::{Arc, Mutex};

use kelpie_core::limits::LEASE_DURATION_MS;
use kelpie_core::{ActorId, Error, NodeId, Result};
use kelpie_storage::{LeasedPlacement, Placement, PostgresBackend};
use tokio::sync::oneshot;

use crate::directory::{live_owner_at, LiveOwner};
use crate::lease::{self, Holder, LeaseCommand, LeaseOutcome, PlacementRecord, LEASE_DURATION_MS_MAX};

/// Most renewals sent in one SQL transaction.
pub const RENEWAL_BATCH_COUNT_MAX: usize = 512;

#[derive(Clone)]
pub struct PostgresRegistry {
    backend: Arc<PostgresBackend>,
    lease_ms: u64,
    renewals: Arc<Mutex<Renewals>>,
}

/// A renewal waiting for its batch.
struct PendingRenewal {
    actor_id: ActorId,
    node_id: NodeId,
    epoch: u64,
    reply: oneshot::Sender<Result<LeaseOutcome>>,
}

/// Renewals waiting, and whether a caller is sending batches.
#[derive(Default)]
struct Renewals {
    queue: Vec<PendingRenewal>,
    sending: bool,
    /// Batches sent so far (for tests and operators).
    batches_count: u64,
}

impl Renewals {
    /// The next batch: the oldest renewals, each actor once (a second
    /// renewal of an actor waits for the next batch).
    fn take_batch(&mut self) -> Vec<PendingRenewal> {
        let mut batch: Vec<PendingRenewal> = Vec::new();
        let mut rest = Vec::new();
        for pending in self.queue.drain(..) {
            let duplicate = batch.iter().any(|taken| taken.actor_id == pending.actor_id);
            if duplicate || batch.len() == RENEWAL_BATCH_COUNT_MAX {
                rest.push(pending);
            } else {
                batch.push(pending);
            }
        }
        self.queue = rest;
        batch
    }
}

/// Held by the caller sending batches: if its future is dropped mid-way,
/// the renewals still waiting are answered with an error (retried by their
/// activations) and the next caller sends batches again.
struct SendingGuard<'a> {
    renewals: &'a Mutex<Renewals>,
}

impl Drop for SendingGuard<'_> {
    fn drop(&mut self) {
        let mut renewals = self.renewals.lock().expect("renewals lock");
        renewals.sending = false;
        renewals.queue.clear();
    }
}

impl PostgresRegistry {
    /// A registry on `backend` granting the default lease.
    pub fn new(backend: Arc<PostgresBackend>) -> Self {
        Self::with_lease(backend, LEASE_DURATION_MS)
    }

    pub fn with_lease(backend: Arc<PostgresBackend>, lease_ms: u64) -> Self {
        assert!(lease_ms > 0 && lease_ms <= LEASE_DURATION_MS_MAX, "lease {lease_ms} ms out of range");
        PostgresRegistry { backend, lease_ms, renewals: Arc::default() }
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// How many renewal batches this registry has sent.
    pub fn renewal_batches_count(&self) -> u64 {
        self.renewals.lock().expect("renewals lock").batches_count
    }

    pub async fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> Result<LeaseOutcome> {
        let (node_id, lease_ms) = (node_id.clone(), self.lease_ms);
        self.apply(actor_id, move |now_ms| LeaseCommand::Claim { node_id, now_ms, lease_ms }).await
    }

    /// Renews in a batch with the other renewals waiting (see the module
    /// doc); the answer is the one `lease::step` gives for this renewal.
    pub async fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> Result<LeaseOutcome> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingRenewal { actor_id: actor_id.clone(), node_id: node_id.clone(), epoch, reply };
        let send = {
            let mut renewals = self.renewals.lock().expect("renewals lock");
            renewals.queue.push(pending);
            !std::mem::replace(&mut renewals.sending, true)
        };
        if send {
            self.send_renewals().await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::StorageIo {
                operation: "lease renew",
                reason: "the renewal batch was abandoned".into(),
            })
        })
    }

    /// Sends batches until no renewal waits.
    async fn send_renewals(&self) {
        let guard = SendingGuard { renewals: &self.renewals };
        loop {
            let batch = {
                let mut renewals = self.renewals.lock().expect("renewals lock");
                if renewals.queue.is_empty() {
                    renewals.sending = false;
                    std::mem::forget(guard);
                    return;
                }
                renewals.batches_count += 1;
                renewals.take_batch()
            };
            let actors: Vec<ActorId> = batch.iter().map(|pending| pending.actor_id.clone()).collect();
            let lease_ms = self.lease_ms;
            let mut commands = batch.iter();
            let decided = self
                .backend
                .update_leased_placements(&actors, |actor, current, now_ms| {
                    let pending = commands.next().expect("one decision per renewal");
                    assert_eq!(&pending.actor_id, actor, "decisions come in the order given");
                    let command = LeaseCommand::Renew {
                        node_id: pending.node_id.clone(),
                        epoch: pending.epoch,
                        now_ms,
                        lease_ms,
                    };
                    let record = current.map(record_of);
                    let (next, outcome) = lease::step(actor, record.as_ref(), &command);
                    (next.map(|next| leased_of(next, current)), outcome)
                })
                .await;
            match decided {
                Ok(outcomes) => {
                    assert_eq!(outcomes.len(), batch.len(), "one answer per renewal");
                    for (pending, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = pending.reply.send(Ok(outcome));
                    }
                }
                Err(err) => {
                    for pending in batch {
                        let _ = pending.reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    pub async fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> Result<LeaseOutcome> {
        let node_id = node_id.clone();
        self.apply(actor_id, move |_| LeaseCommand::Release { node_id, epoch }).await
    }

    /// The stored record; lease instants are on the database's clock.
    pub async fn lookup(&self, actor_id: &ActorId) -> Result<Option<PlacementRecord>> {
        let (leased, _) = self.backend.leased_placement(actor_id).await?;
        Ok(leased.as_ref().map(record_of))
    }

    /// The holder whose lease runs now by the database's clock.
    pub async fn live_owner(&self, actor_id: &ActorId) -> Result<Option<LiveOwner>> {
        let (leased, now_ms) = self.backend.leased_placement(actor_id).await?;
        Ok(live_owner_at(leased.as_ref().map(record_of).as_ref(), now_ms))
    }

    async fn apply(
        &self,
        actor_id: &ActorId,
        command: impl FnOnce(u64) -> LeaseCommand + Send,
    ) -> Result<LeaseOutcome> {
        let actor = actor_id.clone();
        self.backend
            .update_leased_placement(actor_id, move |current, now_ms| {
                let record = current.map(record_of);
                let (next, outcome) = lease::step(&actor, record.as_ref(), &command(now_ms));
                (next.map(|next| leased_of(next, current)), outcome)
            })
            .await
    }
}

/// A row as the lease state machine sees it: a holder only while a lease is set.
fn record_of(leased: &LeasedPlacement) -> PlacementRecord {
    let placement = &leased.placement;
    let holder = leased
        .lease_expires_at_ms
        .map(|lease_expires_at_ms| Holder { node_id: placement.node_id.clone(), lease_expires_at_ms });
    PlacementRecord { actor_id: placement.actor_id.clone(), epoch: placement.epoch, holder }
}

/// The row to store for `next`. A record without a holder (a release) keeps
/// the node of the row it replaces, since the column is never empty.
fn leased_of(next: PlacementRecord, current: Option<&LeasedPlacement>) -> LeasedPlacement {
    assert!(next.epoch > 0, "stored placements have a positive epoch");
    let (node_id, lease_expires_at_ms) = match next.holder {
        Some(holder) => (holder.node_id, Some(holder.lease_expires_at_ms)),
        None => {
            let current = current.expect("lease::step releases only a stored placement");
            (current.placement.node_id.clone(), None)
        }
    };
    LeasedPlacement {
        placement: Placement { actor_id: next.actor_id, node_id, epoch: next.epoch },
        lease_expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(actor: &str) -> PendingRenewal {
        let (reply, _) = oneshot::channel();
        PendingRenewal {
            actor_id: ActorId::new("agents", actor).unwrap(),
            node_id: NodeId::new("n1").unwrap(),
            epoch: 1,
            reply,
        }
    }

    #[test]
    fn a_batch_takes_each_actor_once_and_at_most_the_batch_max() {
        let mut renewals = Renewals::default();
        // A second renewal of `a0` and more actors than one batch holds.
        renewals.queue.push(pending("a0"));
        renewals.queue.push(pending("a0"));
        renewals.queue.extend((1..=RENEWAL_BATCH_COUNT_MAX).map(|n| pending(&format!("a{n}"))));
        let first = renewals.take_batch();
        assert_eq!(first.len(), RENEWAL_BATCH_COUNT_MAX);
        let ids: std::collections::BTreeSet<&ActorId> = first.iter().map(|p| &p.actor_id).collect();
        assert_eq!(ids.len(), first.len(), "each actor once");
        assert_eq!(first[0].actor_id.id(), "a0");
        // Left for the next batch, oldest first: a0's second renewal and the
        // last actor past the max.
        let rest: Vec<&str> = renewals.queue.iter().map(|p| p.actor_id.id()).collect();
        assert_eq!(rest, ["a0", &format!("a{RENEWAL_BATCH_COUNT_MAX}")[..]]);
        let second = renewals.take_batch();
        assert_eq!(second.len(), 2);
        assert!(renewals.queue.is_empty());
    }

    fn placement(epoch: u64) -> Placement {
        Placement {
            actor_id: ActorId::new("agents", "a1").unwrap(),
            node_id: NodeId::new("n1").unwrap(),
            epoch,
        }
    }

    #[test]
    fn row_without_lease_has_no_holder_and_round_trips() {
        let unleased = LeasedPlacement { placement: placement(3), lease_expires_at_ms: None };
        let record = record_of(&unleased);
        assert_eq!(record.epoch, 3);
        assert_eq!(record.holder, None);
        assert_eq!(leased_of(record, Some(&unleased)), unleased);
    }

    #[test]
    fn leased_row_maps_to_holder_and_back() {
        let leased = LeasedPlacement { placement: placement(2), lease_expires_at_ms: Some(1_500) };
        let record = record_of(&leased);
        let holder = record.holder.clone().unwrap();
        assert_eq!((holder.node_id.as_str(), holder.lease_expires_at_ms), ("n1", 1_500));
        assert_eq!(leased_of(record, None), leased);
    }
}
