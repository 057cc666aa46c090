//! OpenAI-compatible chat completions over HTTP, with the timeout and
//! retries of the parent module.

use std::time::Duration;

use serde_json::{json, Value};

use super::{http_client, send_json, with_retries, ChatRequest, ChatResponse, LlmError, TokenUsage};
use crate::agent::model::ToolCallRecord;

#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

impl OpenAiClient {
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, LlmError> {
        let http = http_client(base_url)?;
        Ok(OpenAiClient { http, base_url: base_url.trim_end_matches('/').to_string(), api_key })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// One chat completion, retried on 429/5xx and transport errors.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let body = request_body(request);
        let answer = with_retries(|| self.post("/chat/completions", &body)).await?;
        parse_response(&self.base_url, &answer)
    }

    /// Model ids the provider lists at `GET /models`.
    pub async fn list_models(&self, timeout: Duration) -> Result<Vec<String>, LlmError> {
        let call = self.authorized(self.http.get(format!("{}/models", self.base_url)).timeout(timeout));
        let answer = send_json(&self.base_url, call).await?;
        let ids = answer["data"].as_array().map_or_else(Vec::new, |models| {
            models.iter().filter_map(|model| model["id"].as_str().map(str::to_string)).collect()
        });
        Ok(ids)
    }

    /// `POST {base}{path}` with the key, answering JSON.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, LlmError> {
        let call = self.authorized(self.http.post(format!("{}{path}", self.base_url)).json(body));
        send_json(&self.base_url, call).await
    }

    fn authorized(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => call.bearer_auth(key),
            None => call,
        }
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
}
