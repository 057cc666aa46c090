//! Long-lived agents: a real `kelpie serve` process (redb in a temp dir),
//! the fake LLM answering at once in this process, one client.
//!
//! 1. An agent with `KELPIE_BENCH_MESSAGES` messages (default 1 000 000)
//!    and one with `KELPIE_BENCH_PASSAGES` passages (default 100 000, local
//!    embeddings), both brought in by `POST /v1/agents/import`.
//! 2. Turn latency (p50, p99) of the big agent against a new agent's, the
//!    newest page of 50 messages, a cursor walk through every message
//!    (pages of 1 000), a streamed export (MB/s), archival search latency
//!    (the first search builds the index; then p50, p99) and its recall@10
//!    against brute force over the same embeddings.
//! 3. The server's resident memory with both agents active, then the delete
//!    of the big agent (its answer; reclaim runs after in the background).
//!
//! Run: `cargo bench -p kelpie-cli --bench long_lived`. The server, the
//! client and the fake LLM share this machine's cores.
//! `KELPIE_BENCH_SERVER_BIN` runs another build of `kelpie` as the server.

mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use server::{process_cpu_ms, send, Server};

const MESSAGES_COUNT_DEFAULT: usize = 1_000_000;
const PASSAGES_COUNT_DEFAULT: usize = 100_000;
const TURNS_COUNT: usize = 200;
/// Messages of the agent whose turns the big agent's are compared with:
/// enough to fill the context window as the big one's is.
const SHORT_HISTORY_COUNT: usize = 2_000;
const NEWEST_PAGE_SAMPLES_COUNT: usize = 200;
const SEARCH_SAMPLES_COUNT: usize = 300;
/// Queries whose recall@10 is measured.
const RECALL_QUERIES_COUNT: usize = 100;
const WALK_PAGE_COUNT: usize = 1_000;

/// Words of the generated messages and passages.
const VOCABULARY: &str = "harbor lighthouse key stone blue ferry tide north garden violin chess tea winter \
    bridge lamp river salt rope anchor gull storm map bell market bread letter train clock window orchard \
    candle boat island coffee paper mountain forest road kitchen piano summer rain cloud engine silver copper \
    ticket station school doctor friend sister brother museum painting song dance recipe garage bicycle \
    meeting project deadline holiday";

/// A deterministic sentence of `count` words for item `i`.
fn sentence(i: usize, count: usize) -> String {
    let mut state = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let vocabulary: Vec<&str> = VOCABULARY.split_whitespace().collect();
    let mut words = Vec::with_capacity(count);
    for _ in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        words.push(vocabulary[(state % vocabulary.len() as u64) as usize]);
    }
    words.join(" ")
}

fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3
}

async fn create_agent(http: &reqwest::Client, base: &str, name: &str) -> String {
    let body = json!({"name": name, "memory_blocks": [{"label": "human", "value": "A bench user."}]});
    let agent: Value = send(http.post(format!("{base}/v1/agents/")).json(&body)).await.json().await.unwrap();
    agent["id"].as_str().unwrap().to_string()
}

/// Imports an agent file made from the export of a new agent with
/// `messages` and `passages` (each a JSON item) put in; its id and time.
async fn import(
    http: &reqwest::Client,
    base: &str,
    messages: impl Iterator<Item = Value>,
    passages: impl Iterator<Item = Value>,
) -> (String, Duration, usize) {
    let template = create_agent(http, base, "template").await;
    let mut file: Value =
        send(http.get(format!("{base}/v1/agents/{template}/export"))).await.json().await.unwrap();
    // Kelpie's own lists of the export (beside Letta's `agents[].messages`,
    // which hold messages in Letta's form).
    file["kelpie_messages"] = json!([]);
    file["kelpie_passages"] = json!([]);
    let text = serde_json::to_string(&file).unwrap();
    // Splice the items into the empty arrays without holding them as values.
    let (head, tail) = text.split_once("\"kelpie_messages\":[]").expect("messages array");
    let (middle, tail) = tail.split_once("\"kelpie_passages\":[]").expect("passages array");
    let mut bytes = Vec::new();
    let boundary = "kelpie-bench-boundary";
    bytes.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.af\"\r\n\
             Content-Type: application/json\r\n\r\n{head}\"kelpie_messages\":["
        )
        .as_bytes(),
    );
    for (i, message) in messages.enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        serde_json::to_writer(&mut bytes, &message).unwrap();
    }
    bytes.extend_from_slice(format!("]{middle}\"kelpie_passages\":[").as_bytes());
    for (i, passage) in passages.enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        serde_json::to_writer(&mut bytes, &passage).unwrap();
    }
    bytes.extend_from_slice(format!("]{tail}\r\n--{boundary}--\r\n").as_bytes());
    let size = bytes.len();
    let started = Instant::now();
    let answer: Value = send(
        http.post(format!("{base}/v1/agents/import"))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(bytes),
    )
    .await
    .json()
    .await
    .unwrap();
    (answer["agent_ids"][0].as_str().expect("imported id").to_string(), started.elapsed(), size)
}

fn message(i: usize) -> Value {
    let body = match i % 2 {
        0 => json!({"role": "user", "content": sentence(i, 12)}),
        _ => json!({"role": "assistant", "content": sentence(i, 16), "tool_calls": []}),
    };
    json!({"id": format!("m-{i}"), "seq": 0, "created_ms": 1_700_000_000_000u64 + i as u64,
           "run_id": null, "step_id": null, "body": body})
}

fn passage_text(i: usize) -> String {
    sentence(i + 10_000_000, 10)
}

fn passage(i: usize) -> Value {
    let text = passage_text(i);
    let embedding = kelpie_memory::embed_local(&text);
    json!({"id": format!("p-{i}"), "text": text, "tags": [], "created_ms": 5, "embedding": embedding})
}

/// p50 and p99 of `count` turns of `agent`, and the first turn alone;
/// prints the CPU per turn of the server and of this process (the client
/// and the fake LLM), which the machine's other load does not move.
async fn turns(server: &Server, http: &reqwest::Client, agent: &str, count: usize) -> (f64, f64, f64) {
    let base = &server.base;
    let (server_cpu_ms, own_cpu_ms) = (server.cpu_ms(), process_cpu_ms("self"));
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let body =
            json!({"messages": [{"role": "user", "content": format!("turn {i}: {}", sentence(i, 8))}]});
        let begun = Instant::now();
        send(http.post(format!("{base}/v1/agents/{agent}/messages")).json(&body)).await;
        samples.push(begun.elapsed());
    }
    println!(
        "  CPU per turn: server {:.2} ms, client and fake LLM {:.2} ms",
        (server.cpu_ms() - server_cpu_ms) / count as f64,
        (process_cpu_ms("self") - own_cpu_ms) / count as f64
    );
    let first = samples[0].as_secs_f64() * 1e3;
    (percentile(&mut samples[1..], 0.50), percentile(&mut samples[1..], 0.99), first)
}

#[tokio::main]
async fn main() {
    let messages_count = count_from_env("KELPIE_BENCH_MESSAGES", MESSAGES_COUNT_DEFAULT);
    let passages_count = count_from_env("KELPIE_BENCH_PASSAGES", PASSAGES_COUNT_DEFAULT);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("long-lived agents: {messages_count} messages, {passages_count} passages, {cores} cores shared");
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("fake llm");
    fake.stop_recording();
    let http = reqwest::Client::new();
    let server = Server::start(&http, &fake.base_url()).await;
    let base = server.base.clone();
    println!("server RSS at start: {:.1} MiB", server.status_mib("VmRSS"));

    let (big, took, size) = import(&http, &base, (0..messages_count).map(message), std::iter::empty()).await;
    println!(
        "import of {messages_count} messages: {:.1} s, {:.0} MB, {:.1} MB/s, {:.0} messages/s",
        took.as_secs_f64(),
        size as f64 / 1e6,
        size as f64 / 1e6 / took.as_secs_f64(),
        messages_count as f64 / took.as_secs_f64()
    );
    let (archive, took, size) =
        import(&http, &base, std::iter::empty(), (0..passages_count).map(passage)).await;
    println!("import of {passages_count} passages: {:.1} s, {:.0} MB", took.as_secs_f64(), size as f64 / 1e6);
    println!("server RSS after imports: {:.1} MiB", server.status_mib("VmRSS"));

    // Turns: a new agent (its window fills from empty), an agent with a
    // short imported history (its window as full as the big one's), the big one.
    let fresh = create_agent(&http, &base, "fresh").await;
    let (new_p50, new_p99, new_first) = turns(&server, &http, &fresh, TURNS_COUNT).await;
    println!("turns, new agent: p50 {new_p50:.2} ms, p99 {new_p99:.2} ms (first {new_first:.2} ms)");
    let (short, _, _) = import(&http, &base, (0..SHORT_HISTORY_COUNT).map(message), std::iter::empty()).await;
    let (short_p50, short_p99, short_first) = turns(&server, &http, &short, TURNS_COUNT).await;
    println!(
        "turns, agent with {SHORT_HISTORY_COUNT} messages: p50 {short_p50:.2} ms, p99 {short_p99:.2} ms \
         (first {short_first:.2} ms: compacts the imported window)"
    );
    let (big_p50, big_p99, big_first) = turns(&server, &http, &big, TURNS_COUNT).await;
    println!(
        "turns, agent with {messages_count} messages: p50 {big_p50:.2} ms ({:+.0} % of the new agent's, \
         {:+.0} % of the short history's), p99 {big_p99:.2} ms (first {big_first:.2} ms)",
        (big_p50 / new_p50 - 1.0) * 100.0,
        (big_p50 / short_p50 - 1.0) * 100.0
    );

    println!("  (server RSS {:.1} MiB)", server.status_mib("VmRSS"));
    // The newest page of 50.
    let mut samples = Vec::new();
    for _ in 0..NEWEST_PAGE_SAMPLES_COUNT {
        let begun = Instant::now();
        let page: Vec<Value> = send(http.get(format!("{base}/v1/agents/{big}/messages?limit=50&order=desc")))
            .await
            .json()
            .await
            .unwrap();
        samples.push(begun.elapsed());
        assert_eq!(page.len(), 50);
    }
    println!(
        "newest page of 50: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut samples, 0.50),
        percentile(&mut samples, 0.99)
    );

    println!("  (server RSS {:.1} MiB)", server.status_mib("VmRSS"));
    // A cursor walk through every message.
    let (mut walked, mut after, begun) = (0usize, None::<String>, Instant::now());
    loop {
        let cursor = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let url = format!("{base}/v1/agents/{big}/messages?limit={WALK_PAGE_COUNT}&order=asc{cursor}");
        let page: Vec<Value> = send(http.get(url)).await.json().await.unwrap();
        walked += page.len();
        match page.last() {
            Some(last) if page.len() == WALK_PAGE_COUNT => {
                after = Some(last["id"].as_str().unwrap().to_string())
            }
            _ => break,
        }
    }
    let took = begun.elapsed();
    assert!(walked >= messages_count, "walked {walked}");
    println!(
        "cursor walk: {walked} messages in {:.1} s, {:.0} messages/s",
        took.as_secs_f64(),
        walked as f64 / took.as_secs_f64()
    );

    println!("  (server RSS {:.1} MiB)", server.status_mib("VmRSS"));
    // A streamed export.
    let begun = Instant::now();
    let mut response = send(http.get(format!("{base}/v1/agents/{big}/export"))).await;
    let mut exported = 0usize;
    while let Some(chunk) = response.chunk().await.expect("export chunk") {
        exported += chunk.len();
    }
    let took = begun.elapsed();
    println!(
        "export: {:.0} MB in {:.1} s, {:.1} MB/s",
        exported as f64 / 1e6,
        took.as_secs_f64(),
        exported as f64 / 1e6 / took.as_secs_f64()
    );

    println!("  (server RSS {:.1} MiB)", server.status_mib("VmRSS"));
    // Archival search: the first builds the index, then latency and recall.
    let search = |query: String| {
        let body = json!({"agent_id": archive, "query": query, "limit": 10});
        http.post(format!("{base}/v1/passages/search")).json(&body)
    };
    let begun = Instant::now();
    send(search(sentence(1, 3))).await;
    println!(
        "archival search, first (index built from {passages_count} codes): {:.1} ms",
        begun.elapsed().as_secs_f64() * 1e3
    );
    let mut samples = Vec::new();
    for q in 0..SEARCH_SAMPLES_COUNT {
        let begun = Instant::now();
        let hits: Vec<Value> = send(search(sentence(q + 500_000, 4))).await.json().await.unwrap();
        samples.push(begun.elapsed());
        assert_eq!(hits.len(), 10);
    }
    println!(
        "archival search at {passages_count} passages: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&mut samples, 0.50),
        percentile(&mut samples, 0.99)
    );
    let embeddings: Vec<Vec<f32>> =
        (0..passages_count).map(|i| kelpie_memory::embed_local(&passage_text(i))).collect();
    let mut hits = 0;
    for q in 0..RECALL_QUERIES_COUNT {
        let query = sentence(q + 900_000, 4);
        let vector = kelpie_memory::embed_local(&query);
        let mut exact: Vec<f32> = embeddings.iter().map(|e| kelpie_memory::cosine(e, &vector)).collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        // Ties at the 10th score make any of the tied passages a right answer.
        let tenth = exact[9];
        let found: Vec<Value> = send(search(query)).await.json().await.unwrap();
        hits += found.iter().filter(|hit| hit["score"].as_f64().unwrap() as f32 >= tenth - 1e-6).count();
    }
    println!(
        "archival recall@10 against brute force: {:.3} ({RECALL_QUERIES_COUNT} queries)",
        hits as f64 / (10 * RECALL_QUERIES_COUNT) as f64
    );
    println!(
        "server RSS with both agents active: {:.1} MiB (peak {:.1} MiB)",
        server.status_mib("VmRSS"),
        server.status_mib("VmHWM")
    );

    // Delete: the answer; the keys go in the background.
    let begun = Instant::now();
    send(http.delete(format!("{base}/v1/agents/{big}"))).await;
    println!(
        "delete of the agent with {messages_count} messages: answered in {:.1} ms",
        begun.elapsed().as_secs_f64() * 1e3
    );
    let status = http.get(format!("{base}/v1/agents/{big}")).send().await.unwrap().status();
    assert_eq!(status, 404);
}
