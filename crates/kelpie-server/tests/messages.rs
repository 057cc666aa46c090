//! The agent loop over HTTP against the fake LLM: sync, streaming, tool
//! calls, message listing, archival memory, errors, restart, concurrency.

mod common;

use std::collections::BTreeSet;

use serde_json::{json, Value};

fn types(messages: &Value) -> Vec<&str> {
    messages.as_array().unwrap().iter().map(|m| m["message_type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn send_message_returns_echo_with_usage_and_prompt_holds_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("chat", &[]).await;
    let reply = server.say(&id, "hello").await;
    assert_eq!(types(&reply["messages"]), ["assistant_message"]);
    assert_eq!(reply["messages"][0]["content"], "echo: hello");
    assert!(reply["messages"][0]["id"].as_str().unwrap().starts_with("message-"));
    assert_eq!(reply["stop_reason"], json!({"message_type": "stop_reason", "stop_reason": "end_turn"}));
    assert_eq!(reply["usage"]["step_count"], 1);
    assert!(reply["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let system = requests[0]["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("<human chars=\"10/100\">\nName: Ana.\n</human>"), "{system}");
    assert_eq!(requests[0]["model"], "fake-gpt");
    assert_eq!(requests[0]["tools"].as_array().unwrap().len(), 11);

    let second = server.say(&id, "again").await;
    assert_eq!(second["messages"][0]["content"], "echo: again");
    let history = &fake.requests()[1]["messages"];
    assert_eq!(history.as_array().unwrap().len(), 5, "system, hello, its call, its return, again: {history}");
    let listed = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    assert_eq!(types(&listed), ["user_message", "assistant_message", "user_message", "assistant_message"]);
    assert_eq!(listed[0]["content"], "hello");
    let page = server
        .ok(
            "GET",
            &format!("/v1/agents/{id}/messages?limit=2&after={}", listed[1]["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(page[0]["content"], "again");
    assert_eq!(page[1]["content"], "echo: again");
    let newest = server.ok("GET", &format!("/v1/agents/{id}/messages?limit=1&order=desc"), None).await;
    assert_eq!(newest[0]["content"], "echo: again");
    server.shutdown().await;
}

#[tokio::test]
async fn tool_calls_edit_memory_and_archival_within_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("tools", &[]).await;
    let reply = server.say(&id, r#"/call core_memory_append {"label":"human","content":"Likes tea."}"#).await;
    assert_eq!(
        types(&reply["messages"]),
        ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]
    );
    assert_eq!(reply["messages"][1]["tool_call"]["name"], "core_memory_append");
    assert_eq!(reply["messages"][2]["status"], "success");
    assert_eq!(reply["usage"]["step_count"], 2);
    let human = server.ok("GET", &format!("/v1/agents/{id}/core-memory/blocks/human"), None).await;
    assert_eq!(human["value"], "Name: Ana.\nLikes tea.");

    let over = format!(r#"/call core_memory_append {{"label":"human","content":"{}"}}"#, "x".repeat(100));
    let reply = server.say(&id, &over).await;
    assert_eq!(reply["messages"][2]["status"], "error");
    assert!(reply["messages"][2]["tool_return"].as_str().unwrap().contains("over the block's limit of 100"));
    let human = server.ok("GET", &format!("/v1/agents/{id}/core-memory/blocks/human"), None).await;
    assert_eq!(human["value"], "Name: Ana.\nLikes tea.", "a refused edit keeps the old value");

    server
        .say(&id, r#"/call archival_memory_insert {"content":"The lighthouse key is under the blue stone."}"#)
        .await;
    let reply = server.say(&id, r#"/call archival_memory_search {"query":"lighthouse key"}"#).await;
    assert_eq!(
        reply["messages"][2]["tool_return"],
        json!(["The lighthouse key is under the blue stone."]).to_string()
    );
    let reply = server.say(&id, r#"/call conversation_search {"query":"likes tea"}"#).await;
    assert!(reply["messages"][2]["tool_return"].as_str().unwrap().contains("Likes tea."));
    server.shutdown().await;
}

#[tokio::test]
async fn stream_sends_ping_messages_stop_reason_usage_done_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("stream", &[]).await;
    let response = server
        .http
        .post(format!("{}/v1/agents/{id}/messages/stream", server.base))
        .json(&json!({"messages": [{"role": "user", "content": "stream me"}], "stream_tokens": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let parsed: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let kinds: Vec<&str> = parsed.iter().map(|e| e["message_type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ping", "assistant_message", "stop_reason", "usage_statistics"]);
    assert_eq!(parsed[1]["content"], "echo: stream me");
    assert_eq!(parsed[2]["stop_reason"], "end_turn");

    let (status, body) = server
        .call(
            "POST",
            "/v1/agents/agent-nope/messages/stream",
            Some(json!({"messages": [{"role": "user", "content": "x"}]})),
        )
        .await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("Agent with ID agent-nope not found")));
    server.shutdown().await;
}

#[tokio::test]
async fn llm_failures_are_retried_then_surfaced_and_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("flaky", &[]).await;
    fake.push_status(503);
    fake.push_status(429);
    let reply = server.say(&id, "after retries").await;
    assert_eq!(reply["messages"][0]["content"], "echo: after retries");
    assert_eq!(fake.requests().len(), 3);

    fake.push_status(400);
    let body = json!({"messages": [{"role": "user", "content": "refused"}]});
    let (status, error) = server.call("POST", &format!("/v1/agents/{id}/messages"), Some(body)).await;
    assert_eq!(status, 502);
    assert!(error["detail"].as_str().unwrap().contains("answered 400"), "{error}");
    let listed = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2, "the failed turn persisted nothing: {listed}");

    let (status, error) =
        server.call("POST", &format!("/v1/agents/{id}/messages"), Some(json!({"messages": []}))).await;
    assert_eq!(
        (status, error["detail"].as_str()),
        (422, Some("messages must hold at least one non-empty user message"))
    );
    let (status, _) =
        server.call("POST", &format!("/v1/agents/{id}/messages"), Some(json!({"messages": "x"}))).await;
    assert_eq!(status, 422);
    server.shutdown().await;
}

#[tokio::test]
async fn max_steps_stops_a_loop_that_never_replies() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("loop", &[]).await;
    for _ in 0..3 {
        fake.push_reply(None, &[("conversation_search", json!({"query": "x"}))]);
    }
    let body = json!({"messages": [{"role": "user", "content": "go"}], "max_steps": 3});
    let reply = server.ok("POST", &format!("/v1/agents/{id}/messages"), Some(body)).await;
    assert_eq!(reply["stop_reason"]["stop_reason"], "max_steps");
    assert_eq!(reply["usage"]["step_count"], 3);
    assert_eq!(types(&reply["messages"]).iter().filter(|t| **t == "tool_return_message").count(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn archival_insert_list_search_delete_and_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let a = server.create_agent("a", &[]).await;
    let b = server.create_agent("b", &[]).await;
    let inserted = server
        .ok(
            "POST",
            &format!("/v1/agents/{a}/archival-memory"),
            Some(json!({"text": "The lighthouse key is under the blue stone."})),
        )
        .await;
    let passage_id = inserted[0]["id"].as_str().unwrap().to_string();
    assert!(passage_id.starts_with("passage-"));
    assert_eq!(inserted[0]["embedding"].as_array().unwrap().len(), 256);
    server
        .ok("POST", &format!("/v1/agents/{a}/archival-memory"), Some(json!({"text": "Ana likes chess."})))
        .await;
    server
        .ok(
            "POST",
            &format!("/v1/agents/{b}/archival-memory"),
            Some(json!({"text": "lighthouse lighthouse lighthouse"})),
        )
        .await;

    let listed = server.ok("GET", &format!("/v1/agents/{a}/archival-memory?limit=5"), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let found = server
        .ok("GET", &format!("/v1/agents/{a}/archival-memory/search?query=lighthouse&top_k=5"), None)
        .await;
    assert_eq!(found["count"], 2, "only agent a's passages: {found}");
    assert_eq!(found["results"][0]["content"], "The lighthouse key is under the blue stone.");
    let found_b = server.ok("GET", &format!("/v1/agents/{b}/archival-memory/search?query=chess"), None).await;
    assert_eq!(found_b["count"], 1);
    assert_eq!(found_b["results"][0]["content"], "lighthouse lighthouse lighthouse");

    server.ok("DELETE", &format!("/v1/agents/{a}/archival-memory/{passage_id}"), None).await;
    let (status, _) =
        server.call("DELETE", &format!("/v1/agents/{a}/archival-memory/{passage_id}"), None).await;
    assert_eq!(status, 404);
    let listed = server.ok("GET", &format!("/v1/agents/{a}/archival-memory"), None).await;
    assert_eq!(listed[0]["text"], "Ana likes chess.");
    let (status, _) =
        server.call("POST", &format!("/v1/agents/{a}/archival-memory"), Some(json!({"text": " "}))).await;
    assert_eq!(status, 422);
    server.shutdown().await;
}

async fn snapshot(server: &common::Running, id: &str) -> Value {
    json!({
        "agent": server.ok("GET", &format!("/v1/agents/{id}"), None).await,
        "list": server.ok("GET", "/v1/agents/", None).await,
        "messages": server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await,
        "passages": server.ok("GET", &format!("/v1/agents/{id}/archival-memory"), None).await,
    })
}

#[tokio::test]
async fn restart_on_same_data_dir_keeps_everything_identical() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("durable", &["keep"]).await;
    server
        .ok(
            "PATCH",
            &format!("/v1/agents/{id}/core-memory/blocks/human"),
            Some(json!({"value": "Name: Ana. Likes chess."})),
        )
        .await;
    server.say(&id, "remember me").await;
    server
        .ok("POST", &format!("/v1/agents/{id}/archival-memory"), Some(json!({"text": "a durable fact"})))
        .await;
    let before = snapshot(&server, &id).await;
    server.shutdown().await;

    let restarted = common::start(dir.path(), &fake).await;
    let after = snapshot(&restarted, &id).await;
    assert_eq!(after, before);
    assert_eq!(after["messages"].as_array().unwrap().len(), 2);
    let reply = restarted.say(&id, "still there?").await;
    assert_eq!(reply["messages"][0]["content"], "echo: still there?");
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_to_one_agent_are_serialized_and_none_lost() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = std::sync::Arc::new(common::start(dir.path(), &fake).await);
    let id = server.create_agent("busy", &[]).await;
    let sends = (0..10).map(|i| {
        let (server, id) = (server.clone(), id.clone());
        tokio::spawn(async move { server.say(&id, &format!("m{i}")).await })
    });
    for (i, reply) in futures::future::join_all(sends).await.into_iter().enumerate() {
        assert_eq!(reply.unwrap()["messages"][0]["content"], format!("echo: m{i}"));
    }
    let listed = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 20);
    // Serialized: every user message is directly followed by its own echo.
    for pair in listed.chunks(2) {
        assert_eq!(pair[0]["message_type"], "user_message");
        assert_eq!(pair[1]["content"], format!("echo: {}", pair[0]["content"].as_str().unwrap()));
    }
    let distinct: BTreeSet<&str> = listed.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 20, "no message lost or duplicated");
    std::sync::Arc::try_unwrap(server).ok().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_to_many_agents_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = std::sync::Arc::new(common::start(dir.path(), &fake).await);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(server.create_agent(&format!("p{i}"), &[]).await);
    }
    let sends = ids.iter().map(|id| {
        let (server, id) = (server.clone(), id.clone());
        tokio::spawn(async move { server.say(&id, &format!("to {id}")).await })
    });
    for (reply, id) in futures::future::join_all(sends).await.into_iter().zip(&ids) {
        assert_eq!(reply.unwrap()["messages"][0]["content"], format!("echo: to {id}"));
    }
    for id in &ids {
        let listed = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
        assert_eq!(listed.as_array().unwrap().len(), 2, "{id}");
    }
    std::sync::Arc::try_unwrap(server).ok().unwrap().shutdown().await;
}
