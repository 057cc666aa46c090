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

fn run_path(run_id: &str, rest: &str) -> String {
    format!("/v1/runs/{run_id}{rest}")
}

fn ids(items: &Value) -> Vec<String> {
    items.as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn every_turn_is_a_run_with_its_steps_messages_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("runs", &[]).await;
    // Two steps: a tool call, then the reply.
    let reply = server.say(&agent_id, "/call archival_memory_insert {\"content\": \"tea at five\"}").await;
    let run_id = reply["messages"][0]["run_id"].as_str().unwrap().to_string();
    assert!(reply["messages"].as_array().unwrap().iter().all(|m| m["run_id"] == run_id.as_str()), "{reply}");
    assert_eq!(reply["usage"]["run_ids"], json!([run_id]));
    assert_eq!(reply["usage"]["step_count"], 2);
    let run = server.ok("GET", &run_path(&run_id, ""), None).await;
    assert_eq!(
        (run["status"].as_str(), run["stop_reason"].as_str(), run["background"].as_bool()),
        (Some("completed"), Some("end_turn"), Some(false))
    );
    assert_eq!(run["metadata"]["run_type"], "send_message");
    // The run's messages are the turn's, with the user's first.
    let messages = server.ok("GET", &run_path(&run_id, "/messages"), None).await;
    let mut expected = vec![messages[0]["id"].as_str().unwrap().to_string()];
    assert_eq!(messages[0]["message_type"], "user_message");
    expected.extend(ids(&reply["messages"]));
    assert_eq!(ids(&messages), expected);
    let page = server.ok("GET", &run_path(&run_id, "/messages?limit=2&order=desc"), None).await;
    assert_eq!(ids(&page), expected.iter().rev().take(2).cloned().collect::<Vec<_>>());
    // Steps carry the tokens the usage adds up.
    let steps = server.ok("GET", &run_path(&run_id, "/steps?order=asc"), None).await;
    assert_eq!(steps.as_array().unwrap().len(), 2, "{steps}");
    let step_ids: Vec<&str> =
        reply["messages"].as_array().unwrap().iter().map(|m| m["step_id"].as_str().unwrap()).collect();
    assert_eq!(steps[0]["id"].as_str(), step_ids.first().copied());
    assert_eq!(steps[1]["id"].as_str(), step_ids.last().copied());
    assert_eq!(
        (steps[0]["run_id"].as_str(), steps[0]["agent_id"].as_str()),
        (Some(run_id.as_str()), Some(agent_id.as_str()))
    );
    assert_eq!(steps[0]["model_handle"], "openai-proxy/fake-gpt");
    let usage = server.ok("GET", &run_path(&run_id, "/usage"), None).await;
    let step_tokens: u64 =
        steps.as_array().unwrap().iter().map(|s| s["total_tokens"].as_u64().unwrap()).sum();
    assert_eq!(usage["total_tokens"].as_u64(), Some(step_tokens));
    assert_eq!(usage["total_tokens"], reply["usage"]["total_tokens"]);
    assert!(step_tokens > 0, "{usage}");
    // A streamed turn is a run too, and so is a background one.
    let body = json!({"messages": [{"role": "user", "content": "streamed"}]});
    let (status, _) =
        server.call("POST", &format!("/v1/agents/{agent_id}/messages/stream"), Some(body)).await;
    assert_eq!(status, 200);
    let body = json!({"messages": [{"role": "user", "content": "later"}]});
    let background = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/async"), Some(body)).await;
    let background_id = background["id"].as_str().unwrap().to_string();
    wait_for_status(&server, &background_id, "completed").await;
    let listed = server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}"), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(listed[0]["id"].as_str(), Some(background_id.as_str()), "newest first by default");
    assert_eq!(listed[2]["id"].as_str(), Some(run_id.as_str()));
    let only_background =
        server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}&background=true"), None).await;
    assert_eq!(ids(&only_background), vec![background_id.clone()]);
    let failed =
        server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}&statuses=failed,cancelled"), None).await;
    assert_eq!(failed, json!([]));
    let completed = server
        .ok("GET", &format!("/v1/runs/?agent_id={agent_id}&statuses=completed&order=asc&limit=1"), None)
        .await;
    assert_eq!(ids(&completed), vec![run_id.clone()]);
    // Deleting a run forgets it; its messages stay with the agent.
    let before = server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await;
    server.ok("DELETE", &run_path(&run_id, ""), None).await;
    let (status, _) = server.call("GET", &run_path(&run_id, ""), None).await;
    assert_eq!(status, 404);
    let (status, _) = server.call("GET", &run_path(&run_id, "/steps"), None).await;
    assert_eq!(status, 404);
    assert_eq!(server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await, before);
    assert_eq!(
        server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}"), None).await.as_array().unwrap().len(),
        2
    );
    // Runs survive a restart.
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    let run = server.ok("GET", &run_path(&background_id, ""), None).await;
    assert_eq!(run["status"], "completed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_failed_turn_is_a_failed_run_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("fails", &[]).await;
    fake.push_error(400, "the model fell over");
    let body = json!({"messages": [{"role": "user", "content": "hello"}]});
    let (status, _) = server.call("POST", &format!("/v1/agents/{agent_id}/messages"), Some(body)).await;
    assert!(status >= 500, "{status}");
    let runs = server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}&statuses=failed"), None).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["stop_reason"], "error");
    let error = runs[0]["metadata"]["error"].as_str().unwrap();
    assert!(error.contains("the model fell over"), "{error}");
    let run_id = runs[0]["id"].as_str().unwrap();
    assert_eq!(server.ok("GET", &run_path(run_id, "/messages"), None).await, json!([]));
    assert_eq!(server.ok("GET", &run_path(run_id, "/steps"), None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn synchronous_and_streaming_turns_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = std::sync::Arc::new(common::start(dir.path(), &fake).await);
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": "c", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    for route in ["messages", "messages/stream"] {
        let (task_server, path) = (std::sync::Arc::clone(&server), format!("/v1/agents/{agent_id}/{route}"));
        // The first step (a reply that calls nap) commits; the nap is cut.
        let body = json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 60}"}]});
        let turn = tokio::spawn(async move { task_server.call("POST", &path, Some(body)).await });
        let mut waited_ms = 0;
        let run = loop {
            let active = server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}&active=true"), None).await;
            if let Some(run) = active.as_array().unwrap().first() {
                break run.clone();
            }
            assert!(waited_ms < RUN_WAIT_MS_MAX, "no run became active");
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
            waited_ms += POLL_INTERVAL_MS;
        };
        let run_id = run["id"].as_str().unwrap();
        assert_eq!(run["background"], false);
        let cancelled = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/cancel"), None).await;
        assert_eq!(cancelled, json!({run_id: "cancelled"}), "{route}");
        let (status, answer) = turn.await.unwrap();
        assert_eq!(status, 200, "{route}: {answer}");
        let text = answer.as_str().map(str::to_string).unwrap_or_else(|| answer.to_string());
        assert!(text.contains("\"stop_reason\":\"cancelled\""), "{route}: {text}");
        let run = server.ok("GET", &run_path(run_id, ""), None).await;
        assert_eq!(
            (run["status"].as_str(), run["stop_reason"].as_str()),
            (Some("cancelled"), Some("cancelled"))
        );
        // The step that calls nap commits with the call's result: cut
        // during the call, it left nothing.
        assert_eq!(server.ok("GET", &run_path(run_id, "/messages"), None).await, json!([]), "{route}");
        assert_eq!(server.ok("GET", &run_path(run_id, "/steps"), None).await, json!([]), "{route}");
    }
    let reply = server.say(&agent_id, "still there?").await;
    assert_eq!(reply["messages"].as_array().unwrap().last().unwrap()["content"], "echo: still there?");
    std::sync::Arc::into_inner(server).unwrap().shutdown().await;
}

#[tokio::test]
async fn runs_of_several_agents_page_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let (a, b) = (server.create_agent("a", &[]).await, server.create_agent("b", &[]).await);
    let mut made = Vec::new();
    for round in 0..6 {
        for agent_id in [&a, &b] {
            let reply = server.say(agent_id, &format!("turn {round}")).await;
            made.push(reply["messages"][0]["run_id"].as_str().unwrap().to_string());
        }
    }
    // Without agent_id every agent's runs are listed; both cursors work.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let page = server.ok("GET", &format!("/v1/runs/?order=asc&limit=5{cursor}"), None).await;
        let page = ids(&page);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        walked.extend(page);
    }
    assert_eq!(walked, made);
    let newest = server.ok("GET", &format!("/v1/runs/?agent_ids={a}&agent_ids={b}&limit=3"), None).await;
    assert_eq!(ids(&newest), made.iter().rev().take(3).cloned().collect::<Vec<_>>());
    let before = server.ok("GET", &format!("/v1/runs/?order=asc&before={}", made[3]), None).await;
    assert_eq!(ids(&before), made[..3].to_vec());
    let one_agent =
        server.ok("GET", &format!("/v1/runs/?agent_id={b}&order=asc&after={}", made[1]), None).await;
    assert_eq!(ids(&one_agent), made.iter().skip(3).step_by(2).cloned().collect::<Vec<_>>());
    let (status, body) = server.call("GET", "/v1/runs/?statuses=finished", None).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("finished"), "{body}");
    server.shutdown().await;
}

/// The `data:` events of an SSE body, `[DONE]` as a string.
fn sse_events(body: &Value) -> Vec<Value> {
    body.as_str()
        .unwrap()
        .split("\n\n")
        .filter_map(|chunk| chunk.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string())))
        .collect()
}

#[tokio::test]
async fn a_run_stream_resumes_from_its_cursor_and_follows_a_run_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": "s", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    let agent_id = agent["id"].as_str().unwrap();
    // An ended run: everything at once, numbered from 1.
    let reply = server.say(agent_id, "/call nap {\"seconds\": 0}").await;
    let run_id = reply["messages"][0]["run_id"].as_str().unwrap().to_string();
    let whole = sse_events(&server.ok("POST", &run_path(&run_id, "/stream"), Some(json!({}))).await);
    assert_eq!(whole[0]["message_type"], "ping");
    assert!(whole[0]["date"].as_str().is_some_and(|date| date.ends_with('Z')), "{}", whole[0]);
    assert_eq!(whole.last().unwrap(), "[DONE]");
    let numbered: Vec<&Value> = whole.iter().filter(|event| event["seq_id"].is_u64()).collect();
    let seq_ids: Vec<u64> = numbered.iter().map(|event| event["seq_id"].as_u64().unwrap()).collect();
    assert_eq!(seq_ids, (1..=numbered.len() as u64).collect::<Vec<_>>());
    let kinds: Vec<&str> = numbered.iter().map(|event| event["message_type"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> =
        reply["messages"].as_array().unwrap().iter().map(|m| m["message_type"].as_str().unwrap()).collect();
    expected.extend(["stop_reason", "usage_statistics"]);
    assert_eq!(kinds, expected);
    assert!(numbered.iter().all(|event| event["run_id"] == run_id.as_str()));
    // Resumed after seq 3: the rest, no ping when asked for none.
    let body = json!({"starting_after": 3, "include_pings": false});
    let rest = sse_events(&server.ok("POST", &run_path(&run_id, "/stream"), Some(body)).await);
    assert_eq!(rest.len(), numbered.len() - 3 + 1, "{rest:?}");
    assert_eq!(rest[0]["seq_id"], 4);
    assert_eq!(&rest[..rest.len() - 1], &numbered[3..].iter().map(|e| (*e).clone()).collect::<Vec<_>>()[..]);
    // A run still going is followed until it ends.
    let body = json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 1}"}]});
    let run = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/async"), Some(body)).await;
    let live = run["id"].as_str().unwrap();
    let body = json!({"poll_interval": 0.05});
    let followed = sse_events(&server.ok("POST", &run_path(live, "/stream"), Some(body)).await);
    let returned: Vec<&Value> =
        followed.iter().filter(|e| e["message_type"] == "tool_return_message").collect();
    assert_eq!(returned.len(), 1, "{followed:?}");
    assert_eq!(returned[0]["tool_return"], "rested");
    let stop = followed.iter().find(|e| e["message_type"] == "stop_reason").unwrap();
    assert_eq!(stop["stop_reason"], "end_turn");
    assert_eq!(server.ok("GET", &run_path(live, ""), None).await["status"], "completed");
    let (status, body) = server.call("POST", "/v1/runs/run-nope/stream", Some(json!({}))).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        server.call("POST", &run_path(&run_id, "/stream"), Some(json!({"starting_after": "x"}))).await;
    assert_eq!(status, 422, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_turn_sent_again_with_its_key_runs_once_and_answers_the_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = std::sync::Arc::new(common::start(dir.path(), &fake).await);
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": "k", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    let path = format!("/v1/agents/{agent_id}/messages");
    // The same otid sent twice at once, the first still napping: one run.
    let body =
        json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 1}", "otid": "retry-1"}]});
    let sends: Vec<_> = (0..2)
        .map(|_| {
            let (server, path, body) = (std::sync::Arc::clone(&server), path.clone(), body.clone());
            tokio::spawn(async move { server.ok("POST", &path, Some(body)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap());
    }
    assert_eq!(answers[0]["messages"], answers[1]["messages"]);
    assert_eq!(answers[0]["stop_reason"], answers[1]["stop_reason"]);
    let run_id = answers[0]["messages"][0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(answers[1]["usage"]["run_ids"], json!([run_id]));
    // Sent again later with the same key: the same answer, nothing stored.
    let again = server.ok("POST", &path, Some(body)).await;
    assert_eq!(again["messages"], answers[0]["messages"]);
    let messages = server.ok("GET", &format!("/v1/agents/{agent_id}/messages"), None).await;
    let users = messages.as_array().unwrap().iter().filter(|m| m["message_type"] == "user_message").count();
    assert_eq!(users, 1, "{messages}");
    assert_eq!(
        server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}"), None).await.as_array().unwrap().len(),
        1
    );
    // The header is a key too, streaming and background alike.
    let keyed = |key: &str| {
        let request =
            server.http.post(format!("{}{path}/stream", server.base)).header("Idempotency-Key", key);
        request.json(&json!({"messages": [{"role": "user", "content": "streamed once"}]})).send()
    };
    let first = keyed("stream-1").await.unwrap().text().await.unwrap();
    let second = keyed("stream-1").await.unwrap().text().await.unwrap();
    let messages_of = |text: &str| -> Vec<Value> {
        text.split("\n\n")
            .filter_map(|chunk| chunk.strip_prefix("data: "))
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .filter(|event| event["message_type"] != "ping")
            .collect()
    };
    assert_eq!(messages_of(&first), messages_of(&second));
    let async_path = format!("{}{path}/async", server.base);
    let body = json!({"messages": [{"role": "user", "content": "later, once"}]});
    let start = || server.http.post(&async_path).header("Idempotency-Key", "bg-1").json(&body).send();
    let one: Value = start().await.unwrap().json().await.unwrap();
    let two: Value = start().await.unwrap().json().await.unwrap();
    assert_eq!(one["id"], two["id"]);
    wait_for_status(&server, one["id"].as_str().unwrap(), "completed").await;
    let runs = server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}"), None).await;
    assert_eq!(runs.as_array().unwrap().len(), 3, "{runs}");
    let long = "k".repeat(257);
    let body = json!({"messages": [{"role": "user", "content": "x", "otid": long}]});
    let (status, answer) = server.call("POST", &path, Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("1..=256 bytes"), "{answer}");
    std::sync::Arc::into_inner(server).unwrap().shutdown().await;
}

#[tokio::test]
async fn past_the_open_runs_of_one_agent_a_new_run_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": "busy", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    let agent_id = agent["id"].as_str().unwrap();
    let path = format!("/v1/agents/{agent_id}/messages/async");
    // The first naps; the others wait for its turn lock: all stay open.
    let body = json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 60}"}]});
    for _ in 0..kelpie_agent::actors::agent::OPEN_RUNS_COUNT_MAX {
        server.ok("POST", &path, Some(body.clone())).await;
    }
    let (status, answer) = server.call("POST", &path, Some(body)).await;
    assert!((400..500).contains(&status), "{status} {answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains("OPEN_RUNS_COUNT_MAX"), "{detail}");
    let active =
        server.ok("GET", &format!("/v1/runs/?agent_id={agent_id}&active=true&limit=1000"), None).await;
    assert_eq!(active.as_array().unwrap().len(), kelpie_agent::actors::agent::OPEN_RUNS_COUNT_MAX);
    let cancelled = server.ok("POST", &format!("/v1/agents/{agent_id}/messages/cancel"), None).await;
    assert_eq!(cancelled.as_object().unwrap().len(), kelpie_agent::actors::agent::OPEN_RUNS_COUNT_MAX);
    // Room again once they ended.
    let body = json!({"messages": [{"role": "user", "content": "free now"}]});
    let run = server.ok("POST", &path, Some(body)).await;
    wait_for_status(&server, run["id"].as_str().unwrap(), "completed").await;
    server.shutdown().await;
}

#[tokio::test]
async fn listing_runs_of_every_agent_past_the_agent_limit_asks_for_agent_id() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = std::sync::Arc::new(common::start(dir.path(), &fake).await);
    let agents_count = kelpie_agent::service::runs::RUN_LIST_AGENTS_COUNT_MAX + 1;
    let creators: Vec<_> = (0..4)
        .map(|worker| {
            let server = std::sync::Arc::clone(&server);
            tokio::spawn(async move {
                for n in (worker..agents_count).step_by(4) {
                    server.ok("POST", "/v1/agents/", Some(json!({"name": format!("a{n}")}))).await;
                }
            })
        })
        .collect();
    for creator in creators {
        creator.await.unwrap();
    }
    let (status, answer) = server.call("GET", "/v1/runs/", None).await;
    assert_eq!(status, 422, "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("RUN_LIST_AGENTS_COUNT_MAX = 1000") && detail.contains("give agent_id"),
        "{detail}"
    );
    std::sync::Arc::into_inner(server).unwrap().shutdown().await;
}

#[tokio::test]
async fn at_shutdown_a_waiting_turn_completes_and_a_background_run_ends_failed_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": "late", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    let waiting_agent =
        server.ok("POST", "/v1/agents/", Some(body.clone())).await["id"].as_str().unwrap().to_string();
    let background_agent =
        server.ok("POST", "/v1/agents/", Some(body)).await["id"].as_str().unwrap().to_string();
    let body = json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 60}"}]});
    let background =
        server.ok("POST", &format!("/v1/agents/{background_agent}/messages/async"), Some(body)).await;
    let background_id = background["id"].as_str().unwrap().to_string();
    // A client waits on a turn that naps 1 s; the shutdown begins meanwhile.
    let body = json!({"messages": [{"role": "user", "content": "/call nap {\"seconds\": 1}"}]});
    let request =
        server.http.post(format!("{}/v1/agents/{waiting_agent}/messages", server.base)).json(&body).send();
    let waiting = tokio::spawn(request);
    let active = format!("/v1/runs/?agent_id={waiting_agent}&active=true");
    while server.ok("GET", &active, None).await.as_array().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    let base = server.base.clone();
    server.shutdown().await;
    let answer: Value = waiting.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(answer["stop_reason"]["stop_reason"], "end_turn", "the waiting turn completed: {answer}");
    let returned =
        answer["messages"].as_array().unwrap().iter().find(|m| m["message_type"] == "tool_return_message");
    assert_eq!(returned.unwrap()["tool_return"], "rested");
    assert!(
        reqwest::get(format!("{base}/v1/health/")).await.is_err(),
        "no request is served after the shutdown"
    );
    let server = common::start(dir.path(), &fake).await;
    let run = server.ok("GET", &run_path(&background_id, ""), None).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["metadata"]["error"].as_str().unwrap();
    assert!(error.contains("the server shut down while the run was in flight"), "{error}");
    server.shutdown().await;
}
