//! Providers a user registers at run time (Letta's "bring your own key"
//! providers): where one is, which protocol it speaks and the key it takes
//! (`clients::EndpointModel` calls it).
//!
//! The key is a secret: [`ProviderEndpoint`]'s `Debug` hides it, and no
//! error of this module carries it (the clients send it as a header, which
//! no error text includes).

use std::fmt;
use std::time::Duration;

use crate::anthropic::AnthropicClient;
use crate::http::LlmError;
use crate::openai::OpenAiClient;
use crate::settings::PROVIDER_ANTHROPIC;

/// The provider name of agents served through an OpenAI-compatible client
/// (what [`LlmSettings::provider`] holds for them).
pub const PROVIDER_OPENAI: &str = "openai";

/// The protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFamily {
    /// OpenAI-compatible chat completions, `GET {base}/models`, embeddings.
    OpenAi,
    /// Anthropic Messages, `GET {base}/v1/models`; no embeddings.
    Anthropic,
}

impl ApiFamily {
    /// What [`LlmSettings::provider`] holds for a model of this family.
    pub fn provider(self) -> &'static str {
        match self {
            ApiFamily::OpenAi => PROVIDER_OPENAI,
            ApiFamily::Anthropic => PROVIDER_ANTHROPIC,
        }
    }
}

/// Where and how to reach one provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderEndpoint {
    pub family: ApiFamily,
    /// What the family's client is built on: for OpenAI-compatible, the
    /// URL `/chat/completions` follows; for Anthropic, the URL `/v1/...`
    /// follows.
    pub base_url: String,
    pub api_key: Option<String>,
}

impl fmt::Debug for ProviderEndpoint {
    // The key never reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderEndpoint")
            .field("family", &self.family)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ProviderEndpoint {
    /// The model ids the provider lists, asked with its key: what checks
    /// the key and what a refresh stores.
    pub async fn list_models(&self, timeout: Duration) -> Result<Vec<String>, LlmError> {
        match self.family {
            ApiFamily::OpenAi => {
                OpenAiClient::new(&self.base_url, self.api_key.clone())?.list_models(timeout).await
            }
            ApiFamily::Anthropic => {
                AnthropicClient::new(&self.base_url, self.anthropic_key()?)?.list_models(timeout).await
            }
        }
    }

    /// The key of an Anthropic endpoint, which must have one.
    pub fn anthropic_key(&self) -> Result<String, LlmError> {
        self.api_key.clone().filter(|key| !key.is_empty()).ok_or_else(|| LlmError::ProviderUnavailable {
            provider: self.base_url.clone(),
            reason: "an Anthropic provider needs an api_key".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug() {
        let endpoint = ProviderEndpoint {
            family: ApiFamily::OpenAi,
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key: Some("sk-very-secret".into()),
        };
        let shown = format!("{endpoint:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("<set>") && shown.contains("http://127.0.0.1:9/v1"), "{shown}");
    }

    #[test]
    fn an_anthropic_endpoint_without_a_key_is_refused() {
        let endpoint = ProviderEndpoint {
            family: ApiFamily::Anthropic,
            base_url: "https://a.example".into(),
            api_key: None,
        };
        let err = endpoint.anthropic_key().unwrap_err();
        assert!(err.to_string().contains("needs an api_key"), "{err}");
        assert_eq!(ApiFamily::Anthropic.provider(), "anthropic");
        assert_eq!(ApiFamily::OpenAi.provider(), "openai");
    }
}
