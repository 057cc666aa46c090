//! The agent actor: one virtual actor per agent, its commands and their
//! handler. Every command is one invocation, so a step (its messages, tool
//! effects and memory edits) is committed atomically or not at all.
//!
//! Enter here: [`AgentActor::handle`] dispatches each command to a function
//! below, which uses [`store`] (the key layout and the reads and writes) and,
//! for a step, [`builtin`] (the built-in tools, run inside the step).

mod archive;
pub(crate) mod builtin;
mod conversations;
mod runs;
pub(crate) mod store;
mod window;

use kelpie_core::{Error, Result};
use kelpie_llm::ToolCall;
use kelpie_memory::{Block, CoreMemory, MemoryError, Passage};
use kelpie_runtime::Actor;
use serde::{Deserialize, Serialize};

pub use archive::TagFilter;
pub use conversations::{ConversationFilter, ConversationPatch, ImportedMessage};
pub use runs::{
    RunFilter, OPEN_RUNS_COUNT_MAX, RUN_INTERRUPTED_ERROR, RUN_LOST_ERROR, RUN_SCAN_ROWS_COUNT_MAX,
    RUN_STEPS_COUNT_MAX,
};
pub use store::ConversationRecord;
use store::{agent, agent_mut, Ctx, History, PassageChanges};
pub use store::{AgentActorState, ContextState, Counts, PageSpec};

use crate::error::memory_error;
use crate::model::{
    AgentRecord, BlockPatch, CompactionSettings, MessageBody, RunEnd, RunRecord, RunStart, StepPatch,
    StepRecord, StepTiming, StoredMessage, TextEmbedding,
};

/// Namespace of agent actor ids: `agents/<agent id>`.
pub const AGENT_NAMESPACE: &str = "agents";

/// Changes to an agent's own fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentPatch {
    pub name: Option<String>,
    pub system: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub tags: Option<Vec<String>>,
    pub tool_ids: Option<Vec<String>>,
    /// Replaces the agent's tool environment.
    #[serde(default)]
    pub secrets: Option<std::collections::BTreeMap<String, String>>,
    /// Replaces the compaction settings.
    #[serde(default)]
    pub compaction: Option<CompactionSettings>,
    /// Replaces the tool rules.
    #[serde(default)]
    pub tool_rules: Option<Vec<crate::tool_rules::ToolRule>>,
    /// Links (`true`) or unlinks the agent and an identity.
    #[serde(default)]
    pub identity: Option<(String, bool)>,
    /// Sets `max_files_open` and `per_file_view_window_char_limit` (each
    /// when given); past the new limit the least recently used files close.
    #[serde(default)]
    pub file_limits: (Option<u32>, Option<u64>),
    /// Sets Letta's `enable_sleeptime`.
    #[serde(default)]
    pub enable_sleeptime: Option<bool>,
    /// Sets (`Some(Some(id))`) or clears the group the agent manages.
    #[serde(default)]
    pub managed_group: Option<Option<String>>,
}

/// The outcome of a tool the server ran outside the actor (a custom tool,
/// the code interpreter), with what it printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalResult {
    pub tool_call_id: String,
    pub result: String,
    pub ok: bool,
    #[serde(default)]
    pub stdout: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
}

/// One step of the agent loop to persist: the inputs that started it (the
/// user's messages, first step only) and the LLM's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepInput {
    /// The run the step belongs to (begun by its first step if new).
    pub run: RunStart,
    pub step_id: String,
    /// The model handle that answered, and the tokens it counted.
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The run ends with this step (known before the commit when the loop
    /// has no tool rules to consult).
    pub end: Option<RunEnd>,
    pub user_messages: Vec<String>,
    pub assistant: MessageBody,
    /// The id the assistant message is stored under, chosen before the LLM
    /// call so streamed tokens carry the id of the message they become.
    pub assistant_message_id: String,
    pub external: Vec<ExternalResult>,
    /// Embeddings of the texts the step's archival tool calls store or
    /// search for, computed by the service with the agent's embedding.
    pub embeddings: Vec<TextEmbedding>,
    /// What the agent's attached archives found for its archival searches.
    #[serde(default)]
    pub archive_hits: Vec<crate::model::ArchiveHits>,
    /// The answer's calls wait for the client's approval: stored as an
    /// approval request, none run.
    #[serde(default)]
    pub hold_calls: bool,
    #[serde(default)]
    pub timing: Option<StepTiming>,
    /// Changes to the open files the step's file tools made (applied after
    /// its calls, with the step).
    #[serde(default)]
    pub file_ops: Vec<crate::files::FileOp>,
}

/// The client's answer to a pending approval request, to persist with the
/// results of the held calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalInput {
    pub run: RunStart,
    pub step_id: String,
    pub decisions: Vec<crate::model::ApprovalDecision>,
    /// The held calls, in their order.
    pub calls: Vec<ToolCall>,
    /// Results decided outside the actor (denied, run by the client, run
    /// in a sandbox or on an MCP server); the others are built-in tools run here.
    pub external: Vec<ExternalResult>,
    pub embeddings: Vec<TextEmbedding>,
    #[serde(default)]
    pub archive_hits: Vec<crate::model::ArchiveHits>,
    /// Changes to the open files the approved file tool calls made.
    #[serde(default)]
    pub file_ops: Vec<crate::files::FileOp>,
}

#[derive(Serialize, Deserialize)]
pub enum AgentCommand {
    Create(Box<AgentRecord>),
    /// Starts an import: the agent exists but stays invisible (not found)
    /// until [`AgentCommand::ImportFinish`].
    ImportBegin(Box<AgentRecord>),
    /// Appends part of an importing agent's history, in order; every id in
    /// it is already new.
    ImportBatch {
        messages: Vec<StoredMessage>,
        passages: Vec<Passage>,
        /// Messages of the conversations [`AgentCommand::ImportConversation`]
        /// stored, in order.
        #[serde(default)]
        conversation_messages: Vec<ImportedMessage>,
    },
    /// Stores a conversation of an importing agent (new id, empty, its
    /// window starting at the next message); its messages come in batches.
    ImportConversation(Box<ConversationRecord>),
    /// Makes an imported agent visible under `name`, with `tool_ids`;
    /// `drop_messages` leaves the messages it was given to reclaim. An
    /// agent visible already is answered unchanged (roll-forward repeats).
    ImportFinish {
        name: String,
        tool_ids: Vec<String>,
        drop_messages: bool,
    },
    /// Gives up an import that never finished: everything it wrote is left
    /// to reclaim. Nothing happens to an agent that is not importing.
    AbandonImport,
    Get,
    /// How many messages and passages the agent holds.
    Counts,
    Update(Box<AgentPatch>),
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
    /// One page of messages.
    MessagePage(PageSpec),
    /// Deletes every message; passages and memory stay.
    ResetMessages,
    /// The context window of the agent's own history, or of conversation
    /// `conversation`: its newest `count_max` messages, the summary before
    /// them, and how many messages the agent (or the conversation) holds.
    InContext {
        count_max: usize,
        #[serde(default)]
        conversation: Option<String>,
    },
    /// Moves the window's start to `start_seq` and stores the summary of
    /// what left it (`summary` as written, `content` as the agent reads
    /// it), in the agent's own history or in conversation `conversation`.
    Compact {
        start_seq: u64,
        summary: String,
        content: String,
        #[serde(default)]
        conversation: Option<String>,
    },
    /// Stores a new conversation ([`AgentReply::Conversation`]).
    CreateConversation(Box<ConversationRecord>),
    /// Stores a new conversation holding a copy of the newest `count_max`
    /// in-context messages of `source` (the agent's own history when
    /// `None`) and its compaction summary.
    ForkConversation {
        record: Box<ConversationRecord>,
        source: Option<String>,
        count_max: usize,
    },
    /// Conversation `id` with the ids of its newest `count_max` in-context
    /// messages.
    GetConversation {
        id: String,
        count_max: usize,
    },
    UpdateConversation {
        id: String,
        patch: ConversationPatch,
    },
    /// Deletes conversation `id`; its messages are left to
    /// [`AgentCommand::Reclaim`].
    DeleteConversation {
        id: String,
    },
    /// One page of conversations ([`AgentReply::Conversations`]).
    ConversationPage {
        after: Option<String>,
        filter: ConversationFilter,
        limit: usize,
        descending: bool,
    },
    /// One page of the messages of conversation `id`.
    ConversationMessages {
        id: String,
        page: PageSpec,
    },
    CommitStep(Box<StepInput>),
    /// Stores the answer to the pending approval request and the held
    /// calls' results; answers [`AgentReply::Step`].
    CommitApproval(Box<ApprovalInput>),
    InsertPassage {
        text: String,
        tags: Vec<String>,
        embedding: Vec<f32>,
    },
    /// One page of passages.
    PassagePage(PageSpec),
    /// The `top_k` passages nearest the query that pass `filter`.
    SearchPassages {
        query_embedding: Vec<f32>,
        top_k: usize,
        #[serde(default)]
        filter: TagFilter,
    },
    DeletePassage {
        id: String,
    },
    /// Deletes up to `keys_max` keys a reset or delete left behind.
    Reclaim {
        keys_max: usize,
    },
    /// Stores a run as running before its first step (a background run is
    /// visible at once); answers [`AgentReply::Run`].
    StartRun(RunStart),
    /// Ends a run unless it already ended; answers the run as stored.
    EndRun {
        start: RunStart,
        end: RunEnd,
    },
    GetRun {
        run_id: String,
    },
    /// One page of the agent's runs that pass the filter.
    RunPage {
        page: PageSpec,
        filter: RunFilter,
    },
    /// A run and the messages it stored.
    RunMessages {
        run_id: String,
    },
    /// Forgets an ended run; answers whether it existed.
    DeleteRun {
        run_id: String,
    },
    /// Sets what a client may change on a stored step (feedback, tags,
    /// transaction id); answers the run, `None` when the agent has no such
    /// run or the run no such step.
    UpdateStep {
        run_id: String,
        step_id: String,
        patch: StepPatch,
    },
    /// Attaches or refreshes (`Some`) or detaches (`None`) folder
    /// `folder_id`: the file tools come with the first folder and go with
    /// the last; a detached folder's files close.
    SetFolder {
        folder_id: String,
        folder: Option<Box<crate::files::AgentFolder>>,
    },
    /// Changes the open files; answers the names of the files closed.
    FileOps(Vec<crate::files::FileOp>),
    /// Changes the text of a stored message (Letta's modify message);
    /// answers [`AgentReply::Messages`] with the message after.
    EditMessage {
        id: String,
        edit: MessageEdit,
    },
    /// The stored message `id` in the agent's own history or one of its
    /// conversations ([`AgentReply::Message`]).
    GetMessage {
        id: String,
    },
    /// At most `limit` stored messages whose text holds `query` (case
    /// aside), newest first, through the word index (as
    /// `conversation_search`), in the agent's own history or in
    /// conversation `conversation`.
    SearchMessages {
        query: String,
        limit: usize,
        #[serde(default)]
        conversation: Option<String>,
    },
    /// At most `limit` stored messages whose place in time
    /// ([`store::time_place`]) is in `[from, to)`, from the older end or,
    /// `descending`, the newer one.
    MessagesBetween {
        from: Option<(u64, u64)>,
        to: Option<(u64, u64)>,
        descending: bool,
        limit: usize,
    },
}

/// What an edit of a stored message changes: a user message's text, an
/// assistant's reply (its `send_message` text, or its text without tool
/// calls), or an assistant's reasoning (its text beside tool calls).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MessageEdit {
    User(String),
    Assistant(String),
    Reasoning(String),
}

impl MessageEdit {
    /// Applies the edit to `body`; why not when the body is of another kind.
    pub fn apply(self, body: &mut MessageBody) -> std::result::Result<(), String> {
        match (self, body) {
            (MessageEdit::User(text), MessageBody::User { content }) => *content = text,
            (MessageEdit::Assistant(text), MessageBody::Assistant { content, tool_calls, .. }) => {
                let no_calls = tool_calls.is_empty();
                match tool_calls.iter_mut().find(|call| call.name == kelpie_tools::SEND_MESSAGE) {
                    Some(call) => {
                        let mut args: serde_json::Value =
                            serde_json::from_str(&call.arguments).unwrap_or_else(|_| serde_json::json!({}));
                        if !args.is_object() {
                            args = serde_json::json!({});
                        }
                        args["message"] = serde_json::Value::String(text);
                        call.arguments = args.to_string();
                    }
                    None if no_calls => *content = Some(text),
                    None => return Err("this message has no assistant reply to edit".into()),
                }
            }
            (MessageEdit::Reasoning(text), MessageBody::Assistant { content, tool_calls, .. })
                if !tool_calls.is_empty() =>
            {
                *content = Some(text)
            }
            (edit, _) => {
                let kind = match edit {
                    MessageEdit::User(_) => "a user message",
                    MessageEdit::Assistant(_) => "an assistant message",
                    MessageEdit::Reasoning(_) => "a reasoning message",
                };
                return Err(format!("the message is not {kind}"));
            }
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
pub enum AgentReply {
    Agent(Box<AgentRecord>),
    Messages(Vec<StoredMessage>),
    /// A message looked up by id, with the conversation that holds it
    /// (`None`: the agent's own history); `None` when there is none.
    Message(Option<(Box<StoredMessage>, Option<String>)>),
    Step {
        agent: Box<AgentRecord>,
        messages: Vec<StoredMessage>,
    },
    Passages {
        agent: Box<AgentRecord>,
        passages: Vec<Passage>,
    },
    /// Passages of a search, best first, with their cosine similarity.
    Scored {
        agent: Box<AgentRecord>,
        results: Vec<(Passage, f32)>,
    },
    Counts(Counts),
    InContext {
        messages: Vec<crate::context::SharedMessage>,
        summary: Option<String>,
        summary_content: Option<String>,
        counts: Counts,
    },
    /// Whether nothing is left to reclaim.
    Reclaimed {
        done: bool,
    },
    Run(Option<Box<RunRecord>>),
    Runs(Vec<RunRecord>),
    RunMessages {
        run: Option<Box<RunRecord>>,
        messages: Vec<StoredMessage>,
    },
    Deleted(bool),
    /// A conversation, with the ids of the messages in its context window.
    Conversation {
        record: Box<ConversationRecord>,
        in_context: Vec<String>,
    },
    Conversations(Vec<ConversationRecord>),
    /// Names of the files an operation closed, and the agent after it.
    FilesClosed {
        agent: Box<AgentRecord>,
        closed: Vec<String>,
    },
    Done,
}

/// The agent actor, with the archival indexes and the context windows of
/// the agents active here, and the boot id of this process (the owner of
/// the runs it begins).
#[derive(Default)]
pub struct AgentActor {
    indexes: archive::ArchivalIndexes,
    windows: window::RecentWindows,
    boot_id: String,
    live: std::sync::Arc<crate::model::LiveRuns>,
    planted: crate::planted::Planted,
}

impl AgentActor {
    /// The agent actor of a process whose boot is `boot_id` and whose live
    /// runs are `live`.
    pub fn new(
        boot_id: String,
        live: std::sync::Arc<crate::model::LiveRuns>,
        planted: crate::planted::Planted,
    ) -> AgentActor {
        assert!(!boot_id.is_empty(), "a process has a boot id");
        AgentActor { boot_id, live, planted, ..AgentActor::default() }
    }
}

impl Actor for AgentActor {
    type State = AgentActorState;
    type Message = AgentCommand;
    type Reply = AgentReply;

    /// Every command but those that create, import or reclaim needs an
    /// agent the client may see (each answers not found without one), so
    /// only those may activate an actor that holds none: asking for an id
    /// no agent has, or had, claims no placement and starts no activation.
    fn screens_activation(&self, command: &AgentCommand) -> bool {
        !matches!(
            command,
            AgentCommand::Create(_)
                | AgentCommand::ImportBegin(_)
                | AgentCommand::ImportBatch { .. }
                | AgentCommand::ImportConversation(_)
                | AgentCommand::ImportFinish { .. }
                | AgentCommand::AbandonImport
                | AgentCommand::Reclaim { .. }
        )
    }

    fn admit_activation(
        &self,
        actor_id: &kelpie_core::ActorId,
        stored: Option<&AgentActorState>,
    ) -> Result<()> {
        match stored {
            Some(state) if state.holds_visible_agent() => Ok(()),
            _ => Err(Error::NotFound { kind: "agent", id: actor_id.id().to_string() }),
        }
    }

    async fn on_deactivate(&self, ctx: &mut Ctx<'_>) -> Result<()> {
        self.indexes.forget(ctx.actor_id);
        self.windows.forget(ctx.actor_id);
        Ok(())
    }

    async fn handle(&self, ctx: &mut Ctx<'_>, command: AgentCommand) -> Result<AgentReply> {
        let (indexes, windows, boot_id) = (&self.indexes, &self.windows, self.boot_id.as_str());
        let skip_recovery = self.planted.has(crate::planted::PlantedBug::SkipStaleRunRecovery);
        if !ctx.state.open_runs.is_empty() && !skip_recovery {
            let recovered = runs::recover_stale(ctx, boot_id, &self.live).await?;
            if recovered > 0 {
                tracing::info!(agent_id = ctx.actor_id.id(), recovered, "ended runs no live task runs");
            }
        }
        match command {
            AgentCommand::Create(record) => create(ctx, *record),
            AgentCommand::ImportBegin(record) => import_begin(ctx, *record),
            AgentCommand::ImportBatch { messages, passages, conversation_messages } => {
                import_batch(ctx, (indexes, windows), messages, passages).await?;
                conversations::import_messages(ctx, windows, conversation_messages).await?;
                Ok(AgentReply::Done)
            }
            AgentCommand::ImportConversation(record) => {
                check_importing(ctx)?;
                conversations::insert(ctx, *record)?;
                Ok(AgentReply::Done)
            }
            AgentCommand::ImportFinish { name, tool_ids, drop_messages } => {
                import_finish(ctx, name, tool_ids, drop_messages).await
            }
            AgentCommand::AbandonImport => abandon_import(ctx, indexes).await,
            AgentCommand::Get => Ok(AgentReply::Agent(Box::new(agent(ctx)?))),
            AgentCommand::Counts => {
                agent(ctx)?;
                Ok(AgentReply::Counts(store::ensure_counted(ctx).await?))
            }
            AgentCommand::Update(patch) => update(ctx, *patch),
            AgentCommand::SetFolder { folder_id, folder } => set_folder(ctx, &folder_id, folder.map(|f| *f)),
            AgentCommand::EditMessage { id, edit } => {
                Ok(AgentReply::Messages(vec![store::edit_message(ctx, &id, |body| edit.apply(body)).await?]))
            }
            AgentCommand::GetMessage { id } => {
                let found = store::get_message(ctx, &id).await?;
                Ok(AgentReply::Message(
                    found.map(|(message, conversation_id)| (Box::new(message), conversation_id)),
                ))
            }
            AgentCommand::MessagesBetween { from, to, descending, limit } => {
                Ok(AgentReply::Messages(store::messages_between(ctx, (from, to), descending, limit).await?))
            }
            AgentCommand::SearchMessages { query, limit, conversation } => {
                let history = History::of(ctx, conversation.as_deref()).await?;
                Ok(AgentReply::Messages(
                    store::search_messages(ctx, &history, &query, limit, u64::MAX).await?,
                ))
            }
            AgentCommand::FileOps(ops) => {
                let closed = file_ops(ctx, ops)?;
                Ok(AgentReply::FilesClosed { agent: Box::new(agent(ctx)?), closed })
            }
            AgentCommand::Delete => {
                windows.forget(ctx.actor_id);
                delete(ctx, indexes).await
            }
            AgentCommand::UpdateBlock { label, patch } => update_block(ctx, &label, patch),
            AgentCommand::AttachBlock(block) => edit_memory(ctx, |memory| memory.attach(*block).map(drop)),
            AgentCommand::DetachBlock { id } => edit_memory(ctx, |memory| memory.detach(&id).map(drop)),
            AgentCommand::SyncBlock(block) => edit_memory(ctx, |memory| memory.sync(*block).map(drop)),
            AgentCommand::MessagePage(page) => {
                Ok(AgentReply::Messages(store::message_page(ctx, &History::Agent, &page).await?))
            }
            AgentCommand::ResetMessages => reset_messages(ctx).await,
            AgentCommand::InContext { count_max, conversation } => {
                in_context(ctx, windows, conversation.as_deref(), count_max).await
            }
            AgentCommand::Compact { start_seq, summary, content, conversation } => {
                let mut history = History::of(ctx, conversation.as_deref()).await?;
                let message =
                    store::compact(ctx, (windows, &mut history), start_seq, summary, content).await?;
                Ok(AgentReply::Messages(vec![message]))
            }
            command @ (AgentCommand::CreateConversation(_)
            | AgentCommand::ForkConversation { .. }
            | AgentCommand::GetConversation { .. }
            | AgentCommand::UpdateConversation { .. }
            | AgentCommand::DeleteConversation { .. }
            | AgentCommand::ConversationPage { .. }
            | AgentCommand::ConversationMessages { .. }) => conversation_command(ctx, windows, command).await,
            AgentCommand::CommitStep(step) => commit_step(ctx, (indexes, windows), boot_id, *step).await,
            AgentCommand::CommitApproval(input) => {
                commit_approval(ctx, (indexes, windows), boot_id, *input).await
            }
            AgentCommand::InsertPassage { text, tags, embedding } => {
                let passage = store::insert_passage(ctx, indexes, text, tags, embedding).await?;
                Ok(AgentReply::Passages { agent: Box::new(agent(ctx)?), passages: vec![passage] })
            }
            AgentCommand::PassagePage(page) => {
                let passages = store::passage_page(ctx, &page).await?;
                Ok(AgentReply::Passages { agent: Box::new(agent(ctx)?), passages })
            }
            AgentCommand::SearchPassages { query_embedding, top_k, filter } => {
                let results = indexes.search(ctx, &query_embedding, top_k, &filter).await?;
                Ok(AgentReply::Scored { agent: Box::new(agent(ctx)?), results })
            }
            AgentCommand::DeletePassage { id } => {
                store::delete_passage(ctx, indexes, &id).await?;
                Ok(AgentReply::Done)
            }
            AgentCommand::Reclaim { keys_max } => {
                Ok(AgentReply::Reclaimed { done: store::reclaim_batch(ctx, keys_max).await? })
            }
            AgentCommand::StartRun(start) => {
                agent(ctx)?;
                Ok(AgentReply::Run(Some(Box::new(runs::begin(ctx, boot_id, &start).await?))))
            }
            AgentCommand::EndRun { start, end } => {
                agent(ctx)?;
                Ok(AgentReply::Run(Some(Box::new(runs::end(ctx, boot_id, &start, end).await?))))
            }
            AgentCommand::GetRun { run_id } => {
                Ok(AgentReply::Run(runs::get(ctx, &run_id).await?.map(Box::new)))
            }
            AgentCommand::RunPage { page, filter } => {
                Ok(AgentReply::Runs(runs::page(ctx, &page, &filter).await?))
            }
            AgentCommand::RunMessages { run_id } => match runs::get(ctx, &run_id).await? {
                Some(run) => {
                    let messages = runs::messages(ctx, &run).await?;
                    Ok(AgentReply::RunMessages { run: Some(Box::new(run)), messages })
                }
                None => Ok(AgentReply::RunMessages { run: None, messages: Vec::new() }),
            },
            AgentCommand::DeleteRun { run_id } => Ok(AgentReply::Deleted(runs::delete(ctx, &run_id).await?)),
            AgentCommand::UpdateStep { run_id, step_id, patch } => {
                Ok(AgentReply::Run(runs::update_step(ctx, &run_id, &step_id, patch).await?.map(Box::new)))
            }
        }
    }
}

/// Creates the agent; if it exists (a repeated idempotency key: random
/// ids never collide), answers the existing agent unchanged.
fn create(ctx: &mut Ctx<'_>, record: AgentRecord) -> Result<AgentReply> {
    if ctx.state.importing {
        return Err(Error::Internal(format!("agent {} is being imported", record.id)));
    }
    if let Some(existing) = &ctx.state.agent {
        return Ok(AgentReply::Agent(Box::new(existing.clone())));
    }
    assert_eq!(record.id, ctx.actor_id.id(), "an agent record lives in its own actor");
    ctx.state.begin_agent(record.clone());
    Ok(AgentReply::Agent(Box::new(record)))
}

fn check_importing(ctx: &Ctx<'_>) -> Result<()> {
    match ctx.state.importing && ctx.state.agent.is_some() {
        true => Ok(()),
        false => Err(Error::Internal(format!("agent {} is not being imported", ctx.actor_id.id()))),
    }
}

fn import_begin(ctx: &mut Ctx<'_>, record: AgentRecord) -> Result<AgentReply> {
    if ctx.state.agent.is_some() {
        return Err(Error::Internal(format!("imported agent {} already exists", record.id)));
    }
    assert_eq!(record.id, ctx.actor_id.id(), "an agent record lives in its own actor");
    ctx.state.begin_agent(record);
    ctx.state.importing = true;
    Ok(AgentReply::Done)
}

/// Messages and passages keep their order and times; they get sequence
/// numbers here.
async fn import_batch(
    ctx: &mut Ctx<'_>,
    (indexes, windows): (&archive::ArchivalIndexes, &window::RecentWindows),
    messages: Vec<StoredMessage>,
    passages: Vec<Passage>,
) -> Result<AgentReply> {
    if !ctx.state.importing {
        return Err(Error::Internal(format!("agent {} is not being imported", ctx.actor_id.id())));
    }
    for message in messages {
        store::put_message(ctx, windows, &mut History::Agent, message).await?;
    }
    for passage in &passages {
        store::put_passage(ctx, indexes, passage).await?;
    }
    Ok(AgentReply::Done)
}

async fn import_finish(
    ctx: &mut Ctx<'_>,
    name: String,
    tool_ids: Vec<String>,
    drop_messages: bool,
) -> Result<AgentReply> {
    // Finished already (a decided import rolled forward again after a
    // crash): the agent as it is; gone since (deleted): not found.
    if !ctx.state.importing {
        return Ok(AgentReply::Agent(Box::new(agent(ctx)?)));
    }
    if drop_messages {
        store::end_message_generation(ctx).await?;
    }
    ctx.state.importing = false;
    let agent = agent_mut(ctx)?;
    agent.name = name;
    agent.tool_ids = tool_ids;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

async fn abandon_import(ctx: &mut Ctx<'_>, indexes: &archive::ArchivalIndexes) -> Result<AgentReply> {
    if ctx.state.importing {
        store::end_message_generation(ctx).await?;
        store::end_passage_generation(ctx, indexes).await?;
        ctx.state.agent = None;
        ctx.state.importing = false;
    }
    Ok(AgentReply::Done)
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
    if let Some((identity_id, linked)) = patch.identity {
        agent.identity_ids.retain(|id| *id != identity_id);
        if linked {
            agent.identity_ids.push(identity_id);
        }
    }
    if let Some(tool_ids) = patch.tool_ids {
        agent.tool_ids = tool_ids;
    }
    if patch.enable_sleeptime.is_some() {
        agent.enable_sleeptime = patch.enable_sleeptime;
    }
    if let Some(group) = patch.managed_group {
        agent.managed_group = group;
    }
    if let Some(secrets) = patch.secrets {
        agent.secrets = secrets;
    }
    if patch.compaction.is_some() {
        agent.compaction = patch.compaction;
    }
    if let Some(rules) = patch.tool_rules {
        agent.tool_rules = rules;
    }
    let (max_open, window_chars) = patch.file_limits;
    if max_open.is_some() {
        agent.max_files_open = max_open;
        let (max_open, _) = agent.file_limits();
        let excess = agent.open_files.len().saturating_sub(max_open as usize);
        agent.open_files.drain(..excess);
    }
    if window_chars.is_some() {
        agent.file_window_chars = window_chars;
    }
    check_fits(agent)?;
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

fn set_folder(
    ctx: &mut Ctx<'_>,
    folder_id: &str,
    folder: Option<crate::files::AgentFolder>,
) -> Result<AgentReply> {
    let now = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx)?;
    let file_tools: Vec<&str> = kelpie_tools::builtin::FILE_TOOLS
        .iter()
        .filter_map(|name| kelpie_tools::builtin_tool(name).map(|tool| tool.id))
        .collect();
    match folder {
        Some(folder) => {
            match agent.folders.iter_mut().find(|f| f.id == folder_id) {
                Some(held) => *held = folder,
                None => agent.folders.push(folder),
            }
            for id in &file_tools {
                if !agent.tool_ids.iter().any(|held| held == id) {
                    agent.tool_ids.push(id.to_string());
                }
            }
        }
        None => {
            agent.folders.retain(|f| f.id != folder_id);
            agent.open_files.retain(|f| f.folder_id != folder_id);
            if agent.folders.is_empty() {
                agent.tool_ids.retain(|id| !file_tools.contains(&id.as_str()));
            }
        }
    }
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

/// Applies `ops` to the open files; the names of the files closed.
fn file_ops(ctx: &mut Ctx<'_>, ops: Vec<crate::files::FileOp>) -> Result<Vec<String>> {
    let agent = agent_mut(ctx)?;
    let (max_open, _) = agent.file_limits();
    let mut closed = Vec::new();
    for op in ops {
        // A file of a folder no longer attached is not opened.
        if let crate::files::FileOp::Open(file) = &op {
            if !agent.folders.iter().any(|folder| folder.id == file.folder_id) {
                continue;
            }
        }
        closed.extend(crate::files::apply(&mut agent.open_files, op, max_open));
    }
    closed.retain(|name| !agent.open_files.iter().any(|file| &file.file_name == name));
    Ok(closed)
}

/// Gone at once: the agent is not found from now on and its id is free;
/// its messages and passages are left to [`AgentCommand::Reclaim`].
async fn delete(ctx: &mut Ctx<'_>, indexes: &archive::ArchivalIndexes) -> Result<AgentReply> {
    agent(ctx)?;
    store::end_message_generation(ctx).await?;
    store::end_passage_generation(ctx, indexes).await?;
    store::end_conversation_generation(ctx);
    ctx.state.agent = None;
    Ok(AgentReply::Done)
}

async fn reset_messages(ctx: &mut Ctx<'_>) -> Result<AgentReply> {
    agent(ctx)?;
    store::end_message_generation(ctx).await?;
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
    check_fits(&AgentRecord { memory: memory.clone(), ..agent.clone() })?;
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
    check_fits(&AgentRecord { memory: memory.clone(), ..agent.clone() })?;
    agent.memory = memory;
    agent.updated_ms = now;
    Ok(AgentReply::Agent(Box::new(agent.clone())))
}

/// Refuses a system prompt and core memory that would leave no room in the
/// context window for a conversation.
fn check_fits(agent: &AgentRecord) -> Result<()> {
    crate::context::check_fixed_fits(agent).map_err(|reason| Error::validation("context window", reason))
}

/// Calls whose results a commit stores, with what was decided for them
/// outside the actor.
struct ToolResults<'a> {
    calls: &'a [ToolCall],
    external: &'a [ExternalResult],
    embeddings: &'a [TextEmbedding],
    archive_hits: &'a [crate::model::ArchiveHits],
}

/// Stores a result for each call: the one decided outside (`external`),
/// else the built-in tool's, run here.
async fn run_calls(
    ctx: &mut Ctx<'_>,
    (indexes, windows, history): (&archive::ArchivalIndexes, &window::RecentWindows, &mut History),
    ids: (&str, &str),
    results: ToolResults<'_>,
    first_seq: u64,
    messages: &mut Vec<StoredMessage>,
) -> Result<()> {
    for call in results.calls {
        let (result, ok, stdout, stderr) =
            match results.external.iter().find(|done| done.tool_call_id == call.id) {
                Some(done) => (done.result.clone(), done.ok, done.stdout.clone(), done.stderr.clone()),
                None => {
                    let (result, ok) = builtin::run_builtin(
                        ctx,
                        indexes,
                        call,
                        (results.embeddings, results.archive_hits),
                        (first_seq, &*history),
                    )
                    .await?;
                    (result, ok, None, None)
                }
            };
        let (tool_call_id, name) = (call.id.clone(), call.name.clone());
        let body = MessageBody::Tool { tool_call_id, name, result, ok, stdout, stderr };
        messages.push(store::append_message(ctx, (windows, &mut *history), ids, body, None).await?);
    }
    Ok(())
}

/// Stores the client's answer to the pending approval request, then the
/// held calls' results.
async fn commit_approval(
    ctx: &mut Ctx<'_>,
    (indexes, windows): (&archive::ArchivalIndexes, &window::RecentWindows),
    boot_id: &str,
    input: ApprovalInput,
) -> Result<AgentReply> {
    agent(ctx)?;
    let mut history = History::of(ctx, input.run.conversation_id.as_deref()).await?;
    runs::begin(ctx, boot_id, &input.run).await?;
    let first_seq = ctx.state.next_seq;
    let ids = (input.run.run_id.as_str(), input.step_id.as_str());
    let body = MessageBody::ApprovalResponse { decisions: input.decisions.clone() };
    let mut messages = vec![store::append_message(ctx, (windows, &mut history), ids, body, None).await?];
    let results = ToolResults {
        calls: &input.calls,
        external: &input.external,
        embeddings: &input.embeddings,
        archive_hits: &input.archive_hits,
    };
    run_calls(ctx, (indexes, windows, &mut history), ids, results, first_seq, &mut messages).await?;
    history.save(ctx)?;
    let step = StepRecord {
        id: input.step_id.clone(),
        created_ms: ctx.env.clock.wall_ms(),
        model: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        message_seqs: messages.iter().map(|m| m.seq).collect(),
        timing: None,
        feedback: None,
        tags: Vec::new(),
        tid: None,
    };
    runs::record_step(ctx, boot_id, &input.run, step, None).await?;
    file_ops(ctx, input.file_ops)?;
    let now = ctx.env.clock.wall_ms();
    agent_mut(ctx)?.updated_ms = now;
    Ok(AgentReply::Step { agent: Box::new(agent(ctx)?), messages })
}

async fn commit_step(
    ctx: &mut Ctx<'_>,
    (indexes, windows): (&archive::ArchivalIndexes, &window::RecentWindows),
    boot_id: &str,
    step: StepInput,
) -> Result<AgentReply> {
    agent(ctx)?;
    // A conversation deleted while its turn ran takes no more steps.
    let mut history = History::of(ctx, step.run.conversation_id.as_deref()).await?;
    // Refused before anything is stored when the run already ended.
    runs::begin(ctx, boot_id, &step.run).await?;
    let first_seq = ctx.state.next_seq;
    let ids = (step.run.run_id.as_str(), step.step_id.as_str());
    let mut messages = Vec::new();
    for content in &step.user_messages {
        let body = MessageBody::User { content: content.clone() };
        messages.push(store::append_message(ctx, (windows, &mut history), ids, body, None).await?);
    }
    if let History::Conversation(record) = &mut history {
        if !step.user_messages.is_empty() {
            record.last_message_ms = Some(ctx.env.clock.wall_ms());
        }
    }
    let assistant_id = Some(step.assistant_message_id.clone());
    let mut assistant = step.assistant.clone();
    if let MessageBody::Assistant { awaiting_approval, .. } = &mut assistant {
        *awaiting_approval = step.hold_calls;
    }
    messages.push(store::append_message(ctx, (windows, &mut history), ids, assistant, assistant_id).await?);
    let MessageBody::Assistant { tool_calls, .. } = &step.assistant else {
        return Err(Error::Internal("a step's answer must be an assistant message".into()));
    };
    if !step.hold_calls {
        let calls = ToolResults {
            calls: tool_calls,
            external: &step.external,
            embeddings: &step.embeddings,
            archive_hits: &step.archive_hits,
        };
        run_calls(ctx, (indexes, windows, &mut history), ids, calls, first_seq, &mut messages).await?;
    }
    history.save(ctx)?;
    let record = StepRecord {
        id: step.step_id.clone(),
        created_ms: ctx.env.clock.wall_ms(),
        model: step.model.clone(),
        prompt_tokens: step.prompt_tokens,
        completion_tokens: step.completion_tokens,
        message_seqs: messages.iter().map(|m| m.seq).collect(),
        timing: step.timing,
        feedback: None,
        tags: Vec::new(),
        tid: None,
    };
    runs::record_step(ctx, boot_id, &step.run, record, step.end.clone()).await?;
    if !step.hold_calls {
        file_ops(ctx, step.file_ops)?;
    }
    let now = ctx.env.clock.wall_ms();
    agent_mut(ctx)?.updated_ms = now;
    Ok(AgentReply::Step { agent: Box::new(agent(ctx)?), messages })
}

/// The context window of the agent's own history or of a conversation.
async fn in_context(
    ctx: &mut Ctx<'_>,
    windows: &window::RecentWindows,
    conversation: Option<&str>,
    count_max: usize,
) -> Result<AgentReply> {
    let history = History::of(ctx, conversation).await?;
    let messages = windows.recent(ctx, &history, count_max).await?;
    let mut counts = store::ensure_counted(ctx).await?;
    counts.messages = history.message_count(ctx);
    let context = history.context(ctx).clone();
    Ok(AgentReply::InContext {
        messages,
        summary: context.summary,
        summary_content: context.summary_content,
        counts,
    })
}

/// The commands on the agent's conversations.
async fn conversation_command(
    ctx: &mut Ctx<'_>,
    windows: &window::RecentWindows,
    command: AgentCommand,
) -> Result<AgentReply> {
    let conversation = |record: ConversationRecord, in_context: Vec<String>| AgentReply::Conversation {
        record: Box::new(record),
        in_context,
    };
    match command {
        AgentCommand::CreateConversation(record) => {
            Ok(conversation(conversations::create(ctx, *record)?, Vec::new()))
        }
        AgentCommand::ForkConversation { record, source, count_max } => {
            let source = History::of(ctx, source.as_deref()).await?;
            let recent = windows.recent(ctx, &source, count_max).await?;
            let source_context = source.context(ctx).clone();
            let ids = recent.iter().map(|message| message.id.clone()).collect();
            let record = conversations::fork(ctx, windows, recent, source_context, *record).await?;
            Ok(conversation(record, ids))
        }
        AgentCommand::GetConversation { id, count_max } => {
            let history = History::of(ctx, Some(&id)).await?;
            let ids = windows.recent(ctx, &history, count_max).await?.iter().map(|m| m.id.clone()).collect();
            match history {
                History::Conversation(record) => Ok(conversation(*record, ids)),
                History::Agent => Err(Error::Internal("a conversation's history".into())),
            }
        }
        AgentCommand::UpdateConversation { id, patch } => {
            Ok(conversation(conversations::update(ctx, &id, patch).await?, Vec::new()))
        }
        AgentCommand::DeleteConversation { id } => {
            let record = conversations::delete(ctx, &id).await?;
            windows.forget_conversation(ctx.actor_id, record.slot);
            Ok(conversation(record, Vec::new()))
        }
        AgentCommand::ConversationPage { after, filter, limit, descending } => {
            let found = conversations::page(ctx, after.as_deref(), &filter, (limit, descending)).await?;
            Ok(AgentReply::Conversations(found))
        }
        AgentCommand::ConversationMessages { id, page } => {
            Ok(AgentReply::Messages(conversations::message_page(ctx, &id, &page).await?))
        }
        _ => Err(Error::Internal("not a conversation command".into())),
    }
}
