//! The provider store: one actor holding every LLM provider a user
//! registered (Letta's `/v1/providers`, "bring your own key"), with its key
//! and the model list last read from it, so each change to a provider is
//! one transaction. The providers the configuration sets up are not kept
//! here (see `service::providers`).
//!
//! Names are unique and never change (Letta's `ProviderUpdate` has no
//! name): an agent reaches its provider by the name in its model handle.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

/// The store's own actor id (namespace, id).
pub const PROVIDER_STORE_ACTOR: (&str, &str) = ("provider-store", "all");
/// Most providers a server holds.
pub const PROVIDERS_COUNT_MAX: usize = 1_000;
/// Most models kept of one provider's listing.
pub const PROVIDER_MODELS_COUNT_MAX: usize = 5_000;
/// Longest provider name, in bytes.
pub const PROVIDER_NAME_BYTES_MAX: usize = 128;
/// Longest model id, in bytes.
pub const PROVIDER_MODEL_ID_BYTES_MAX: usize = 256;
/// Longest key (`api_key`, `access_key`), in bytes.
pub const PROVIDER_SECRET_BYTES_MAX: usize = 4_096;
/// Longest `region` or `api_version`, in bytes.
pub const PROVIDER_TEXT_BYTES_MAX: usize = 256;

/// One provider. `api_key` and `access_key` are secrets: no rendering of
/// a provider shows them, and `Debug` hides them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRecord {
    pub id: String,
    pub name: String,
    /// Letta's `ProviderType`, one of those Kelpie can call.
    pub provider_type: String,
    pub api_key: Option<String>,
    pub access_key: Option<String>,
    /// As given, or the type's default.
    pub base_url: String,
    pub region: Option<String>,
    pub api_version: Option<String>,
    /// The model ids the provider listed at the last sync, sorted, unique.
    pub models: Vec<String>,
    /// When the models were last read; `None` when never (the sync at
    /// create failed).
    pub last_synced_ms: Option<u64>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl std::fmt::Debug for ProviderRecord {
    // Keys never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("provider_type", &self.provider_type)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("access_key", &self.access_key.as_ref().map(|_| "<set>"))
            .field("base_url", &self.base_url)
            .field("models", &self.models.len())
            .finish()
    }
}

fn too_long(what: &str, text: &str, limit_name: &str, limit: usize) -> Option<String> {
    (text.len() > limit).then(|| format!("{what} is {} bytes, over {limit_name} = {limit}", text.len()))
}

impl ProviderRecord {
    /// Checks what a client may set; the reason when it is refused. The
    /// provider type and base URL are checked by the service, which knows
    /// the types and the URL rule.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() || self.name.contains('/') {
            return Err(format!(
                "name {:?} must be non-blank without '/' (it is the prefix of its model handles, \"<name>/<model>\")",
                self.name
            ));
        }
        let texts = [
            ("name", Some(&self.name), "PROVIDER_NAME_BYTES_MAX", PROVIDER_NAME_BYTES_MAX),
            ("api_key", self.api_key.as_ref(), "PROVIDER_SECRET_BYTES_MAX", PROVIDER_SECRET_BYTES_MAX),
            ("access_key", self.access_key.as_ref(), "PROVIDER_SECRET_BYTES_MAX", PROVIDER_SECRET_BYTES_MAX),
            ("region", self.region.as_ref(), "PROVIDER_TEXT_BYTES_MAX", PROVIDER_TEXT_BYTES_MAX),
            ("api_version", self.api_version.as_ref(), "PROVIDER_TEXT_BYTES_MAX", PROVIDER_TEXT_BYTES_MAX),
        ];
        for (what, text, limit_name, limit) in texts {
            if let Some(reason) = text.and_then(|text| too_long(what, text, limit_name, limit)) {
                return Err(reason);
            }
        }
        check_models(&self.models)
    }
}

/// A model listing a provider may have: at most
/// [`PROVIDER_MODELS_COUNT_MAX`] ids of 1..=[`PROVIDER_MODEL_ID_BYTES_MAX`]
/// bytes.
pub fn check_models(models: &[String]) -> std::result::Result<(), String> {
    if models.len() > PROVIDER_MODELS_COUNT_MAX {
        return Err(format!(
            "the provider lists {} models, over PROVIDER_MODELS_COUNT_MAX = {PROVIDER_MODELS_COUNT_MAX}",
            models.len()
        ));
    }
    match models.iter().find(|id| id.is_empty() || id.len() > PROVIDER_MODEL_ID_BYTES_MAX) {
        Some(id) => Err(format!(
            "the provider lists a model id of {} bytes; ids must be 1..={PROVIDER_MODEL_ID_BYTES_MAX} (PROVIDER_MODEL_ID_BYTES_MAX)",
            id.len()
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderStoreState {
    /// In creation order.
    pub providers: Vec<ProviderRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum ProviderCommand {
    /// Refused when another provider has the name.
    Create(Box<ProviderRecord>),
    List,
    Get {
        id: String,
    },
    /// The provider named `name`, if any.
    Named {
        name: String,
    },
    /// Replaces the provider `record.id` names; its name must not change.
    Replace(Box<ProviderRecord>),
    /// Stores a fresh model listing of provider `id`, read at `synced_ms`.
    SetModels {
        id: String,
        models: Vec<String>,
        synced_ms: u64,
    },
    Delete {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum ProviderReply {
    Provider(Box<ProviderRecord>),
    /// The answer to [`ProviderCommand::Named`].
    Found(Option<Box<ProviderRecord>>),
    Providers(Vec<ProviderRecord>),
}

pub struct ProviderStoreActor;

type Ctx<'a> = ActorContext<'a, ProviderStoreState>;

fn find<'s>(state: &'s mut ProviderStoreState, id: &str) -> Result<&'s mut ProviderRecord> {
    state
        .providers
        .iter_mut()
        .find(|provider| provider.id == id)
        .ok_or_else(|| Error::NotFound { kind: "provider", id: id.to_string() })
}

fn checked(record: &ProviderRecord) -> Result<()> {
    record.check().map_err(|reason| Error::validation("provider", reason))
}

fn create(ctx: &mut Ctx<'_>, record: ProviderRecord) -> Result<ProviderRecord> {
    checked(&record)?;
    if ctx.state.providers.iter().any(|other| other.name == record.name) {
        return Err(Error::validation("provider", format!("a provider named {:?} exists", record.name)));
    }
    if ctx.state.providers.len() >= PROVIDERS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "providers".into(),
            actual: ctx.state.providers.len() as u64 + 1,
            limit_name: "PROVIDERS_COUNT_MAX",
            limit: PROVIDERS_COUNT_MAX as u64,
        });
    }
    ctx.state.providers.push(record.clone());
    Ok(record)
}

impl Actor for ProviderStoreActor {
    type State = ProviderStoreState;
    type Message = ProviderCommand;
    type Reply = ProviderReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: ProviderCommand) -> Result<ProviderReply> {
        match command {
            ProviderCommand::Create(record) => Ok(ProviderReply::Provider(Box::new(create(ctx, *record)?))),
            ProviderCommand::List => Ok(ProviderReply::Providers(ctx.state.providers.clone())),
            ProviderCommand::Get { id } => {
                Ok(ProviderReply::Provider(Box::new(find(ctx.state, &id)?.clone())))
            }
            ProviderCommand::Named { name } => {
                let found = ctx.state.providers.iter().find(|provider| provider.name == name);
                Ok(ProviderReply::Found(found.cloned().map(Box::new)))
            }
            ProviderCommand::Replace(record) => {
                checked(&record)?;
                let provider = find(ctx.state, &record.id)?;
                assert_eq!(provider.name, record.name, "a provider's name never changes");
                *provider = *record;
                Ok(ProviderReply::Provider(Box::new(provider.clone())))
            }
            ProviderCommand::SetModels { id, models, synced_ms } => {
                check_models(&models).map_err(|reason| Error::validation("provider", reason))?;
                let provider = find(ctx.state, &id)?;
                provider.models = models;
                provider.last_synced_ms = Some(synced_ms);
                provider.updated_ms = provider.updated_ms.max(synced_ms);
                Ok(ProviderReply::Provider(Box::new(provider.clone())))
            }
            ProviderCommand::Delete { id } => {
                let provider = find(ctx.state, &id)?.clone();
                ctx.state.providers.retain(|other| other.id != id);
                Ok(ProviderReply::Provider(Box::new(provider)))
            }
        }
    }
}
