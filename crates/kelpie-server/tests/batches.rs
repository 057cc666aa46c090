//! Message batches (`/v1/messages/batches`) over HTTP: every request runs
//! as a background run of its agent, the batch completes when they all
//! ended and posts its callback once; listing shows running batches only;
//! the messages of a batch page to their end; cancel stops its runs; a
//! restart follows a batch left running to its end; bad input is refused.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use kelpie_agent::actors::batch::BATCH_REQUESTS_COUNT_MAX;
use serde_json::{json, Value};

const WAIT_MS_MAX: u64 = 20_000;
const POLL_INTERVAL_MS: u64 = 50;
const NAP: &str = "import time\ndef nap(seconds: int) -> str:\n    \"\"\"Sleep.\"\"\"\n    time.sleep(seconds)\n    return 'rested'\n";
const INTERNAL_URLS: (&str, &str) = ("mcp.allow_internal_urls", "true");

/// A callback receiver on 127.0.0.1: its URL and the bodies it got.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&got);
    let app = Router::new().route(
        "/done",
        post(move |Json(body): Json<Value>| {
            let store = Arc::clone(&store);
            async move {
                store.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

async fn wait_for_batch(server: &common::Running, batch_id: &str, wanted: &str) -> Value {
    let mut waited_ms = 0;
    loop {
        let batch = server.ok("GET", &format!("/v1/messages/batches/{batch_id}"), None).await;
        let settled = batch["status"] != "running" && !batch["callback_sent_at"].is_null();
        if (batch["status"] == wanted && (batch["callback_url"].is_null() || settled))
            || waited_ms > WAIT_MS_MAX
        {
            return batch;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        waited_ms += POLL_INTERVAL_MS;
    }
}

async fn napping_agent(server: &common::Running, name: &str) -> String {
    let tool = server.ok("PUT", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": name, "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    server.ok("POST", "/v1/agents/", Some(body)).await["id"].as_str().unwrap().to_string()
}

fn send(agent_id: &str, text: &str) -> Value {
    json!({"agent_id": agent_id, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn a_batch_runs_each_request_completes_and_calls_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[INTERNAL_URLS]).await;
    let (callback_url, calls) = receiver().await;
    let agents = [
        server.create_agent("a", &[]).await,
        server.create_agent("b", &[]).await,
        napping_agent(&server, "sleepy").await,
    ];
    let requests = json!([
        send(&agents[0], "hello a"),
        json!({"agent_id": agents[1], "input": "hello b"}),
        send(&agents[2], "/call nap {\"seconds\": 1}"),
    ]);
    let batch = server
        .ok("POST", "/v1/messages/batches", Some(json!({"requests": requests, "callback_url": callback_url})))
        .await;
    let batch_id = batch["id"].as_str().unwrap().to_string();
    assert!(batch_id.starts_with("job-"), "{batch}");
    assert_eq!(
        (batch["status"].as_str(), batch["job_type"].as_str(), batch["callback_url"].as_str()),
        (Some("running"), Some("batch"), Some(callback_url.as_str()))
    );
    assert_eq!(batch["metadata"], json!({"job_type": "batch_messages"}));
    // Running (the nap holds it): listed.
    let listed = server.ok("GET", "/v1/messages/batches", None).await;
    assert_eq!(
        listed.as_array().unwrap().iter().map(|b| b["id"].clone()).collect::<Vec<_>>(),
        [json!(batch_id)]
    );
    let done = wait_for_batch(&server, &batch_id, "completed").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["completed_at"].is_string() && done["total_duration_ns"].as_u64().unwrap() > 0, "{done}");
    assert_eq!(
        (done["callback_status_code"].as_u64(), done["callback_error"].clone()),
        (Some(200), Value::Null)
    );
    let got = calls.lock().unwrap().clone();
    assert_eq!(
        got,
        [json!({"job_id": batch_id, "status": "completed", "completed_at": done["completed_at"]})]
    );
    // Every request ran on its agent, as the agent's own run.
    let echoes = [("hello a", 0), ("hello b", 1)];
    for (text, index) in echoes {
        let messages = server.ok("GET", &format!("/v1/agents/{}/messages", agents[index]), None).await;
        let contents: Vec<&str> =
            messages.as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
        assert_eq!(contents, [text, format!("echo: {text}").as_str()]);
    }
    // The batch's messages, as Letta's `Message`, page to their end.
    let all = server.ok("GET", &format!("/v1/messages/batches/{batch_id}/messages?order=asc"), None).await;
    let all = all["messages"].as_array().unwrap().clone();
    let roles = |agent: &str| -> Vec<String> {
        all.iter()
            .filter(|m| m["agent_id"] == agent)
            .map(|m| m["role"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(roles(&agents[0]), ["user", "assistant", "tool"], "{all:?}");
    assert_eq!(roles(&agents[1]), ["user", "assistant", "tool"], "{all:?}");
    assert_eq!(
        roles(&agents[2]),
        ["user", "assistant", "tool", "assistant", "tool"],
        "the nap, then the reply"
    );
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let page = server
            .ok("GET", &format!("/v1/messages/batches/{batch_id}/messages?order=asc&limit=2{cursor}"), None)
            .await;
        let page = page["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = Some(page.last().unwrap()["id"].as_str().unwrap().to_string());
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let only_b = server
        .ok("GET", &format!("/v1/messages/batches/{batch_id}/messages?agent_id={}", agents[1]), None)
        .await;
    let only_b = only_b["messages"].as_array().unwrap();
    let only_b: Vec<&str> = only_b.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(only_b, ["tool", "assistant", "user"], "newest first by default");
    // Ended: no longer listed; a restart keeps it as it ended and does not
    // call back again.
    assert_eq!(server.ok("GET", "/v1/messages/batches", None).await, json!([]));
    server.shutdown().await;
    let server = common::start_with(dir.path(), &fake, &[INTERNAL_URLS]).await;
    assert_eq!(server.ok("GET", &format!("/v1/messages/batches/{batch_id}"), None).await, done);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.lock().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_ends_the_batch_and_stops_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let sleepy = napping_agent(&server, "sleepy").await;
    let quick = server.create_agent("quick", &[]).await;
    let requests = json!([send(&sleepy, "/call nap {\"seconds\": 60}"), send(&quick, "hi")]);
    let batch = server.ok("POST", "/v1/messages/batches/", Some(json!({"requests": requests}))).await;
    let batch_id = batch["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = server.ok("PATCH", &format!("/v1/messages/batches/{batch_id}/cancel"), None).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["completed_at"].is_string());
    assert_eq!(cancelled["callback_sent_at"], Value::Null, "no callback was asked for");
    let runs = server.ok("GET", &format!("/v1/runs/?agent_id={sleepy}"), None).await;
    assert_eq!(runs[0]["status"], "cancelled", "{runs}");
    // Cancelling again changes nothing; the batch stays cancelled.
    let again = server.ok("PATCH", &format!("/v1/messages/batches/{batch_id}/cancel"), None).await;
    assert_eq!(again, cancelled);
    assert_eq!(server.ok("GET", &format!("/v1/messages/batches/{batch_id}"), None).await, cancelled);
    assert_eq!(server.ok("GET", "/v1/messages/batches", None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn a_restart_follows_a_batch_left_running_to_its_end_and_its_callback() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let (callback_url, calls) = receiver().await;
    let server = common::start_with(dir.path(), &fake, &[INTERNAL_URLS]).await;
    let sleepy = napping_agent(&server, "sleepy").await;
    let requests = json!([send(&sleepy, "/call nap {\"seconds\": 30}")]);
    let body = json!({"requests": requests, "callback_url": callback_url});
    let batch_id =
        server.ok("POST", "/v1/messages/batches", Some(body)).await["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The stop ends the run failed; the batch's watcher is stopped with it.
    server.shutdown().await;
    let server = common::start_with(dir.path(), &fake, &[INTERNAL_URLS]).await;
    let done = wait_for_batch(&server, &batch_id, "completed").await;
    assert_eq!(
        (done["status"].as_str(), done["callback_status_code"].as_u64()),
        (Some("completed"), Some(200))
    );
    let runs = server.ok("GET", &format!("/v1/runs/?agent_id={sleepy}"), None).await;
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    assert_eq!(calls.lock().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_batches_are_refused_with_the_reason_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("a", &[]).await;
    let refused = |body: Value| {
        let server = &server;
        async move { server.call("POST", "/v1/messages/batches", Some(body)).await }
    };
    let (status, answer) = refused(json!({"requests": []})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("BATCH_REQUESTS_COUNT_MAX"), "{answer}");
    let over: Vec<Value> = (0..=BATCH_REQUESTS_COUNT_MAX).map(|i| send(&agent, &format!("m{i}"))).collect();
    let (status, answer) = refused(json!({"requests": over})).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains(&format!("not {}", BATCH_REQUESTS_COUNT_MAX + 1)));
    let missing = "agent-00000000-0000-4000-8000-000000000000";
    let (status, answer) = refused(json!({"requests": [send(&agent, "x"), send(missing, "y")]})).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains(missing));
    let (status, answer) = refused(json!({"requests": [{"agent_id": agent}]})).await;
    assert_eq!(status, 422, "no input: {answer}");
    // Loopback callbacks are refused unless the config allows them (SSRF).
    let body = json!({"requests": [send(&agent, "x")], "callback_url": "http://127.0.0.1:9/done"});
    let (status, answer) = refused(body).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("internal address"), "{answer}");
    let (status, _) = refused(json!({"requests": [send(&agent, "x")], "callback_url": "ftp://x"})).await;
    assert_eq!(status, 422);
    // Nothing above ran a turn or stored a batch.
    assert_eq!(server.ok("GET", &format!("/v1/agents/{agent}/messages"), None).await, json!([]));
    assert_eq!(server.ok("GET", "/v1/messages/batches", None).await, json!([]));
    let unknown = "job-00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        ("GET", format!("/v1/messages/batches/{unknown}")),
        ("GET", format!("/v1/messages/batches/{unknown}/messages")),
        ("PATCH", format!("/v1/messages/batches/{unknown}/cancel")),
    ] {
        let (status, answer) = server.call(method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(unknown));
    }
    server.shutdown().await;
}
