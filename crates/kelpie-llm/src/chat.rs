//! One chat completion as every provider takes and answers it: messages and
//! tools in OpenAI's JSON shape, the answer's text, tool calls and usage.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tool call the LLM asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the LLM sent them: a JSON object in a string.
    pub arguments: String,
}

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
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
}
