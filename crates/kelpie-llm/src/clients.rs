//! [`ChatModel`], what the agent loop asks of a language model, and
//! [`LlmClients`], the configured providers behind it: a request goes to the
//! provider its agent was created with.

use std::future::Future;
use std::pin::Pin;

use kelpie_core::config::LlmConfig;

use crate::anthropic::AnthropicClient;
use crate::chat::{ChatRequest, ChatResponse};
use crate::endpoint::{ApiFamily, ProviderEndpoint};
use crate::http::LlmError;
use crate::openai::OpenAiClient;
use crate::settings::{EmbeddingSettings, LlmSettings, LOCAL_EMBEDDING_HANDLE, PROVIDER_ANTHROPIC};
use crate::stream::ChatDelta;

/// A future borrowing its arguments.
pub type ModelFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LlmError>> + Send + 'a>>;

/// What the agent loop and archival memory ask of a model: chat turns,
/// plain or streamed, and embeddings. [`LlmClients`] talks to real
/// providers; a simulation supplies its own (kelpie-llm's `sim` feature).
pub trait ChatModel: Send + Sync + 'static {
    /// One chat turn with the model `llm` names (an agent's settings).
    fn chat<'a>(&'a self, llm: &'a LlmSettings, request: &'a ChatRequest) -> ModelFuture<'a, ChatResponse>;

    /// [`Self::chat`] with each delta handed to `on_delta` as it arrives.
    fn chat_streaming<'a>(
        &'a self,
        llm: &'a LlmSettings,
        request: &'a ChatRequest,
        on_delta: &'a mut (dyn FnMut(ChatDelta) + Send),
    ) -> ModelFuture<'a, ChatResponse>;

    /// One vector per text, in order, with the embedding `settings` name.
    fn embed<'a>(
        &'a self,
        settings: &'a EmbeddingSettings,
        texts: &'a [String],
    ) -> ModelFuture<'a, Vec<Vec<f32>>>;

    /// The model that calls `endpoint`, a provider a user registered
    /// (a simulation answers with itself).
    fn with_endpoint(&self, endpoint: &ProviderEndpoint) -> Result<Box<dyn ChatModel>, LlmError>;
}

impl ChatModel for LlmClients {
    fn chat<'a>(&'a self, llm: &'a LlmSettings, request: &'a ChatRequest) -> ModelFuture<'a, ChatResponse> {
        Box::pin(LlmClients::chat(self, &llm.provider, request))
    }

    fn chat_streaming<'a>(
        &'a self,
        llm: &'a LlmSettings,
        request: &'a ChatRequest,
        on_delta: &'a mut (dyn FnMut(ChatDelta) + Send),
    ) -> ModelFuture<'a, ChatResponse> {
        Box::pin(LlmClients::chat_streaming(self, &llm.provider, request, on_delta))
    }

    fn embed<'a>(
        &'a self,
        settings: &'a EmbeddingSettings,
        texts: &'a [String],
    ) -> ModelFuture<'a, Vec<Vec<f32>>> {
        Box::pin(LlmClients::embed(self, settings, texts))
    }

    fn with_endpoint(&self, endpoint: &ProviderEndpoint) -> Result<Box<dyn ChatModel>, LlmError> {
        Ok(Box::new(EndpointModel::new(endpoint)?))
    }
}

/// The configured providers. OpenAI-compatible is always there (its base URL
/// has a default); Anthropic only when its key is configured.
#[derive(Clone)]
pub struct LlmClients {
    pub openai: OpenAiClient,
    pub anthropic: Option<AnthropicClient>,
}

impl LlmClients {
    /// The configured providers: OpenAI-compatible always, Anthropic with a key.
    pub fn from_config(config: &LlmConfig) -> Result<LlmClients, LlmError> {
        let openai = OpenAiClient::new(&config.openai_base_url, config.openai_api_key.clone())?;
        let anthropic = match &config.anthropic_api_key {
            Some(key) => Some(AnthropicClient::new(&config.anthropic_base_url, key.clone())?),
            None => None,
        };
        Ok(LlmClients { openai, anthropic })
    }

    /// One vector per text, in order, with the embedding `settings` name:
    /// the local hash embedding (no network), or `openai/<model>` through
    /// the OpenAI-compatible `/embeddings`.
    pub async fn embed(
        &self,
        settings: &EmbeddingSettings,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        if settings.handle == LOCAL_EMBEDDING_HANDLE {
            return Ok(texts.iter().map(|text| kelpie_memory::embed_local(text)).collect());
        }
        self.openai.embed(&settings.model, texts).await
    }

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

/// The client of one [`ProviderEndpoint`] (a provider a user registered),
/// as a [`ChatModel`].
pub enum EndpointModel {
    OpenAi(OpenAiClient),
    Anthropic(AnthropicClient),
}

impl EndpointModel {
    pub fn new(endpoint: &ProviderEndpoint) -> Result<Self, LlmError> {
        match endpoint.family {
            ApiFamily::OpenAi => {
                Ok(EndpointModel::OpenAi(OpenAiClient::new(&endpoint.base_url, endpoint.api_key.clone())?))
            }
            ApiFamily::Anthropic => Ok(EndpointModel::Anthropic(AnthropicClient::new(
                &endpoint.base_url,
                endpoint.anthropic_key()?,
            )?)),
        }
    }
}

impl ChatModel for EndpointModel {
    fn chat<'a>(&'a self, _llm: &'a LlmSettings, request: &'a ChatRequest) -> ModelFuture<'a, ChatResponse> {
        match self {
            EndpointModel::OpenAi(client) => Box::pin(client.chat(request)),
            EndpointModel::Anthropic(client) => Box::pin(client.chat(request)),
        }
    }

    fn chat_streaming<'a>(
        &'a self,
        _llm: &'a LlmSettings,
        request: &'a ChatRequest,
        on_delta: &'a mut (dyn FnMut(ChatDelta) + Send),
    ) -> ModelFuture<'a, ChatResponse> {
        match self {
            EndpointModel::OpenAi(client) => Box::pin(client.chat_stream(request, on_delta)),
            EndpointModel::Anthropic(client) => Box::pin(client.chat_stream(request, on_delta)),
        }
    }

    fn embed<'a>(
        &'a self,
        settings: &'a EmbeddingSettings,
        texts: &'a [String],
    ) -> ModelFuture<'a, Vec<Vec<f32>>> {
        match self {
            EndpointModel::OpenAi(client) => Box::pin(client.embed(&settings.model, texts)),
            EndpointModel::Anthropic(client) => {
                let provider = client.base_url().to_string();
                Box::pin(async move {
                    Err(LlmError::ProviderUnavailable {
                        provider,
                        reason: "Anthropic serves no embeddings".into(),
                    })
                })
            }
        }
    }

    fn with_endpoint(&self, endpoint: &ProviderEndpoint) -> Result<Box<dyn ChatModel>, LlmError> {
        Ok(Box::new(EndpointModel::new(endpoint)?))
    }
}

/// The body `request` is sent as to `provider` (the Anthropic Messages
/// shape for `anthropic`, else OpenAI's chat completions), as JSON.
pub fn provider_payload(provider: &str, request: &ChatRequest) -> serde_json::Value {
    match provider {
        PROVIDER_ANTHROPIC => crate::anthropic::request_body(request),
        _ => crate::openai::request_body(request),
    }
}
