//! The storage counters on a real PostgreSQL: every transaction that wrote
//! counts one flush (`kelpie_storage_fsyncs_total{backend="postgres"}`) and
//! its writes; reads, read-only commits and refused commits count nothing.
//!
//! The metrics registry is process-wide, so this file holds one test.
//! Needs PostgreSQL (the Debian `postgresql` package); fails without it
//! unless `KELPIE_SKIP_POSTGRES=1` says it is not installed.

use kelpie_core::metrics::{counter_total, STORAGE_FSYNCS, STORAGE_WRITES};
use kelpie_core::{ActorId, Error, NodeId};
use kelpie_storage::test_support::PostgresServer;
use kelpie_storage::{ClaimOutcome, FenceCondition, Storage};

fn totals() -> (u64, u64) {
    (counter_total(&STORAGE_FSYNCS, &["postgres"]), counter_total(&STORAGE_WRITES, &["postgres"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_postgres_move_the_storage_counters_by_known_amounts() {
    let Some(server) = PostgresServer::start_or_skip("postgres_metrics") else { return };
    let url = server.create_database("metrics").expect("create database");
    let storage = Storage::connect_postgres(&url).await.expect("connect postgres");
    let start = totals();
    let actor = ActorId::new("agents", "metered").unwrap();
    let node = NodeId::new("n1").unwrap();

    // A claim that wins writes the placement: one transaction, one write.
    let claimed = storage.claim_placement(actor.clone(), node.clone(), 0).await.unwrap();
    let ClaimOutcome::Claimed(placement) = claimed else { panic!("first claim wins: {claimed:?}") };
    // A stale claim writes nothing.
    let stale = storage.claim_placement(actor.clone(), node.clone(), 0).await.unwrap();
    assert!(matches!(stale, ClaimOutcome::Stale { .. }), "{stale:?}");
    assert_eq!(totals(), (start.0 + 1, start.1 + 1));

    // Two fenced commits with writes; a read-only one; one fenced off.
    let fence = FenceCondition { actor_id: actor.clone(), node_id: node.clone(), epoch: placement.epoch };
    for value in ["a", "b"] {
        let mut txn = storage.begin(actor.clone());
        txn.put(b"k".to_vec(), value.as_bytes().to_vec()).unwrap();
        txn.put(b"other".to_vec(), value.as_bytes().to_vec()).unwrap();
        txn.commit(Some(fence.clone())).await.unwrap();
    }
    let mut read_only = storage.begin(actor.clone());
    assert_eq!(read_only.get(b"k").await.unwrap(), Some(b"b".to_vec()));
    read_only.commit(Some(fence.clone())).await.unwrap();
    let mut zombie = storage.begin(actor.clone());
    zombie.put(b"k".to_vec(), b"zombie".to_vec()).unwrap();
    let stale_fence = FenceCondition { epoch: placement.epoch - 1, ..fence };
    let refused = zombie.commit(Some(stale_fence)).await.unwrap_err();
    assert!(matches!(refused, Error::Fenced { .. }), "{refused:?}");

    // One flush per committed transaction (a commit is one write however
    // many keys it changes).
    assert_eq!(totals(), (start.0 + 3, start.1 + 3));
}
