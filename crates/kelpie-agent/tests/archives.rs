//! The archive actors against a real redb file: passages stored with their
//! codes and found through the archive's index (nearest first, tag
//! filtered), the index kept right across deletes and a restart, a batch
//! past `ARCHIVE_INSERT_PASSAGES_COUNT_MAX`, a deleted archive refusing
//! everything and reclaimed in batches to nothing, its passage count kept
//! through all of it; the store's attachments
//! past `AGENT_ARCHIVES_COUNT_MAX` and `ARCHIVE_AGENTS_COUNT_MAX`, and past
//! `ARCHIVES_COUNT_MAX` archives.

use std::ops::Bound;

use kelpie_agent::actors::agent::TagFilter;
use kelpie_agent::actors::archive::{
    ArchiveActor, ArchiveCommand, ArchivePassage, ArchiveReply, ARCHIVE_INSERT_PASSAGES_COUNT_MAX,
    ARCHIVE_NAMESPACE,
};
use kelpie_agent::actors::archive_store::{
    ArchiveRecord, ArchiveStoreActor, ArchiveStoreCommand, ArchiveStoreReply, AGENT_ARCHIVES_COUNT_MAX,
    ARCHIVES_COUNT_MAX, ARCHIVE_AGENTS_COUNT_MAX, ARCHIVE_STORE_ACTOR,
};
use kelpie_agent::limits::RECLAIM_BATCH_KEYS_COUNT;
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_core::{ActorId, Env, Error, NodeId};
use kelpie_llm::EmbeddingSettings;
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_storage::limits::SCAN_ROWS_COUNT_MAX;
use kelpie_storage::{KeyRange, ScanOrder, Storage};
use serde_json::json;

const ARCHIVE: &str = "archive-00000000-0000-4000-8000-000000000001";
/// Where the runtime keeps an actor's extra keys (beside its state).
const EXTRA_KEYS_PREFIX: &str = "u/";

fn runtimes(storage: &Storage) -> (Runtime<ArchiveStoreActor>, Runtime<ArchiveActor>) {
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    let all = agent_runtimes(storage, &Placement::Local, &Env::production(), &config).unwrap();
    (all.archive_store, all.archives)
}

fn archive_id() -> ActorId {
    ActorId::new(ARCHIVE_NAMESPACE, ARCHIVE).unwrap()
}

async fn send(runtime: &Runtime<ArchiveActor>, command: ArchiveCommand) -> kelpie_core::Result<ArchiveReply> {
    runtime.invoke(&archive_id(), command).await
}

fn passage(n: usize, tags: &[&str], embedding: Vec<f32>) -> ArchivePassage {
    ArchivePassage {
        id: format!("passage-00000000-0000-4000-8000-{n:012}"),
        text: format!("text {n}"),
        tags: Some(tags.iter().map(|t| t.to_string()).collect()),
        metadata: json!({"n": n}),
        embedding,
        created_ms: 1_000 + n as u64,
    }
}

/// The passages the archive counts (what the embeddings size estimate reads).
async fn count(runtime: &Runtime<ArchiveActor>) -> u64 {
    match send(runtime, ArchiveCommand::Count).await.unwrap() {
        ArchiveReply::Count(count) => count,
        other => panic!("a count, not {other:?}"),
    }
}

async fn search(
    runtime: &Runtime<ArchiveActor>,
    query: Vec<f32>,
    top_k: usize,
    tags: &[&str],
) -> Vec<String> {
    let filter = TagFilter { tags: tags.iter().map(|t| t.to_string()).collect(), all: false };
    let ArchiveReply::Scored(found) =
        send(runtime, ArchiveCommand::Search { query, top_k, filter }).await.unwrap()
    else {
        panic!("scored")
    };
    found.into_iter().map(|(passage, _)| passage.text).collect()
}

async fn stored_keys(storage: &Storage) -> Vec<String> {
    let mut txn = storage.begin(archive_id());
    let mut range = KeyRange::prefix(Vec::new());
    let mut keys = Vec::new();
    loop {
        let rows = txn.scan_page(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX).await.unwrap();
        keys.extend(rows.iter().filter_map(|(key, _)| {
            String::from_utf8_lossy(key).strip_prefix(EXTRA_KEYS_PREFIX).map(str::to_string)
        }));
        match rows.last() {
            Some((key, _)) if rows.len() == SCAN_ROWS_COUNT_MAX => range.start = Bound::Excluded(key.clone()),
            _ => return keys,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passages_are_found_by_the_index_across_deletes_and_a_restart_then_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    {
        let (_, runtime) = runtimes(&storage);
        // Passage n points between axis 0 and axis 1, more towards 1 as n grows.
        let batch: Vec<ArchivePassage> = (0..10)
            .map(|n| {
                passage(
                    n,
                    if n % 2 == 0 { &["even"] } else { &["odd"] },
                    vec![10.0 - n as f32, n as f32, 0.0],
                )
            })
            .collect();
        let ArchiveReply::Passages(stored) =
            send(&runtime, ArchiveCommand::Insert(batch.clone())).await.unwrap()
        else {
            panic!("stored")
        };
        assert_eq!(stored, batch);
        assert_eq!(search(&runtime, vec![1.0, 0.0, 0.0], 3, &[]).await, ["text 0", "text 1", "text 2"]);
        assert_eq!(search(&runtime, vec![0.0, 1.0, 0.0], 2, &["even"]).await, ["text 8", "text 6"]);
        send(&runtime, ArchiveCommand::Delete { id: batch[0].id.clone() }).await.unwrap();
        let again = send(&runtime, ArchiveCommand::Delete { id: batch[0].id.clone() }).await;
        assert!(matches!(again, Err(Error::NotFound { kind: "passage", .. })), "{again:?}");
        assert_eq!(search(&runtime, vec![1.0, 0.0, 0.0], 2, &[]).await, ["text 1", "text 2"]);
        // Past the batch limit: refused, nothing stored.
        let big: Vec<ArchivePassage> = (100..101 + ARCHIVE_INSERT_PASSAGES_COUNT_MAX)
            .map(|n| passage(n, &[], vec![0.0, 0.0, 1.0]))
            .collect();
        let refused = send(&runtime, ArchiveCommand::Insert(big)).await;
        assert!(
            matches!(
                refused,
                Err(Error::LimitExceeded { limit_name: "ARCHIVE_INSERT_PASSAGES_COUNT_MAX", .. })
            ),
            "{refused:?}"
        );
        assert_eq!(search(&runtime, vec![0.0, 0.0, 1.0], 50, &[]).await.len(), 9);
        assert_eq!(count(&runtime).await, 9, "ten stored, one deleted, the refused batch not counted");
        runtime.shutdown().await;
    }
    // A new runtime (as after a restart): the index is rebuilt from the stored codes.
    let (_, runtime) = runtimes(&storage);
    assert_eq!(count(&runtime).await, 9, "the count is stored with the passages");
    assert_eq!(search(&runtime, vec![1.0, 0.0, 0.0], 2, &[]).await, ["text 1", "text 2"]);
    let ArchiveReply::Passages(page) =
        send(&runtime, ArchiveCommand::Page { after: Some(passage(5, &[], vec![]).id), limit: 2 })
            .await
            .unwrap()
    else {
        panic!("page")
    };
    assert_eq!(page.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(), ["text 6", "text 7"]);
    assert_eq!(page[0].metadata, json!({"n": 6}));
    // More keys than one reclaim batch, then the archive is deleted.
    for chunk in 0..(RECLAIM_BATCH_KEYS_COUNT / ARCHIVE_INSERT_PASSAGES_COUNT_MAX + 1) {
        let first = 1_000 + chunk * ARCHIVE_INSERT_PASSAGES_COUNT_MAX;
        let batch = (first..first + ARCHIVE_INSERT_PASSAGES_COUNT_MAX)
            .map(|n| passage(n, &[], vec![1.0, n as f32, 0.0]))
            .collect();
        send(&runtime, ArchiveCommand::Insert(batch)).await.unwrap();
    }
    assert!(stored_keys(&storage).await.len() > 2 * RECLAIM_BATCH_KEYS_COUNT);
    let inserted = (RECLAIM_BATCH_KEYS_COUNT / ARCHIVE_INSERT_PASSAGES_COUNT_MAX + 1)
        * ARCHIVE_INSERT_PASSAGES_COUNT_MAX;
    assert_eq!(count(&runtime).await, 9 + inserted as u64);
    send(&runtime, ArchiveCommand::DeleteAll).await.unwrap();
    assert_eq!(count(&runtime).await, 0, "a deleted archive counts nothing");
    let gone =
        send(&runtime, ArchiveCommand::Search { query: vec![1.0], top_k: 1, filter: TagFilter::default() })
            .await;
    assert!(matches!(gone, Err(Error::NotFound { kind: "archive", .. })), "{gone:?}");
    let insert = send(&runtime, ArchiveCommand::Insert(vec![passage(1, &[], vec![1.0])])).await;
    assert!(insert.is_err(), "a deleted archive takes no passage");
    let mut batches = 0;
    while !matches!(
        send(&runtime, ArchiveCommand::Reclaim { keys_max: RECLAIM_BATCH_KEYS_COUNT }).await.unwrap(),
        ArchiveReply::Reclaimed { done: true }
    ) {
        batches += 1;
    }
    assert!(batches >= 2, "{batches} full batches");
    assert_eq!(stored_keys(&storage).await, Vec::<String>::new(), "nothing of the archive is left");
}

fn record(n: usize) -> ArchiveRecord {
    ArchiveRecord {
        id: format!("archive-00000000-0000-4000-8000-{n:012}"),
        name: format!("archive {n}"),
        description: None,
        metadata: None,
        embedding: EmbeddingSettings {
            handle: "kelpie/local-hash-256".into(),
            model: "local".into(),
            dim: 256,
            byok_provider: None,
        },
        agent_ids: Vec::new(),
        created_ms: 1_000,
        updated_ms: 1_000,
    }
}

async fn store(
    runtime: &Runtime<ArchiveStoreActor>,
    command: ArchiveStoreCommand,
) -> kelpie_core::Result<ArchiveStoreReply> {
    let id = ActorId::new(ARCHIVE_STORE_ACTOR.0, ARCHIVE_STORE_ACTOR.1).unwrap();
    runtime.invoke(&id, command).await
}

fn attach(n: usize, agent: &str) -> ArchiveStoreCommand {
    ArchiveStoreCommand::Attach { id: record(n).id, agent_id: agent.to_string(), attached: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_bounds_archives_and_attachments_and_deleting_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let (runtime, _) = runtimes(&storage);
    for n in 0..ARCHIVES_COUNT_MAX {
        store(&runtime, ArchiveStoreCommand::Create(Box::new(record(n)))).await.unwrap();
    }
    let over = store(&runtime, ArchiveStoreCommand::Create(Box::new(record(ARCHIVES_COUNT_MAX)))).await;
    assert!(matches!(over, Err(Error::LimitExceeded { limit_name: "ARCHIVES_COUNT_MAX", .. })), "{over:?}");
    // One agent holds at most AGENT_ARCHIVES_COUNT_MAX archives.
    for n in 0..AGENT_ARCHIVES_COUNT_MAX {
        store(&runtime, attach(n, "agent-a")).await.unwrap();
    }
    let over = store(&runtime, attach(AGENT_ARCHIVES_COUNT_MAX, "agent-a")).await;
    assert!(
        matches!(over, Err(Error::LimitExceeded { limit_name: "AGENT_ARCHIVES_COUNT_MAX", .. })),
        "{over:?}"
    );
    store(&runtime, attach(0, "agent-a")).await.expect("attaching again changes nothing");
    // One archive holds at most ARCHIVE_AGENTS_COUNT_MAX agents.
    let last = ARCHIVES_COUNT_MAX - 1;
    for n in 0..ARCHIVE_AGENTS_COUNT_MAX {
        store(&runtime, attach(last, &format!("agent-{n}"))).await.unwrap();
    }
    let over = store(&runtime, attach(last, "agent-one-more")).await;
    assert!(
        matches!(over, Err(Error::LimitExceeded { limit_name: "ARCHIVE_AGENTS_COUNT_MAX", .. })),
        "{over:?}"
    );
    // Deleting an archive detaches it from its agents in the same commit.
    let ArchiveStoreReply::Archives(held) =
        store(&runtime, ArchiveStoreCommand::OfAgent { agent_id: "agent-a".into() }).await.unwrap()
    else {
        panic!("archives")
    };
    assert_eq!(held.len(), AGENT_ARCHIVES_COUNT_MAX);
    store(&runtime, ArchiveStoreCommand::Delete { id: record(0).id }).await.unwrap();
    let ArchiveStoreReply::Archives(held) =
        store(&runtime, ArchiveStoreCommand::OfAgent { agent_id: "agent-a".into() }).await.unwrap()
    else {
        panic!("archives")
    };
    assert_eq!(
        held.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
        (1..AGENT_ARCHIVES_COUNT_MAX).map(|n| record(n).id).collect::<Vec<_>>()
    );
    let ArchiveStoreReply::Ids(deleted) = store(&runtime, ArchiveStoreCommand::Deleted).await.unwrap() else {
        panic!("ids")
    };
    assert_eq!(deleted, [record(0).id]);
    store(&runtime, ArchiveStoreCommand::Reclaimed { id: record(0).id }).await.unwrap();
    let ArchiveStoreReply::Ids(deleted) = store(&runtime, ArchiveStoreCommand::Deleted).await.unwrap() else {
        panic!("ids")
    };
    assert!(deleted.is_empty());
    let gone = store(&runtime, ArchiveStoreCommand::Get { id: record(0).id }).await;
    assert!(matches!(gone, Err(Error::NotFound { kind: "archive", .. })), "{gone:?}");
}
