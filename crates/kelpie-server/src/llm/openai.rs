//! OpenAI-compatible chat completions over HTTP, with a timeout per request
//! and retries with exponential backoff on 429 and 5xx.

use std::time::Duration;

use serde_json::{json, Value};

use super::{ChatRequest, ChatResponse, LlmError, TokenUsage};
use crate::agent::model::ToolCallRecord;

/// One request to the provider may take this long.
pub const LLM_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Attempts per chat completion, the first included.
pub const LLM_ATTEMPTS_COUNT_MAX: u32 = 4;
/// Wait before the first retry; doubles each time.
pub const LLM_RETRY_BACKOFF_MS_BASE: u64 = 250;
/// Longest error body kept for the client's error message.
const ERROR_BODY_BYTES_MAX: usize = 2_000;

#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl OpenAiClient {
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(LLM_REQUEST_TIMEOUT_MS))
            .build()
            .map_err(|e| LlmError::Transport { endpoint: base_url.to_string(), reason: e.to_string() })?;
        Ok(OpenAiClient { http, base_url: base_url.trim_end_matches('/').to_string(), api_key })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// One chat completion, retried on 429/5xx and transport errors.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let body = request_body(request);
        let mut backoff_ms = LLM_RETRY_BACKOFF_MS_BASE;
        let mut attempt = 1;
        loop {
            match self.post("/chat/completions", &body).await {
                Ok(answer) => return parse_response(&self.base_url, &answer),
                Err(err) if attempt < LLM_ATTEMPTS_COUNT_MAX && is_retriable(&err) => {
                    tracing::warn!(attempt, backoff_ms, error = %err, "LLM request failed; retrying");
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms *= 2;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Model ids the provider lists at `GET /models`.
    pub async fn list_models(&self, timeout: Duration) -> Result<Vec<String>, LlmError> {
        let mut call = self.http.get(format!("{}/models", self.base_url)).timeout(timeout);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        let answer = self.finish(call).await?;
        let ids = answer["data"].as_array().map_or_else(Vec::new, |models| {
            models.iter().filter_map(|model| model["id"].as_str().map(str::to_string)).collect()
        });
        Ok(ids)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, LlmError> {
        let mut call = self.http.post(format!("{}{path}", self.base_url)).json(body);
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        self.finish(call).await
    }

    async fn finish(&self, call: reqwest::RequestBuilder) -> Result<Value, LlmError> {
        let endpoint = self.base_url.clone();
        let response = call
            .send()
            .await
            .map_err(|e| LlmError::Transport { endpoint: endpoint.clone(), reason: e.to_string() })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| LlmError::Transport { endpoint: endpoint.clone(), reason: e.to_string() })?;
        if !(200..300).contains(&status) {
            let body: String = text.chars().take(ERROR_BODY_BYTES_MAX).collect();
            return Err(LlmError::Status { endpoint, status, body });
        }
        serde_json::from_str(&text).map_err(|e| LlmError::InvalidResponse { endpoint, reason: e.to_string() })
    }
}

fn is_retriable(err: &LlmError) -> bool {
    match err {
        LlmError::Status { status, .. } => *status == 429 || *status >= 500,
        LlmError::Transport { .. } => true,
        LlmError::InvalidResponse { .. } => false,
    }
}

fn request_body(request: &ChatRequest) -> Value {
    let tools: Vec<Value> =
        request.tools.iter().map(|schema| json!({"type": "function", "function": schema})).collect();
    let mut body = json!({
        "model": request.model,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    });
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
        body["tool_choice"] = json!("auto");
    }
    body
}

fn parse_response(endpoint: &str, answer: &Value) -> Result<ChatResponse, LlmError> {
    let invalid = |reason: &str| LlmError::InvalidResponse {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let message =
        answer["choices"].get(0).map(|choice| &choice["message"]).ok_or_else(|| invalid("no choices"))?;
    let mut tool_calls = Vec::new();
    for call in message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = call["function"]["name"].as_str().ok_or_else(|| invalid("tool call without a name"))?;
        let arguments = match &call["function"]["arguments"] {
            Value::String(text) => text.clone(),
            Value::Null => "{}".to_string(),
            other => other.to_string(),
        };
        let id = call["id"].as_str().unwrap_or(name).to_string();
        tool_calls.push(ToolCallRecord { id, name: name.to_string(), arguments });
    }
    let usage = TokenUsage {
        prompt_tokens: answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: answer["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    };
    Ok(ChatResponse { content: message["content"].as_str().map(str::to_string), tool_calls, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tool_calls_content_and_usage() {
        let answer = json!({"choices": [{"message": {"content": "thinking", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "send_message", "arguments": "{\"message\":\"hi\"}"}}
        ]}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let parsed = parse_response("http://x", &answer).unwrap();
        assert_eq!(parsed.content.as_deref(), Some("thinking"));
        assert_eq!(
            parsed.tool_calls,
            vec![ToolCallRecord {
                id: "call_1".into(),
                name: "send_message".into(),
                arguments: "{\"message\":\"hi\"}".into()
            }]
        );
        assert_eq!(parsed.usage, TokenUsage { prompt_tokens: 10, completion_tokens: 5 });
        let err = parse_response("http://x", &json!({"choices": []})).unwrap_err();
        assert_eq!(
            err,
            LlmError::InvalidResponse { endpoint: "http://x".into(), reason: "no choices".into() }
        );
    }

    #[test]
    fn only_rate_limits_server_errors_and_transport_failures_are_retried() {
        let status = |status| LlmError::Status { endpoint: "e".into(), status, body: String::new() };
        assert!(is_retriable(&status(429)));
        assert!(is_retriable(&status(503)));
        assert!(!is_retriable(&status(400)));
        assert!(!is_retriable(&status(401)));
        assert!(is_retriable(&LlmError::Transport { endpoint: "e".into(), reason: "refused".into() }));
    }
}
