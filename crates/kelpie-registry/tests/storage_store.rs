//! `StoragePlacementStore`'s compare-and-set, driven one call at a time: the
//! record it reports joins the storage placement (epoch, node) with this
//! process's lease, a stale `expected` is refused whatever the caller
//! decided, and a claim moves the storage placement while a renewal or a
//! release does not. (The registry tests race whole claims; these pin each
//! branch, which a race on an instant backend rarely reaches.)

use kelpie_core::{ActorId, NodeId};
use kelpie_registry::lease::Holder;
use kelpie_registry::{CasResult, PlacementRecord, PlacementStore, StoragePlacementStore};
use kelpie_storage::{ClaimOutcome, Placement, Storage};

fn actor() -> ActorId {
    ActorId::new("agents", "a1").unwrap()
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn held(epoch: u64, by: &str, until_ms: u64) -> PlacementRecord {
    PlacementRecord {
        actor_id: actor(),
        epoch,
        holder: Some(Holder { node_id: node(by), lease_expires_at_ms: until_ms }),
    }
}

fn released(epoch: u64) -> PlacementRecord {
    PlacementRecord { actor_id: actor(), epoch, holder: None }
}

async fn stored(storage: &Storage) -> Option<(NodeId, u64)> {
    let placement = storage.get_placement(&actor()).await.unwrap();
    placement.map(|placement| (placement.node_id, placement.epoch))
}

#[tokio::test]
async fn a_claim_sets_the_storage_placement_and_the_lease_together() {
    let storage = Storage::memory();
    let store = StoragePlacementStore::new(storage.clone());
    assert_eq!(store.get(&actor()).await.unwrap(), None);
    assert_eq!(store.compare_and_set(None, held(1, "n1", 500)).await.unwrap(), CasResult::Applied);
    assert_eq!(stored(&storage).await, Some((node("n1"), 1)));
    assert_eq!(store.get(&actor()).await.unwrap(), Some(held(1, "n1", 500)));
}

#[tokio::test]
async fn a_stale_expected_record_is_refused_with_the_current_one_and_changes_nothing() {
    let storage = Storage::memory();
    let store = StoragePlacementStore::new(storage.clone());
    store.compare_and_set(None, held(1, "n1", 500)).await.unwrap();

    // n2 decided on "nobody holds it" before n1's claim landed.
    let lost = store.compare_and_set(None, held(1, "n2", 600)).await.unwrap();
    assert_eq!(lost, CasResult::Mismatch(Some(held(1, "n1", 500))));
    // Also when its (stale) decision would raise the epoch.
    let lost = store.compare_and_set(Some(released(1)), held(2, "n2", 600)).await.unwrap();
    assert_eq!(lost, CasResult::Mismatch(Some(held(1, "n1", 500))));

    assert_eq!(stored(&storage).await, Some((node("n1"), 1)), "the storage placement did not move");
    assert_eq!(store.get(&actor()).await.unwrap(), Some(held(1, "n1", 500)), "n1 keeps its lease");
}

#[tokio::test]
async fn a_renewal_extends_the_lease_and_a_release_drops_it_without_touching_storage() {
    let storage = Storage::memory();
    let store = StoragePlacementStore::new(storage.clone());
    store.compare_and_set(None, held(1, "n1", 500)).await.unwrap();

    let renewed = store.compare_and_set(Some(held(1, "n1", 500)), held(1, "n1", 900)).await.unwrap();
    assert_eq!(renewed, CasResult::Applied);
    assert_eq!(store.get(&actor()).await.unwrap(), Some(held(1, "n1", 900)));
    assert_eq!(stored(&storage).await, Some((node("n1"), 1)));

    let gone = store.compare_and_set(Some(held(1, "n1", 900)), released(1)).await.unwrap();
    assert_eq!(gone, CasResult::Applied);
    assert_eq!(store.get(&actor()).await.unwrap(), Some(released(1)));
    assert_eq!(stored(&storage).await, Some((node("n1"), 1)), "a release keeps the epoch");

    let next = store.compare_and_set(Some(released(1)), held(2, "n2", 1_000)).await.unwrap();
    assert_eq!(next, CasResult::Applied);
    assert_eq!(stored(&storage).await, Some((node("n2"), 2)));
    assert_eq!(store.get(&actor()).await.unwrap(), Some(held(2, "n2", 1_000)));
}

/// Another process (same storage, its own leases) claimed the actor after
/// this one read it: the claim decided on the old epoch is refused with the
/// stored placement, reported without a holder (this process knows no lease
/// of the node that holds it now), and storage keeps the other claim.
#[tokio::test]
async fn a_claim_decided_before_another_process_claimed_in_storage_is_refused() {
    let storage = Storage::memory();
    let store = StoragePlacementStore::new(storage.clone());
    store.compare_and_set(None, held(1, "n1", 500)).await.unwrap();
    store.compare_and_set(Some(held(1, "n1", 500)), released(1)).await.unwrap();

    let elsewhere = storage.claim_placement(actor(), node("n3"), 1).await.unwrap();
    assert_eq!(
        elsewhere,
        ClaimOutcome::Claimed(Placement { actor_id: actor(), node_id: node("n3"), epoch: 2 })
    );
    assert_eq!(store.get(&actor()).await.unwrap(), Some(released(2)), "storage's epoch, no lease known here");

    let refused = store.compare_and_set(Some(released(1)), held(2, "n1", 900)).await.unwrap();
    assert_eq!(refused, CasResult::Mismatch(Some(released(2))));
    assert_eq!(stored(&storage).await, Some((node("n3"), 2)));
    assert_eq!(store.get(&actor()).await.unwrap(), Some(released(2)), "no lease taken for n1");
}

#[tokio::test]
async fn a_lease_of_this_process_counts_only_for_the_node_storage_names() {
    let storage = Storage::memory();
    let store = StoragePlacementStore::new(storage.clone());
    store.compare_and_set(None, held(1, "n1", 500)).await.unwrap();
    // Storage moves to n2 behind this process's back (another process).
    storage.claim_placement(actor(), node("n2"), 1).await.unwrap();
    assert_eq!(store.get(&actor()).await.unwrap(), Some(released(2)), "n1's lease is not n2's");
}
