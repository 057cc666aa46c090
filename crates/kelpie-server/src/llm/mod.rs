//! LLM providers. [`openai::OpenAiClient`] speaks OpenAI-compatible chat
//! completions (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter, and the fake
//! server in [`fake`] used by tests); [`anthropic::AnthropicClient`] speaks
//! Anthropic Messages. Both share the timeout and retry rules of this module
//! and take requests in OpenAI's message shape; [`LlmClients`] routes a
//! request to the provider an agent was created with.

pub mod anthropic;
pub mod fake;
pub mod openai;
pub mod stream;

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use thiserror::Error;

use stream::{ChatDelta, StreamDecoder, StreamError};

use crate::agent::model::ToolCallRecord;

/// One chat completion request, messages and tools in OpenAI's JSON shape.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub tools: Vec<Value>,
    pub max_tokens: u64,
    pub temperature: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCallRecord>,
    pub usage: TokenUsage,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LlmError {
    #[error("LLM provider at {endpoint} answered {status}: {body}")]
    Status { endpoint: String, status: u16, body: String },
    #[error("LLM provider at {endpoint} unreachable: {reason}")]
    Transport { endpoint: String, reason: String },
    #[error("LLM provider at {endpoint} sent an answer kelpie cannot read: {reason}")]
    InvalidResponse { endpoint: String, reason: String },
    #[error("LLM provider at {endpoint} failed mid-stream: {error}")]
    Stream { endpoint: String, error: StreamError },
    #[error("LLM provider {provider:?} is not configured on this server (set ANTHROPIC_API_KEY)")]
    NotConfigured { provider: String },
}

/// One request to a provider may take this long.
pub const LLM_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Attempts per request, the first included.
pub const LLM_ATTEMPTS_COUNT_MAX: u32 = 4;
/// Longest wait for the next bytes of a streamed answer once it started.
pub const LLM_STREAM_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Wait before the first retry; doubles each time.
pub const LLM_RETRY_BACKOFF_MS_BASE: u64 = 250;
/// Longest error body kept for the client's error message, in characters.
pub(crate) const ERROR_BODY_CHARS_MAX: usize = 2_000;

/// The provider name of agents served by [`anthropic::AnthropicClient`].
pub const PROVIDER_ANTHROPIC: &str = "anthropic";

/// Only rate limits, server errors and transport failures are worth a retry.
pub(crate) fn is_retriable(err: &LlmError) -> bool {
    match err {
        LlmError::Status { status, .. } => *status == 429 || *status >= 500,
        LlmError::Transport { .. } => true,
        // Deltas may already have reached the client; a retry would repeat them.
        LlmError::Stream { .. } => false,
        LlmError::InvalidResponse { .. } | LlmError::NotConfigured { .. } => false,
    }
}

/// Runs `attempt` until it succeeds, fails for good, or
/// [`LLM_ATTEMPTS_COUNT_MAX`] attempts were made, with exponential backoff.
pub(crate) async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, LlmError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LlmError>>,
{
    let mut backoff_ms = LLM_RETRY_BACKOFF_MS_BASE;
    let mut attempt_count = 1;
    loop {
        match attempt().await {
            Ok(answer) => return Ok(answer),
            Err(err) if attempt_count < LLM_ATTEMPTS_COUNT_MAX && is_retriable(&err) => {
                tracing::warn!(attempt_count, backoff_ms, error = %err, "LLM request failed; retrying");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms *= 2;
                attempt_count += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The model ids of a provider's model listing (`{"data": [{"id": ...}]}`,
/// the shape OpenAI-compatible and Anthropic endpoints share).
pub(crate) fn listed_model_ids(answer: &Value) -> Vec<String> {
    answer["data"].as_array().map_or_else(Vec::new, |models| {
        models.iter().filter_map(|model| model["id"].as_str().map(str::to_string)).collect()
    })
}

/// Sends a built request and reads a JSON answer; a non-2xx status is
/// [`LlmError::Status`] with the (clipped) body.
pub(crate) async fn send_json(endpoint: &str, call: reqwest::RequestBuilder) -> Result<Value, LlmError> {
    let transport =
        |e: reqwest::Error| LlmError::Transport { endpoint: endpoint.to_string(), reason: e.to_string() };
    let response = call.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(transport)?;
    if !(200..300).contains(&status) {
        let body: String = text.chars().take(ERROR_BODY_CHARS_MAX).collect();
        return Err(LlmError::Status { endpoint: endpoint.to_string(), status, body });
    }
    serde_json::from_str(&text)
        .map_err(|e| LlmError::InvalidResponse { endpoint: endpoint.to_string(), reason: e.to_string() })
}

/// Sends a built request and checks its status before reading the body;
/// a non-2xx status is [`LlmError::Status`] with the (clipped) body.
async fn open_stream(endpoint: &str, call: reqwest::RequestBuilder) -> Result<reqwest::Response, LlmError> {
    let transport =
        |e: reqwest::Error| LlmError::Transport { endpoint: endpoint.to_string(), reason: e.to_string() };
    let response = call.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let text = response.text().await.map_err(transport)?;
        let body: String = text.chars().take(ERROR_BODY_CHARS_MAX).collect();
        return Err(LlmError::Status { endpoint: endpoint.to_string(), status, body });
    }
    Ok(response)
}

/// A streamed completion: the request is retried like any other until its
/// status arrives; then the body is fed to `decoder` as it comes, each delta
/// handed to `on_delta`, with at most `idle_timeout_ms` between chunks
/// ([`LLM_STREAM_IDLE_TIMEOUT_MS`] unless a test says otherwise). Nothing
/// is retried once the body started.
pub(crate) async fn stream_completion<D: StreamDecoder>(
    endpoint: &str,
    idle_timeout_ms: u64,
    build: impl Fn() -> reqwest::RequestBuilder,
    mut decoder: D,
    on_delta: &mut (dyn FnMut(ChatDelta) + Send),
) -> Result<ChatResponse, LlmError> {
    let failed = |error: StreamError| LlmError::Stream { endpoint: endpoint.to_string(), error };
    let response = with_retries(|| open_stream(endpoint, build())).await?;
    let mut body = response.bytes_stream();
    assert!(idle_timeout_ms > 0, "a stream needs an idle timeout");
    let idle = Duration::from_millis(idle_timeout_ms);
    while !decoder.is_done() {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => return Err(failed(StreamError::Idle { idle_ms: idle_timeout_ms })),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(failed(StreamError::Connection { reason: e.to_string() })),
            Ok(Some(Ok(bytes))) => bytes,
        };
        for delta in decoder.feed(&chunk).map_err(failed)? {
            on_delta(delta);
        }
    }
    decoder.finish().map_err(failed)
}

/// An http client with the request timeout every provider uses.
pub(crate) fn http_client(endpoint: &str) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(LLM_REQUEST_TIMEOUT_MS))
        .build()
        .map_err(|e| LlmError::Transport { endpoint: endpoint.to_string(), reason: e.to_string() })
}

/// The configured providers. OpenAI-compatible is always there (its base URL
/// has a default); Anthropic only when its key is configured.
#[derive(Clone)]
pub struct LlmClients {
    pub openai: openai::OpenAiClient,
    pub anthropic: Option<anthropic::AnthropicClient>,
}

impl LlmClients {
    /// One chat turn with the provider named in the agent's settings.
    pub async fn chat(&self, provider: &str, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        if provider != PROVIDER_ANTHROPIC {
            return self.openai.chat(request).await;
        }
        match &self.anthropic {
            Some(client) => client.chat(request).await,
            None => Err(LlmError::NotConfigured { provider: provider.to_string() }),
        }
    }

    /// [`Self::chat`] with the answer streamed: each delta goes to
    /// `on_delta` as it arrives; the result is the whole answer.
    pub async fn chat_streaming(
        &self,
        provider: &str,
        request: &ChatRequest,
        on_delta: &mut (dyn FnMut(ChatDelta) + Send),
    ) -> Result<ChatResponse, LlmError> {
        if provider != PROVIDER_ANTHROPIC {
            return self.openai.chat_stream(request, on_delta).await;
        }
        match &self.anthropic {
            Some(client) => client.chat_stream(request, on_delta).await,
            None => Err(LlmError::NotConfigured { provider: provider.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rate_limits_server_errors_and_transport_failures_are_retried() {
        let status = |status| LlmError::Status { endpoint: "e".into(), status, body: String::new() };
        assert!(is_retriable(&status(429)));
        assert!(is_retriable(&status(503)));
        assert!(!is_retriable(&status(400)));
        assert!(!is_retriable(&status(401)));
        assert!(is_retriable(&LlmError::Transport { endpoint: "e".into(), reason: "refused".into() }));
        assert!(!is_retriable(&LlmError::NotConfigured { provider: "anthropic".into() }));
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
        let client =
            openai::OpenAiClient::new(&base, None).unwrap().with_stream_idle_timeout_ms(IDLE_TIMEOUT_MS);
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![serde_json::json!({"role": "user", "content": "hi"})],
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
        let client = openai::OpenAiClient::new(&base, Some("sk-test".into())).unwrap();
        let err = client.list_models(Duration::from_millis(2_000)).await.unwrap_err();
        assert_eq!(accept.await.unwrap(), TLS_HANDSHAKE_RECORD_TYPE, "the client opened with a ClientHello");
        assert!(matches!(err, LlmError::Transport { ref endpoint, .. } if *endpoint == base), "{err}");
    }
}
