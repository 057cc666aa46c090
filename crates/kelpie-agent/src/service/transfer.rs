//! Agent export and import as one JSON file ([`crate::agent_file`]), both
//! streamed: an agent of any size goes out page by page and comes in batch
//! by batch, in bounded memory.
//!
//! Import creates new agents (new ids for them, their blocks, messages,
//! passages and conversations; one agent from a Kelpie file, or a group
//! manager's agents and group from its export; every agent and group of a
//! Letta file). Each history is written in bounded batches
//! while its agent is invisible (not found, not listed). Once the whole
//! file is read, every agent written and everything checked (names, tools,
//! groups and the blocks they share), the import records its decision in
//! one commit ([`super::decided_imports`]); from there it only rolls
//! forward: the agents appear, then the blocks they share and their groups
//! are made, by this request or, after a crash, by the background pass. A
//! failure before the decision leaves nothing visible: every agent is on
//! the reclaim list from its start, so nothing of a failed or abandoned
//! import stays (but the custom tools it upserted). A Letta file's sources
//! and MCP servers are the exception: they are made just before the
//! decision (the files queued for processing), each put on the reclaim
//! list before it is made; the decision's commit takes them off, a failure
//! before it deletes them, and after a kill the reclaimer deletes them
//! once their lease is out. The folders' attachments to the agents, and
//! the file's config for an MCP server of the same name here, are part of
//! the decision and roll forward with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use kelpie_core::Env;
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::ChatModel;
use kelpie_memory::{Block, CoreMemory, Passage};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::decided_imports::DecidedImports;
use super::folders::{FolderInput, Folders, UploadStart};
use super::groups::{GroupCreate, Groups, ManagerConfig};
use super::mcp::McpServers;
use super::reclaim::Reclaimer;
use super::tools::ToolService;
use crate::actors::agent::store::{self, PASSAGE_KEYS_COUNT};
use crate::actors::agent::{
    AgentCommand, AgentReply, ContextState, ConversationFilter, ConversationRecord, ImportedMessage, PageSpec,
};
use crate::actors::group_store::GroupRecord;
use crate::actors::reclaim::{
    DecidedAgent, DecidedBlock, DecidedFolder, DecidedMcpConfig, ImportDecision, MadeKind, PendingEntry,
    PendingKind,
};
use crate::actors::tool_store::ToolRecord;
use crate::agent_file::{ConversationMessage, FileEvent, FileReader, AGENT_FILE_VERSION};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{new_conversation_id, new_id, new_message_id};
use crate::letta_af::{
    letta_message, letta_parts, FileFolder, FileGroup, FileMcpServer, LettaParts, AGENT_FILE_AGENTS_COUNT_MAX,
};
use crate::limits::{AGENT_CONVERSATIONS_COUNT_MAX, MESSAGE_INDEXED_WORDS_COUNT_MAX, STORE_PAGE_COUNT_MAX};
use crate::model::{check_name_and_tags, AgentRecord, StoredMessage};

/// Suffix of an imported agent's name unless the client asks otherwise.
const COPY_SUFFIX: &str = "_copy";
/// Storage operations one import batch may take (a message costs its two
/// keys and its indexed words), well inside one transaction.
const IMPORT_BATCH_OPS_COUNT_MAX: usize = 6_000;
/// Bytes of messages and passages one import batch may carry.
const IMPORT_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of an import's recorded decision (its agents' names and tools,
/// shared blocks no agent holds, groups): one stored value.
pub const IMPORT_DECISION_BYTES_MAX: usize = kelpie_core::limits::STORAGE_VALUE_SIZE_BYTES_MAX / 2;

/// The import form's options besides the file (Letta's names).
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub override_name: Option<String>,
    pub append_copy_suffix: bool,
    pub strip_messages: bool,
    /// The model and embedding a Letta agent file's agent gets instead of
    /// those it names (`override_model_handle`, `override_embedding_handle`).
    pub model: Option<String>,
    pub embedding: Option<String>,
}

pub struct Transfer {
    actors: Arc<AgentActors>,
    mcp: Arc<McpServers>,
    folders: Arc<Folders>,
    tools: Arc<ToolService>,
    reclaimer: Arc<Reclaimer>,
    decided: Arc<DecidedImports>,
    groups: Arc<Groups>,
    llm: Arc<dyn ChatModel>,
    catalog: ModelCatalog,
    env: Env,
}

fn encode(value: &impl Serialize) -> ServiceResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ServiceError::Invalid(format!("cannot encode the agent file: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> ServiceResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::Invalid(format!("not a kelpie agent file: {what}: {e}")))
}

impl Transfer {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        (tools, reclaimer): (Arc<ToolService>, Arc<Reclaimer>),
        (decided, groups): (Arc<DecidedImports>, Arc<Groups>),
        (llm, catalog): (Arc<dyn ChatModel>, ModelCatalog),
        (folders, mcp): (Arc<Folders>, Arc<McpServers>),
        env: Env,
    ) -> Self {
        Transfer { actors, mcp, folders, tools, reclaimer, decided, groups, llm, catalog, env }
    }

    /// The export of `agent_id`, to read with [`AgentExport::next_chunk`].
    pub async fn export(&self, agent_id: &str) -> ServiceResult<AgentExport> {
        let agent = self.actors.record(agent_id).await?;
        // As Letta's export: an agent that manages a group comes with the
        // group and its members.
        let group = match &agent.managed_group {
            Some(group_id) => self.groups.managed(group_id).await?,
            None => None,
        };
        let mut agents = vec![agent];
        for member in group.iter().flat_map(|group| &group.agent_ids) {
            if !agents.iter().any(|agent| agent.id == *member) {
                agents.push(self.actors.record(member).await?);
            }
        }
        let custom_tools: Vec<ToolRecord> = self
            .tools
            .custom_tools()
            .await?
            .into_iter()
            .filter(|tool| agents.iter().any(|agent| agent.tool_ids.contains(&tool.id)))
            .collect();
        let letta = letta_parts(&agents, &custom_tools, group.as_ref());
        assert_eq!(letta.agents.len(), agents.len(), "one Letta agent per agent of the file");
        Ok(AgentExport {
            actors: Arc::clone(&self.actors),
            group,
            agents,
            index: 0,
            custom_tools,
            phase: ExportPhase::Head,
            letta: Some(letta),
            conversation_ids: Vec::new(),
        })
    }

    /// The whole export as one value (small agents, tests).
    pub async fn export_value(&self, agent_id: &str) -> ServiceResult<Value> {
        let mut export = self.export(agent_id).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = export.next_chunk().await? {
            bytes.extend(chunk);
        }
        decode("the export", &bytes)
    }

    /// Starts an import; feed it the file with [`AgentImport::feed`].
    pub fn import(&self, options: ImportOptions) -> AgentImport {
        AgentImport {
            parts: ImportParts {
                actors: Arc::clone(&self.actors),
                mcp: Arc::clone(&self.mcp),
                folders: Arc::clone(&self.folders),
                tools: Arc::clone(&self.tools),
                reclaimer: Arc::clone(&self.reclaimer),
                decided: Arc::clone(&self.decided),
                llm: Arc::clone(&self.llm),
                catalog: self.catalog.clone(),
                env: self.env.clone(),
            },
            options,
            reader: FileReader::new(),
            version_seen: false,
            pending_agents: Vec::new(),
            members_seen: std::collections::BTreeSet::new(),
            order_base: 0,
            kelpie_groups: Vec::new(),
            pending_tools: Vec::new(),
            begun: None,
            written: Vec::new(),
            block_ids: BTreeMap::new(),
            plan: None,
            folders: Vec::new(),
            mcp_servers: Vec::new(),
            tool_ids: BTreeMap::new(),
            conversation_ids: BTreeMap::new(),
            messages: Vec::new(),
            passages: Vec::new(),
            conversation_messages: Vec::new(),
            batch_ops: 0,
            batch_bytes: 0,
            messages_imported: false,
            ended: false,
            letta: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Imports a file held whole in memory; answers `{"agent_ids": [...]}`.
    pub async fn import_bytes(&self, file: &[u8], options: ImportOptions) -> ServiceResult<Value> {
        let mut import = self.import(options);
        import.feed(file).await?;
        import.finish().await
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ExportPhase {
    Head,
    /// The messages in Letta's form, inside the file's agent; `written`:
    /// whether any is out (some have no Letta form).
    LettaMessages {
        after: Option<String>,
        written: bool,
    },
    /// The agent's messages are out: the next agent's head.
    NextAgent,
    LettaTail,
    Messages {
        after: Option<String>,
    },
    Passages {
        after: Option<String>,
    },
    Conversations {
        after: Option<String>,
    },
    /// The messages of the `index`th conversation listed.
    ConversationMessages {
        index: usize,
        after: Option<String>,
        first: bool,
    },
    Tail,
    Done,
}

/// An export in progress: the file a piece at a time, each piece one page
/// of messages or passages.
pub struct AgentExport {
    actors: Arc<AgentActors>,
    /// The agents of the file: the exported one, then its group's members.
    agents: Vec<AgentRecord>,
    /// The group the agent manages, if any: written in Letta's part and in
    /// Kelpie's (`kelpie_groups`), which then holds every agent of the file.
    group: Option<GroupRecord>,
    /// The agent whose Letta messages (then whose Kelpie parts) are being
    /// written.
    index: usize,
    custom_tools: Vec<ToolRecord>,
    phase: ExportPhase,
    /// The Letta parts written around the Letta messages.
    letta: Option<LettaParts>,
    /// The agent's conversations, as the export lists them.
    conversation_ids: Vec<String>,
}

/// The items of a page, comma-separated, a comma first unless it is the
/// list's first page.
fn join_items(items: &[impl Serialize], first_page: bool) -> ServiceResult<Vec<u8>> {
    let mut bytes = Vec::new();
    for (n, item) in items.iter().enumerate() {
        if n > 0 || !first_page {
            bytes.push(b',');
        }
        bytes.extend(encode(item)?);
    }
    Ok(bytes)
}

impl AgentExport {
    /// The Letta agent `index` of the file, open for its messages.
    fn letta_head(&self, index: usize) -> ServiceResult<Vec<u8>> {
        let parts = self.letta.as_ref().ok_or_else(|| unexpected("export head"))?;
        let mut head = encode(&parts.agents[index])?;
        assert_eq!(head.pop(), Some(b'}'), "an agent renders as an object");
        head.extend_from_slice(b",\"messages\":[");
        Ok(head)
    }

    /// The next piece of the file; `None` once it is all out.
    pub async fn next_chunk(&mut self) -> ServiceResult<Option<Vec<u8>>> {
        let page = |after: &Option<String>| PageSpec {
            after: after.clone(),
            limit: STORE_PAGE_COUNT_MAX,
            ..PageSpec::default()
        };
        let chunk = match self.phase.clone() {
            // Letta's agent file first, Kelpie's whole agent after it under
            // `kelpie_*` keys (the version first, so an import skips the
            // Letta part without holding it).
            ExportPhase::Head => {
                let mut bytes =
                    format!("{{\"kelpie_agent_file_version\":{AGENT_FILE_VERSION},\"agents\":[").into_bytes();
                bytes.extend(self.letta_head(0)?);
                self.phase = ExportPhase::LettaMessages { after: None, written: false };
                bytes
            }
            ExportPhase::NextAgent => {
                self.index += 1;
                let mut bytes = b"]},".to_vec();
                bytes.extend(self.letta_head(self.index)?);
                self.phase = ExportPhase::LettaMessages { after: None, written: false };
                bytes
            }
            ExportPhase::LettaMessages { after, mut written } => {
                let command = AgentCommand::MessagePage(page(&after));
                let agent_id = &self.agents[self.index].id;
                let AgentReply::Messages(messages) = self.actors.invoke(agent_id, command).await? else {
                    return Err(unexpected("export messages"));
                };
                let file_id = crate::letta_af::agent_file_id(self.index);
                let mut bytes = Vec::new();
                for letta in messages.iter().filter_map(|message| letta_message(message, &file_id)) {
                    if written {
                        bytes.push(b',');
                    }
                    bytes.extend(encode(&letta)?);
                    written = true;
                }
                self.phase = match messages.last() {
                    Some(last) if messages.len() == STORE_PAGE_COUNT_MAX => {
                        ExportPhase::LettaMessages { after: Some(last.id.clone()), written }
                    }
                    _ if self.index + 1 < self.agents.len() => ExportPhase::NextAgent,
                    _ => ExportPhase::LettaTail,
                };
                bytes
            }
            ExportPhase::LettaTail => {
                let parts = self.letta.take().ok_or_else(|| unexpected("export letta tail"))?;
                let mut bytes = b"]}],\"groups\":".to_vec();
                bytes.extend(encode(&parts.groups)?);
                bytes.extend_from_slice(b",\"blocks\":");
                bytes.extend(encode(&parts.blocks)?);
                bytes.extend_from_slice(b",\"files\":[],\"sources\":[],\"tools\":");
                bytes.extend(encode(&parts.tools)?);
                bytes.extend_from_slice(b",\"mcp_servers\":[],\"metadata\":");
                bytes.extend(encode(
                    &json!({"exported_by": format!("kelpie {}", env!("CARGO_PKG_VERSION"))}),
                )?);
                // Kelpie's parts of every agent in turn, from the first.
                self.index = 0;
                bytes.push(b',');
                bytes.extend(self.kelpie_head()?);
                self.phase = ExportPhase::Messages { after: None };
                bytes
            }
            ExportPhase::Messages { after } => {
                let command = AgentCommand::MessagePage(page(&after));
                let AgentReply::Messages(messages) = self.actors.invoke(self.agent_id(), command).await?
                else {
                    return Err(unexpected("export messages"));
                };
                let mut bytes = join_items(&messages, after.is_none())?;
                match messages.last() {
                    Some(last) if messages.len() == STORE_PAGE_COUNT_MAX => {
                        self.phase = ExportPhase::Messages { after: Some(last.id.clone()) };
                    }
                    _ => {
                        bytes.extend(format!("],\"{}\":[", self.key("passages")).into_bytes());
                        self.phase = ExportPhase::Passages { after: None };
                    }
                }
                bytes
            }
            ExportPhase::Passages { after } => {
                let command = AgentCommand::PassagePage(page(&after));
                let AgentReply::Passages { passages, .. } =
                    self.actors.invoke(self.agent_id(), command).await?
                else {
                    return Err(unexpected("export passages"));
                };
                let mut bytes = join_items(&passages, after.is_none())?;
                match passages.last() {
                    Some(last) if passages.len() == STORE_PAGE_COUNT_MAX => {
                        self.phase = ExportPhase::Passages { after: Some(last.id.clone()) };
                    }
                    _ => {
                        bytes.extend(format!("],\"{}\":[", self.key("conversations")).into_bytes());
                        self.phase = ExportPhase::Conversations { after: None };
                    }
                }
                bytes
            }
            ExportPhase::Conversations { after } => self.conversations_chunk(after).await?,
            ExportPhase::ConversationMessages { index, after, first } => {
                self.conversation_messages_chunk(index, after, first).await?
            }
            ExportPhase::Tail if self.index + 1 < self.agents.len() => {
                self.index += 1;
                self.conversation_ids.clear();
                self.phase = ExportPhase::Messages { after: None };
                self.kelpie_head()?
            }
            ExportPhase::Tail => {
                let mut bytes = b"\"kelpie_custom_tools\":".to_vec();
                bytes.extend(encode(&self.custom_tools)?);
                if let Some(group) = &self.group {
                    bytes.extend_from_slice(b",\"kelpie_groups\":");
                    bytes.extend(encode(&[crate::letta_af::kelpie_group(group)])?);
                }
                bytes.push(b'}');
                self.phase = ExportPhase::Done;
                bytes
            }
            ExportPhase::Done => return Ok(None),
        };
        Ok(Some(chunk))
    }
}

impl AgentExport {
    /// The id of the agent whose Kelpie parts are being written.
    fn agent_id(&self) -> &str {
        &self.agents[self.index].id
    }

    /// Kelpie's part `part` of the agent being written: the first agent's
    /// under the plain name (as a single agent's export writes it), every
    /// other's keyed by its id in the file (`kelpie_messages@agent-1`).
    fn key(&self, part: &str) -> String {
        match self.index {
            0 => format!("kelpie_{part}"),
            n => format!("kelpie_{part}@{}", crate::letta_af::agent_file_id(n)),
        }
    }

    /// The agent being written, then its messages' list opened.
    fn kelpie_head(&self) -> ServiceResult<Vec<u8>> {
        let mut bytes = format!("\"{}\":", self.key("agent")).into_bytes();
        bytes.extend(encode(&self.agents[self.index])?);
        bytes.extend(format!(",\"{}\":[", self.key("messages")).into_bytes());
        Ok(bytes)
    }

    /// A page of the agent's conversations, as stored.
    async fn conversations_chunk(&mut self, after: Option<String>) -> ServiceResult<Vec<u8>> {
        let command = AgentCommand::ConversationPage {
            after: after.clone(),
            filter: ConversationFilter::default(),
            limit: STORE_PAGE_COUNT_MAX,
            descending: false,
        };
        let AgentReply::Conversations(records) = self.actors.invoke(self.agent_id(), command).await? else {
            return Err(unexpected("export conversations"));
        };
        let mut bytes = join_items(&records, after.is_none())?;
        self.conversation_ids.extend(records.iter().map(|record| record.id.clone()));
        assert!(
            self.conversation_ids.len() <= AGENT_CONVERSATIONS_COUNT_MAX,
            "an agent's conversations are bounded"
        );
        match records.last() {
            Some(last) if records.len() == STORE_PAGE_COUNT_MAX => {
                self.phase = ExportPhase::Conversations { after: Some(last.id.clone()) };
            }
            _ => {
                bytes.extend(format!("],\"{}\":[", self.key("messages_of_conversations")).into_bytes());
                self.phase = ExportPhase::ConversationMessages { index: 0, after: None, first: true };
            }
        }
        Ok(bytes)
    }

    /// A page of the messages of the `index`th conversation, each with its
    /// conversation's id.
    async fn conversation_messages_chunk(
        &mut self,
        index: usize,
        after: Option<String>,
        first: bool,
    ) -> ServiceResult<Vec<u8>> {
        let Some(id) = self.conversation_ids.get(index).cloned() else {
            self.phase = ExportPhase::Tail;
            return Ok(b"],".to_vec());
        };
        let page = PageSpec { after: after.clone(), limit: STORE_PAGE_COUNT_MAX, ..PageSpec::default() };
        let command = AgentCommand::ConversationMessages { id: id.clone(), page };
        let messages = match self.actors.invoke(self.agent_id(), command).await {
            Ok(AgentReply::Messages(messages)) => messages,
            Ok(_) => return Err(unexpected("export conversation messages")),
            // Deleted since it was listed: nothing of it to write.
            Err(ServiceError::Core(kelpie_core::Error::NotFound { kind: "conversation", .. })) => Vec::new(),
            Err(err) => return Err(err),
        };
        let items: Vec<ConversationMessage> = messages
            .iter()
            .map(|message| ConversationMessage { conversation_id: id.clone(), message: message.clone() })
            .collect();
        let bytes = join_items(&items, first)?;
        let first = first && items.is_empty();
        self.phase = match messages.last() {
            Some(last) if messages.len() == STORE_PAGE_COUNT_MAX => {
                ExportPhase::ConversationMessages { index, after: Some(last.id.clone()), first }
            }
            _ => ExportPhase::ConversationMessages { index: index + 1, after: None, first },
        };
        Ok(bytes)
    }
}

/// What an import uses of the service.
struct ImportParts {
    actors: Arc<AgentActors>,
    mcp: Arc<McpServers>,
    folders: Arc<Folders>,
    tools: Arc<ToolService>,
    reclaimer: Arc<Reclaimer>,
    decided: Arc<DecidedImports>,
    llm: Arc<dyn ChatModel>,
    catalog: ModelCatalog,
    env: Env,
}

/// The agent an import has begun: its record and its reclaim entry.
struct Begun {
    /// The agent's id in the file (groups name it by this).
    file_id: String,
    /// Which agent of a Kelpie file of several it is (`None`: the first,
    /// under the plain keys; else the `agent-<n>` its keys carry).
    member: Option<String>,
    /// Its place in the file: the agents appear in this order.
    order: usize,
    /// Its conversations' ids while another agent is being written.
    conversation_ids: BTreeMap<String, (String, u64)>,
    record: AgentRecord,
    pending: PendingKind,
    /// When the entry's lease was last renewed (wall clock).
    renewed_ms: u64,
}

/// An import in progress. Feed it the file in chunks of any size, then
/// [`AgentImport::finish`]; dropping it unfinished leaves the agent to the
/// reclaimer once its lease runs out.
pub struct AgentImport {
    parts: ImportParts,
    options: ImportOptions,
    reader: FileReader,
    version_seen: bool,
    /// The agents' raw values read before the version, with their member
    /// keys (see [`Begun::member`]).
    pending_agents: Vec<(Option<String>, Vec<u8>)>,
    /// The member keys of the agents begun so far in this Kelpie file.
    members_seen: std::collections::BTreeSet<Option<String>>,
    /// Where the agents of the Kelpie file being read start in the import's
    /// order (a Letta file's agents are read as one Kelpie file each).
    order_base: usize,
    /// The groups of a group manager's Kelpie file (`kelpie_groups`), their
    /// agents and blocks named by the exporting server's ids.
    kelpie_groups: Vec<FileGroup>,
    /// Custom tools read before the version, raw.
    pending_tools: Vec<Vec<u8>>,
    begun: Option<Begun>,
    /// Agents whose whole history is written, in file order, waiting to
    /// appear together.
    written: Vec<Begun>,
    /// Block id in the file → its new id (one for every agent naming it).
    block_ids: BTreeMap<String, String>,
    /// A Letta file's groups and shared blocks, made once the agents appear.
    plan: Option<(Vec<FileGroup>, Vec<Block>)>,
    /// A Letta file's sources with their files: made (and processed) just
    /// before the decision, taken back if the import fails before it, and
    /// attached to their agents as the decision rolls forward.
    folders: Vec<FileFolder>,
    /// A Letta file's MCP servers: made just before the decision (deleted
    /// if the import fails before it, or by the reclaimer if it stops);
    /// one of the same name here is used, and takes the file's config with
    /// the decision.
    mcp_servers: Vec<FileMcpServer>,
    /// Custom tool id in the file → its id on this server.
    tool_ids: BTreeMap<String, String>,
    /// Conversation id in the file → its new id and where its window began.
    conversation_ids: BTreeMap<String, (String, u64)>,
    messages: Vec<StoredMessage>,
    passages: Vec<Passage>,
    conversation_messages: Vec<ImportedMessage>,
    batch_ops: usize,
    batch_bytes: usize,
    messages_imported: bool,
    ended: bool,
    /// The fields of a Letta agent file (`.af`), raw, read whole and
    /// converted into Kelpie's file at the end ([`crate::letta_af`]).
    letta: BTreeMap<String, Vec<u8>>,
    /// What a converted Letta file left out.
    warnings: Vec<String>,
}

impl AgentImport {
    /// Options read from the form after the file still apply.
    pub fn set_options(&mut self, options: ImportOptions) {
        self.options = options;
    }

    /// Reads `chunk` of the file, writing complete batches as they fill.
    pub async fn feed(&mut self, chunk: &[u8]) -> ServiceResult<()> {
        let outcome = self.feed_inner(chunk).await;
        if outcome.is_err() {
            self.abandon().await;
        }
        outcome
    }

    async fn feed_inner(&mut self, chunk: &[u8]) -> ServiceResult<()> {
        self.reader.feed(chunk).map_err(ServiceError::Invalid)?;
        while let Some(event) = self.reader.next_event() {
            self.handle(event).await?;
        }
        Ok(())
    }

    /// The file is complete: writes the last batch and makes the agent
    /// visible; answers `{"agent_ids": [id]}`.
    pub async fn finish(mut self) -> ServiceResult<Value> {
        let outcome = self.finish_inner().await;
        if outcome.is_err() {
            self.abandon().await;
        }
        outcome
    }

    async fn finish_inner(&mut self) -> ServiceResult<Value> {
        self.reader.finish().map_err(ServiceError::Invalid)?;
        if self.ended && !self.version_seen && self.letta.contains_key("agents") {
            self.import_letta().await?;
        }
        if !self.ended {
            return Err(ServiceError::Invalid("not a kelpie agent file: it is incomplete".into()));
        }
        if !self.version_seen {
            return Err(ServiceError::Invalid(
                "not a kelpie agent file: no kelpie_agent_file_version".into(),
            ));
        }
        self.seal().await?;
        if self.written.is_empty() {
            return Err(ServiceError::Invalid("not a kelpie agent file: no agent".into()));
        }
        if self.plan.is_none() && (self.written.len() > 1 || !self.kelpie_groups.is_empty()) {
            self.plan = Some(self.kelpie_plan()?);
        }
        let mut decision = self.decision()?;
        let entries: Vec<PendingEntry> = self
            .written
            .iter()
            .map(|begun| PendingEntry { agent_id: begun.record.id.clone(), kind: begun.pending.clone() })
            .collect();
        let made_servers = self.make_mcp_servers(&mut decision).await?;
        let made = match self.make_folders().await {
            Ok(made) => made,
            Err(err) => {
                self.drop_mcp_servers(&made_servers).await;
                return Err(err);
            }
        };
        // The attachments roll forward with the agents, crash or not.
        decision.folders = made
            .iter()
            .map(|(id, agent_ids)| DecidedFolder { id: id.clone(), agent_ids: agent_ids.clone() })
            .collect();
        let bytes = encode(&decision)?.len();
        let outcome = match bytes > IMPORT_DECISION_BYTES_MAX {
            true => Err(ServiceError::Invalid(format!(
                "the file's agents, shared blocks, groups and folders take {bytes} bytes to record, over IMPORT_DECISION_BYTES_MAX = {IMPORT_DECISION_BYTES_MAX}"
            ))),
            false => {
                let ids = made.iter().map(|(id, _)| id).chain(&made_servers).cloned().collect();
                self.parts.decided.decide(&decision, entries, ids).await
            }
        };
        if let Err(err) = outcome {
            self.drop_folders(&made).await;
            self.drop_mcp_servers(&made_servers).await;
            return Err(err);
        }
        // Decided: from here on nothing is taken back, only finished.
        self.written.clear();
        self.plan = None;
        let agent_ids = self.parts.decided.roll_forward_held(&decision).await.inspect_err(|err| {
            tracing::warn!(%err, import = %decision.id, "a decided import is left to the background pass");
        })?;

        Ok(match self.warnings.is_empty() {
            true => json!({"agent_ids": agent_ids}),
            // What a Letta file held that this import left out.
            false => json!({"agent_ids": agent_ids, "warnings": self.warnings}),
        })
    }

    /// Makes the file's folders (a name already taken here gets Letta's
    /// `_<8 hex>` suffix) and uploads their files, which the document
    /// pipeline processes; answers each folder's id with the new ids of
    /// the agents it goes to. Refused (422) before any is made when they
    /// would take the server past `FOLDERS_COUNT_MAX`; what was made is
    /// taken back when a later one fails.
    async fn make_folders(&mut self) -> ServiceResult<Vec<(String, Vec<String>)>> {
        let folders = std::mem::take(&mut self.folders);
        if folders.is_empty() {
            return Ok(Vec::new());
        }
        let max = crate::actors::folder_store::FOLDERS_COUNT_MAX;
        let count = self.parts.folders.count().await? + folders.len();
        if count > max {
            return Err(ServiceError::Invalid(format!(
                "the file's {} sources would make {count} folders, over FOLDERS_COUNT_MAX = {max}",
                folders.len()
            )));
        }
        let mut made = Vec::with_capacity(folders.len());
        for folder in &folders {
            match self.make_folder(folder).await {
                Ok(id) => {
                    let agents = folder
                        .agent_ids
                        .iter()
                        .filter_map(|file_id| self.written.iter().find(|begun| &begun.file_id == file_id))
                        .map(|begun| begun.record.id.clone())
                        .collect();
                    made.push((id, agents));
                }
                Err(err) => {
                    self.drop_folders(&made).await;
                    return Err(err);
                }
            }
        }
        Ok(made)
    }

    /// One folder of the file with its files; its id.
    async fn make_folder(&self, folder: &FileFolder) -> ServiceResult<String> {
        let folders = &self.parts.folders;
        let name = match folders.id_by_name(&folder.name).await {
            Err(ServiceError::FolderNotFound(_)) => folder.name.clone(),
            Ok(_) => {
                let suffix = new_id("x", self.parts.env.rng.as_ref()).replace('-', "");
                format!("{}_{}", folder.name, &suffix[1..9])
            }
            Err(err) => return Err(err),
        };
        // The source's embedding when this server has it, else the default.
        let embedding = self.options.embedding.clone().or_else(|| {
            folder
                .embedding
                .clone()
                .filter(|handle| self.parts.catalog.resolve_embedding(Some(handle)).is_ok())
        });
        let input = FolderInput {
            name: Some(name),
            description: folder.description.clone(),
            instructions: folder.instructions.clone(),
            metadata: folder.metadata.clone(),
            embedding,
            ..FolderInput::default()
        };
        // On the reclaim list before it exists: a kill from here to the
        // decision leaves it to the reclaimer.
        let id = folders.new_folder_id();
        self.parts.reclaimer.note_made(&id, MadeKind::Folder).await?;
        if let Err(err) = folders.create_as(id.clone(), input, false).await {
            self.forget_made(&id).await;
            return Err(err);
        }
        let uploaded = async {
            for (file_name, content) in &folder.files {
                let start = folders
                    .begin_upload(
                        &id,
                        (file_name, Some("text/plain")),
                        crate::actors::folder::DuplicateHandling::Suffix,
                    )
                    .await?;
                let UploadStart::Upload(mut upload) = start else { return Err(unexpected("import upload")) };
                if let Err(err) = upload.feed(content.as_bytes()).await {
                    upload.cancel().await;
                    return Err(err);
                }
                upload.finish().await?;
            }
            ServiceResult::Ok(())
        }
        .await;
        match uploaded {
            Ok(()) => Ok(id),
            Err(err) => {
                self.drop_folders(&[(id, Vec::new())]).await;
                Err(err)
            }
        }
    }

    /// Makes the file's MCP servers (checked as the routes check a create:
    /// name, URL, private addresses, the stdio command) and adds each
    /// agent's MCP tools, found by name among those its server lists, to
    /// the decided agents. A server of the same name here is used as it is;
    /// the file's config for it, checked as a create's, goes into the
    /// decision (as Letta, it takes it: once the import is decided). Answers
    /// the servers made (deleted if the import fails before its decision).
    async fn make_mcp_servers(&mut self, decision: &mut ImportDecision) -> ServiceResult<Vec<String>> {
        let servers = std::mem::take(&mut self.mcp_servers);
        let mut made = Vec::new();
        for server in &servers {
            let id = match self.make_mcp_server(server, decision).await {
                Ok((id, true)) => {
                    made.push(id.clone());
                    id
                }
                Ok((id, false)) => id,
                Err(err) => {
                    self.drop_mcp_servers(&made).await;
                    return Err(err);
                }
            };
            let listed = match self.parts.mcp.tools(&id).await {
                Ok(listed) => listed,
                Err(err) => {
                    self.drop_mcp_servers(&made).await;
                    return Err(err);
                }
            };
            for (file_agent, tool_name) in &server.tools {
                let tool = listed.iter().find(|tool| tool["name"] == tool_name.as_str());
                let Some(tool_id) = tool.and_then(|tool| tool["id"].as_str()) else {
                    self.warnings.push(format!(
                        "MCP tool {tool_name:?} was not attached: server {:?} does not list it (refresh the server, then attach it)",
                        server.name
                    ));
                    continue;
                };
                let Some(begun) = self.written.iter().find(|begun| &begun.file_id == file_agent) else {
                    continue;
                };
                let agent = decision.agents.iter_mut().find(|agent| agent.id == begun.record.id);
                let agent = agent.ok_or_else(|| unexpected("an MCP tool's agent not decided"))?;
                if !agent.tool_ids.iter().any(|id| id == tool_id) {
                    agent.tool_ids.push(tool_id.to_string());
                }
            }
        }
        assert_eq!(made.len() + decision.mcp_configs.len(), servers.len(), "each server made or configured");
        Ok(made)
    }

    /// Server `server` of the file: made (on the reclaim list first, a kill
    /// before the decision leaving it to the reclaimer); or, of a name here
    /// already, its config checked and put in the decision. Its id, and
    /// whether it was made.
    async fn make_mcp_server(
        &self,
        server: &FileMcpServer,
        decision: &mut ImportDecision,
    ) -> ServiceResult<(String, bool)> {
        let existing = self.parts.mcp.list().await?;
        let existing = existing.iter().find(|record| record["server_name"] == server.name.as_str());
        if let Some(id) = existing.and_then(|record| record["id"].as_str()) {
            let config = self.parts.mcp.checked_config(id, server.config.clone()).await?;
            decision.mcp_configs.push(DecidedMcpConfig { id: id.to_string(), config });
            return Ok((id.to_string(), false));
        }
        let id = self.parts.mcp.new_server_id();
        self.parts.reclaimer.note_made(&id, MadeKind::McpServer).await?;
        let create = crate::requests::CreateMcpServer {
            server_name: server.name.clone(),
            config: server.config.clone(),
        };
        match self.parts.mcp.create_as(id.clone(), create).await {
            Ok(_) => Ok((id, true)),
            Err(err) => {
                self.forget_made(&id).await;
                Err(err)
            }
        }
    }

    /// Takes `id`, which this import did not make after all, off the
    /// reclaim list (left there, the reclaimer finds nothing to delete).
    async fn forget_made(&self, id: &str) {
        if let Err(err) = self.parts.reclaimer.forget_made(id).await {
            tracing::warn!(%err, %id, "an import's made entry is left to the reclaimer");
        }
    }

    /// Deletes MCP servers this import made (it failed before its decision).
    async fn drop_mcp_servers(&self, made: &[String]) {
        for id in made {
            match self.parts.mcp.delete(id).await {
                Ok(()) => self.forget_made(id).await,
                Err(err) => {
                    tracing::warn!(%err, mcp_server_id = %id, "a failed import's MCP server is left to the reclaimer")
                }
            }
        }
    }

    /// Deletes folders this import made (it failed before its decision).
    async fn drop_folders(&self, made: &[(String, Vec<String>)]) {
        for (id, _) in made {
            match self.parts.folders.delete(id).await {
                Ok(_) => self.forget_made(id).await,
                Err(err) => {
                    tracing::warn!(%err, folder_id = %id, "a failed import's folder is left to the reclaimer")
                }
            }
        }
    }

    /// The agent being written is complete: its last batch goes out and it
    /// waits with the others to appear.
    async fn seal(&mut self) -> ServiceResult<()> {
        self.flush().await?;
        self.park();
        Ok(())
    }

    /// The agent being written waits with the others (flushed first),
    /// in file order.
    fn park(&mut self) {
        if let Some(mut begun) = self.begun.take() {
            assert!(self.messages.is_empty() && self.passages.is_empty(), "a parked agent is flushed");
            begun.conversation_ids = std::mem::take(&mut self.conversation_ids);
            self.written.push(begun);
            self.written.sort_by_key(|begun| begun.order);
        }
    }

    /// Makes the agent of member key `member` the one being written (the
    /// parts of a Kelpie file of several agents may come in any order, as a
    /// file re-serialized with sorted keys has them).
    async fn switch_to(&mut self, member: &Option<String>, what: &str) -> ServiceResult<()> {
        if self.begun.as_ref().is_some_and(|begun| &begun.member == member) {
            return Ok(());
        }
        let Some(position) = self.written.iter().position(|begun| &begun.member == member) else {
            let which = member.as_deref().unwrap_or("the first agent");
            return Err(ServiceError::Invalid(format!(
                "not a kelpie agent file: {what} of {which} before its agent"
            )));
        };
        self.flush().await?;
        self.park();
        let position = self.written.iter().position(|begun| &begun.member == member).unwrap_or(position);
        let mut next = self.written.remove(position);
        self.conversation_ids = std::mem::take(&mut next.conversation_ids);
        self.begun = Some(next);
        Ok(())
    }

    /// The groups and shared blocks of a Kelpie file of several agents: a
    /// block two of its agents hold, or a group shares, is one block.
    fn kelpie_plan(&self) -> ServiceResult<(Vec<FileGroup>, Vec<Block>)> {
        let mut blocks = Vec::new();
        for (file_id, id) in &self.block_ids {
            let held: Vec<&Block> = self
                .written
                .iter()
                .filter_map(|begun| {
                    let label = begun.record.memory.label_of(id)?;
                    begun.record.memory.get(label).ok()
                })
                .collect();
            let grouped = self.kelpie_groups.iter().any(|group| group.shared_block_ids.contains(file_id));
            if let Some(block) = held.first().filter(|_| held.len() > 1 || grouped) {
                blocks.push(Block { id: file_id.clone(), ..(*block).clone() });
            }
        }
        for group in &self.kelpie_groups {
            if let Some(missing) = group.shared_block_ids.iter().find(|id| !self.block_ids.contains_key(*id))
            {
                return Err(ServiceError::Invalid(format!(
                    "group {} shares block {missing:?}, which no agent of the file holds",
                    group.id
                )));
            }
        }
        Ok((self.kelpie_groups.clone(), blocks))
    }

    /// Each written agent's final name and tools, checked before any appears.
    fn settle(&self) -> ServiceResult<Vec<DecidedAgent>> {
        let builtins = kelpie_tools::builtin_tools();
        let mut finishes = Vec::with_capacity(self.written.len());
        for begun in &self.written {
            let record = &begun.record;
            let name = match &self.options.override_name {
                Some(name) => name.clone(),
                None if self.options.append_copy_suffix => format!("{}{COPY_SUFFIX}", record.name),
                None => record.name.clone(),
            };
            check_name_and_tags(&name, &record.tags)?;
            // A custom tool not in the file cannot be attached on this server.
            let tool_ids: Vec<String> = record
                .tool_ids
                .iter()
                .filter_map(|id| match builtins.iter().any(|tool| tool.id == id) {
                    true => Some(id.clone()),
                    false => self.tool_ids.get(id).cloned(),
                })
                .collect();
            let drop_messages = self.options.strip_messages && self.messages_imported;
            let id = record.id.clone();
            finishes.push(DecidedAgent { id, name, tags: record.tags.clone(), tool_ids, drop_messages });
        }
        Ok(finishes)
    }

    /// What this import decides, checked whole before anything appears:
    /// every written agent, the blocks they share, the groups (new ids).
    fn decision(&mut self) -> ServiceResult<ImportDecision> {
        let agents = self.settle()?;
        let groups = self.group_records()?;
        let shared_blocks = self.decided_blocks();
        self.check_group_room(&groups, &shared_blocks)?;
        let id = new_id("import", self.parts.env.rng.as_ref());
        let decision = ImportDecision {
            id,
            agents,
            shared_blocks,
            groups,
            folders: Vec::new(),
            mcp_configs: Vec::new(),
        };
        let bytes = encode(&decision)?.len();
        if bytes > IMPORT_DECISION_BYTES_MAX {
            return Err(ServiceError::Invalid(format!(
                "the file's agents, shared blocks and groups take {bytes} bytes to record, over IMPORT_DECISION_BYTES_MAX = {IMPORT_DECISION_BYTES_MAX}"
            )));
        }
        assert_eq!(decision.agents.len(), self.written.len(), "every written agent is decided");
        Ok(decision)
    }

    /// The file's agent id → its new id.
    fn agent_id_of(&self, file_id: &str) -> ServiceResult<String> {
        let begun = self.written.iter().find(|begun| begun.file_id == file_id);
        begun
            .map(|begun| begun.record.id.clone())
            .ok_or_else(|| ServiceError::Invalid(format!("a group names agent {file_id:?}, not in the file")))
    }

    /// The new id of block `file_id` of the file (drawn on first use).
    fn block_id_of(&mut self, file_id: &str) -> String {
        let rng = self.parts.env.rng.as_ref();
        self.block_ids.entry(file_id.to_string()).or_insert_with(|| new_id("block", rng)).clone()
    }

    /// The file's groups as records on this server (every id remapped, a
    /// new id each), checked as a create checks them.
    fn group_records(&mut self) -> ServiceResult<Vec<GroupRecord>> {
        let Some((groups, _)) = self.plan.clone() else { return Ok(Vec::new()) };
        let mut creates = Vec::with_capacity(groups.len());
        for group in &groups {
            let invalid = |e: serde_json::Error| {
                ServiceError::Invalid(format!("group {}: manager_config: {e}", group.id))
            };
            let mut config: ManagerConfig =
                serde_json::from_value(group.manager_config.clone()).map_err(invalid)?;
            if let Some(manager) = &config.manager_agent_id {
                config.manager_agent_id = Some(self.agent_id_of(manager)?);
            }
            let agent_ids =
                group.agent_ids.iter().map(|id| self.agent_id_of(id)).collect::<ServiceResult<Vec<_>>>()?;
            let shared_block_ids = group.shared_block_ids.iter().map(|id| self.block_id_of(id)).collect();
            let create = GroupCreate {
                agent_ids,
                description: group.description.clone(),
                manager_config: Some(config),
                project_id: group.project_id.clone(),
                shared_block_ids,
                hidden: group.hidden,
            };
            let rng = self.parts.env.rng.as_ref();
            let record =
                super::groups::import_record(create, new_id("group", rng), self.parts.env.clock.wall_ms())
                    .map_err(|err| match err {
                        ServiceError::Invalid(why) => {
                            ServiceError::Invalid(format!("group {}: {why}", group.id))
                        }
                        other => other,
                    })?;
            creates.push(record);
        }
        Ok(creates)
    }

    /// The blocks the file's agents share (or its groups), each with the
    /// written agents holding its copy.
    fn decided_blocks(&mut self) -> Vec<DecidedBlock> {
        let Some((_, blocks)) = self.plan.clone() else { return Vec::new() };
        let mut shared = Vec::with_capacity(blocks.len());
        for block in blocks {
            let id = self.block_id_of(&block.id);
            let holders: Vec<String> = self
                .written
                .iter()
                .filter(|begun| begun.record.memory.label_of(&id).is_some())
                .map(|begun| begun.record.id.clone())
                .collect();
            let unheld = holders.is_empty().then(|| Block { id: id.clone(), ..block });
            shared.push(DecidedBlock { id, holders, unheld });
        }
        shared
    }

    /// Every member and manager of `groups` can take the group's shared
    /// blocks it does not hold yet (no label it has already, at most
    /// `CORE_MEMORY_BLOCKS_COUNT_MAX` blocks), as a group create checks.
    fn check_group_room(&self, groups: &[GroupRecord], blocks: &[DecidedBlock]) -> ServiceResult<()> {
        let plan_blocks = self.plan.as_ref().map(|(_, blocks)| blocks.as_slice()).unwrap_or_default();
        let block_of = |id: &str| -> Option<Block> {
            let file_id = self.block_ids.iter().find(|(_, new)| new.as_str() == id).map(|(file, _)| file)?;
            let block = plan_blocks.iter().find(|block| &block.id == file_id)?;
            Some(Block { id: id.to_string(), ..block.clone() })
        };
        // Each agent's memory as it will be once every group of the file
        // has attached its shared blocks, checked as the attach will be.
        let mut trials: BTreeMap<&str, CoreMemory> = BTreeMap::new();
        for group in groups {
            let everyone = group.agent_ids.iter().chain(group.manager_agent_id.iter());
            for agent_id in everyone {
                let Some(begun) = self.written.iter().find(|begun| &begun.record.id == agent_id) else {
                    return Err(unexpected("a group member not written"));
                };
                let record = &begun.record;
                let trial = trials.entry(agent_id.as_str()).or_insert_with(|| record.memory.clone());
                for id in &group.shared_block_ids {
                    let Some(block) = block_of(id).filter(|_| trial.label_of(id).is_none()) else { continue };
                    if trial.get(&block.label).is_ok() {
                        return Err(ServiceError::Invalid(format!(
                            "agent {agent_id} already has a block labelled {:?}; a shared block cannot join it",
                            block.label
                        )));
                    }
                    let count = trial.blocks().len() + 1;
                    if count > kelpie_memory::core::CORE_MEMORY_BLOCKS_COUNT_MAX {
                        return Err(ServiceError::Invalid(format!(
                            "agent {agent_id} would hold {count} blocks, over CORE_MEMORY_BLOCKS_COUNT_MAX = {}",
                            kelpie_memory::core::CORE_MEMORY_BLOCKS_COUNT_MAX
                        )));
                    }
                    let label = block.label.clone();
                    trial.attach(block).map_err(|err| {
                        ServiceError::Invalid(format!(
                            "agent {agent_id} cannot take shared block {label:?}: {err}"
                        ))
                    })?;
                }
                crate::context::check_fits(&record.system, trial, record.llm.context_window).map_err(
                    |why| {
                        ServiceError::Invalid(format!(
                            "agent {agent_id} with its groups' shared blocks: {why}"
                        ))
                    },
                )?;
            }
        }
        assert!(blocks.iter().all(|block| block.holders.len() <= self.written.len()));
        Ok(())
    }

    /// Converts the Letta agent file read so far into Kelpie's and reads
    /// that as the file.
    async fn import_letta(&mut self) -> ServiceResult<()> {
        let mut fields = BTreeMap::new();
        for (key, raw) in std::mem::take(&mut self.letta) {
            let value: Value = serde_json::from_slice(&raw)
                .map_err(|e| ServiceError::Invalid(format!("not a Letta agent file: {key}: {e}")))?;
            fields.insert(key, value);
        }
        // Converted in a scope of its own: nothing of it is held across an await.
        let converted = {
            let catalog = &self.parts.catalog;
            let (model, embedding_handle) = (self.options.model.clone(), self.options.embedding.clone());
            // An override the client asked for must exist here.
            if let Some(handle) = &model {
                catalog.resolve_llm(Some(handle))?;
            }
            if let Some(handle) = &embedding_handle {
                catalog.resolve_embedding(Some(handle))?;
            }
            let llm = |handle: Option<&str>| match catalog.resolve_llm(model.as_deref().or(handle)) {
                Ok(settings) => (settings, None),
                Err(err) => {
                    let fallback = catalog.resolve_llm(None).unwrap_or_else(|_| {
                        catalog
                            .resolve_llm(Some("openai/gpt-4o-mini"))
                            .expect("an OpenAI-compatible model resolves")
                    });
                    let why = format!(
                        "model {handle:?} is not available here ({err}); the agent uses {}",
                        fallback.handle
                    );
                    (fallback, Some(why))
                }
            };
            let embedding = |handle: Option<&str>| match catalog
                .resolve_embedding(embedding_handle.as_deref().or(handle))
            {
                Ok(settings) => (settings, None),
                Err(err) => {
                    let local = catalog.resolve_embedding(None).expect("the local embedding always resolves");
                    let why = format!(
                        "embedding {handle:?} is not available here ({err}); the agent uses {}",
                        local.handle
                    );
                    (local, Some(why))
                }
            };
            let resolvers = crate::letta_af::Resolvers {
                llm: &llm,
                embedding: &embedding,
                builtins: kelpie_tools::builtin_tools()
                    .iter()
                    .map(|tool| (tool.name.to_string(), tool.id.to_string()))
                    .collect(),
                now_ms: self.parts.env.clock.wall_ms(),
            };
            crate::letta_af::convert(&fields, &resolvers).map_err(|reason| {
                ServiceError::Invalid(format!("cannot import this Letta agent file: {reason}"))
            })?
        };
        self.warnings = converted.warnings;
        self.plan = Some((converted.groups, converted.shared_blocks));
        self.folders = converted.folders;
        self.mcp_servers = converted.mcp_servers;
        // Each agent is read as a Kelpie file of its own, one after another.
        for (index, file) in converted.agents.iter().enumerate() {
            let bytes = encode(file)?;
            self.reader = FileReader::new();
            (self.ended, self.version_seen) = (false, false);
            (self.order_base, self.members_seen) = (index, std::collections::BTreeSet::new());
            self.feed_inner(&bytes).await?;
            self.reader.finish().map_err(ServiceError::Invalid)?;
            self.seal().await?;
        }
        Ok(())
    }

    /// Gives the import up (the upload broke): what was written is left to
    /// the reclaimer now, not at lease expiry.
    pub async fn cancel(mut self) {
        self.abandon().await;
    }

    /// Takes back everything written: every agent (all invisible: nothing
    /// appears before the decision) is left to the reclaimer.
    async fn abandon(&mut self) {
        let unfinished = std::mem::take(&mut self.written).into_iter().chain(self.begun.take());
        for begun in unfinished {
            let id = begun.record.id;
            let outcome = async {
                self.parts.reclaimer.note(&id, PendingKind::Ended).await?;
                self.parts.actors.invoke(&id, AgentCommand::AbandonImport).await?;
                ServiceResult::Ok(())
            }
            .await;
            if let Err(err) = outcome {
                tracing::warn!(%err, agent_id = %id, "an abandoned import is left to its lease");
            }
        }
    }

    async fn handle(&mut self, event: FileEvent) -> ServiceResult<()> {
        // Kelpie's parts under their `kelpie_` names (beside a Letta file's
        // parts, as exports write them) are read as the plain names; those
        // of a group manager's further agents carry the agent's id in the
        // file (`kelpie_messages@agent-1`).
        let unprefixed = |key: String| -> (String, Option<String>) {
            let Some(rest) = key.strip_prefix("kelpie_") else { return (key, None) };
            let (name, member) = match rest.split_once('@') {
                Some((name, member)) => (name, Some(member.to_string())),
                None => (rest, None),
            };
            match name {
                "agent" | "messages" | "passages" | "conversations" | "messages_of_conversations" => {
                    (name.to_string(), member)
                }
                "custom_tools" if member.is_none() => (name.to_string(), None),
                _ => (key, None),
            }
        };
        let (event, member) = match event {
            FileEvent::Field { key, value } => {
                let (key, member) = unprefixed(key);
                (FileEvent::Field { key, value }, member)
            }
            FileEvent::Item { key, value } => {
                let (key, member) = unprefixed(key);
                (FileEvent::Item { key, value }, member)
            }
            FileEvent::End => (FileEvent::End, None),
        };
        match event {
            FileEvent::Field { key, value } if key == "kelpie_agent_file_version" => {
                let version: u32 = decode("kelpie_agent_file_version", &value)?;
                if version != AGENT_FILE_VERSION {
                    return Err(ServiceError::Invalid(format!(
                        "agent file version {version} is not {AGENT_FILE_VERSION}"
                    )));
                }
                self.version_seen = true;
                // A Kelpie file: the Letta parts an export writes beside it
                // are not read (nor held).
                self.reader.skip_fields(&crate::letta_af::LETTA_FIELDS);
                self.letta.clear();
                for (member, agent) in std::mem::take(&mut self.pending_agents) {
                    self.begin_from(member, &agent).await?;
                }
                for tool in std::mem::take(&mut self.pending_tools) {
                    self.upsert_tool(&tool).await?;
                }
            }
            // The version is checked before anything else, whatever the
            // order of the fields (a file re-serialized with sorted keys has
            // `agent` first): an agent before it waits for it.
            FileEvent::Field { key, value } if key == "agent" => {
                let pending = self.pending_agents.iter().any(|(seen, _)| seen == &member);
                if pending || self.members_seen.contains(&member) {
                    return Err(ServiceError::Invalid(match &member {
                        None => "not a kelpie agent file: two agents".into(),
                        Some(member) => format!("not a kelpie agent file: agent {member} twice"),
                    }));
                }
                match self.version_seen {
                    true => self.begin_from(member, &value).await?,
                    false => self.pending_agents.push((member, value)),
                }
            }
            FileEvent::Item { key, value } if key == "messages" => {
                self.check_begun("messages", &member).await?;
                if self.options.strip_messages {
                    return Ok(());
                }
                let message: StoredMessage = decode("a message", &value)?;
                let agent_id = self.begun.as_ref().map(|begun| begun.record.id.as_str()).unwrap_or_default();
                let id = new_message_id(agent_id, self.parts.env.rng.as_ref());
                let message = StoredMessage { id, ..message };
                // Its row, its id and one search-index key per word.
                let words = store::words(&message.searchable_text()).len();
                self.batch_ops += 2 + MESSAGE_INDEXED_WORDS_COUNT_MAX.min(words);
                self.batch_bytes += value.len();
                self.messages.push(message);
                self.flush_if_full().await?;
            }
            FileEvent::Item { key, value } if key == "passages" => {
                self.check_begun("passages", &member).await?;
                let passage: Passage = decode("a passage", &value)?;
                let passage = Passage { id: new_id("passage", self.parts.env.rng.as_ref()), ..passage };
                self.batch_ops += PASSAGE_KEYS_COUNT;
                self.batch_bytes += value.len();
                self.passages.push(passage);
                self.flush_if_full().await?;
            }
            FileEvent::Item { key, value } if key == "conversations" => {
                self.check_begun("conversations", &member).await?;
                self.import_conversation(&value).await?;
            }
            FileEvent::Item { key, value } if key == "messages_of_conversations" => {
                self.check_begun("conversation messages", &member).await?;
                if !self.options.strip_messages {
                    self.import_conversation_message(&value).await?;
                }
            }
            FileEvent::Item { key, value } if key == "custom_tools" => match self.version_seen {
                true => self.upsert_tool(&value).await?,
                false => self.pending_tools.push(value),
            },
            FileEvent::Item { key, value } if key == "kelpie_groups" => {
                if self.kelpie_groups.len() >= crate::letta_af::AGENT_FILE_GROUPS_COUNT_MAX {
                    return Err(ServiceError::Invalid(format!(
                        "the file holds more than AGENT_FILE_GROUPS_COUNT_MAX = {} groups",
                        crate::letta_af::AGENT_FILE_GROUPS_COUNT_MAX
                    )));
                }
                let raw: Value = decode("a group", &value)?;
                let group = crate::letta_af::group_of(&raw).map_err(ServiceError::Invalid)?;
                self.kelpie_groups.push(group);
            }
            FileEvent::Field { key, value }
                if !self.version_seen && crate::letta_af::LETTA_FIELDS.contains(&key.as_str()) =>
            {
                self.letta.insert(key, value);
            }
            FileEvent::End => self.ended = true,
            // Fields this version does not know are ignored, as before.
            FileEvent::Field { .. } | FileEvent::Item { .. } => {}
        }
        Ok(())
    }

    /// Stores a conversation of the file in the agent, under a new id.
    async fn import_conversation(&mut self, value: &[u8]) -> ServiceResult<()> {
        let old: ConversationRecord = decode("a conversation", value)?;
        if self.conversation_ids.len() >= AGENT_CONVERSATIONS_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "the file's agent holds more than AGENT_CONVERSATIONS_COUNT_MAX = {AGENT_CONVERSATIONS_COUNT_MAX} conversations"
            )));
        }
        if self.conversation_ids.contains_key(&old.id) {
            return Err(ServiceError::Invalid(format!("conversation {} is in the file twice", old.id)));
        }
        let agent_id = self.begun.as_ref().map(|begun| begun.record.id.clone()).unwrap_or_default();
        let id = new_conversation_id(&agent_id, self.parts.env.rng.as_ref());
        let record = ConversationRecord {
            id: id.clone(),
            agent_id: agent_id.clone(),
            slot: 0,
            messages: 0,
            context: ContextState { start_seq: 0, ..old.context.clone() },
            ..old.clone()
        };
        self.conversation_ids.insert(old.id, (id, old.context.start_seq));
        self.parts.actors.invoke(&agent_id, AgentCommand::ImportConversation(Box::new(record))).await?;
        Ok(())
    }

    /// Buffers a message of a conversation of the file, under a new id.
    async fn import_conversation_message(&mut self, value: &[u8]) -> ServiceResult<()> {
        let ConversationMessage { conversation_id, message } = decode("a conversation message", value)?;
        let Some((new_conversation, window_start)) = self.conversation_ids.get(&conversation_id).cloned()
        else {
            return Err(ServiceError::Invalid(format!(
                "not a kelpie agent file: a message of conversation {conversation_id}, not in the file before it"
            )));
        };
        let agent_id = self.begun.as_ref().map(|begun| begun.record.id.as_str()).unwrap_or_default();
        let compacted = message.seq < window_start;
        let message = StoredMessage { id: new_message_id(agent_id, self.parts.env.rng.as_ref()), ..message };
        let words = store::words(&message.searchable_text()).len();
        // Its row, its id, its conversation index and its indexed words.
        self.batch_ops += 3 + MESSAGE_INDEXED_WORDS_COUNT_MAX.min(words);
        self.batch_bytes += value.len();
        self.conversation_messages.push(ImportedMessage {
            conversation_id: new_conversation,
            message,
            compacted,
        });
        self.flush_if_full().await
    }

    async fn upsert_tool(&mut self, value: &[u8]) -> ServiceResult<()> {
        let tool: ToolRecord = decode("a custom tool", value)?;
        let old_id = tool.id.clone();
        let new = self.parts.tools.upsert_record(tool).await?;
        self.tool_ids.insert(old_id, new.id);
        Ok(())
    }

    /// Begins the agent of member key `member` (see [`Begun::member`]) from
    /// its record; the one written so far waits with the others.
    async fn begin_from(&mut self, member: Option<String>, agent: &[u8]) -> ServiceResult<()> {
        let index = match &member {
            None => 0,
            Some(key) => match key.strip_prefix("agent-").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if (1..AGENT_FILE_AGENTS_COUNT_MAX).contains(&n) => n,
                _ => {
                    return Err(ServiceError::Invalid(format!(
                        "not a kelpie agent file: agent key {key:?} is not agent-<n> with 1 <= n < AGENT_FILE_AGENTS_COUNT_MAX = {AGENT_FILE_AGENTS_COUNT_MAX}"
                    )))
                }
            },
        };
        let record: AgentRecord = decode("agent", agent)?;
        let file_id = record.id.clone();
        if self.written.iter().chain(self.begun.iter()).any(|begun| begun.file_id == file_id) {
            return Err(ServiceError::Invalid(format!("not a kelpie agent file: agent {file_id} twice")));
        }
        let record = self.fresh_record(record)?;
        self.flush().await?;
        self.park();
        self.members_seen.insert(member.clone());
        self.begin((file_id, member, self.order_base + index), record).await
    }

    /// Makes the agent `member`'s parts belong to the one being written.
    async fn check_begun(&mut self, what: &str, member: &Option<String>) -> ServiceResult<()> {
        if !self.pending_agents.is_empty() {
            return Err(ServiceError::Invalid(format!(
                "not a kelpie agent file: {what} before kelpie_agent_file_version"
            )));
        }
        match self.begun.is_some() || !self.written.is_empty() {
            true => self.switch_to(member, what).await,
            false => Err(ServiceError::Invalid(format!("not a kelpie agent file: {what} before the agent"))),
        }
    }

    /// The file's agent with new ids for it and its blocks, checked as a
    /// create is (the name is settled at the end, when every option is known),
    /// linked to no folder, identity or group.
    fn fresh_record(&mut self, mut record: AgentRecord) -> ServiceResult<AgentRecord> {
        let rng = self.parts.env.rng.as_ref();
        record.id = new_id("agent", rng);
        // A group's manager is an agent of this server, not of a file.
        record.managed_group = None;
        check_name_and_tags(&record.name, &record.tags)?;
        let mut blocks = Vec::new();
        for old in record.memory.blocks() {
            // A block the file gives several agents keeps one new id.
            let id = self.block_ids.entry(old.id.clone()).or_insert_with(|| new_id("block", rng)).clone();
            let mut block = Block::new(id, old.label.clone(), old.value.clone(), Some(old.limit))?;
            block.description = old.description.clone();
            block.read_only = old.read_only;
            blocks.push(block);
        }
        record.memory = CoreMemory::new(blocks)?;
        // Links live in their stores too, which know only the source agent:
        // the copy starts without folders, open files and identities.
        record.folders.clear();
        record.open_files.clear();
        record.identity_ids.clear();
        Ok(record)
    }

    /// Puts the agent on the reclaim list, then begins it, invisible.
    async fn begin(
        &mut self,
        (file_id, member, order): (String, Option<String>, usize),
        record: AgentRecord,
    ) -> ServiceResult<()> {
        assert!(self.begun.is_none(), "one agent is written at a time");
        let pending = self.parts.reclaimer.import_kind();
        self.parts.reclaimer.note(&record.id, pending.clone()).await?;
        let now = self.parts.env.clock.wall_ms();
        let conversation_ids = BTreeMap::new();
        let begun = Begun {
            file_id,
            member,
            order,
            conversation_ids,
            record: record.clone(),
            pending,
            renewed_ms: now,
        };
        self.begun = Some(begun);
        self.conversation_ids.clear();
        let id = record.id.clone();
        self.parts.actors.invoke(&id, AgentCommand::ImportBegin(Box::new(record))).await?;
        Ok(())
    }

    async fn flush_if_full(&mut self) -> ServiceResult<()> {
        if self.batch_ops >= IMPORT_BATCH_OPS_COUNT_MAX || self.batch_bytes >= IMPORT_BATCH_BYTES_MAX {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the buffered messages and passages as one batch, passages
    /// embedded again with the agent's embedding (a file's vectors are not
    /// trusted), and renews the import's lease when half of it is gone.
    async fn flush(&mut self) -> ServiceResult<()> {
        let Some(begun) = &mut self.begun else { return Ok(()) };
        if self.messages.is_empty() && self.passages.is_empty() && self.conversation_messages.is_empty() {
            return Ok(());
        }
        let mut passages = std::mem::take(&mut self.passages);
        if !passages.is_empty() {
            let texts: Vec<String> = passages.iter().map(|passage| passage.text.clone()).collect();
            let vectors = self.parts.llm.embed(&begun.record.embedding, &texts).await?;
            for (passage, vector) in passages.iter_mut().zip(vectors) {
                passage.embedding = vector;
            }
        }
        let messages = std::mem::take(&mut self.messages);
        self.messages_imported |= !messages.is_empty();
        let conversation_messages = std::mem::take(&mut self.conversation_messages);
        let batch = AgentCommand::ImportBatch { messages, passages, conversation_messages };
        self.parts.actors.invoke(&begun.record.id, batch).await?;
        (self.batch_ops, self.batch_bytes) = (0, 0);
        let now = self.parts.env.clock.wall_ms();
        if now.saturating_sub(begun.renewed_ms) > super::reclaim::IMPORT_LEASE_MS / 2 {
            // The agents written before this one wait on the same lease.
            for begun in self.written.iter_mut().chain(self.begun.iter_mut()) {
                let renewed = self.parts.reclaimer.import_kind();
                self.parts.reclaimer.note(&begun.record.id, renewed.clone()).await?;
                (begun.pending, begun.renewed_ms) = (renewed, now);
            }
        }
        Ok(())
    }
}
