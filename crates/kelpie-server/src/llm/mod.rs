//! LLM providers. [`openai::OpenAiClient`] speaks OpenAI-compatible chat
//! completions (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter, and the fake
//! server in [`fake`] used by tests).

pub mod fake;
pub mod openai;

use serde_json::Value;
use thiserror::Error;

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
}
