//! What every provider client shares: the error type, the request timeout,
//! retries with backoff for what is worth retrying, JSON calls, and streamed
//! calls fed to a decoder with an idle timeout between chunks.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use thiserror::Error;

use crate::chat::ChatResponse;
use crate::stream::{ChatDelta, StreamDecoder, StreamError};

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
    /// A provider a user registered cannot be called: deleted, or its URL
    /// is no longer allowed.
    #[error("LLM provider {provider:?} cannot be used: {reason}")]
    ProviderUnavailable { provider: String, reason: String },
}

/// Phrases with which providers refuse a prompt longer than the model's
/// context window (OpenAI, Anthropic, vLLM, llama.cpp, Ollama word it so).
const CONTEXT_OVERFLOW_PHRASES: [&str; 6] = [
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "exceeds the context",
];

impl LlmError {
    /// Whether the provider refused the prompt as too long for the model.
    pub fn is_context_overflow(&self) -> bool {
        match self {
            LlmError::Status { status: 400 | 413, body, .. } => {
                let body = body.to_lowercase();
                CONTEXT_OVERFLOW_PHRASES.iter().any(|phrase| body.contains(phrase))
            }
            _ => false,
        }
    }
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

/// Only rate limits, server errors and transport failures are worth a retry.
pub(crate) fn is_retriable(err: &LlmError) -> bool {
    match err {
        LlmError::Status { status, .. } => *status == 429 || *status >= 500,
        LlmError::Transport { .. } => true,
        // Deltas may already have reached the client; a retry would repeat them.
        LlmError::Stream { .. } => false,
        LlmError::InvalidResponse { .. }
        | LlmError::NotConfigured { .. }
        | LlmError::ProviderUnavailable { .. } => false,
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

    #[test]
    fn a_prompt_refused_as_too_long_is_recognized() {
        let refused =
            |status, body: &str| LlmError::Status { endpoint: "e".into(), status, body: body.into() };
        assert!(refused(400, r#"{"error":{"code":"context_length_exceeded"}}"#).is_context_overflow());
        assert!(refused(400, "This model's maximum context length is 8192 tokens").is_context_overflow());
        assert!(refused(400, "prompt is too long: 210000 tokens > 200000 maximum").is_context_overflow());
        assert!(!refused(400, "invalid tool schema").is_context_overflow());
        assert!(!refused(500, "maximum context length").is_context_overflow());
    }
}
