//! What an agent stores about its models: the LLM and the embedding it was
//! created with, resolved from handles by the catalog.

use serde::{Deserialize, Serialize};

/// The provider name of agents served by [`crate::anthropic::AnthropicClient`].
pub const PROVIDER_ANTHROPIC: &str = "anthropic";
/// The handle of the built-in, network-free embedding.
pub const LOCAL_EMBEDDING_HANDLE: &str = "kelpie/local-hash-256";

/// The LLM an agent talks to, resolved from a model handle at create time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmSettings {
    /// `provider/model`, as listed by `GET /v1/models/`.
    pub handle: String,
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub context_window: u64,
    pub max_tokens: u64,
    pub temperature: f64,
    /// The provider a user registered (`/v1/providers`, Letta's BYOK) this
    /// model is reached through, by its name (which never changes); `None`
    /// for the server's configured providers. Records written before it
    /// existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byok_provider: Option<String>,
}

/// The embedding of an agent's archival memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingSettings {
    pub handle: String,
    pub model: String,
    pub dim: u64,
    /// As [`LlmSettings::byok_provider`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byok_provider: Option<String>,
}
