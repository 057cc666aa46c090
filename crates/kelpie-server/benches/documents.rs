//! Documents over HTTP on loopback (redb in a temp dir, the local
//! embedding): ingestion of a large text file (MB/s, upload to
//! `completed`) and of a PDF (pages/s), then a folder of 10 000 files
//! attached to an agent and its file tools' latency (`semantic_search_files`
//! and `grep_files`, p50/p99). Run: `cargo bench -p kelpie-server --bench documents`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{percentiles_ms, start_server, Bench};

/// Lines of the large text file (80 characters each: about 32 MB).
const TEXT_LINES_COUNT: usize = 400_000;
/// Pages of the PDF.
const PDF_PAGES_COUNT: usize = 200;
/// Files in the folder the tools search.
const FOLDER_FILES_COUNT: usize = 10_000;
/// Concurrent uploads of the small files.
const UPLOAD_CLIENTS_COUNT: usize = 4;
const SEARCHES_COUNT: usize = 200;
const GREPS_COUNT: usize = 20;
const POLL_MS: u64 = 20;
const MB_BYTES: f64 = 1_000_000.0;
/// Words the small files are made of (each file names a few).
const WORDS: [&str; 16] = [
    "otter",
    "kelp",
    "urchin",
    "anemone",
    "harbor",
    "seal",
    "tide",
    "reef",
    "current",
    "plankton",
    "squid",
    "heron",
    "driftwood",
    "lighthouse",
    "estuary",
    "pelican",
];

async fn upload(bench: &Bench, folder_id: &str, name: &str, mime: &str, content: Vec<u8>) -> Value {
    let boundary = "kelpie-bench-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    body.extend(content);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let response = bench
        .http
        .post(format!("{}/v1/folders/{folder_id}/upload", bench.base))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), 200);
    response.json().await.expect("file json")
}

async fn request(bench: &Bench, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut request = bench.http.request(method, format!("{}{path}", bench.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.expect("json")
}

/// Waits for a file to complete; the time it took from `since`.
async fn completed(bench: &Bench, folder_id: &str, file_id: &str, since: Instant) -> Duration {
    loop {
        let file =
            request(bench, reqwest::Method::GET, &format!("/v1/folders/{folder_id}/files/{file_id}"), None)
                .await;
        match file["processing_status"].as_str().expect("status") {
            "completed" => return since.elapsed(),
            "error" => panic!("processing failed: {file}"),
            _ => tokio::time::sleep(Duration::from_millis(POLL_MS)).await,
        }
    }
}

async fn folder(bench: &Bench, name: &str) -> String {
    let folder = request(bench, reqwest::Method::POST, "/v1/folders/", Some(json!({"name": name}))).await;
    folder["id"].as_str().expect("id").to_string()
}

async fn ingest_text(bench: &Bench) {
    let folder_id = folder(bench, "text").await;
    let mut text = String::with_capacity(TEXT_LINES_COUNT * 81);
    for n in 0..TEXT_LINES_COUNT {
        let word = WORDS[n % WORDS.len()];
        text.push_str(&format!(
            "line {n:08}: the {word} drifts past the {:<34} {:08}\n",
            WORDS[(n * 7) % WORDS.len()],
            n * 13
        ));
    }
    let bytes = text.len();
    let started = Instant::now();
    let file = upload(bench, &folder_id, "large.txt", "text/plain", text.into_bytes()).await;
    let uploaded = started.elapsed();
    let total = completed(bench, &folder_id, file["id"].as_str().expect("id"), started).await;
    let mb = bytes as f64 / MB_BYTES;
    println!(
        "text ingestion: {mb:.1} MB in {:.2} s = {:.1} MB/s upload to completed (upload {:.2} s, processing {:.1} MB/s)",
        total.as_secs_f64(),
        mb / total.as_secs_f64(),
        uploaded.as_secs_f64(),
        mb / (total - uploaded).as_secs_f64()
    );
}

async fn ingest_pdf(bench: &Bench) {
    let folder_id = folder(bench, "pdf").await;
    let pages: Vec<String> = (0..PDF_PAGES_COUNT)
        .map(|n| {
            format!(
                "Page {n} of the field guide: the {} and the {} share the reef.",
                WORDS[n % 16],
                WORDS[(n * 3) % 16]
            )
        })
        .collect();
    let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
    let pdf = kelpie_agent::documents::fixture::pdf_fixture(&pages);
    let started = Instant::now();
    let file = upload(bench, &folder_id, "guide.pdf", "application/pdf", pdf).await;
    let total = completed(bench, &folder_id, file["id"].as_str().expect("id"), started).await;
    println!(
        "PDF ingestion: {PDF_PAGES_COUNT} pages in {:.2} s = {:.0} pages/s",
        total.as_secs_f64(),
        PDF_PAGES_COUNT as f64 / total.as_secs_f64()
    );
}

async fn many_files(bench: Arc<Bench>) {
    let folder_id = Arc::new(folder(&bench, "many").await);
    let started = Instant::now();
    let tasks: Vec<_> = (0..UPLOAD_CLIENTS_COUNT)
        .map(|client| {
            let (bench, folder_id) = (Arc::clone(&bench), Arc::clone(&folder_id));
            tokio::spawn(async move {
                let mut last = String::new();
                for n in (client..FOLDER_FILES_COUNT).step_by(UPLOAD_CLIENTS_COUNT) {
                    let text = format!(
                        "Note {n}. The {} met the {} near the {}. Serial {n:06}.\n",
                        WORDS[n % 16],
                        WORDS[(n / 16) % 16],
                        WORDS[(n / 256) % 16]
                    );
                    let file = upload(
                        &bench,
                        &folder_id,
                        &format!("note-{n:05}.txt"),
                        "text/plain",
                        text.into_bytes(),
                    )
                    .await;
                    last = file["id"].as_str().expect("id").to_string();
                }
                last
            })
        })
        .collect();
    let mut lasts = Vec::new();
    for task in tasks {
        lasts.push(task.await.expect("upload task"));
    }
    let uploaded = started.elapsed();
    for last in &lasts {
        completed(&bench, &folder_id, last, started).await;
    }
    let total = started.elapsed();
    println!(
        "{FOLDER_FILES_COUNT} small files: uploads {:.0}/s ({UPLOAD_CLIENTS_COUNT} clients), all completed in {:.1} s ({:.0} files/s)",
        FOLDER_FILES_COUNT as f64 / uploaded.as_secs_f64(),
        total.as_secs_f64(),
        FOLDER_FILES_COUNT as f64 / total.as_secs_f64()
    );
    let agent = request(&bench, reqwest::Method::POST, "/v1/agents/", Some(json!({"name": "reader"}))).await;
    let agent_id = agent["id"].as_str().expect("id").to_string();
    request(
        &bench,
        reqwest::Method::PATCH,
        &format!("/v1/agents/{agent_id}/folders/attach/{folder_id}"),
        None,
    )
    .await;
    let tool = |name: &str| format!("/v1/agents/{agent_id}/tools/{name}/run");
    let mut latencies = Vec::new();
    for n in 0..SEARCHES_COUNT {
        let query = format!("the {} near the {}", WORDS[n % 16], WORDS[(n * 5) % 16]);
        let begun = Instant::now();
        let result = request(
            &bench,
            reqwest::Method::POST,
            &tool("semantic_search_files"),
            Some(json!({"args": {"query": query, "limit": 5}})),
        )
        .await;
        latencies.push(begun.elapsed());
        assert_eq!(result["status"], "success", "{result}");
    }
    let (p50, p99) = percentiles_ms(&mut latencies);
    println!("semantic_search_files over {FOLDER_FILES_COUNT} files: p50 {p50:.2} ms, p99 {p99:.2} ms ({SEARCHES_COUNT} searches)");
    let mut latencies = Vec::new();
    for n in 0..GREPS_COUNT {
        let begun = Instant::now();
        let pattern = format!("Serial 00{:02}", n * 3);
        let result = request(
            &bench,
            reqwest::Method::POST,
            &tool("grep_files"),
            Some(json!({"args": {"pattern": pattern}})),
        )
        .await;
        latencies.push(begun.elapsed());
        assert!(result["func_return"].as_str().expect("text").starts_with("Found"), "{result}");
    }
    let (p50, p99) = percentiles_ms(&mut latencies);
    println!(
        "grep_files over {FOLDER_FILES_COUNT} files: p50 {p50:.1} ms, p99 {p99:.1} ms ({GREPS_COUNT} greps)"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = Arc::new(start_server().await);
    ingest_text(&bench).await;
    ingest_pdf(&bench).await;
    many_files(bench).await;
}
