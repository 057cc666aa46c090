//! A file's processing survives a kill -9 of the server: a 16 MB text
//! file is uploaded, the server is killed while the file is being parsed
//! or embedded, and started again on the same data dir. The file ends
//! `completed` with every chunk embedded, nothing of the killed attempt is
//! searched, and an agent's `grep_files` finds the file's last line.

mod support;

use std::time::{Duration, Instant};

use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use support::{call, serve};

/// Lines of the uploaded file (80 characters each: about 16 MB).
const FILE_LINES_COUNT: usize = 200_000;
/// How long the file may take to complete after the restart.
const COMPLETE_TIMEOUT_MS: u64 = 180_000;
const POLL_MS: u64 = 20;

fn document() -> Vec<u8> {
    let mut text = String::with_capacity(FILE_LINES_COUNT * 81);
    for n in 0..FILE_LINES_COUNT - 1 {
        text.push_str(&format!(
            "line {n:08} of the long manual, about kelp forests and sea otters: {:07}\n",
            n * 7
        ));
    }
    text.push_str("the very last line names the treasure: a brass compass\n");
    text.into_bytes()
}

async fn upload(http: &reqwest::Client, base: &str, folder_id: &str, name: &str, content: Vec<u8>) -> Value {
    let boundary = "kelpie-test-boundary-7f3a";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n"
    )
    .into_bytes();
    body.extend(content);
    body.extend(format!("\r\n--{boundary}--\r\n").into_bytes());
    let response = http
        .post(format!("{base}/v1/folders/{folder_id}/upload"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .expect("upload");
    let status = response.status();
    let value: Value = response.json().await.expect("upload answer");
    assert!(status.is_success(), "upload: {status} {value}");
    value
}

async fn file(http: &reqwest::Client, base: &str, folder_id: &str, file_id: &str) -> Value {
    call(http, reqwest::Method::GET, format!("{base}/v1/folders/{folder_id}/files/{file_id}"), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_processed_at_a_kill_completes_after_the_restart() {
    let fake = FakeLlm::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http = reqwest::Client::new();
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let folder =
        call(&http, reqwest::Method::POST, format!("{base}/v1/folders/"), Some(json!({"name": "manuals"})))
            .await;
    let folder_id = folder["id"].as_str().unwrap().to_string();
    let content = document();
    let size = content.len();
    let uploaded = upload(&http, &base, &folder_id, "manual.txt", content).await;
    assert_eq!(uploaded["file_size"], size);
    let file_id = uploaded["id"].as_str().unwrap().to_string();

    // Killed once processing is under way and before it ends.
    let seen = loop {
        let now = file(&http, &base, &folder_id, &file_id).await;
        let status = now["processing_status"].as_str().unwrap().to_string();
        assert_ne!(status, "completed", "processing ended before the kill could land: {now}");
        assert_ne!(status, "error", "{now}");
        if status == "parsing" || status == "embedding" {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    server.kill().unwrap();
    server.wait().unwrap();

    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let started = Instant::now();
    let done = loop {
        let now = file(&http, &base, &folder_id, &file_id).await;
        match now["processing_status"].as_str().unwrap() {
            "completed" => break now,
            "error" => panic!("the file failed after the restart: {now}"),
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_millis(COMPLETE_TIMEOUT_MS),
            "still {} after the restart (killed while {})",
            now["processing_status"],
            seen["processing_status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total = done["total_chunks"].as_u64().unwrap();
    assert!(total > 1_000, "16 MB of text makes many chunks: {done}");
    assert_eq!(done["chunks_embedded"].as_u64(), Some(total));
    assert_eq!(done["file_size"], size);

    // The passages searched are the completed attempt's, the first of them
    // the file's first chunk.
    let passages = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/folders/{folder_id}/passages?order=asc&limit=3"),
        None,
    )
    .await;
    let passages = passages.as_array().unwrap();
    assert_eq!(passages.len(), 3);
    assert!(
        passages[0]["text"].as_str().unwrap().starts_with("line 00000000 of the long manual"),
        "{}",
        passages[0]
    );
    assert!(passages.iter().all(|p| p["file_id"] == file_id.as_str()));

    let agent =
        call(&http, reqwest::Method::POST, format!("{base}/v1/agents/"), Some(json!({"name": "reader"})))
            .await;
    let agent_id = agent["id"].as_str().unwrap();
    call(
        &http,
        reqwest::Method::PATCH,
        format!("{base}/v1/agents/{agent_id}/folders/attach/{folder_id}"),
        None,
    )
    .await;
    let body = json!({"messages": [{"role": "user", "content": "/call grep_files {\"pattern\": \"brass compass\"}"}]});
    let reply =
        call(&http, reqwest::Method::POST, format!("{base}/v1/agents/{agent_id}/messages"), Some(body)).await;
    let tool_return = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["message_type"] == "tool_return_message")
        .expect("a tool return")["tool_return"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tool_return.starts_with("Found 1 total matches across 1 files"), "{tool_return}");
    assert!(
        tool_return.contains(&format!(
            "> {FILE_LINES_COUNT}: the very last line names the treasure: a brass compass"
        )),
        "{tool_return}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
