//! A fake OpenAI-compatible LLM server for tests: deterministic, on
//! 127.0.0.1, no network beyond loopback.
//!
//! Its default behaviour, for a request whose last message is
//! - from the user with text `/call <tool> <json args>`: a tool call of
//!   `<tool>` with those arguments (and a short reasoning text); the same
//!   for a sleeptime agent's transcript (it holds `<system-reminder>`) from
//!   its last line `user: /sleeptime-call <tool> <json args>`;
//! - from the user with any other text, or from a tool: a `send_message`
//!   call whose message is `echo: <the last user text>`;
//! - a summarizer's (no tools, the last message a `<transcript>`): the text
//!   `Summary of <n> lines: <the first line>`;
//! - a tool generator's (it offers `generate_tool`; the user text names the
//!   function, `... function named <name>.`, and ends `Instructions: <text>`):
//!   a `generate_tool` call whose source is a function `<name>(text: str)`
//!   returning its argument, documented with the instructions; instructions
//!   `/source <python>` give that source instead, and `/text` answers with
//!   text only (no call).
//!
//! `POST /v1/embeddings` answers a 3-dimension one-hot vector per input:
//! texts naming a cat (`cat`, `kitten`, `feline`) on axis 0, a car (`car`,
//! `automobile`, `vehicle`) on axis 1, anything else on axis 2 — synonyms
//! the local hash embedding cannot match, so tests see which one was used.
//!
//! A request with `stream: true` gets the same answer as chat completion
//! chunks over SSE: the text in fragments of [`FAKE_STREAM_FRAGMENT_CHARS`]
//! characters, each tool call opened with its id and name and its arguments
//! in fragments of the same size, the finish reason, the usage (when
//! `stream_options.include_usage` asks for it) and `[DONE]`.
//!
//! Started with API keys ([`FakeLlm::start_with_keys`], or
//! `kelpie-fake-llm --api-key KEY`), it refuses every request whose
//! `Authorization: Bearer` is none of them with OpenAI's 401
//! `invalid_api_key` error, so a test proves which key a request carried;
//! started without, it takes any key or none. The key of every chat
//! request is recorded ([`FakeLlm::bearer_keys`]).
//!
//! Tests can also queue answers ([`FakeLlm::push_reply`]), HTTP error
//! statuses ([`FakeLlm::push_status`]) or a stream that breaks off
//! ([`FakeLlm::push_broken_stream`]); queued items are served first, in
//! order. Every request body is recorded for assertions.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};

/// The one model the fake serves.
pub const FAKE_MODEL: &str = "fake-gpt";
/// Characters per streamed text or arguments fragment.
pub const FAKE_STREAM_FRAGMENT_CHARS: usize = 5;
/// Pause before a scripted broken stream drops its connection.
pub const FAKE_STREAM_BREAK_DELAY_MS: u64 = 50;

enum Scripted {
    Status(u16),
    /// An error status with this error message.
    Error(u16, String),
    Reply(Value),
    /// The default answer, streamed, cut off after this many SSE events.
    BrokenStream {
        events_count: usize,
    },
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Scripted>,
    requests: Vec<Value>,
    embedding_requests: Vec<Value>,
    /// The bearer key of each chat request, in order (`None`: no key).
    bearer_keys: Vec<Option<String>>,
    /// The keys accepted; empty accepts any.
    accepted_keys: Vec<String>,
    /// Chat requests are not kept (see [`FakeLlm::stop_recording`]).
    unrecorded: bool,
}

/// The key of an `Authorization: Bearer <key>` header.
fn bearer_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_string)
}

/// OpenAI's answer to a wrong key, unless `headers` carry an accepted one.
fn refused_key(inner: &Mutex<Inner>, headers: &HeaderMap) -> Option<Response> {
    let inner = inner.lock().unwrap_or_else(|poison| poison.into_inner());
    let key = bearer_key(headers);
    if inner.accepted_keys.is_empty() || key.as_ref().is_some_and(|key| inner.accepted_keys.contains(key)) {
        return None;
    }
    let error = json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                 "param": null, "code": "invalid_api_key"}});
    Some((StatusCode::UNAUTHORIZED, Json(error)).into_response())
}

/// Handle to a running fake server.
#[derive(Clone)]
pub struct FakeLlm {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeLlm {
    /// Binds `addr` (port 0 for any) and serves in a background task.
    pub async fn start(addr: SocketAddr) -> std::io::Result<FakeLlm> {
        FakeLlm::start_with_keys(addr, Vec::new()).await
    }

    /// [`FakeLlm::start`] accepting only requests with one of `keys`.
    pub async fn start_with_keys(addr: SocketAddr, keys: Vec<String>) -> std::io::Result<FakeLlm> {
        assert!(addr.ip().is_loopback(), "the fake LLM only listens on loopback");
        assert!(keys.iter().all(|key| !key.is_empty()), "an accepted key is not empty");
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let inner = Arc::new(Mutex::new(Inner { accepted_keys: keys, ..Inner::default() }));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .route("/v1/embeddings", post(embeddings))
            .with_state(Arc::clone(&inner));
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeLlm { addr, inner })
    }

    /// The base URL to configure as `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues one answer: `content` and tool calls `(name, arguments)`.
    pub fn push_reply(&self, content: Option<&str>, calls: &[(&str, Value)]) {
        self.lock().queue.push_back(Scripted::Reply(completion(content, calls)));
    }

    /// Queues one HTTP error answer.
    pub fn push_status(&self, status: u16) {
        self.lock().queue.push_back(Scripted::Status(status));
    }

    /// Queues one error answer: `status` with `{"error": {"message": message}}`.
    pub fn push_error(&self, status: u16, message: &str) {
        self.lock().queue.push_back(Scripted::Error(status, message.to_string()));
    }

    /// Queues one streamed answer (the default one) whose connection is
    /// closed, without `[DONE]`, after `events_count` SSE events.
    pub fn push_broken_stream(&self, events_count: usize) {
        self.lock().queue.push_back(Scripted::BrokenStream { events_count });
    }

    /// Keeps no more chat requests: [`FakeLlm::requests`] answers those
    /// received before. For benchmarks, where keeping a copy of every
    /// prompt would cost the fake time and memory that grow with the prompt.
    pub fn stop_recording(&self) {
        self.lock().unrecorded = true;
    }

    /// Every chat request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    /// The bearer key of every chat request so far (`None`: sent without).
    pub fn bearer_keys(&self) -> Vec<Option<String>> {
        self.lock().bearer_keys.clone()
    }

    /// Every `/embeddings` request body received so far.
    pub fn embedding_requests(&self) -> Vec<Value> {
        self.lock().embedding_requests.clone()
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn completion(content: Option<&str>, calls: &[(&str, Value)]) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, (name, args))| {
            json!({"id": format!("call_{index}_{name}"), "type": "function",
                   "function": {"name": name, "arguments": args.to_string()}})
        })
        .collect();
    let completion_tokens =
        content.map_or(0, words) + calls.iter().map(|(_, a)| words(&a.to_string())).sum::<u64>();
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "model": FAKE_MODEL,
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}}],
        "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens.max(1), "total_tokens": 0},
    })
}

/// Words of a chat message's text (its parts' texts joined).
fn message_words(message: &Value) -> u64 {
    match &message["content"] {
        Value::String(text) => words(text),
        _ => words(&message_text(message)),
    }
}

fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part["text"].as_str()).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    }
}

/// The default answer to a request (see the module docs).
fn default_answer(request: &Value) -> Value {
    let messages = request["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user").map(message_text).unwrap_or_default();
    let last_is_user = messages.last().is_some_and(|m| m["role"] == "user");
    let no_tools = request["tools"].as_array().is_none_or(Vec::is_empty);
    if let Some(transcript) = last_user.strip_prefix("<transcript>\n").filter(|_| no_tools && last_is_user) {
        let lines: Vec<&str> = transcript.lines().take_while(|line| *line != "</transcript>").collect();
        let first = lines.first().copied().unwrap_or_default();
        return completion(Some(&format!("Summary of {} lines: {first}", lines.len())), &[]);
    }
    let generator = request["tools"].as_array().is_some_and(|tools| {
        tools
            .iter()
            .any(|tool| tool["function"]["name"] == "generate_tool" || tool["name"] == "generate_tool")
    });
    if generator && last_is_user {
        return generated_tool(&last_user);
    }
    // A sleeptime agent's transcript calls what its user's last
    // `/sleeptime-call <tool> <json args>` line asks (the primary agent
    // only echoes that line).
    let sleeptime = match last_user.contains("<system-reminder>") {
        true => last_user.lines().rev().find_map(|line| line.strip_prefix("user: /sleeptime-call ")),
        false => None,
    };
    if let Some(directive) = sleeptime.or_else(|| last_user.strip_prefix("/call ")).filter(|_| last_is_user) {
        let (tool, args) = directive.split_once(' ').unwrap_or((directive, "{}"));
        let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        return completion(Some(&format!("Calling {tool}.")), &[(tool, args)]);
    }
    completion(None, &[("send_message", json!({"message": format!("echo: {last_user}")}))])
}

/// The answer to a tool generator's request (see the module docs).
fn generated_tool(prompt: &str) -> Value {
    let name = prompt
        .split_once("function named ")
        .and_then(|(_, rest)| rest.split(['.', ' ', '\n']).next())
        .filter(|name| !name.is_empty())
        .unwrap_or("generated_tool");
    let instructions = prompt.rsplit_once("Instructions: ").map_or("", |(_, text)| text).trim();
    if instructions == "/text" {
        return completion(Some("I would rather not write that tool."), &[]);
    }
    let source = match instructions.strip_prefix("/source ") {
        Some(source) => source.to_string(),
        None => {
            let summary = instructions.lines().next().unwrap_or("A generated tool.").replace('"', "'");
            format!(
                "def {name}(text: str) -> str:\n    \"\"\"{summary}\n\n    Args:\n        text (str): The text to work on.\n\n    Returns:\n        str: The text.\n    \"\"\"\n    return text\n"
            )
        }
    };
    let args = json!({
        "raw_source_code": source,
        "sample_args_json": json!({"text": "hello"}).to_string(),
        "pip_requirements_json": "{}",
    });
    completion(Some(&format!("Here is {name}.")), &[("generate_tool", args)])
}

async fn chat(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    if let Some(refused) = refused_key(&inner, &headers) {
        return refused;
    }
    let prompt_tokens: u64 = request["messages"].as_array().map_or(0, |m| m.iter().map(message_words).sum());
    let scripted = {
        let mut inner = inner.lock().unwrap_or_else(|poison| poison.into_inner());
        if !inner.unrecorded {
            inner.requests.push(request.clone());
        }
        inner.bearer_keys.push(bearer_key(&headers));
        inner.queue.pop_front()
    };
    let mut cut_after = None;
    let mut answer = match scripted {
        Some(Scripted::Status(status)) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (code, Json(json!({"error": {"message": format!("scripted failure {status}")}})))
                .into_response();
        }
        Some(Scripted::Error(status, message)) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (code, Json(json!({"error": {"message": message}}))).into_response();
        }
        Some(Scripted::Reply(answer)) => answer,
        Some(Scripted::BrokenStream { events_count }) => {
            cut_after = Some(events_count);
            default_answer(&request)
        }
        None => default_answer(&request),
    };
    let completion_tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    answer["usage"] = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens});
    if request["stream"] != json!(true) {
        return Json(answer).into_response();
    }
    let include_usage = request["stream_options"]["include_usage"] == json!(true);
    let mut events = stream_events(&answer, include_usage);
    let body = match cut_after {
        Some(count) => {
            events.truncate(count.min(events.len().saturating_sub(1)));
            // The pause lets the events sent so far reach the client before
            // the connection is dropped.
            let broken = futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(FAKE_STREAM_BREAK_DELAY_MS)).await;
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "scripted broken stream"))
            });
            Body::from_stream(futures::stream::iter(events.into_iter().map(Ok)).chain(broken))
        }
        None => Body::from_stream(futures::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>))),
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

fn fragments(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(FAKE_STREAM_FRAGMENT_CHARS).map(|piece| piece.iter().collect()).collect()
}

/// A whole completion as the SSE events of a streamed one (see the module docs).
fn stream_events(answer: &Value, include_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": FAKE_MODEL,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let message = &answer["choices"][0]["message"];
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    for piece in fragments(message["content"].as_str().unwrap_or_default()) {
        chunks.push(chunk(json!({"content": piece}), Value::Null));
    }
    let calls = message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (index, call) in calls.iter().enumerate() {
        let opening = json!({"index": index, "id": call["id"], "type": "function",
                             "function": {"name": call["function"]["name"], "arguments": ""}});
        chunks.push(chunk(json!({"tool_calls": [opening]}), Value::Null));
        for piece in fragments(call["function"]["arguments"].as_str().unwrap_or_default()) {
            let more = json!({"index": index, "function": {"arguments": piece}});
            chunks.push(chunk(json!({"tool_calls": [more]}), Value::Null));
        }
    }
    let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
    chunks.push(chunk(json!({}), json!(finish)));
    if include_usage {
        chunks.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": FAKE_MODEL,
                           "choices": [], "usage": answer["usage"]}));
    }
    let mut events: Vec<String> = chunks.iter().map(|chunk| format!("data: {chunk}\n\n")).collect();
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// Words of each axis of the fake embedding; the last axis is "other".
const FAKE_EMBEDDING_AXES: [&[&str]; 2] = [&["cat", "kitten", "feline"], &["car", "automobile", "vehicle"]];

fn fake_embedding(text: &str) -> Vec<f32> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).collect();
    let axis = FAKE_EMBEDDING_AXES
        .iter()
        .position(|axis| words.iter().any(|word| axis.contains(word)))
        .unwrap_or(FAKE_EMBEDDING_AXES.len());
    (0..=FAKE_EMBEDDING_AXES.len()).map(|i| if i == axis { 1.0 } else { 0.0 }).collect()
}

async fn embeddings(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    if let Some(refused) = refused_key(&inner, &headers) {
        return refused;
    }
    inner.lock().unwrap_or_else(|poison| poison.into_inner()).embedding_requests.push(request.clone());
    let inputs: Vec<String> = match &request["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(texts) => texts.iter().map(|t| t.as_str().unwrap_or_default().to_string()).collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(
            |(index, text)| json!({"object": "embedding", "index": index, "embedding": fake_embedding(text)}),
        )
        .collect();
    Json(
        json!({"object": "list", "data": data, "model": request["model"], "usage": {"prompt_tokens": 0, "total_tokens": 0}}),
    )
    .into_response()
}

/// The one model.
async fn models(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refused_key(&inner, &headers) {
        return refused;
    }
    let model = json!({"id": FAKE_MODEL, "object": "model", "owned_by": "kelpie-fake"});
    Json(json!({"object": "list", "data": [model]})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fake_that_stopped_recording_answers_and_keeps_only_earlier_requests() {
        let fake = FakeLlm::start(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let client = crate::openai::OpenAiClient::new(&fake.base_url(), None).unwrap();
        let request = |text: &str| crate::ChatRequest {
            model: FAKE_MODEL.into(),
            messages: vec![json!({"role": "user", "content": text}).into()],
            tools: Vec::new(),
            max_tokens: 10,
            temperature: 0.0,
        };
        let first = client.chat(&request("one two three")).await.unwrap();
        assert_eq!(first.usage.prompt_tokens, 3);
        fake.stop_recording();
        let second = client.chat(&request("four five")).await.unwrap();
        assert_eq!(second.usage.prompt_tokens, 2);
        assert_eq!(second.tool_calls[0].name, "send_message");
        assert_eq!(second.tool_calls[0].arguments, json!({"message": "echo: four five"}).to_string());
        let kept = fake.requests();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["messages"][0]["content"], "one two three");
    }

    #[test]
    fn a_tool_generator_gets_a_generate_tool_call_of_the_named_function() {
        let request = |instructions: &str| {
            json!({
                "tools": [{"type": "function", "function": {"name": "generate_tool"}}],
                "messages": [{"role": "user", "content": format!("Write a Python function named shout.\nInstructions: {instructions}")}],
            })
        };
        let answer = default_answer(&request("Shout the text."));
        let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "generate_tool");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        let source = args["raw_source_code"].as_str().unwrap();
        assert!(source.starts_with("def shout(text: str) -> str:\n    \"\"\"Shout the text.\n"), "{source}");
        assert_eq!(args["sample_args_json"], "{\"text\":\"hello\"}");
        let given = default_answer(&request("/source def shout(:"));
        let call = &given["choices"][0]["message"]["tool_calls"][0]["function"];
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["raw_source_code"], "def shout(:");
        let text = default_answer(&request("/text"));
        assert!(text["choices"][0]["message"]["tool_calls"].as_array().is_none_or(Vec::is_empty), "{text}");
    }

    #[test]
    fn echoes_the_last_user_text_as_send_message() {
        let request =
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}]});
        let answer = default_answer(&request);
        let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "send_message");
        assert_eq!(call["arguments"], json!({"message": "echo: hello"}).to_string());
    }

    #[test]
    fn a_streamed_answer_decodes_to_the_whole_answer_in_several_fragments() {
        use crate::stream::{ChatDelta, OpenAiStreamDecoder, StreamDecoder};
        let mut answer =
            completion(Some("Calling the tool now."), &[("noop", json!({"text": "a longer argument"}))]);
        answer["usage"] = json!({"prompt_tokens": 7, "completion_tokens": 3});
        let mut decoder = OpenAiStreamDecoder::default();
        let mut deltas = Vec::new();
        for event in stream_events(&answer, true) {
            deltas.extend(decoder.feed(event.as_bytes()).unwrap());
        }
        let texts = deltas.iter().filter(|d| matches!(d, ChatDelta::Text(_))).count();
        let fragments = deltas.iter().filter(|d| matches!(d, ChatDelta::ToolCallArguments { .. })).count();
        assert!(texts >= 3 && fragments >= 3, "{deltas:?}");
        let whole = decoder.finish().unwrap();
        assert_eq!(whole.content.as_deref(), Some("Calling the tool now."));
        assert_eq!(whole.tool_calls[0].arguments, json!({"text": "a longer argument"}).to_string());
        assert_eq!((whole.usage.prompt_tokens, whole.usage.completion_tokens), (7, 3));
    }

    #[test]
    fn call_directive_scripts_a_tool_call_then_echoes_after_the_result() {
        let user = json!({"role": "user", "content": "/call core_memory_append {\"label\":\"human\",\"content\":\"tea\"}"});
        let answer = default_answer(&json!({"messages": [user.clone()]}));
        let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "core_memory_append");
        assert_eq!(call["arguments"], json!({"label": "human", "content": "tea"}).to_string());
        let after = default_answer(&json!({"messages": [user, {"role": "tool", "content": "ok"}]}));
        let call = &after["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "send_message");
    }
}
