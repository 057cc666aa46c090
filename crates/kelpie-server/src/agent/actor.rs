//! The agent actor: one virtual actor per agent. Its state is the agent
//! record; messages (`m/<seq>`) and passages (`p/<seq>`) are extra keys,
//! with id-to-seq indexes (`mi/<id>`, `pi/<id>`). Every command is one
//! invocation, so a step (its messages, tool effects and memory edits) is
//! committed atomically or not at all.

use kelpie_core::{Error, Result};
use kelpie_memory::{rank_passages, Block, CoreMemory, MemoryError, Passage};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

use super::model::{AgentRecord, MessageBody, StoredMessage};
use super::tools_exec;
use crate::ids::new_id;

/// What the agent actor persists as its state.
/// Namespace of agent actor ids: `agents/<agent id>`.
pub const AGENT_NAMESPACE: &str = "agents";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentActorState {
    pub agent: Option<AgentRecord>,
    /// Next sequence number of a message or passage.
    pub next_seq: u64,
}

/// Changes to an agent's own fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub system: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub tags: Option<Vec<String>>,
    pub tool_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlockPatch {
    pub value: Option<String>,
    pub limit: Option<u64>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
}

/// The outcome of a tool the server ran outside the actor (a custom tool).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalResult {
    pub tool_call_id: String,
    pub result: String,
    pub ok: bool,
}

/// One step of the agent loop to persist: the inputs that started it (the
/// user's messages, first step only) and the LLM's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepInput {
    pub run_id: String,
    pub step_id: String,
    pub user_messages: Vec<String>,
    pub assistant: MessageBody,
    /// The id the assistant message is stored under, chosen before the LLM
    /// call so streamed tokens carry the id of the message they become.
    pub assistant_message_id: String,
    pub external: Vec<ExternalResult>,
    /// Embeddings of the texts the step's archival tool calls store or
    /// search for, computed by the service with the agent's embedding.
    pub embeddings: Vec<super::embed::TextEmbedding>,
}

/// An agent read from an export file, to create with its history in one
/// transaction; every id in it is already new.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportedAgent {
    pub record: AgentRecord,
    pub messages: Vec<StoredMessage>,
    pub passages: Vec<Passage>,
}

#[derive(Serialize, Deserialize)]
pub enum AgentCommand {
    Create(Box<AgentRecord>),
    /// Creates the agent with its messages and passages, atomically.
    Import(Box<ImportedAgent>),
    Get,
    Update(AgentPatch),
    Delete,
    UpdateBlock {
        label: String,
        patch: BlockPatch,
    },
    /// Adds a copy of a shared block to core memory.
    AttachBlock(Box<Block>),
    /// Removes the block with this id from core memory.
    DetachBlock {
        id: String,
    },
    /// Replaces the copy of a shared block with its new canonical version;
    /// nothing happens when the agent no longer holds it.
    SyncBlock(Box<Block>),
    Messages,
    /// Deletes every message; passages and memory stay.
    ResetMessages,
    Recent {
        count_max: usize,
    },
    CommitStep(Box<StepInput>),
    InsertPassage {
        text: String,
        tags: Vec<String>,
        embedding: Vec<f32>,
    },
    Passages,
    SearchPassages {
        query_embedding: Vec<f32>,
        top_k: usize,
    },
    DeletePassage {
        id: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum AgentReply {
    Agent(Box<AgentRecord>),
    Messages(Vec<StoredMessage>),
    Step { agent: Box<AgentRecord>, messages: Vec<StoredMessage> },
    Passages { agent: Box<AgentRecord>, passages: Vec<Passage> },
    Done,
}

pub struct AgentActor;

pub(crate) type Ctx<'a> = ActorContext<'a, AgentActorState>;

fn not_found(ctx: &Ctx<'_>) -> Error {
    Error::NotFound { kind: "agent", id: ctx.actor_id.id().to_string() }
}

pub(crate) fn memory_error(err: MemoryError) -> Error {
    match err {
        MemoryError::BlockNotFound { label } => Error::NotFound { kind: "block", id: label },
        MemoryError::BlockIdNotFound { id } => Error::NotFound { kind: "block", id },
        other => Error::validation("memory", other.to_string()),
    }
}

pub(crate) fn agent_mut<'s>(ctx: &'s mut Ctx<'_>) -> Result<&'s mut AgentRecord> {
    let missing = not_found(ctx);
    ctx.state.agent.as_mut().ok_or(missing)
}

fn agent(ctx: &Ctx<'_>) -> Result<AgentRecord> {
    ctx.state.agent.clone().ok_or_else(|| not_found(ctx))
}

fn seq_key(prefix: &str, seq: u64) -> Vec<u8> {
    format!("{prefix}/{seq:016x}").into_bytes()
}

fn index_key(prefix: &str, id: &str) -> Vec<u8> {
    format!("{prefix}/{id}").into_bytes()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corruption { location: what.to_string(), reason: e.to_string() })
}

impl Actor for AgentActor {
    type State = AgentActorState;
    type Message = AgentCommand;
    type Reply = AgentReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: AgentCommand) -> Result<AgentReply> {
        match command {
            AgentCommand::Create(record) => create(ctx, *record),
            AgentCommand::Import(imported) => import(ctx, *imported),
            AgentCommand::Get => Ok(AgentReply::Agent(Box::new(agent(ctx)?))),
            AgentCommand::Update(patch) => update(ctx, patch),
            AgentCommand::Delete => delete(ctx).await,
            AgentCommand::UpdateBlock { label, patch } => update_block(ctx, &label, patch),
            AgentCommand::AttachBlock(block) => edit_memory(ctx, |memory| memory.attach(*block).map(drop)),
            AgentCommand::DetachBlock { id } => edit_memory(ctx, |memory| memory.detach(&id).map(drop)),
            AgentCommand::SyncBlock(block) => edit_memory(ctx, |memory| memory.sync(*block).map(drop)),
            AgentCommand::Messages => Ok(AgentReply::Messages(all_messages(ctx).await?)),
            AgentCommand::ResetMessages => reset_messages(ctx).await,
            AgentCommand::Recent { count_max } => recent(ctx, count_max).await,
            AgentCommand::CommitStep(step) => commit_step(ctx, *step).await,
            AgentCommand::InsertPassage { text, tags, embedding } => {
                let passage = insert_passage(ctx, text, tags, embedding)?;
                Ok(AgentReply::Passages { agent: Box::new(agent(ctx)?), passages: vec![passage] })
            }
            AgentCommand::Passages => {
                let passages = all_passages(ctx).await?;
                Ok(AgentReply::Passages { agent: Box::new(agent(ctx)?), passages })
            }
            AgentCommand::SearchPassages { query_embedding, top_k } => {
                let passages = search_passages(ctx, &query_embedding, top_k).await?;
                Ok(AgentReply::Passages { agent: Box::new(agent(ctx)?), passages })
            }
            AgentCommand::DeletePassage { id } => delete_passage(ctx, &id).await,
        }
    }
}

/// Creates the agent; if it exists (a repeated idempotency key: random
/// ids never collide), answers the existing agent unchanged.
fn create(ctx: &mut Ctx<'_>, record: AgentRecord) -> Result<AgentReply> {
    if let Some(existing) = &ctx.state.agent {
        return Ok(AgentReply::Agent(Box::new(existing.clone())));
    }
    assert_eq!(record.id, ctx.actor_id.id(), "an agent record lives in its own actor");
    ctx.state.agent = Some(record.clone());
    Ok(AgentReply::Agent(Box::new(record)))
}

/// Creates an imported agent with its history; messages and passages keep
/// their order and times and get sequence numbers here.
fn import(ctx: &mut Ctx<'_>, imported: ImportedAgent) -> Result<AgentReply> {
    if ctx.state.agent.is_some() {
        return Err(Error::Internal(format!("imported agent {} already exists", imported.record.id)));
    }
    assert_eq!(imported.record.id, ctx.actor_id.id(), "an agent record lives in its own actor");
    ctx.state.agent = Some(imported.record.clone());
    for mut message in imported.messages {
        message.seq = next_seq(ctx);
        ctx.kv_put(&seq_key("m", message.seq), encode(&message)?)?;
        ctx.kv_put(&index_key("mi", &message.id), message.seq.to_be_bytes().to_vec())?;
    }
    for passage in imported.passages {
        let seq = next_seq(ctx);
        ctx.kv_put(&seq_key("p", seq), encode(&passage)?)?;
        ctx.kv_put(&index_key("pi", &passage.id), seq.to_be_bytes().to_vec())?;
    }
    Ok(AgentReply::Agent(Box::new(imported.record)))
}

fn update(ctx: &mut Ctx<'_>, patch: AgentPatch) -> Result<AgentReply> {
    let now = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx)?;
    if let Some(name) = patch.name {
        agent.name = name;
    }
    if let Some(system) = patch.system {
        agent.system = system;
    }
    if patch.description.is_some() {
        agent.description = patch.description;
    }
    if patch.metadata.is_some() {
        agent.metadata = patch.metadata;
    }
    if let Some(tags) = patch.tags {
        agent.tags = tags;
    }
    if let Some(tool_ids) = patch.tool_ids {
        agent.tool_ids = tool_ids;
    }
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

async fn delete(ctx: &mut Ctx<'_>) -> Result<AgentReply> {
    agent(ctx)?;
    for prefix in ["m/", "mi/", "p/", "pi/"] {
        for (key, _) in ctx.kv_scan_prefix(prefix.as_bytes()).await? {
            ctx.kv_delete(&key)?;
        }
    }
    ctx.state.agent = None;
    Ok(AgentReply::Done)
}

async fn reset_messages(ctx: &mut Ctx<'_>) -> Result<AgentReply> {
    agent(ctx)?;
    for prefix in ["m/", "mi/"] {
        for (key, _) in ctx.kv_scan_prefix(prefix.as_bytes()).await? {
            ctx.kv_delete(&key)?;
        }
    }
    let now = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx)?;
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

fn update_block(ctx: &mut Ctx<'_>, label: &str, patch: BlockPatch) -> Result<AgentReply> {
    let now = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx)?;
    // Edit a copy so a refused change leaves the memory exactly as it was.
    let mut memory = agent.memory.clone();
    if let Some(limit) = patch.limit {
        memory.set_limit(label, limit).map_err(memory_error)?;
    }
    if let Some(value) = patch.value {
        memory.set_value(label, value).map_err(memory_error)?;
    }
    memory.set_details(label, patch.description, patch.read_only).map_err(memory_error)?;
    agent.memory = memory;
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

/// Applies `edit` to a copy of core memory and keeps it only if it succeeds.
fn edit_memory(
    ctx: &mut Ctx<'_>,
    edit: impl FnOnce(&mut CoreMemory) -> std::result::Result<(), MemoryError>,
) -> Result<AgentReply> {
    let now = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx)?;
    let mut memory = agent.memory.clone();
    edit(&mut memory).map_err(memory_error)?;
    agent.memory = memory;
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

pub(crate) async fn all_messages(ctx: &mut Ctx<'_>) -> Result<Vec<StoredMessage>> {
    agent(ctx)?;
    let rows = ctx.kv_scan_prefix(b"m/").await?;
    rows.iter().map(|(_, value)| decode(value, "agent message")).collect()
}

async fn recent(ctx: &mut Ctx<'_>, count_max: usize) -> Result<AgentReply> {
    agent(ctx)?;
    let first = ctx.state.next_seq.saturating_sub(count_max as u64);
    let mut messages = Vec::new();
    for seq in first..ctx.state.next_seq {
        if let Some(bytes) = ctx.kv_get(&seq_key("m", seq)).await? {
            messages.push(decode::<StoredMessage>(&bytes, "agent message")?);
        }
    }
    Ok(AgentReply::Messages(messages))
}

fn next_seq(ctx: &mut Ctx<'_>) -> u64 {
    let seq = ctx.state.next_seq;
    ctx.state.next_seq += 1;
    seq
}

pub(crate) fn append_message(
    ctx: &mut Ctx<'_>,
    step: &StepInput,
    body: MessageBody,
    id: Option<String>,
) -> Result<StoredMessage> {
    let seq = next_seq(ctx);
    let message = StoredMessage {
        id: id.unwrap_or_else(|| new_id("message", ctx.env.rng.as_ref())),
        seq,
        created_ms: ctx.env.clock.wall_ms(),
        run_id: Some(step.run_id.clone()),
        step_id: Some(step.step_id.clone()),
        body,
    };
    ctx.kv_put(&seq_key("m", seq), encode(&message)?)?;
    ctx.kv_put(&index_key("mi", &message.id), seq.to_be_bytes().to_vec())?;
    Ok(message)
}

async fn commit_step(ctx: &mut Ctx<'_>, step: StepInput) -> Result<AgentReply> {
    agent(ctx)?;
    let mut messages = Vec::new();
    for content in &step.user_messages {
        messages.push(append_message(ctx, &step, MessageBody::User { content: content.clone() }, None)?);
    }
    let assistant_id = Some(step.assistant_message_id.clone());
    messages.push(append_message(ctx, &step, step.assistant.clone(), assistant_id)?);
    let MessageBody::Assistant { tool_calls, .. } = &step.assistant else {
        return Err(Error::Internal("a step's answer must be an assistant message".into()));
    };
    for call in tool_calls {
        let (result, ok) = match step.external.iter().find(|done| done.tool_call_id == call.id) {
            Some(done) => (done.result.clone(), done.ok),
            None => tools_exec::run_builtin(ctx, call, &step.embeddings).await?,
        };
        let body = MessageBody::Tool { tool_call_id: call.id.clone(), name: call.name.clone(), result, ok };
        messages.push(append_message(ctx, &step, body, None)?);
    }
    let now = ctx.env.clock.wall_ms();
    agent_mut(ctx)?.updated_ms = now;
    Ok(AgentReply::Step { agent: Box::new(agent(ctx)?), messages })
}

pub(crate) fn insert_passage(
    ctx: &mut Ctx<'_>,
    text: String,
    tags: Vec<String>,
    embedding: Vec<f32>,
) -> Result<Passage> {
    agent(ctx)?;
    assert!(!embedding.is_empty(), "a passage is stored with its embedding");
    let seq = next_seq(ctx);
    let passage = Passage {
        id: new_id("passage", ctx.env.rng.as_ref()),
        embedding,
        text,
        tags,
        created_ms: ctx.env.clock.wall_ms(),
    };
    ctx.kv_put(&seq_key("p", seq), encode(&passage)?)?;
    ctx.kv_put(&index_key("pi", &passage.id), seq.to_be_bytes().to_vec())?;
    Ok(passage)
}

async fn all_passages(ctx: &mut Ctx<'_>) -> Result<Vec<Passage>> {
    agent(ctx)?;
    let rows = ctx.kv_scan_prefix(b"p/").await?;
    rows.iter().map(|(_, value)| decode(value, "agent passage")).collect()
}

pub(crate) async fn search_passages(
    ctx: &mut Ctx<'_>,
    query_embedding: &[f32],
    top_k: usize,
) -> Result<Vec<Passage>> {
    let passages = all_passages(ctx).await?;
    let ranked = rank_passages(&passages, query_embedding, top_k);
    Ok(ranked.into_iter().map(|index| passages[index].clone()).collect())
}

async fn delete_passage(ctx: &mut Ctx<'_>, id: &str) -> Result<AgentReply> {
    agent(ctx)?;
    let Some(seq) = ctx.kv_get(&index_key("pi", id)).await? else {
        return Err(Error::NotFound { kind: "passage", id: id.to_string() });
    };
    let seq =
        u64::from_be_bytes(seq.as_slice().try_into().map_err(|_| Error::Corruption {
            location: "passage index".into(),
            reason: "not 8 bytes".into(),
        })?);
    ctx.kv_delete(&seq_key("p", seq))?;
    ctx.kv_delete(&index_key("pi", id))?;
    Ok(AgentReply::Done)
}
