//! Letta's agent file (`.af`, `AgentFileSchema`), both ways. Import: read
//! into Kelpie's own [`AgentFile`], which the import then stores as it
//! stores any. Export: [`letta_parts`] and [`letta_message`] render the
//! Letta fields an export writes beside Kelpie's. Pure: no I/O; the model
//! and embedding a file names are resolved by the caller.
//!
//! What an import maps how:
//! - every agent of the file, in file order (at most
//!   `AGENT_FILE_AGENTS_COUNT_MAX`), ids and references checked first as
//!   Letta's importer checks them;
//! - its blocks (`block_ids` into the file's `blocks`, and inline
//!   `memory_blocks`), with label, value, limit, description, read-only;
//!   a block several agents name (or a group shares) stays one block,
//!   shared by them;
//! - groups (`groups`: round robin, supervisor, dynamic, sleeptime) with
//!   their members, manager and shared blocks named by the file's ids,
//!   which the import remaps; a sleeptime group's manager keeps
//!   `enable_sleeptime`;
//! - its tools (`tool_ids` into the file's `tools`): `custom` tools are
//!   imported with their source and schema; Letta's own tools are matched
//!   by name to Kelpie's built-ins, and one Kelpie does not have is left
//!   out with a warning;
//! - tool rules, system prompt, description, metadata, tags, secrets;
//! - messages in file order: user, assistant (text and tool calls) and
//!   tool results; system messages (Kelpie renders the system prompt
//!   itself) and other roles are left out, the latter with a warning;
//! - sources (Letta's folders) become folders with their files: each
//!   file's text `content` is uploaded as a text file and processed by the
//!   document pipeline; each folder is attached to the agents naming it
//!   (`source_ids`, `folder_ids`, `files_agents`). A file without content
//!   is left out with a warning; a file named as a PDF is uploaded as
//!   markdown (`<name>.md`: its content is the text Letta extracted).
//! - MCP servers (`mcp_servers`: name, type, URL or stdio command and
//!   arguments; Letta writes no secrets) become MCP server records, and an
//!   agent's MCP tools (`external_mcp`, naming their server in
//!   `metadata_.mcp`) are attached from the server's listed tools by name.

use std::collections::BTreeMap;

use kelpie_llm::settings::{EmbeddingSettings, LlmSettings};
use kelpie_memory::{Block, CoreMemory, WorkingMemory};
use kelpie_tools::pip::PipRequirement;
use serde_json::Value;

use crate::actors::tool_store::ToolRecord;
use crate::agent_file::{AgentFile, AGENT_FILE_VERSION};
use crate::ids::parse_iso_ms;
use crate::model::{AgentRecord, MessageBody, StoredMessage};

/// The top-level fields of Letta's `AgentFileSchema`.
pub const LETTA_FIELDS: [&str; 9] =
    ["agents", "groups", "blocks", "files", "sources", "tools", "mcp_servers", "metadata", "created_at"];
/// Return limit of an imported tool that does not say.
const TOOL_RETURN_CHARS_DEFAULT: usize = 50_000;

/// Most agents one agent file may hold.
pub const AGENT_FILE_AGENTS_COUNT_MAX: usize = 100;
/// Most groups one agent file may hold.
pub const AGENT_FILE_GROUPS_COUNT_MAX: usize = 100;
/// Most sources (folders) one agent file may hold: as many as a server.
pub const AGENT_FILE_SOURCES_COUNT_MAX: usize = crate::actors::folder_store::FOLDERS_COUNT_MAX;
/// Most files one agent file may hold.
pub const AGENT_FILE_FILES_COUNT_MAX: usize = 10_000;
/// Most MCP servers one agent file may hold.
pub const AGENT_FILE_MCP_SERVERS_COUNT_MAX: usize = 100;

/// An MCP server of the file, and the tools its agents take from it.
#[derive(Debug, Clone)]
pub struct FileMcpServer {
    pub id: String,
    pub name: String,
    pub config: crate::requests::McpServerConfigIn,
    /// Each MCP tool an agent has from it: the agent's id in the file and
    /// the tool's name.
    pub tools: Vec<(String, String)>,
}

/// A source (Letta's folder) of the file with its files, ids the file's.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFolder {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub instructions: Option<String>,
    pub metadata: Option<Value>,
    /// The embedding handle the source names, if any.
    pub embedding: Option<String>,
    /// Its files: name to upload under, and text content.
    pub files: Vec<(String, String)>,
    /// The agents it is attached to, by their ids in the file.
    pub agent_ids: Vec<String>,
}

/// A group of the file, its agents and blocks named by the file's ids.
#[derive(Debug, Clone, PartialEq)]
pub struct FileGroup {
    pub id: String,
    pub agent_ids: Vec<String>,
    pub description: String,
    /// Letta's `ManagerConfig` as written (`manager_agent_id` a file id).
    pub manager_config: Value,
    pub project_id: Option<String>,
    pub shared_block_ids: Vec<String>,
    pub hidden: Option<bool>,
}

/// A converted file: each agent as Kelpie's file (ids still the file's),
/// the groups, the blocks shared between agents or by a group, and what
/// was left out.
#[derive(Debug, Clone)]
pub struct Converted {
    pub agents: Vec<AgentFile>,
    pub groups: Vec<FileGroup>,
    pub shared_blocks: Vec<Block>,
    pub folders: Vec<FileFolder>,
    pub mcp_servers: Vec<FileMcpServer>,
    pub warnings: Vec<String>,
}

/// Settings for the handle a file names, and, when another had to be
/// chosen, why.
pub type Resolve<'a, T> = &'a dyn Fn(Option<&str>) -> (T, Option<String>);

/// How the caller resolves the file's model and embedding on this server.
pub struct Resolvers<'a> {
    pub llm: Resolve<'a, LlmSettings>,
    pub embedding: Resolve<'a, EmbeddingSettings>,
    /// Built-in tools by name → id.
    pub builtins: BTreeMap<String, String>,
    pub now_ms: u64,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part["text"].as_str()).collect::<Vec<_>>().join("")
        }
        _ => String::new(),
    }
}

fn string(value: &Value) -> Option<String> {
    value.as_str().map(str::to_string)
}

/// Every record of list `name` of the file, by its `id`.
fn by_id<'a>(fields: &'a BTreeMap<String, Value>, name: &str) -> BTreeMap<&'a str, &'a Value> {
    let items = fields.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items.iter().filter_map(|item| Some((item["id"].as_str()?, item))).collect()
}

/// Block `raw` of the file under id `id` (the file's: the import gives
/// each id a new one, the same for every agent naming it).
fn block_of(raw: &Value, id: &str) -> Result<Block, String> {
    let label = string(&raw["label"]).ok_or_else(|| format!("block {id} has no label"))?;
    let value = string(&raw["value"]).unwrap_or_default();
    let mut block = Block::new(id.to_string(), label.clone(), value, raw["limit"].as_u64())
        .map_err(|e| format!("block {label:?}: {e}"))?;
    block.description = string(&raw["description"]);
    block.read_only = raw["read_only"].as_bool().unwrap_or(false);
    Ok(block)
}

fn tool_of(raw: &Value, now_ms: u64) -> Result<ToolRecord, String> {
    let name = string(&raw["name"]).ok_or("a tool has no name")?;
    let id = string(&raw["id"]).ok_or_else(|| format!("tool {name:?} has no id"))?;
    let source_code = string(&raw["source_code"]).unwrap_or_default();
    if source_code.trim().is_empty() {
        return Err(format!("custom tool {name:?} has no source code"));
    }
    let pip_requirements = raw["pip_requirements"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|requirement| {
            Some(PipRequirement {
                name: string(&requirement["name"])?,
                version: string(&requirement["version"]),
            })
        })
        .collect();
    Ok(ToolRecord {
        id,
        name: name.clone(),
        description: string(&raw["description"]),
        source_code,
        json_schema: raw["json_schema"].clone(),
        tags: raw["tags"].as_array().map(|tags| tags.iter().filter_map(string).collect()).unwrap_or_default(),
        return_char_limit: raw["return_char_limit"]
            .as_u64()
            .map_or(TOOL_RETURN_CHARS_DEFAULT, |n| n as usize),
        metadata: raw["metadata_"].as_object().filter(|m| !m.is_empty()).map(|m| Value::Object(m.clone())),
        pip_requirements,
        created_ms: now_ms,
        updated_ms: now_ms,
        mcp: None,
        default_requires_approval: raw["default_requires_approval"].as_bool().unwrap_or(false),
    })
}

/// The messages of `agent`, in file order, as Kelpie stores them.
fn messages_of(agent: &Value, now_ms: u64, warnings: &mut Vec<String>) -> Vec<StoredMessage> {
    let raw = agent["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    // A tool result names its tool through the call it answers.
    let mut call_names: BTreeMap<String, String> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut messages = Vec::new();
    for message in raw {
        let created_ms = message["created_at"].as_str().and_then(parse_iso_ms).unwrap_or(now_ms);
        let content = text_of(&message["content"]);
        let body = match message["role"].as_str().unwrap_or_default() {
            "system" => continue,
            "user" => MessageBody::User { content },
            "summary" => MessageBody::Summary { summary: content.clone(), content },
            "assistant" => {
                let calls = message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default();
                let tool_calls: Vec<kelpie_llm::ToolCall> = calls
                    .iter()
                    .filter_map(|call| {
                        Some(kelpie_llm::ToolCall {
                            id: string(&call["id"])?,
                            name: string(&call["function"]["name"])?,
                            arguments: string(&call["function"]["arguments"]).unwrap_or_else(|| "{}".into()),
                        })
                    })
                    .collect();
                for call in &tool_calls {
                    call_names.insert(call.id.clone(), call.name.clone());
                }
                let content = (!content.is_empty()).then_some(content);
                MessageBody::Assistant { content, tool_calls, awaiting_approval: false }
            }
            "tool" => {
                let tool_call_id = string(&message["tool_call_id"]).unwrap_or_default();
                let tool_return = &message["tool_returns"][0];
                let name = string(&message["name"])
                    .or_else(|| call_names.get(&tool_call_id).cloned())
                    .unwrap_or_default();
                let result = match content.is_empty() {
                    true => string(&tool_return["func_response"]).unwrap_or_default(),
                    false => content,
                };
                MessageBody::Tool {
                    tool_call_id,
                    name,
                    result,
                    ok: tool_return["status"].as_str().is_none_or(|status| status == "success"),
                    stdout: None,
                    stderr: None,
                }
            }
            other => {
                *skipped.entry(other.to_string()).or_default() += 1;
                continue;
            }
        };
        let id = string(&message["id"]).unwrap_or_default();
        messages.push(StoredMessage { id, seq: 0, created_ms, run_id: None, step_id: None, body });
    }
    for (role, count) in skipped {
        warnings.push(format!("{count} message(s) with role {role:?} were not imported"));
    }
    messages
}

/// Checks the file's ids and references as Letta's importer does before
/// writing anything: at most [`AGENT_FILE_AGENTS_COUNT_MAX`] agents and
/// [`AGENT_FILE_GROUPS_COUNT_MAX`] groups, no id twice, every agent a group
/// names (members and manager) and every block it shares in the file.
fn check_file(fields: &BTreeMap<String, Value>) -> Result<(), String> {
    let list = |name: &str| fields.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let (agents, groups) = (list("agents"), list("groups"));
    if agents.is_empty() {
        return Err("the file holds 0 agents".into());
    }
    if agents.len() > AGENT_FILE_AGENTS_COUNT_MAX {
        return Err(format!(
            "the file holds {} agents, over AGENT_FILE_AGENTS_COUNT_MAX = {AGENT_FILE_AGENTS_COUNT_MAX}",
            agents.len()
        ));
    }
    if groups.len() > AGENT_FILE_GROUPS_COUNT_MAX {
        return Err(format!(
            "the file holds {} groups, over AGENT_FILE_GROUPS_COUNT_MAX = {AGENT_FILE_GROUPS_COUNT_MAX}",
            groups.len()
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in ["agents", "groups", "blocks", "tools", "sources", "files", "mcp_servers"] {
        for (index, item) in list(name).iter().enumerate() {
            let id = item["id"].as_str().ok_or_else(|| format!("{name}[{index}] has no id"))?;
            if !seen.insert(id) {
                return Err(format!("id {id:?} is in the file twice"));
            }
        }
    }
    let agent_ids: Vec<&str> = agents.iter().filter_map(|agent| agent["id"].as_str()).collect();
    let block_ids: Vec<&str> = list("blocks").iter().filter_map(|block| block["id"].as_str()).collect();
    for group in groups {
        let id = group["id"].as_str().unwrap_or_default();
        let members = group["agent_ids"].as_array().map(Vec::as_slice).unwrap_or_default();
        let manager = group["manager_config"]["manager_agent_id"].as_str();
        for agent_id in members.iter().map(|id| id.as_str().unwrap_or_default()).chain(manager) {
            if !agent_ids.contains(&agent_id) {
                return Err(format!("group {id} names agent {agent_id:?}, not in the file"));
            }
        }
        for block_id in group["shared_block_ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let block_id = block_id.as_str().unwrap_or_default();
            if !block_ids.contains(&block_id) {
                return Err(format!("group {id} shares block {block_id:?}, not in the file"));
            }
        }
    }
    Ok(())
}

/// What the conversion of every agent shares: the file's blocks and tools
/// by id, and the custom tools already carried by an earlier agent.
struct FileParts<'a> {
    blocks: BTreeMap<&'a str, &'a Value>,
    tools: BTreeMap<&'a str, &'a Value>,
    carried_tools: std::collections::BTreeSet<String>,
    /// The agents that manage a sleeptime group of the file.
    sleeptime_managers: Vec<&'a str>,
}

/// Converts the fields of a Letta agent file (raw JSON by field name):
/// every agent in file order, its groups, and the blocks the file shares.
pub fn convert(fields: &BTreeMap<String, Value>, resolvers: &Resolvers<'_>) -> Result<Converted, String> {
    let agents = fields.get("agents").and_then(Value::as_array).ok_or("an agent file without agents")?;
    check_file(fields)?;
    let mut warnings = Vec::new();
    let folders = folders_of(fields, &mut warnings)?;
    let mcp_servers = mcp_servers_of(fields)?;
    let raw_groups = fields.get("groups").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let groups = raw_groups.iter().map(group_of).collect::<Result<Vec<FileGroup>, String>>()?;
    let mut parts = FileParts {
        blocks: by_id(fields, "blocks"),
        tools: by_id(fields, "tools"),
        carried_tools: Default::default(),
        sleeptime_managers: groups
            .iter()
            .filter(|group| group.manager_config["manager_type"] == "sleeptime")
            .filter_map(|group| group.manager_config["manager_agent_id"].as_str())
            .collect(),
    };
    let mut files = Vec::with_capacity(agents.len());
    for (index, agent) in agents.iter().enumerate() {
        let name = agent["name"].as_str().unwrap_or_default();
        let file = agent_of(agent, &mut parts, resolvers, &mut warnings)
            .map_err(|reason| format!("agent {index} ({name:?}): {reason}"))?;
        files.push(file);
    }
    // A block two agents name, or a group shares, is one shared block.
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for agent in agents {
        for id in agent["block_ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
            *users.entry(id.as_str().unwrap_or_default()).or_default() += 1;
        }
    }
    for group in &groups {
        for id in &group.shared_block_ids {
            *users.entry(id.as_str()).or_default() += 2;
        }
    }
    let mut shared_blocks = Vec::new();
    for (id, _) in users.into_iter().filter(|(_, count)| *count > 1) {
        let raw = parts.blocks.get(id).ok_or_else(|| format!("block {id:?} is not in the file"))?;
        shared_blocks.push(block_of(raw, id)?);
    }
    assert_eq!(files.len(), agents.len(), "every agent of the file converts or the file is refused");
    Ok(Converted { agents: files, groups, shared_blocks, folders, mcp_servers, warnings })
}

/// The file's sources as folders with their files and the agents naming
/// them, checked as the folder routes check a create and an upload: at
/// most [`AGENT_FILE_SOURCES_COUNT_MAX`] sources and
/// [`AGENT_FILE_FILES_COUNT_MAX`] files, names within
/// `FOLDER_NAME_BYTES_MAX`, contents within `FILE_BYTES_MAX`, every
/// reference in the file.
fn folders_of(
    fields: &BTreeMap<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<Vec<FileFolder>, String> {
    use crate::actors::folder::FILE_BYTES_MAX;
    use crate::actors::folder_store::FOLDER_NAME_BYTES_MAX;
    let list = |name: &str| fields.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let (sources, files) = (list("sources"), list("files"));
    if sources.len() > AGENT_FILE_SOURCES_COUNT_MAX {
        return Err(format!(
            "the file holds {} sources, over AGENT_FILE_SOURCES_COUNT_MAX = {AGENT_FILE_SOURCES_COUNT_MAX}",
            sources.len()
        ));
    }
    if files.len() > AGENT_FILE_FILES_COUNT_MAX {
        return Err(format!(
            "the file holds {} files, over AGENT_FILE_FILES_COUNT_MAX = {AGENT_FILE_FILES_COUNT_MAX}",
            files.len()
        ));
    }
    let mut folders = Vec::with_capacity(sources.len());
    for raw in sources {
        let id = string(&raw["id"]).unwrap_or_default();
        let name = string(&raw["name"]).filter(|name| !name.trim().is_empty());
        let name = name.ok_or_else(|| format!("source {id} has no name"))?;
        if name.len() > FOLDER_NAME_BYTES_MAX {
            return Err(format!(
                "source {id}'s name is {} bytes, over FOLDER_NAME_BYTES_MAX = {FOLDER_NAME_BYTES_MAX}",
                name.len()
            ));
        }
        let embedding = string(&raw["embedding"]).or_else(|| string(&raw["embedding_config"]["handle"]));
        folders.push(FileFolder {
            id,
            name,
            description: string(&raw["description"]),
            instructions: string(&raw["instructions"]),
            metadata: raw["metadata"].as_object().filter(|m| !m.is_empty()).map(|m| Value::Object(m.clone())),
            embedding,
            files: Vec::new(),
            agent_ids: Vec::new(),
        });
    }
    let mut without_content = 0;
    for raw in files {
        let id = string(&raw["id"]).unwrap_or_default();
        let source_id = string(&raw["source_id"]).unwrap_or_default();
        let folder = folders
            .iter_mut()
            .find(|folder| folder.id == source_id)
            .ok_or_else(|| format!("file {id} names source {source_id:?}, not in the file"))?;
        let name =
            string(&raw["file_name"]).or_else(|| string(&raw["original_file_name"])).unwrap_or_default();
        let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim().to_string();
        if base.is_empty() || base.starts_with('.') {
            return Err(format!("file {id}'s name {name:?} is empty or starts with a dot"));
        }
        let Some(content) = string(&raw["content"]) else {
            without_content += 1;
            continue;
        };
        if content.len() as u64 > FILE_BYTES_MAX {
            return Err(format!(
                "file {id} holds {} bytes, over FILE_BYTES_MAX = {FILE_BYTES_MAX}",
                content.len()
            ));
        }
        // The content is text Letta extracted: a file whose name says PDF
        // is uploaded as the markdown it is.
        let kind = crate::documents::parse::detect(&base, Some("text/plain")).map_err(|e| e.to_string())?;
        let base = match kind {
            crate::documents::parse::FileKind::Pdf => format!("{base}.md"),
            _ => base,
        };
        folder.files.push((base, content));
    }
    if without_content > 0 {
        warnings.push(format!("{without_content} file(s) without content were not imported"));
    }
    for agent in list("agents") {
        let agent_id = string(&agent["id"]).unwrap_or_default();
        let attached = ["source_ids", "folder_ids"]
            .iter()
            .flat_map(|field| agent[*field].as_array().map(Vec::as_slice).unwrap_or_default())
            .chain(
                agent["files_agents"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|relation| &relation["source_id"]),
            )
            .filter_map(Value::as_str);
        for source_id in attached {
            let folder = folders
                .iter_mut()
                .find(|folder| folder.id == source_id)
                .ok_or_else(|| format!("agent {agent_id} names source {source_id:?}, not in the file"))?;
            if !folder.agent_ids.contains(&agent_id) {
                folder.agent_ids.push(agent_id.clone());
            }
        }
    }
    Ok(folders)
}

/// The file's MCP servers as the MCP server routes take them (checked by
/// them when made: name, URL, command), at most
/// [`AGENT_FILE_MCP_SERVERS_COUNT_MAX`], each with the MCP tools the
/// file's agents have from it (a tool naming a server not in the file is
/// refused).
fn mcp_servers_of(fields: &BTreeMap<String, Value>) -> Result<Vec<FileMcpServer>, String> {
    let list = |name: &str| fields.get(name).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let raw_servers = list("mcp_servers");
    if raw_servers.len() > AGENT_FILE_MCP_SERVERS_COUNT_MAX {
        return Err(format!(
            "the file holds {} MCP servers, over AGENT_FILE_MCP_SERVERS_COUNT_MAX = {AGENT_FILE_MCP_SERVERS_COUNT_MAX}",
            raw_servers.len()
        ));
    }
    let mut servers = Vec::with_capacity(raw_servers.len());
    for raw in raw_servers {
        let id = string(&raw["id"]).unwrap_or_default();
        let name =
            string(&raw["server_name"]).ok_or_else(|| format!("MCP server {id} has no server_name"))?;
        let stdio = &raw["stdio_config"];
        let args = stdio["args"].as_array().map(|args| args.iter().filter_map(string).collect());
        let config = crate::requests::McpServerConfigIn {
            mcp_server_type: string(&raw["server_type"]),
            server_url: string(&raw["server_url"]),
            command: string(&stdio["command"]),
            args,
            ..crate::requests::McpServerConfigIn::default()
        };
        servers.push(FileMcpServer { id, name, config, tools: Vec::new() });
    }
    let tools = by_id(fields, "tools");
    for agent in list("agents") {
        let agent_id = string(&agent["id"]).unwrap_or_default();
        for tool_id in agent["tool_ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(raw) = tool_id.as_str().and_then(|id| tools.get(id)) else { continue };
            if raw["tool_type"].as_str() != Some("external_mcp") {
                continue;
            }
            let name = string(&raw["name"]).unwrap_or_default();
            let mcp = &raw["metadata_"]["mcp"];
            let server = servers.iter_mut().find(|server| {
                mcp["server_id"].as_str() == Some(server.id.as_str())
                    || mcp["server_name"].as_str() == Some(server.name.as_str())
            });
            let Some(server) = server else {
                return Err(format!("MCP tool {name:?} names a server not in the file's mcp_servers"));
            };
            server.tools.push((agent_id.clone(), name));
        }
    }
    Ok(servers)
}

/// Group `raw` of the file as Letta's `GroupSchema` says it (ids are the
/// file's).
pub(crate) fn group_of(raw: &Value) -> Result<FileGroup, String> {
    let id = string(&raw["id"]).unwrap_or_default();
    let ids = |value: &Value| -> Vec<String> {
        value.as_array().map(Vec::as_slice).unwrap_or_default().iter().filter_map(string).collect()
    };
    let manager_config = match &raw["manager_config"] {
        Value::Null => serde_json::json!({"manager_type": "round_robin"}),
        config @ Value::Object(_) => config.clone(),
        _ => return Err(format!("group {id}: manager_config is not an object")),
    };
    Ok(FileGroup {
        agent_ids: ids(&raw["agent_ids"]),
        description: string(&raw["description"]).unwrap_or_default(),
        manager_config,
        project_id: string(&raw["project_id"]),
        shared_block_ids: ids(&raw["shared_block_ids"]),
        hidden: raw["hidden"].as_bool(),
        id,
    })
}

/// One agent of the file as Kelpie's file; a custom tool comes with the
/// first agent that names it.
fn agent_of(
    agent: &Value,
    parts: &mut FileParts<'_>,
    resolvers: &Resolvers<'_>,
    warnings: &mut Vec<String>,
) -> Result<AgentFile, String> {
    let file_id = string(&agent["id"]).unwrap_or_else(|| "agent-0".into());
    // Blocks: those the agent links (by the file's id, so one linked by
    // several agents stays one), then those it declares inline.
    let mut blocks = Vec::new();
    for id in agent["block_ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = id.as_str().unwrap_or_default();
        let raw =
            parts.blocks.get(id).ok_or_else(|| format!("the agent names block {id:?}, not in the file"))?;
        blocks.push(block_of(raw, id)?);
    }
    let inline = agent["memory_blocks"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (index, raw) in inline.iter().enumerate() {
        blocks.push(block_of(raw, &format!("{file_id}/inline-{index}"))?);
    }
    let memory = CoreMemory::new(blocks).map_err(|e| e.to_string())?;
    // Tools: custom ones come along; Letta's own map to Kelpie's by name.
    let (mut tool_ids, mut custom_tools, mut left_out) = (Vec::new(), Vec::new(), Vec::new());
    for id in agent["tool_ids"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = id.as_str().unwrap_or_default();
        let raw =
            parts.tools.get(id).ok_or_else(|| format!("the agent names tool {id:?}, not in the file"))?;
        let name = raw["name"].as_str().unwrap_or_default();
        match (raw["tool_type"].as_str(), resolvers.builtins.get(name)) {
            (Some("custom"), _) => {
                let tool = tool_of(raw, resolvers.now_ms)?;
                tool_ids.push(tool.id.clone());
                if parts.carried_tools.insert(tool.id.clone()) {
                    custom_tools.push(tool);
                }
            }
            // Attached from its MCP server once that is made (see `mcp_servers_of`).
            (Some("external_mcp"), _) => {}
            (_, Some(builtin)) => tool_ids.push(builtin.clone()),
            (_, None) => left_out.push(name.to_string()),
        }
    }
    if !left_out.is_empty() {
        warnings.push(format!("Letta tools Kelpie does not have were not attached: {}", left_out.join(", ")));
    }
    let rules = agent["tool_rules"].as_array().map(Vec::as_slice).unwrap_or_default();
    let tool_rules = crate::tool_rules::parse_rules(rules)?;
    // The model and embedding the file names, or this server's choice.
    let handle = |config: &Value| {
        string(&config["handle"]).or_else(|| {
            let provider = config["provider_name"].as_str().or(config["model_endpoint_type"].as_str())?;
            Some(format!("{provider}/{}", config["model"].as_str()?))
        })
    };
    let llm_handle = string(&agent["model"]).or_else(|| handle(&agent["llm_config"]));
    let (mut llm, why) = (resolvers.llm)(llm_handle.as_deref());
    warnings.extend(why);
    if let Some(window) = agent["llm_config"]["context_window"].as_u64() {
        llm.context_window = window;
    }
    let embedding_handle =
        string(&agent["embedding"]).or_else(|| string(&agent["embedding_config"]["handle"]));
    let (embedding, why) = (resolvers.embedding)(embedding_handle.as_deref());
    warnings.extend(why);
    let secrets_of = |value: &Value| -> BTreeMap<String, String> {
        value
            .as_object()
            .map(Vec::from_iter)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_string())))
            .collect()
    };
    let mut secrets = secrets_of(&agent["tool_exec_environment_variables"]);
    secrets.extend(secrets_of(&agent["secrets"]));
    // The file's limits of open files, when Kelpie takes them.
    let max_files_open = agent["max_files_open"].as_u64().and_then(|n| u32::try_from(n).ok());
    let window_chars = agent["per_file_view_window_char_limit"].as_u64();
    let (max_files_open, file_window_chars) = match crate::files::check_limits(max_files_open, window_chars) {
        Ok(()) => (max_files_open, window_chars),
        Err(why) => {
            warnings.push(format!("file limits left at their defaults: {why}"));
            (None, None)
        }
    };
    // A sleeptime group's manager runs its members after its turns.
    let enable_sleeptime = parts
        .sleeptime_managers
        .contains(&file_id.as_str())
        .then(|| agent["enable_sleeptime"].as_bool().unwrap_or(true));
    let record = AgentRecord {
        id: file_id,
        name: string(&agent["name"]).unwrap_or_else(|| "imported".into()),
        system: string(&agent["system"]).unwrap_or_default(),
        description: string(&agent["description"]),
        metadata: agent["metadata"].as_object().map(|m| Value::Object(m.clone())),
        tags: agent["tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(string).collect())
            .unwrap_or_default(),
        memory,
        working: WorkingMemory::default(),
        llm,
        embedding,
        tool_ids,
        secrets,
        compaction: None,
        tool_rules,
        identity_ids: Vec::new(),
        folders: Vec::new(),
        open_files: Vec::new(),
        max_files_open,
        file_window_chars,
        enable_sleeptime,
        managed_group: None,
        created_ms: resolvers.now_ms,
        updated_ms: resolvers.now_ms,
    };
    let messages = messages_of(agent, resolvers.now_ms, warnings);
    Ok(AgentFile {
        kelpie_agent_file_version: AGENT_FILE_VERSION,
        agent: record,
        messages,
        passages: Vec::new(),
        custom_tools,
        conversations: Vec::new(),
        messages_of_conversations: Vec::new(),
    })
}

/// The parts of Letta's agent file an export writes around the agents'
/// messages (which it streams): each agent object without them (in file
/// order: the exported agent, then the members of the group it manages),
/// and the file's groups, blocks and tools. Ids are the file's own
/// (`agent-<n>`, `block-<n>`, `tool-<n>`, `group-<n>`), numbered across the
/// file as Letta's exports number them, so a block several agents hold is
/// one block of the file. Secrets are not written.
pub struct LettaParts {
    pub agents: Vec<Value>,
    pub groups: Value,
    pub blocks: Value,
    pub tools: Value,
}

/// The file ids given so far: Kelpie id → file id, and the file's records.
#[derive(Default)]
struct FileIds {
    blocks: BTreeMap<String, String>,
    block_values: Vec<Value>,
    tools: BTreeMap<String, String>,
    tool_values: Vec<Value>,
}

impl FileIds {
    /// The file ids of `record`'s blocks, each block written once.
    fn blocks_of(&mut self, record: &AgentRecord) -> Vec<String> {
        let mut ids = Vec::new();
        for block in record.memory.blocks() {
            if let Some(id) = self.blocks.get(&block.id) {
                ids.push(id.clone());
                continue;
            }
            let id = format!("block-{}", self.block_values.len());
            self.block_values.push(serde_json::json!({
                "id": id, "label": block.label, "value": block.value, "limit": block.limit,
                "description": block.description, "read_only": block.read_only, "metadata": {},
                "is_template": false, "preserve_on_migration": false,
            }));
            self.blocks.insert(block.id.clone(), id.clone());
            ids.push(id);
        }
        ids
    }

    /// The file ids of `record`'s tools (built-in, or `custom` given whole),
    /// each tool written once; an MCP tool or one deleted since is left out.
    fn tools_of(&mut self, record: &AgentRecord, custom: &[ToolRecord]) -> Vec<String> {
        let builtins = kelpie_tools::builtin_tools();
        let mut ids = Vec::new();
        for id in &record.tool_ids {
            if let Some(file_id) = self.tools.get(id) {
                ids.push(file_id.clone());
                continue;
            }
            let file_id = format!("tool-{}", self.tool_values.len());
            let tool = match (
                builtins.iter().find(|tool| tool.id == id),
                custom.iter().find(|tool| tool.id == *id),
            ) {
                (Some(builtin), _) => serde_json::json!({
                    "id": file_id, "name": builtin.name, "tool_type": builtin.tool_type, "description": builtin.description,
                    "source_type": "python", "source_code": null, "json_schema": builtin.json_schema, "tags": [],
                    "return_char_limit": TOOL_RETURN_CHARS_DEFAULT, "pip_requirements": null,
                    "default_requires_approval": false,
                }),
                (None, Some(tool)) => serde_json::json!({
                    "id": file_id, "name": tool.name, "tool_type": "custom", "description": tool.description,
                    "source_type": "python", "source_code": tool.source_code, "json_schema": tool.json_schema,
                    "tags": tool.tags, "return_char_limit": tool.return_char_limit,
                    "pip_requirements": tool.pip_requirements.iter()
                        .map(|r| serde_json::json!({"name": r.name, "version": r.version}))
                        .collect::<Vec<_>>(),
                    "default_requires_approval": tool.default_requires_approval,
                    "metadata_": tool.metadata.clone().unwrap_or_else(|| serde_json::json!({})),
                }),
                (None, None) => continue,
            };
            self.tool_values.push(tool);
            self.tools.insert(id.clone(), file_id.clone());
            ids.push(file_id);
        }
        ids
    }
}

/// The file id of the `index`th agent of an export.
pub fn agent_file_id(index: usize) -> String {
    format!("agent-{index}")
}

/// Letta's rendering of `records` (the exported agent first, then the
/// members of `group`, the group it manages, if any) with the attached
/// `custom` tools given whole.
pub fn letta_parts(
    records: &[AgentRecord],
    custom: &[ToolRecord],
    group: Option<&crate::actors::group_store::GroupRecord>,
) -> LettaParts {
    assert!(!records.is_empty(), "an export writes at least its agent");
    let file_id_of =
        |kelpie_id: &str| records.iter().position(|record| record.id == kelpie_id).map(agent_file_id);
    let group_ids: Vec<&str> = group.map(|_| "group-0").into_iter().collect();
    let mut ids = FileIds::default();
    let mut agents = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let block_ids = ids.blocks_of(record);
        let tool_ids = ids.tools_of(record, custom);
        agents.push(serde_json::json!({
            "id": agent_file_id(index), "name": record.name, "system": record.system,
            "description": record.description, "metadata": record.metadata, "tags": record.tags,
            "agent_type": "letta_v1_agent",
            "llm_config": crate::letta::llm_config_json(record),
            "embedding_config": crate::letta::embedding_config_json(record),
            "model": record.llm.handle, "embedding": record.embedding.handle,
            "block_ids": block_ids, "tool_ids": tool_ids,
            "tool_rules": record.tool_rules.iter().map(|rule| rule.to_json()).collect::<Vec<_>>(),
            "memory_blocks": [], "tools": [], "source_ids": [], "folder_ids": [], "identity_ids": [],
            "include_base_tools": false, "include_multi_agent_tools": false, "include_base_tool_rules": false,
            "message_buffer_autoclear": false, "enable_sleeptime": record.enable_sleeptime.unwrap_or(false),
            "hidden": null, "in_context_message_ids": [], "files_agents": [], "group_ids": group_ids,
        }));
    }
    let block_of = |kelpie_id: &str| ids.blocks.get(kelpie_id).cloned();
    let groups: Vec<Value> =
        group.map(|group| group_value(group, "group-0", &file_id_of, &block_of)).into_iter().collect();
    LettaParts {
        agents,
        groups: Value::Array(groups),
        blocks: Value::Array(ids.block_values),
        tools: Value::Array(ids.tool_values),
    }
}

/// `group` in the shape of Letta's `GroupSchema`, under id `id`, its
/// agents and blocks named by `agent_id` and `block_id` (one left out when
/// they answer `None`).
fn group_value(
    group: &crate::actors::group_store::GroupRecord,
    id: &str,
    agent_id: &dyn Fn(&str) -> Option<String>,
    block_id: &dyn Fn(&str) -> Option<String>,
) -> Value {
    let mut config = serde_json::json!({"manager_type": group.manager_type});
    let fields = [
        ("manager_agent_id", group.manager_agent_id.as_deref().and_then(agent_id).map(Value::from)),
        ("max_turns", group.max_turns.map(Value::from)),
        ("termination_token", group.termination_token.clone().map(Value::from)),
        ("sleeptime_agent_frequency", group.sleeptime_agent_frequency.map(Value::from)),
        ("max_message_buffer_length", group.max_message_buffer_length.map(Value::from)),
        ("min_message_buffer_length", group.min_message_buffer_length.map(Value::from)),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            config[name] = value;
        }
    }
    serde_json::json!({
        "id": id,
        "agent_ids": group.agent_ids.iter().filter_map(|id| agent_id(id)).collect::<Vec<_>>(),
        "description": group.description, "manager_config": config, "project_id": group.project_id,
        // Every member holds the group's blocks, so each is in the file.
        "shared_block_ids": group.shared_block_ids.iter().filter_map(|id| block_id(id)).collect::<Vec<_>>(),
        "hidden": group.hidden,
    })
}

/// `group` as Kelpie's part of a group manager's export writes it: Letta's
/// shape with this server's ids (of the agents' records and their blocks in
/// the file), which the import remaps as it remaps theirs.
pub fn kelpie_group(group: &crate::actors::group_store::GroupRecord) -> Value {
    let same = |id: &str| Some(id.to_string());
    group_value(group, &group.id, &same, &same)
}

fn text_content(text: &str) -> Value {
    serde_json::json!([{"type": "text", "text": text}])
}

/// Letta's `MessageSchema` of a stored message of agent `agent_file_id`
/// of the file; `None` for what Letta's file cannot say (an answer to an
/// approval request).
pub fn letta_message(message: &StoredMessage, agent_file_id: &str) -> Option<Value> {
    let created_at = crate::ids::rfc3339_micros(message.created_ms);
    let mut value = match &message.body {
        MessageBody::User { content } => {
            serde_json::json!({"role": "user", "content": text_content(content)})
        }
        MessageBody::Summary { content, .. } => {
            serde_json::json!({"role": "summary", "content": text_content(content)})
        }
        MessageBody::Assistant { content, tool_calls, .. } => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|call| {
                    serde_json::json!({"id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments}})
                })
                .collect();
            let content = content.as_deref().map_or_else(|| serde_json::json!([]), text_content);
            serde_json::json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        MessageBody::Tool { tool_call_id, name, result, ok, .. } => serde_json::json!({
            "role": "tool", "content": text_content(result), "name": name, "tool_call_id": tool_call_id,
            "tool_returns": [{"tool_call_id": tool_call_id, "status": if *ok { "success" } else { "error" },
                              "func_response": result}],
        }),
        MessageBody::ApprovalResponse { .. } => return None,
    };
    let object = value.as_object_mut().expect("a message renders as an object");
    object.insert("type".into(), "message".into());
    object.insert("id".into(), message.id.clone().into());
    object.insert("agent_id".into(), agent_file_id.into());
    object.insert("created_at".into(), created_at.into());
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(file: Value) -> BTreeMap<String, Value> {
        file.as_object().unwrap().iter().map(|(key, value)| (key.clone(), value.clone())).collect()
    }

    fn agents(count: usize) -> Value {
        (0..count).map(|n| serde_json::json!({"id": format!("agent-{n}"), "name": "a"})).collect()
    }

    fn groups(count: usize) -> Value {
        (0..count)
            .map(|n| serde_json::json!({"id": format!("group-{n}"), "agent_ids": ["agent-0"]}))
            .collect()
    }

    #[test]
    fn groups_past_their_max_and_broken_references_are_refused_with_the_reason() {
        let at_max = serde_json::json!({"agents": agents(2), "groups": groups(AGENT_FILE_GROUPS_COUNT_MAX)});
        assert_eq!(check_file(&fields(at_max)), Ok(()));
        let past =
            serde_json::json!({"agents": agents(2), "groups": groups(AGENT_FILE_GROUPS_COUNT_MAX + 1)});
        let why = check_file(&fields(past)).unwrap_err();
        assert!(why.contains("101 groups, over AGENT_FILE_GROUPS_COUNT_MAX = 100"), "{why}");
        let crowded = serde_json::json!({"agents": agents(AGENT_FILE_AGENTS_COUNT_MAX + 1)});
        let why = check_file(&fields(crowded)).unwrap_err();
        assert!(why.contains("101 agents, over AGENT_FILE_AGENTS_COUNT_MAX = 100"), "{why}");
        for (file, says) in [
            (serde_json::json!({"agents": []}), "the file holds 0 agents".to_string()),
            (
                serde_json::json!({"agents": agents(1), "blocks": [{"id": "agent-0", "label": "x"}]}),
                "id \"agent-0\" is in the file twice".to_string(),
            ),
            (
                serde_json::json!({"agents": agents(1), "groups": [{"id": "group-0", "agent_ids": ["agent-0"],
                    "manager_config": {"manager_type": "supervisor", "manager_agent_id": "agent-5"}}]}),
                "group group-0 names agent \"agent-5\", not in the file".to_string(),
            ),
            (
                serde_json::json!({"agents": agents(1), "groups": [{"id": "group-0", "agent_ids": ["agent-0"],
                    "shared_block_ids": ["block-9"]}]}),
                "group group-0 shares block \"block-9\", not in the file".to_string(),
            ),
        ] {
            assert_eq!(check_file(&fields(file)).unwrap_err(), says);
        }
    }

    #[test]
    fn a_group_without_manager_config_is_round_robin_and_keeps_its_file_ids() {
        let raw = serde_json::json!({"id": "group-3", "agent_ids": ["agent-1", "agent-0"], "description": "d",
            "shared_block_ids": ["block-2"], "hidden": true});
        let group = group_of(&raw).unwrap();
        assert_eq!(
            group,
            FileGroup {
                id: "group-3".into(),
                agent_ids: vec!["agent-1".into(), "agent-0".into()],
                description: "d".into(),
                manager_config: serde_json::json!({"manager_type": "round_robin"}),
                project_id: None,
                shared_block_ids: vec!["block-2".into()],
                hidden: Some(true),
            }
        );
        let bad = serde_json::json!({"id": "group-4", "agent_ids": [], "manager_config": "supervisor"});
        assert_eq!(group_of(&bad).unwrap_err(), "group group-4: manager_config is not an object");
    }
}
