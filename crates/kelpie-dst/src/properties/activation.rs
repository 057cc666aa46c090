//! Properties of placement, leases, fencing, activation and migration.
//!
//! Vocabulary: an *activation* is one instance of an actor on one node,
//! created by a successful claim that gave it an *epoch*. The *placement* is
//! the directory's record (holder and epoch); the *fence* is the record every
//! state commit is checked against. A *lease event* is a claim or renewal the
//! directory accepted, or a release, in the order the directory applied them.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    violation, Ident, PropertyResult, CONSISTENT_HOLDER, FENCING_TOKEN_MONOTONIC, GRACEFUL_DEACTIVATION,
    GRACEFUL_SHUTDOWN, LEASE_UNIQUENESS, LIFECYCLE_ORDERING, MEMBERSHIP_INCARNATION,
    MIGRATION_OWNERSHIP_CONSISTENCY, NO_SPLIT_BRAIN, PLACEMENT_CONSISTENCY, SINGLE_ACTIVATION,
};

/// Where an activation is in its life (the runtime's lifecycle states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Deactivated,
    Activating,
    Active,
    Deactivating,
}

/// The lifecycle transitions a correct runtime may take, and no others.
pub const ALLOWED_TRANSITIONS: &[(Phase, Phase)] = &[
    (Phase::Deactivated, Phase::Activating),
    (Phase::Activating, Phase::Active),
    (Phase::Activating, Phase::Deactivated),
    (Phase::Active, Phase::Deactivating),
    (Phase::Deactivating, Phase::Deactivated),
];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedActivation<A, N> {
    pub actor: A,
    pub node: N,
    pub epoch: u64,
    pub phase: Phase,
}

/// The directory's record for one actor: `holder` is `None` after a release.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedPlacement<A, N> {
    pub actor: A,
    pub holder: Option<N>,
    pub epoch: u64,
}

/// The record a fenced commit is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedFence<A, N> {
    pub actor: A,
    pub node: N,
    pub epoch: u64,
}

/// One change the directory applied, in application order. Times are those
/// of the clock that decided the change (the lease authority's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseEvent<A, N> {
    Granted { actor: A, node: N, epoch: u64, granted_at_ms: u64, expires_at_ms: u64 },
    Released { actor: A, node: N, epoch: u64 },
}

/// A state commit that storage accepted; `seq` orders commits of one store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedCommit<A, N> {
    pub actor: A,
    pub node: N,
    pub epoch: u64,
    pub seq: u64,
}

/// Active activations grouped by actor.
fn active_by_actor<A: Ident, N: Ident>(
    activations: &[ObservedActivation<A, N>],
) -> BTreeMap<&A, Vec<&ObservedActivation<A, N>>> {
    let mut grouped: BTreeMap<&A, Vec<&ObservedActivation<A, N>>> = BTreeMap::new();
    for activation in activations.iter().filter(|a| a.phase == Phase::Active) {
        grouped.entry(&activation.actor).or_default().push(activation);
    }
    grouped
}

fn placement_of<'p, A: Ident, N: Ident>(
    placements: &'p [ObservedPlacement<A, N>],
    actor: &A,
) -> Option<&'p ObservedPlacement<A, N>> {
    placements.iter().find(|p| &p.actor == actor)
}

/// SingleActivation: per actor, no two Active activations share an epoch,
/// and at most one Active activation holds the current epoch (so at most one
/// can still commit; older ones are zombies that fencing cuts off).
pub fn single_activation<A: Ident, N: Ident>(
    activations: &[ObservedActivation<A, N>],
    placements: &[ObservedPlacement<A, N>],
) -> PropertyResult {
    for (actor, active) in active_by_actor(activations) {
        let epochs: BTreeSet<u64> = active.iter().map(|a| a.epoch).collect();
        if epochs.len() != active.len() {
            return violation(
                SINGLE_ACTIVATION,
                format!("actor {actor:?} has two activations in one epoch: {active:?}"),
            );
        }
        let current = placement_of(placements, actor).map(|p| p.epoch);
        let live: Vec<_> = active.iter().filter(|a| Some(a.epoch) == current).collect();
        if live.len() > 1 {
            return violation(
                SINGLE_ACTIVATION,
                format!("actor {actor:?} has {} unfenced activations: {live:?}", live.len()),
            );
        }
    }
    Ok(())
}

/// ConsistentHolder: an Active activation is never newer than the directory,
/// and one at the directory's epoch runs on the node the directory names.
pub fn consistent_holder<A: Ident, N: Ident>(
    activations: &[ObservedActivation<A, N>],
    placements: &[ObservedPlacement<A, N>],
) -> PropertyResult {
    for activation in activations.iter().filter(|a| a.phase == Phase::Active) {
        let Some(placement) = placement_of(placements, &activation.actor) else {
            return violation(CONSISTENT_HOLDER, format!("{activation:?} has no placement"));
        };
        if activation.epoch > placement.epoch {
            return violation(CONSISTENT_HOLDER, format!("{activation:?} is newer than {placement:?}"));
        }
        if activation.epoch == placement.epoch && placement.holder.as_ref() != Some(&activation.node) {
            return violation(
                CONSISTENT_HOLDER,
                format!("{activation:?} is current but {placement:?} names another holder"),
            );
        }
    }
    Ok(())
}

/// PlacementConsistency: the directory and the fencing record agree on the
/// epoch, and on the node whenever the directory names a holder.
pub fn placement_consistency<A: Ident, N: Ident>(
    placements: &[ObservedPlacement<A, N>],
    fences: &[ObservedFence<A, N>],
) -> PropertyResult {
    for placement in placements {
        let fence = fences.iter().find(|f| f.actor == placement.actor);
        let agrees = match fence {
            None => placement.epoch == 0,
            Some(fence) => {
                fence.epoch == placement.epoch && placement.holder.as_ref().is_none_or(|h| h == &fence.node)
            }
        };
        if !agrees {
            return violation(PLACEMENT_CONSISTENCY, format!("directory {placement:?} but fence {fence:?}"));
        }
    }
    Ok(())
}

/// LeaseUniqueness: a lease goes to a node only when no other node's lease
/// is running at that instant (by the deciding clock).
pub fn lease_uniqueness<A: Ident, N: Ident>(events: &[LeaseEvent<A, N>]) -> PropertyResult {
    let mut current: BTreeMap<&A, (&N, u64)> = BTreeMap::new();
    for event in events {
        match event {
            LeaseEvent::Granted { actor, node, granted_at_ms, expires_at_ms, .. } => {
                assert!(granted_at_ms <= expires_at_ms, "a lease cannot end before it starts: {event:?}");
                if let Some((holder, until_ms)) = current.get(actor) {
                    if *holder != node && granted_at_ms < until_ms {
                        return violation(
                            LEASE_UNIQUENESS,
                            format!("{event:?} while {holder:?} holds a lease until {until_ms} ms"),
                        );
                    }
                }
                current.insert(actor, (node, *expires_at_ms));
            }
            LeaseEvent::Released { actor, .. } => {
                current.remove(actor);
            }
        }
    }
    Ok(())
}

/// FencingTokenMonotonic: per actor, granted epochs never decrease (a new
/// holder always gets a larger one), and accepted commits never carry an
/// epoch older than an earlier accepted commit or newer than any grant.
pub fn fencing_token_monotonic<A: Ident, N: Ident>(
    events: &[LeaseEvent<A, N>],
    commits: &[ObservedCommit<A, N>],
) -> PropertyResult {
    let mut granted: BTreeMap<&A, (&N, u64)> = BTreeMap::new();
    for event in events {
        if let LeaseEvent::Granted { actor, node, epoch, .. } = event {
            if let Some((last_node, last_epoch)) = granted.get(actor) {
                let backwards = epoch < last_epoch || (epoch == last_epoch && last_node != &node);
                if backwards {
                    return violation(
                        FENCING_TOKEN_MONOTONIC,
                        format!("{event:?} after epoch {last_epoch} of {last_node:?}"),
                    );
                }
            }
            granted.insert(actor, (node, *epoch));
        }
    }
    let mut last_commit: BTreeMap<&A, &ObservedCommit<A, N>> = BTreeMap::new();
    for commit in commits {
        if let Some(previous) = last_commit.get(&commit.actor) {
            assert!(previous.seq < commit.seq, "commits must be observed in commit order");
            if commit.epoch < previous.epoch {
                return violation(
                    FENCING_TOKEN_MONOTONIC,
                    format!("{commit:?} committed after {previous:?}"),
                );
            }
        }
        if granted.get(&commit.actor).is_some_and(|(_, epoch)| commit.epoch > *epoch) {
            return violation(FENCING_TOKEN_MONOTONIC, format!("{commit:?} carries an epoch never granted"));
        }
        last_commit.insert(&commit.actor, commit);
    }
    Ok(())
}

/// NoSplitBrain: for each actor and epoch, commits come from one node only.
pub fn no_split_brain<A: Ident, N: Ident>(commits: &[ObservedCommit<A, N>]) -> PropertyResult {
    let mut writer: BTreeMap<(&A, u64), &N> = BTreeMap::new();
    for commit in commits {
        let first = *writer.entry((&commit.actor, commit.epoch)).or_insert(&commit.node);
        if first != &commit.node {
            return violation(
                NO_SPLIT_BRAIN,
                format!("{commit:?} but {first:?} also committed in epoch {}", commit.epoch),
            );
        }
    }
    Ok(())
}

/// LifecycleOrdering: every observed transition is an allowed one.
pub fn lifecycle_ordering(transitions: &[(Phase, Phase)]) -> PropertyResult {
    match transitions.iter().find(|t| !ALLOWED_TRANSITIONS.contains(t)) {
        Some((from, to)) => violation(LIFECYCLE_ORDERING, format!("illegal transition {from:?} -> {to:?}")),
        None => Ok(()),
    }
}

/// What became of one request sent to a runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestFate {
    /// Accepted and still waiting for an answer.
    Waiting,
    /// Answered, successfully or with an error the caller saw.
    Answered,
    /// Refused at the door (for example with a shutdown error).
    Refused,
}

/// GracefulShutdown: once shutdown has completed, no request is still waiting.
pub fn graceful_shutdown(shutdown_complete: bool, requests: &[RequestFate]) -> PropertyResult {
    let waiting = requests.iter().filter(|f| **f == RequestFate::Waiting).count();
    if shutdown_complete && waiting > 0 {
        return violation(
            GRACEFUL_SHUTDOWN,
            format!("shutdown completed with {waiting} request(s) never answered"),
        );
    }
    Ok(())
}

/// GracefulDeactivation: every request an activation accepted into its
/// mailbox is answered by it before it finishes (`unanswered`: the requests
/// whose activation finished without answering them). GracefulShutdown is
/// this property for every activation at once.
pub fn graceful_deactivation<K: Ident>(unanswered: &BTreeSet<K>) -> PropertyResult {
    if let Some(first) = unanswered.first() {
        return violation(
            GRACEFUL_DEACTIVATION,
            format!(
                "{} request(s) accepted by an activation that finished without answering them, first {first:?}",
                unanswered.len()
            ),
        );
    }
    Ok(())
}

/// One actor being moved from `source` to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedMigration<N> {
    pub source: N,
    pub target: N,
    /// The directory's holder (the owner).
    pub owner: Option<N>,
    pub source_active: bool,
    pub target_active: bool,
}

/// MigrationOwnershipConsistency: the owner is always exactly one of source
/// and target, the two are never active together, and an active one owns.
pub fn migration_ownership_consistency<N: Ident>(migration: &ObservedMigration<N>) -> PropertyResult {
    let m = migration;
    let owner_ok = m.owner.as_ref().is_some_and(|o| *o == m.source || *o == m.target);
    let both = m.source_active && m.target_active;
    let active_without_ownership = (m.source_active && m.owner.as_ref() != Some(&m.source))
        || (m.target_active && m.owner.as_ref() != Some(&m.target));
    if !owner_ok || both || active_without_ownership {
        return violation(MIGRATION_OWNERSHIP_CONSISTENCY, format!("{m:?}"));
    }
    Ok(())
}

/// What the membership table says about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberStatus {
    Absent,
    Up,
    Failed,
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedMember<N> {
    pub node: N,
    pub status: MemberStatus,
    pub incarnation: u64,
    /// Highest incarnation of this node ever declared failed or left.
    pub retired_incarnation: Option<u64>,
}

/// MembershipIncarnation: a node listed Up is at an incarnation newer than
/// every incarnation of it that was declared failed or that left.
pub fn membership_incarnation<N: Ident>(members: &[ObservedMember<N>]) -> PropertyResult {
    for member in members.iter().filter(|m| m.status == MemberStatus::Up) {
        if member.retired_incarnation.is_some_and(|retired| member.incarnation <= retired) {
            return violation(
                MEMBERSHIP_INCARNATION,
                format!("{member:?} is up again under a retired incarnation"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(node: u8, epoch: u64) -> ObservedActivation<u8, u8> {
        ObservedActivation { actor: 0, node, epoch, phase: Phase::Active }
    }
    fn placement(holder: Option<u8>, epoch: u64) -> ObservedPlacement<u8, u8> {
        ObservedPlacement { actor: 0, holder, epoch }
    }
    fn grant(node: u8, epoch: u64, at: u64, until: u64) -> LeaseEvent<u8, u8> {
        LeaseEvent::Granted { actor: 0, node, epoch, granted_at_ms: at, expires_at_ms: until }
    }
    fn commit(node: u8, epoch: u64, seq: u64) -> ObservedCommit<u8, u8> {
        ObservedCommit { actor: 0, node, epoch, seq }
    }

    #[test]
    fn single_activation_allows_a_zombie_but_not_two_current_holders() {
        let zombie_and_owner = [active(1, 1), active(2, 2)];
        assert_eq!(single_activation(&zombie_and_owner, &[placement(Some(2), 2)]), Ok(()));
        let err = single_activation(&[active(1, 2), active(2, 2)], &[placement(Some(2), 2)]).unwrap_err();
        assert_eq!(err.property, SINGLE_ACTIVATION);
        assert!(err.detail.contains("two activations in one epoch"), "{err}");
    }

    #[test]
    fn consistent_holder_rejects_a_current_activation_on_the_wrong_node() {
        assert_eq!(consistent_holder(&[active(1, 1), active(2, 2)], &[placement(Some(2), 2)]), Ok(()));
        let err = consistent_holder(&[active(1, 2)], &[placement(Some(2), 2)]).unwrap_err();
        assert_eq!(err.property, CONSISTENT_HOLDER);
        let err = consistent_holder(&[active(1, 3)], &[placement(Some(1), 2)]).unwrap_err();
        assert!(err.detail.contains("newer"), "{err}");
    }

    #[test]
    fn placement_consistency_compares_directory_and_fence() {
        let fence = ObservedFence { actor: 0u8, node: 1u8, epoch: 2 };
        assert_eq!(placement_consistency(&[placement(Some(1), 2)], std::slice::from_ref(&fence)), Ok(()));
        assert_eq!(placement_consistency(&[placement(None, 2)], std::slice::from_ref(&fence)), Ok(()));
        let err = placement_consistency(&[placement(Some(2), 2)], &[fence]).unwrap_err();
        assert_eq!(err.property, PLACEMENT_CONSISTENCY);
    }

    #[test]
    fn lease_uniqueness_rejects_a_grant_inside_another_nodes_lease() {
        let handover = [grant(1, 1, 0, 10), grant(1, 1, 5, 15), grant(2, 2, 15, 25)];
        assert_eq!(lease_uniqueness(&handover), Ok(()));
        let released =
            [grant(1, 1, 0, 10), LeaseEvent::Released { actor: 0, node: 1, epoch: 1 }, grant(2, 2, 3, 13)];
        assert_eq!(lease_uniqueness(&released), Ok(()));
        let err = lease_uniqueness(&[grant(1, 1, 0, 10), grant(2, 2, 9, 19)]).unwrap_err();
        assert_eq!(err.property, LEASE_UNIQUENESS);
        assert!(err.detail.contains("until 10 ms"), "{err}");
    }

    #[test]
    fn fencing_token_monotonic_rejects_a_zombie_commit_and_a_reused_epoch() {
        let grants = [grant(1, 1, 0, 10), grant(2, 2, 10, 20)];
        assert_eq!(fencing_token_monotonic(&grants, &[commit(1, 1, 1), commit(2, 2, 2)]), Ok(()));
        let err = fencing_token_monotonic(&grants, &[commit(2, 2, 1), commit(1, 1, 2)]).unwrap_err();
        assert_eq!(err.property, FENCING_TOKEN_MONOTONIC);
        let reused = [grant(1, 1, 0, 10), grant(2, 1, 10, 20)];
        assert!(fencing_token_monotonic(&reused, &[]).is_err());
        let never_granted = fencing_token_monotonic(&grants, &[commit(2, 3, 1)]).unwrap_err();
        assert!(never_granted.detail.contains("never granted"), "{never_granted}");
    }

    #[test]
    fn no_split_brain_rejects_two_writers_in_one_epoch() {
        assert_eq!(no_split_brain(&[commit(1, 1, 1), commit(2, 2, 2), commit(2, 2, 3)]), Ok(()));
        let err = no_split_brain(&[commit(1, 1, 1), commit(2, 1, 2)]).unwrap_err();
        assert_eq!(err.property, NO_SPLIT_BRAIN);
    }

    #[test]
    fn lifecycle_ordering_accepts_exactly_the_five_transitions() {
        assert_eq!(lifecycle_ordering(ALLOWED_TRANSITIONS), Ok(()));
        let err = lifecycle_ordering(&[(Phase::Active, Phase::Activating)]).unwrap_err();
        assert_eq!(err.detail, "illegal transition Active -> Activating");
    }

    #[test]
    fn graceful_shutdown_rejects_a_waiting_request_after_completion() {
        let fates = [RequestFate::Answered, RequestFate::Waiting];
        assert_eq!(graceful_shutdown(false, &fates), Ok(()));
        assert_eq!(graceful_shutdown(true, &[RequestFate::Answered, RequestFate::Refused]), Ok(()));
        let err = graceful_shutdown(true, &fates).unwrap_err();
        assert!(err.detail.contains("1 request(s)"), "{err}");
    }

    #[test]
    fn graceful_deactivation_rejects_an_unanswered_request() {
        assert_eq!(graceful_deactivation::<u8>(&BTreeSet::new()), Ok(()));
        let err = graceful_deactivation(&BTreeSet::from([7u8, 9])).unwrap_err();
        assert_eq!(err.property, GRACEFUL_DEACTIVATION);
        assert!(err.detail.contains("2 request(s)") && err.detail.contains("first 7"), "{err}");
    }

    #[test]
    fn migration_ownership_requires_one_owner_and_one_active_at_most() {
        let at = |owner, source_active, target_active| ObservedMigration {
            source: 1u8,
            target: 2u8,
            owner,
            source_active,
            target_active,
        };
        assert_eq!(migration_ownership_consistency(&at(Some(1), true, false)), Ok(()));
        assert_eq!(migration_ownership_consistency(&at(Some(2), false, false)), Ok(()));
        assert!(migration_ownership_consistency(&at(None, false, false)).is_err());
        assert!(migration_ownership_consistency(&at(Some(1), true, true)).is_err());
        assert!(migration_ownership_consistency(&at(Some(1), false, true)).is_err());
    }

    #[test]
    fn membership_incarnation_rejects_a_resurrected_member() {
        let member = |status, incarnation, retired| ObservedMember {
            node: 1u8,
            status,
            incarnation,
            retired_incarnation: retired,
        };
        assert_eq!(membership_incarnation(&[member(MemberStatus::Up, 2, Some(1))]), Ok(()));
        assert_eq!(membership_incarnation(&[member(MemberStatus::Failed, 1, Some(1))]), Ok(()));
        let err = membership_incarnation(&[member(MemberStatus::Up, 1, Some(1))]).unwrap_err();
        assert_eq!(err.property, MEMBERSHIP_INCARNATION);
    }
}
