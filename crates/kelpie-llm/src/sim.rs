//! A [`ChatModel`] for deterministic simulation (feature `sim`): replies
//! come from kelpie-dst's `SimLlmClient` (scripted or computed from the
//! request, after a seeded latency, subject to the LLM faults) and
//! embeddings are the local hash embedding, so the agent loop runs in the
//! simulator unchanged.

use kelpie_dst::{LlmMessage, LlmRequest, LlmResponse, SimLlmClient};
use serde_json::Value;

use crate::chat::{ChatRequest, ChatResponse, TokenUsage, ToolCall};
use crate::clients::{ChatModel, ModelFuture};
use crate::endpoint::ProviderEndpoint;
use crate::http::LlmError;
use crate::settings::{EmbeddingSettings, LlmSettings};
use crate::stream::{ChatDelta, StreamError};

/// The endpoint simulated errors name.
pub const SIM_ENDPOINT: &str = "sim://llm";

/// Clones share one simulated client.
#[derive(Clone)]
pub struct SimChatModel {
    client: std::sync::Arc<SimLlmClient>,
}

impl SimChatModel {
    pub fn new(client: SimLlmClient) -> Self {
        SimChatModel { client: std::sync::Arc::new(client) }
    }
}

/// A message's text: its string content, or its parts' texts joined.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|part| part["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// The request as the simulated client sees it: roles and texts, tool names.
pub fn sim_request(request: &ChatRequest) -> LlmRequest {
    LlmRequest {
        model: request.model.clone(),
        messages: request
            .messages
            .iter()
            .map(|message| {
                let message = message.to_value();
                LlmMessage {
                    role: message["role"].as_str().unwrap_or_default().to_string(),
                    content: text_of(&message),
                }
            })
            .collect(),
        tools: request
            .tools
            .iter()
            .filter_map(|tool| tool["function"]["name"].as_str())
            .map(str::to_string)
            .collect(),
    }
}

fn answer(response: LlmResponse) -> ChatResponse {
    ChatResponse {
        content: response.content,
        tool_calls: response
            .tool_calls
            .into_iter()
            .map(|call| ToolCall { id: call.id, name: call.name, arguments: call.arguments })
            .collect(),
        usage: TokenUsage {
            prompt_tokens: response.prompt_tokens,
            completion_tokens: response.completion_tokens,
        },
    }
}

fn failed(err: kelpie_dst::LlmError) -> LlmError {
    let status = match &err {
        kelpie_dst::LlmError::Timeout { .. } => 504,
        kelpie_dst::LlmError::RateLimited { .. } => 429,
        _ => 500,
    };
    LlmError::Status { endpoint: SIM_ENDPOINT.to_string(), status, body: err.to_string() }
}

impl ChatModel for SimChatModel {
    fn chat<'a>(&'a self, _llm: &'a LlmSettings, request: &'a ChatRequest) -> ModelFuture<'a, ChatResponse> {
        Box::pin(async move { self.client.complete(&sim_request(request)).await.map(answer).map_err(failed) })
    }

    /// The whole answer, then handed over as the deltas a stream of it would carry.
    fn chat_streaming<'a>(
        &'a self,
        llm: &'a LlmSettings,
        request: &'a ChatRequest,
        on_delta: &'a mut (dyn FnMut(ChatDelta) + Send),
    ) -> ModelFuture<'a, ChatResponse> {
        Box::pin(async move {
            let response = self.chat(llm, request).await?;
            // A cut stream delivers the first half of its text (or the
            // start of its first call) and fails, as a provider whose
            // connection drops mid-answer.
            let cut = self.client.stream_cut();
            if let Some(text) = &response.content {
                let piece: String = match cut {
                    true => text.chars().take(text.chars().count() / 2).collect(),
                    false => text.clone(),
                };
                on_delta(ChatDelta::Text(piece));
            }
            for (index, call) in response.tool_calls.iter().enumerate() {
                on_delta(ChatDelta::ToolCallStart { index, id: call.id.clone(), name: call.name.clone() });
                if cut {
                    break;
                }
                on_delta(ChatDelta::ToolCallArguments { index, fragment: call.arguments.clone() });
            }
            match cut {
                true => Err(LlmError::Stream {
                    endpoint: SIM_ENDPOINT.to_string(),
                    error: StreamError::Incomplete,
                }),
                false => Ok(response),
            }
        })
    }

    fn embed<'a>(
        &'a self,
        _settings: &'a EmbeddingSettings,
        texts: &'a [String],
    ) -> ModelFuture<'a, Vec<Vec<f32>>> {
        Box::pin(async move { Ok(texts.iter().map(|text| kelpie_memory::embed_local(text)).collect()) })
    }

    /// A registered provider is simulated like the configured ones.
    fn with_endpoint(&self, _endpoint: &ProviderEndpoint) -> Result<Box<dyn ChatModel>, LlmError> {
        Ok(Box::new(self.clone()))
    }
}
