//! One chat completion as every provider takes and answers it: messages and
//! tools in OpenAI's JSON shape, the answer's text, tool calls and usage.

use std::sync::Arc;

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

/// One message of a prompt, in OpenAI's chat JSON, printed once when the
/// prompt is built: a full window is hundreds of messages, and the OpenAI
/// request body is written from these bytes as they are (no value tree is
/// built, cloned and printed again per request).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// A JSON object (the constructors only make it from serialized values);
    /// shared, so a prompt built again from the same messages copies none.
    json: Arc<str>,
}

impl ChatMessage {
    /// `message` printed as JSON; it must serialize as an object.
    pub fn new(message: &impl Serialize) -> ChatMessage {
        let json = serde_json::to_string(message).expect("a prompt message serializes");
        assert!(json.starts_with('{'), "a chat message is a JSON object: {json}");
        ChatMessage { json: json.into() }
    }

    /// The message's JSON text.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The message as a value, for the providers and tests that read it.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.json).expect("a chat message holds the JSON it was printed as")
    }
}

impl From<Value> for ChatMessage {
    fn from(message: Value) -> ChatMessage {
        ChatMessage::new(&message)
    }
}

/// One chat completion request, messages and tools in OpenAI's JSON shape.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
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
