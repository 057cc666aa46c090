//! One behaviour, two backends: the same test bodies drive the in-memory
//! directory (a hand-driven clock) and the PostgreSQL registry (the
//! database's real clock, a real server started in a temp dir), so the
//! cluster backend's claim/renew/release semantics are those of `lease::step`.
//!
//! One PostgreSQL server serves the whole binary: a single test starts it and
//! runs each scenario on a database of its own.

// Real time passes for the PostgreSQL scenarios (its clock cannot be driven),
// and concurrent claims race real tokio tasks on purpose.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Error, NodeId};
use kelpie_registry::{
    LeaseOutcome, LiveOwner, MemoryPlacementStore, PlacementDirectory, PlacementRecord, PostgresRegistry,
    Registry,
};
use kelpie_storage::test_support::PostgresServer;
use kelpie_storage::{FenceCondition, PostgresBackend, Storage};
use support::ManualClock;

/// Lease of the shared scenarios: long enough that a PostgreSQL round trip on
/// a loaded machine stays well inside the 40% margins the scenario keeps.
const SCENARIO_LEASE_MS: u64 = 1_000;

/// Lets `ms` milliseconds pass on the backend's clock.
type Pass = Box<dyn Fn(u64) -> BoxFuture<()>>;

fn actor(id: &str) -> ActorId {
    ActorId::new("agents", id).unwrap()
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn claimed(outcome: LeaseOutcome) -> PlacementRecord {
    match outcome {
        LeaseOutcome::Claimed(record) => record,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

fn expiry(record: &PlacementRecord) -> u64 {
    record.holder.as_ref().expect("held record").lease_expires_at_ms
}

fn memory_directory() -> (Arc<dyn PlacementDirectory>, Pass) {
    let clock = Arc::new(ManualClock::default());
    clock.advance(1_000_000);
    let directory =
        Registry::with_lease(Arc::new(MemoryPlacementStore::new()), clock.clone(), SCENARIO_LEASE_MS);
    let pass: Pass = Box::new(move |ms| {
        clock.advance(ms);
        Box::pin(async {})
    });
    (Arc::new(directory), pass)
}

fn real_time() -> Pass {
    Box::new(|ms| Box::pin(tokio::time::sleep(Duration::from_millis(ms))))
}

/// Claim, contention, renewal, expiry, takeover, stale renew/release,
/// release and reclaim, each outcome as `lease::step` decides it.
async fn lease_lifecycle_matches_lease_step(directory: &dyn PlacementDirectory, pass: &Pass) {
    let lease_ms = directory.lease_ms();
    let a = actor("lifecycle");
    let first = claimed(directory.claim(&a, &node("n1")).await.unwrap());
    assert_eq!((first.epoch, first.holder.as_ref().unwrap().node_id.clone()), (1, node("n1")));
    assert_eq!(directory.lookup(&a).await.unwrap(), Some(first.clone()), "stored exactly as decided");
    assert_eq!(directory.live_owner(&a).await.unwrap(), Some(LiveOwner { node_id: node("n1"), epoch: 1 }));
    let blocked = directory.claim(&a, &node("n2")).await.unwrap();
    assert_eq!(blocked, LeaseOutcome::HeldByOther(first.clone()));

    pass(lease_ms * 4 / 10).await;
    let LeaseOutcome::Renewed(renewed) = directory.renew(&a, &node("n1"), 1).await.unwrap() else {
        panic!("holder could not renew")
    };
    assert_eq!(renewed.epoch, 1, "renewal keeps the epoch");
    assert!(expiry(&renewed) >= expiry(&first) + lease_ms * 4 / 10, "renewal extends from now");
    assert_eq!(directory.lookup(&a).await.unwrap(), Some(renewed.clone()));
    for (name, epoch) in [("n1", 2), ("n2", 1)] {
        let outcome = directory.renew(&a, &node(name), epoch).await.unwrap();
        assert_eq!(outcome, LeaseOutcome::NotHolder { current: Some(renewed.clone()) }, "{name}@{epoch}");
    }

    pass(lease_ms * 4 / 10).await;
    assert_eq!(directory.claim(&a, &node("n2")).await.unwrap(), LeaseOutcome::HeldByOther(renewed.clone()));

    pass(lease_ms * 8 / 10).await;
    assert_eq!(directory.live_owner(&a).await.unwrap(), None, "lease ran out");
    let late = directory.renew(&a, &node("n1"), 1).await.unwrap();
    assert_eq!(
        late,
        LeaseOutcome::NotHolder { current: Some(renewed.clone()) },
        "expired lease is not renewable"
    );
    let second = claimed(directory.claim(&a, &node("n2")).await.unwrap());
    assert_eq!((second.epoch, second.holder.as_ref().unwrap().node_id.clone()), (2, node("n2")));

    let stale = directory.release(&a, &node("n1"), 1).await.unwrap();
    assert_eq!(stale, LeaseOutcome::NotHolder { current: Some(second.clone()) });
    let LeaseOutcome::Released(released) = directory.release(&a, &node("n2"), 2).await.unwrap() else {
        panic!("holder could not release")
    };
    assert_eq!((released.epoch, released.holder.clone()), (2, None), "release keeps the epoch");
    assert_eq!(directory.live_owner(&a).await.unwrap(), None);

    let third = claimed(directory.claim(&a, &node("n3")).await.unwrap());
    assert_eq!(third.epoch, 3);
    let again = claimed(directory.claim(&a, &node("n3")).await.unwrap());
    assert_eq!(again.epoch, 4, "a reclaim by the holder fences its own older activation");
}

/// Claims and releases alternate between nodes: every claim's epoch is one
/// more than the last, never reused.
async fn epochs_strictly_increase_across_claims(directory: &dyn PlacementDirectory) {
    let a = actor("churn");
    for round in 0..12u64 {
        let holder = node(&format!("n{}", round % 3));
        let record = claimed(directory.claim(&a, &holder).await.unwrap());
        assert_eq!(record.epoch, round + 1);
        let released = directory.release(&a, &holder, record.epoch).await.unwrap();
        assert!(matches!(released, LeaseOutcome::Released(ref r) if r.epoch == round + 1), "{released:?}");
    }
}

#[tokio::test]
async fn memory_directory_follows_lease_step() {
    let (directory, pass) = memory_directory();
    lease_lifecycle_matches_lease_step(directory.as_ref(), &pass).await;
    epochs_strictly_increase_across_claims(directory.as_ref()).await;
}

async fn connect(server: &PostgresServer, database: &str) -> Arc<PostgresBackend> {
    let url = server.create_database(database).expect("create database");
    Arc::new(PostgresBackend::connect(&url).await.expect("connect"))
}

/// Sixteen claimants, each its own node id, spread over four connection pools
/// (as four processes would be), claim the same actors at once: for each
/// actor exactly one wins, at epoch 1, and every loser sees the winner.
async fn concurrent_claims_have_exactly_one_winner(server: &PostgresServer) {
    const POOLS_COUNT: usize = 4;
    const CLAIMANTS_COUNT: usize = 16;
    const ACTORS_COUNT: usize = 8;
    let first = connect(server, "concurrent").await;
    let url = server.url("concurrent");
    let mut registries = vec![PostgresRegistry::new(first)];
    for _ in 1..POOLS_COUNT {
        registries.push(PostgresRegistry::new(Arc::new(PostgresBackend::connect(&url).await.unwrap())));
    }
    for index in 0..ACTORS_COUNT {
        let a = actor(&format!("contended-{index}"));
        let tasks: Vec<_> = (0..CLAIMANTS_COUNT)
            .map(|claimant| {
                let (registry, a) = (registries[claimant % POOLS_COUNT].clone(), a.clone());
                let id = node(&format!("n{claimant}"));
                tokio::spawn(async move { registry.claim(&a, &id).await.unwrap() })
            })
            .collect();
        let mut winners = Vec::new();
        let mut seen_by_losers = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                LeaseOutcome::Claimed(record) => winners.push(record),
                LeaseOutcome::HeldByOther(record) => seen_by_losers.push(record),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{a}: winners {winners:?}");
        assert_eq!(winners[0].epoch, 1);
        assert!(seen_by_losers.iter().all(|record| record == &winners[0]), "{a}: losers saw another holder");
        assert_eq!(registries[1].lookup(&a).await.unwrap().as_ref(), Some(&winners[0]));
    }
}

/// A holder that stops renewing (paused, partitioned) loses its lease; once
/// another node claims, the old holder's fenced commit fails in the database.
async fn zombie_commit_is_fenced_after_takeover(server: &PostgresServer) {
    const SHORT_LEASE_MS: u64 = 300;
    let backend = connect(server, "zombie").await;
    let storage = Storage::from_backend(backend.clone());
    let registry = PostgresRegistry::with_lease(backend, SHORT_LEASE_MS);
    let a = actor("zombie");
    let old = claimed(registry.claim(&a, &node("n1")).await.unwrap());
    let fence = |name: &str, epoch| Some(FenceCondition { actor_id: a.clone(), node_id: node(name), epoch });
    let mut txn = storage.begin(a.clone());
    txn.put(b"k".to_vec(), b"from n1".to_vec()).unwrap();
    assert!(txn.commit(fence("n1", old.epoch)).await.unwrap().version > 0);

    tokio::time::sleep(Duration::from_millis(SHORT_LEASE_MS + 100)).await;
    let new = claimed(registry.claim(&a, &node("n2")).await.unwrap());
    assert_eq!(new.epoch, old.epoch + 1);

    let mut zombie = storage.begin(a.clone());
    zombie.put(b"k".to_vec(), b"zombie".to_vec()).unwrap();
    let err = zombie.commit(fence("n1", old.epoch)).await.unwrap_err();
    assert_eq!(err, Error::Fenced { actor_id: a.clone(), node_id: node("n1"), epoch: old.epoch });
    let renew = registry.renew(&a, &node("n1"), old.epoch).await.unwrap();
    assert_eq!(renew, LeaseOutcome::NotHolder { current: Some(new.clone()) });

    let mut owner = storage.begin(a.clone());
    owner.put(b"k".to_vec(), b"from n2".to_vec()).unwrap();
    owner.commit(fence("n2", new.epoch)).await.unwrap();
    let mut read = storage.begin(a.clone());
    assert_eq!(read.get(b"k").await.unwrap(), Some(b"from n2".to_vec()));
}

/// Renewals sent at once go in batches (fewer SQL transactions than
/// renewals, each batch past `RENEWAL_BATCH_COUNT_MAX` split), and each
/// gets the answer `lease::step` gives it alone: the holders' leases are
/// extended, a stale holder in the same batch is refused and changes
/// nothing, and a second renewal of one actor waits for the next batch.
async fn concurrent_renewals_are_batched_and_each_decided(server: &PostgresServer) {
    const ACTORS_COUNT: usize = kelpie_registry::postgres_registry::RENEWAL_BATCH_COUNT_MAX + 88;
    // Claiming some 600 actors one by one takes seconds on a loaded machine:
    // the lease must outlast it, or the first ones expire before they renew.
    const RENEWALS_LEASE_MS: u64 = kelpie_registry::lease::LEASE_DURATION_MS_MAX;
    let registry = PostgresRegistry::with_lease(connect(server, "renewals").await, RENEWALS_LEASE_MS);
    let n1 = node("n1");
    let mut records = Vec::new();
    for index in 0..ACTORS_COUNT {
        records.push(claimed(registry.claim(&actor(&format!("renewed-{index}")), &n1).await.unwrap()));
    }
    let stale = actor("renewed-0");
    let mut tasks = Vec::new();
    for record in &records {
        let (registry, a, n1, epoch) = (registry.clone(), record.actor_id.clone(), n1.clone(), record.epoch);
        tasks.push(tokio::spawn(async move { registry.renew(&a, &n1, epoch).await.unwrap() }));
    }
    let (registry_stale, stale_node) = (registry.clone(), node("n9"));
    let stale_task = tokio::spawn(async move { registry_stale.renew(&stale, &stale_node, 1).await.unwrap() });
    let (registry_again, again, n1_again) = (registry.clone(), records[1].actor_id.clone(), n1.clone());
    let again_task = tokio::spawn(async move { registry_again.renew(&again, &n1_again, 1).await.unwrap() });
    for (task, before) in tasks.into_iter().zip(&records) {
        let LeaseOutcome::Renewed(after) = task.await.unwrap() else {
            panic!("{} not renewed", before.actor_id)
        };
        assert_eq!((after.epoch, &after.holder.as_ref().unwrap().node_id), (before.epoch, &n1));
        assert!(expiry(&after) >= expiry(before), "{}: the lease did not move forward", before.actor_id);
        // Stored as answered (renewed-1 was renewed a second time since).
        let stored = registry.lookup(&before.actor_id).await.unwrap().unwrap();
        assert_eq!((stored.epoch, &stored.holder.as_ref().unwrap().node_id), (after.epoch, &n1));
        assert!(expiry(&stored) >= expiry(&after));
    }
    let stale_outcome = stale_task.await.unwrap();
    let LeaseOutcome::NotHolder { current: Some(current) } = stale_outcome else {
        panic!("a stale renewal was answered {stale_outcome:?}")
    };
    assert_eq!(current.holder.unwrap().node_id, n1, "the stale renewal changed nothing");
    assert!(matches!(again_task.await.unwrap(), LeaseOutcome::Renewed(_)));
    let batches = registry.renewal_batches_count();
    let renewals = ACTORS_COUNT as u64 + 2;
    assert!(batches >= 2, "{renewals} renewals cannot fit one batch of at most RENEWAL_BATCH_COUNT_MAX");
    assert!(batches * 4 <= renewals, "{renewals} renewals sent at once went in {batches} batches");
}

/// A renewal whose caller stops waiting while its batch is in flight (its
/// future dropped, as when an activation is cancelled) abandons the batch:
/// a renewal queued behind it is answered with an error instead of waiting
/// forever, and the next renewal sends a batch of its own.
async fn an_abandoned_renewal_batch_fails_its_waiters_and_the_next_renewal_is_sent(server: &PostgresServer) {
    const ANSWER_WAIT_MS: u64 = 10_000;
    let registry = PostgresRegistry::with_lease(connect(server, "abandoned").await, SCENARIO_LEASE_MS);
    let (a, b, n1) = (actor("abandoned-a"), actor("abandoned-b"), node("n1"));
    let epoch_a = claimed(registry.claim(&a, &n1).await.unwrap()).epoch;
    let epoch_b = claimed(registry.claim(&b, &n1).await.unwrap()).epoch;
    let mut sender = Box::pin(registry.renew(&a, &n1, epoch_a));
    assert!((&mut sender).now_or_never().is_none(), "the batch waits for the database");
    let mut waiter = Box::pin(registry.renew(&b, &n1, epoch_b));
    assert!((&mut waiter).now_or_never().is_none(), "queued behind the batch in flight");
    drop(sender);
    let wait = Duration::from_millis(ANSWER_WAIT_MS);
    let abandoned = tokio::time::timeout(wait, waiter).await.expect("the queued renewal is answered");
    assert!(
        matches!(abandoned, Err(Error::StorageIo { operation: "lease renew", .. })),
        "the queued renewal was answered {abandoned:?}"
    );
    let renewed =
        tokio::time::timeout(wait, registry.renew(&b, &n1, epoch_b)).await.expect("a new batch is sent");
    assert!(matches!(renewed, Ok(LeaseOutcome::Renewed(ref r)) if r.epoch == epoch_b), "{renewed:?}");
    assert_eq!(registry.renewal_batches_count(), 2, "the abandoned batch and the next one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_registry_follows_lease_step_on_the_database_clock() {
    let Some(server) = PostgresServer::start_or_skip("postgres_registry_follows_lease_step") else { return };
    let registry = PostgresRegistry::with_lease(connect(&server, "lifecycle").await, SCENARIO_LEASE_MS);
    lease_lifecycle_matches_lease_step(&registry, &real_time()).await;
    epochs_strictly_increase_across_claims(&registry).await;
    concurrent_claims_have_exactly_one_winner(&server).await;
    zombie_commit_is_fenced_after_takeover(&server).await;
    concurrent_renewals_are_batched_and_each_decided(&server).await;
    an_abandoned_renewal_batch_fails_its_waiters_and_the_next_renewal_is_sent(&server).await;
}
