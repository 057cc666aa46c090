//! The registry over the in-memory store, with a hand-driven clock.

// The concurrency test races real tokio worker threads on purpose; the
// simulator covers the seeded interleavings.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::Arc;

use kelpie_core::{ActorId, NodeId};
use kelpie_registry::{LeaseOutcome, MemoryPlacementStore, PlacementStore, Registry, StoragePlacementStore};
use kelpie_storage::Storage;
use support::ManualClock;

fn setup(lease_ms: u64) -> (Registry, Arc<ManualClock>) {
    setup_on(Arc::new(MemoryPlacementStore::new()), lease_ms)
}

fn setup_on(store: Arc<dyn PlacementStore>, lease_ms: u64) -> (Registry, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    clock.advance(1_000);
    let registry = Registry::with_lease(store, clock.clone(), lease_ms);
    (registry, clock)
}

fn actor(id: &str) -> ActorId {
    ActorId::new("agents", id).unwrap()
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn epoch_of(outcome: &LeaseOutcome) -> u64 {
    match outcome {
        LeaseOutcome::Claimed(r) | LeaseOutcome::Renewed(r) | LeaseOutcome::Released(r) => r.epoch,
        other => panic!("no record granted: {other:?}"),
    }
}

#[tokio::test]
async fn claim_renew_expire_and_takeover() {
    let (registry, clock) = setup(500);
    let a = actor("a");
    let first = registry.claim(&a, &node("n1")).await.unwrap();
    assert_eq!(epoch_of(&first), 1);

    let blocked = registry.claim(&a, &node("n2")).await.unwrap();
    assert!(matches!(blocked, LeaseOutcome::HeldByOther(ref r) if r.epoch == 1), "{blocked:?}");

    clock.advance(400);
    let renewed = registry.renew(&a, &node("n1"), 1).await.unwrap();
    assert_eq!(epoch_of(&renewed), 1);
    clock.advance(400);
    assert!(matches!(registry.claim(&a, &node("n2")).await.unwrap(), LeaseOutcome::HeldByOther(_)));

    clock.advance(100);
    let takeover = registry.claim(&a, &node("n2")).await.unwrap();
    assert_eq!(epoch_of(&takeover), 2);

    // The old holder's renewal now fails: it must deactivate.
    let stale = registry.renew(&a, &node("n1"), 1).await.unwrap();
    assert!(matches!(stale, LeaseOutcome::NotHolder { current: Some(ref r) } if r.epoch == 2), "{stale:?}");
    let record = registry.lookup(&a).await.unwrap().unwrap();
    assert_eq!(record.holder.unwrap().node_id, node("n2"));
}

#[tokio::test]
async fn actors_are_independent() {
    let (registry, _clock) = setup(500);
    assert_eq!(epoch_of(&registry.claim(&actor("a"), &node("n1")).await.unwrap()), 1);
    assert_eq!(epoch_of(&registry.claim(&actor("b"), &node("n2")).await.unwrap()), 1);
    assert_eq!(registry.lookup(&actor("c")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_grant_exactly_one_holder() {
    assert_one_winner(setup(500).0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_over_storage_grant_exactly_one_holder_and_one_epoch() {
    let storage = Storage::memory();
    let (registry, _clock) = setup_on(Arc::new(StoragePlacementStore::new(storage.clone())), 500);
    assert_one_winner(registry).await;
    let placement = storage.get_placement(&actor("contended")).await.unwrap().unwrap();
    assert_eq!(placement.epoch, 1, "the storage placement carries the one granted epoch");
}

#[tokio::test]
async fn storage_store_lease_is_node_local_so_a_restart_reclaims_with_a_newer_epoch() {
    let storage = Storage::memory();
    let (first, _clock) = setup_on(Arc::new(StoragePlacementStore::new(storage.clone())), 500);
    assert_eq!(epoch_of(&first.claim(&actor("a"), &node("n1")).await.unwrap()), 1);
    // A new process over the same storage: no live lease, epoch continues.
    let (second, _clock) = setup_on(Arc::new(StoragePlacementStore::new(storage.clone())), 500);
    let record = second.lookup(&actor("a")).await.unwrap().unwrap();
    assert_eq!((record.epoch, record.holder), (1, None));
    assert_eq!(epoch_of(&second.claim(&actor("a"), &node("n1")).await.unwrap()), 2);
    assert_eq!(storage.get_placement(&actor("a")).await.unwrap().unwrap().epoch, 2);
}

async fn assert_one_winner(registry: Registry) {
    let a = actor("contended");
    let mut tasks = Vec::new();
    for i in 0..32 {
        let registry = registry.clone();
        let a = a.clone();
        tasks.push(tokio::spawn(async move { registry.claim(&a, &node(&format!("n{i}"))).await.unwrap() }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        if let LeaseOutcome::Claimed(record) = task.await.unwrap() {
            winners.push(record);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].epoch, 1);
    let stored = registry.lookup(&a).await.unwrap().unwrap();
    assert_eq!(stored, winners[0]);
}

#[tokio::test]
async fn release_then_reclaim_gets_a_newer_epoch() {
    let (registry, _clock) = setup(500);
    let a = actor("a");
    registry.claim(&a, &node("n1")).await.unwrap();
    let wrong = registry.release(&a, &node("n2"), 1).await.unwrap();
    assert!(matches!(wrong, LeaseOutcome::NotHolder { .. }));
    let released = registry.release(&a, &node("n1"), 1).await.unwrap();
    assert_eq!(epoch_of(&released), 1);
    assert_eq!(registry.lookup(&a).await.unwrap().unwrap().holder, None);
    assert_eq!(epoch_of(&registry.claim(&a, &node("n2")).await.unwrap()), 2);
}
