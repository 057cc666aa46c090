//! MCP servers: registering them (stdio, streamable HTTP, SSE), their tools
//! kept as tool records of the tool store (`tool_type` `external_mcp`, so
//! agents attach and call them like any tool), and the clients that reach
//! them (`mcp_clients`, one per server, rebuilt when its config changes).
//!
//! Registering checks the config (a URL on an internal address is refused
//! unless configured; a stdio command must be on the sandbox's PATH), stores
//! the server, then lists its tools; a server that cannot be reached yet is
//! kept, and `refresh` lists its tools later.

use std::collections::BTreeMap;
use std::sync::Arc;

use kelpie_core::Env;
use kelpie_tools::mcp::{url, McpCallResult, McpError, McpTool, McpTransport};
use serde_json::{json, Value};

use crate::actors::tool_store::{
    McpHttpConfig, McpServerConfig, McpServerRecord, McpToolSource, ToolCommand, ToolRecord, ToolReply,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::letta::{custom_tool_json, mcp_server_json, SECRET_MASK};
use crate::limits::TOOL_RETURN_CHARS_MAX;
use crate::requests::{CreateMcpServer, McpServerConfigIn, UpdateMcpServer};
use crate::service::mcp_clients::{http_headers, transport};
use crate::service::mcp_oauth;
use crate::service::tools::ToolService;

/// Longest server name, in characters.
pub const MCP_SERVER_NAME_CHARS_MAX: usize = 128;
/// Most arguments of a stdio command.
pub const MCP_ARGS_COUNT_MAX: usize = 64;
/// Longest argument, in bytes.
pub const MCP_ARG_BYTES_MAX: usize = 64 * 1024;
/// Most custom headers of an HTTP server.
pub const MCP_HEADERS_COUNT_MAX: usize = 32;

fn invalid(reason: String) -> ServiceError {
    ServiceError::Invalid(reason)
}

fn check_name(name: &str) -> ServiceResult<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > MCP_SERVER_NAME_CHARS_MAX || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "server_name must be 1..={MCP_SERVER_NAME_CHARS_MAX} characters without control characters"
        )));
    }
    Ok(())
}

/// `given` unless it is the masked form of `old` (a client sending back
/// what it was shown), in which case `old` is kept.
fn unmasked(given: String, old: Option<&String>) -> String {
    match old {
        Some(old) if given == crate::letta::mask_secret(old) || given == SECRET_MASK => old.clone(),
        _ => given,
    }
}

/// The config `input` describes, over `old` (an update) when given.
fn build_config(input: McpServerConfigIn, old: Option<&McpServerConfig>) -> ServiceResult<McpServerConfig> {
    let kind = match (input.mcp_server_type.as_deref(), old) {
        (Some(kind), _) => kind.to_string(),
        (None, Some(McpServerConfig::Stdio { .. })) => "stdio".into(),
        (None, Some(McpServerConfig::StreamableHttp(_))) => "streamable_http".into(),
        (None, Some(McpServerConfig::Sse(_))) => "sse".into(),
        (None, None) if input.command.is_some() => "stdio".into(),
        (None, None) => "streamable_http".into(),
    };
    match kind.as_str() {
        "stdio" => {
            let (old_command, old_args, old_env) = match old {
                Some(McpServerConfig::Stdio { command, args, env }) => {
                    (Some(command.clone()), args.clone(), env.clone())
                }
                _ => (None, Vec::new(), BTreeMap::new()),
            };
            let command = input
                .command
                .or(old_command)
                .ok_or_else(|| invalid("a stdio MCP server needs a command".into()))?;
            let args = input.args.unwrap_or(old_args);
            if args.len() > MCP_ARGS_COUNT_MAX
                || args.iter().any(|a| a.len() > MCP_ARG_BYTES_MAX || a.contains('\0'))
            {
                return Err(invalid(format!(
                    "args: at most {MCP_ARGS_COUNT_MAX}, each at most {MCP_ARG_BYTES_MAX} bytes without NUL"
                )));
            }
            let env = match input.env {
                Some(env) => env
                    .into_iter()
                    .map(|(k, v)| {
                        let v = unmasked(v, old_env.get(&k));
                        (k, v)
                    })
                    .collect(),
                None => old_env,
            };
            let pairs: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            kelpie_tools::runner::check_env(&pairs)?;
            Ok(McpServerConfig::Stdio { command, args, env })
        }
        "streamable_http" | "sse" => {
            let old_http = match old {
                Some(McpServerConfig::StreamableHttp(http) | McpServerConfig::Sse(http)) => {
                    Some(http.clone())
                }
                _ => None,
            };
            let server_url = input
                .server_url
                .or(old_http.as_ref().map(|h| h.server_url.clone()))
                .ok_or_else(|| invalid(format!("an {kind} MCP server needs a server_url")))?;
            url::parse(&server_url)?;
            let auth_token = match input.auth_token {
                Some(token) => Some(unmasked(token, old_http.as_ref().and_then(|h| h.auth_token.as_ref()))),
                None => old_http.as_ref().and_then(|h| h.auth_token.clone()),
            };
            let auth_header = input.auth_header.or(old_http.as_ref().and_then(|h| h.auth_header.clone()));
            let old_headers = old_http.map(|h| h.custom_headers).unwrap_or_default();
            let custom_headers: BTreeMap<String, String> = match input.custom_headers {
                Some(headers) => headers
                    .into_iter()
                    .map(|(k, v)| {
                        let v = unmasked(v, old_headers.get(&k));
                        (k, v)
                    })
                    .collect(),
                None => old_headers,
            };
            if custom_headers.len() > MCP_HEADERS_COUNT_MAX {
                return Err(invalid(format!("custom_headers: at most {MCP_HEADERS_COUNT_MAX}")));
            }
            let http = McpHttpConfig { server_url, auth_header, auth_token, custom_headers };
            // Header names and values must be sendable.
            for (name, value) in http_headers(&http) {
                let ok = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                    && value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
                if !ok {
                    return Err(invalid(format!("header {name:?} or its value is not valid in HTTP")));
                }
            }
            Ok(match kind.as_str() {
                "sse" => McpServerConfig::Sse(http),
                _ => McpServerConfig::StreamableHttp(http),
            })
        }
        other => Err(invalid(format!(
            "mcp_server_type {other:?} is not one of \"stdio\", \"sse\", \"streamable_http\""
        ))),
    }
}

/// Letta's `ToolExecutionResult` of a call.
pub fn execution_result(outcome: &Result<McpCallResult, McpError>) -> Value {
    match outcome {
        Ok(result) => json!({
            "status": if result.is_error { "error" } else { "success" }, "func_return": result.text,
            "agent_state": null, "stdout": [], "stderr": [], "sandbox_config_fingerprint": null,
        }),
        Err(error) => json!({
            "status": "error", "func_return": error.to_string(), "agent_state": null,
            "stdout": [], "stderr": [error.to_string()], "sandbox_config_fingerprint": null,
        }),
    }
}

/// The `/v1/mcp-servers` operations.
pub struct McpServers {
    tools: Arc<ToolService>,
    /// The OAuth authorizations connect streams await.
    oauth: mcp_oauth::OAuthSessions,
    env: Env,
}

impl McpServers {
    pub(crate) fn new(tools: Arc<ToolService>, env: Env) -> Self {
        McpServers { tools, oauth: mcp_oauth::OAuthSessions::default(), env }
    }

    async fn all(&self) -> ServiceResult<Vec<McpServerRecord>> {
        self.tools.mcp_servers().await
    }

    async fn record(&self, id: &str) -> ServiceResult<McpServerRecord> {
        self.all()
            .await?
            .into_iter()
            .find(|server| server.id == id)
            .ok_or_else(|| ServiceError::McpServerNotFound(id.to_string()))
    }

    async fn stored(&self, command: ToolCommand) -> ServiceResult<McpServerRecord> {
        match self.tools.command(command).await? {
            ToolReply::McpServer(server) => Ok(*server),
            ToolReply::NameTaken(name) => Err(ServiceError::McpServerNameTaken(name)),
            _ => Err(unexpected("an MCP server command")),
        }
    }

    /// Refuses a URL on an internal address now rather than at first use.
    async fn check_reachable(&self, config: &McpServerConfig) -> ServiceResult<()> {
        if let McpServerConfig::StreamableHttp(http) | McpServerConfig::Sse(http) = config {
            url::check(&http.server_url, self.tools.runner().settings().mcp.allow_internal_urls).await?;
        }
        Ok(())
    }

    /// What a create checks of a config beyond its shape: no URL on an
    /// internal address, a stdio command that resolves.
    async fn check_usable(&self, config: &McpServerConfig) -> ServiceResult<()> {
        self.check_reachable(config).await?;
        if let McpTransport::Stdio { command, .. } = transport(config) {
            kelpie_tools::runner::resolve_program(&command)?;
        }
        Ok(())
    }

    pub async fn create(&self, request: CreateMcpServer) -> ServiceResult<Value> {
        self.create_as(self.new_server_id(), request).await
    }

    /// A new server's id, for [`Self::create_as`].
    pub(crate) fn new_server_id(&self) -> String {
        new_id("mcp_server", self.env.rng.as_ref())
    }

    /// Creates the server under `id` (drawn by [`Self::new_server_id`]).
    pub(crate) async fn create_as(&self, id: String, request: CreateMcpServer) -> ServiceResult<Value> {
        assert!(id.starts_with("mcp_server-"), "an MCP server's id: {id}");
        check_name(&request.server_name)?;
        let config = build_config(request.config, None)?;
        self.check_usable(&config).await?;
        let now = self.env.clock.wall_ms();
        let record = McpServerRecord {
            id,
            server_name: request.server_name,
            config,
            created_ms: now,
            updated_ms: now,
        };
        let record = self.stored(ToolCommand::McpCreate(Box::new(record))).await?;
        if let Err(error) = self.sync(&record).await {
            tracing::warn!(server = %record.server_name, %error, "MCP server registered; its tools could not be listed yet (refresh later)");
        }
        Ok(mcp_server_json(&record))
    }

    pub async fn list(&self) -> ServiceResult<Vec<Value>> {
        Ok(self.all().await?.iter().map(mcp_server_json).collect())
    }

    pub async fn get(&self, id: &str) -> ServiceResult<Value> {
        Ok(mcp_server_json(&self.record(id).await?))
    }

    pub async fn update(&self, id: &str, request: UpdateMcpServer) -> ServiceResult<Value> {
        let mut record = self.record(id).await?;
        if let Some(name) = request.server_name {
            check_name(&name)?;
            record.server_name = name;
        }
        if let Some(config) = request.config {
            record.config = build_config(config, Some(&record.config))?;
            self.check_reachable(&record.config).await?;
        }
        record.updated_ms = self.env.clock.wall_ms();
        let record = self.stored(ToolCommand::McpReplace(Box::new(record))).await?;
        if let Err(error) = self.sync(&record).await {
            tracing::warn!(server = %record.server_name, %error, "MCP server updated; its tools could not be listed");
        }
        Ok(mcp_server_json(&record))
    }

    /// Server `id`'s config as `input` would update it, checked as a
    /// create checks it; nothing is stored (see [`Self::set_config`]).
    pub(crate) async fn checked_config(
        &self,
        id: &str,
        input: McpServerConfigIn,
    ) -> ServiceResult<McpServerConfig> {
        let record = self.record(id).await?;
        let config = build_config(input, Some(&record.config))?;
        self.check_usable(&config).await?;
        Ok(config)
    }

    /// Gives server `id` `config` (from [`Self::checked_config`]) and lists
    /// its tools again; setting it again changes nothing but the listing's
    /// freshness (a crash between the two steps is repaired so).
    pub(crate) async fn set_config(&self, id: &str, config: &McpServerConfig) -> ServiceResult<()> {
        let mut record = self.record(id).await?;
        record.config = config.clone();
        record.updated_ms = self.env.clock.wall_ms();
        let record = self.stored(ToolCommand::McpReplace(Box::new(record))).await?;
        assert_eq!(record.config, *config, "the config stored is the one set");
        if let Err(error) = self.sync(&record).await {
            tracing::warn!(server = %record.server_name, %error, "MCP server updated; its tools could not be listed");
        }
        Ok(())
    }

    /// Removes the server and its tools.
    pub async fn delete(&self, id: &str) -> ServiceResult<()> {
        self.tools.command(ToolCommand::McpDelete { id: id.to_string() }).await?;
        self.tools.mcp().forget(id).await;
        Ok(())
    }

    /// The server's tools, as stored.
    pub async fn tools(&self, id: &str) -> ServiceResult<Vec<Value>> {
        self.record(id).await?;
        let tools = self.tools.custom_tools().await?;
        Ok(tools.iter().filter(|tool| is_of(tool, id)).map(custom_tool_json).collect())
    }

    async fn tool(&self, id: &str, tool_id: &str) -> ServiceResult<ToolRecord> {
        self.record(id).await?;
        let tools = self.tools.custom_tools().await?;
        tools
            .into_iter()
            .find(|tool| tool.id == tool_id && is_of(tool, id))
            .ok_or_else(|| ServiceError::ToolNotFound(tool_id.to_string()))
    }

    pub async fn get_tool(&self, id: &str, tool_id: &str) -> ServiceResult<Value> {
        Ok(custom_tool_json(&self.tool(id, tool_id).await?))
    }

    /// Runs the tool once, outside any agent.
    pub async fn run_tool(&self, id: &str, tool_id: &str, args: Value) -> ServiceResult<Value> {
        let tool = self.tool(id, tool_id).await?;
        let args = if args.is_null() { json!({}) } else { args };
        Ok(execution_result(&self.tools.call_mcp(&tool, &args).await))
    }

    /// Lists the server's tools again and stores them: new ones added,
    /// changed ones updated, vanished ones removed.
    pub async fn refresh(&self, id: &str) -> ServiceResult<Value> {
        let record = self.record(id).await?;
        self.sync(&record).await
    }

    async fn sync(&self, server: &McpServerRecord) -> ServiceResult<Value> {
        let listed = self.tools.mcp().list_tools(server).await?;
        let now = self.env.clock.wall_ms();
        let records = listed.iter().map(|tool| self.tool_record(server, tool, now)).collect();
        let command = ToolCommand::McpSyncTools { server_id: server.id.clone(), tools: records };
        match self.tools.command(command).await? {
            ToolReply::McpSynced { added, updated, removed, skipped } => {
                if !skipped.is_empty() {
                    tracing::warn!(server = %server.server_name, ?skipped, "MCP tools skipped: their names are taken by other tools");
                }
                Ok(json!({"added": added, "updated": updated, "deleted": removed, "skipped": skipped}))
            }
            _ => Err(unexpected("an MCP sync")),
        }
    }

    fn tool_record(&self, server: &McpServerRecord, tool: &McpTool, now: u64) -> ToolRecord {
        ToolRecord {
            id: new_id("tool", self.env.rng.as_ref()),
            name: tool.name.clone(),
            description: tool.description.clone(),
            source_code: String::new(),
            json_schema: tool.json_schema(),
            tags: vec![format!("mcp:{}", server.server_name)],
            return_char_limit: TOOL_RETURN_CHARS_MAX,
            metadata: tool.annotations.as_ref().map(|annotations| json!({"mcp_annotations": annotations})),
            pip_requirements: Vec::new(),
            created_ms: now,
            updated_ms: now,
            mcp: Some(McpToolSource {
                server_id: server.id.clone(),
                server_name: server.server_name.clone(),
            }),
            default_requires_approval: false,
        }
    }
}

/// `GET /v1/mcp-servers/connect/{id}`: a fresh connection to a registered
/// server (not the shared client, so a broken server's backoff does not
/// answer for it), reported as Letta's OAuth stream events: the attempt,
/// then `success` with the server's tools or `error` with the reason. A
/// server over HTTP that refuses with a `WWW-Authenticate` challenge goes
/// through the OAuth flow (`mcp_oauth`): `oauth_required`,
/// `authorization_url`, `waiting_for_auth`, then, once the callback
/// brought the code and it was exchanged, the token is stored as the
/// server's bearer token and the tools are listed with it.
impl McpServers {
    /// The first event (`connection_attempt`); the server must be registered.
    pub async fn connect_attempt(&self, id: &str) -> ServiceResult<Value> {
        let record = self.record(id).await?;
        Ok(json!({"event": "connection_attempt", "server_name": record.server_name}))
    }

    /// Every event after the first, handed to `emit` as it happens; the
    /// OAuth callback is `redirect_uri`.
    pub async fn connect(&self, id: &str, redirect_uri: &str, emit: &(dyn Fn(Value) + Send + Sync)) {
        let record = match self.record(id).await {
            Ok(record) => record,
            Err(error) => return emit(error_event(error.to_string())),
        };
        match self.list_fresh(&record.config).await {
            Ok(tools) => emit(success_event(&tools)),
            Err(McpError::AuthRequired { challenge, .. }) => {
                emit(self.authorize(record, &challenge, redirect_uri, emit).await)
            }
            Err(error) => emit(error_event(format!("Connection failed: {error}"))),
        }
    }

    /// The tools of a server with `config`, over a connection of its own.
    async fn list_fresh(&self, config: &McpServerConfig) -> Result<Vec<McpTool>, McpError> {
        if let McpServerConfig::StreamableHttp(http) | McpServerConfig::Sse(http) = config {
            url::check(&http.server_url, self.tools.runner().settings().mcp.allow_internal_urls).await?;
        }
        let client = kelpie_tools::mcp::McpClient::new(
            transport(config),
            self.tools.runner().settings().mcp,
            Arc::clone(self.tools.runner()),
        );
        let listed = client.list_tools().await;
        client.close().await;
        listed
    }

    /// Runs the OAuth flow for `record`; the last event.
    async fn authorize(
        &self,
        record: McpServerRecord,
        challenge: &str,
        redirect_uri: &str,
        emit: &(dyn Fn(Value) + Send + Sync),
    ) -> Value {
        let server_url = match &record.config {
            McpServerConfig::StreamableHttp(http) | McpServerConfig::Sse(http) => http.server_url.clone(),
            McpServerConfig::Stdio { .. } => {
                return error_event("OAuth is not supported for stdio servers".into())
            }
        };
        emit(json!({"event": "oauth_required", "message": "OAuth authentication required"}));
        let allow_internal = self.tools.runner().settings().mcp.allow_internal_urls;
        let client = match mcp_oauth::OAuthClient::new(allow_internal) {
            Ok(client) => client,
            Err(reason) => return error_event(format!("Failed to start OAuth: {reason}")),
        };
        let started = match client
            .start((&server_url, challenge), redirect_uri, &self.oauth, self.env.rng.as_ref())
            .await
        {
            Ok(started) => started,
            Err(reason) => return error_event(format!("Failed to start OAuth: {reason}")),
        };
        emit(
            json!({"event": "authorization_url", "url": started.authorization_url, "session_id": started.session_id()}),
        );
        emit(json!({"event": "waiting_for_auth", "message": "Waiting for user authorization..."}));
        let token = match client.finish(started, &self.oauth, self.env.clock.as_ref()).await {
            Ok(token) => token,
            Err(reason) => return error_event(format!("OAuth failed: {reason}")),
        };
        match self.store_token(&record.id, token).await {
            Ok(stored) => match self.list_fresh(&stored.config).await {
                Ok(tools) => success_event(&tools),
                Err(error) => error_event(format!("Connection failed after authorization: {error}")),
            },
            Err(error) => error_event(format!("the token could not be stored: {error}")),
        }
    }

    /// Makes `token` the bearer token of server `id` (a masked secret like
    /// any `auth_token`), for every later connection.
    async fn store_token(&self, id: &str, token: String) -> ServiceResult<McpServerRecord> {
        let mut record = self.record(id).await?;
        let (McpServerConfig::StreamableHttp(http) | McpServerConfig::Sse(http)) = &mut record.config else {
            return Err(ServiceError::Invalid("only HTTP servers take a token".into()));
        };
        http.auth_header = Some("Authorization".into());
        http.auth_token = Some(token);
        record.updated_ms = self.env.clock.wall_ms();
        self.stored(ToolCommand::McpReplace(Box::new(record))).await
    }

    /// `GET /v1/tools/mcp/oauth/callback`: hands the code (or the
    /// provider's error) to the connect stream awaiting `state`. Letta's
    /// answer on success; an unknown state or the provider's error is 400.
    pub fn oauth_callback(&self, callback: OAuthCallback) -> ServiceResult<Value> {
        let state = callback.state.ok_or_else(|| ServiceError::Refused("Missing state parameter".into()))?;
        let outcome = match (callback.error, callback.code) {
            (Some(error), _) => Err(match callback.error_description {
                Some(description) => format!("OAuth error: {error} - {description}"),
                None => format!("OAuth error: {error}"),
            }),
            (None, Some(code)) if !code.is_empty() => Ok(code),
            (None, _) => Err("Missing authorization code".to_string()),
        };
        let server_url = self
            .oauth
            .complete(&state, outcome.clone())
            .ok_or_else(|| ServiceError::Refused("Invalid or expired state parameter".into()))?;
        match outcome {
            Ok(_) => Ok(
                json!({"status": "success", "message": "Authorization successful", "server_url": server_url}),
            ),
            Err(message) => Err(ServiceError::Refused(message)),
        }
    }
}

/// The query of the OAuth callback.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OAuthCallback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

fn error_event(message: String) -> Value {
    json!({"event": "error", "message": message})
}

fn success_event(tools: &[McpTool]) -> Value {
    json!({"event": "success", "tools": tools.iter().map(mcp_tool_json).collect::<Vec<_>>()})
}

/// Letta's older `/v1/tools/mcp/servers` routes, by server name. Registering
/// here stores the server's tools too, as the newer routes do; "adding" one
/// of its tools answers the stored tool.
impl McpServers {
    async fn named(&self, name: &str) -> ServiceResult<McpServerRecord> {
        self.all()
            .await?
            .into_iter()
            .find(|server| server.server_name == name)
            .ok_or_else(|| ServiceError::McpServerNotFound(name.to_string()))
    }

    /// `{server_name: config}` of every server (`GET /v1/tools/mcp/servers`).
    pub async fn legacy_list(&self) -> ServiceResult<Value> {
        let servers = self.all().await?;
        Ok(servers
            .iter()
            .map(|server| (server.server_name.clone(), legacy_config_json(server)))
            .collect::<serde_json::Map<_, _>>()
            .into())
    }

    async fn legacy_configs(&self) -> ServiceResult<Value> {
        Ok(self.all().await?.iter().map(legacy_config_json).collect::<Vec<_>>().into())
    }

    /// `PUT /v1/tools/mcp/servers`: registers a server; answers every config.
    pub async fn legacy_add(&self, config: Value) -> ServiceResult<Value> {
        let (server_name, config) = legacy_request(config)?;
        self.create(CreateMcpServer { server_name, config }).await?;
        self.legacy_configs().await
    }

    /// `PATCH /v1/tools/mcp/servers/{name}`.
    pub async fn legacy_update(&self, name: &str, body: Value) -> ServiceResult<Value> {
        let server = self.named(name).await?;
        let new_name = body["server_name"].as_str().map(str::to_string);
        let nested = ["stdio_config", "sse_config", "streamable_http_config"]
            .iter()
            .find_map(|key| body.get(*key).filter(|v| v.is_object()).cloned());
        let mut fields = nested.unwrap_or(body);
        if let Some(object) = fields.as_object_mut() {
            object.remove("server_name");
            if let Some(kind) = object.remove("type") {
                object.insert("mcp_server_type".into(), kind);
            }
            // Letta's older update bodies call the token `token`.
            if let Some(token) = object.remove("token") {
                object.insert("auth_token".into(), token);
            }
        }
        let config: McpServerConfigIn =
            serde_json::from_value(fields).map_err(|e| invalid(format!("MCP server update: {e}")))?;
        self.update(&server.id, UpdateMcpServer { server_name: new_name, config: Some(config) }).await?;
        let updated = self.record(&server.id).await?;
        Ok(legacy_config_json(&updated))
    }

    /// `DELETE /v1/tools/mcp/servers/{name}`: answers the configs left.
    pub async fn legacy_delete(&self, name: &str) -> ServiceResult<Value> {
        let server = self.named(name).await?;
        self.delete(&server.id).await?;
        self.legacy_configs().await
    }

    /// `GET /v1/tools/mcp/servers/{name}/tools`: the server's tools as it
    /// lists them now (MCP's own shape).
    pub async fn legacy_tools(&self, name: &str) -> ServiceResult<Vec<Value>> {
        let server = self.named(name).await?;
        let listed = self.tools.mcp().list_tools(&server).await?;
        Ok(listed.iter().map(mcp_tool_json).collect())
    }

    /// `POST /v1/tools/mcp/servers/{name}/{tool_name}`: the server's tool as a
    /// Letta tool (listed again from the server when not stored yet).
    pub async fn legacy_add_tool(&self, name: &str, tool_name: &str) -> ServiceResult<Value> {
        let server = self.named(name).await?;
        let stored = |tools: Vec<ToolRecord>| {
            tools.into_iter().find(|tool| is_of(tool, &server.id) && tool.name == tool_name)
        };
        if let Some(tool) = stored(self.tools.custom_tools().await?) {
            return Ok(custom_tool_json(&tool));
        }
        self.sync(&server).await?;
        stored(self.tools.custom_tools().await?)
            .map(|tool| custom_tool_json(&tool))
            .ok_or_else(|| McpError::NoSuchTool(tool_name.to_string()).into())
    }

    /// `POST /v1/tools/mcp/servers/{name}/resync`.
    pub async fn legacy_resync(&self, name: &str) -> ServiceResult<Value> {
        let server = self.named(name).await?;
        self.sync(&server).await
    }

    /// `POST /v1/tools/mcp/servers/{name}/tools/{tool_name}/execute`.
    pub async fn legacy_execute(&self, name: &str, tool_name: &str, args: Value) -> ServiceResult<Value> {
        let server = self.named(name).await?;
        let args = if args.is_null() { json!({}) } else { args };
        Ok(execution_result(&self.tools.mcp().call_tool(&server, tool_name, &args).await))
    }

    /// `POST /v1/tools/mcp/servers/test` (and `connect`): connects with a
    /// config without storing it; answers its tools or the reason it failed.
    pub async fn legacy_test(&self, config: Value) -> ServiceResult<Value> {
        let (_, config) = legacy_request(config)?;
        let config = build_config(config, None)?;
        self.check_reachable(&config).await?;
        let client = kelpie_tools::mcp::McpClient::new(
            transport(&config),
            self.tools.runner().settings().mcp,
            Arc::clone(self.tools.runner()),
        );
        let listed = client.list_tools().await;
        client.close().await;
        let tools = listed?;
        Ok(json!({"status": "success", "tools": tools.iter().map(mcp_tool_json).collect::<Vec<_>>()}))
    }
}

/// A legacy body (`server_name`, `type`, and the config's fields at the top).
fn legacy_request(body: Value) -> ServiceResult<(String, McpServerConfigIn)> {
    let mut fields = body;
    let object =
        fields.as_object_mut().ok_or_else(|| invalid("an MCP server config must be an object".into()))?;
    let name = object
        .remove("server_name")
        .and_then(|name| name.as_str().map(str::to_string))
        .ok_or_else(|| invalid("server_name is required".into()))?;
    if let Some(kind) = object.remove("type") {
        object.insert("mcp_server_type".into(), kind);
    }
    let config = serde_json::from_value(fields).map_err(|e| invalid(format!("MCP server config: {e}")))?;
    Ok((name, config))
}

/// Letta's older `StdioServerConfig` / `SSEServerConfig` /
/// `StreamableHTTPServerConfig`, secrets masked.
fn legacy_config_json(server: &McpServerRecord) -> Value {
    let mut value = mcp_server_json(server);
    if let Some(object) = value.as_object_mut() {
        object.remove("id");
        if let Some(kind) = object.remove("mcp_server_type") {
            object.insert("type".into(), kind);
        }
    }
    value
}

/// A tool in MCP's own shape (`inputSchema`).
fn mcp_tool_json(tool: &McpTool) -> Value {
    json!({"name": tool.name, "description": tool.description, "inputSchema": tool.input_schema, "annotations": tool.annotations})
}

fn is_of(tool: &ToolRecord, server_id: &str) -> bool {
    tool.mcp.as_ref().is_some_and(|source| source.server_id == server_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(value: Value) -> McpServerConfigIn {
        let text = |key: &str| value[key].as_str().map(str::to_string);
        McpServerConfigIn {
            mcp_server_type: text("mcp_server_type"),
            command: text("command"),
            server_url: text("server_url"),
            auth_token: text("auth_token"),
            ..McpServerConfigIn::default()
        }
    }

    #[test]
    fn configs_are_inferred_checked_and_keep_secrets_sent_back_masked() {
        let stdio = build_config(input(json!({"command": "mcp-server-everything"})), None).unwrap();
        assert!(
            matches!(stdio, McpServerConfig::Stdio { ref command, .. } if command == "mcp-server-everything")
        );
        let http = build_config(
            input(json!({"server_url": "https://mcp.example.com/mcp", "auth_token": "sk-0123456789abcdef"})),
            None,
        )
        .unwrap();
        let McpServerConfig::StreamableHttp(ref config) = http else { panic!("{http:?}") };
        assert_eq!(
            http_headers(config),
            [("Authorization".to_string(), "Bearer sk-0123456789abcdef".to_string())]
        );
        // The masked token coming back leaves the real one in place.
        let masked = crate::letta::mask_secret("sk-0123456789abcdef");
        assert_eq!(masked, "****cdef");
        let again = build_config(input(json!({"auth_token": masked})), Some(&http)).unwrap();
        assert_eq!(again, http);
        for bad in [
            json!({"mcp_server_type": "stdio"}),
            json!({"mcp_server_type": "sse"}),
            json!({"server_url": "ftp://x/"}),
            json!({"mcp_server_type": "websocket", "server_url": "https://x/"}),
        ] {
            assert!(
                matches!(
                    build_config(input(bad.clone()), None),
                    Err(ServiceError::Invalid(_) | ServiceError::Mcp(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn configs_past_their_limits_are_refused() {
        let args = McpServerConfigIn {
            command: Some("/usr/bin/env".into()),
            args: Some(vec!["a".into(); MCP_ARGS_COUNT_MAX + 1]),
            ..McpServerConfigIn::default()
        };
        assert!(matches!(build_config(args, None), Err(ServiceError::Invalid(r)) if r.contains("args")));
        let headers = McpServerConfigIn {
            server_url: Some("https://mcp.example.com/mcp".into()),
            custom_headers: Some(
                (0..=MCP_HEADERS_COUNT_MAX).map(|i| (format!("x-h{i}"), "v".into())).collect(),
            ),
            ..McpServerConfigIn::default()
        };
        assert!(
            matches!(build_config(headers, None), Err(ServiceError::Invalid(r)) if r.contains("custom_headers"))
        );
        assert!(matches!(
            check_name(&"n".repeat(MCP_SERVER_NAME_CHARS_MAX + 1)),
            Err(ServiceError::Invalid(_))
        ));
        assert!(check_name(&"n".repeat(MCP_SERVER_NAME_CHARS_MAX)).is_ok());
    }
}
