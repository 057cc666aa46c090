//! Anthropic Messages (`POST {base}/v1/messages`) over HTTP, with the
//! timeout and retries of the parent module.
//!
//! Requests come in OpenAI's message shape (what the agent loop builds) and
//! are translated here: system messages become the top-level `system`, an
//! assistant's tool calls become `tool_use` blocks, tool results become
//! `tool_result` blocks of a user message, and consecutive messages of one
//! role are merged (Anthropic wants user and assistant to alternate).

use std::time::Duration;

use serde_json::{json, Value};

use crate::chat::{ChatMessage, ChatRequest, ChatResponse, TokenUsage, ToolCall};
use crate::http::{
    http_client, listed_model_ids, send_json, stream_completion, with_retries, LlmError,
    LLM_STREAM_IDLE_TIMEOUT_MS,
};
use crate::stream::{AnthropicStreamDecoder, ChatDelta};

/// The API version every request names in `anthropic-version`.
pub const ANTHROPIC_API_VERSION: &str = "2023-06-01";

#[derive(Clone)]
pub struct AnthropicClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    /// Longest wait between two chunks of a streamed answer.
    stream_idle_timeout_ms: u64,
}

impl AnthropicClient {
    pub fn new(base_url: &str, api_key: String) -> Result<Self, LlmError> {
        assert!(!api_key.is_empty(), "an Anthropic client needs a key");
        let http = http_client(base_url)?;
        let base_url = base_url.trim_end_matches('/').to_string();
        Ok(AnthropicClient { http, base_url, api_key, stream_idle_timeout_ms: LLM_STREAM_IDLE_TIMEOUT_MS })
    }

    /// The same client with another idle timeout for streamed answers.
    pub fn with_stream_idle_timeout_ms(mut self, timeout_ms: u64) -> Self {
        assert!(timeout_ms > 0, "a stream needs an idle timeout");
        self.stream_idle_timeout_ms = timeout_ms;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// One Messages call, retried on 429/5xx and transport errors.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        crate::metered::metered(crate::metered::PROVIDER_LABEL_ANTHROPIC, async {
            let body = request_body(request);
            let answer = with_retries(|| {
                let call =
                    self.authorized(self.http.post(format!("{}/v1/messages", self.base_url)).json(&body));
                send_json(&self.base_url, call)
            })
            .await?;
            parse_response(&self.base_url, &answer)
        })
        .await
    }

    /// One Messages call with `stream: true`; see [`crate::http::stream_completion`].
    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        on_delta: &mut (dyn FnMut(ChatDelta) + Send),
    ) -> Result<ChatResponse, LlmError> {
        crate::metered::metered(crate::metered::PROVIDER_LABEL_ANTHROPIC, async {
            let mut body = request_body(request);
            body["stream"] = json!(true);
            let url = format!("{}/v1/messages", self.base_url);
            let build = || self.authorized(self.http.post(&url).json(&body));
            stream_completion(
                &self.base_url,
                self.stream_idle_timeout_ms,
                build,
                AnthropicStreamDecoder::default(),
                on_delta,
            )
            .await
        })
        .await
    }

    /// Model ids listed at `GET {base}/v1/models`.
    pub async fn list_models(&self, timeout: Duration) -> Result<Vec<String>, LlmError> {
        let call = self.authorized(self.http.get(format!("{}/v1/models", self.base_url)).timeout(timeout));
        Ok(listed_model_ids(&send_json(&self.base_url, call).await?))
    }

    fn authorized(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        call.header("x-api-key", &self.api_key).header("anthropic-version", ANTHROPIC_API_VERSION)
    }
}

fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|part| part["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// The content blocks of one OpenAI-shaped assistant message.
fn assistant_blocks(message: &Value) -> Vec<Value> {
    let mut blocks = Vec::new();
    let text = text_of(message);
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        blocks.push(
            json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}),
        );
    }
    blocks
}

/// `(system, messages)` in Anthropic's shape.
fn translate_messages(messages: &[Value]) -> (String, Vec<Value>) {
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for message in messages {
        let (role, blocks) = match message["role"].as_str() {
            Some("system") => {
                system.push(text_of(message));
                continue;
            }
            Some("assistant") => ("assistant", assistant_blocks(message)),
            Some("tool") => (
                "user",
                vec![json!({"type": "tool_result", "tool_use_id": message["tool_call_id"],
                            "content": text_of(message)})],
            ),
            _ => ("user", vec![json!({"type": "text", "text": text_of(message)})]),
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut().filter(|last| last["role"] == role) {
            Some(last) => {
                if let Some(content) = last["content"].as_array_mut() {
                    content.extend(blocks);
                }
            }
            None => out.push(json!({"role": role, "content": blocks})),
        }
    }
    (system.join("\n\n"), out)
}

pub(crate) fn request_body(request: &ChatRequest) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(ChatMessage::to_value).collect();
    let (system, messages) = translate_messages(&messages);
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|schema| {
            json!({"name": schema["name"], "description": schema["description"],
                   "input_schema": schema["parameters"]})
        })
        .collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    });
    if !system.is_empty() {
        body["system"] = Value::String(system);
    }
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    body
}

fn parse_response(endpoint: &str, answer: &Value) -> Result<ChatResponse, LlmError> {
    let invalid = |reason: &str| LlmError::InvalidResponse {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let blocks = answer["content"].as_array().ok_or_else(|| invalid("no content blocks"))?;
    let mut text = Vec::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => text.extend(block["text"].as_str()),
            Some("tool_use") => {
                let name = block["name"].as_str().ok_or_else(|| invalid("tool_use block without a name"))?;
                let id = block["id"].as_str().unwrap_or(name).to_string();
                let arguments =
                    if block["input"].is_null() { "{}".to_string() } else { block["input"].to_string() };
                tool_calls.push(ToolCall { id, name: name.to_string(), arguments });
            }
            _ => {}
        }
    }
    let usage = TokenUsage {
        prompt_tokens: answer["usage"]["input_tokens"].as_u64().unwrap_or(0),
        completion_tokens: answer["usage"]["output_tokens"].as_u64().unwrap_or(0),
    };
    let content = if text.is_empty() { None } else { Some(text.join("\n")) };
    Ok(ChatResponse { content, tool_calls, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_system_tool_calls_and_results_into_alternating_messages() {
        let messages = vec![
            json!({"role": "system", "content": "be kind"}),
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "thinking", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "core_memory_append", "arguments": "{\"label\":\"human\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "send_message", "arguments": "{\"message\":\"yo\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}),
            json!({"role": "tool", "tool_call_id": "toolu_2", "content": "sent"}),
            json!({"role": "user", "content": "again"}),
        ];
        let (system, out) = translate_messages(&messages);
        assert_eq!(system, "be kind");
        assert_eq!(
            out,
            vec![
                json!({"role": "user", "content": [{"type": "text", "text": "hi"}]}),
                json!({"role": "assistant", "content": [
                    {"type": "text", "text": "thinking"},
                    {"type": "tool_use", "id": "toolu_1", "name": "core_memory_append", "input": {"label": "human"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "send_message", "input": {"message": "yo"}}]}),
                json!({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "sent"},
                    {"type": "text", "text": "again"}]}),
            ]
        );
    }

    #[test]
    fn tool_schemas_become_input_schemas() {
        let request = ChatRequest {
            model: "claude-x".into(),
            messages: vec![json!({"role": "user", "content": "hi"}).into()],
            tools: vec![
                json!({"name": "send_message", "description": "reply", "parameters": {"type": "object"}}),
            ],
            max_tokens: 100,
            temperature: 0.5,
        };
        let body = request_body(&request);
        assert_eq!(
            body["tools"],
            json!([{"name": "send_message", "description": "reply", "input_schema": {"type": "object"}}])
        );
        assert_eq!((body["model"].as_str(), body["max_tokens"].as_u64()), (Some("claude-x"), Some(100)));
        assert!(body.get("system").is_none());
    }

    #[test]
    fn parses_text_tool_use_and_usage() {
        let answer = json!({"content": [
            {"type": "text", "text": "let me answer"},
            {"type": "tool_use", "id": "toolu_9", "name": "send_message", "input": {"message": "hi"}}],
            "usage": {"input_tokens": 12, "output_tokens": 7}});
        let parsed = parse_response("http://a", &answer).unwrap();
        assert_eq!(parsed.content.as_deref(), Some("let me answer"));
        assert_eq!(
            parsed.tool_calls,
            vec![ToolCall {
                id: "toolu_9".into(),
                name: "send_message".into(),
                arguments: "{\"message\":\"hi\"}".into()
            }]
        );
        assert_eq!(parsed.usage, TokenUsage { prompt_tokens: 12, completion_tokens: 7 });
        let err = parse_response("http://a", &json!({"error": {}})).unwrap_err();
        assert_eq!(
            err,
            LlmError::InvalidResponse { endpoint: "http://a".into(), reason: "no content blocks".into() }
        );
    }
}
