//! LLM providers (`/v1/providers`, Letta's "bring your own key"): a user
//! registers a provider (a type, a key, a base URL); its models are listed
//! by `GET /v1/models/` as `<provider name>/<model>`, and an agent created on
//! such a handle has its turns sent to that provider with that key.
//!
//! Two kinds of provider are shown: the "base" ones the configuration sets
//! up (environment keys; ids derived from their names, never stored, never
//! changed here) and the "byok" ones of the provider store. Only the types
//! Kelpie can call may be created: the OpenAI-compatible family and
//! Anthropic ([`PROVIDER_KINDS`]).
//!
//! Keys are secrets: no answer, listing, log or export shows them. A base
//! URL a user gives is fetched by the server, so it follows the outbound URL
//! rule of MCP servers (kelpie-tools' `mcp::url`): an internal address is
//! refused unless `llm.allow_internal_provider_urls` is set, checked when it
//! is given and again before every call.
//!
//! Agents reach their provider by name ([`LlmSettings::byok_provider`]),
//! through [`ProviderRouter`]: an agent whose provider was deleted gets an
//! error naming it on its next turn.

use std::sync::Arc;
use std::time::Duration;

use kelpie_core::{ActorId, Env};
use kelpie_llm::catalog::{
    embedding_json, is_embedding_model, model_json, ModelCatalog, ModelSource, COMPLETION_TOKENS_DEFAULT,
    CONTEXT_WINDOW_TOKENS_DEFAULT, REMOTE_EMBEDDING_DIMENSIONS_COUNT_DEFAULT,
};
use kelpie_llm::chat::{ChatRequest, ChatResponse};
use kelpie_llm::stream::ChatDelta;
use kelpie_llm::{
    ApiFamily, ChatModel, EmbeddingSettings, LlmError, LlmSettings, ModelFuture, ProviderEndpoint,
};
use kelpie_runtime::Runtime;
use kelpie_tools::mcp::url::{check_outbound, OutboundUrlError};
use serde_json::{json, Value};

use crate::actors::provider_store::{
    ProviderCommand, ProviderRecord, ProviderReply, ProviderStoreActor, PROVIDER_STORE_ACTOR,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{name_id, new_id, rfc3339_micros};
use crate::page::{json_id, paginate, Page};

/// How long a check, a refresh or the sync at create waits for the
/// provider's model listing.
pub const PROVIDER_LIST_TIMEOUT_MS: u64 = 10_000;
/// Names a created provider may not take: the prefixes of the handles of
/// the configured providers and of the built-in embedding.
pub const BASE_PROVIDER_NAMES: [&str; 5] = ["openai", "openai-proxy", "anthropic", "kelpie", "letta"];
/// Letta's `ProviderType`, every value (a filter may name any of them).
pub const LETTA_PROVIDER_TYPES: [&str; 25] = [
    "anthropic",
    "azure",
    "baseten",
    "bedrock",
    "cerebras",
    "chatgpt_oauth",
    "deepseek",
    "fireworks",
    "google_ai",
    "google_vertex",
    "groq",
    "hugging-face",
    "letta",
    "lmstudio_openai",
    "minimax",
    "mistral",
    "ollama",
    "openai",
    "together",
    "vllm",
    "sglang",
    "openrouter",
    "xai",
    "zai",
    "zai_coding",
];

/// A provider type Kelpie can call.
#[derive(Debug)]
pub struct ProviderKind {
    pub provider_type: &'static str,
    pub family: ApiFamily,
    /// The base URL when none is given; `None`: one must be given.
    pub default_base_url: Option<&'static str>,
    /// The type's servers take OpenAI's API under `<base>/v1` and users
    /// give the bare host (as Letta appends it).
    pub appends_v1: bool,
}

const fn kind(
    provider_type: &'static str,
    family: ApiFamily,
    default_base_url: Option<&'static str>,
    appends_v1: bool,
) -> ProviderKind {
    ProviderKind { provider_type, family, default_base_url, appends_v1 }
}

/// The types a provider may be created with.
pub const PROVIDER_KINDS: [ProviderKind; 11] = [
    kind("openai", ApiFamily::OpenAi, Some("https://api.openai.com/v1"), false),
    kind("anthropic", ApiFamily::Anthropic, Some("https://api.anthropic.com/v1"), false),
    kind("ollama", ApiFamily::OpenAi, None, true),
    kind("vllm", ApiFamily::OpenAi, None, true),
    kind("sglang", ApiFamily::OpenAi, None, true),
    kind("lmstudio_openai", ApiFamily::OpenAi, None, true),
    kind("openrouter", ApiFamily::OpenAi, Some("https://openrouter.ai/api/v1"), false),
    kind("together", ApiFamily::OpenAi, Some("https://api.together.xyz/v1"), false),
    kind("groq", ApiFamily::OpenAi, Some("https://api.groq.com/openai/v1"), false),
    kind("deepseek", ApiFamily::OpenAi, Some("https://api.deepseek.com/v1"), false),
    kind("xai", ApiFamily::OpenAi, Some("https://api.x.ai/v1"), false),
];

/// The kind of `provider_type`, or a 422 naming the supported ones.
pub fn provider_kind(provider_type: &str) -> ServiceResult<&'static ProviderKind> {
    PROVIDER_KINDS.iter().find(|kind| kind.provider_type == provider_type).ok_or_else(|| {
        let supported: Vec<&str> = PROVIDER_KINDS.iter().map(|kind| kind.provider_type).collect();
        let known = if LETTA_PROVIDER_TYPES.contains(&provider_type) {
            "is not served by Kelpie"
        } else {
            "is unknown"
        };
        ServiceError::Invalid(format!(
            "provider_type {provider_type:?} {known}; Kelpie can call: {}",
            supported.join(", ")
        ))
    })
}

/// The endpoint of a provider of `kind` at `base_url` (as stored).
pub fn endpoint_of(kind: &ProviderKind, base_url: &str, api_key: Option<String>) -> ProviderEndpoint {
    let base = base_url.trim_end_matches('/');
    let base_url = match kind.family {
        // The Anthropic client adds `/v1/...` itself; Letta's URLs end in `/v1`.
        ApiFamily::Anthropic => base.strip_suffix("/v1").unwrap_or(base).to_string(),
        ApiFamily::OpenAi if kind.appends_v1 && !base.ends_with("/v1") => format!("{base}/v1"),
        ApiFamily::OpenAi => base.to_string(),
    };
    ProviderEndpoint { family: kind.family, base_url, api_key }
}

/// What a create, modify or check gives (Letta's `ProviderCreate`,
/// `ProviderUpdate`, `ProviderCheck`). An empty string counts as absent.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    pub name: Option<String>,
    pub provider_type: Option<String>,
    pub api_key: Option<String>,
    pub access_key: Option<String>,
    pub region: Option<String>,
    pub base_url: Option<String>,
    pub api_version: Option<String>,
}

impl std::fmt::Debug for ProviderInput {
    // Keys never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderInput")
            .field("name", &self.name)
            .field("provider_type", &self.provider_type)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

fn given(field: &Option<String>) -> Option<String> {
    field.clone().filter(|text| !text.is_empty())
}

/// `GET /v1/providers/` filters besides the page.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ProviderFilter {
    pub name: Option<String>,
    pub provider_type: Option<String>,
    /// Letta's `order_by`: only `created_at`.
    pub order_by: Option<String>,
}

/// `GET /v1/models/` filters (each list empty: any).
#[derive(Debug, Clone, Default)]
pub struct ModelFilter {
    pub provider_categories: Vec<String>,
    pub provider_names: Vec<String>,
    pub provider_types: Vec<String>,
}

impl ModelFilter {
    fn accepts(&self, model: &Value) -> bool {
        let matches = |wanted: &[String], field: &str| {
            wanted.is_empty() || wanted.iter().any(|value| model[field].as_str() == Some(value.as_str()))
        };
        matches(&self.provider_categories, "provider_category")
            && matches(&self.provider_names, "provider_name")
            && matches(&self.provider_types, "provider_type")
    }
}

/// Letta's `Provider`. Keys show as `null` whatever is stored.
fn provider_json(
    (id, name, provider_type): (&str, &str, &str),
    category: &str,
    base_url: &str,
    record: Option<&ProviderRecord>,
) -> Value {
    json!({
        "id": id, "name": name, "provider_type": provider_type, "provider_category": category,
        "api_key": null, "access_key": null, "api_key_enc": null, "access_key_enc": null,
        "base_url": base_url, "region": record.and_then(|r| r.region.clone()),
        "api_version": record.and_then(|r| r.api_version.clone()), "organization_id": null,
        "updated_at": record.map(|r| rfc3339_micros(r.updated_ms)),
        "last_synced": record.and_then(|r| r.last_synced_ms).map(rfc3339_micros),
    })
}

fn byok_json(record: &ProviderRecord) -> Value {
    provider_json((&record.id, &record.name, &record.provider_type), "byok", &record.base_url, Some(record))
}

/// The kind of a stored provider; a type this server no longer calls is
/// logged and its models left out of the listings (one such provider does
/// not fail them).
fn listable_kind(record: &ProviderRecord) -> Option<&'static ProviderKind> {
    match provider_kind(&record.provider_type) {
        Ok(kind) => Some(kind),
        Err(err) => {
            tracing::warn!(provider = %record.name, %err, "a stored provider of a type not served; its models are not listed");
            None
        }
    }
}

/// Why provider `name` cannot be called, as the turn reports it.
fn unavailable(name: &str, reason: impl Into<String>) -> LlmError {
    LlmError::ProviderUnavailable { provider: name.to_string(), reason: reason.into() }
}

fn url_refused(err: OutboundUrlError) -> ServiceError {
    match err {
        OutboundUrlError::Malformed(reason) => ServiceError::Invalid(reason),
        OutboundUrlError::Internal { url, address } => ServiceError::Invalid(format!(
            "base_url {url:?} resolves to {address}, an internal address; set llm.allow_internal_provider_urls \
             (KELPIE_ALLOW_INTERNAL_PROVIDER_URLS) to allow it"
        )),
    }
}

pub struct Providers {
    store: Runtime<ProviderStoreActor>,
    catalog: ModelCatalog,
    env: Env,
}

impl Providers {
    pub(crate) fn new(store: Runtime<ProviderStoreActor>, catalog: ModelCatalog, env: Env) -> Self {
        Providers { store, catalog, env }
    }

    /// The configured providers' catalog.
    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    async fn command(&self, command: ProviderCommand) -> ServiceResult<ProviderReply> {
        let actor_id = ActorId::new(PROVIDER_STORE_ACTOR.0, PROVIDER_STORE_ACTOR.1)?;
        Ok(self.store.invoke(&actor_id, command).await?)
    }

    async fn record(&self, command: ProviderCommand) -> ServiceResult<ProviderRecord> {
        match self.command(command).await? {
            ProviderReply::Provider(provider) => Ok(*provider),
            _ => Err(unexpected("a provider command")),
        }
    }

    async fn all(&self) -> ServiceResult<Vec<ProviderRecord>> {
        match self.command(ProviderCommand::List).await? {
            ProviderReply::Providers(all) => Ok(all),
            _ => Err(unexpected("provider list")),
        }
    }

    /// The created provider named `name`, if any.
    pub async fn named(&self, name: &str) -> ServiceResult<Option<ProviderRecord>> {
        match self.command(ProviderCommand::Named { name: name.to_string() }).await? {
            ProviderReply::Found(found) => Ok(found.map(|provider| *provider)),
            _ => Err(unexpected("provider lookup")),
        }
    }

    /// The base providers, rendered, with their derived ids.
    fn base_providers(&self) -> Vec<Value> {
        let providers = self.catalog.base_providers();
        providers
            .iter()
            .map(|base| {
                let id = name_id("provider", &base.name);
                provider_json((&id, &base.name, base.provider_type), "base", &base.base_url, None)
            })
            .collect()
    }

    /// A 400 for a change to base provider `id`, if it is one.
    fn refuse_base(&self, id: &str, what: &str) -> ServiceResult<()> {
        match self.base_providers().iter().find(|base| json_id(base) == id) {
            Some(base) => Err(ServiceError::Refused(format!(
                "provider {} is a base provider, set up by the server's configuration: {what} is only \
                 supported for providers created at /v1/providers/",
                base["name"]
            ))),
            None => Ok(()),
        }
    }

    /// Whether `base_url` may be called (see the module docs).
    async fn check_url(&self, base_url: &str) -> ServiceResult<()> {
        let allow_internal = self.catalog.allow_internal_provider_urls();
        check_outbound("base_url", base_url, allow_internal).await.map_err(url_refused)
    }

    /// The provider's models, read with its key; a 4xx with its reason.
    async fn list_models(endpoint: &ProviderEndpoint) -> ServiceResult<Vec<String>> {
        let timeout = Duration::from_millis(PROVIDER_LIST_TIMEOUT_MS);
        let mut models = endpoint.list_models(timeout).await.map_err(ServiceError::ProviderCheck)?;
        models.sort();
        models.dedup();
        Ok(models)
    }

    /// `POST /v1/providers/`: checked, stored, then its models read (a
    /// failed read is logged and leaves the list empty, as in Letta).
    pub async fn create(&self, input: ProviderInput) -> ServiceResult<Value> {
        let missing = |field: &str| ServiceError::Invalid(format!("{field} is required"));
        let name = input.name.clone().ok_or_else(|| missing("name"))?;
        let provider_type = input.provider_type.clone().ok_or_else(|| missing("provider_type"))?;
        input.api_key.as_ref().ok_or_else(|| missing("api_key"))?;
        let kind = provider_kind(&provider_type)?;
        if BASE_PROVIDER_NAMES.contains(&name.as_str()) {
            return Err(ServiceError::ProviderNameTaken(format!(
                "{name:?} names a base provider (reserved: {})",
                BASE_PROVIDER_NAMES.join(", ")
            )));
        }
        if self.named(&name).await?.is_some() {
            return Err(ServiceError::ProviderNameTaken(format!("{name:?}")));
        }
        let base_url =
            given(&input.base_url).or(kind.default_base_url.map(str::to_string)).ok_or_else(|| {
                ServiceError::Invalid(format!("base_url is required for provider_type {provider_type:?}"))
            })?;
        let api_key = given(&input.api_key);
        if kind.family == ApiFamily::Anthropic && api_key.is_none() {
            return Err(ServiceError::Invalid("an anthropic provider needs a non-empty api_key".into()));
        }
        self.check_url(&base_url).await?;
        let now = self.env.clock.wall_ms();
        let record = ProviderRecord {
            id: new_id("provider", self.env.rng.as_ref()),
            name,
            provider_type,
            api_key,
            access_key: given(&input.access_key),
            base_url,
            region: given(&input.region),
            api_version: given(&input.api_version),
            models: Vec::new(),
            last_synced_ms: None,
            created_ms: now,
            updated_ms: now,
        };
        record.check().map_err(ServiceError::Invalid)?;
        let created = self.record(ProviderCommand::Create(Box::new(record))).await?;
        match self.sync(&created, kind).await {
            Ok(synced) => Ok(byok_json(&synced)),
            Err(err) => {
                tracing::warn!(provider = %created.name, error = %err, "cannot read the new provider's models");
                Ok(byok_json(&created))
            }
        }
    }

    /// Reads provider `record`'s models and stores them.
    async fn sync(&self, record: &ProviderRecord, kind: &ProviderKind) -> ServiceResult<ProviderRecord> {
        let models = Self::list_models(&endpoint_of(kind, &record.base_url, record.api_key.clone())).await?;
        let synced_ms = self.env.clock.wall_ms();
        self.record(ProviderCommand::SetModels { id: record.id.clone(), models, synced_ms }).await
    }

    /// `GET /v1/providers/`: the base providers, then the created ones in
    /// creation order (newest first unless `order=asc`), paged by id.
    pub async fn list(&self, filter: &ProviderFilter, page: &Page) -> ServiceResult<Vec<Value>> {
        if let Some(provider_type) = &filter.provider_type {
            if !LETTA_PROVIDER_TYPES.contains(&provider_type.as_str()) {
                return Err(ServiceError::Invalid(format!(
                    "provider_type {provider_type:?} is not a Letta ProviderType"
                )));
            }
        }
        if filter.order_by.as_deref().is_some_and(|order_by| order_by != "created_at") {
            return Err(ServiceError::Invalid("order_by must be \"created_at\"".into()));
        }
        let mut all = self.base_providers();
        all.extend(self.all().await?.iter().map(byok_json));
        let matching: Vec<Value> = all
            .into_iter()
            .filter(|provider| filter.name.as_ref().is_none_or(|name| provider["name"] == name.as_str()))
            .filter(|provider| {
                filter.provider_type.as_ref().is_none_or(|kind| provider["provider_type"] == kind.as_str())
            })
            .collect();
        Ok(paginate(matching, json_id, page))
    }

    /// `GET /v1/providers/{id}`, a base provider or a created one.
    pub async fn get(&self, provider_id: &str) -> ServiceResult<Value> {
        if let Some(base) = self.base_providers().into_iter().find(|base| json_id(base) == provider_id) {
            return Ok(base);
        }
        Ok(byok_json(&self.record(ProviderCommand::Get { id: provider_id.to_string() }).await?))
    }

    /// `PATCH /v1/providers/{id}`: Letta's `ProviderUpdate` (`api_key`
    /// required; the other fields given replace the stored ones).
    pub async fn modify(&self, provider_id: &str, input: ProviderInput) -> ServiceResult<Value> {
        self.refuse_base(provider_id, "modifying")?;
        if input.name.is_some() || input.provider_type.is_some() {
            return Err(ServiceError::Invalid(
                "name and provider_type cannot be modified (Letta's ProviderUpdate has neither)".into(),
            ));
        }
        let api_key =
            input.api_key.as_ref().ok_or_else(|| ServiceError::Invalid("api_key is required".into()))?;
        let before = self.record(ProviderCommand::Get { id: provider_id.to_string() }).await?;
        let kind = provider_kind(&before.provider_type)?;
        let base_url = given(&input.base_url).unwrap_or_else(|| before.base_url.clone());
        if base_url != before.base_url {
            self.check_url(&base_url).await?;
        }
        let api_key = Some(api_key.clone()).filter(|key| !key.is_empty());
        if kind.family == ApiFamily::Anthropic && api_key.is_none() {
            return Err(ServiceError::Invalid("an anthropic provider needs a non-empty api_key".into()));
        }
        let now = ProviderRecord {
            api_key,
            access_key: given(&input.access_key).or_else(|| before.access_key.clone()),
            base_url,
            region: given(&input.region).or_else(|| before.region.clone()),
            api_version: given(&input.api_version).or_else(|| before.api_version.clone()),
            updated_ms: self.env.clock.wall_ms().max(before.updated_ms),
            ..before
        };
        now.check().map_err(ServiceError::Invalid)?;
        Ok(byok_json(&self.record(ProviderCommand::Replace(Box::new(now))).await?))
    }

    /// `DELETE /v1/providers/{id}`: the provider, its key and its models;
    /// agents on it fail their next turn with an error naming it.
    pub async fn delete(&self, provider_id: &str) -> ServiceResult<Value> {
        self.refuse_base(provider_id, "deleting")?;
        let gone = self.record(ProviderCommand::Delete { id: provider_id.to_string() }).await?;
        Ok(json!({"message": format!("Provider id={} successfully deleted", gone.id)}))
    }

    /// `POST /v1/providers/check`: asks the provider for its models with
    /// the key given; nothing is stored.
    pub async fn check(&self, input: ProviderInput) -> ServiceResult<Value> {
        let provider_type = input
            .provider_type
            .clone()
            .ok_or_else(|| ServiceError::Invalid("provider_type is required".into()))?;
        let kind = provider_kind(&provider_type)?;
        let api_key =
            given(&input.api_key).ok_or_else(|| ServiceError::Invalid("api_key is required".into()))?;
        let base_url =
            given(&input.base_url).or(kind.default_base_url.map(str::to_string)).ok_or_else(|| {
                ServiceError::Invalid(format!("base_url is required for provider_type {provider_type:?}"))
            })?;
        self.check_url(&base_url).await?;
        Self::list_models(&endpoint_of(kind, &base_url, Some(api_key))).await?;
        Ok(json!({"message": format!("Valid api key for provider_type={provider_type}")}))
    }

    /// `POST /v1/providers/{id}/check`: the stored provider checked with
    /// its stored key (a base provider with the configured key).
    pub async fn check_existing(&self, provider_id: &str) -> ServiceResult<Value> {
        let timeout = Duration::from_millis(PROVIDER_LIST_TIMEOUT_MS);
        for base in self.catalog.base_providers() {
            if name_id("provider", &base.name) == provider_id {
                self.catalog
                    .list_base_models(&base.name, timeout)
                    .await
                    .map_err(ServiceError::ProviderCheck)?;
                return Ok(
                    json!({"message": format!("Valid api key for provider_type={}", base.provider_type)}),
                );
            }
        }
        let record = self.record(ProviderCommand::Get { id: provider_id.to_string() }).await?;
        let kind = provider_kind(&record.provider_type)?;
        self.check_url(&record.base_url).await?;
        Self::list_models(&endpoint_of(kind, &record.base_url, record.api_key.clone())).await?;
        Ok(json!({"message": format!("Valid api key for provider_type={}", record.provider_type)}))
    }

    /// `PATCH /v1/providers/{id}/refresh`: reads the provider's models again
    /// and stores them (models gone from the listing are gone from
    /// `GET /v1/models/`); the provider with its new `last_synced`.
    pub async fn refresh(&self, provider_id: &str) -> ServiceResult<Value> {
        if self.base_providers().iter().any(|base| json_id(base) == provider_id) {
            return Err(ServiceError::Refused("Refresh is only supported for BYOK providers".into()));
        }
        let record = self.record(ProviderCommand::Get { id: provider_id.to_string() }).await?;
        let kind = provider_kind(&record.provider_type)?;
        self.check_url(&record.base_url).await?;
        Ok(byok_json(&self.sync(&record, kind).await?))
    }

    /// The settings of model `handle` (or the configured default): a
    /// created provider's when the handle's prefix names one, which must
    /// list the model; else the configured catalog's.
    pub async fn resolve_llm(&self, handle: Option<&str>) -> ServiceResult<LlmSettings> {
        let handle = handle.or(self.catalog.default_model());
        let Some((record, kind, model)) = self.byok_model(handle).await? else {
            return Ok(self.catalog.resolve_llm(handle)?);
        };
        let endpoint = endpoint_of(kind, &record.base_url, None);
        Ok(LlmSettings {
            handle: format!("{}/{model}", record.name),
            provider: kind.family.provider().to_string(),
            model,
            endpoint: endpoint.base_url,
            context_window: CONTEXT_WINDOW_TOKENS_DEFAULT,
            max_tokens: COMPLETION_TOKENS_DEFAULT,
            temperature: 0.7,
            byok_provider: Some(record.name),
        })
    }

    /// The settings of embedding `handle`: as [`Self::resolve_llm`], for
    /// an OpenAI-compatible created provider.
    pub async fn resolve_embedding(&self, handle: Option<&str>) -> ServiceResult<EmbeddingSettings> {
        let Some((record, kind, model)) = self.byok_model(handle).await? else {
            return Ok(self.catalog.resolve_embedding(handle)?);
        };
        if kind.family != ApiFamily::OpenAi {
            return Err(ServiceError::Invalid(format!(
                "embedding {:?}: provider {:?} ({}) serves no embeddings",
                handle.unwrap_or_default(),
                record.name,
                record.provider_type
            )));
        }
        Ok(EmbeddingSettings {
            handle: format!("{}/{model}", record.name),
            model,
            dim: REMOTE_EMBEDDING_DIMENSIONS_COUNT_DEFAULT,
            byok_provider: Some(record.name),
        })
    }

    /// The created provider `handle`'s prefix names, its kind and the
    /// model, which it must list; `None` when the prefix names none.
    async fn byok_model(
        &self,
        handle: Option<&str>,
    ) -> ServiceResult<Option<(ProviderRecord, &'static ProviderKind, String)>> {
        let Some((name, model)) = handle.and_then(|handle| handle.split_once('/')) else {
            return Ok(None);
        };
        if BASE_PROVIDER_NAMES.contains(&name) {
            return Ok(None);
        }
        let Some(record) = self.named(name).await? else {
            return Ok(None);
        };
        if !record.models.iter().any(|listed| listed == model) {
            return Err(ServiceError::Invalid(format!(
                "model {model:?} is not among the {} models provider {name:?} listed at its last sync; \
                 PATCH /v1/providers/{}/refresh reads them again (see GET /v1/models/)",
                record.models.len(),
                record.id
            )));
        }
        let kind = provider_kind(&record.provider_type)?;
        Ok(Some((record, kind, model.to_string())))
    }

    /// `GET /v1/models/`: the configured providers' models, then each
    /// created provider's chat models, as `<name>/<model>`, filtered.
    pub async fn llm_models(&self, filter: &ModelFilter) -> ServiceResult<Vec<Value>> {
        let mut models = self.catalog.llm_models().await;
        for record in self.all().await? {
            let Some(kind) = listable_kind(&record) else { continue };
            let endpoint = endpoint_of(kind, &record.base_url, None);
            let source = ModelSource {
                provider_name: &record.name,
                provider_type: &record.provider_type,
                endpoint_type: kind.family.provider(),
                endpoint: &endpoint.base_url,
                category: "byok",
            };
            models.extend(
                record.models.iter().filter(|id| !is_embedding_model(id)).map(|id| model_json(&source, id)),
            );
        }
        models.retain(|model| filter.accepts(model));
        Ok(models)
    }

    /// `GET /v1/models/embedding`: the configured embeddings, then the
    /// embedding models of each created OpenAI-compatible provider.
    pub async fn embedding_models(&self) -> ServiceResult<Vec<Value>> {
        let mut models = self.catalog.embedding_models().await;
        for record in self.all().await? {
            let Some(kind) = listable_kind(&record) else { continue };
            if kind.family != ApiFamily::OpenAi {
                continue;
            }
            let endpoint = endpoint_of(kind, &record.base_url, None);
            models.extend(
                record
                    .models
                    .iter()
                    .filter(|id| is_embedding_model(id))
                    .map(|id| embedding_json(&record.name, &record.provider_type, &endpoint.base_url, id)),
            );
        }
        Ok(models)
    }

    /// Where and with which key to call created provider `name`, its URL
    /// checked again; an error naming it when it is gone or refused.
    pub async fn endpoint(&self, name: &str) -> Result<ProviderEndpoint, LlmError> {
        let record = self
            .named(name)
            .await
            .map_err(|err| unavailable(name, format!("cannot read it: {err}")))?
            .ok_or_else(|| {
                unavailable(
                    name,
                    "it was deleted; create a provider of that name again (POST /v1/providers/) or use an agent on another model",
                )
            })?;
        let kind = provider_kind(&record.provider_type).map_err(|err| unavailable(name, err.to_string()))?;
        self.check_url(&record.base_url).await.map_err(|err| unavailable(name, err.to_string()))?;
        Ok(endpoint_of(kind, &record.base_url, record.api_key.clone()))
    }

    pub async fn shutdown(&self) {
        self.store.shutdown().await;
    }
}

/// The [`ChatModel`] the agent service uses: a model of a created provider
/// goes to that provider with its key (looked up at every call, so a new
/// key or a deletion takes effect at once); any other to `base`, the
/// configured providers.
pub struct ProviderRouter {
    base: Arc<dyn ChatModel>,
    providers: Arc<Providers>,
}

impl ProviderRouter {
    pub fn new(base: Arc<dyn ChatModel>, providers: Arc<Providers>) -> Self {
        ProviderRouter { base, providers }
    }

    /// The model of created provider `name`.
    async fn routed(&self, name: &str) -> Result<Box<dyn ChatModel>, LlmError> {
        let endpoint = self.providers.endpoint(name).await?;
        self.base.with_endpoint(&endpoint)
    }
}

impl ChatModel for ProviderRouter {
    fn chat<'a>(&'a self, llm: &'a LlmSettings, request: &'a ChatRequest) -> ModelFuture<'a, ChatResponse> {
        Box::pin(async move {
            match &llm.byok_provider {
                None => self.base.chat(llm, request).await,
                Some(name) => self.routed(name).await?.chat(llm, request).await,
            }
        })
    }

    fn chat_streaming<'a>(
        &'a self,
        llm: &'a LlmSettings,
        request: &'a ChatRequest,
        on_delta: &'a mut (dyn FnMut(ChatDelta) + Send),
    ) -> ModelFuture<'a, ChatResponse> {
        Box::pin(async move {
            match &llm.byok_provider {
                None => self.base.chat_streaming(llm, request, on_delta).await,
                Some(name) => self.routed(name).await?.chat_streaming(llm, request, on_delta).await,
            }
        })
    }

    fn embed<'a>(
        &'a self,
        settings: &'a EmbeddingSettings,
        texts: &'a [String],
    ) -> ModelFuture<'a, Vec<Vec<f32>>> {
        Box::pin(async move {
            match &settings.byok_provider {
                None => self.base.embed(settings, texts).await,
                Some(name) => self.routed(name).await?.embed(settings, texts).await,
            }
        })
    }

    fn with_endpoint(&self, endpoint: &ProviderEndpoint) -> Result<Box<dyn ChatModel>, LlmError> {
        self.base.with_endpoint(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_url_each_client_adds_its_paths_to() {
        let openai = provider_kind("openai").unwrap();
        let vllm = provider_kind("vllm").unwrap();
        let anthropic = provider_kind("anthropic").unwrap();
        assert_eq!(endpoint_of(openai, "https://x.example/v1/", None).base_url, "https://x.example/v1");
        assert_eq!(endpoint_of(vllm, "http://10.0.0.2:8000", None).base_url, "http://10.0.0.2:8000/v1");
        assert_eq!(endpoint_of(vllm, "http://10.0.0.2:8000/v1", None).base_url, "http://10.0.0.2:8000/v1");
        let claude = endpoint_of(anthropic, "https://api.anthropic.com/v1", Some("k".into()));
        assert_eq!(
            (claude.base_url.as_str(), claude.family),
            ("https://api.anthropic.com", ApiFamily::Anthropic)
        );
        assert_eq!(anthropic.default_base_url, Some("https://api.anthropic.com/v1"));
    }

    #[test]
    fn only_callable_types_are_accepted_and_the_refusal_names_them() {
        for kind in &PROVIDER_KINDS {
            assert!(LETTA_PROVIDER_TYPES.contains(&kind.provider_type), "{} is Letta's", kind.provider_type);
        }
        let ServiceError::Invalid(reason) = provider_kind("bedrock").unwrap_err() else { panic!("invalid") };
        assert!(reason.starts_with("provider_type \"bedrock\" is not served by Kelpie; Kelpie can call: openai, anthropic, ollama"), "{reason}");
        let ServiceError::Invalid(reason) = provider_kind("gopher").unwrap_err() else { panic!("invalid") };
        assert!(reason.contains("\"gopher\" is unknown"), "{reason}");
    }

    #[test]
    fn the_request_debug_hides_the_key() {
        let input = ProviderInput {
            name: Some("n".into()),
            api_key: Some("sk-hidden".into()),
            ..ProviderInput::default()
        };
        assert!(!format!("{input:?}").contains("sk-hidden"));
    }
}
