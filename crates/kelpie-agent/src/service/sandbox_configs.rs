//! Letta's `/v1/sandbox-config` API over Kelpie's own sandboxes: the one
//! `local` configuration (its packages, installed for every tool when
//! `use_venv` is set) and the environment variables every tool call gets.
//! `e2b` and `modal` configurations are refused: Kelpie runs tool code in
//! its own sandboxes, never on a third party's.
//!
//! Variable values are secrets: stored, handed to tool calls, never sent
//! back (responses carry an empty `value`).

use std::sync::Arc;

use kelpie_core::{ActorId, Env, Error};
use kelpie_runtime::Runtime;
use kelpie_tools::pip::PipRequirement;
use kelpie_tools::ToolRunner;
use serde_json::{json, Value};

use crate::actors::sandbox_config_store::{
    EnvVarRecord, LocalConfig, SandboxConfigActor, SandboxConfigCommand, SandboxConfigRecord,
    SandboxConfigReply, SandboxConfigState, SANDBOX_CONFIG_ACTOR,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{new_id, rfc3339_micros};
use crate::page::{json_id, paginate, Page};

/// What a tool call gets from the sandbox configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolSandboxSettings {
    pub env: Vec<(String, String)>,
    /// Installed for every tool (the local configuration's, with `use_venv`).
    pub requirements: Vec<PipRequirement>,
}

pub struct SandboxConfigs {
    store: Runtime<SandboxConfigActor>,
    runner: Arc<ToolRunner>,
    env: Env,
}

fn config_json(record: &SandboxConfigRecord) -> Value {
    json!({
        "id": record.id, "type": "local", "config": record.config, "organization_id": null,
        "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(record.created_ms), "updated_at": rfc3339_micros(record.updated_ms),
    })
}

fn env_json(var: &EnvVarRecord) -> Value {
    json!({
        "id": var.id, "key": var.key, "value": "", "description": var.description,
        "sandbox_config_id": var.config_id, "organization_id": null, "value_enc": null,
        "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(var.created_ms), "updated_at": rfc3339_micros(var.updated_ms),
    })
}

/// Which of Letta's three configuration shapes `config` is: the one whose
/// own fields it uses most; `local` on a tie.
fn config_type(config: &serde_json::Map<String, Value>) -> &'static str {
    let strings = config
        .get("pip_requirements")
        .and_then(Value::as_array)
        .is_some_and(|reqs| reqs.iter().any(Value::is_string));
    let score = |keys: &[&str]| {
        keys.iter().filter(|key| config.contains_key(**key)).count()
            + usize::from(strings && keys.contains(&"pip_requirements"))
    };
    let local = score(&["sandbox_dir", "use_venv", "venv_name"]);
    let e2b = score(&["timeout", "template", "pip_requirements"]);
    let modal = score(&["timeout", "pip_requirements", "npm_requirements", "language"]);
    if modal > e2b && modal > local {
        "modal"
    } else if e2b > local {
        "e2b"
    } else {
        "local"
    }
}

fn invalid(reason: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(reason.into())
}

/// A local configuration from a request's `config` object.
fn local_config(config: &Value) -> ServiceResult<LocalConfig> {
    let object = config.as_object().ok_or_else(|| invalid("config must be an object"))?;
    match config_type(object) {
        "local" => {}
        other => {
            return Err(invalid(format!(
                "{other} sandbox configurations are not supported: Kelpie runs tool code in its own sandboxes (configure them with sandbox.backend); use a local configuration"
            )))
        }
    }
    if object.get("sandbox_dir").is_some_and(|dir| !dir.is_null()) {
        return Err(invalid(
            "sandbox_dir is not supported: every tool call gets its own private working directory",
        ));
    }
    let use_venv = match object.get("use_venv") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(invalid("use_venv must be a boolean")),
    };
    let venv_name = match object.get("venv_name") {
        None | Some(Value::Null) => "venv".to_string(),
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        Some(_) => return Err(invalid("venv_name must be a non-empty string")),
    };
    let pip_requirements: Vec<PipRequirement> = match object.get("pip_requirements") {
        None | Some(Value::Null) => Vec::new(),
        Some(reqs) => serde_json::from_value(reqs.clone())
            .map_err(|e| invalid(format!("pip_requirements must be a list of {{name, version}}: {e}")))?,
    };
    let pip_requirements = kelpie_tools::pip::normalize(&pip_requirements)?;
    Ok(LocalConfig { sandbox_dir: None, use_venv, venv_name, pip_requirements })
}

fn check_var(key: &str, value: &str) -> ServiceResult<()> {
    Ok(kelpie_tools::runner::check_env(&[(key.to_string(), value.to_string())])?)
}

impl SandboxConfigs {
    pub(crate) fn new(store: Runtime<SandboxConfigActor>, runner: Arc<ToolRunner>, env: Env) -> Self {
        SandboxConfigs { store, runner, env }
    }

    async fn invoke(&self, command: SandboxConfigCommand) -> ServiceResult<SandboxConfigReply> {
        let actor_id = ActorId::new(SANDBOX_CONFIG_ACTOR.0, SANDBOX_CONFIG_ACTOR.1)?;
        self.store.invoke(&actor_id, command).await.map_err(|err| match err {
            Error::NotFound { kind: "sandbox config", id } => ServiceError::SandboxConfigNotFound(id),
            Error::NotFound { kind: "sandbox environment variable", id } => {
                ServiceError::SandboxEnvNotFound(id)
            }
            other => ServiceError::from(other),
        })
    }

    async fn config(&self, command: SandboxConfigCommand) -> ServiceResult<Value> {
        match self.invoke(command).await? {
            SandboxConfigReply::Config(record) => Ok(config_json(&record)),
            _ => Err(unexpected("a sandbox config command")),
        }
    }

    async fn state(&self) -> ServiceResult<SandboxConfigState> {
        match self.invoke(SandboxConfigCommand::Get).await? {
            SandboxConfigReply::State(state) => Ok(*state),
            _ => Err(unexpected("sandbox config get")),
        }
    }

    fn fresh(&self, config: LocalConfig) -> SandboxConfigRecord {
        let now = self.env.clock.wall_ms();
        SandboxConfigRecord {
            id: new_id("sandbox", self.env.rng.as_ref()),
            config,
            created_ms: now,
            updated_ms: now,
        }
    }

    /// Installs the configuration's packages when it asks for them, so a
    /// requirement that cannot install is refused before it is stored.
    async fn install(&self, config: &LocalConfig) -> ServiceResult<()> {
        if config.use_venv {
            self.runner.ensure_requirements(&config.pip_requirements).await?;
        }
        Ok(())
    }

    /// `POST /v1/sandbox-config/` and `POST /v1/sandbox-config/local`.
    pub async fn upsert(&self, config: &Value) -> ServiceResult<Value> {
        let config = local_config(config)?;
        self.install(&config).await?;
        self.config(SandboxConfigCommand::Upsert { fresh: Box::new(self.fresh(config)) }).await
    }

    /// `POST /v1/sandbox-config/local/default`.
    pub async fn local_default(&self) -> ServiceResult<Value> {
        self.config(SandboxConfigCommand::GetOrCreate { fresh: Box::new(self.fresh(LocalConfig::default())) })
            .await
    }

    /// `POST /v1/sandbox-config/e2b/default`: refused.
    pub fn e2b_default(&self) -> ServiceResult<Value> {
        Err(invalid(
            "e2b sandboxes are not supported: Kelpie runs tool code in its own sandboxes (sandbox.backend)",
        ))
    }

    pub async fn list(&self, sandbox_type: Option<&str>, page: &Page) -> ServiceResult<Vec<Value>> {
        match sandbox_type {
            None | Some("local") => {}
            Some("e2b" | "modal") => return Ok(Vec::new()),
            Some(other) => {
                return Err(invalid(format!("sandbox_type {other:?} is not one of local, e2b, modal")))
            }
        }
        let all: Vec<Value> = self.state().await?.local.iter().map(config_json).collect();
        Ok(paginate(all, json_id, page))
    }

    pub async fn update(&self, id: &str, config: &Value) -> ServiceResult<Value> {
        let config = local_config(config)?;
        self.install(&config).await?;
        let now_ms = self.env.clock.wall_ms();
        self.config(SandboxConfigCommand::Update { id: id.to_string(), config: Box::new(config), now_ms })
            .await
    }

    pub async fn delete(&self, id: &str) -> ServiceResult<()> {
        self.invoke(SandboxConfigCommand::Delete { id: id.to_string() }).await?;
        Ok(())
    }

    /// `POST /v1/sandbox-config/local/recreate-venv`: installs the local
    /// configuration's packages afresh.
    pub async fn recreate_local_environment(&self) -> ServiceResult<Value> {
        let record =
            self.state().await?.local.ok_or_else(|| ServiceError::SandboxConfigNotFound("local".into()))?;
        self.runner.forget_requirements(&record.config.pip_requirements)?;
        self.install(&record.config).await?;
        Ok(config_json(&record))
    }

    pub async fn add_env(
        &self,
        config_id: &str,
        key: String,
        value: String,
        description: Option<String>,
    ) -> ServiceResult<Value> {
        check_var(&key, &value)?;
        let now = self.env.clock.wall_ms();
        let var = EnvVarRecord {
            id: new_id("sandbox-env", self.env.rng.as_ref()),
            config_id: config_id.to_string(),
            key,
            value,
            description,
            created_ms: now,
            updated_ms: now,
        };
        match self.invoke(SandboxConfigCommand::AddEnv(Box::new(var))).await? {
            SandboxConfigReply::Env(var) => Ok(env_json(&var)),
            _ => Err(unexpected("sandbox env add")),
        }
    }

    pub async fn list_env(&self, config_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let state = self.state().await?;
        if state.local.as_ref().is_none_or(|local| local.id != config_id) {
            return Err(ServiceError::SandboxConfigNotFound(config_id.to_string()));
        }
        let all: Vec<Value> =
            state.env.iter().filter(|var| var.config_id == config_id).map(env_json).collect();
        Ok(paginate(all, json_id, page))
    }

    pub async fn update_env(
        &self,
        id: &str,
        key: Option<String>,
        value: Option<String>,
        description: Option<String>,
    ) -> ServiceResult<Value> {
        check_var(key.as_deref().unwrap_or("KEY"), value.as_deref().unwrap_or_default())?;
        let now_ms = self.env.clock.wall_ms();
        let command = SandboxConfigCommand::UpdateEnv { id: id.to_string(), key, value, description, now_ms };
        match self.invoke(command).await? {
            SandboxConfigReply::Env(var) => Ok(env_json(&var)),
            _ => Err(unexpected("sandbox env update")),
        }
    }

    pub async fn delete_env(&self, id: &str) -> ServiceResult<()> {
        self.invoke(SandboxConfigCommand::DeleteEnv { id: id.to_string() }).await?;
        Ok(())
    }

    /// The environment and packages the sandbox configuration gives every
    /// tool call.
    pub async fn tool_settings(&self) -> ServiceResult<ToolSandboxSettings> {
        let state = self.state().await?;
        let env = state.env.iter().map(|var| (var.key.clone(), var.value.clone())).collect();
        let requirements = match state.local {
            Some(local) if local.config.use_venv => local.config.pip_requirements,
            _ => Vec::new(),
        };
        Ok(ToolSandboxSettings { env, requirements })
    }

    pub async fn shutdown(&self) {
        self.store.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(config: Value) -> &'static str {
        config_type(config.as_object().unwrap())
    }

    #[test]
    fn the_shape_of_a_config_names_its_type() {
        assert_eq!(kind(json!({})), "local");
        assert_eq!(kind(json!({"use_venv": true, "pip_requirements": [{"name": "x"}]})), "local");
        assert_eq!(kind(json!({"template": "t", "timeout": 5})), "e2b");
        assert_eq!(kind(json!({"pip_requirements": ["numpy"]})), "e2b");
        assert_eq!(kind(json!({"language": "typescript", "npm_requirements": ["x"]})), "modal");
    }

    #[test]
    fn local_configs_are_checked() {
        assert_eq!(local_config(&json!({})).unwrap(), LocalConfig::default());
        let config = local_config(
            &json!({"use_venv": true, "pip_requirements": [{"name": "b"}, {"name": "a", "version": "1"}]}),
        )
        .unwrap();
        assert_eq!(
            config.pip_requirements.iter().map(PipRequirement::spec).collect::<Vec<_>>(),
            ["a==1", "b"]
        );
        for (bad, reason) in [
            (json!({"template": "x"}), "e2b sandbox configurations are not supported"),
            (json!({"sandbox_dir": "/tmp"}), "sandbox_dir is not supported"),
            (json!({"use_venv": "yes"}), "use_venv must be a boolean"),
            (json!({"use_venv": true, "pip_requirements": [{"name": "--pre"}]}), "pip requirement"),
            (json!([]), "config must be an object"),
        ] {
            let err = local_config(&bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}
