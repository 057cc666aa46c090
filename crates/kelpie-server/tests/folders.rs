//! Folders past their limits over HTTP: an upload past `FILE_BYTES_MAX`
//! (streamed, refused with 413 as it crosses the limit, nothing listed or
//! kept), one folder more than `FOLDERS_COUNT_MAX`, one agent more than
//! `FOLDER_AGENTS_COUNT_MAX`, a duplicate name (409), and a processed
//! file's text opened through the agent's files route.

mod common;

use futures::StreamExt;
use kelpie_agent::actors::folder::FILE_BYTES_MAX;
use kelpie_agent::actors::folder_store::{FOLDERS_COUNT_MAX, FOLDER_AGENTS_COUNT_MAX};
use serde_json::json;

const BOUNDARY: &str = "kelpie-limits";
/// Bytes per piece of the streamed body.
const PIECE_BYTES: usize = 1024 * 1024;

async fn folder(server: &common::Running, name: &str) -> String {
    let folder = server.ok("POST", "/v1/folders/", Some(json!({"name": name}))).await;
    folder["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_the_file_limit_is_refused_as_it_streams_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let folder_id = folder(&server, "big").await;
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.txt\"\r\nContent-Type: text/plain\r\n\r\n"
    );
    let pieces = FILE_BYTES_MAX as usize / PIECE_BYTES + 2;
    let body = futures::stream::iter(
        std::iter::once(head.into_bytes())
            .chain((0..pieces).map(|_| vec![b'a'; PIECE_BYTES]))
            .chain(std::iter::once(format!("\r\n--{BOUNDARY}--\r\n").into_bytes())),
    )
    .map(Ok::<_, std::io::Error>);
    let response = server
        .http
        .post(format!("{}/v1/folders/{folder_id}/upload", server.base))
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    // The server answers as the file crosses the limit; the client may see
    // the answer or the connection closed under its remaining body.
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
        assert_eq!(
            response.headers()["connection"],
            "close",
            "the unread rest of the body is not waited for"
        );
        let detail: serde_json::Value = response.json().await.unwrap();
        assert!(detail["detail"].as_str().unwrap().contains("FILE_BYTES_MAX"), "{detail}");
    }
    let files = server.ok("GET", &format!("/v1/folders/{folder_id}/files"), None).await;
    assert_eq!(files, json!([]));
    let metadata = server.ok("GET", "/v1/folders/metadata", None).await;
    assert_eq!((metadata["total_files"].clone(), metadata["total_size"].clone()), (json!(0), json!(0)));
    // The chunks it stored are reclaimed by the worker.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let finished = server.service.documents.run_once().await.unwrap();
        assert_eq!(finished, 0);
        if !server.service.folders.has_work(&folder_id).await.unwrap() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the refused upload's chunks are still queued");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_and_attachment_counts_stop_at_their_limits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let first = folder(&server, "folder-0").await;
    let (status, body) = server.call("POST", "/v1/sources/", Some(json!({"name": "folder-0"}))).await;
    assert_eq!(status, 409, "{body}");
    for n in 1..FOLDERS_COUNT_MAX {
        folder(&server, &format!("folder-{n}")).await;
    }
    assert_eq!(server.ok("GET", "/v1/folders/count", None).await, json!(FOLDERS_COUNT_MAX));
    let (status, body) = server.call("POST", "/v1/folders/", Some(json!({"name": "one-more"}))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("FOLDERS_COUNT_MAX"), "{body}");

    let mut agents = Vec::new();
    for n in 0..=FOLDER_AGENTS_COUNT_MAX {
        agents.push(server.create_agent(&format!("reader-{n}"), &[]).await);
    }
    for agent in &agents[..FOLDER_AGENTS_COUNT_MAX] {
        server.ok("PATCH", &format!("/v1/agents/{agent}/folders/attach/{first}"), None).await;
    }
    let last = &agents[FOLDER_AGENTS_COUNT_MAX];
    let (status, body) =
        server.call("PATCH", &format!("/v1/agents/{last}/folders/attach/{first}"), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("FOLDER_AGENTS_COUNT_MAX"), "{body}");
    let refused = server.ok("GET", &format!("/v1/agents/{last}"), None).await;
    assert_eq!(refused["sources"], json!([]), "a refused attach leaves the agent as it was");
    let listed = server.ok("GET", &format!("/v1/folders/{first}/agents?limit=1000"), None).await;
    assert_eq!(listed.as_array().unwrap().len(), FOLDER_AGENTS_COUNT_MAX);
    server.shutdown().await;
}
