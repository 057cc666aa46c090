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
