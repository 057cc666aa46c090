//! The sandbox configuration store: one actor holding the server's `local`
//! sandbox configuration (Letta keeps one per sandbox type; Kelpie runs only
//! its own sandboxes, so `local` is the only type) and the environment
//! variables every tool call is given. One transaction per command.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_tools::pip::PipRequirement;
use serde::{Deserialize, Serialize};

/// The store's own actor id (namespace, id).
pub const SANDBOX_CONFIG_ACTOR: (&str, &str) = ("sandbox-config", "all");
/// Most environment variables of the sandbox configuration.
pub const SANDBOX_ENV_COUNT_MAX: usize = 64;

/// Letta's `LocalSandboxConfig`, as Kelpie honours it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalConfig {
    /// Always `None`: each tool call gets its own private directory.
    pub sandbox_dir: Option<String>,
    /// Whether `pip_requirements` are installed for every tool.
    pub use_venv: bool,
    pub venv_name: String,
    pub pip_requirements: Vec<PipRequirement>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            sandbox_dir: None,
            use_venv: false,
            venv_name: "venv".into(),
            pip_requirements: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfigRecord {
    pub id: String,
    pub config: LocalConfig,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVarRecord {
    pub id: String,
    pub config_id: String,
    pub key: String,
    pub value: String,
    pub description: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxConfigState {
    pub local: Option<SandboxConfigRecord>,
    pub env: Vec<EnvVarRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum SandboxConfigCommand {
    /// Creates the local configuration, or replaces its settings (keeping
    /// its id, creation time and variables) when it exists.
    Upsert {
        fresh: Box<SandboxConfigRecord>,
    },
    /// Creates the local configuration with `fresh` unless one exists.
    GetOrCreate {
        fresh: Box<SandboxConfigRecord>,
    },
    /// Replaces the settings of configuration `id`.
    Update {
        id: String,
        config: Box<LocalConfig>,
        now_ms: u64,
    },
    /// Deletes configuration `id` and its variables.
    Delete {
        id: String,
    },
    Get,
    /// Adds a variable to configuration `config_id`; its key must be new.
    AddEnv(Box<EnvVarRecord>),
    /// Changes variable `id`: its key (still unique), value or description.
    UpdateEnv {
        id: String,
        key: Option<String>,
        value: Option<String>,
        description: Option<String>,
        now_ms: u64,
    },
    DeleteEnv {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum SandboxConfigReply {
    Config(Box<SandboxConfigRecord>),
    State(Box<SandboxConfigState>),
    Env(Box<EnvVarRecord>),
    Done,
}

pub struct SandboxConfigActor;

type Ctx<'a> = ActorContext<'a, SandboxConfigState>;

fn config_not_found(id: &str) -> Error {
    Error::NotFound { kind: "sandbox config", id: id.to_string() }
}

fn env_not_found(id: &str) -> Error {
    Error::NotFound { kind: "sandbox environment variable", id: id.to_string() }
}

fn check_key_free(
    state: &SandboxConfigState,
    config_id: &str,
    key: &str,
    except: Option<&str>,
) -> Result<()> {
    let taken = state
        .env
        .iter()
        .any(|var| var.config_id == config_id && var.key == key && Some(var.id.as_str()) != except);
    if taken {
        return Err(Error::validation(
            "key",
            format!("the sandbox configuration already has a variable {key}"),
        ));
    }
    Ok(())
}

fn add_env(ctx: &mut Ctx<'_>, var: EnvVarRecord) -> Result<SandboxConfigReply> {
    if ctx.state.local.as_ref().is_none_or(|local| local.id != var.config_id) {
        return Err(config_not_found(&var.config_id));
    }
    check_key_free(ctx.state, &var.config_id, &var.key, None)?;
    if ctx.state.env.len() >= SANDBOX_ENV_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "sandbox environment variables".into(),
            actual: ctx.state.env.len() as u64 + 1,
            limit_name: "SANDBOX_ENV_COUNT_MAX",
            limit: SANDBOX_ENV_COUNT_MAX as u64,
        });
    }
    ctx.state.env.push(var.clone());
    Ok(SandboxConfigReply::Env(Box::new(var)))
}

fn update_env(
    ctx: &mut Ctx<'_>,
    id: &str,
    (key, value, description): (Option<String>, Option<String>, Option<String>),
    now_ms: u64,
) -> Result<SandboxConfigReply> {
    let index = ctx.state.env.iter().position(|var| var.id == id).ok_or_else(|| env_not_found(id))?;
    if let Some(key) = &key {
        check_key_free(ctx.state, &ctx.state.env[index].config_id.clone(), key, Some(id))?;
    }
    let var = &mut ctx.state.env[index];
    var.key = key.unwrap_or(var.key.clone());
    var.value = value.unwrap_or(var.value.clone());
    var.description = description.or(var.description.clone());
    var.updated_ms = now_ms;
    Ok(SandboxConfigReply::Env(Box::new(var.clone())))
}

impl Actor for SandboxConfigActor {
    type State = SandboxConfigState;
    type Message = SandboxConfigCommand;
    type Reply = SandboxConfigReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: SandboxConfigCommand) -> Result<SandboxConfigReply> {
        let state = &mut *ctx.state;
        match command {
            SandboxConfigCommand::Upsert { fresh } => {
                let record = match state.local.take() {
                    Some(existing) => {
                        SandboxConfigRecord { config: fresh.config, updated_ms: fresh.updated_ms, ..existing }
                    }
                    None => *fresh,
                };
                state.local = Some(record.clone());
                Ok(SandboxConfigReply::Config(Box::new(record)))
            }
            SandboxConfigCommand::GetOrCreate { fresh } => {
                let record = state.local.get_or_insert(*fresh).clone();
                Ok(SandboxConfigReply::Config(Box::new(record)))
            }
            SandboxConfigCommand::Update { id, config, now_ms } => {
                let local = state
                    .local
                    .as_mut()
                    .filter(|local| local.id == id)
                    .ok_or_else(|| config_not_found(&id))?;
                local.config = *config;
                local.updated_ms = now_ms;
                Ok(SandboxConfigReply::Config(Box::new(local.clone())))
            }
            SandboxConfigCommand::Delete { id } => {
                if state.local.as_ref().is_none_or(|local| local.id != id) {
                    return Err(config_not_found(&id));
                }
                state.local = None;
                state.env.retain(|var| var.config_id != id);
                Ok(SandboxConfigReply::Done)
            }
            SandboxConfigCommand::Get => Ok(SandboxConfigReply::State(Box::new(state.clone()))),
            SandboxConfigCommand::AddEnv(var) => add_env(ctx, *var),
            SandboxConfigCommand::UpdateEnv { id, key, value, description, now_ms } => {
                update_env(ctx, &id, (key, value, description), now_ms)
            }
            SandboxConfigCommand::DeleteEnv { id } => {
                let before = state.env.len();
                state.env.retain(|var| var.id != id);
                if state.env.len() == before {
                    return Err(env_not_found(&id));
                }
                Ok(SandboxConfigReply::Done)
            }
        }
    }
}
