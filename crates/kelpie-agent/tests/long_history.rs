//! An agent past every limit of the store: more messages than one scan may
//! return (`SCAN_ROWS_COUNT_MAX`), more passages than one page
//! (`STORE_PAGE_COUNT_MAX`), an import of more operations than one
//! transaction (`TRANSACTION_OPS_COUNT_MAX`), reclaimed in more batches
//! than one (`RECLAIM_BATCH_KEYS_COUNT`), archival search through the index
//! against exact ranking. The real agent service over real storage (a redb
//! file), no LLM call (the history comes in by import, embeddings are local).

mod support;

use std::ops::Bound;

use kelpie_agent::actors::reclaim::PendingKind;
use kelpie_agent::limits::{RECLAIM_BATCH_KEYS_COUNT, STORE_PAGE_COUNT_MAX};
use kelpie_agent::page::Page;
use kelpie_agent::requests::CreateAgent;
use kelpie_agent::service::transfer::ImportOptions;
use kelpie_agent::{AgentService, ServiceError};
use kelpie_core::limits::TRANSACTION_OPS_COUNT_MAX;
use kelpie_core::ActorId;
use kelpie_storage::limits::SCAN_ROWS_COUNT_MAX;
use kelpie_storage::{KeyRange, ScanOrder, Storage};
use serde_json::{json, Value};

const MESSAGES_COUNT: usize = SCAN_ROWS_COUNT_MAX + 2_500;
const PASSAGES_COUNT: usize = STORE_PAGE_COUNT_MAX + 300;

const _: () =
    assert!(MESSAGES_COUNT * 3 > TRANSACTION_OPS_COUNT_MAX && MESSAGES_COUNT > RECLAIM_BATCH_KEYS_COUNT);

fn service(storage: &Storage, dir: &std::path::Path) -> AgentService {
    // Never called: the history comes in by import, embeddings are local.
    support::local_service(storage, dir, "http://127.0.0.1:9/v1")
}

async fn create(service: &AgentService, name: &str) -> String {
    let request = CreateAgent { name: Some(name.into()), ..CreateAgent::default() };
    service.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string()
}

fn user_message(i: usize) -> Value {
    json!({"id": format!("message-{i}"), "seq": 0, "created_ms": 1_000 + i as u64, "run_id": null,
           "step_id": null, "body": {"role": "user", "content": format!("note {i} marker{i} of the old days")}})
}

fn passage(i: usize) -> Value {
    json!({"id": format!("passage-{i}"), "text": format!("fact {i}"), "tags": [], "created_ms": 5, "embedding": [0.5]})
}

/// The export of a fresh agent with `messages` and `passages` put in.
async fn big_file(service: &AgentService, messages: Vec<Value>, passages: Vec<Value>) -> Vec<u8> {
    let source = create(service, "source").await;
    let mut file = service.transfer.export_value(&source).await.unwrap();
    file["kelpie_messages"] = Value::Array(messages);
    file["kelpie_passages"] = Value::Array(passages);
    serde_json::to_vec(&file).unwrap()
}

/// Every key stored for agent `agent_id` (the actor's state and its extra keys).
async fn stored_keys(storage: &Storage, agent_id: &str) -> Vec<String> {
    let mut txn = storage.begin(ActorId::new("agents", agent_id).unwrap());
    let mut range = KeyRange::prefix(Vec::new());
    let mut keys = Vec::new();
    loop {
        let rows = txn.scan_page(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX).await.unwrap();
        keys.extend(rows.iter().map(|(key, _)| String::from_utf8_lossy(key).into_owned()));
        match rows.last() {
            Some((key, _)) if rows.len() == SCAN_ROWS_COUNT_MAX => range.start = Bound::Excluded(key.clone()),
            _ => return keys,
        }
    }
}

fn page(after: Option<String>, limit: usize, descending: bool) -> Page {
    Page { before: None, after, limit, descending }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_past_every_limit_is_listed_exported_deleted_and_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path());
    let messages: Vec<Value> = (0..MESSAGES_COUNT).map(user_message).collect();
    let passages: Vec<Value> = (0..PASSAGES_COUNT).map(passage).collect();
    let file = big_file(&service, messages, passages).await;
    let options = ImportOptions { append_copy_suffix: true, ..ImportOptions::default() };
    let answer = service.transfer.import_bytes(&file, options).await.unwrap();
    let id = answer["agent_ids"][0].as_str().unwrap().to_string();
    assert!(service.reclaimer.pending().await.unwrap().is_empty(), "a finished import leaves no entry");

    // Every message, page by page, in order; the newest page; a page from a cursor.
    let (mut contents, mut ids) = (Vec::new(), Vec::new());
    let mut after = None;
    loop {
        let listed = service.agents.list_messages(&id, &page(after.clone(), 1_000, false)).await.unwrap();
        contents.extend(listed.iter().map(|m| m["content"].as_str().unwrap().to_string()));
        ids.extend(listed.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        match listed.last() {
            Some(last) if listed.len() == 1_000 => after = Some(last["id"].as_str().unwrap().to_string()),
            _ => break,
        }
    }
    let expected: Vec<String> =
        (0..MESSAGES_COUNT).map(|i| format!("note {i} marker{i} of the old days")).collect();
    assert_eq!(contents, expected);
    let newest = service.agents.list_messages(&id, &page(None, 50, true)).await.unwrap();
    assert_eq!(newest.len(), 50);
    assert_eq!(newest[0]["content"], expected[MESSAGES_COUNT - 1]);
    let from = ids[5_000].clone();
    let older = service.agents.list_messages(&id, &page(Some(from), 2, true)).await.unwrap();
    assert_eq!(older[0]["content"], expected[4_999]);
    assert_eq!(older[1]["content"], expected[4_998]);

    // Every passage, page by page.
    let mut texts = Vec::new();
    let mut after = None;
    loop {
        let listed = service.archival.list(&id, &page(after.clone(), 500, false)).await.unwrap();
        texts.extend(listed.iter().map(|p| p["text"].as_str().unwrap().to_string()));
        match listed.last() {
            Some(last) if listed.len() == 500 => after = Some(last["id"].as_str().unwrap().to_string()),
            _ => break,
        }
    }
    assert_eq!(texts, (0..PASSAGES_COUNT).map(|i| format!("fact {i}")).collect::<Vec<_>>());

    // The export streams in pieces and holds everything.
    let mut export = service.transfer.export(&id).await.unwrap();
    let (mut bytes, mut chunks) = (Vec::new(), 0);
    while let Some(chunk) = export.next_chunk().await.unwrap() {
        bytes.extend(chunk);
        chunks += 1;
    }
    assert!(chunks > MESSAGES_COUNT / STORE_PAGE_COUNT_MAX, "{chunks} chunks");
    let exported: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(exported["kelpie_messages"].as_array().unwrap().len(), MESSAGES_COUNT);
    assert_eq!(exported["kelpie_passages"].as_array().unwrap().len(), PASSAGES_COUNT);
    assert_eq!(exported["kelpie_messages"][7]["body"]["content"], expected[7]);

    // Deleted: gone at once; its keys go in batches, in the background.
    let keys_before = stored_keys(&storage, &id).await.len();
    assert!(keys_before > 2 * MESSAGES_COUNT, "{keys_before} keys");
    service.agents.delete(&id).await.unwrap();
    assert!(matches!(service.agents.get(&id).await, Err(ServiceError::AgentNotFound(_))));
    assert!(matches!(
        service.agents.list_messages(&id, &page(None, 10, false)).await,
        Err(ServiceError::AgentNotFound(_))
    ));
    let pending = service.reclaimer.pending().await.unwrap();
    assert_eq!(pending.iter().map(|e| e.agent_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    assert_eq!(service.reclaimer.run_once().await.unwrap(), 1);
    assert_eq!(stored_keys(&storage, &id).await, ["s"], "only the actor's state is left");
    assert!(service.reclaimer.pending().await.unwrap().is_empty());
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_and_a_recreated_idempotent_agent_start_empty_while_the_old_keys_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path());
    let messages: Vec<Value> = (0..3_000).map(user_message).collect();
    let file = big_file(&service, messages, (0..10).map(passage).collect()).await;
    let answer = service.transfer.import_bytes(&file, ImportOptions::default()).await.unwrap();
    let id = answer["agent_ids"][0].as_str().unwrap().to_string();
    service.agents.reset_messages(&id).await.unwrap();
    assert_eq!(service.agents.list_messages(&id, &page(None, 10, false)).await.unwrap(), Vec::<Value>::new());
    assert_eq!(service.archival.list(&id, &page(None, 100, false)).await.unwrap().len(), 10, "passages stay");
    assert_eq!(service.reclaimer.run_once().await.unwrap(), 1);
    let keys = stored_keys(&storage, &id).await;
    let passage_key = |key: &String| key.starts_with("u/p") || key.starts_with("u/q");
    assert!(keys.iter().all(|key| key == "s" || passage_key(key)), "only state and passages: {keys:?}");
    assert_eq!(keys.len(), 1 + 3 * 10, "a passage, its id and its search code, each");

    // An agent created with an idempotency key, deleted, created again with
    // the same key: the same id, a new empty agent, while the old one's
    // keys still wait.
    let request = CreateAgent { name: Some("keyed".into()), ..CreateAgent::default() };
    let keyed = service.agents.create(request.clone(), Some("key-1")).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    service.agents.delete(&keyed).await.unwrap();
    let again = service.agents.create(request, Some("key-1")).await.unwrap();
    assert_eq!(again["id"], keyed.as_str());
    assert_eq!(
        service.agents.list_messages(&keyed, &page(None, 10, false)).await.unwrap(),
        Vec::<Value>::new()
    );
    service.reclaimer.run_once().await.unwrap();
    assert!(service.reclaimer.pending().await.unwrap().is_empty());
    assert_eq!(service.agents.get(&keyed).await.unwrap()["name"], "keyed", "reclaiming spares the new agent");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_abandoned_imports_leave_nothing_visible_and_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path());
    let before = service.agents.list(None, &[], false, &page(None, 100, false)).await.unwrap().len();

    // A broken message after thousands of good ones: refused, nothing visible.
    let mut messages: Vec<Value> = (0..5_000).map(user_message).collect();
    messages.push(json!({"id": "message-broken", "body": {"role": "nobody"}}));
    let file = big_file(&service, messages, Vec::new()).await;
    let err = service.transfer.import_bytes(&file, ImportOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("not a kelpie agent file: a message"), "{err}");
    let pending = service.reclaimer.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].kind, PendingKind::Ended, "a failed import is given up at once");
    let failed = pending[0].agent_id.clone();
    assert!(stored_keys(&storage, &failed).await.len() > 5_000, "its first batches were written");
    assert!(matches!(service.agents.get(&failed).await, Err(ServiceError::AgentNotFound(_))));
    assert_eq!(
        service.agents.list(None, &[], false, &page(None, 100, false)).await.unwrap().len(),
        before + 1
    );
    assert_eq!(service.reclaimer.run_once().await.unwrap(), 1);
    assert_eq!(stored_keys(&storage, &failed).await, ["s"]);

    // An import whose server stopped mid-file (the import is dropped): left
    // alone while its lease runs, reclaimed once it has run out.
    let messages: Vec<Value> = (0..4_000).map(user_message).collect();
    let file = big_file(&service, messages, Vec::new()).await;
    let mut import = service.transfer.import(ImportOptions::default());
    import.feed(&file[..file.len() * 3 / 4]).await.unwrap();
    drop(import);
    let pending = service.reclaimer.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    let stopped = pending[0].agent_id.clone();
    assert!(matches!(pending[0].kind, PendingKind::Import { .. }));
    assert_eq!(service.reclaimer.run_once().await.unwrap(), 0, "within its lease");
    assert!(matches!(service.agents.get(&stopped).await, Err(ServiceError::AgentNotFound(_))));
    service.reclaimer.note(&stopped, PendingKind::Import { lease_expires_ms: 0 }).await.unwrap();
    assert_eq!(service.reclaimer.run_once().await.unwrap(), 1);
    assert_eq!(stored_keys(&storage, &stopped).await, ["s"]);
    assert!(matches!(service.agents.get(&stopped).await, Err(ServiceError::AgentNotFound(_))));
    service.shutdown().await;
}

/// A passage text of a few words from a small vocabulary, so many passages
/// share words (and scores tie) as real notes do.
fn note(i: usize) -> String {
    const VOCABULARY: &str = "lighthouse key stone blue harbor ferry tide north garden violin chess tea \
                              winter bridge lamp river salt rope anchor gull storm map bell";
    let words: Vec<&str> = VOCABULARY.split_whitespace().collect();
    assert_eq!(words.len(), 23);
    let word = |n: usize| words[n % words.len()];
    format!("{} {} {} {}", word(i), word(i / 23), word(i * 7 + 3), i % 97)
}

/// `(text, score)` of the `k` best passages by exact cosine, as brute force ranks them.
fn exact_top(texts: &[String], query: &str, k: usize) -> Vec<(String, f32)> {
    let query = kelpie_memory::embed_local(query);
    let mut scored: Vec<(usize, f32)> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| (i, kelpie_memory::cosine(&kelpie_memory::embed_local(text), &query)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.into_iter().take(k).map(|(i, score)| (texts[i].clone(), score)).collect()
}

async fn search(
    service: &AgentService,
    id: &str,
    query: &str,
    tags: Option<Vec<String>>,
) -> Vec<(String, f32)> {
    let request = kelpie_agent::requests::PassageSearch {
        query: Some(query.into()),
        agent_id: Some(id.into()),
        tags,
        limit: Some(10),
        ..Default::default()
    };
    let found = service.archival.search_passages(request).await.unwrap();
    found
        .iter()
        .map(|hit| (hit["passage"]["text"].as_str().unwrap().into(), hit["score"].as_f64().unwrap() as f32))
        .collect()
}

/// The same scores, best first (ties may list equal passages in any order).
fn assert_same_scores(found: &[(String, f32)], exact: &[(String, f32)], query: &str) {
    assert_eq!(found.len(), exact.len(), "{query}");
    for ((_, got), (_, want)) in found.iter().zip(exact) {
        assert!((got - want).abs() < 1e-5, "{query}: {found:?} vs {exact:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archival_search_through_the_index_ranks_as_brute_force_across_changes_and_restarts() {
    const COUNT: usize = 2 * STORE_PAGE_COUNT_MAX + 300;
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path());
    let mut texts: Vec<String> = (0..COUNT).map(note).collect();
    let passages: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let tags = if i % 10 == 0 { vec!["tenth"] } else { vec![] };
            json!({"id": format!("p-{i}"), "text": text, "tags": tags, "created_ms": 5,
                   "embedding": kelpie_memory::embed_local(text)})
        })
        .collect();
    let file = big_file(&service, Vec::new(), passages).await;
    let answer = service.transfer.import_bytes(&file, ImportOptions::default()).await.unwrap();
    let id = answer["agent_ids"][0].as_str().unwrap().to_string();

    let queries: Vec<String> =
        (0..40).map(|q| note(q * 31 + 5)).chain(["blue harbor".into(), "gull".into()]).collect();
    for query in &queries {
        assert_same_scores(&search(&service, &id, query, None).await, &exact_top(&texts, query, 10), query);
    }
    // Tag-filtered: only tagged passages, in the order of their scores.
    let tenth: Vec<String> = texts.iter().step_by(10).cloned().collect();
    for query in queries.iter().take(10) {
        let found = search(&service, &id, query, Some(vec!["tenth".into()])).await;
        assert!(found.iter().all(|(text, _)| tenth.contains(text)), "{found:?}");
        assert_same_scores(&found, &exact_top(&tenth, query, 10), query);
    }

    // A passage added and one deleted after the index is built.
    let added = kelpie_agent::requests::CreatePassage { text: "zebra crossing at dawn".into(), tags: None };
    service.archival.insert(&id, added).await.unwrap();
    texts.push("zebra crossing at dawn".into());
    assert_eq!(search(&service, &id, "zebra dawn", None).await[0].0, "zebra crossing at dawn");
    let best = search(&service, &id, &queries[0], None).await[0].0.clone();
    let listed = service.archival.list(&id, &page(None, 1_000, false)).await.unwrap();
    let doomed =
        listed.iter().find(|p| p["text"] == best.as_str()).unwrap()["id"].as_str().unwrap().to_string();
    service.archival.delete(&id, &doomed).await.unwrap();
    let position = texts.iter().position(|text| *text == best).unwrap();
    texts.remove(position);
    let found = search(&service, &id, &queries[0], None).await;
    assert!(found.iter().all(|(text, _)| *text != best), "a deleted passage is never found");
    assert_same_scores(&found, &exact_top(&texts, &queries[0], 10), &queries[0]);
    let before_restart: Vec<Vec<(String, f32)>> = {
        let mut all = Vec::new();
        for query in &queries {
            all.push(search(&service, &id, query, None).await);
        }
        all
    };
    service.shutdown().await;

    // Restarted, with the codes of some passages lost (as for passages
    // stored before codes were kept): the index is rebuilt from what is
    // stored and answers the same.
    let mut txn = storage.begin(ActorId::new("agents", &id).unwrap());
    let mut codes = 0;
    for key in stored_keys(&storage, &id).await.iter().filter(|key| key.starts_with("u/q/")).step_by(3) {
        txn.delete(key.as_bytes().to_vec()).unwrap();
        codes += 1;
    }
    assert!(codes > 500, "{codes} codes dropped");
    txn.commit(None).await.unwrap();
    let service = self::service(&storage, dir.path());
    for (query, before) in queries.iter().zip(&before_restart) {
        let after = search(&service, &id, query, None).await;
        assert_same_scores(&after, before, query);
        assert_same_scores(&after, &exact_top(&texts, query, 10), query);
    }
    service.shutdown().await;
}
