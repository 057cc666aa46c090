//! The Anthropic Messages provider end to end: a fake Anthropic endpoint
//! (axum on 127.0.0.1, scripted, streaming when asked) behind
//! `POST /v1/agents/{id}/messages` and `/messages/stream`.

mod common;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header as http_header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const ANTHROPIC_KEY: &str = "sk-ant-test";
const FAKE_CLAUDE: &str = "claude-fake-1";
const INPUT_TOKENS_COUNT: u64 = 11;
const OUTPUT_TOKENS_COUNT: u64 = 3;

#[derive(Default)]
struct FakeState {
    statuses: VecDeque<u16>,
    /// The next streamed answer sends an `error` event after its first delta.
    overloaded_mid_stream: bool,
    /// `(x-api-key, anthropic-version, body)` of every Messages request.
    requests: Vec<(String, String, Value)>,
}

type Shared = Arc<Mutex<FakeState>>;

fn header(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// The last text block of the user's messages.
fn last_user_text(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|block| block["type"] == "text")
        .filter_map(|block| block["text"].as_str().map(str::to_string))
        .next_back()
        .unwrap_or_default()
}

async fn messages(State(state): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let status = {
        let mut state = state.lock().unwrap();
        state.requests.push((
            header(&headers, "x-api-key"),
            header(&headers, "anthropic-version"),
            body.clone(),
        ));
        state.statuses.pop_front()
    };
    if let Some(status) = status {
        let error = json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("scripted {status}")}});
        return (StatusCode::from_u16(status).unwrap(), Json(error)).into_response();
    }
    let text = last_user_text(&body);
    let answer = json!({
        "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
        "stop_reason": "tool_use",
        "content": [{"type": "text", "text": "Replying."},
                    {"type": "tool_use", "id": format!("toolu_{}", text.len()), "name": "send_message",
                     "input": {"message": format!("claude: {text}")}}],
        "usage": {"input_tokens": INPUT_TOKENS_COUNT, "output_tokens": OUTPUT_TOKENS_COUNT},
    });
    if body["stream"] != json!(true) {
        return Json(answer).into_response();
    }
    let overloaded = std::mem::take(&mut state.lock().unwrap().overloaded_mid_stream);
    let events: String = stream_events(&answer, overloaded)
        .iter()
        .map(|event| format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap()))
        .collect();
    ([(http_header::CONTENT_TYPE, "text/event-stream")], events).into_response()
}

/// `text` in pieces of at most `chars` characters.
fn pieces(text: &str, chars: usize) -> Vec<String> {
    let all: Vec<char> = text.chars().collect();
    all.chunks(chars).map(|piece| piece.iter().collect()).collect()
}

/// A whole Messages answer as the events of a streamed one; with
/// `overloaded`, an `error` event follows the first delta and ends it.
fn stream_events(answer: &Value, overloaded: bool) -> Vec<Value> {
    let mut events = vec![json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
        "role": "assistant", "content": [], "usage": {"input_tokens": INPUT_TOKENS_COUNT, "output_tokens": 1}}})];
    for (index, block) in answer["content"].as_array().unwrap().iter().enumerate() {
        let (start, deltas) = match block["type"].as_str().unwrap() {
            "text" => (
                json!({"type": "text", "text": ""}),
                pieces(block["text"].as_str().unwrap(), 4)
                    .into_iter()
                    .map(|text| json!({"type": "text_delta", "text": text}))
                    .collect::<Vec<_>>(),
            ),
            _ => (
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                pieces(&block["input"].to_string(), 6)
                    .into_iter()
                    .map(|json| json!({"type": "input_json_delta", "partial_json": json}))
                    .collect(),
            ),
        };
        events.push(json!({"type": "content_block_start", "index": index, "content_block": start}));
        for delta in deltas {
            events.push(json!({"type": "content_block_delta", "index": index, "delta": delta}));
            if overloaded {
                events.push(
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                );
                return events;
            }
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
    }
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                       "usage": {"output_tokens": OUTPUT_TOKENS_COUNT}}));
    events.push(json!({"type": "message_stop"}));
    events
}

/// The SSE events of `/messages/stream` with `stream_tokens`, `[DONE]` checked and dropped.
async fn stream_tokens(server: &common::Running, agent_id: &str, text: &str) -> Vec<Value> {
    let body = json!({"messages": [{"role": "user", "content": text}], "stream_tokens": true});
    let response = server
        .http
        .post(format!("{}/v1/agents/{agent_id}/messages/stream", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

async fn models() -> Json<Value> {
    Json(
        json!({"data": [{"type": "model", "id": FAKE_CLAUDE, "display_name": "Fake Claude"}], "has_more": false}),
    )
}

async fn fake_anthropic() -> (String, Shared) {
    let state = Shared::default();
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, state)
}

async fn start_with_anthropic(dir: &std::path::Path, base: &str) -> common::Running {
    let fake = common::fake_llm().await;
    let extra = [("llm.anthropic_base_url", base), ("llm.anthropic_api_key", ANTHROPIC_KEY)];
    common::start_with(dir, &fake, &extra).await
}

async fn create_claude_agent(server: &common::Running) -> String {
    let body = json!({"name": "claude", "model": format!("anthropic/{FAKE_CLAUDE}"),
                      "memory_blocks": [{"label": "human", "value": "Name: Ana."}]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(agent["model"], format!("anthropic/{FAKE_CLAUDE}"));
    assert_eq!(agent["llm_config"]["model_endpoint_type"], "anthropic");
    agent["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn anthropic_models_are_listed_and_an_agent_talks_through_tool_use() {
    let dir = tempfile::tempdir().unwrap();
    let (base, state) = fake_anthropic().await;
    let server = start_with_anthropic(dir.path(), &base).await;
    let listed = server.ok("GET", "/v1/models/", None).await;
    let handles: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|m| m["handle"].as_str()).collect();
    assert_eq!(handles, vec!["openai-proxy/fake-gpt", "anthropic/claude-fake-1"]);

    let id = create_claude_agent(&server).await;
    let reply = server.say(&id, "hello there").await;
    let sent: Vec<(&str, &str)> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            Some((m["message_type"].as_str()?, m["content"].as_str().or(m["reasoning"].as_str())?))
        })
        .collect();
    assert_eq!(sent, vec![("reasoning_message", "Replying."), ("assistant_message", "claude: hello there")]);
    assert_eq!(reply["usage"]["prompt_tokens"], INPUT_TOKENS_COUNT);
    assert_eq!(reply["usage"]["completion_tokens"], OUTPUT_TOKENS_COUNT);

    let second = server.say(&id, "and again").await;
    assert_eq!(second["messages"].as_array().unwrap().last().unwrap()["content"], "claude: and again");
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 2);
    let (key, version, body) = &requests[1];
    assert_eq!((key.as_str(), version.as_str()), (ANTHROPIC_KEY, "2023-06-01"));
    assert_eq!(body["model"], FAKE_CLAUDE);
    assert!(body["system"].as_str().unwrap().contains("Name: Ana."), "core memory in system: {body}");
    let tools: Vec<&str> =
        body["tools"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(tools.contains(&"send_message"), "{tools:?}");
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
    let roles: Vec<&str> =
        body["messages"].as_array().unwrap().iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, vec!["user", "assistant", "user"], "alternating: {body}");
    let history = &body["messages"];
    assert_eq!(history[1]["content"][1]["type"], "tool_use");
    assert_eq!(history[1]["content"][1]["input"], json!({"message": "claude: hello there"}));
    assert_eq!(history[2]["content"][0]["type"], "tool_result");
    assert_eq!(history[2]["content"][0]["tool_use_id"], history[1]["content"][1]["id"]);
    assert_eq!(history[2]["content"][1], json!({"type": "text", "text": "and again"}));
    server.shutdown().await;
}

#[tokio::test]
async fn anthropic_rate_limit_is_retried_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (base, state) = fake_anthropic().await;
    let server = start_with_anthropic(dir.path(), &base).await;
    let id = create_claude_agent(&server).await;
    state.lock().unwrap().statuses.push_back(429);
    let reply = server.say(&id, "after a 429").await;
    assert_eq!(reply["messages"].as_array().unwrap().last().unwrap()["content"], "claude: after a 429");
    assert_eq!(state.lock().unwrap().requests.len(), 2, "one refused, one answered");
    server.shutdown().await;
}

#[tokio::test]
async fn anthropic_bad_request_surfaces_as_502_and_persists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, state) = fake_anthropic().await;
    let server = start_with_anthropic(dir.path(), &base).await;
    let id = create_claude_agent(&server).await;
    state.lock().unwrap().statuses.push_back(400);
    let body = json!({"messages": [{"role": "user", "content": "refused"}]});
    let (status, error) = server.call("POST", &format!("/v1/agents/{id}/messages"), Some(body)).await;
    assert_eq!(status, 502);
    let detail = error["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("LLM provider at {base} answered 400")), "{detail}");
    assert!(detail.contains("scripted 400"), "{detail}");
    assert_eq!(state.lock().unwrap().requests.len(), 1, "a 400 is not retried");
    let listed = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    assert_eq!(listed, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn anthropic_handle_without_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body = json!({"name": "no-key", "model": "anthropic/claude-x"});
    let (status, error) = server.call("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(status, 422);
    assert_eq!(
        error["detail"],
        "model \"anthropic/claude-x\" needs the anthropic provider, which is not configured (set ANTHROPIC_API_KEY)"
    );
    let listed = server.ok("GET", "/v1/models/", None).await;
    assert!(listed.as_array().unwrap().iter().all(|m| m["provider_name"] != "anthropic"));
    server.shutdown().await;
}

#[tokio::test]
async fn anthropic_tokens_stream_as_partial_messages_and_an_error_event_persists_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, state) = fake_anthropic().await;
    let server = start_with_anthropic(dir.path(), &base).await;
    let id = create_claude_agent(&server).await;
    let events = stream_tokens(&server, &id, "stream it").await;
    let kinds: Vec<&str> = events.iter().map(|e| e["message_type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "ping");
    assert_eq!(kinds[kinds.len() - 2..], ["stop_reason", "usage_statistics"]);
    let text_of = |kind: &str, field: &str| -> (String, usize) {
        let chunks: Vec<&Value> = events.iter().filter(|e| e["message_type"] == kind).collect();
        (chunks.iter().map(|e| e[field].as_str().unwrap()).collect(), chunks.len())
    };
    let (reasoning, reasoning_chunks) = text_of("reasoning_message", "reasoning");
    let (reply, reply_chunks) = text_of("assistant_message", "content");
    assert_eq!((reasoning.as_str(), reply.as_str()), ("Replying.", "claude: stream it"));
    assert!(reasoning_chunks >= 2 && reply_chunks >= 3, "{reasoning_chunks} and {reply_chunks} chunks");
    let usage = events.last().unwrap();
    assert_eq!(
        (usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()),
        (Some(INPUT_TOKENS_COUNT), Some(OUTPUT_TOKENS_COUNT))
    );
    let stored = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    let stored_reply =
        stored.as_array().unwrap().iter().find(|m| m["message_type"] == "assistant_message").unwrap();
    assert_eq!(stored_reply["content"], "claude: stream it");
    let reply_ids: Vec<&Value> =
        events.iter().filter(|e| e["message_type"] == "assistant_message").map(|e| &e["id"]).collect();
    assert!(reply_ids.iter().all(|id| **id == stored_reply["id"]), "chunks carry the stored id");
    assert_eq!(state.lock().unwrap().requests.last().unwrap().2["stream"], json!(true));

    state.lock().unwrap().overloaded_mid_stream = true;
    let events = stream_tokens(&server, &id, "this one fails").await;
    let error = events.last().unwrap();
    assert_eq!(error["message_type"], "error");
    let detail = error["detail"].as_str().unwrap();
    assert!(detail.contains("overloaded_error: Overloaded"), "{detail}");
    let after = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
    assert_eq!(after, stored, "the failed turn stored nothing");
    server.shutdown().await;
}

#[tokio::test]
async fn a_created_anthropic_provider_serves_its_agent_with_its_own_key() {
    const BYOK_KEY: &str = "sk-ant-byok-of-the-user";
    let dir = tempfile::tempdir().unwrap();
    let (base, state) = fake_anthropic().await;
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[("llm.allow_internal_provider_urls", "true")]).await;
    // Letta's Anthropic base URLs end in /v1; the client adds /v1/messages itself.
    let body = json!({"name": "my-claude", "provider_type": "anthropic", "api_key": BYOK_KEY,
                      "base_url": format!("{base}/v1")});
    let provider = server.ok("POST", "/v1/providers/", Some(body)).await;
    assert_eq!((&provider["provider_type"], &provider["api_key"]), (&json!("anthropic"), &Value::Null));
    let listed = server.ok("GET", "/v1/models/?provider_type=anthropic", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["handle"], format!("my-claude/{FAKE_CLAUDE}"));
    assert_eq!(listed[0]["model_endpoint_type"], "anthropic");
    let embeddings = server.ok("GET", "/v1/models/embedding", None).await;
    assert_eq!(embeddings.as_array().unwrap().len(), 1, "Anthropic serves no embeddings: {embeddings}");

    let body = json!({"name": "c", "model": format!("my-claude/{FAKE_CLAUDE}")});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(agent["llm_config"]["model_endpoint_type"], "anthropic");
    let reply = server.say(agent["id"].as_str().unwrap(), "hello").await;
    assert_eq!(reply["messages"].as_array().unwrap().last().unwrap()["content"], "claude: hello");
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].0.as_str(), requests[0].1.as_str()), (BYOK_KEY, "2023-06-01"));
    assert!(fake.requests().is_empty(), "nothing went to the configured provider");
    let id = provider["id"].as_str().unwrap();
    let checked = server.ok("POST", &format!("/v1/providers/{id}/check"), None).await;
    assert_eq!(checked["message"], "Valid api key for provider_type=anthropic");
    server.shutdown().await;
}
