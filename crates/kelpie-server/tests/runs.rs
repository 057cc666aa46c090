//! Background runs (`messages/async`, `/v1/runs/{id}`, `messages/cancel`)
//! and `reset-messages` over HTTP.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

/// How long a test waits for a background run to finish, in milliseconds.
const RUN_WAIT_MS_MAX: u64 = 20_000;
const POLL_INTERVAL_MS: u64 = 50;

const NAP: &str = "import time\ndef nap(seconds: int) -> str:\n    \"\"\"Sleep.\"\"\"\n    time.sleep(seconds)\n    return 'rested'\n";

async fn wait_for_status(server: &common::Running, run_id: &str, wanted: &str) -> Value {
    let mut waited_ms = 0;
    loop {
        let run = server.ok("GET", &format!("/v1/runs/{run_id}"), None).await;
        if run["status"] == wanted || waited_ms > RUN_WAIT_MS_MAX {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        waited_ms += POLL_INTERVAL_MS;
    }
}

#[tokio::test]
async fn async_message_returns_a_run_that_completes_with_tagged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("bg", &[]).await;
    let body = json!({"messages": [{"role": "user", "content": "later"}]});
    let run = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/async"), Some(body)).await;
    let run_id = run["id"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("run-"), "{run_id}");
    assert_eq!(
        (run["agent_id"].as_str(), run["background"].as_bool()),
        (Some(agent_id.as_str()), Some(true))
    );
    let done = wait_for_status(&server, &run_id, "completed").await;
    assert_eq!(
        (done["status"].as_str(), done["stop_reason"].as_str()),
        (Some("completed"), Some("end_turn"))
    );
    assert!(done["completed_at"].is_string(), "{done}");
    let messages = server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await;
    let contents: Vec<&str> =
        messages.as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["later", "echo: later"]);
    assert!(messages.as_array().unwrap().iter().all(|m| m["run_id"] == run_id.as_str()));
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    assert_eq!(server.ok("GET", &format!("/v1/runs/{run_id}"), None).await, done);
    server.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_an_active_run_and_its_uncommitted_step_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let agent = server
        .ok(
            "POST",
            "/v1/agents/",
            Some(json!({"name": "c", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]})),
        )
        .await;
    let agent_id = agent["id"].as_str().unwrap();
    let body = json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 60}"}]});
    let run = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/async"), Some(body)).await;
    let run_id = run["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.ok("GET", &format!("/v1/runs/{run_id}"), None).await["status"], "running");
    let cancelled = server
        .ok("POST", &format!("/v1/agents/{agent_id}/messages/cancel"), Some(json!({"run_ids": [run_id]})))
        .await;
    assert_eq!(cancelled, json!({run_id: "cancelled"}));
    let run = server.ok("GET", &format!("/v1/runs/{run_id}"), None).await;
    assert_eq!((run["status"].as_str(), run["stop_reason"].as_str()), (Some("cancelled"), Some("cancelled")));
    assert_eq!(server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await, json!([]));
    let again = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/cancel"), None).await;
    assert_eq!(again, json!({}));
    // The agent is usable at once: the cancelled turn released its lock.
    let reply = server.say(agent_id, "still there?").await;
    assert_eq!(reply["messages"][0]["content"], "echo: still there?");
    server.shutdown().await;
}

#[tokio::test]
async fn reset_messages_deletes_messages_and_keeps_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("reset", &[]).await;
    server.say(&agent_id, "one").await;
    server.ok("POST", &format!("/v1/agents/{agent_id}/archival-memory"), Some(json!({"text": "kept"}))).await;
    let body = json!({"add_default_initial_messages": false});
    let agent = server.ok("PATCH", &format!("/v1/agents/{agent_id}/reset-messages"), Some(body)).await;
    assert_eq!(
        (agent["id"].as_str(), agent["blocks"][0]["value"].as_str()),
        (Some(agent_id.as_str()), Some("Name: Ana."))
    );
    assert_eq!(server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await, json!([]));
    let passages = server.ok("GET", &format!("/v1/agents/{agent_id}/archival-memory"), None).await;
    assert_eq!(passages[0]["text"], "kept");
    server.say(&agent_id, "two").await;
    let messages = server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await;
    let contents: Vec<&str> =
        messages.as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["two", "echo: two"]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_run_input_is_4xx_with_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("bad", &[]).await;
    let missing = "agent-00000000-0000-4000-8000-000000000000";
    let say = json!({"messages": [{"role": "user", "content": "x"}]});
    let cases: Vec<(&str, String, Option<Value>, u16, String)> = vec![
        ("GET", "/v1/runs/run-nope".into(), None, 404, "Run with ID run-nope not found".into()),
        (
            "POST",
            format!("/v1/agents/{missing}/messages/async"),
            Some(say.clone()),
            404,
            format!("Agent with ID {missing} not found"),
        ),
        (
            "POST",
            format!("/v1/agents/{agent_id}/messages/async"),
            Some(json!({"messages": []})),
            422,
            "messages must hold at least one non-empty user message".into(),
        ),
        (
            "POST",
            format!("/v1/agents/{agent_id}/messages/async"),
            Some(json!({"messages": [{"role": "user", "content": "x"}], "max_steps": 0})),
            422,
            "max_steps 0 is outside 1..=50".into(),
        ),
        (
            "POST",
            format!("/v1/agents/{agent_id}/messages/cancel"),
            Some(json!({"run_ids": "x"})),
            422,
            "invalid type".into(),
        ),
        (
            "POST",
            format!("/v1/agents/{missing}/messages/cancel"),
            None,
            404,
            format!("Agent with ID {missing} not found"),
        ),
        (
            "PATCH",
            format!("/v1/agents/{missing}/reset-messages"),
            Some(json!({})),
            404,
            format!("Agent with ID {missing} not found"),
        ),
    ];
    for (method, path, body, status, detail) in cases {
        let (got, answer) = server.call(method, &path, body).await;
        let text = answer["detail"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(text.contains(&detail), "{method} {path}: {text:?} lacks {detail:?}");
    }
    server.shutdown().await;
}
