//! Agents themselves: create (optionally idempotent), retrieve, list with
//! filters and pages, modify, delete; their core memory blocks, attached
//! tools and message history.
//!
//! An agent exists in its actor before it is listed in the directory, and is
//! unlisted before its actor forgets it: a crash in between leaves an agent
//! reachable by id but not listed, never a listed ghost.

use std::sync::Arc;

use kelpie_core::Env;
use kelpie_memory::{Block, CoreMemory, WorkingMemory};
use kelpie_tools::builtin_tools;
use serde_json::Value;

use super::agent_actors::AgentActors;
use super::directory::AgentDirectory;
use super::reclaim::Reclaimer;
use super::shared_blocks::SharedBlocks;
use super::tools::ToolService;
use crate::actors::agent::{AgentCommand, AgentPatch, AgentReply, PageSpec};
use crate::actors::directory::DirectoryEntry;
use crate::actors::reclaim::PendingKind;
use crate::actors::tool_store::ToolRecord;
use crate::context;
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{id_from_key, new_id};
use crate::letta::{block_json, render_page};
use crate::limits::STORE_PAGE_COUNT_MAX;
use crate::model::{check_name_and_tags, AgentRecord, BlockPatch};
use crate::page::{paginate, Page};
use crate::requests::{CreateAgent, UpdateAgent, UpdateBlock};
use crate::tool_rules::ToolRule;

/// Longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// The default system prompt: our own words.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant with a persistent memory. \
Your core memory blocks are shown below and are always in view; keep them up to date with \
memory_insert and memory_replace (or core_memory_append and core_memory_replace) when you learn \
something worth keeping. Keep short-lived notes, such as a plan for the task at hand, in your \
working memory with working_memory_set; they are shown below until they expire. Store \
longer facts with archival_memory_insert and look them up with archival_memory_search; find \
earlier parts of the conversation with conversation_search. The user only sees what you send \
with send_message: answer every user message by calling send_message exactly once, at the end.";

pub struct Agents {
    actors: Arc<AgentActors>,
    directory: Arc<AgentDirectory>,
    blocks: Arc<SharedBlocks>,
    reclaimer: Arc<Reclaimer>,
    tools: Arc<ToolService>,
    providers: Arc<super::providers::Providers>,
    env: Env,
    planted: crate::planted::Planted,
}

fn entry_of(agent: &AgentRecord) -> DirectoryEntry {
    DirectoryEntry { id: agent.id.clone(), name: agent.name.clone(), tags: agent.tags.clone() }
}

impl Agents {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        directory: Arc<AgentDirectory>,
        blocks: Arc<SharedBlocks>,
        reclaimer: Arc<Reclaimer>,
        tools: Arc<ToolService>,
        providers: Arc<super::providers::Providers>,
        (env, planted): (Env, crate::planted::Planted),
    ) -> Self {
        Agents { actors, directory, blocks, reclaimer, tools, providers, env, planted }
    }

    async fn build_record(
        &self,
        request: CreateAgent,
        custom: &[ToolRecord],
        idempotency_key: Option<&str>,
    ) -> ServiceResult<AgentRecord> {
        let now = self.env.clock.wall_ms();
        let planted = self.planted.has(crate::planted::PlantedBug::CreateIgnoresIdempotencyKey);
        let id = match idempotency_key.filter(|_| !planted) {
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
        let mut llm = self.providers.resolve_llm(handle.as_deref()).await?;
        let embedding = {
            let from_config = request.embedding_config.as_ref().and_then(|config| config.handle());
            self.providers.resolve_embedding(request.embedding.as_deref().or(from_config.as_deref())).await?
        };
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
        let secrets = request.secrets.or(request.tool_exec_environment_variables).unwrap_or_default();
        check_secrets(&secrets)?;
        if let Some(settings) = &request.compaction_settings {
            context::check_settings(settings).map_err(ServiceError::Invalid)?;
        }
        let mut tool_rules = crate::tool_rules::parse_rules(&request.tool_rules.unwrap_or_default())
            .map_err(ServiceError::Invalid)?;
        approval_rules_of(&mut tool_rules, &tool_ids, custom);
        crate::files::check_limits(request.max_files_open, request.per_file_view_window_char_limit)
            .map_err(ServiceError::Invalid)?;
        let record = AgentRecord {
            id,
            name,
            system: request.system.unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string()),
            description: request.description,
            metadata: request.metadata,
            tags: request.tags.unwrap_or_default(),
            memory: CoreMemory::new(blocks)?,
            working: WorkingMemory::default(),
            llm,
            embedding,
            tool_ids,
            secrets,
            compaction: request.compaction_settings,
            tool_rules,
            identity_ids: Vec::new(),
            folders: Vec::new(),
            open_files: Vec::new(),
            max_files_open: request.max_files_open,
            file_window_chars: request.per_file_view_window_char_limit,
            enable_sleeptime: request.enable_sleeptime,
            managed_group: None,
            created_ms: now,
            updated_ms: now,
        };
        context::check_fixed_fits(&record).map_err(ServiceError::Invalid)?;
        Ok(record)
    }

    /// Creates an agent. With an idempotency key its id comes from the key,
    /// so every request with that key names the same actor: the first
    /// create wins (the actor serializes them) and the others get its agent.
    pub async fn create(&self, request: CreateAgent, idempotency_key: Option<&str>) -> ServiceResult<Value> {
        if idempotency_key.is_some_and(|key| key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX) {
            return Err(ServiceError::Invalid(format!(
                "Idempotency-Key must be 1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes"
            )));
        }
        let custom = self.tools.custom_tools().await?;
        let record = self.build_record(request, &custom, idempotency_key).await?;
        let entry = entry_of(&record);
        let agent_id = record.id.clone();
        if self.planted.has(crate::planted::PlantedBug::CreateAnswersBeforeCommit) {
            let (actors, directory, answer) =
                (Arc::clone(&self.actors), Arc::clone(&self.directory), record.clone());
            let commit = async move {
                let create = AgentCommand::Create(Box::new(record));
                if actors.invoke_for_agent(&agent_id, create).await.is_ok() {
                    let _ = directory.register(entry).await;
                }
            };
            self.env.spawner.spawn("planted-create", Box::pin(commit));
            return Ok(self.actors.render_agent(&answer, &custom));
        }
        let created = self.actors.invoke_for_agent(&agent_id, AgentCommand::Create(Box::new(record))).await?;
        self.directory.register(entry).await?;
        Ok(self.actors.render_agent(&created, &custom))
    }

    /// The listed agents with `name` (when given) and the `tags` (all of
    /// them or any one), in creation order, as the directory holds them.
    async fn matching(
        &self,
        name: Option<&str>,
        tags: &[String],
        match_all: bool,
    ) -> ServiceResult<Vec<DirectoryEntry>> {
        let entries = self.directory.entries().await?;
        Ok(entries
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
            .collect())
    }

    /// `GET /v1/agents/count`: how many agents [`Self::list`] would list
    /// with the same filters (read from the directory alone).
    pub async fn count(&self, name: Option<&str>, tags: &[String], match_all: bool) -> ServiceResult<usize> {
        Ok(self.matching(name, tags, match_all).await?.len())
    }

    pub async fn get(&self, agent_id: &str) -> ServiceResult<Value> {
        self.actors.render(&self.actors.record(agent_id).await?).await
    }

    /// `GET /v1/agents/{id}/core-memory`: Letta's `Memory` of the agent.
    pub async fn core_memory(&self, agent_id: &str) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        Ok(self.actors.render_agent(&agent, &[])["memory"].clone())
    }

    /// `GET /v1/tags/`: the distinct tags of the agents, in order, those
    /// holding `query_text` (and equal to `name`) when given, paged by tag.
    pub async fn tags(
        &self,
        (query_text, name): (Option<&str>, Option<&str>),
        page: &Page,
    ) -> ServiceResult<Vec<String>> {
        let entries = self.directory.entries().await?;
        let tags: std::collections::BTreeSet<String> = entries
            .into_iter()
            .flat_map(|entry| entry.tags)
            .filter(|tag| query_text.is_none_or(|text| tag.contains(text)))
            .filter(|tag| name.is_none_or(|name| tag == name))
            .collect();
        Ok(paginate(tags.into_iter().collect(), |tag| tag.as_str(), page))
    }

    /// The listed agents with `name` (when given) and the `tags` (all of them
    /// or any one), the page of them `page` selects.
    pub async fn list(
        &self,
        name: Option<&str>,
        tags: &[String],
        match_all: bool,
        page: &Page,
    ) -> ServiceResult<Vec<Value>> {
        self.list_among(name, (tags, match_all), None, page).await
    }

    /// [`Self::list`] of the agents `among` names only (all when `None`).
    pub async fn list_among(
        &self,
        name: Option<&str>,
        (tags, match_all): (&[String], bool),
        among: Option<&[String]>,
        page: &Page,
    ) -> ServiceResult<Vec<Value>> {
        let mut matching = self.matching(name, tags, match_all).await?;
        if let Some(among) = among {
            matching.retain(|entry| among.contains(&entry.id));
        }
        let custom = self.tools.custom_tools().await?;
        let mut agents = Vec::new();
        for entry in paginate(matching, |entry| entry.id.as_str(), page) {
            match self.actors.record(&entry.id).await {
                Ok(agent) => {
                    let rendered = self.actors.render_agent(&agent, &custom);
                    agents.push(self.actors.with_group(&agent, rendered).await?);
                }
                // Deleted between the directory read and now.
                Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(agents)
    }

    pub async fn update(&self, agent_id: &str, request: UpdateAgent) -> ServiceResult<Value> {
        let current = self.actors.record(agent_id).await?;
        check_name_and_tags(
            request.name.as_deref().unwrap_or(&current.name),
            request.tags.as_deref().unwrap_or(&current.tags),
        )?;
        if let Some(ids) = &request.tool_ids {
            initial_tool_ids(Vec::new(), ids.clone(), &self.tools.custom_tools().await?)?;
        }
        let secrets = request.secrets.or(request.tool_exec_environment_variables);
        if let Some(secrets) = &secrets {
            check_secrets(secrets)?;
        }
        let compaction = match &request.compaction_settings {
            Some(changes) => Some(
                context::merge_settings(current.compaction.as_ref(), changes)
                    .map_err(ServiceError::Invalid)?,
            ),
            None => None,
        };
        let tool_rules = match &request.tool_rules {
            Some(rules) => Some(crate::tool_rules::parse_rules(rules).map_err(ServiceError::Invalid)?),
            None => None,
        };
        crate::files::check_limits(request.max_files_open, request.per_file_view_window_char_limit)
            .map_err(ServiceError::Invalid)?;
        let patch = AgentPatch {
            file_limits: (request.max_files_open, request.per_file_view_window_char_limit),
            tool_rules,
            name: request.name,
            system: request.system,
            description: request.description,
            metadata: request.metadata,
            tags: request.tags,
            tool_ids: request.tool_ids,
            secrets,
            compaction,
            identity: None,
            enable_sleeptime: request.enable_sleeptime,
            managed_group: None,
        };
        let updated = self.actors.invoke_for_agent(agent_id, AgentCommand::Update(Box::new(patch))).await?;
        if updated.name != current.name || updated.tags != current.tags {
            self.directory.update(entry_of(&updated)).await?;
        }
        self.actors.render(&updated).await
    }

    /// Gone at once, whatever its size: not found, not listed, its id
    /// free; its messages and passages are reclaimed in the background.
    pub async fn delete(&self, agent_id: &str) -> ServiceResult<Value> {
        self.actors.record(agent_id).await?;
        self.reclaimer.note(agent_id, PendingKind::Ended).await?;
        self.directory.unregister(agent_id).await?;
        self.actors.invoke(agent_id, AgentCommand::Delete).await?;
        self.blocks.unlink_agent(agent_id).await?;
        Ok(serde_json::json!({"message": format!("Agent id={agent_id} successfully deleted")}))
    }

    /// The `page` of the agent's attached tools, in attach order.
    pub async fn list_tools(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let agent = self.get(agent_id).await?;
        let tools = agent["tools"].as_array().cloned().unwrap_or_default();
        Ok(paginate(tools, crate::page::json_id, page))
    }

    /// The `page` of the agent's core memory blocks, in their order.
    pub async fn list_blocks(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let blocks = self.actors.record(agent_id).await?.memory.blocks().iter().map(block_json).collect();
        Ok(paginate(blocks, crate::page::json_id, page))
    }

    pub async fn get_block(&self, agent_id: &str, label: &str) -> ServiceResult<Value> {
        Ok(block_json(self.actors.record(agent_id).await?.memory.get(label)?))
    }

    pub async fn update_block(
        &self,
        agent_id: &str,
        label: &str,
        request: UpdateBlock,
    ) -> ServiceResult<Value> {
        // A shared block is changed in its store and in every agent holding it.
        let block_id = self.actors.record(agent_id).await?.memory.get(label)?.id.clone();
        if self.blocks.find_shared(&block_id).await?.is_some() {
            return self.blocks.update(&block_id, request).await;
        }
        let patch = BlockPatch {
            value: request.value,
            limit: request.limit,
            description: request.description,
            read_only: request.read_only,
        };
        let command = AgentCommand::UpdateBlock { label: label.to_string(), patch };
        let agent = self.actors.invoke_for_agent(agent_id, command).await?;
        Ok(block_json(agent.memory.get(label)?))
    }

    /// Deletes every message of the agent (after any turn in progress).
    pub async fn reset_messages(&self, agent_id: &str) -> ServiceResult<Value> {
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let lock = self.actors.turn_lock(agent_id);
        let _turn = lock.lock().await;
        // Nothing is noted for reclaim for an id that names no agent.
        self.actors.record(agent_id).await?;
        self.reclaimer.note(agent_id, PendingKind::Ended).await?;
        let AgentReply::Agent(agent) = agent_ref.invoke(AgentCommand::ResetMessages).await? else {
            return Err(unexpected("reset messages"));
        };
        self.actors.render(&agent).await
    }

    /// `PATCH /v1/agents/{id}/messages/{message_id}`: changes the text of a
    /// user message, an assistant's reply or its reasoning (Letta's
    /// `UpdateUserMessage`, `UpdateAssistantMessage`, `UpdateReasoningMessage`);
    /// the message as Letta renders that part of it. System messages are
    /// built at each step, not stored, so they cannot be edited (422).
    pub async fn modify_message(
        &self,
        agent_id: &str,
        message_id: &str,
        request: crate::requests::ModifyMessage,
    ) -> ServiceResult<Value> {
        let (message_type, edit) = request.edit()?;
        let command = AgentCommand::EditMessage { id: message_id.to_string(), edit };
        let AgentReply::Messages(mut messages) = self.actors.invoke(agent_id, command).await? else {
            return Err(unexpected("edit message"));
        };
        let message = messages.pop().ok_or_else(|| unexpected("edited message"))?;
        crate::letta::letta_messages(&message)
            .into_iter()
            .find(|part| part["message_type"] == message_type)
            .ok_or_else(|| unexpected("edited message rendering"))
    }

    /// One page of the agent's messages as Letta renders them. A stored
    /// message renders as none (a `send_message` return), one, or several
    /// sharing its id, so stored messages are read a page at a time until
    /// `limit` rendered ones are found or the list ends.
    pub async fn list_messages(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        self.list_history_messages((agent_id, None), page).await
    }

    /// One page of the messages of the agent's own history (`None`) or of
    /// its conversation, as Letta's messages.
    pub async fn list_history_messages(
        &self,
        (agent_id, conversation): (&str, Option<&str>),
        page: &Page,
    ) -> ServiceResult<Vec<Value>> {
        let mut spec = PageSpec {
            after: page.after.clone(),
            before: page.before.clone(),
            limit: page.limit,
            descending: page.descending,
        };
        let mut rendered: Vec<Value> = Vec::new();
        loop {
            let command = match conversation {
                None => AgentCommand::MessagePage(spec.clone()),
                Some(id) => AgentCommand::ConversationMessages { id: id.to_string(), page: spec.clone() },
            };
            let AgentReply::Messages(messages) = self.actors.invoke(agent_id, command).await? else {
                return Err(unexpected("messages"));
            };
            let (parts, _) = render_page(&messages, page.limit - rendered.len(), page.descending);
            rendered.extend(parts);
            match messages.last() {
                Some(last)
                    if messages.len() == spec.limit.min(STORE_PAGE_COUNT_MAX)
                        && rendered.len() < page.limit =>
                {
                    spec.after = Some(last.id.clone());
                }
                _ => break,
            }
        }
        if let Some(conversation_id) = conversation {
            for part in &mut rendered {
                part["conversation_id"] = Value::from(conversation_id);
            }
        }
        Ok(rendered)
    }

    /// Attaches or detaches tool `tool_id`.
    pub async fn set_tool(&self, agent_id: &str, tool_id: &str, attach: bool) -> ServiceResult<Value> {
        let current = self.actors.record(agent_id).await?;
        let custom = self.tools.custom_tools().await?;
        initial_tool_ids(Vec::new(), vec![tool_id.to_string()], &custom)?;
        let mut tool_ids: Vec<String> = current.tool_ids.into_iter().filter(|id| id != tool_id).collect();
        if attach {
            tool_ids.push(tool_id.to_string());
        }
        let mut rules = current.tool_rules;
        let before = rules.len();
        approval_rules_of(&mut rules, &[tool_id.to_string()], &custom);
        let tool_rules = (rules.len() != before).then(|| rules.iter().map(ToolRule::to_json).collect());
        let request = UpdateAgent { tool_ids: Some(tool_ids), tool_rules, ..UpdateAgent::default() };
        self.update(agent_id, request).await
    }

    /// `PATCH /v1/agents/{id}/tools/approval/{tool_name}`: whether calls of
    /// `tool_name` wait for the client's approval (a `requires_approval` rule).
    pub async fn set_approval(
        &self,
        agent_id: &str,
        tool_name: &str,
        required: bool,
    ) -> ServiceResult<Value> {
        let current = self.actors.record(agent_id).await?;
        let mut rules = current.tool_rules;
        rules.retain(
            |rule| !matches!(rule, ToolRule::RequiresApproval { tool_name: name } if name == tool_name),
        );
        if required {
            rules.push(ToolRule::RequiresApproval { tool_name: tool_name.to_string() });
        }
        let tool_rules = Some(rules.iter().map(ToolRule::to_json).collect());
        self.update(agent_id, UpdateAgent { tool_rules, ..UpdateAgent::default() }).await
    }
}

/// Adds a `requires_approval` rule for each tool among `tool_ids` whose
/// `default_requires_approval` is set and that has none yet.
fn approval_rules_of(rules: &mut Vec<ToolRule>, tool_ids: &[String], custom: &[ToolRecord]) {
    for tool in custom.iter().filter(|tool| tool.default_requires_approval && tool_ids.contains(&tool.id)) {
        if !crate::tool_rules::requires_approval(rules, &tool.name) {
            rules.push(ToolRule::RequiresApproval { tool_name: tool.name.clone() });
        }
    }
}

/// Checks an agent's tool environment as a tool call would be given it.
fn check_secrets(secrets: &std::collections::BTreeMap<String, String>) -> ServiceResult<()> {
    let env: Vec<(String, String)> = secrets.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(kelpie_tools::runner::check_env(&env)?)
}

/// Every built-in tool attached by default, plus those named in `tools` or
/// given in `tool_ids` (built-in or custom).
fn initial_tool_ids(
    names: Vec<String>,
    ids: Vec<String>,
    custom: &[ToolRecord],
) -> ServiceResult<Vec<String>> {
    let builtins = builtin_tools();
    let mut tool_ids: Vec<String> =
        builtins.iter().filter(|tool| tool.default_attached).map(|tool| tool.id.to_string()).collect();
    let mut wanted = Vec::new();
    for name in names {
        if let Some(builtin) = builtins.iter().find(|tool| tool.name == name) {
            wanted.push(builtin.id.to_string());
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
