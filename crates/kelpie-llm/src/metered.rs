//! The metrics of chat calls (`kelpie_core::metrics`): each call to a
//! provider counts once, however many retries it took, with its duration,
//! its failure, or the tokens the provider reported.

use std::future::Future;
use std::time::Instant;

use kelpie_core::metrics::{
    increment, observe, LLM_CALLS, LLM_CALL_DURATION, LLM_CALL_ERRORS, LLM_COMPLETION_TOKENS,
    LLM_PROMPT_TOKENS,
};

use crate::chat::ChatResponse;
use crate::http::LlmError;

/// The provider label of OpenAI-compatible APIs (OpenAI, Ollama, vLLM, ...).
pub const PROVIDER_LABEL_OPENAI: &str = "openai";
/// The provider label of Anthropic's Messages API.
pub const PROVIDER_LABEL_ANTHROPIC: &str = "anthropic";

/// Runs `call` and records it under `provider` (one of the labels above:
/// the API family, a closed set, never a user's provider name).
pub async fn metered(
    provider: &'static str,
    call: impl Future<Output = Result<ChatResponse, LlmError>>,
) -> Result<ChatResponse, LlmError> {
    assert!(
        [PROVIDER_LABEL_OPENAI, PROVIDER_LABEL_ANTHROPIC].contains(&provider),
        "provider labels are a closed set"
    );
    let started = Instant::now();
    let result = call.await;
    increment(&LLM_CALLS, &[provider], 1);
    observe(&LLM_CALL_DURATION, &[provider], started.elapsed().as_secs_f64());
    match &result {
        Ok(answer) => {
            increment(&LLM_PROMPT_TOKENS, &[provider], answer.usage.prompt_tokens);
            increment(&LLM_COMPLETION_TOKENS, &[provider], answer.usage.completion_tokens);
        }
        Err(_) => increment(&LLM_CALL_ERRORS, &[provider], 1),
    }
    result
}
