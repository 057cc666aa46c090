//! The agent service: every agent operation of the API, routed to the
//! agent's actor (and the directory shards for listing). Handlers call this
//! and nothing else.
//!
//! Message turns of one agent are serialized by a per-agent lock held for
//! the whole turn (the LLM calls happen outside the actor, between the
//! actor invocations that persist each step); turns of different agents
//! run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kelpie_core::{ActorId, Env, Error};
use kelpie_memory::{Block, CoreMemory, MemoryError, WorkingMemory};
use kelpie_runtime::{ActorRef, Runtime};
use kelpie_tools::builtin_tools;
use serde_json::Value;
use thiserror::Error;

use super::actor::{AgentActor, AgentCommand, AgentPatch, AgentReply, BlockPatch, AGENT_NAMESPACE};
use super::block_store::BlockStoreActor;
use super::directory::{
    merge_shards, next_stamp, shard_name, shard_of, DirectoryActor, DirectoryCommand, DirectoryEntry,
    DirectoryReply, StampedEntry, DIRECTORY_NAMESPACE, DIRECTORY_SHARDS_COUNT,
};
use super::letta::{
    agent_json, block_json, builtin_tool_json, custom_tool_json, letta_messages, passage_json,
    search_result_json,
};
use super::model::AgentRecord;
use super::page::{json_id, paginate, Page};
use super::runs::{ActiveRuns, RunActor};
use super::tool_service::ToolService;
use super::tool_store::ToolRecord;
use crate::api::{CreateAgent, CreatePassage, UpdateAgent, UpdateBlock};
use crate::ids::{id_from_key, new_id};
use crate::llm::{LlmClients, LlmError};
use crate::models::{ModelCatalog, ModelError};

/// Longest agent name, in bytes.
pub const AGENT_NAME_BYTES_MAX: usize = 256;
/// Most tags on one agent.
pub const AGENT_TAGS_COUNT_MAX: usize = 64;
/// Longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;
/// Results an archival search returns when the client does not say.
const ARCHIVAL_SEARCH_COUNT_DEFAULT: usize = 10;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("Agent with ID {0} not found")]
    AgentNotFound(String),
    #[error("Run with ID {0} not found")]
    RunNotFound(String),
    #[error("Block with ID {0} not found")]
    BlockNotFound(String),
    #[error("Tool with ID {0} not found")]
    ToolNotFound(String),
    #[error("a tool named {0:?} already exists")]
    ToolNameTaken(String),
    #[error(transparent)]
    Tool(#[from] kelpie_tools::python::ToolError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Core(Error),
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound { kind: "agent", id } => ServiceError::AgentNotFound(id),
            Error::NotFound { kind: "tool", id } => ServiceError::ToolNotFound(id),
            other => ServiceError::Core(other),
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// The default system prompt: our own words.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant with a persistent memory. \
Your core memory blocks are shown below and are always in view; keep them up to date with \
memory_insert and memory_replace (or core_memory_append and core_memory_replace) when you learn \
something worth keeping. Keep short-lived notes, such as a plan for the task at hand, in your \
working memory with working_memory_set; they are shown below until they expire. Store \
longer facts with archival_memory_insert and look them up with archival_memory_search; find \
earlier parts of the conversation with conversation_search. The user only sees what you send \
with send_message: answer every user message by calling send_message exactly once, at the end.";

/// The actor runtimes the agent service routes commands to.
pub struct AgentRuntimes {
    pub agents: Runtime<AgentActor>,
    pub directory: Runtime<DirectoryActor>,
    pub runs: Runtime<RunActor>,
    pub blocks: Runtime<BlockStoreActor>,
}

pub struct AgentService {
    pub(super) agents: Runtime<AgentActor>,
    pub(super) directory: Runtime<DirectoryActor>,
    pub(super) env: Env,
    pub(super) llm: LlmClients,
    catalog: ModelCatalog,
    pub tools: Arc<ToolService>,
    pub(super) runs: Runtime<RunActor>,
    pub(super) blocks: Runtime<BlockStoreActor>,
    pub(super) active_runs: ActiveRuns,
    turn_locks: KeyedLocks,
    /// The last creation stamp given out; `None` until read from the shards.
    last_stamp: tokio::sync::Mutex<Option<u64>>,
    /// Held while a shared block changes in its store and in its agents, so
    /// two changes to one block reach every agent in the store's order.
    pub(super) block_locks: KeyedLocks,
}

/// One async lock per key, created on demand and forgotten when unused.
#[derive(Default)]
pub(super) struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub(super) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|poison| poison.into_inner());
        // Forget locks nobody holds or waits for, so the table stays small.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(key.to_string()).or_default())
    }
}

pub(super) fn unexpected(what: &str) -> ServiceError {
    ServiceError::Core(Error::Internal(format!("agent actor answered {what} with the wrong reply")))
}

impl AgentService {
    pub fn new(
        runtimes: AgentRuntimes,
        env: Env,
        llm: LlmClients,
        catalog: ModelCatalog,
        tools: Arc<ToolService>,
    ) -> Self {
        AgentService {
            agents: runtimes.agents,
            directory: runtimes.directory,
            env,
            llm,
            catalog,
            tools,
            runs: runtimes.runs,
            blocks: runtimes.blocks,
            active_runs: ActiveRuns::default(),
            turn_locks: KeyedLocks::default(),
            last_stamp: tokio::sync::Mutex::new(None),
            block_locks: KeyedLocks::default(),
        }
    }

    /// The randomness ids are drawn from.
    pub fn rng(&self) -> &dyn kelpie_core::RngSource {
        self.env.rng.as_ref()
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    pub(super) fn agent_ref(&self, agent_id: &str) -> ServiceResult<ActorRef<AgentActor>> {
        if !agent_id.starts_with("agent-") {
            return Err(ServiceError::AgentNotFound(agent_id.to_string()));
        }
        let actor_id = ActorId::new(AGENT_NAMESPACE, agent_id)
            .map_err(|_| ServiceError::AgentNotFound(agent_id.to_string()))?;
        Ok(self.agents.actor_ref(actor_id))
    }

    /// Sends `command` to directory shard `shard`.
    async fn directory_shard(
        &self,
        shard: String,
        command: DirectoryCommand,
    ) -> ServiceResult<DirectoryReply> {
        let actor_id = ActorId::new(DIRECTORY_NAMESPACE, shard)?;
        Ok(self.directory.invoke(&actor_id, command).await?)
    }

    /// Lists `entry` in creation order, after every agent listed before.
    pub(super) async fn register(&self, entry: DirectoryEntry) -> ServiceResult<()> {
        let shard = shard_of(&entry.id);
        let stamp = self.next_stamp().await?;
        self.directory_shard(shard, DirectoryCommand::Register(StampedEntry { stamp, entry })).await?;
        Ok(())
    }

    /// A creation stamp above every stamp given out or stored. The first
    /// call reads each shard's largest stamp, so a restart (or a clock that
    /// went back) never reorders new agents before older ones.
    async fn next_stamp(&self) -> ServiceResult<u64> {
        let mut last = self.last_stamp.lock().await;
        let previous = match *last {
            Some(previous) => previous,
            None => {
                let replies = futures::future::try_join_all(
                    (0..DIRECTORY_SHARDS_COUNT)
                        .map(|index| self.directory_shard(shard_name(index), DirectoryCommand::LastStamp)),
                )
                .await?;
                let mut stored = 0;
                for reply in replies {
                    let DirectoryReply::LastStamp(stamp) = reply else {
                        return Err(unexpected("last stamp"));
                    };
                    stored = stored.max(stamp);
                }
                stored
            }
        };
        let stamp = next_stamp(previous, self.env.clock.wall_ms());
        *last = Some(stamp);
        Ok(stamp)
    }

    /// Every listed agent, in creation order.
    async fn directory_entries(&self) -> ServiceResult<Vec<DirectoryEntry>> {
        let replies = futures::future::try_join_all(
            (0..DIRECTORY_SHARDS_COUNT)
                .map(|index| self.directory_shard(shard_name(index), DirectoryCommand::List)),
        )
        .await?;
        let mut shards = Vec::with_capacity(DIRECTORY_SHARDS_COUNT);
        for reply in replies {
            let DirectoryReply::Entries(entries) = reply else { return Err(unexpected("list")) };
            shards.push(entries);
        }
        Ok(merge_shards(shards))
    }

    pub(super) async fn record(&self, agent_id: &str) -> ServiceResult<AgentRecord> {
        match self.agent_ref(agent_id)?.invoke(AgentCommand::Get).await? {
            AgentReply::Agent(agent) => Ok(*agent),
            _ => Err(unexpected("get")),
        }
    }

    /// The agent as Letta shows it; `custom` are the server's custom tools
    /// (an attached tool deleted since is not shown).
    pub(super) fn render_agent(&self, agent: &AgentRecord, custom: &[ToolRecord]) -> Value {
        let builtins = builtin_tools();
        let tools = agent
            .tool_ids
            .iter()
            .filter_map(|id| match builtins.iter().find(|tool| tool.id == id) {
                Some(builtin) => Some(builtin_tool_json(builtin)),
                None => custom.iter().find(|tool| &tool.id == id).map(custom_tool_json),
            })
            .collect();
        agent_json(agent, tools)
    }

    pub(super) async fn render(&self, agent: &AgentRecord) -> ServiceResult<Value> {
        Ok(self.render_agent(agent, &self.tools.custom_tools().await?))
    }

    fn build_record(
        &self,
        request: CreateAgent,
        custom: &[ToolRecord],
        idempotency_key: Option<&str>,
    ) -> ServiceResult<AgentRecord> {
        let now = self.env.clock.wall_ms();
        let id = match idempotency_key {
            Some(key) => id_from_key("agent", key),
            None => new_id("agent", self.env.rng.as_ref()),
        };
        let name = request.name.unwrap_or_else(|| format!("agent-{}", &id[6..14]));
        check_name_and_tags(&name, request.tags.as_deref().unwrap_or_default())?;
        let mut blocks = Vec::new();
        for spec in request.memory_blocks.unwrap_or_default() {
            let mut block =
                Block::new(new_id("block", self.env.rng.as_ref()), spec.label, spec.value, spec.limit)?;
            block.description = spec.description;
            block.read_only = spec.read_only.unwrap_or(false);
            blocks.push(block);
        }
        let handle = request
            .model
            .or_else(|| request.llm_config.as_ref().map(|c| c.handle.clone().unwrap_or(c.model.clone())));
        let mut llm = self.catalog.resolve_llm(handle.as_deref())?;
        if let Some(window) =
            request.context_window_limit.or(request.llm_config.and_then(|c| c.context_window))
        {
            llm.context_window = window;
        }
        if let Some(max_tokens) = request.max_tokens {
            llm.max_tokens = max_tokens;
        }
        let tool_ids = initial_tool_ids(
            request.tools.unwrap_or_default(),
            request.tool_ids.unwrap_or_default(),
            custom,
        )?;
        Ok(AgentRecord {
            id,
            name,
            system: request.system.unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string()),
            description: request.description,
            metadata: request.metadata,
            tags: request.tags.unwrap_or_default(),
            memory: CoreMemory::new(blocks)?,
            working: WorkingMemory::default(),
            llm,
            embedding: self.catalog.resolve_embedding(request.embedding.as_deref())?,
            tool_ids,
            created_ms: now,
            updated_ms: now,
        })
    }

    /// Creates an agent. With an idempotency key its id comes from the key,
    /// so every request with that key names the same actor: the first
    /// create wins (the actor serializes them) and the others get its agent.
    pub async fn create_agent(
        &self,
        request: CreateAgent,
        idempotency_key: Option<&str>,
    ) -> ServiceResult<Value> {
        if idempotency_key.is_some_and(|key| key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX) {
            return Err(ServiceError::Invalid(format!(
                "Idempotency-Key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes"
            )));
        }
        let custom = self.tools.custom_tools().await?;
        let record = self.build_record(request, &custom, idempotency_key)?;
        let entry =
            DirectoryEntry { id: record.id.clone(), name: record.name.clone(), tags: record.tags.clone() };
        let created = match self.agent_ref(&record.id)?.invoke(AgentCommand::Create(Box::new(record))).await?
        {
            AgentReply::Agent(agent) => *agent,
            _ => return Err(unexpected("create")),
        };
        // The agent exists before it is listed: a crash in between leaves an
        // agent reachable by id but not yet listed, never a listed ghost.
        self.register(entry).await?;
        Ok(self.render_agent(&created, &custom))
    }

    pub async fn get_agent(&self, agent_id: &str) -> ServiceResult<Value> {
        self.render(&self.record(agent_id).await?).await
    }

    pub async fn list_agents(
        &self,
        name: Option<&str>,
        tags: &[String],
        match_all: bool,
        page: &Page,
    ) -> ServiceResult<Vec<Value>> {
        let entries = self.directory_entries().await?;
        let matching: Vec<DirectoryEntry> = entries
            .into_iter()
            .filter(|entry| name.is_none_or(|name| entry.name == name))
            .filter(|entry| {
                tags.is_empty()
                    || if match_all {
                        tags.iter().all(|tag| entry.tags.contains(tag))
                    } else {
                        tags.iter().any(|tag| entry.tags.contains(tag))
                    }
            })
            .collect();
        let custom = self.tools.custom_tools().await?;
        let mut agents = Vec::new();
        for entry in paginate(matching, |entry| entry.id.as_str(), page) {
            match self.record(&entry.id).await {
                Ok(agent) => agents.push(self.render_agent(&agent, &custom)),
                // Deleted between the directory read and now.
                Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(agents)
    }

    pub async fn update_agent(&self, agent_id: &str, request: UpdateAgent) -> ServiceResult<Value> {
        let current = self.record(agent_id).await?;
        check_name_and_tags(
            request.name.as_deref().unwrap_or(&current.name),
            request.tags.as_deref().unwrap_or(&current.tags),
        )?;
        if let Some(ids) = &request.tool_ids {
            initial_tool_ids(Vec::new(), ids.clone(), &self.tools.custom_tools().await?)?;
        }
        let patch = AgentPatch {
            name: request.name,
            system: request.system,
            description: request.description,
            metadata: request.metadata,
            tags: request.tags,
            tool_ids: request.tool_ids,
        };
        let AgentReply::Agent(updated) =
            self.agent_ref(agent_id)?.invoke(AgentCommand::Update(patch)).await?
        else {
            return Err(unexpected("update"));
        };
        if updated.name != current.name || updated.tags != current.tags {
            let entry = DirectoryEntry {
                id: updated.id.clone(),
                name: updated.name.clone(),
                tags: updated.tags.clone(),
            };
            self.directory_shard(shard_of(&entry.id), DirectoryCommand::Update(entry)).await?;
        }
        self.render(&updated).await
    }

    pub async fn delete_agent(&self, agent_id: &str) -> ServiceResult<Value> {
        let agent = self.agent_ref(agent_id)?;
        agent.invoke(AgentCommand::Get).await?;
        self.directory_shard(shard_of(agent_id), DirectoryCommand::Unregister { id: agent_id.to_string() })
            .await?;
        agent.invoke(AgentCommand::Delete).await?;
        self.unlink_agent(agent_id).await?;
        Ok(serde_json::json!({"message": format!("Agent id={agent_id} successfully deleted")}))
    }

    pub async fn list_blocks(&self, agent_id: &str) -> ServiceResult<Vec<Value>> {
        Ok(self.record(agent_id).await?.memory.blocks().iter().map(block_json).collect())
    }

    pub async fn get_block(&self, agent_id: &str, label: &str) -> ServiceResult<Value> {
        Ok(block_json(self.record(agent_id).await?.memory.get(label)?))
    }

    pub async fn update_block(
        &self,
        agent_id: &str,
        label: &str,
        request: UpdateBlock,
    ) -> ServiceResult<Value> {
        // A shared block is changed in its store and in every agent holding it.
        let block_id = self.record(agent_id).await?.memory.get(label)?.id.clone();
        if self.find_shared(&block_id).await?.is_some() {
            return self.update_shared_block(&block_id, request).await;
        }
        let patch = BlockPatch {
            value: request.value,
            limit: request.limit,
            description: request.description,
            read_only: request.read_only,
        };
        let command = AgentCommand::UpdateBlock { label: label.to_string(), patch };
        let AgentReply::Agent(agent) = self.agent_ref(agent_id)?.invoke(command).await? else {
            return Err(unexpected("update block"));
        };
        Ok(block_json(agent.memory.get(label)?))
    }

    /// Deletes every message of the agent (after any turn in progress).
    pub async fn reset_messages(&self, agent_id: &str) -> ServiceResult<Value> {
        let agent_ref = self.agent_ref(agent_id)?;
        let lock = self.turn_lock(agent_id);
        let _turn = lock.lock().await;
        let AgentReply::Agent(agent) = agent_ref.invoke(AgentCommand::ResetMessages).await? else {
            return Err(unexpected("reset messages"));
        };
        self.render(&agent).await
    }

    pub async fn list_messages(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let AgentReply::Messages(messages) = self.agent_ref(agent_id)?.invoke(AgentCommand::Messages).await?
        else {
            return Err(unexpected("messages"));
        };
        let rendered: Vec<Value> = messages.iter().flat_map(letta_messages).collect();
        Ok(paginate(rendered, json_id, page))
    }

    pub async fn insert_passage(&self, agent_id: &str, request: CreatePassage) -> ServiceResult<Vec<Value>> {
        if request.text.trim().is_empty() {
            return Err(ServiceError::Invalid("text must not be empty".into()));
        }
        let agent = self.record(agent_id).await?;
        let embedding = self.embed_one(&agent.embedding, &request.text).await?;
        let command = AgentCommand::InsertPassage {
            text: request.text,
            tags: request.tags.unwrap_or_default(),
            embedding,
        };
        self.passages(agent_id, command, passage_json).await
    }

    pub async fn list_passages(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let all = self.passages(agent_id, AgentCommand::Passages, passage_json).await?;
        Ok(paginate(all, json_id, page))
    }

    pub async fn search_passages(
        &self,
        agent_id: &str,
        query: String,
        top_k: Option<usize>,
    ) -> ServiceResult<Value> {
        let agent = self.record(agent_id).await?;
        let query_embedding = self.embed_one(&agent.embedding, &query).await?;
        let top_k = top_k.unwrap_or(ARCHIVAL_SEARCH_COUNT_DEFAULT);
        let command = AgentCommand::SearchPassages { query_embedding, top_k };
        let results = self.passages(agent_id, command, |_, passage| search_result_json(passage)).await?;
        Ok(serde_json::json!({"count": results.len(), "results": results}))
    }

    async fn passages(
        &self,
        agent_id: &str,
        command: AgentCommand,
        render: impl Fn(&AgentRecord, &kelpie_memory::Passage) -> Value,
    ) -> ServiceResult<Vec<Value>> {
        let AgentReply::Passages { agent, passages } = self.agent_ref(agent_id)?.invoke(command).await?
        else {
            return Err(unexpected("passages"));
        };
        Ok(passages.iter().map(|passage| render(&agent, passage)).collect())
    }

    pub async fn delete_passage(&self, agent_id: &str, passage_id: &str) -> ServiceResult<()> {
        self.agent_ref(agent_id)?.invoke(AgentCommand::DeletePassage { id: passage_id.to_string() }).await?;
        Ok(())
    }

    /// Attaches or detaches tool `tool_id`.
    pub async fn set_tool(&self, agent_id: &str, tool_id: &str, attach: bool) -> ServiceResult<Value> {
        let current = self.record(agent_id).await?;
        initial_tool_ids(Vec::new(), vec![tool_id.to_string()], &self.tools.custom_tools().await?)?;
        let mut tool_ids: Vec<String> = current.tool_ids.into_iter().filter(|id| id != tool_id).collect();
        if attach {
            tool_ids.push(tool_id.to_string());
        }
        let request = UpdateAgent { tool_ids: Some(tool_ids), ..UpdateAgent::default() };
        self.update_agent(agent_id, request).await
    }

    /// Finishes every activation (their state is already committed).
    pub async fn shutdown(&self) {
        self.active_runs.abort_all();
        self.agents.shutdown().await;
        self.runs.shutdown().await;
        self.directory.shutdown().await;
        self.blocks.shutdown().await;
        self.tools.shutdown().await;
    }

    /// The lock that serializes the turns of `agent_id`.
    pub(super) fn turn_lock(&self, agent_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turn_locks.lock_for(agent_id)
    }
}

pub(super) fn check_name_and_tags(name: &str, tags: &[String]) -> ServiceResult<()> {
    if name.trim().is_empty() || name.len() > AGENT_NAME_BYTES_MAX {
        return Err(ServiceError::Invalid(format!(
            "name must be 1..={AGENT_NAME_BYTES_MAX} bytes and not blank"
        )));
    }
    if tags.len() > AGENT_TAGS_COUNT_MAX {
        return Err(ServiceError::Invalid(format!("an agent has at most {AGENT_TAGS_COUNT_MAX} tags")));
    }
    Ok(())
}

/// Every built-in tool, plus those named in `tools` or given in `tool_ids`
/// (built-in or custom).
fn initial_tool_ids(
    names: Vec<String>,
    ids: Vec<String>,
    custom: &[ToolRecord],
) -> ServiceResult<Vec<String>> {
    let builtins = builtin_tools();
    let mut tool_ids: Vec<String> = builtins.iter().map(|tool| tool.id.to_string()).collect();
    let mut wanted = Vec::new();
    for name in names {
        if builtins.iter().any(|tool| tool.name == name) {
            continue;
        }
        match custom.iter().find(|tool| tool.name == name) {
            Some(tool) => wanted.push(tool.id.clone()),
            None => return Err(ServiceError::Invalid(format!("tool {name:?} not found"))),
        }
    }
    for id in ids {
        if !builtins.iter().any(|tool| tool.id == id) && !custom.iter().any(|tool| tool.id == id) {
            return Err(ServiceError::ToolNotFound(id));
        }
        wanted.push(id);
    }
    for id in wanted {
        if !tool_ids.contains(&id) {
            tool_ids.push(id);
        }
    }
    Ok(tool_ids)
}
