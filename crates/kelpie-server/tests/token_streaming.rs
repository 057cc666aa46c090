//! `POST /v1/agents/{id}/messages/stream` with `stream_tokens: true` against
//! the fake LLM streaming its answers: partial messages sharing the stored
//! message's id, the same stored history as a non-streamed turn, and a
//! stream broken off mid-answer persisting nothing.

mod common;

use serde_json::{json, Value};

/// The SSE events of a stream, `[DONE]` checked and dropped.
async fn stream(server: &common::Running, agent_id: &str, text: &str) -> Vec<Value> {
    let response = server
        .http
        .post(format!("{}/v1/agents/{agent_id}/messages/stream", server.base))
        .json(&json!({"messages": [{"role": "user", "content": text}], "stream_tokens": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let events: Vec<&str> =
        body.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

/// The text a chunk carries, whatever its type.
fn fragment(chunk: &Value) -> String {
    let text = match chunk["message_type"].as_str().unwrap() {
        "assistant_message" => &chunk["content"],
        "reasoning_message" => &chunk["reasoning"],
        "tool_call_message" => &chunk["tool_call"]["arguments"],
        "tool_return_message" => &chunk["tool_return"],
        _ => &Value::Null,
    };
    text.as_str().unwrap_or_default().to_string()
}

/// Consecutive chunks of one message id and type joined into one
/// `(type, id, text, chunks)`.
fn collapse(chunks: &[Value]) -> Vec<(String, String, String, usize)> {
    let mut out: Vec<(String, String, String, usize)> = Vec::new();
    for chunk in chunks {
        let kind = chunk["message_type"].as_str().unwrap().to_string();
        let id = chunk["id"].as_str().unwrap_or_default().to_string();
        match out.last_mut().filter(|last| last.0 == kind && last.1 == id) {
            Some(last) => {
                last.2.push_str(&fragment(chunk));
                last.3 += 1;
            }
            None => out.push((kind, id, fragment(chunk), 1)),
        }
    }
    out
}

/// A stored message without what differs between two agents and runs.
fn comparable(message: &Value) -> Value {
    let arguments =
        message["tool_call"]["arguments"].as_str().map(|a| serde_json::from_str::<Value>(a).unwrap());
    json!([message["message_type"], fragment(message), message["tool_call"]["name"], arguments])
}

#[tokio::test]
async fn stream_tokens_sends_partial_messages_with_the_stored_id_and_stores_what_a_plain_turn_stores() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let streamed_id = server.create_agent("tokens", &[]).await;
    let plain_id = server.create_agent("plain", &[]).await;
    let inputs = ["tell me a longer story, please", r#"/call conversation_search {"query":"longer story"}"#];
    let mut all_events = Vec::new();
    for input in inputs {
        let events = stream(&server, &streamed_id, input).await;
        let plain = server.say(&plain_id, input).await;
        let kinds: Vec<&str> = events.iter().map(|e| e["message_type"].as_str().unwrap()).collect();
        assert_eq!(kinds.first(), Some(&"ping"));
        assert_eq!(kinds[kinds.len() - 2..], ["stop_reason", "usage_statistics"]);
        let usage = &events[events.len() - 1];
        for field in ["prompt_tokens", "completion_tokens", "step_count"] {
            assert_eq!(usage[field], plain["usage"][field], "{field}");
        }
        // Every message of the plain answer, once, in order, from its chunks.
        let collapsed = collapse(&events[1..events.len() - 2]);
        let streamed: Vec<Value> = collapsed.iter().map(|(kind, _, text, _)| json!([kind, text])).collect();
        let expected: Vec<Value> = plain["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| json!([m["message_type"], fragment(m)]))
            .collect();
        assert_eq!(streamed, expected, "input {input:?}");
        all_events.extend(collapsed);
    }
    let echo = all_events.iter().find(|(kind, ..)| kind == "assistant_message").unwrap();
    assert_eq!(echo.2, "echo: tell me a longer story, please");
    assert!(echo.3 >= 3, "the reply came in {} chunks", echo.3);
    let arguments = all_events.iter().find(|(kind, ..)| kind == "tool_call_message").unwrap();
    assert!(arguments.3 >= 3, "the tool call came in {} chunks", arguments.3);
    let reasoning = all_events.iter().find(|(kind, ..)| kind == "reasoning_message").unwrap();
    assert_eq!(reasoning.2, "Calling conversation_search.");

    let stored = server.ok("GET", &format!("/v1/agents/{streamed_id}/messages"), None).await;
    let stored = stored.as_array().unwrap();
    let plain = server.ok("GET", &format!("/v1/agents/{plain_id}/messages"), None).await;
    let comparable_list = |list: &[Value]| list.iter().map(comparable).collect::<Vec<_>>();
    assert_eq!(comparable_list(stored), comparable_list(plain.as_array().unwrap()));
    for (kind, id, text, _) in &all_events {
        let same = stored.iter().find(|m| m["id"] == id.as_str() && m["message_type"] == kind.as_str());
        assert_eq!(same.map(fragment).as_deref(), Some(text.as_str()), "{kind} {id} is stored as streamed");
    }
    // The fake was asked to stream, with usage.
    let requests = fake.requests();
    assert!(requests
        .iter()
        .any(|r| r["stream"] == json!(true) && r["stream_options"]["include_usage"] == json!(true)));
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_broken_mid_answer_is_an_error_event_and_leaves_the_agent_at_the_previous_step() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("broken", &[]).await;
    server.say(&id, "first").await;
    let before = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    assert_eq!(before.as_array().unwrap().len(), 2);

    // One turn cut in its first step, one cut in its second step.
    fake.push_broken_stream(6);
    let requests_before = fake.requests().len();
    let events = stream(&server, &id, "this answer breaks off").await;
    assert_eq!(fake.requests().len(), requests_before + 1, "no retry once the answer started");
    let last = events.last().unwrap();
    assert_eq!(last["message_type"], "error", "{events:?}");
    assert!(last["detail"].as_str().unwrap().contains("failed mid-stream"), "{last}");
    assert!(events.iter().any(|e| e["message_type"] == "assistant_message"), "tokens came before the break");
    assert!(events.iter().all(|e| e["message_type"] != "stop_reason"));
    let after = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    assert_eq!(after, before, "nothing of the broken step is stored");

    fake.push_reply(Some("Looking."), &[("conversation_search", json!({"query": "first"}))]);
    fake.push_broken_stream(3);
    let events = stream(&server, &id, "two steps").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["message_type"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"tool_return_message") && kinds.last() == Some(&"error"), "{kinds:?}");
    let after = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    let kinds: Vec<&str> =
        after.as_array().unwrap().iter().map(|m| m["message_type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user_message",
            "assistant_message",
            "user_message",
            "reasoning_message",
            "tool_call_message",
            "tool_return_message"
        ],
        "the first step is stored, the broken second is not"
    );

    let reply = server.say(&id, "still here").await;
    assert_eq!(reply["messages"][0]["content"], "echo: still here");
    server.shutdown().await;
}

#[tokio::test]
async fn send_with_streaming_true_answers_as_the_stream_route() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("streaming-flag", &[]).await;
    let body = json!({"messages": [{"role": "user", "content": "via send"}], "streaming": true, "stream_tokens": true});
    let response = server
        .http
        .post(format!("{}/v1/agents/{id}/messages", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(text.ends_with("data: [DONE]\n\n"));
    let collapsed = collapse(&events);
    let kinds: Vec<&str> = collapsed.iter().map(|(kind, ..)| kind.as_str()).collect();
    assert_eq!(kinds, ["ping", "assistant_message", "stop_reason", "usage_statistics"]);
    assert_eq!(collapsed[1].2, "echo: via send");
    assert!(collapsed[1].3 >= 3, "{} chunks", collapsed[1].3);
    server.shutdown().await;
}
