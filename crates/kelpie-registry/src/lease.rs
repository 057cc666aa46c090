//! The lease state machine, pure: `step(current, command) -> (next, outcome)`.
//!
//! A placement record keeps its fencing epoch forever: releasing an actor
//! clears the holder but not the epoch, so the next claim anywhere gets a
//! strictly larger epoch and every commit of an older activation is fenced.
//!
//! Rules:
//! - Claim succeeds when nobody holds the actor, the holder's lease has
//!   expired, or the claimant is the holder itself (a node claims only what it
//!   does not have active, so its own old activation is dead or stale and must
//!   be fenced too). A successful claim bumps the epoch.
//! - Renew succeeds only for the current holder with the current epoch before
//!   expiry; it extends the lease and keeps the epoch.
//! - Release succeeds only for the current holder with the current epoch.

use kelpie_core::limits::LEASE_DURATION_MS;
use kelpie_core::{ActorId, NodeId};
use serde::{Deserialize, Serialize};

/// Longest lease a caller may ask for: a lease that outlives many failure
/// detection rounds would keep a dead node's actors unavailable.
pub const LEASE_DURATION_MS_MAX: u64 = 10 * LEASE_DURATION_MS;

/// What the directory stores per actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub actor_id: ActorId,
    /// Increases by one with every successful claim; never decreases.
    pub epoch: u64,
    pub holder: Option<Holder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node_id: NodeId,
    pub lease_expires_at_ms: u64,
}

impl PlacementRecord {
    /// The holder whose lease is still running at `now_ms`, if any.
    pub fn live_holder(&self, now_ms: u64) -> Option<&Holder> {
        self.holder.as_ref().filter(|h| now_ms < h.lease_expires_at_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseCommand {
    Claim { node_id: NodeId, now_ms: u64, lease_ms: u64 },
    Renew { node_id: NodeId, epoch: u64, now_ms: u64, lease_ms: u64 },
    Release { node_id: NodeId, epoch: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The claimant now holds the actor at `record.epoch`.
    Claimed(PlacementRecord),
    /// Another node holds a live lease.
    HeldByOther(PlacementRecord),
    Renewed(PlacementRecord),
    Released(PlacementRecord),
    /// Renew or release by a node that is not the current holder at that
    /// epoch, or whose lease already ran out. `current` is what is stored.
    NotHolder {
        current: Option<PlacementRecord>,
    },
}

/// Decides one command against the current record. Returns the record to
/// store (`None`: leave the store unchanged) and the outcome to report.
pub fn step(
    actor_id: &ActorId,
    current: Option<&PlacementRecord>,
    command: &LeaseCommand,
) -> (Option<PlacementRecord>, LeaseOutcome) {
    if let Some(record) = current {
        assert_eq!(&record.actor_id, actor_id, "record of another actor passed to step");
    }
    match command {
        LeaseCommand::Claim { node_id, now_ms, lease_ms } => {
            assert!(*lease_ms > 0 && *lease_ms <= LEASE_DURATION_MS_MAX, "lease {lease_ms} ms out of range");
            if let Some(record) = current {
                if let Some(holder) = record.live_holder(*now_ms) {
                    if &holder.node_id != node_id {
                        return (None, LeaseOutcome::HeldByOther(record.clone()));
                    }
                }
            }
            let epoch = current.map_or(0, |r| r.epoch) + 1;
            let next = PlacementRecord {
                actor_id: actor_id.clone(),
                epoch,
                holder: Some(Holder { node_id: node_id.clone(), lease_expires_at_ms: now_ms + lease_ms }),
            };
            (Some(next.clone()), LeaseOutcome::Claimed(next))
        }
        LeaseCommand::Renew { node_id, epoch, now_ms, lease_ms } => {
            assert!(*lease_ms > 0 && *lease_ms <= LEASE_DURATION_MS_MAX, "lease {lease_ms} ms out of range");
            match current {
                Some(record) if is_holder(record, node_id, *epoch, Some(*now_ms)) => {
                    let mut next = record.clone();
                    next.holder =
                        Some(Holder { node_id: node_id.clone(), lease_expires_at_ms: now_ms + lease_ms });
                    (Some(next.clone()), LeaseOutcome::Renewed(next))
                }
                _ => (None, LeaseOutcome::NotHolder { current: current.cloned() }),
            }
        }
        LeaseCommand::Release { node_id, epoch } => match current {
            Some(record) if is_holder(record, node_id, *epoch, None) => {
                let next = PlacementRecord { actor_id: actor_id.clone(), epoch: record.epoch, holder: None };
                (Some(next.clone()), LeaseOutcome::Released(next))
            }
            _ => (None, LeaseOutcome::NotHolder { current: current.cloned() }),
        },
    }
}

fn is_holder(record: &PlacementRecord, node_id: &NodeId, epoch: u64, live_at_ms: Option<u64>) -> bool {
    let Some(holder) = &record.holder else { return false };
    let live = live_at_ms.is_none_or(|now| now < holder.lease_expires_at_ms);
    record.epoch == epoch && &holder.node_id == node_id && live
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> ActorId {
        ActorId::new("agents", "a1").unwrap()
    }
    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }
    fn claim(name: &str, now_ms: u64) -> LeaseCommand {
        LeaseCommand::Claim { node_id: node(name), now_ms, lease_ms: 100 }
    }

    fn claimed(outcome: LeaseOutcome) -> PlacementRecord {
        match outcome {
            LeaseOutcome::Claimed(record) => record,
            other => panic!("expected Claimed, got {other:?}"),
        }
    }

    #[test]
    fn first_claim_gets_epoch_one_and_a_lease() {
        let (next, outcome) = step(&actor(), None, &claim("n1", 1_000));
        let record = claimed(outcome);
        assert_eq!(next.as_ref(), Some(&record));
        assert_eq!(record.epoch, 1);
        let holder = record.holder.unwrap();
        assert_eq!(holder.node_id, node("n1"));
        assert_eq!(holder.lease_expires_at_ms, 1_100);
    }

    #[test]
    fn live_lease_of_another_node_blocks_claim_until_expiry() {
        let (first, _) = step(&actor(), None, &claim("n1", 0));
        let first = first.unwrap();
        let (next, outcome) = step(&actor(), Some(&first), &claim("n2", 99));
        assert_eq!(next, None, "store must not change");
        assert_eq!(outcome, LeaseOutcome::HeldByOther(first.clone()));
        // At exactly the expiry instant the lease is over.
        let record = claimed(step(&actor(), Some(&first), &claim("n2", 100)).1);
        assert_eq!(record.epoch, 2);
        assert_eq!(record.holder.unwrap().node_id, node("n2"));
    }

    #[test]
    fn reclaim_by_the_same_node_bumps_the_epoch() {
        let first = step(&actor(), None, &claim("n1", 0)).0.unwrap();
        let again = claimed(step(&actor(), Some(&first), &claim("n1", 10)).1);
        assert_eq!(again.epoch, 2);
    }

    #[test]
    fn renew_only_by_current_holder_and_epoch_before_expiry() {
        let first = step(&actor(), None, &claim("n1", 0)).0.unwrap();
        let renew = |name: &str, epoch, now_ms| LeaseCommand::Renew {
            node_id: node(name),
            epoch,
            now_ms,
            lease_ms: 100,
        };

        let (next, outcome) = step(&actor(), Some(&first), &renew("n1", 1, 50));
        let renewed = next.unwrap();
        assert_eq!(outcome, LeaseOutcome::Renewed(renewed.clone()));
        assert_eq!(renewed.epoch, 1, "renewal keeps the epoch");
        assert_eq!(renewed.holder.as_ref().unwrap().lease_expires_at_ms, 150);

        for (name, epoch, now) in [("n2", 1, 50), ("n1", 2, 50), ("n1", 1, 150)] {
            let (next, outcome) = step(&actor(), Some(&renewed), &renew(name, epoch, now));
            assert_eq!(next, None);
            assert_eq!(
                outcome,
                LeaseOutcome::NotHolder { current: Some(renewed.clone()) },
                "{name} {epoch} {now}"
            );
        }
    }

    #[test]
    fn release_keeps_the_epoch_so_the_next_claim_is_newer() {
        let first = step(&actor(), None, &claim("n1", 0)).0.unwrap();
        let stale = LeaseCommand::Release { node_id: node("n1"), epoch: 0 };
        assert_eq!(step(&actor(), Some(&first), &stale).0, None);

        let release = LeaseCommand::Release { node_id: node("n1"), epoch: 1 };
        let (next, outcome) = step(&actor(), Some(&first), &release);
        let released = next.unwrap();
        assert_eq!(outcome, LeaseOutcome::Released(released.clone()));
        assert_eq!(released.epoch, 1);
        assert_eq!(released.holder, None);

        let record = claimed(step(&actor(), Some(&released), &claim("n2", 1)).1);
        assert_eq!(record.epoch, 2);
    }

    #[test]
    fn a_lease_of_ten_default_leases_is_the_longest_accepted() {
        let longest_ms = 10 * LEASE_DURATION_MS;
        let command = LeaseCommand::Claim { node_id: node("n1"), now_ms: 0, lease_ms: longest_ms };
        let record = claimed(step(&actor(), None, &command).1);
        assert_eq!(record.holder.unwrap().lease_expires_at_ms, longest_ms);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn oversized_lease_is_a_caller_bug() {
        let command =
            LeaseCommand::Claim { node_id: node("n1"), now_ms: 0, lease_ms: LEASE_DURATION_MS_MAX + 1 };
        step(&actor(), None, &command);
    }
}
