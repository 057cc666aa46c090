//! One conformance suite, run unchanged against every backend: memory, redb
//! and a real PostgreSQL started in a temp dir. Each case is an async fn over
//! a [`Fixture`] that can open (and reopen) the store under test.

// Tests sit outside the deterministic boundary: they may spawn tokio tasks.
#![allow(clippy::disallowed_methods)]

use std::ops::Bound;
use std::path::PathBuf;

use kelpie_core::limits::{
    STORAGE_KEY_SIZE_BYTES_MAX, STORAGE_VALUE_SIZE_BYTES_MAX, TRANSACTION_OPS_COUNT_MAX,
    TRANSACTION_SIZE_BYTES_MAX,
};
use kelpie_core::{ActorId, Error, NodeId};
use kelpie_storage::limits::SCAN_ROWS_COUNT_MAX;
use kelpie_storage::test_support::PostgresServer;
use kelpie_storage::{ClaimOutcome, FenceCondition, KeyRange, Placement, ScanOrder, Storage};

/// How to open the store under test, again and again.
enum Fixture {
    Memory(Storage),
    Redb(tempfile::TempDir),
    Postgres(String),
}

impl Fixture {
    async fn open(&self) -> Storage {
        match self {
            Fixture::Memory(storage) => storage.clone(),
            Fixture::Redb(dir) => Storage::open_redb(redb_path(dir)).expect("open redb"),
            Fixture::Postgres(url) => Storage::connect_postgres(url).await.expect("connect postgres"),
        }
    }
}

fn redb_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data").join("kelpie.redb")
}

fn actor(id: &str) -> ActorId {
    ActorId::new("agents", id).unwrap()
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

fn kv(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    (key.as_bytes().to_vec(), value.as_bytes().to_vec())
}

async fn read(storage: &Storage, actor_id: &ActorId, key: &str) -> Option<Vec<u8>> {
    storage.begin(actor_id.clone()).get(key.as_bytes()).await.unwrap()
}

async fn put_get_delete_round_trip(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("round-trip");
    let mut txn = storage.begin(a.clone());
    assert_eq!(txn.get(b"state").await.unwrap(), None);
    txn.put("state", "v1").unwrap();
    txn.put("other", vec![0u8, 255, 7]).unwrap();
    let first = txn.commit(None).await.unwrap();
    assert!(first.version > 0);
    assert_eq!(read(&storage, &a, "state").await, Some(b"v1".to_vec()));
    assert_eq!(read(&storage, &a, "other").await, Some(vec![0, 255, 7]));
    let mut txn = storage.begin(a.clone());
    txn.put("state", "v2").unwrap();
    txn.delete("other").unwrap();
    txn.delete("never-existed").unwrap();
    let second = txn.commit(None).await.unwrap();
    assert!(second.version > first.version, "versions grow: {second:?} after {first:?}");
    assert_eq!(read(&storage, &a, "state").await, Some(b"v2".to_vec()));
    assert_eq!(read(&storage, &a, "other").await, None);
}

async fn reads_see_the_transactions_own_writes(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("ryw");
    let mut setup = storage.begin(a.clone());
    setup.put("k1", "committed").unwrap();
    setup.put("k2", "committed").unwrap();
    setup.commit(None).await.unwrap();

    let mut txn = storage.begin(a.clone());
    txn.put("k1", "mine").unwrap();
    txn.delete("k2").unwrap();
    txn.put("k3", "new").unwrap();
    assert_eq!(txn.get(b"k1").await.unwrap(), Some(b"mine".to_vec()));
    assert_eq!(txn.get(b"k2").await.unwrap(), None);
    assert_eq!(txn.get(b"k3").await.unwrap(), Some(b"new".to_vec()));
    let rows = txn.scan(KeyRange::prefix("k")).await.unwrap();
    assert_eq!(rows, vec![kv("k1", "mine"), kv("k3", "new")]);
    assert_eq!(read(&storage, &a, "k1").await, Some(b"committed".to_vec()), "uncommitted writes are private");
    txn.commit(None).await.unwrap();
    assert_eq!(read(&storage, &a, "k2").await, None);
}

async fn scans_return_rows_in_key_order_within_bounds(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("scan");
    let mut txn = storage.begin(a.clone());
    for key in ["b/2", "a/1", "b/1", "b/10", "c", "b"] {
        txn.put(key, format!("value-{key}")).unwrap();
    }
    txn.commit(None).await.unwrap();
    let mut txn = storage.begin(a.clone());
    let prefix = txn.scan(KeyRange::prefix("b/")).await.unwrap();
    let keys: Vec<&[u8]> = prefix.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, vec![&b"b/1"[..], b"b/10", b"b/2"]);
    assert_eq!(prefix[0].1, b"value-b/1".to_vec());
    let range = txn.scan(KeyRange::between("a/1", "b/10")).await.unwrap();
    let keys: Vec<&[u8]> = range.iter().map(|(key, _)| key.as_slice()).collect();
    assert_eq!(keys, vec![&b"a/1"[..], b"b", b"b/1"]);
    assert_eq!(txn.scan(KeyRange::prefix("")).await.unwrap().len(), 6);
    assert_eq!(txn.scan(KeyRange::between("z", "a")).await.unwrap(), Vec::new(), "inverted range is empty");
}

async fn actors_never_see_each_others_keys(fixture: &Fixture) {
    let storage = fixture.open().await;
    // "iso" is a text prefix of "iso1": a naive key prefix would leak.
    let (a, b) = (actor("iso"), actor("iso1"));
    for (who, value) in [(&a, "from-a"), (&b, "from-b")] {
        let mut txn = storage.begin(who.clone());
        txn.put("shared-name", value).unwrap();
        txn.put(format!("only-{value}"), value).unwrap();
        txn.commit(None).await.unwrap();
    }
    assert_eq!(read(&storage, &a, "shared-name").await, Some(b"from-a".to_vec()));
    assert_eq!(read(&storage, &b, "shared-name").await, Some(b"from-b".to_vec()));
    assert_eq!(read(&storage, &a, "only-from-b").await, None);
    let rows = storage.begin(a.clone()).scan(KeyRange::prefix("")).await.unwrap();
    assert_eq!(rows, vec![kv("only-from-a", "from-a"), kv("shared-name", "from-a")]);
    let other_namespace = ActorId::new("tools", "iso").unwrap();
    assert_eq!(read(&storage, &other_namespace, "shared-name").await, None);
}

async fn abort_and_drop_discard_every_write(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("abort");
    let mut txn = storage.begin(a.clone());
    txn.put("k", "aborted").unwrap();
    txn.abort();
    {
        let mut dropped = storage.begin(a.clone());
        dropped.put("k", "dropped").unwrap();
    }
    assert_eq!(read(&storage, &a, "k").await, None);
}

async fn conflicting_commits_one_wins_the_other_retries(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("conflict");
    let mut setup = storage.begin(a.clone());
    setup.put("counter", "0").unwrap();
    setup.commit(None).await.unwrap();

    let mut first = storage.begin(a.clone());
    let mut second = storage.begin(a.clone());
    assert_eq!(first.get(b"counter").await.unwrap(), Some(b"0".to_vec()));
    assert_eq!(second.get(b"counter").await.unwrap(), Some(b"0".to_vec()));
    first.put("counter", "1").unwrap();
    second.put("counter", "1").unwrap();
    second.put("side-effect", "lost").unwrap();
    first.commit(None).await.unwrap();
    let err = second.commit(None).await.unwrap_err();
    assert_eq!(err, Error::TransactionConflict { actor_id: a.clone(), key: "counter".into() });
    assert!(err.is_retriable());
    assert_eq!(read(&storage, &a, "counter").await, Some(b"1".to_vec()));
    assert_eq!(read(&storage, &a, "side-effect").await, None, "a conflicted commit writes nothing");

    // Reading a key as absent and someone else creating it also conflicts.
    let mut reader = storage.begin(a.clone());
    assert_eq!(reader.get(b"created-later").await.unwrap(), None);
    reader.put("derived", "x").unwrap();
    let mut creator = storage.begin(a.clone());
    creator.put("created-later", "now").unwrap();
    creator.commit(None).await.unwrap();
    let err = reader.commit(None).await.unwrap_err();
    assert_eq!(err, Error::TransactionConflict { actor_id: a, key: "created-later".into() });
}

async fn phantom_rows_in_a_scanned_range_conflict(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("phantom");
    let mut scanner = storage.begin(a.clone());
    assert_eq!(scanner.scan(KeyRange::prefix("msg/")).await.unwrap(), Vec::new());
    scanner.put("msg-count", "0").unwrap();
    let mut inserter = storage.begin(a.clone());
    inserter.put("msg/0001", "hello").unwrap();
    inserter.commit(None).await.unwrap();
    let err = scanner.commit(None).await.unwrap_err();
    assert_eq!(err, Error::TransactionConflict { actor_id: a.clone(), key: "msg/0001".into() });
    // A write outside the scanned range does not conflict.
    let mut scanner = storage.begin(a.clone());
    assert_eq!(scanner.scan(KeyRange::prefix("msg/")).await.unwrap().len(), 1);
    scanner.put("msg-count", "1").unwrap();
    let mut outside = storage.begin(a.clone());
    outside.put("note", "unrelated").unwrap();
    outside.commit(None).await.unwrap();
    scanner.commit(None).await.unwrap();
    assert_eq!(read(&storage, &a, "msg-count").await, Some(b"1".to_vec()));
}

async fn blind_writes_do_not_conflict_and_the_last_wins(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("blind");
    let mut first = storage.begin(a.clone());
    let mut second = storage.begin(a.clone());
    first.put("k", "first").unwrap();
    second.put("k", "second").unwrap();
    first.commit(None).await.unwrap();
    second.commit(None).await.unwrap();
    assert_eq!(read(&storage, &a, "k").await, Some(b"second".to_vec()));
}

async fn fenced_commits_need_the_current_placement(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("fenced");
    let fence = |node_id: &str, epoch| FenceCondition { actor_id: a.clone(), node_id: node(node_id), epoch };
    let mut unplaced = storage.begin(a.clone());
    unplaced.put("k", "v").unwrap();
    assert_eq!(
        unplaced.commit(Some(fence("n1", 1))).await.unwrap_err(),
        Error::Fenced { actor_id: a.clone(), node_id: node("n1"), epoch: 1 }
    );
    let claimed = storage.claim_placement(a.clone(), node("n1"), 0).await.unwrap();
    assert_eq!(
        claimed,
        ClaimOutcome::Claimed(Placement { actor_id: a.clone(), node_id: node("n1"), epoch: 1 })
    );
    let mut owner = storage.begin(a.clone());
    owner.put("k", "from-n1").unwrap();
    owner.commit(Some(fence("n1", 1))).await.unwrap();

    // n2 takes over: the zombie activation on n1 (epoch 1) is cut off.
    let mut zombie = storage.begin(a.clone());
    zombie.put("k", "zombie").unwrap();
    zombie.put("zombie-only", "x").unwrap();
    let takeover = storage.claim_placement(a.clone(), node("n2"), 1).await.unwrap();
    assert!(matches!(takeover, ClaimOutcome::Claimed(Placement { epoch: 2, .. })), "{takeover:?}");
    let err = zombie.commit(Some(fence("n1", 1))).await.unwrap_err();
    assert_eq!(err, Error::Fenced { actor_id: a.clone(), node_id: node("n1"), epoch: 1 });
    assert!(!err.is_retriable());
    assert_eq!(read(&storage, &a, "k").await, Some(b"from-n1".to_vec()));
    assert_eq!(read(&storage, &a, "zombie-only").await, None, "a fenced commit writes nothing");
    // The same node with a stale epoch is fenced too.
    let mut stale = storage.begin(a.clone());
    stale.put("k", "stale").unwrap();
    assert!(matches!(stale.commit(Some(fence("n2", 1))).await, Err(Error::Fenced { .. })));
    let mut current = storage.begin(a.clone());
    current.put("k", "from-n2").unwrap();
    current.commit(Some(fence("n2", 2))).await.unwrap();
    assert_eq!(read(&storage, &a, "k").await, Some(b"from-n2".to_vec()));
}

async fn placements_only_move_forward(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("placement");
    assert_eq!(storage.get_placement(&a).await.unwrap(), None);
    let placed = Placement { actor_id: a.clone(), node_id: node("n1"), epoch: 5 };
    storage.put_placement(placed.clone()).await.unwrap();
    assert_eq!(storage.get_placement(&a).await.unwrap(), Some(placed.clone()));
    let backwards = Placement { epoch: 4, ..placed.clone() };
    assert!(matches!(storage.put_placement(backwards).await, Err(Error::Validation { .. })));
    let stale = storage.claim_placement(a.clone(), node("n2"), 4).await.unwrap();
    assert_eq!(stale, ClaimOutcome::Stale { current: Some(placed.clone()) });
    let claimed = storage.claim_placement(a.clone(), node("n2"), 5).await.unwrap();
    let expected = Placement { actor_id: a.clone(), node_id: node("n2"), epoch: 6 };
    assert_eq!(claimed, ClaimOutcome::Claimed(expected.clone()));
    assert_eq!(storage.get_placement(&a).await.unwrap(), Some(expected));
    // Two racing claims from the same epoch: exactly one wins.
    let (x, y) = tokio::join!(
        storage.claim_placement(a.clone(), node("n3"), 6),
        storage.claim_placement(a.clone(), node("n4"), 6)
    );
    let wins =
        [x.unwrap(), y.unwrap()].iter().filter(|outcome| matches!(outcome, ClaimOutcome::Claimed(_))).count();
    assert_eq!(wins, 1);
    assert_eq!(storage.get_placement(&a).await.unwrap().map(|p| p.epoch), Some(7));
}

async fn limits_are_enforced_naming_the_limit(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("limits");
    let limit_of = |err: Error| match err {
        Error::LimitExceeded { limit_name, .. } => limit_name,
        other => panic!("expected LimitExceeded, got {other}"),
    };
    let mut txn = storage.begin(a.clone());
    txn.put(vec![b'k'; STORAGE_KEY_SIZE_BYTES_MAX], "fits").unwrap();
    assert_eq!(
        limit_of(txn.put(vec![b'k'; STORAGE_KEY_SIZE_BYTES_MAX + 1], "x").unwrap_err()),
        "STORAGE_KEY_SIZE_BYTES_MAX"
    );
    let err = txn.put("big", vec![0u8; STORAGE_VALUE_SIZE_BYTES_MAX + 1]).unwrap_err();
    assert!(!err.is_retriable());
    assert_eq!(limit_of(err), "STORAGE_VALUE_SIZE_BYTES_MAX");
    let mut many = storage.begin(a.clone());
    for i in 0..TRANSACTION_OPS_COUNT_MAX {
        many.put(format!("op{i}"), "").unwrap();
    }
    assert_eq!(limit_of(many.put("one-more", "").unwrap_err()), "TRANSACTION_OPS_COUNT_MAX");
    let mut large = storage.begin(a.clone());
    let chunk = STORAGE_VALUE_SIZE_BYTES_MAX / 2;
    for i in 0..(TRANSACTION_SIZE_BYTES_MAX / chunk) {
        large.put(format!("chunk{i}"), vec![1u8; chunk - 16]).unwrap();
    }
    assert_eq!(limit_of(large.put("overflow", vec![1u8; chunk]).unwrap_err()), "TRANSACTION_SIZE_BYTES_MAX");
    // No byte is reserved: a key may start with any, 0xFF included.
    txn.put(vec![0xFF, b'w'], "x").unwrap();
    txn.commit(None).await.unwrap();
    assert_eq!(read(&storage, &a, &"k".repeat(STORAGE_KEY_SIZE_BYTES_MAX)).await, Some(b"fits".to_vec()));
    let rows = storage.begin(a.clone()).scan(KeyRange::prefix(vec![0xFF])).await.unwrap();
    assert_eq!(rows, vec![(vec![0xFF, b'w'], b"x".to_vec())]);
}

async fn scans_past_the_row_limit_are_refused(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("wide");
    for part in 0..2 {
        let mut txn = storage.begin(a.clone());
        for i in 0..=(SCAN_ROWS_COUNT_MAX / 2) {
            txn.put(format!("row/{part}/{i:05}"), "").unwrap();
        }
        txn.commit(None).await.unwrap();
    }
    let mut txn = storage.begin(a.clone());
    let err = txn.scan(KeyRange::prefix("row/")).await.unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { limit_name: "SCAN_ROWS_COUNT_MAX", .. }), "{err}");
    assert_eq!(txn.scan(KeyRange::prefix("row/1/")).await.unwrap().len(), SCAN_ROWS_COUNT_MAX / 2 + 1);
}

/// A scan of exactly `SCAN_ROWS_COUNT_MAX` rows is validated whole at
/// commit: unchanged, the transaction commits; a row added after the last
/// one it saw (the first row past the limit) is a phantom and conflicts.
async fn a_scan_of_exactly_the_row_limit_validates_up_to_one_row_past_it(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("full");
    let mut fill = storage.begin(a.clone());
    for i in 0..SCAN_ROWS_COUNT_MAX {
        fill.put(format!("row/{i:05}"), "").unwrap();
    }
    fill.commit(None).await.unwrap();

    let mut unchanged = storage.begin(a.clone());
    assert_eq!(unchanged.scan(KeyRange::prefix("row/")).await.unwrap().len(), SCAN_ROWS_COUNT_MAX);
    unchanged.put("summary", "all rows").unwrap();
    assert!(unchanged.commit(None).await.unwrap().version > 0);

    let mut stale = storage.begin(a.clone());
    assert_eq!(stale.scan(KeyRange::prefix("row/")).await.unwrap().len(), SCAN_ROWS_COUNT_MAX);
    let mut append = storage.begin(a.clone());
    append.put("row/99999", "").unwrap();
    append.commit(None).await.unwrap();
    stale.put("summary", "missed one").unwrap();
    let err = stale.commit(None).await.unwrap_err();
    assert_eq!(err, Error::TransactionConflict { actor_id: a.clone(), key: "row/99999".into() });
    assert_eq!(read(&storage, &a, "summary").await, Some(b"all rows".to_vec()));
}

fn keys(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    rows.iter().map(|(key, _)| String::from_utf8(key.clone()).unwrap()).collect()
}

/// Walks `range` page by page from the end `order` names, each page
/// starting past the last key of the one before; the keys in walk order.
async fn walk(
    storage: &Storage,
    a: &ActorId,
    range: &KeyRange,
    order: ScanOrder,
    page: usize,
) -> Vec<String> {
    let mut txn = storage.begin(a.clone());
    let mut range = range.clone();
    let mut walked = Vec::new();
    loop {
        let rows = txn.scan_page(range.clone(), order, page).await.unwrap();
        assert!(rows.len() <= page);
        walked.extend(keys(&rows));
        let Some((last, _)) = rows.last() else { break };
        match order {
            ScanOrder::Ascending => range.start = Bound::Excluded(last.clone()),
            ScanOrder::Descending => range.end = Bound::Excluded(last.clone()),
        }
    }
    walked
}

async fn paged_scans_walk_a_range_past_the_scan_limit_both_ways(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("paged");
    let total = SCAN_ROWS_COUNT_MAX + 700;
    let expected: Vec<String> = (0..total).map(|i| format!("row/{i:06}")).collect();
    for chunk in expected.chunks(TRANSACTION_OPS_COUNT_MAX / 2) {
        let mut txn = storage.begin(a.clone());
        for key in chunk {
            txn.put(key.as_str(), key.as_str()).unwrap();
        }
        txn.commit(None).await.unwrap();
    }
    let mut txn = storage.begin(a.clone());
    txn.put("row!", "before the prefix").unwrap();
    txn.put("rox", "after the prefix").unwrap();
    txn.commit(None).await.unwrap();
    let range = KeyRange::prefix("row/");
    // The whole range is past what one scan may return; pages walk it all.
    assert!(storage.begin(a.clone()).scan(range.clone()).await.is_err());
    assert_eq!(walk(&storage, &a, &range, ScanOrder::Ascending, 1_000).await, expected);
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(walk(&storage, &a, &range, ScanOrder::Descending, 999).await, reversed);
    // The newest and oldest pages, and a page from a cursor, with values.
    let mut txn = storage.begin(a.clone());
    let newest = txn.scan_page(range.clone(), ScanOrder::Descending, 3).await.unwrap();
    assert_eq!(keys(&newest), reversed[..3]);
    assert_eq!(newest[0].1, expected[total - 1].as_bytes());
    let after = KeyRange { start: Bound::Excluded(b"row/005000".to_vec()), end: range.end.clone() };
    assert_eq!(
        keys(&txn.scan_page(after, ScanOrder::Ascending, 2).await.unwrap()),
        ["row/005001", "row/005002"]
    );
    let before = KeyRange { start: range.start.clone(), end: Bound::Excluded(b"row/000002".to_vec()) };
    assert_eq!(
        keys(&txn.scan_page(before, ScanOrder::Descending, 10).await.unwrap()),
        ["row/000001", "row/000000"]
    );
    for bad in [0, SCAN_ROWS_COUNT_MAX + 1] {
        let err = txn.scan_page(range.clone(), ScanOrder::Ascending, bad).await.unwrap_err();
        assert!(matches!(err, Error::Validation { .. }), "limit {bad}: {err}");
    }
}

async fn paged_scans_merge_own_writes_and_validate_what_they_covered(fixture: &Fixture) {
    let storage = fixture.open().await;
    let a = actor("paged-own");
    let mut txn = storage.begin(a.clone());
    for i in 0..10 {
        txn.put(format!("m/{i}"), "stored").unwrap();
    }
    txn.commit(None).await.unwrap();
    let mut txn = storage.begin(a.clone());
    txn.delete("m/0").unwrap();
    txn.delete("m/1").unwrap();
    txn.put("m/2", "mine").unwrap();
    // Two of the first rows are deleted here: the page is still full.
    let rows = txn.scan_page(KeyRange::prefix("m/"), ScanOrder::Ascending, 3).await.unwrap();
    assert_eq!(rows, vec![kv("m/2", "mine"), kv("m/3", "stored"), kv("m/4", "stored")]);
    let newest = txn.scan_page(KeyRange::prefix("m/"), ScanOrder::Descending, 2).await.unwrap();
    assert_eq!(keys(&newest), ["m/9", "m/8"]);
    // A row another commit adds beyond what the pages covered does not
    // conflict; one inside them does.
    let mut other = storage.begin(a.clone());
    other.put("m/55", "outside both pages").unwrap();
    other.commit(None).await.unwrap();
    txn.put("w", "1").unwrap();
    txn.commit(None).await.unwrap();
    let mut txn = storage.begin(a.clone());
    txn.scan_page(KeyRange::prefix("m/"), ScanOrder::Ascending, 2).await.unwrap();
    txn.put("w", "2").unwrap();
    let mut other = storage.begin(a.clone());
    other.put("m/22", "inside the page").unwrap();
    other.commit(None).await.unwrap();
    let err = txn.commit(None).await.unwrap_err();
    assert!(matches!(err, Error::TransactionConflict { .. }), "{err}");
}

async fn committed_state_survives_reopening_the_store(fixture: &Fixture) {
    let a = actor("durable");
    {
        let storage = fixture.open().await;
        let mut txn = storage.begin(a.clone());
        txn.put("k", "kept").unwrap();
        txn.commit(None).await.unwrap();
        storage.claim_placement(a.clone(), node("n1"), 0).await.unwrap();
    }
    let storage = fixture.open().await;
    assert_eq!(read(&storage, &a, "k").await, Some(b"kept".to_vec()));
    assert_eq!(storage.get_placement(&a).await.unwrap().map(|p| p.epoch), Some(1));
    let mut txn = storage.begin(a.clone());
    txn.put("k", "after-reopen").unwrap();
    let info = txn.commit(None).await.unwrap();
    assert!(info.version > 1, "versions keep growing across reopen: {info:?}");
}

async fn concurrent_commits_from_many_actors_all_land(fixture: &Fixture) {
    let storage = fixture.open().await;
    let writers_count = 16;
    let commits_per_writer = 10;
    let mut tasks = Vec::new();
    for w in 0..writers_count {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..commits_per_writer {
                let mut txn = storage.begin(actor(&format!("many-{w}")));
                txn.put(format!("k{i}"), format!("{w}-{i}")).unwrap();
                txn.put("last", i.to_string()).unwrap();
                txn.commit(None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for w in 0..writers_count {
        let rows = storage.begin(actor(&format!("many-{w}"))).scan(KeyRange::prefix("")).await.unwrap();
        assert_eq!(rows.len(), commits_per_writer + 1);
        assert_eq!(read(&storage, &actor(&format!("many-{w}")), "last").await, Some(b"9".to_vec()));
    }
}

macro_rules! conformance_suite {
    ($($case:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::Fixture::Memory(kelpie_storage::Storage::memory())).await;
                }
            )+
        }

        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$case(&super::Fixture::Redb(dir)).await;
                }
            )+
        }

        /// One test for all cases, so the whole suite shares one server.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres_passes_the_conformance_suite() {
            let Some(server) = PostgresServer::start_or_skip("postgres_passes_the_conformance_suite") else { return };
            $(
                let url = server.create_database(stringify!($case)).expect("create database");
                $case(&Fixture::Postgres(url)).await;
                println!("postgres: {} ok", stringify!($case));
            )+
        }
    };
}

conformance_suite!(
    put_get_delete_round_trip,
    reads_see_the_transactions_own_writes,
    scans_return_rows_in_key_order_within_bounds,
    actors_never_see_each_others_keys,
    abort_and_drop_discard_every_write,
    conflicting_commits_one_wins_the_other_retries,
    phantom_rows_in_a_scanned_range_conflict,
    blind_writes_do_not_conflict_and_the_last_wins,
    fenced_commits_need_the_current_placement,
    placements_only_move_forward,
    limits_are_enforced_naming_the_limit,
    scans_past_the_row_limit_are_refused,
    a_scan_of_exactly_the_row_limit_validates_up_to_one_row_past_it,
    paged_scans_walk_a_range_past_the_scan_limit_both_ways,
    paged_scans_merge_own_writes_and_validate_what_they_covered,
    committed_state_survives_reopening_the_store,
    concurrent_commits_from_many_actors_all_land,
);
