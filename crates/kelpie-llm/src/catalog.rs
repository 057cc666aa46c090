//! The model catalog: which LLM and embedding handles this server offers,
//! from the configuration, and the resolution of a handle given on agent
//! create into the agent's settings.
//!
//! Handles are `provider/model`. With OpenAI's own base URL the provider is
//! `openai`; with any other base URL (Ollama, vLLM, a proxy, the fake) it is
//! `openai-proxy`, as Letta names it. Both prefixes are accepted on create.
//! `anthropic/<model>` is offered when `ANTHROPIC_API_KEY` is configured.

use std::time::Duration;

use kelpie_core::config::LlmConfig;
use kelpie_memory::LOCAL_EMBEDDING_DIMENSIONS_COUNT;
use serde_json::{json, Value};

use crate::clients::LlmClients;
use crate::http::LlmError;
use crate::openai::EMBEDDING_BATCH_TEXTS_COUNT_MAX;
use crate::settings::{EmbeddingSettings, LlmSettings, LOCAL_EMBEDDING_HANDLE, PROVIDER_ANTHROPIC};

pub const OPENAI_BASE_URL_OFFICIAL: &str = "https://api.openai.com/v1";
/// Context window assumed for a model the provider does not describe, in tokens.
pub const CONTEXT_WINDOW_TOKENS_DEFAULT: u64 = 32_000;
/// Completion budget per LLM call, in tokens.
pub const COMPLETION_TOKENS_DEFAULT: u64 = 4_096;
/// How long the model listing waits for the provider's `/models`.
const MODEL_LIST_TIMEOUT_MS: u64 = 2_000;
const LOCAL_EMBEDDING_MODEL: &str = "local-hash-256";
/// Dimension reported for an `openai/<model>` embedding (OpenAI's
/// `text-embedding-3-small`); search uses whatever length the provider sends.
pub const REMOTE_EMBEDDING_DIMENSIONS_COUNT_DEFAULT: u64 = 1_536;
/// A provider model whose id holds this (case-insensitive) is listed as an
/// embedding model: OpenAI's `text-embedding-*`, Ollama's `nomic-embed-text`,
/// `mxbai-embed-large`... Any `openai/<model>` works whether listed or not.
const EMBEDDING_MODEL_ID_MARKER: &str = "embed";
/// Characters per chunk Letta's `EmbeddingModel` reports; we do not chunk.
const EMBEDDING_CHUNK_CHARS_COUNT: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model provider {provider:?} in handle {handle:?}; this server offers \"openai/...\", \"openai-proxy/...\", with ANTHROPIC_API_KEY set \"anthropic/...\", and \"<name>/...\" of the providers created at /v1/providers/ (see GET /v1/models/)")]
    UnknownProvider { handle: String, provider: String },
    #[error(
        "model {handle:?} needs the anthropic provider, which is not configured (set ANTHROPIC_API_KEY)"
    )]
    AnthropicNotConfigured { handle: String },
    #[error("no model given and no default model configured (set KELPIE_DEFAULT_MODEL or pass model=\"provider/model\")")]
    NoModel,
    #[error("embedding {handle:?} is not offered; use {LOCAL_EMBEDDING_HANDLE:?}, omit it, \"openai/<model>\" with OPENAI_API_KEY or OPENAI_BASE_URL set, or an embedding model of a provider created at /v1/providers/ (see GET /v1/models/embedding)")]
    UnknownEmbedding { handle: String },
}

/// A provider the configuration sets up (Letta's "base" providers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseProvider {
    /// The prefix of its models' handles.
    pub name: String,
    /// Letta's `ProviderType`.
    pub provider_type: &'static str,
    pub base_url: String,
}

/// Where a listed model comes from, as Letta's `Model` names it.
#[derive(Debug, Clone, Copy)]
pub struct ModelSource<'a> {
    /// The handle's prefix.
    pub provider_name: &'a str,
    /// Letta's `ProviderType`.
    pub provider_type: &'a str,
    /// The protocol: `openai` or `anthropic`.
    pub endpoint_type: &'a str,
    pub endpoint: &'a str,
    /// `base` (configured) or `byok` (created at `/v1/providers`).
    pub category: &'a str,
}

#[derive(Clone)]
pub struct ModelCatalog {
    config: LlmConfig,
    clients: LlmClients,
}

impl ModelCatalog {
    pub fn new(config: LlmConfig, clients: LlmClients) -> Self {
        ModelCatalog { config, clients }
    }

    fn provider_name(&self) -> &'static str {
        if self.config.openai_base_url.trim_end_matches('/') == OPENAI_BASE_URL_OFFICIAL {
            "openai"
        } else {
            "openai-proxy"
        }
    }

    /// The handle agents get when they name none.
    pub fn default_model(&self) -> Option<&str> {
        self.config.default_model.as_deref()
    }

    /// Whether a provider a user creates may be on an internal address.
    pub fn allow_internal_provider_urls(&self) -> bool {
        self.config.allow_internal_provider_urls
    }

    /// The providers the configuration sets up: the OpenAI-compatible one
    /// when it can be asked (a key, or a base URL other than OpenAI's), and
    /// Anthropic when its key is set.
    pub fn base_providers(&self) -> Vec<BaseProvider> {
        let mut providers = Vec::new();
        if self.openai_askable() {
            providers.push(BaseProvider {
                name: self.provider_name().to_string(),
                provider_type: "openai",
                base_url: self.config.openai_base_url.clone(),
            });
        }
        if let Some(client) = &self.clients.anthropic {
            providers.push(BaseProvider {
                name: PROVIDER_ANTHROPIC.to_string(),
                provider_type: PROVIDER_ANTHROPIC,
                base_url: client.base_url().to_string(),
            });
        }
        providers
    }

    /// Asks configured provider `name` for its models with the configured
    /// key (what checking a base provider does).
    pub async fn list_base_models(&self, name: &str, timeout: Duration) -> Result<Vec<String>, LlmError> {
        match (name, &self.clients.anthropic) {
            (PROVIDER_ANTHROPIC, Some(client)) => client.list_models(timeout).await,
            _ if name == self.provider_name() && self.openai_askable() => {
                self.clients.openai.list_models(timeout).await
            }
            _ => Err(LlmError::NotConfigured { provider: name.to_string() }),
        }
    }

    /// The settings for `handle` (or the configured default model).
    pub fn resolve_llm(&self, handle: Option<&str>) -> Result<LlmSettings, ModelError> {
        let handle = handle.or(self.config.default_model.as_deref()).ok_or(ModelError::NoModel)?;
        let (provider, model) = handle.split_once('/').unwrap_or(("openai", handle));
        if provider == PROVIDER_ANTHROPIC {
            return self.resolve_anthropic(handle, model);
        }
        if provider != "openai" && provider != "openai-proxy" {
            return Err(ModelError::UnknownProvider {
                handle: handle.to_string(),
                provider: provider.to_string(),
            });
        }
        Ok(LlmSettings {
            handle: format!("{}/{model}", self.provider_name()),
            provider: "openai".to_string(),
            model: model.to_string(),
            endpoint: self.config.openai_base_url.clone(),
            context_window: CONTEXT_WINDOW_TOKENS_DEFAULT,
            max_tokens: COMPLETION_TOKENS_DEFAULT,
            temperature: 0.7,
            byok_provider: None,
        })
    }

    fn resolve_anthropic(&self, handle: &str, model: &str) -> Result<LlmSettings, ModelError> {
        let client = self
            .clients
            .anthropic
            .as_ref()
            .ok_or_else(|| ModelError::AnthropicNotConfigured { handle: handle.to_string() })?;
        Ok(LlmSettings {
            handle: format!("{PROVIDER_ANTHROPIC}/{model}"),
            provider: PROVIDER_ANTHROPIC.to_string(),
            model: model.to_string(),
            endpoint: client.base_url().to_string(),
            context_window: CONTEXT_WINDOW_TOKENS_DEFAULT,
            max_tokens: COMPLETION_TOKENS_DEFAULT,
            temperature: 0.7,
            byok_provider: None,
        })
    }

    pub fn resolve_embedding(&self, handle: Option<&str>) -> Result<EmbeddingSettings, ModelError> {
        match handle {
            None | Some(LOCAL_EMBEDDING_HANDLE) => Ok(EmbeddingSettings {
                handle: LOCAL_EMBEDDING_HANDLE.to_string(),
                model: LOCAL_EMBEDDING_MODEL.to_string(),
                dim: LOCAL_EMBEDDING_DIMENSIONS_COUNT as u64,
                byok_provider: None,
            }),
            Some(other) => {
                let unknown = || ModelError::UnknownEmbedding { handle: other.to_string() };
                let (provider, model) = other.split_once('/').ok_or_else(unknown)?;
                let offered = (provider == "openai" || provider == "openai-proxy") && !model.is_empty();
                if !offered || !self.openai_askable() {
                    return Err(unknown());
                }
                Ok(EmbeddingSettings {
                    handle: format!("openai/{model}"),
                    model: model.to_string(),
                    dim: REMOTE_EMBEDDING_DIMENSIONS_COUNT_DEFAULT,
                    byok_provider: None,
                })
            }
        }
    }

    /// Whether the OpenAI-compatible provider can be called: a key, or a
    /// base URL other than OpenAI's own (a local server needs no key).
    fn openai_askable(&self) -> bool {
        self.config.openai_api_key.is_some() || self.provider_name() == "openai-proxy"
    }

    /// Model names: the provider's `/models` when it can be asked (a key or
    /// a non-official base URL is configured), plus the default model.
    async fn model_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.openai_askable() {
            match self.clients.openai.list_models(Duration::from_millis(MODEL_LIST_TIMEOUT_MS)).await {
                Ok(listed) => names = listed,
                Err(err) => tracing::warn!(error = %err, "cannot list the provider's models"),
            }
        }
        if let Some(default) = &self.config.default_model {
            let bare = default.split_once('/').map_or(default.as_str(), |(_, model)| model);
            if !names.iter().any(|name| name == bare) {
                names.insert(0, bare.to_string());
            }
        }
        names
    }

    /// `GET /v1/models/`: Letta's `Model` objects, OpenAI-compatible first,
    /// then Anthropic's when it is configured.
    pub async fn llm_models(&self) -> Vec<Value> {
        let provider = self.provider_name();
        let endpoint = self.config.openai_base_url.as_str();
        let mut models: Vec<Value> = self
            .model_names()
            .await
            .into_iter()
            .map(|model| {
                let source = ModelSource {
                    provider_name: provider,
                    provider_type: "openai",
                    endpoint_type: "openai",
                    endpoint,
                    category: "base",
                };
                model_json(&source, &model)
            })
            .collect();
        if let Some(client) = &self.clients.anthropic {
            match client.list_models(Duration::from_millis(MODEL_LIST_TIMEOUT_MS)).await {
                Ok(listed) => {
                    let source = ModelSource {
                        provider_name: PROVIDER_ANTHROPIC,
                        provider_type: PROVIDER_ANTHROPIC,
                        endpoint_type: PROVIDER_ANTHROPIC,
                        endpoint: client.base_url(),
                        category: "base",
                    };
                    models.extend(listed.iter().map(|model| model_json(&source, model)))
                }
                Err(err) => tracing::warn!(error = %err, "cannot list Anthropic's models"),
            }
        }
        models
    }

    /// `GET /v1/models/embedding`: the local embedding first, then the
    /// OpenAI-compatible provider's embedding models (those of its
    /// `GET /models` whose id holds "embed") when it can be asked, each as
    /// the `openai/<model>` handle an agent stores.
    pub async fn embedding_models(&self) -> Vec<Value> {
        let mut models = vec![json!({
            "handle": LOCAL_EMBEDDING_HANDLE, "name": LOCAL_EMBEDDING_MODEL, "display_name": LOCAL_EMBEDDING_MODEL,
            // Letta's enums have no in-process embedding: like Letta's own
            // free embedding it reports "openai", named by its handle.
            "provider_type": "openai", "provider_name": "kelpie", "model_type": "embedding",
            "embedding_endpoint_type": "openai", "embedding_endpoint": null, "embedding_model": LOCAL_EMBEDDING_MODEL,
            "embedding_dim": LOCAL_EMBEDDING_DIMENSIONS_COUNT, "embedding_chunk_size": EMBEDDING_CHUNK_CHARS_COUNT,
            "batch_size": 32, "azure_endpoint": null, "azure_version": null, "azure_deployment": null,
        })];
        if !self.openai_askable() {
            return models;
        }
        match self.clients.openai.list_models(Duration::from_millis(MODEL_LIST_TIMEOUT_MS)).await {
            Ok(listed) => models.extend(
                listed
                    .iter()
                    .filter(|id| is_embedding_model(id))
                    .map(|model| embedding_json("openai", "openai", &self.config.openai_base_url, model)),
            ),
            Err(err) => tracing::warn!(error = %err, "cannot list the provider's embedding models"),
        }
        debug_assert_eq!(models[0]["handle"], LOCAL_EMBEDDING_HANDLE, "the local default is listed first");
        models
    }
}

/// Whether a provider's model `id` is an embedding model (listed at
/// `/v1/models/embedding` rather than `/v1/models/`).
pub fn is_embedding_model(id: &str) -> bool {
    id.to_lowercase().contains(EMBEDDING_MODEL_ID_MARKER)
}

/// One Letta `EmbeddingModel` object for `<provider_name>/<model>`, an
/// OpenAI-compatible embedding at `endpoint`.
pub fn embedding_json(provider_name: &str, provider_type: &str, endpoint: &str, model: &str) -> Value {
    json!({
        "handle": format!("{provider_name}/{model}"), "name": model, "display_name": model,
        "provider_type": provider_type, "provider_name": provider_name, "model_type": "embedding",
        "embedding_endpoint_type": "openai", "embedding_endpoint": endpoint, "embedding_model": model,
        "embedding_dim": REMOTE_EMBEDDING_DIMENSIONS_COUNT_DEFAULT, "embedding_chunk_size": EMBEDDING_CHUNK_CHARS_COUNT,
        "batch_size": EMBEDDING_BATCH_TEXTS_COUNT_MAX, "azure_endpoint": null, "azure_version": null,
        "azure_deployment": null,
    })
}

/// One Letta `Model` object.
pub fn model_json(source: &ModelSource<'_>, model: &str) -> Value {
    json!({
        "handle": format!("{}/{model}", source.provider_name), "name": model, "display_name": model,
        "provider_type": source.provider_type, "provider_name": source.provider_name, "model_type": "llm",
        "model": model, "model_endpoint_type": source.endpoint_type, "model_endpoint": source.endpoint,
        "provider_category": source.category, "model_wrapper": null,
        "context_window": CONTEXT_WINDOW_TOKENS_DEFAULT, "max_context_window": CONTEXT_WINDOW_TOKENS_DEFAULT,
        "put_inner_thoughts_in_kwargs": false, "temperature": 0.7, "max_tokens": COMPLETION_TOKENS_DEFAULT,
        "enable_reasoner": false, "reasoning_effort": null, "max_reasoning_tokens": 0, "effort": null,
        "frequency_penalty": null, "compatibility_type": null, "verbosity": null, "tier": null,
        "parallel_tool_calls": false, "response_format": null, "strict": false, "return_logprobs": false,
        "top_logprobs": null, "return_token_ids": false, "tool_call_parser": null,
    })
}
