//! LLM providers, as the agent loop needs them: chat completions (plain and
//! streamed), embeddings and the model catalog.
//!
//! [`openai::OpenAiClient`] speaks OpenAI-compatible chat completions
//! (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter, and the fake server in
//! [`fake`] used by tests); [`anthropic::AnthropicClient`] speaks Anthropic
//! Messages. Both share the timeout and retry rules of this module and take
//! requests in OpenAI's message shape; [`LlmClients`] routes a request to the
//! provider an agent was created with; [`endpoint`] reaches a provider a
//! user registered at run time. [`stream`] holds the sans-IO decoders
//! of both providers' streams, [`catalog`] the handles this server offers and
//! their resolution into an agent's [`LlmSettings`] and [`EmbeddingSettings`].
//!
//! Depends on no agent or server code: it knows requests, answers and
//! settings, not agents.

pub mod anthropic;
pub mod catalog;
pub mod chat;
pub mod clients;
pub mod endpoint;
pub mod fake;
pub mod http;
pub mod metered;
pub mod openai;
pub mod settings;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stream;

pub use chat::{ChatMessage, ChatRequest, ChatResponse, TokenUsage, ToolCall};
pub use clients::{ChatModel, LlmClients, ModelFuture};
pub use endpoint::{ApiFamily, ProviderEndpoint};
pub use http::LlmError;
pub use settings::{EmbeddingSettings, LlmSettings, LOCAL_EMBEDDING_HANDLE, PROVIDER_ANTHROPIC};
