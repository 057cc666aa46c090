//! The custom tool store: one actor holding every custom tool record and
//! every registered MCP server in its state, so create, upsert, modify and
//! delete are each one transaction, tool names stay unique, and a server's
//! tools come and go with it. Built-in tools are not stored; they come from
//! kelpie-tools and are the same on every server.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_tools::pip::PipRequirement;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store's own actor id (namespace, id).
pub const TOOL_STORE_ACTOR: (&str, &str) = ("tool-store", "all");
/// Most custom tools (MCP tools included) a server holds.
pub const CUSTOM_TOOLS_COUNT_MAX: usize = 1_000;
/// Most MCP servers registered.
pub const MCP_SERVERS_COUNT_MAX: usize = 100;

/// The MCP server an MCP tool is called on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpToolSource {
    pub server_id: String,
    pub server_name: String,
}

/// How an MCP server is reached, as registered (secrets included: tokens,
/// header values, environment values are never rendered in full).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum McpServerConfig {
    Stdio { command: String, args: Vec<String>, env: std::collections::BTreeMap<String, String> },
    StreamableHttp(McpHttpConfig),
    Sse(McpHttpConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpHttpConfig {
    pub server_url: String,
    /// The header the token goes in (`Authorization` when only a token is given).
    pub auth_header: Option<String>,
    pub auth_token: Option<String>,
    pub custom_headers: std::collections::BTreeMap<String, String>,
}

/// A registered MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerRecord {
    pub id: String,
    pub server_name: String,
    pub config: McpServerConfig,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// A custom Python tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub id: String,
    /// The function called; always `json_schema["name"]`.
    pub name: String,
    pub description: Option<String>,
    pub source_code: String,
    /// `{"name", "description", "parameters"}` as sent to the LLM.
    pub json_schema: Value,
    pub tags: Vec<String>,
    pub return_char_limit: usize,
    pub metadata: Option<Value>,
    /// Installed before the tool is stored; mounted into its sandbox.
    #[serde(default)]
    pub pip_requirements: Vec<PipRequirement>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Set for a tool of an MCP server: calls go to that server.
    #[serde(default)]
    pub mcp: Option<McpToolSource>,
    /// Agents it is attached to get a `requires_approval` rule for it.
    #[serde(default)]
    pub default_requires_approval: bool,
}

/// The `metadata_` key that lets a tool reach the network from its sandbox.
pub const TOOL_NETWORK_METADATA_KEY: &str = "sandbox_network";

impl ToolRecord {
    /// Whether the tool's sandbox has network: only when its metadata says
    /// `"sandbox_network": true`.
    pub fn network(&self) -> bool {
        self.metadata.as_ref().and_then(|m| m.get(TOOL_NETWORK_METADATA_KEY)).and_then(Value::as_bool)
            == Some(true)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToolStoreState {
    pub tools: Vec<ToolRecord>,
    #[serde(default)]
    pub mcp_servers: Vec<McpServerRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum ToolCommand {
    /// Adds a tool; its name must be new.
    Create(Box<ToolRecord>),
    /// Replaces the tool of the same name (keeping its id and creation
    /// time), or adds it.
    Upsert(Box<ToolRecord>),
    /// Replaces the tool with the same id; its new name must not be taken.
    Replace(Box<ToolRecord>),
    Delete {
        id: String,
    },
    List,
    /// Registers a server; its name must be new.
    McpCreate(Box<McpServerRecord>),
    /// Replaces the server with the same id; renaming renames its tools' source.
    McpReplace(Box<McpServerRecord>),
    /// Removes a server and every tool of it.
    McpDelete {
        id: String,
    },
    McpList,
    /// Makes the server's tools exactly `tools` (by name: kept ids, new
    /// ones added, missing ones removed). A name another tool holds is
    /// skipped and reported.
    McpSyncTools {
        server_id: String,
        tools: Vec<ToolRecord>,
    },
}

#[derive(Serialize, Deserialize)]
pub enum ToolReply {
    Tool(Box<ToolRecord>),
    Tools(Vec<ToolRecord>),
    /// Another tool already has this name; nothing changed.
    NameTaken(String),
    Done,
    McpServer(Box<McpServerRecord>),
    McpServers(Vec<McpServerRecord>),
    /// What a sync did, by tool name.
    McpSynced {
        added: Vec<String>,
        updated: Vec<String>,
        removed: Vec<String>,
        skipped: Vec<String>,
    },
}

pub struct ToolStoreActor;

type Ctx<'a> = ActorContext<'a, ToolStoreState>;

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "tool", id: id.to_string() }
}

fn check_room(tools: &[ToolRecord]) -> Result<()> {
    if tools.len() >= CUSTOM_TOOLS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "custom tools".into(),
            actual: tools.len() as u64 + 1,
            limit_name: "CUSTOM_TOOLS_COUNT_MAX",
            limit: CUSTOM_TOOLS_COUNT_MAX as u64,
        });
    }
    Ok(())
}

fn upsert(ctx: &mut Ctx<'_>, mut tool: ToolRecord) -> Result<ToolRecord> {
    match ctx.state.tools.iter_mut().find(|t| t.name == tool.name) {
        Some(existing) => {
            tool.id = existing.id.clone();
            tool.created_ms = existing.created_ms;
            *existing = tool.clone();
        }
        None => {
            check_room(&ctx.state.tools)?;
            ctx.state.tools.push(tool.clone());
        }
    }
    Ok(tool)
}

fn replace(ctx: &mut Ctx<'_>, tool: ToolRecord) -> Result<ToolReply> {
    if ctx.state.tools.iter().any(|t| t.name == tool.name && t.id != tool.id) {
        return Ok(ToolReply::NameTaken(tool.name));
    }
    let existing = ctx.state.tools.iter_mut().find(|t| t.id == tool.id).ok_or_else(|| not_found(&tool.id))?;
    *existing = tool.clone();
    Ok(ToolReply::Tool(Box::new(tool)))
}

fn mcp_not_found(id: &str) -> Error {
    Error::NotFound { kind: "mcp server", id: id.to_string() }
}

fn mcp_create(ctx: &mut Ctx<'_>, server: McpServerRecord) -> Result<ToolReply> {
    if ctx.state.mcp_servers.iter().any(|s| s.server_name == server.server_name) {
        return Ok(ToolReply::NameTaken(server.server_name));
    }
    if ctx.state.mcp_servers.len() >= MCP_SERVERS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "MCP servers".into(),
            actual: ctx.state.mcp_servers.len() as u64 + 1,
            limit_name: "MCP_SERVERS_COUNT_MAX",
            limit: MCP_SERVERS_COUNT_MAX as u64,
        });
    }
    ctx.state.mcp_servers.push(server.clone());
    Ok(ToolReply::McpServer(Box::new(server)))
}

fn mcp_replace(ctx: &mut Ctx<'_>, server: McpServerRecord) -> Result<ToolReply> {
    let state = &mut *ctx.state;
    if state.mcp_servers.iter().any(|s| s.server_name == server.server_name && s.id != server.id) {
        return Ok(ToolReply::NameTaken(server.server_name));
    }
    let existing =
        state.mcp_servers.iter_mut().find(|s| s.id == server.id).ok_or_else(|| mcp_not_found(&server.id))?;
    *existing = server.clone();
    for tool in &mut state.tools {
        if let Some(source) = tool.mcp.as_mut().filter(|source| source.server_id == server.id) {
            source.server_name = server.server_name.clone();
        }
    }
    Ok(ToolReply::McpServer(Box::new(server)))
}

fn mcp_sync(ctx: &mut Ctx<'_>, server_id: &str, tools: Vec<ToolRecord>) -> Result<ToolReply> {
    let state = &mut *ctx.state;
    if !state.mcp_servers.iter().any(|s| s.id == server_id) {
        return Err(mcp_not_found(server_id));
    }
    let of_server = |tool: &ToolRecord| tool.mcp.as_ref().is_some_and(|source| source.server_id == server_id);
    let (mut added, mut updated, mut removed, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    state.tools.retain(|tool| {
        let keep = !of_server(tool) || tools.iter().any(|new| new.name == tool.name);
        if !keep {
            removed.push(tool.name.clone());
        }
        keep
    });
    for mut tool in tools {
        assert!(
            tool.mcp.as_ref().is_some_and(|source| source.server_id == server_id),
            "a tool of the server"
        );
        match state.tools.iter_mut().find(|existing| existing.name == tool.name) {
            Some(existing) if of_server(existing) => {
                if existing.json_schema != tool.json_schema || existing.description != tool.description {
                    tool.id = existing.id.clone();
                    tool.created_ms = existing.created_ms;
                    tool.tags = existing.tags.clone();
                    tool.metadata = existing.metadata.clone();
                    *existing = tool.clone();
                    updated.push(tool.name);
                }
            }
            Some(_) => skipped.push(tool.name),
            None => {
                check_room(&state.tools)?;
                added.push(tool.name.clone());
                state.tools.push(tool);
            }
        }
    }
    Ok(ToolReply::McpSynced { added, updated, removed, skipped })
}

impl Actor for ToolStoreActor {
    type State = ToolStoreState;
    type Message = ToolCommand;
    type Reply = ToolReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: ToolCommand) -> Result<ToolReply> {
        match command {
            ToolCommand::Create(tool) => {
                if ctx.state.tools.iter().any(|t| t.name == tool.name) {
                    return Ok(ToolReply::NameTaken(tool.name));
                }
                check_room(&ctx.state.tools)?;
                ctx.state.tools.push((*tool).clone());
                Ok(ToolReply::Tool(tool))
            }
            ToolCommand::Upsert(tool) => Ok(ToolReply::Tool(Box::new(upsert(ctx, *tool)?))),
            ToolCommand::Replace(tool) => replace(ctx, *tool),
            ToolCommand::Delete { id } => {
                let before = ctx.state.tools.len();
                ctx.state.tools.retain(|t| t.id != id);
                if ctx.state.tools.len() == before {
                    return Err(not_found(&id));
                }
                Ok(ToolReply::Done)
            }
            ToolCommand::List => Ok(ToolReply::Tools(ctx.state.tools.clone())),
            ToolCommand::McpCreate(server) => mcp_create(ctx, *server),
            ToolCommand::McpReplace(server) => mcp_replace(ctx, *server),
            ToolCommand::McpDelete { id } => {
                let before = ctx.state.mcp_servers.len();
                ctx.state.mcp_servers.retain(|s| s.id != id);
                if ctx.state.mcp_servers.len() == before {
                    return Err(mcp_not_found(&id));
                }
                ctx.state.tools.retain(|tool| tool.mcp.as_ref().is_none_or(|source| source.server_id != id));
                Ok(ToolReply::Done)
            }
            ToolCommand::McpList => Ok(ToolReply::McpServers(ctx.state.mcp_servers.clone())),
            ToolCommand::McpSyncTools { server_id, tools } => mcp_sync(ctx, &server_id, tools),
        }
    }
}
