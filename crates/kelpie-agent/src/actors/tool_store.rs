//! The custom tool store: one actor holding every custom tool record in its
//! state, so create, upsert, modify and delete are each one transaction and
//! tool names stay unique. Built-in tools are not stored; they come from
//! kelpie-tools and are the same on every server.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_tools::pip::PipRequirement;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store's own actor id (namespace, id).
pub const TOOL_STORE_ACTOR: (&str, &str) = ("tool-store", "all");
/// Most custom tools a server holds.
pub const CUSTOM_TOOLS_COUNT_MAX: usize = 1_000;

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
}

#[derive(Serialize, Deserialize)]
pub enum ToolReply {
    Tool(Box<ToolRecord>),
    Tools(Vec<ToolRecord>),
    /// Another tool already has this name; nothing changed.
    NameTaken(String),
    Done,
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
        }
    }
}
