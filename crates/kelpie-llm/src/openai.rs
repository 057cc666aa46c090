//! OpenAI-compatible chat completions over HTTP, with the timeout and
//! retries of the parent module.

use std::time::Duration;

use serde_json::{json, Value};

use crate::chat::{ChatRequest, ChatResponse, TokenUsage, ToolCall};
use crate::http::{
    http_client, listed_model_ids, send_json, stream_completion, with_retries, LlmError,
    LLM_STREAM_IDLE_TIMEOUT_MS,
};
use crate::stream::{ChatDelta, OpenAiStreamDecoder};

/// Texts sent in one `/embeddings` request.
pub const EMBEDDING_BATCH_TEXTS_COUNT_MAX: usize = 64;

#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
    /// Longest wait between two chunks of a streamed answer.
    stream_idle_timeout_ms: u64,
}

impl OpenAiClient {
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, LlmError> {
        let http = http_client(base_url)?;
        let base_url = base_url.trim_end_matches('/').to_string();
        Ok(OpenAiClient { http, base_url, api_key, stream_idle_timeout_ms: LLM_STREAM_IDLE_TIMEOUT_MS })
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

    /// One chat completion, retried on 429/5xx and transport errors.
    pub async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        crate::metered::metered(crate::metered::PROVIDER_LABEL_OPENAI, async {
            let body = request_bytes(request, false);
            let answer = with_retries(|| self.post_bytes("/chat/completions", &body)).await?;
            parse_response(&self.base_url, &answer)
        })
        .await
    }

    /// One chat completion with `stream: true` (usage asked for with
    /// `stream_options.include_usage`); see [`crate::http::stream_completion`].
    pub async fn chat_stream(
        &self,
        request: &ChatRequest,
        on_delta: &mut (dyn FnMut(ChatDelta) + Send),
    ) -> Result<ChatResponse, LlmError> {
        crate::metered::metered(crate::metered::PROVIDER_LABEL_OPENAI, async {
            let body = request_bytes(request, true);
            let url = format!("{}/chat/completions", self.base_url);
            let build = || self.authorized(json_post(self.http.post(&url), &body));
            stream_completion(
                &self.base_url,
                self.stream_idle_timeout_ms,
                build,
                OpenAiStreamDecoder::default(),
                on_delta,
            )
            .await
        })
        .await
    }

    /// Model ids the provider lists at `GET /models`.
    pub async fn list_models(&self, timeout: Duration) -> Result<Vec<String>, LlmError> {
        let call = self.authorized(self.http.get(format!("{}/models", self.base_url)).timeout(timeout));
        Ok(listed_model_ids(&send_json(&self.base_url, call).await?))
    }

    /// Embeddings of `texts` from `POST {base}/embeddings`, in order, sent
    /// in batches of [`EMBEDDING_BATCH_TEXTS_COUNT_MAX`], each retried.
    pub async fn embed(&self, model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>, LlmError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(EMBEDDING_BATCH_TEXTS_COUNT_MAX) {
            let body = json!({"model": model, "input": batch});
            let answer = with_retries(|| self.post("/embeddings", &body)).await?;
            vectors.extend(parse_embeddings(&self.base_url, &answer, batch.len())?);
        }
        assert_eq!(vectors.len(), texts.len(), "one embedding per text");
        Ok(vectors)
    }

    /// `POST {base}{path}` with the key, answering JSON.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, LlmError> {
        let call = self.authorized(self.http.post(format!("{}{path}", self.base_url)).json(body));
        send_json(&self.base_url, call).await
    }

    /// `POST {base}{path}` with the key and a body already printed as JSON.
    async fn post_bytes(&self, path: &str, body: &[u8]) -> Result<Value, LlmError> {
        let call = self.authorized(json_post(self.http.post(format!("{}{path}", self.base_url)), body));
        send_json(&self.base_url, call).await
    }

    fn authorized(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => call.bearer_auth(key),
            None => call,
        }
    }
}

fn json_post(call: reqwest::RequestBuilder, body: &[u8]) -> reqwest::RequestBuilder {
    call.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec())
}

/// The chat completions body of `request` (with `stream` and usage asked for
/// when `stream`), as a value: for showing what a step would send.
pub(crate) fn request_body(request: &ChatRequest) -> Value {
    serde_json::from_slice(&request_bytes(request, false)).expect("a printed request body parses")
}

/// The chat completions body of `request`, printed once: the messages are
/// copied in as the JSON they were printed as when the prompt was built.
pub(crate) fn request_bytes(request: &ChatRequest, stream: bool) -> Vec<u8> {
    let messages_bytes: usize = request.messages.iter().map(|message| message.json().len() + 1).sum();
    let mut out = Vec::with_capacity(messages_bytes + REQUEST_BODY_SLACK_BYTES);
    out.extend_from_slice(b"{\"model\":");
    print(&mut out, &request.model);
    out.extend_from_slice(b",\"messages\":[");
    for (index, message) in request.messages.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message.json().as_bytes());
    }
    out.extend_from_slice(b"],\"max_tokens\":");
    print(&mut out, &request.max_tokens);
    out.extend_from_slice(b",\"temperature\":");
    print(&mut out, &request.temperature);
    if !request.tools.is_empty() {
        out.extend_from_slice(b",\"tools\":[");
        for (index, schema) in request.tools.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"type\":\"function\",\"function\":");
            print(&mut out, schema);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"tool_choice\":\"auto\"");
    }
    if stream {
        out.extend_from_slice(b",\"stream\":true,\"stream_options\":{\"include_usage\":true}");
    }
    out.push(b'}');
    out
}

/// Room in a request body beyond its messages (model, settings, the tools'
/// schemas): the first allocation's guess, not a limit.
const REQUEST_BODY_SLACK_BYTES: usize = 16 * 1024;

/// `value` printed as JSON onto `out`.
fn print(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    serde_json::to_writer(out, value).expect("a request field serializes");
}

/// The `data[].embedding` vectors of an `/embeddings` answer, by `index`.
fn parse_embeddings(endpoint: &str, answer: &Value, expected: usize) -> Result<Vec<Vec<f32>>, LlmError> {
    let invalid = |reason: String| LlmError::InvalidResponse { endpoint: endpoint.to_string(), reason };
    let data = answer["data"].as_array().ok_or_else(|| invalid("no data".into()))?;
    if data.len() != expected {
        return Err(invalid(format!("{} embeddings for {expected} texts", data.len())));
    }
    let mut vectors = vec![Vec::new(); expected];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |index| index as usize);
        let values =
            item["embedding"].as_array().ok_or_else(|| invalid("an embedding is not a list".into()))?;
        let vector: Option<Vec<f32>> = values.iter().map(|v| v.as_f64().map(|v| v as f32)).collect();
        let slot =
            vectors.get_mut(index).ok_or_else(|| invalid(format!("embedding index {index} out of range")))?;
        *slot =
            vector.filter(|v| !v.is_empty()).ok_or_else(|| invalid("an embedding is not numbers".into()))?;
    }
    Ok(vectors)
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
        tool_calls.push(ToolCall { id, name: name.to_string(), arguments });
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
    use crate::stream::StreamError;

    #[test]
    fn embeddings_are_ordered_by_index_and_counted() {
        let answer =
            json!({"data": [{"index": 1, "embedding": [0.5, 1.0]}, {"index": 0, "embedding": [2.0, 0.0]}]});
        assert_eq!(parse_embeddings("e", &answer, 2).unwrap(), vec![vec![2.0, 0.0], vec![0.5, 1.0]]);
        let err = parse_embeddings("e", &answer, 3).unwrap_err();
        assert_eq!(
            err,
            LlmError::InvalidResponse { endpoint: "e".into(), reason: "2 embeddings for 3 texts".into() }
        );
    }

    #[test]
    fn parses_tool_calls_content_and_usage() {
        let answer = json!({"choices": [{"message": {"content": "thinking", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "send_message", "arguments": "{\"message\":\"hi\"}"}}
        ]}}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let parsed = parse_response("http://x", &answer).unwrap();
        assert_eq!(parsed.content.as_deref(), Some("thinking"));
        assert_eq!(
            parsed.tool_calls,
            vec![ToolCall {
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
    fn the_request_body_is_the_messages_as_printed_with_settings_and_tools() {
        let message = json!({"role": "user", "content": "caf\u{e9} \"quoted\"\n"});
        let tool = json!({"name": "send_message", "parameters": {"type": "object"}});
        let mut request = ChatRequest {
            model: "gpt-\"x\"".into(),
            messages: vec![json!({"role": "system", "content": "s"}).into(), message.clone().into()],
            tools: vec![tool.clone()],
            max_tokens: 512,
            temperature: 0.25,
        };
        let printed: Value = serde_json::from_slice(&request_bytes(&request, false)).unwrap();
        let expected = json!({
            "model": "gpt-\"x\"",
            "messages": [{"role": "system", "content": "s"}, message],
            "max_tokens": 512,
            "temperature": 0.25,
            "tools": [{"type": "function", "function": tool}],
            "tool_choice": "auto",
        });
        assert_eq!(printed, expected);
        assert_eq!(request_body(&request), expected);
        let streamed: Value = serde_json::from_slice(&request_bytes(&request, true)).unwrap();
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["stream_options"], json!({"include_usage": true}));
        assert_eq!(streamed["messages"], expected["messages"]);
        request.tools.clear();
        request.messages.clear();
        let bare: Value = serde_json::from_slice(&request_bytes(&request, false)).unwrap();
        assert_eq!(
            bare,
            json!({"model": "gpt-\"x\"", "messages": [], "max_tokens": 512, "temperature": 0.25})
        );
    }

    #[tokio::test]
    async fn a_stream_that_stalls_fails_after_the_idle_timeout_without_a_retry() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const IDLE_TIMEOUT_MS: u64 = 200;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut request).await.unwrap();
            let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hel\"}}]}\n\n";
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let body = format!("{head}{:x}\r\n{chunk}\r\n", chunk.len());
            socket.write_all(body.as_bytes()).await.unwrap();
            // Stalls with the connection open; a second connection would be a retry.
            let second =
                tokio::time::timeout(Duration::from_millis(IDLE_TIMEOUT_MS * 3), listener.accept()).await;
            (socket, second.is_ok())
        });
        let client = OpenAiClient::new(&base, None).unwrap().with_stream_idle_timeout_ms(IDLE_TIMEOUT_MS);
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![serde_json::json!({"role": "user", "content": "hi"}).into()],
            tools: Vec::new(),
            max_tokens: 10,
            temperature: 0.0,
        };
        let mut deltas = Vec::new();
        let err = client.chat_stream(&request, &mut |delta| deltas.push(delta)).await.unwrap_err();
        assert_eq!(
            err,
            LlmError::Stream { endpoint: base, error: StreamError::Idle { idle_ms: IDLE_TIMEOUT_MS } }
        );
        assert_eq!(deltas, vec![ChatDelta::Text("hel".into())]);
        let (_socket, retried) = server.await.unwrap();
        assert!(!retried, "no retry once the answer started");
    }

    /// First byte of a TLS record carrying a handshake message (ClientHello).
    const TLS_HANDSHAKE_RECORD_TYPE: u8 = 0x16;

    #[tokio::test]
    async fn https_base_urls_are_spoken_to_with_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://{}/v1", listener.local_addr().unwrap());
        let accept = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 1];
            socket.read_exact(&mut first).await.unwrap();
            first[0]
        });
        let client = OpenAiClient::new(&base, Some("sk-test".into())).unwrap();
        let err = client.list_models(Duration::from_millis(2_000)).await.unwrap_err();
        assert_eq!(accept.await.unwrap(), TLS_HANDSHAKE_RECORD_TYPE, "the client opened with a ClientHello");
        assert!(matches!(err, LlmError::Transport { ref endpoint, .. } if *endpoint == base), "{err}");
    }
}
