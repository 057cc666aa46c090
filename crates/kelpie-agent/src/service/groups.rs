//! Multi-agent groups (`/v1/groups`): member agents under a manager
//! pattern, each member still one agent actor with its own turns. The
//! group store holds each group, its counters and the runs its turns made;
//! a manager agent also holds the id of its group (written after the
//! store, as identities are).
//!
//! What runs:
//! - **sleeptime**: after each user turn of the manager agent (with
//!   `enable_sleeptime` set), every `sleeptime_agent_frequency` turns (every
//!   turn when unset), each member agent runs a background run over the
//!   manager's new messages, as Letta's sleeptime agents do. When a
//!   member's run ends, the shared blocks it changed are written through
//!   the block store to every agent holding them, the manager included.
//! - **round_robin**: `POST /v1/groups/{id}/messages` runs `max_turns`
//!   member turns (default: one per member), each member in order given
//!   what it has not seen of the conversation. Each member turn is a
//!   background run recorded in the group before the next begins.
//!
//! A crash between member turns ends the group turn there: the member
//! turns that ran stay (their runs and messages, listed by the group), the
//! run in flight is ended `failed` by the runs' recovery, and no further
//! member speaks; nothing is resumed.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use futures::FutureExt;
use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;
use serde::Deserialize;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::agents::Agents;
use super::locks::KeyedLocks;
use super::runs::{AfterTurn, Runs};
use super::shared_blocks::SharedBlocks;
use super::turn::TurnOutcome;
use super::turn_router::OwnerOp;
use crate::actors::agent::{AgentCommand, AgentPatch, AgentReply};
use crate::actors::group_store::{
    GroupCommand, GroupRecord, GroupReply, GroupRun, GroupStoreActor, GROUP_BLOCKS_COUNT_MAX,
    GROUP_STORE_ACTOR, GROUP_TURNS_COUNT_MAX, MANAGER_TYPES,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::letta::{group_json, letta_messages};
use crate::model::{MessageBody, RunStatus};
use crate::page::{json_id, paginate, Page};
use crate::requests::{CreateAgent, CreateBlock, UpdateBlock};

/// Most of the manager's messages one sleeptime run is given.
pub const SLEEPTIME_TRANSCRIPT_MESSAGES_COUNT_MAX: usize = 200;
/// Longest transcript one sleeptime run is given, in bytes (the newest
/// part is kept).
pub const SLEEPTIME_TRANSCRIPT_BYTES_MAX: usize = 32 * 1024;
/// How often (in main-agent turns) the sleeptime agent that
/// `enable_sleeptime` makes runs, as Letta makes it.
pub const SLEEPTIME_AGENT_FREQUENCY_DEFAULT: i64 = 5;
/// The label of a sleeptime agent's own block.
const SLEEPTIME_PERSONA_LABEL: &str = "memory_persona";
/// The `memory_persona` block of a sleeptime agent `enable_sleeptime` makes.
const SLEEPTIME_PERSONA: &str = "I am a sleeptime agent. I run in the background after my main agent's \
conversations, read what was said, and keep the memory blocks I share with it accurate and well \
organised: I add what was learned, correct what changed and remove what is stale. I never talk to the \
user; my work is the memory.";
/// Letta's default `termination_token` of a dynamic group.
const TERMINATION_TOKEN_DEFAULT: &str = "DONE!";

/// Letta's `ManagerConfig` variants (and their `*Update` twins): the
/// fields a pattern does not use are ignored, as Letta ignores them.
#[derive(Debug, Clone, Deserialize)]
pub struct ManagerConfig {
    pub manager_type: String,
    pub manager_agent_id: Option<String>,
    pub termination_token: Option<String>,
    pub max_turns: Option<i64>,
    pub sleeptime_agent_frequency: Option<i64>,
    pub max_message_buffer_length: Option<i64>,
    pub min_message_buffer_length: Option<i64>,
}

/// Letta's `GroupCreate`.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupCreate {
    pub agent_ids: Vec<String>,
    pub description: String,
    pub manager_config: Option<ManagerConfig>,
    pub project_id: Option<String>,
    #[serde(default)]
    pub shared_block_ids: Vec<String>,
    pub hidden: Option<bool>,
}

/// Letta's `GroupUpdate`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupUpdate {
    pub agent_ids: Option<Vec<String>>,
    pub description: Option<String>,
    pub manager_config: Option<ManagerConfig>,
    pub project_id: Option<String>,
    /// Accepted and ignored, as Letta's modify ignores it.
    pub shared_block_ids: Option<Vec<String>>,
}

/// `GET /v1/groups/` and `GET /v1/agents/{id}/groups` filters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupFilter {
    pub manager_type: Option<String>,
    pub project_id: Option<String>,
    #[serde(default)]
    pub show_hidden_groups: Option<bool>,
}

impl GroupFilter {
    fn accepts(&self, group: &GroupRecord) -> bool {
        self.manager_type.as_ref().is_none_or(|kind| group.manager_type == *kind)
            && self.project_id.as_ref().is_none_or(|project| group.project_id.as_ref() == Some(project))
            && (self.show_hidden_groups == Some(true) || group.hidden != Some(true))
    }
}

/// `max_turns` as given, within `1..=GROUP_TURNS_COUNT_MAX`.
fn max_turns_of(max_turns: Option<i64>) -> ServiceResult<Option<u32>> {
    match max_turns {
        None => Ok(None),
        Some(turns) if (1..=i64::from(GROUP_TURNS_COUNT_MAX)).contains(&turns) => Ok(Some(turns as u32)),
        Some(turns) => Err(ServiceError::Invalid(format!(
            "max_turns {turns} is outside 1..={GROUP_TURNS_COUNT_MAX} (GROUP_TURNS_COUNT_MAX)"
        ))),
    }
}

/// A new group's record from Letta's `GroupCreate`.
fn record_of(create: GroupCreate, id: String, created_ms: u64) -> ServiceResult<GroupRecord> {
    let config = create.manager_config.unwrap_or(ManagerConfig {
        manager_type: "round_robin".into(),
        manager_agent_id: None,
        termination_token: None,
        max_turns: None,
        sleeptime_agent_frequency: None,
        max_message_buffer_length: None,
        min_message_buffer_length: None,
    });
    let kind = config.manager_type.as_str();
    if !MANAGER_TYPES.contains(&kind) {
        return Err(ServiceError::Invalid(format!(
            "manager_config.manager_type {kind:?} is none of {}",
            MANAGER_TYPES.join(", ")
        )));
    }
    let mut record = GroupRecord {
        id,
        manager_type: config.manager_type.clone(),
        agent_ids: create.agent_ids,
        description: create.description,
        project_id: create.project_id,
        shared_block_ids: dedup(create.shared_block_ids),
        manager_agent_id: None,
        termination_token: None,
        max_turns: None,
        sleeptime_agent_frequency: None,
        turns_counter: None,
        last_processed_message_id: None,
        max_message_buffer_length: None,
        min_message_buffer_length: None,
        hidden: create.hidden,
        created_ms,
        runs: Vec::new(),
    };
    if kind != "round_robin" {
        record.manager_agent_id = Some(config.manager_agent_id.clone().ok_or_else(|| {
            ServiceError::Invalid(format!("manager_config.manager_agent_id is required for a {kind} group"))
        })?);
    }
    match kind {
        "round_robin" => record.max_turns = max_turns_of(config.max_turns)?,
        "dynamic" => {
            record.max_turns = max_turns_of(config.max_turns)?;
            record.termination_token =
                Some(config.termination_token.unwrap_or_else(|| TERMINATION_TOKEN_DEFAULT.into()));
        }
        "sleeptime" => {
            record.sleeptime_agent_frequency = config.sleeptime_agent_frequency;
            if config.sleeptime_agent_frequency.is_some_and(|frequency| frequency != 0) {
                record.turns_counter = Some(-1);
            }
        }
        "voice_sleeptime" => {
            record.max_message_buffer_length = config.max_message_buffer_length;
            record.min_message_buffer_length = config.min_message_buffer_length;
        }
        _ => {}
    }
    record.check().map_err(ServiceError::Invalid)?;
    Ok(record)
}

/// The record of group `id` an import makes from `create`, checked as
/// [`Groups::create`] checks it before looking at the agents and blocks it
/// names (pattern, manager, limits).
pub(crate) fn import_record(create: GroupCreate, id: String, created_ms: u64) -> ServiceResult<GroupRecord> {
    assert!(id.starts_with("group-"), "a group id has Letta's prefix");
    record_of(create, id, created_ms)
}

/// `before` with Letta's `GroupUpdate` applied: a field changes only when
/// given non-empty (as Letta's modify does); the pattern never changes.
fn updated(before: &GroupRecord, update: GroupUpdate) -> ServiceResult<GroupRecord> {
    let mut now = before.clone();
    if let Some(config) = update.manager_config {
        if config.manager_type != before.manager_type {
            return Err(ServiceError::Invalid("Cannot change group pattern after creation".into()));
        }
        if let Some(turns) = max_turns_of(config.max_turns)? {
            now.max_turns = Some(turns);
        }
        if let Some(token) = config.termination_token.filter(|token| !token.is_empty()) {
            now.termination_token = Some(token);
        }
        if let Some(manager) = config.manager_agent_id.filter(|_| before.manager_agent_id.is_some()) {
            now.manager_agent_id = Some(manager);
        }
        if let Some(frequency) = config.sleeptime_agent_frequency.filter(|frequency| *frequency != 0) {
            now.sleeptime_agent_frequency = Some(frequency);
            if now.turns_counter.is_none() {
                now.turns_counter = Some(-1);
            }
        }
        let (max, min) = (config.max_message_buffer_length, config.min_message_buffer_length);
        if max.is_some() || min.is_some() {
            now.max_message_buffer_length = max.or(before.max_message_buffer_length);
            now.min_message_buffer_length = min.or(before.min_message_buffer_length);
        }
    }
    if let Some(description) = update.description.filter(|text| !text.is_empty()) {
        now.description = description;
    }
    if update.project_id.is_some() {
        now.project_id = update.project_id;
    }
    if let Some(agent_ids) = update.agent_ids.filter(|ids| !ids.is_empty()) {
        now.agent_ids = agent_ids;
    }
    now.check().map_err(ServiceError::Invalid)?;
    Ok(now)
}

fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

/// The text of a rendered message's `content` (a string or text parts).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|part| part["text"].as_str()).collect::<Vec<_>>().join("\n")
        }
        other => other.to_string(),
    }
}

/// One line of a sleeptime transcript for a rendered Letta message (as
/// Letta's `stringify_message` writes them), if it shows as one.
fn transcript_line(message: &Value) -> Option<String> {
    match message["message_type"].as_str()? {
        "user_message" => Some(format!("user: {}", content_text(&message["content"]))),
        "assistant_message" => Some(format!("assistant: {}", content_text(&message["content"]))),
        "reasoning_message" => {
            Some(format!("assistant: <thinking>{}</thinking>", message["reasoning"].as_str()?))
        }
        "tool_call_message" => {
            Some(format!("assistant: Calling tool {}", message["tool_call"]["name"].as_str()?))
        }
        "tool_return_message" => {
            Some(format!("assistant: Tool call returned {}", message["tool_return"].as_str()?))
        }
        _ => None,
    }
}

/// What a sleeptime agent is sent: who it is, then the conversation (its
/// newest `SLEEPTIME_TRANSCRIPT_BYTES_MAX` bytes).
pub fn sleeptime_prompt(messages: &[Value]) -> String {
    let lines: Vec<String> = messages.iter().filter_map(transcript_line).collect();
    let mut transcript = lines.join("\n");
    if transcript.len() > SLEEPTIME_TRANSCRIPT_BYTES_MAX {
        let mut cut = transcript.len() - SLEEPTIME_TRANSCRIPT_BYTES_MAX;
        while !transcript.is_char_boundary(cut) {
            cut += 1;
        }
        transcript = transcript.split_off(cut);
    }
    assert!(transcript.len() <= SLEEPTIME_TRANSCRIPT_BYTES_MAX);
    format!(
        "<system-reminder>\nYou are a sleeptime agent: you run in the background, after a conversation \
         between a primary agent and its user has happened. You are not the primary agent: lines marked \
         \"assistant\" are the primary agent's, lines marked \"user\" its user's.\nLook through the \
         conversation and keep what is worth keeping in your memory blocks with your memory tools; your \
         memory_persona block, if you have one, says more.\n</system-reminder>\n\nMessages:\n{transcript}"
    )
}

pub struct Groups {
    store: Runtime<GroupStoreActor>,
    actors: Arc<AgentActors>,
    agents: Arc<Agents>,
    blocks: Arc<SharedBlocks>,
    runs: Arc<Runs>,
    env: Env,
    /// One group turn of a group at a time (on this node).
    turn_locks: KeyedLocks,
    /// This service, for the tasks it spawns.
    this: Weak<Groups>,
}

/// The after-turn hook of the runs: the groups, once they exist.
struct SleeptimeHook(Weak<Groups>);

impl AfterTurn for SleeptimeHook {
    fn after_turn<'a>(&'a self, agent_id: &'a str, outcome: &'a TurnOutcome) -> BoxFuture<'a, Vec<String>> {
        async move {
            let Some(groups) = self.0.upgrade() else { return Vec::new() };
            match groups.after_manager_turn(agent_id, outcome).await {
                Ok(run_ids) => run_ids,
                Err(err) => {
                    tracing::warn!(error = %err, agent_id, "the sleeptime agents did not start after the turn");
                    Vec::new()
                }
            }
        }
        .boxed()
    }
}

impl Groups {
    pub(crate) fn new(
        store: Runtime<GroupStoreActor>,
        actors: Arc<AgentActors>,
        (agents, blocks): (Arc<Agents>, Arc<SharedBlocks>),
        runs: Arc<Runs>,
        env: Env,
    ) -> Arc<Self> {
        let groups = Arc::new_cyclic(|this| Groups {
            store,
            actors,
            agents,
            blocks,
            runs: Arc::clone(&runs),
            env,
            turn_locks: KeyedLocks::default(),
            this: this.clone(),
        });
        runs.set_after_turn(Arc::new(SleeptimeHook(Arc::downgrade(&groups))));
        groups
    }

    async fn command(&self, command: GroupCommand) -> ServiceResult<GroupReply> {
        let actor_id = ActorId::new(GROUP_STORE_ACTOR.0, GROUP_STORE_ACTOR.1)?;
        Ok(self.store.invoke(&actor_id, command).await?)
    }

    async fn group(&self, command: GroupCommand) -> ServiceResult<GroupRecord> {
        match self.command(command).await? {
            GroupReply::Group(group) => Ok(*group),
            _ => Err(unexpected("a group command")),
        }
    }

    async fn record(&self, group_id: &str) -> ServiceResult<GroupRecord> {
        self.group(GroupCommand::Get { id: group_id.to_string() }).await
    }

    async fn all(&self) -> ServiceResult<Vec<GroupRecord>> {
        match self.command(GroupCommand::List).await? {
            GroupReply::Groups(all) => Ok(all),
            _ => Err(unexpected("group list")),
        }
    }

    /// Every agent and block the group names exists (else 404 naming it).
    async fn check_links(&self, group: &GroupRecord) -> ServiceResult<()> {
        for agent_id in group.agent_ids.iter().chain(group.manager_agent_id.iter()) {
            self.actors.record(agent_id).await?;
        }
        for block_id in &group.shared_block_ids {
            self.blocks.get(block_id).await?;
        }
        Ok(())
    }

    /// Checks every one of `agent_ids` can take the shared `block_ids` it
    /// does not hold yet (no label it already has, at most
    /// `CORE_MEMORY_BLOCKS_COUNT_MAX` blocks), so a group is not stored with
    /// blocks its members then refuse half way.
    async fn check_room(&self, agent_ids: &[String], block_ids: &[String]) -> ServiceResult<()> {
        let mut labels = Vec::with_capacity(block_ids.len());
        for block_id in block_ids {
            let block = self.blocks.get(block_id).await?;
            labels.push((block_id, block["label"].as_str().unwrap_or_default().to_string()));
        }
        for agent_id in agent_ids {
            let agent = self.actors.record(agent_id).await?;
            let memory = &agent.memory;
            let gained: Vec<&String> = labels
                .iter()
                .filter(|(id, _)| memory.label_of(id).is_none())
                .map(|(_, label)| label)
                .collect();
            if let Some(label) = gained.iter().find(|label| memory.get(label).is_ok()) {
                return Err(ServiceError::Invalid(format!(
                    "agent {agent_id} already has a block labelled {label:?}; a shared block cannot join it"
                )));
            }
            let count = memory.blocks().len() + gained.len();
            if count > kelpie_memory::core::CORE_MEMORY_BLOCKS_COUNT_MAX {
                return Err(ServiceError::Invalid(format!(
                    "agent {agent_id} would hold {count} blocks, over CORE_MEMORY_BLOCKS_COUNT_MAX = {}",
                    kelpie_memory::core::CORE_MEMORY_BLOCKS_COUNT_MAX
                )));
            }
        }
        Ok(())
    }

    /// Sets (or clears) the group agent `agent_id` manages; a manager
    /// deleted since has nothing to clear.
    async fn set_manager(&self, agent_id: &str, group_id: Option<&str>) -> ServiceResult<()> {
        let patch = AgentPatch { managed_group: Some(group_id.map(str::to_string)), ..AgentPatch::default() };
        match self.actors.invoke_for_agent(agent_id, AgentCommand::Update(Box::new(patch))).await {
            Ok(_) => Ok(()),
            Err(ServiceError::AgentNotFound(_)) if group_id.is_none() => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The members and the manager, each once.
    fn everyone(group: &GroupRecord) -> Vec<String> {
        dedup(group.agent_ids.iter().chain(group.manager_agent_id.iter()).cloned().collect())
    }

    /// `POST /v1/groups/`.
    pub async fn create(&self, create: GroupCreate) -> ServiceResult<Value> {
        let id = new_id("group", self.env.rng.as_ref());
        let record = record_of(create, id, self.env.clock.wall_ms())?;
        self.check_links(&record).await?;
        self.check_room(&Self::everyone(&record), &record.shared_block_ids).await?;
        let group = self.group(GroupCommand::Create(Box::new(record))).await?;
        self.link(&group).await?;
        Ok(group_json(&group))
    }

    /// The manager of a stored group knows it, and its members and manager
    /// hold its shared blocks (each step changes nothing when done already).
    async fn link(&self, group: &GroupRecord) -> ServiceResult<()> {
        if let Some(manager) = &group.manager_agent_id {
            self.set_manager(manager, Some(&group.id)).await?;
        }
        for block_id in &group.shared_block_ids {
            for agent_id in Self::everyone(group) {
                self.blocks.attach(&agent_id, block_id).await?;
            }
        }
        Ok(())
    }

    /// Makes group `record` of a decided import, its id drawn at the
    /// decision: made again after a crash, the stored group is found and
    /// linked, not made twice (the store's create is idempotent by id).
    pub(crate) async fn make_decided(&self, record: GroupRecord) -> ServiceResult<()> {
        self.check_links(&record).await?;
        let group = self.group(GroupCommand::Create(Box::new(record.clone()))).await?;
        assert_eq!(group.id, record.id, "the decided group is the one stored");
        self.link(&group).await
    }

    /// Letta's `enable_sleeptime` on an agent that manages no group yet:
    /// a sleeptime agent named `<name>-sleeptime` with the main agent's
    /// models, its own `memory_persona` block and every block of the main
    /// agent (made shared blocks, so an edit either makes reaches both),
    /// in a new sleeptime group the main agent manages, run every
    /// [`SLEEPTIME_AGENT_FREQUENCY_DEFAULT`] turns. An agent that manages
    /// a group already keeps it and gets nothing new. If a step fails, the
    /// sleeptime agent made so far is deleted and the error answered (the
    /// main agent's blocks stay shared, which changes nothing for it).
    pub async fn add_sleeptime_agent(&self, main_id: &str) -> ServiceResult<()> {
        let main = self.actors.record(main_id).await?;
        if main.managed_group.is_some() {
            return Ok(());
        }
        for block in main.memory.blocks() {
            self.blocks.share_own(main_id, block).await?;
        }
        let persona = CreateBlock {
            label: SLEEPTIME_PERSONA_LABEL.into(),
            value: SLEEPTIME_PERSONA.into(),
            limit: None,
            description: None,
            read_only: None,
        };
        // A main agent with a `memory_persona` of its own shares it instead.
        let own_persona = main.memory.get(SLEEPTIME_PERSONA_LABEL).is_err().then_some(persona);
        let request = CreateAgent {
            name: Some(format!("{}-sleeptime", main.name)),
            memory_blocks: Some(own_persona.into_iter().collect()),
            model: Some(main.llm.handle.clone()),
            embedding: Some(main.embedding.handle.clone()),
            context_window_limit: Some(main.llm.context_window),
            max_tokens: Some(main.llm.max_tokens),
            ..CreateAgent::default()
        };
        let sleeper = self.agents.create(request, None).await?;
        let sleeper_id = sleeper["id"].as_str().ok_or_else(|| unexpected("agent without id"))?.to_string();
        let joined = async {
            for block in main.memory.blocks() {
                self.blocks.attach(&sleeper_id, &block.id).await?;
            }
            let config = ManagerConfig {
                manager_type: "sleeptime".into(),
                manager_agent_id: Some(main_id.to_string()),
                termination_token: None,
                max_turns: None,
                sleeptime_agent_frequency: Some(SLEEPTIME_AGENT_FREQUENCY_DEFAULT),
                max_message_buffer_length: None,
                min_message_buffer_length: None,
            };
            let create = GroupCreate {
                agent_ids: vec![sleeper_id.clone()],
                description: String::new(),
                manager_config: Some(config),
                project_id: None,
                shared_block_ids: Vec::new(),
                hidden: None,
            };
            self.create(create).await
        };
        if let Err(err) = joined.await {
            if let Err(cleanup) = self.agents.delete(&sleeper_id).await {
                tracing::warn!(error = %cleanup, sleeper_id, "a half-made sleeptime agent was not deleted");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Group `group_id` an agent manages, if it still exists.
    pub(crate) async fn managed(&self, group_id: &str) -> ServiceResult<Option<GroupRecord>> {
        match self.record(group_id).await {
            Ok(group) => Ok(Some(group)),
            Err(ServiceError::GroupNotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn get(&self, group_id: &str) -> ServiceResult<Value> {
        Ok(group_json(&self.record(group_id).await?))
    }

    /// `GET /v1/groups/`: in creation order, paged by id.
    pub async fn list(&self, filter: &GroupFilter, page: &Page) -> ServiceResult<Vec<Value>> {
        let matching: Vec<Value> =
            self.all().await?.iter().filter(|group| filter.accepts(group)).map(group_json).collect();
        Ok(paginate(matching, json_id, page))
    }

    pub async fn count(&self) -> ServiceResult<usize> {
        Ok(self.all().await?.len())
    }

    /// `GET /v1/agents/{id}/groups`: the groups it is a member of.
    pub async fn of_agent(
        &self,
        agent_id: &str,
        filter: &GroupFilter,
        page: &Page,
    ) -> ServiceResult<Vec<Value>> {
        self.actors.record(agent_id).await?;
        let filter = GroupFilter { show_hidden_groups: Some(true), ..filter.clone() };
        let matching: Vec<Value> = self
            .all()
            .await?
            .iter()
            .filter(|group| group.agent_ids.iter().any(|id| id == agent_id) && filter.accepts(group))
            .map(group_json)
            .collect();
        Ok(paginate(matching, json_id, page))
    }

    /// `PATCH /v1/groups/{id}`.
    pub async fn modify(&self, group_id: &str, update: GroupUpdate) -> ServiceResult<Value> {
        let before = self.record(group_id).await?;
        let now = updated(&before, update)?;
        self.check_links(&now).await?;
        let now = self.group(GroupCommand::Replace(Box::new(now))).await?;
        if now.manager_agent_id != before.manager_agent_id {
            if let Some(old) = &before.manager_agent_id {
                self.set_manager(old, None).await?;
            }
            if let Some(new) = &now.manager_agent_id {
                self.set_manager(new, Some(&now.id)).await?;
            }
        }
        Ok(group_json(&now))
    }

    /// `DELETE /v1/groups/{id}`: the agents stay.
    pub async fn delete(&self, group_id: &str) -> ServiceResult<Value> {
        let gone = self.group(GroupCommand::Delete { id: group_id.to_string() }).await?;
        if let Some(manager) = &gone.manager_agent_id {
            self.set_manager(manager, None).await?;
        }
        Ok(json!({"message": format!("Group id={group_id} successfully deleted")}))
    }

    /// Forgets a deleted agent in every group (a group it managed goes).
    pub async fn forget_agent(&self, agent_id: &str) -> ServiceResult<()> {
        self.command(GroupCommand::ForgetAgent { agent_id: agent_id.to_string() }).await.map(drop)
    }

    /// Forgets a deleted standalone block in every group.
    pub async fn forget_block(&self, block_id: &str) -> ServiceResult<()> {
        self.command(GroupCommand::ForgetBlock { block_id: block_id.to_string() }).await.map(drop)
    }

    /// `PATCH /v1/groups/{id}/blocks/attach/{block_id}` (`true`) and
    /// `.../detach/...`: the group shares the block, and every member and
    /// the manager hold it (or no longer do).
    pub async fn set_block(&self, group_id: &str, block_id: &str, shared: bool) -> ServiceResult<()> {
        let group = self.record(group_id).await?;
        self.blocks.get(block_id).await?;
        if shared && !group.shared_block_ids.iter().any(|id| id == block_id) {
            let count = group.shared_block_ids.len() + 1;
            if count > GROUP_BLOCKS_COUNT_MAX {
                return Err(ServiceError::Invalid(format!(
                    "shared_block_ids holds {count}, over GROUP_BLOCKS_COUNT_MAX = {GROUP_BLOCKS_COUNT_MAX}"
                )));
            }
            self.check_room(&Self::everyone(&group), &[block_id.to_string()]).await?;
        }
        let command =
            GroupCommand::SetBlock { id: group_id.to_string(), block_id: block_id.to_string(), shared };
        let group = self.group(command).await?;
        for agent_id in Self::everyone(&group) {
            let done = match shared {
                true => self.blocks.attach(&agent_id, block_id).await.map(drop),
                false => self.blocks.detach(&agent_id, block_id).await.map(drop),
            };
            match done {
                Ok(()) => {}
                // Not held: nothing to detach.
                Err(ServiceError::BlockNotFound(_) | ServiceError::Memory(_)) if !shared => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// The Letta messages of the group's runs, oldest first (unpaged).
    async fn messages_of(&self, group: &GroupRecord) -> ServiceResult<Vec<Value>> {
        let mut rendered = Vec::new();
        for run in &group.runs {
            let command = AgentCommand::RunMessages { run_id: run.run_id.clone() };
            match self.actors.invoke(&run.agent_id, command).await {
                Ok(AgentReply::RunMessages { messages, .. }) => {
                    rendered.extend(messages.iter().flat_map(letta_messages));
                }
                Ok(_) => return Err(unexpected("run messages")),
                // Deleted since (the agent or its messages).
                Err(ServiceError::AgentNotFound(_) | ServiceError::RunNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(rendered)
    }

    /// `GET /v1/groups/{id}/messages`: the messages of the group's turns
    /// (a manager's turns for a group with one, every member's for a round
    /// robin), paged by message id, newest first by default.
    pub async fn messages(
        &self,
        group_id: &str,
        page: &Page,
        types: Option<&[String]>,
    ) -> ServiceResult<Vec<Value>> {
        let group = self.record(group_id).await?;
        let mut all = self.messages_of(&group).await?;
        if let Some(types) = types {
            all.retain(|message| types.iter().any(|kind| message["message_type"] == kind.as_str()));
        }
        Ok(paginate(all, json_id, page))
    }

    /// `PATCH /v1/groups/{id}/messages/{message_id}`: edits the message in
    /// whichever agent of the group holds it.
    pub async fn modify_message(
        &self,
        group_id: &str,
        message_id: &str,
        request: crate::requests::ModifyMessage,
    ) -> ServiceResult<Value> {
        let group = self.record(group_id).await?;
        for agent_id in Self::everyone(&group) {
            match self.agents.modify_message(&agent_id, message_id, request.clone()).await {
                Err(ServiceError::MessageNotFound(_) | ServiceError::AgentNotFound(_)) => {}
                other => return other,
            }
        }
        Err(ServiceError::MessageNotFound(message_id.to_string()))
    }

    /// `PATCH /v1/groups/{id}/reset-messages`: every member's messages
    /// are deleted and the group forgets its turns (a manager keeps its own
    /// conversation).
    pub async fn reset_messages(&self, group_id: &str) -> ServiceResult<()> {
        let group = self.record(group_id).await?;
        for agent_id in dedup(group.agent_ids.clone()) {
            // Under the member's turn lock, so on the node that owns it.
            let reset = match self.runs.router().on_owner(&agent_id, &OwnerOp::ResetMessages).await {
                Ok(Some(agent)) => Ok(agent),
                Ok(None) => self.agents.reset_messages(&agent_id).await,
                Err(err) => Err(err),
            };
            match reset {
                Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        self.group(GroupCommand::ClearRuns { id: group_id.to_string() }).await.map(drop)
    }

    /// After a user turn of `manager_id` (which has `enable_sleeptime`
    /// set): records the turn in its group and, when the count of turns
    /// says so, starts each member's sleeptime run; their run ids.
    async fn after_manager_turn(
        &self,
        manager_id: &str,
        outcome: &TurnOutcome,
    ) -> ServiceResult<Vec<String>> {
        let Some(group_id) = &outcome.sleeptime_group else { return Ok(Vec::new()) };
        let group = self.record(group_id).await?;
        if group.manager_type != "sleeptime" || group.manager_agent_id.as_deref() != Some(manager_id) {
            return Ok(Vec::new());
        }
        let run = GroupRun { agent_id: manager_id.to_string(), run_id: outcome.run_id.clone() };
        self.group(GroupCommand::AddRun { id: group.id.clone(), run }).await?;
        let counter = match self.command(GroupCommand::BumpTurns { id: group.id.clone() }).await? {
            GroupReply::Counter(counter) => counter,
            _ => return Err(unexpected("bump turns")),
        };
        // Letta: every turn without a frequency; else when the counter wraps.
        let due = match group.sleeptime_agent_frequency {
            None => true,
            Some(_) => counter == Some(0),
        };
        if !due || group.agent_ids.is_empty() {
            return Ok(Vec::new());
        }
        let command = AgentCommand::RunMessages { run_id: outcome.run_id.clone() };
        let AgentReply::RunMessages { messages, .. } = self.actors.invoke(manager_id, command).await? else {
            return Err(unexpected("run messages"));
        };
        let Some(last) = messages.last() else { return Ok(Vec::new()) };
        let take = GroupCommand::TakeLastProcessed { id: group.id.clone(), message_id: last.id.clone() };
        let GroupReply::LastProcessed(before) = self.command(take).await? else {
            return Err(unexpected("last processed"));
        };
        let transcript = match (group.sleeptime_agent_frequency, before) {
            (Some(_), Some(after)) => {
                let page = Page {
                    before: None,
                    after: Some(after),
                    limit: SLEEPTIME_TRANSCRIPT_MESSAGES_COUNT_MAX,
                    descending: false,
                };
                self.agents.list_messages(manager_id, &page).await?
            }
            _ => messages.iter().flat_map(letta_messages).collect(),
        };
        let prompt = sleeptime_prompt(&transcript);
        let mut run_ids = Vec::new();
        for member in dedup(group.agent_ids.clone()) {
            let run = self.runs.start_on_owner(&member, vec![prompt.clone()], None, None).await?;
            let run_id = run["id"].as_str().ok_or_else(|| unexpected("run without id"))?.to_string();
            self.follow_sleeptime_run(member, run_id.clone());
            run_ids.push(run_id);
        }
        Ok(run_ids)
    }

    /// Waits, in the background, for a sleeptime run to end, then writes
    /// the shared blocks it changed to every agent holding them.
    fn follow_sleeptime_run(&self, member: String, run_id: String) {
        let Some(groups) = self.this.upgrade() else { return };
        let task = async move {
            let synced = async {
                let run = groups.runs.wait_end(&run_id).await?;
                match run.status {
                    RunStatus::Completed => groups.share_blocks_of(&member).await,
                    _ => Ok(()),
                }
            };
            if let Err(err) = synced.await {
                tracing::warn!(error = %err, run_id, "the blocks of a sleeptime run were not shared");
            }
        };
        self.env.spawner.spawn("sleeptime-blocks", Box::pin(task));
    }

    /// Writes each shared block `agent_id` holds whose value differs from
    /// the block store's through the store, so every agent holding it gets
    /// the agent's version (a tool edit changes only the editor's copy).
    async fn share_blocks_of(&self, agent_id: &str) -> ServiceResult<()> {
        let agent = self.actors.record(agent_id).await?;
        for block in agent.memory.blocks() {
            let Some(shared) = self.blocks.find_shared(&block.id).await? else { continue };
            if shared.block.value != block.value {
                let update = UpdateBlock { value: Some(block.value.clone()), ..UpdateBlock::default() };
                self.blocks.update(&block.id, update).await?;
            }
        }
        Ok(())
    }

    /// `POST /v1/groups/{id}/messages`: one turn of a round robin group.
    /// `max_turns` member turns (default one per member) in member order;
    /// each member is sent what it has not seen: the user's messages and
    /// the other members' replies (as `<name>: <reply>`). Letta's
    /// `LettaResponse`: every member's messages in order, the last stop
    /// reason, the usage summed with every run's id.
    pub async fn send(
        &self,
        group_id: &str,
        texts: Vec<String>,
        max_steps: Option<u32>,
    ) -> ServiceResult<Value> {
        let group = self.record(group_id).await?;
        if group.manager_type != "round_robin" {
            return Err(ServiceError::Refused(format!(
                "a {} group does not take messages here: a sleeptime group runs after its manager's turns \
                 (POST /v1/agents/{{manager_agent_id}}/messages); supervisor, dynamic and voice_sleeptime \
                 groups are not run by Kelpie (nor by Letta 0.16.8)",
                group.manager_type
            )));
        }
        if group.agent_ids.is_empty() {
            return Err(ServiceError::Invalid("Empty group: group must have at least one agent".into()));
        }
        super::turn::check_turn_input(&texts, max_steps)?;
        let lock = self.turn_locks.lock_for(group_id);
        let _turn = lock.lock().await;
        let mut names = BTreeMap::new();
        for agent_id in &group.agent_ids {
            names.insert(agent_id.clone(), self.actors.record(agent_id).await?.name);
        }
        let max_turns = group.max_turns.map_or(group.agent_ids.len(), |turns| turns as usize);
        let mut history: Vec<String> = Vec::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut fresh = texts;
        let mut answer = GroupAnswer::default();
        for turn in 0..max_turns {
            let speaker = &group.agent_ids[turn % group.agent_ids.len()];
            history.append(&mut fresh);
            let input = history[*seen.get(speaker).unwrap_or(&0)..].to_vec();
            if input.is_empty() {
                // Nobody said anything since this member last spoke.
                break;
            }
            let run = self.runs.start_on_owner(speaker, input, max_steps, None).await?;
            let run_id = run["id"].as_str().ok_or_else(|| unexpected("run without id"))?.to_string();
            let entry = GroupRun { agent_id: speaker.clone(), run_id: run_id.clone() };
            self.group(GroupCommand::AddRun { id: group.id.clone(), run: entry }).await?;
            let replies = answer.add_run(self, speaker, &run_id).await?;
            fresh = replies.iter().map(|reply| format!("{}: {reply}", names[speaker])).collect();
            seen.insert(speaker.clone(), history.len() + fresh.len());
            if answer.stop_reason != "end_turn" {
                break;
            }
        }
        Ok(answer.json())
    }

    pub async fn shutdown(&self) {
        self.store.shutdown().await;
    }
}

/// What a group turn answers, summed over its member runs.
#[derive(Default)]
struct GroupAnswer {
    messages: Vec<Value>,
    run_ids: Vec<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    step_count: usize,
    stop_reason: String,
}

impl GroupAnswer {
    /// Waits for member run `run_id` of `agent_id` to end and adds what it
    /// stored; the member's replies (its assistant messages' texts).
    async fn add_run(&mut self, groups: &Groups, agent_id: &str, run_id: &str) -> ServiceResult<Vec<String>> {
        let run = groups.runs.wait_end(run_id).await?;
        assert_ne!(run.status, RunStatus::Running, "a waited run has ended");
        let command = AgentCommand::RunMessages { run_id: run_id.to_string() };
        let AgentReply::RunMessages { messages, .. } = groups.actors.invoke(agent_id, command).await? else {
            return Err(unexpected("run messages"));
        };
        let mut replies = Vec::new();
        for message in messages.iter().filter(|m| !matches!(m.body, MessageBody::User { .. })) {
            for rendered in letta_messages(message) {
                if rendered["message_type"] == "assistant_message" {
                    let text = content_text(&rendered["content"]);
                    if !text.trim().is_empty() {
                        replies.push(text);
                    }
                }
                self.messages.push(rendered);
            }
        }
        self.run_ids.push(run_id.to_string());
        self.prompt_tokens += run.prompt_tokens();
        self.completion_tokens += run.completion_tokens();
        self.step_count += run.steps.iter().filter(|step| step.model.is_some()).count();
        self.stop_reason = match run.status {
            RunStatus::Failed => "error".to_string(),
            _ => run.stop_reason.clone().unwrap_or_else(|| "end_turn".into()),
        };
        Ok(replies)
    }

    fn json(&self) -> Value {
        let total = self.prompt_tokens + self.completion_tokens;
        json!({
            "messages": self.messages,
            "stop_reason": {"message_type": "stop_reason", "stop_reason": self.stop_reason},
            "usage": {
                "message_type": "usage_statistics", "completion_tokens": self.completion_tokens,
                "prompt_tokens": self.prompt_tokens, "total_tokens": total, "step_count": self.step_count,
                "run_ids": self.run_ids, "cached_input_tokens": 0, "cache_write_tokens": 0,
                "reasoning_tokens": 0, "context_tokens": total,
            },
            "logprobs": null, "turns": null,
        })
    }
}
