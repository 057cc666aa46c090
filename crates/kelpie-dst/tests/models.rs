//! Exhaustive model checking of the protocol models in `kelpie_dst::models`:
//! each correct model holds every property on every reachable state (the
//! number of states is asserted, so a change to a model's reach is noticed),
//! and each planted bug is refuted with a printed counterexample.

use kelpie_dst::models::activation::{ActivationBug, ActivationModel};
use kelpie_dst::models::idempotent_create::{CreateBug, IdempotentCreateModel};
use kelpie_dst::models::membership::{MembershipBug, MembershipModel};
use kelpie_dst::models::migration::{MigrationBug, MigrationModel};
use kelpie_dst::models::transactions::{TransactionsModel, TxnBug};
use kelpie_dst::models::{check_exhaustively, find_counterexample};
use kelpie_dst::properties::{
    ATOMIC_VISIBILITY, CREATED_AGENT_RETRIEVABLE, FENCING_TOKEN_MONOTONIC, LEASE_UNIQUENESS,
    MEMBERSHIP_INCARNATION, MIGRATION_OWNERSHIP_CONSISTENCY, NO_DUPLICATE_AGENTS, SERIALIZABLE_ISOLATION,
};

/// The last action of a rendered counterexample (the line before the final state).
fn last_action(trace: &[String]) -> &str {
    assert!(trace.len() >= 2, "a counterexample has at least one step: {trace:?}");
    trace[trace.len() - 2].split_once(". ").map_or("", |(_, action)| action)
}

#[test]
fn activation_model_holds_every_property() {
    let explored = check_exhaustively("activation", ActivationModel { bug: None });
    assert_eq!(explored.unique_states, 76_924);
}

#[test]
fn activation_commit_without_fencing_lets_a_zombie_commit() {
    let model = ActivationModel { bug: Some(ActivationBug::CommitWithoutFencing) };
    let trace = find_counterexample("activation/commit-without-fencing", model, FENCING_TOKEN_MONOTONIC);
    assert!(last_action(&trace).starts_with("Commit("), "{trace:?}");
}

#[test]
fn activation_claim_ignoring_live_lease_grants_two_leases() {
    let model = ActivationModel { bug: Some(ActivationBug::ClaimIgnoresLiveLease) };
    let trace = find_counterexample("activation/claim-ignores-live-lease", model, LEASE_UNIQUENESS);
    assert!(trace.iter().filter(|line| line.contains("Claim(")).count() >= 2, "{trace:?}");
}

#[test]
fn idempotent_create_model_holds_every_property() {
    let explored = check_exhaustively("idempotent-create", IdempotentCreateModel { bug: None });
    assert_eq!(explored.unique_states, 146);
}

#[test]
fn a_random_id_per_attempt_creates_a_duplicate_agent_after_a_crash() {
    let trace = find_counterexample(
        "idempotent-create/random-id-per-attempt",
        IdempotentCreateModel { bug: Some(CreateBug::RandomIdPerAttempt) },
        NO_DUPLICATE_AGENTS,
    );
    assert!(trace.iter().any(|line| line.ends_with("Crash")), "{trace:?}");
    assert!(last_action(&trace).starts_with("Commit("), "{trace:?}");
}

#[test]
fn answering_before_the_commit_acknowledges_an_agent_never_stored() {
    let trace = find_counterexample(
        "idempotent-create/answer-before-commit",
        IdempotentCreateModel { bug: Some(CreateBug::AnswerBeforeCommit) },
        CREATED_AGENT_RETRIEVABLE,
    );
    assert!(last_action(&trace).starts_with("Answer("), "{trace:?}");
}

#[test]
fn transactions_model_holds_every_property() {
    let explored = check_exhaustively("transactions", TransactionsModel { bug: None });
    assert_eq!(explored.unique_states, 47);
}

#[test]
fn transactions_without_validation_lose_an_update() {
    let model = TransactionsModel { bug: Some(TxnBug::CommitWithoutValidation) };
    let trace = find_counterexample("transactions/commit-without-validation", model, SERIALIZABLE_ISOLATION);
    // Both transactions incremented x from 0 and both committed: x is 1, not 2.
    assert_eq!(trace.len(), 11, "{trace:?}");
    assert!(trace[10].contains("values: [1, 1]"), "{trace:?}");
}

#[test]
fn transactions_with_non_atomic_apply_show_half_a_commit() {
    let model = TransactionsModel { bug: Some(TxnBug::NonAtomicApply) };
    let trace = find_counterexample("transactions/non-atomic-apply", model, ATOMIC_VISIBILITY);
    assert!(trace.last().is_some_and(|state| state.contains("versions: [1, 0]")), "{trace:?}");
}

#[test]
fn membership_model_holds_every_property() {
    let explored = check_exhaustively("membership", MembershipModel { bug: None });
    assert_eq!(explored.unique_states, 2_892);
}

#[test]
fn membership_resurrecting_a_failed_member_is_refuted() {
    let model = MembershipModel { bug: Some(MembershipBug::ResurrectOnHeartbeat) };
    let trace = find_counterexample("membership/resurrect-on-heartbeat", model, MEMBERSHIP_INCARNATION);
    assert!(trace.iter().any(|line| line.contains("Detect(")), "{trace:?}");
    assert!(last_action(&trace).starts_with("Heartbeat("), "{trace:?}");
}

#[test]
fn migration_model_holds_every_property() {
    let explored = check_exhaustively("migration", MigrationModel { bug: None });
    assert_eq!(explored.unique_states, 73);
}

#[test]
fn migration_activating_target_first_has_two_owners_active() {
    let model = MigrationModel { bug: Some(MigrationBug::ActivateTargetBeforeSourceDeactivates) };
    let trace =
        find_counterexample("migration/activate-target-first", model, MIGRATION_OWNERSHIP_CONSISTENCY);
    assert_eq!(last_action(&trace), "ActivateTarget", "{trace:?}");
}
