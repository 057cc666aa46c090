//! Small API facts of `Transaction` that callers rely on.

use kelpie_core::ActorId;
use kelpie_storage::Storage;

#[tokio::test]
async fn has_writes_tracks_buffered_puts_and_deletes() {
    let storage = Storage::memory();
    let actor = ActorId::new("t", "a").unwrap();
    let mut txn = storage.begin(actor.clone());
    assert!(!txn.has_writes());
    assert_eq!(txn.get(b"k").await.unwrap(), None);
    assert!(!txn.has_writes(), "reads are not writes");
    txn.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    assert!(txn.has_writes());
    txn.commit(None).await.unwrap();

    let mut txn = storage.begin(actor);
    txn.delete(b"k".to_vec()).unwrap();
    assert!(txn.has_writes(), "a delete is a write");
}

/// On redb, a claim and the commit it fences both survive a reopen, and a
/// later claim raises the epoch from the stored one.
#[tokio::test]
async fn a_redb_claim_and_its_fenced_commit_survive_a_reopen() {
    use kelpie_storage::{ClaimOutcome, FenceCondition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("claims.redb");
    let actor = ActorId::new("agents", "a-claim").unwrap();
    let node = kelpie_core::NodeId::new("node-1").unwrap();
    {
        let storage = Storage::open_redb(&path).unwrap();
        let ClaimOutcome::Claimed(placement) =
            storage.claim_placement(actor.clone(), node.clone(), 0).await.unwrap()
        else {
            panic!("first claim succeeds")
        };
        assert_eq!(placement.epoch, 1);
        let mut txn = storage.begin(actor.clone());
        txn.put("k", "v").unwrap();
        let fence = FenceCondition { actor_id: actor.clone(), node_id: node.clone(), epoch: 1 };
        txn.commit(Some(fence)).await.unwrap();
    }
    let storage = Storage::open_redb(&path).unwrap();
    let stored = storage.get_placement(&actor).await.unwrap().expect("placement survives the reopen");
    assert_eq!((stored.node_id.as_str(), stored.epoch), ("node-1", 1));
    let mut txn = storage.begin(actor.clone());
    assert_eq!(txn.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    let ClaimOutcome::Claimed(next) = storage.claim_placement(actor, node, 1).await.unwrap() else {
        panic!("a later claim succeeds")
    };
    assert_eq!(next.epoch, 2);
}
