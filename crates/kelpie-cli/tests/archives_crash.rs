//! A shared archive survives a kill -9 of the server: writers add passages
//! one by one and in batches, the server is killed while they are still
//! writing, and started again on the same data dir. Every passage whose
//! insert was acknowledged is found exactly once (through the archive's own
//! search and through an agent that attaches it); a batch is all there or
//! not at all; the archive takes inserts again.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use support::{call, serve};

const WRITERS_COUNT: usize = 4;
/// Acknowledged inserts (single and batch) before the kill.
const ACKNOWLEDGED_BEFORE_KILL_COUNT: usize = 120;
/// Passages per batch insert.
const BATCH_PASSAGES_COUNT: usize = 5;

/// What the writers learned: acknowledged passage texts, acknowledged
/// batches, and batches sent without an answer (they may or may not be in).
#[derive(Default)]
struct Outcomes {
    acknowledged: BTreeSet<String>,
    batches_acknowledged: Vec<Vec<String>>,
    batches_unanswered: Vec<Vec<String>>,
}

fn passage_text(writer: usize, n: usize, part: usize) -> String {
    format!(
        "writer {writer} insert {n} part {part}: the kelp grows {} cm a day",
        writer * 1000 + n * 10 + part
    )
}

async fn writer(
    base: String,
    archive_id: String,
    writer: usize,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let http = reqwest::Client::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        if n % 4 == 0 {
            let texts: Vec<String> =
                (0..BATCH_PASSAGES_COUNT).map(|part| passage_text(writer, n, part)).collect();
            let body = json!({"passages": texts.iter().map(|t| json!({"text": t})).collect::<Vec<_>>()});
            let sent =
                http.post(format!("{base}/v1/archives/{archive_id}/passages/batch")).json(&body).send().await;
            let mut outcomes = outcomes.lock().unwrap();
            match sent {
                Ok(response) if response.status().is_success() => {
                    outcomes.acknowledged.extend(texts.iter().cloned());
                    outcomes.batches_acknowledged.push(texts);
                }
                Ok(response) => panic!("batch insert refused: {}", response.status()),
                Err(_) => {
                    outcomes.batches_unanswered.push(texts);
                    return;
                }
            }
        } else {
            let text = passage_text(writer, n, 0);
            let sent = http
                .post(format!("{base}/v1/archives/{archive_id}/passages"))
                .json(&json!({"text": text}))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    outcomes.lock().unwrap().acknowledged.insert(text);
                }
                Ok(response) => panic!("insert refused: {}", response.status()),
                Err(_) => return,
            }
        }
    }
}

/// The texts of the archive's best hits for `query` (at most `limit`).
async fn search(
    http: &reqwest::Client,
    base: &str,
    archive_id: &str,
    query: &str,
    limit: usize,
) -> Vec<String> {
    let body = json!({"archive_id": archive_id, "query": query, "limit": limit});
    let hits = call(http, reqwest::Method::POST, format!("{base}/v1/passages/search"), Some(body)).await;
    hits.as_array()
        .unwrap_or_else(|| panic!("search answers a list: {hits}"))
        .iter()
        .map(|hit| hit["passage"]["text"].as_str().or(hit["text"].as_str()).unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_archive_passages_survive_a_kill_exactly_once() {
    let fake = FakeLlm::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http = reqwest::Client::new();
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let archive = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/archives/"),
        Some(json!({"name": "field notes"})),
    )
    .await;
    let archive_id = archive["id"].as_str().unwrap().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let writers: Vec<_> = (0..WRITERS_COUNT)
        .map(|w| {
            tokio::spawn(writer(
                base.clone(),
                archive_id.clone(),
                w,
                Arc::clone(&stop),
                Arc::clone(&outcomes),
            ))
        })
        .collect();
    while outcomes.lock().unwrap().acknowledged.len() < ACKNOWLEDGED_BEFORE_KILL_COUNT {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Killed with inserts in flight; the writers then see their requests fail.
    server.kill().unwrap();
    server.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert!(outcomes.acknowledged.len() >= ACKNOWLEDGED_BEFORE_KILL_COUNT);
    assert!(!outcomes.batches_acknowledged.is_empty(), "some batches were acknowledged");

    println!(
        "killed after {} acknowledged passages ({} batches), {} batches unanswered",
        outcomes.acknowledged.len(),
        outcomes.batches_acknowledged.len(),
        outcomes.batches_unanswered.len()
    );
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    // Every acknowledged passage is there exactly once: its own text is its
    // best hit, and no second copy follows it.
    for text in &outcomes.acknowledged {
        let hits = search(&http, &base, &archive_id, text, 3).await;
        assert_eq!(hits.first(), Some(text), "acknowledged {text:?} is found after the restart");
        assert_eq!(hits.iter().filter(|hit| *hit == text).count(), 1, "{text:?} is stored once: {hits:?}");
    }
    // A batch that got no answer is all there or not at all.
    for batch in &outcomes.batches_unanswered {
        let mut present = 0;
        for text in batch {
            present += usize::from(search(&http, &base, &archive_id, text, 1).await.first() == Some(text));
        }
        assert!(
            present == 0 || present == batch.len(),
            "batch {batch:?}: {present} of {} present",
            batch.len()
        );
    }

    // An agent attaching the archive finds an acknowledged passage, and the
    // archive takes inserts again.
    let agent =
        call(&http, reqwest::Method::POST, format!("{base}/v1/agents/"), Some(json!({"name": "diver"})))
            .await;
    let agent_id = agent["id"].as_str().unwrap();
    call(
        &http,
        reqwest::Method::PATCH,
        format!("{base}/v1/agents/{agent_id}/archives/attach/{archive_id}"),
        None,
    )
    .await;
    let last = outcomes.acknowledged.iter().next_back().unwrap();
    let found: Value = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/agents/{agent_id}/archival-memory/search?query={}&top_k=1", urlencode(last)),
        None,
    )
    .await;
    assert_eq!(found["results"][0]["content"].as_str(), Some(last.as_str()), "{found}");
    let after = "written after the restart";
    call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/archives/{archive_id}/passages"),
        Some(json!({"text": after})),
    )
    .await;
    assert_eq!(search(&http, &base, &archive_id, after, 1).await, vec![after.to_string()]);
    server.kill().unwrap();
    server.wait().unwrap();
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
