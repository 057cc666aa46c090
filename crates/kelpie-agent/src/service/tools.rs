//! The tool service: built-in tools (from kelpie-tools) and custom Python
//! tools (in the tool store actor), as the `/v1/tools` handlers and the
//! agent loop need them. A custom tool's schema is derived or checked, and
//! its `pip_requirements` installed, in a sandbox before anything is
//! stored; the [`ToolRunner`] it holds is the one tool calls run through.

use std::sync::Arc;

use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;
use kelpie_tools::builtin_tools;
use kelpie_tools::ToolRunner;
use serde_json::{json, Value};

use kelpie_tools::mcp::{McpCallResult, McpError};

use crate::actors::tool_store::{
    McpServerRecord, ToolCommand, ToolRecord, ToolReply, ToolStoreActor, TOOL_STORE_ACTOR,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::letta::{builtin_tool_json, custom_tool_json};
use crate::limits::TOOL_RETURN_CHARS_MAX;
use crate::page::{json_id, paginate, Page};
use crate::requests::{CodeInput, CreateTool, RunToolFromSource, UpdateTool};
use crate::service::mcp_clients::{McpClients, McpConnector};
use kelpie_tools::{ToolError, ToolRun};

/// The filters of `GET /v1/tools/` and `/v1/tools/count` (Letta's); an
/// empty list filters nothing.
#[derive(Debug, Clone, Default)]
pub struct ToolFilter {
    pub name: Option<String>,
    pub names: Vec<String>,
    pub ids: Vec<String>,
    /// Case-insensitive part of the name.
    pub search: Option<String>,
    pub tool_types: Vec<String>,
    pub exclude_tool_types: Vec<String>,
    /// Only Letta's own tools (`tool_type` starting with `letta`).
    pub only_letta_tools: bool,
}

impl ToolFilter {
    /// Whether rendered tool `tool` passes.
    pub fn selects(&self, tool: &Value) -> bool {
        let name = tool["name"].as_str().unwrap_or_default();
        let id = tool["id"].as_str().unwrap_or_default();
        let kind = tool["tool_type"].as_str().unwrap_or_default();
        self.name.as_deref().is_none_or(|wanted| wanted == name)
            && (self.names.is_empty() || self.names.iter().any(|n| n == name))
            && (self.ids.is_empty() || self.ids.iter().any(|i| i == id))
            && self.search.as_deref().is_none_or(|part| name.to_lowercase().contains(&part.to_lowercase()))
            && (self.tool_types.is_empty() || self.tool_types.iter().any(|t| t == kind))
            && !self.exclude_tool_types.iter().any(|t| t == kind)
            && (!self.only_letta_tools || kind.starts_with("letta"))
    }
}

pub struct ToolService {
    store: Runtime<ToolStoreActor>,
    runner: Arc<ToolRunner>,
    mcp: std::sync::RwLock<Arc<dyn McpConnector>>,
    env: Env,
}

fn is_builtin(tool_id: &str) -> bool {
    builtin_tools().iter().any(|tool| tool.id == tool_id)
}

fn check_return_limit(limit: Option<usize>) -> ServiceResult<usize> {
    let limit = limit.unwrap_or(TOOL_RETURN_CHARS_MAX);
    if limit == 0 || limit > TOOL_RETURN_CHARS_MAX {
        return Err(ServiceError::Invalid(format!(
            "return_char_limit {limit} is outside 1..={TOOL_RETURN_CHARS_MAX}"
        )));
    }
    Ok(limit)
}

/// The schema with `description` set, when one is given.
fn described(mut schema: Value, description: Option<&str>) -> Value {
    if let (Some(description), Some(object)) = (description, schema.as_object_mut()) {
        object.insert("description".into(), json!(description));
    }
    schema
}

fn schema_name(schema: &Value) -> String {
    schema["name"].as_str().unwrap_or_default().to_string()
}

impl ToolService {
    pub(crate) fn new(store: Runtime<ToolStoreActor>, runner: Arc<ToolRunner>, env: Env) -> Self {
        let mcp: Arc<dyn McpConnector> = Arc::new(McpClients::new(Arc::clone(&runner)));
        ToolService { store, runner, mcp: std::sync::RwLock::new(mcp), env }
    }

    /// A command to the tool store, its reply as it is.
    pub(crate) async fn command(&self, command: ToolCommand) -> ServiceResult<ToolReply> {
        let actor_id = ActorId::new(TOOL_STORE_ACTOR.0, TOOL_STORE_ACTOR.1)?;
        Ok(self.store.invoke(&actor_id, command).await?)
    }

    /// Every registered MCP server.
    pub async fn mcp_servers(&self) -> ServiceResult<Vec<McpServerRecord>> {
        match self.command(ToolCommand::McpList).await? {
            ToolReply::McpServers(servers) => Ok(servers),
            _ => Err(unexpected("an MCP server command")),
        }
    }

    /// What reaches MCP servers.
    pub fn mcp(&self) -> Arc<dyn McpConnector> {
        Arc::clone(&self.mcp.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces what reaches MCP servers (a simulated server in DST).
    pub fn set_mcp_connector(&self, connector: Arc<dyn McpConnector>) {
        *self.mcp.write().unwrap_or_else(|p| p.into_inner()) = connector;
    }

    /// Calls MCP tool `tool` with `args` on its server.
    pub async fn call_mcp(&self, tool: &ToolRecord, args: &Value) -> Result<McpCallResult, McpError> {
        let source = tool.mcp.as_ref().ok_or_else(|| McpError::NoSuchTool(tool.name.clone()))?;
        let servers = self.mcp_servers().await.map_err(|e| McpError::Connect(e.to_string()))?;
        let server = servers.iter().find(|server| server.id == source.server_id).ok_or_else(|| {
            McpError::Connect(format!("MCP server {} is no longer registered", source.server_name))
        })?;
        self.mcp().call_tool(server, &tool.name, args).await
    }

    /// What runs tool code: tool calls, the code interpreter, installs.
    pub fn runner(&self) -> &Arc<ToolRunner> {
        &self.runner
    }

    async fn invoke(&self, command: ToolCommand) -> ServiceResult<ToolReply> {
        match self.command(command).await? {
            ToolReply::NameTaken(name) => Err(ServiceError::ToolNameTaken(name)),
            reply => Ok(reply),
        }
    }

    async fn stored(&self, command: ToolCommand) -> ServiceResult<Value> {
        match self.invoke(command).await? {
            ToolReply::Tool(tool) => Ok(custom_tool_json(&tool)),
            _ => Err(unexpected("a tool command")),
        }
    }

    /// Every custom tool, in creation order.
    pub async fn custom_tools(&self) -> ServiceResult<Vec<ToolRecord>> {
        match self.invoke(ToolCommand::List).await? {
            ToolReply::Tools(tools) => Ok(tools),
            _ => Err(unexpected("a tool command")),
        }
    }

    /// Built-in tools first, then custom tools.
    pub async fn list(&self) -> ServiceResult<Vec<Value>> {
        let mut all: Vec<Value> = builtin_tools().iter().map(builtin_tool_json).collect();
        all.extend(self.custom_tools().await?.iter().map(custom_tool_json));
        Ok(all)
    }

    /// The tools `filter` selects, built-in first, then custom in creation order.
    pub async fn list_filtered(&self, filter: &ToolFilter) -> ServiceResult<Vec<Value>> {
        Ok(self.list().await?.into_iter().filter(|tool| filter.selects(tool)).collect())
    }

    /// `POST /v1/tools/search`: tools ranked by the share of `query`'s words
    /// found in their name and description (every tool when no query), at
    /// most `limit`, as Letta's `ToolSearchResult`s.
    pub async fn search(
        &self,
        query: Option<&str>,
        filter: &ToolFilter,
        tags: &[String],
        limit: usize,
    ) -> ServiceResult<Vec<Value>> {
        let words: Vec<String> =
            query.unwrap_or_default().split_whitespace().map(str::to_lowercase).collect();
        let mut scored: Vec<(f64, Value)> = self
            .list_filtered(filter)
            .await?
            .into_iter()
            .filter(|tool| {
                tags.is_empty()
                    || tool["tags"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|tag| tags.iter().any(|w| tag == w)))
            })
            .filter_map(|tool| {
                let text = format!(
                    "{} {}",
                    tool["name"].as_str().unwrap_or_default(),
                    tool["description"].as_str().unwrap_or_default()
                )
                .to_lowercase();
                let score = match words.is_empty() {
                    true => 1.0,
                    false => {
                        words.iter().filter(|w| text.contains(w.as_str())).count() as f64 / words.len() as f64
                    }
                };
                (score > 0.0).then_some((score, tool))
            })
            .collect();
        // Stable: equal scores keep the listing's order.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .take(limit)
            .enumerate()
            .map(|(rank, (score, tool))| {
                json!({"tool": tool, "combined_score": score, "fts_rank": rank + 1, "vector_rank": null, "embedded_text": null})
            })
            .collect())
    }

    /// The `page` of the tools `filter` selects.
    pub async fn list_page(&self, filter: &ToolFilter, page: &Page) -> ServiceResult<Vec<Value>> {
        Ok(paginate(self.list_filtered(filter).await?, json_id, page))
    }

    pub async fn get(&self, tool_id: &str) -> ServiceResult<Value> {
        if let Some(tool) = builtin_tools().iter().find(|tool| tool.id == tool_id) {
            return Ok(builtin_tool_json(tool));
        }
        let tools = self.custom_tools().await?;
        let tool = tools.iter().find(|tool| tool.id == tool_id);
        tool.map(custom_tool_json).ok_or_else(|| ServiceError::ToolNotFound(tool_id.to_string()))
    }

    fn check_python(source_type: Option<&str>) -> ServiceResult<()> {
        match source_type {
            None | Some("python") => Ok(()),
            Some(other) => {
                Err(ServiceError::Invalid(format!("source_type {other:?}: only \"python\" tools run here")))
            }
        }
    }

    /// `POST /v1/tools/run`: calls the source's function once with `args`
    /// in a sandbox of its own, with only `env_vars` for environment and
    /// without network; nothing is stored. A raised error, a timeout or a
    /// memory kill is an `error` result; a source that does not parse is 422.
    pub async fn run_from_source(&self, request: RunToolFromSource) -> ServiceResult<Value> {
        Self::check_python(request.source_type.as_deref())?;
        let name = match request.name {
            Some(name) => name,
            None => schema_name(&self.runner.tool_schema(&request.source_code, request.json_schema).await?),
        };
        let requirements = self.install(request.pip_requirements.unwrap_or_default()).await?;
        let args = if request.args.is_null() { json!({}) } else { request.args };
        if !args.is_object() {
            return Err(ServiceError::Invalid("args must be a JSON object".into()));
        }
        let env: Vec<(String, String)> = request.env_vars.into_iter().collect();
        let call = kelpie_tools::ToolCall {
            source: &request.source_code,
            name: &name,
            args: &args,
            env: &env,
            network: false,
            requirements: &requirements,
        };
        let run = match self.runner.run_tool(call).await {
            Ok(run) => run,
            Err(
                error @ (ToolError::Timeout { .. }
                | ToolError::MemoryLimit { .. }
                | ToolError::NoResult { .. }),
            ) => {
                ToolRun { ok: false, result: error.to_string(), stdout: String::new(), stderr: String::new() }
            }
            Err(error) => return Err(error.into()),
        };
        let id = new_id("message", self.env.rng.as_ref());
        Ok(crate::letta::loose_tool_return_json(&id, self.env.clock.wall_ms(), &run))
    }

    /// `POST /v1/tools/generate-schema`: the schema a tool of `code` would get.
    pub async fn generate_schema(&self, request: CodeInput) -> ServiceResult<Value> {
        Self::check_python(request.source_type.as_deref())?;
        Ok(self.runner.tool_schema(&request.code, None).await?)
    }

    /// `POST /v1/tools/add-base-tools`: the built-in tools, which every
    /// server has (nothing to add).
    pub fn base_tools(&self) -> Vec<Value> {
        builtin_tools().iter().map(builtin_tool_json).collect()
    }

    /// `POST /v1/tools/` (`upsert = false`) and `PUT /v1/tools/`.
    pub async fn create(&self, request: CreateTool, upsert: bool) -> ServiceResult<Value> {
        let schema = self.runner.tool_schema(&request.source_code, request.json_schema).await?;
        let schema = described(schema, request.description.as_deref());
        let pip_requirements = self.install(request.pip_requirements.unwrap_or_default()).await?;
        let name = schema_name(&schema);
        if builtin_tools().iter().any(|tool| tool.name == name) {
            return Err(ServiceError::ToolNameTaken(name));
        }
        let now = self.env.clock.wall_ms();
        let record = ToolRecord {
            id: new_id("tool", self.env.rng.as_ref()),
            name,
            description: schema["description"].as_str().map(str::to_string),
            source_code: request.source_code,
            json_schema: schema,
            tags: request.tags.unwrap_or_default(),
            return_char_limit: check_return_limit(request.return_char_limit)?,
            metadata: request.metadata,
            pip_requirements,
            created_ms: now,
            updated_ms: now,
            mcp: None,
            default_requires_approval: request.default_requires_approval.unwrap_or(false),
        };
        let command = if upsert { ToolCommand::Upsert } else { ToolCommand::Create };
        self.stored(command(Box::new(record))).await
    }

    /// Stores `tool` (from an agent file) under its name, replacing a custom
    /// tool of that name and keeping its id; answers the stored record.
    pub async fn upsert_record(&self, tool: ToolRecord) -> ServiceResult<ToolRecord> {
        if builtin_tools().iter().any(|builtin| builtin.name == tool.name) {
            return Err(ServiceError::ToolNameTaken(tool.name));
        }
        match self.invoke(ToolCommand::Upsert(Box::new(tool))).await? {
            ToolReply::Tool(stored) => Ok(*stored),
            _ => Err(unexpected("a tool command")),
        }
    }

    /// `PATCH /v1/tools/{id}`; a new source without a schema gets a newly
    /// derived schema.
    pub async fn modify(&self, tool_id: &str, request: UpdateTool) -> ServiceResult<Value> {
        if is_builtin(tool_id) {
            return Err(ServiceError::Invalid(format!("built-in tool {tool_id} cannot be changed")));
        }
        let tools = self.custom_tools().await?;
        let mut tool = tools
            .into_iter()
            .find(|tool| tool.id == tool_id)
            .ok_or_else(|| ServiceError::ToolNotFound(tool_id.to_string()))?;
        if tool.mcp.is_some() && (request.source_code.is_some() || request.json_schema.is_some()) {
            return Err(ServiceError::Invalid(format!(
                "tool {tool_id} comes from an MCP server: its schema changes with the server (refresh it)"
            )));
        }
        if request.source_code.is_some() || request.json_schema.is_some() {
            let source = request.source_code.unwrap_or(tool.source_code);
            tool.json_schema = self.runner.tool_schema(&source, request.json_schema).await?;
            tool.source_code = source;
        }
        let description = request.description.or(tool.description.clone());
        tool.json_schema = described(tool.json_schema, description.as_deref());
        tool.description = tool.json_schema["description"].as_str().map(str::to_string);
        tool.name = schema_name(&tool.json_schema);
        if builtin_tools().iter().any(|builtin| builtin.name == tool.name) {
            return Err(ServiceError::ToolNameTaken(tool.name));
        }
        tool.tags = request.tags.unwrap_or(tool.tags);
        if request.return_char_limit.is_some() {
            tool.return_char_limit = check_return_limit(request.return_char_limit)?;
        }
        tool.metadata = request.metadata.or(tool.metadata);
        tool.default_requires_approval =
            request.default_requires_approval.unwrap_or(tool.default_requires_approval);
        if let Some(requirements) = request.pip_requirements {
            tool.pip_requirements = self.install(requirements).await?;
        }
        tool.updated_ms = self.env.clock.wall_ms();
        self.stored(ToolCommand::Replace(Box::new(tool))).await
    }

    /// Checks and installs `requirements` (a failure names the package);
    /// returns them as stored.
    async fn install(
        &self,
        requirements: Vec<kelpie_tools::pip::PipRequirement>,
    ) -> ServiceResult<Vec<kelpie_tools::pip::PipRequirement>> {
        let requirements = kelpie_tools::pip::normalize(&requirements)?;
        self.runner.ensure_requirements(&requirements).await?;
        Ok(requirements)
    }

    pub async fn delete(&self, tool_id: &str) -> ServiceResult<Value> {
        if is_builtin(tool_id) {
            return Err(ServiceError::Invalid(format!("built-in tool {tool_id} cannot be deleted")));
        }
        self.invoke(ToolCommand::Delete { id: tool_id.to_string() }).await?;
        Ok(json!({"message": format!("Tool id={tool_id} successfully deleted")}))
    }

    pub async fn shutdown(&self) {
        self.mcp().shutdown().await;
        self.store.shutdown().await;
        self.runner.shutdown().await;
    }
}
