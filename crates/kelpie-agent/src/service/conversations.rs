//! Conversations (`/v1/conversations`): more message histories of one
//! agent, each with its own context window, all sharing the agent's
//! memory blocks, tools and archival memory. They live in their agent's
//! actor (`actors::agent::conversations`), so a turn in a conversation
//! commits each step in the agent's actor as any turn does; a turn is the
//! agent's turn path with the conversation in its run.
//!
//! A conversation id carries the first 64 bits of its agent's id
//! (`ids::new_conversation_id`), so a route that names only the
//! conversation finds the agent through the directory's prefix lookup.
//! `default` (with an agent id), or an agent id, names the agent's own
//! history, as Letta's agent-direct mode.

use std::sync::Arc;

use kelpie_core::Env;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::agents::Agents;
use super::directory::AgentDirectory;
use super::reclaim::Reclaimer;
use super::runs::{RunQuery, Runs};
use super::turn::Turns;
use crate::actors::agent::{
    AgentCommand, AgentReply, ContextState, ConversationFilter, ConversationPatch, ConversationRecord,
};
use crate::actors::reclaim::PendingKind;
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{conversation_agent_prefix, new_conversation_id, rfc3339_micros};
use crate::limits::{AGENT_CONVERSATIONS_COUNT_MAX, PROMPT_MESSAGES_COUNT_MAX};
use crate::model::{RunRecord, RunStatus};
use crate::page::Page;
use crate::requests::SummarizeRequest;

/// Longest conversation summary (Letta's `summary`), in bytes.
pub const CONVERSATION_SUMMARY_BYTES_MAX: usize = 10_000;
/// Longest model handle a conversation names, in bytes.
pub const CONVERSATION_MODEL_BYTES_MAX: usize = 256;
/// Largest `model_settings` a conversation keeps, encoded, in bytes.
pub const CONVERSATION_MODEL_SETTINGS_BYTES_MAX: usize = 16 * 1024;
/// Most agents a conversation list without `agent_id` looks through.
pub const CONVERSATION_LIST_AGENTS_COUNT_MAX: usize = 1_000;

/// The history a conversation route names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The agent's own history (`default` with `agent_id`, or an agent id).
    Agent(String),
    Conversation(String),
}

impl Target {
    /// What `conversation_id` (a path segment) names, with the `agent_id`
    /// the request gave for `default`.
    pub fn parse(conversation_id: &str, agent_id: Option<&str>) -> ServiceResult<Target> {
        match conversation_id {
            "default" => match agent_id {
                Some(agent_id) => Ok(Target::Agent(agent_id.to_string())),
                None => Err(ServiceError::Invalid(
                    "conversation_id \"default\" names an agent's own history: give agent_id".into(),
                )),
            },
            id if id.starts_with("agent-") => Ok(Target::Agent(id.to_string())),
            id if id.starts_with("conv-") => Ok(Target::Conversation(id.to_string())),
            other => Err(ServiceError::Invalid(format!(
                "conversation_id {other:?} is neither \"default\", a conversation id (conv-<uuid>) nor an agent id"
            ))),
        }
    }
}

/// What a create or modify sets; `None` keeps (modify) or leaves empty.
#[derive(Debug, Clone, Default)]
pub struct ConversationInput {
    pub summary: Option<String>,
    pub model: Option<String>,
    pub model_settings: Option<Value>,
    /// Letta's `last_message_at`, in milliseconds (modify only).
    pub last_message_ms: Option<u64>,
}

impl ConversationInput {
    fn check(&self) -> ServiceResult<()> {
        if let Some(summary) = &self.summary {
            if summary.len() > CONVERSATION_SUMMARY_BYTES_MAX {
                return Err(ServiceError::Invalid(format!(
                    "summary is {} bytes, over CONVERSATION_SUMMARY_BYTES_MAX = {CONVERSATION_SUMMARY_BYTES_MAX}",
                    summary.len()
                )));
            }
        }
        if let Some(model) = &self.model {
            let well_formed = model
                .split_once('/')
                .is_some_and(|(provider, name)| !provider.is_empty() && !name.is_empty());
            if !well_formed {
                return Err(ServiceError::Invalid(format!(
                    "model {model:?}: the model handle should be in the format provider/model-name"
                )));
            }
            if model.len() > CONVERSATION_MODEL_BYTES_MAX {
                return Err(ServiceError::Invalid(format!(
                    "model is {} bytes, over CONVERSATION_MODEL_BYTES_MAX = {CONVERSATION_MODEL_BYTES_MAX}",
                    model.len()
                )));
            }
        }
        if let Some(settings) = &self.model_settings {
            if !settings.is_object() {
                return Err(ServiceError::Invalid("model_settings must be an object".into()));
            }
            crate::model_settings::check(settings).map_err(ServiceError::Invalid)?;
            let bytes = settings.to_string().len();
            if bytes > CONVERSATION_MODEL_SETTINGS_BYTES_MAX {
                return Err(ServiceError::Invalid(format!(
                    "model_settings is {bytes} bytes, over CONVERSATION_MODEL_SETTINGS_BYTES_MAX = \
                     {CONVERSATION_MODEL_SETTINGS_BYTES_MAX}"
                )));
            }
        }
        Ok(())
    }
}

/// What `GET /v1/conversations/` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationOrder {
    CreatedAt,
    LastMessageAt,
    LastRunCompletion,
}

impl ConversationOrder {
    pub fn parse(name: &str) -> ServiceResult<ConversationOrder> {
        match name {
            "created_at" => Ok(ConversationOrder::CreatedAt),
            "last_message_at" => Ok(ConversationOrder::LastMessageAt),
            "last_run_completion" => Ok(ConversationOrder::LastRunCompletion),
            other => Err(ServiceError::Invalid(format!(
                "order_by {other:?} is none of created_at, last_message_at, last_run_completion"
            ))),
        }
    }

    /// The time a conversation is ordered by (`None` sorts last).
    fn time_of(self, record: &ConversationRecord) -> Option<u64> {
        match self {
            ConversationOrder::CreatedAt => Some(record.created_ms),
            ConversationOrder::LastMessageAt => record.last_message_ms,
            ConversationOrder::LastRunCompletion => record.last_run_completion_ms,
        }
    }
}

/// `GET /v1/conversations/`.
#[derive(Debug, Clone)]
pub struct ConversationQuery {
    pub agent_id: Option<String>,
    pub after: Option<String>,
    pub limit: usize,
    pub summary_search: Option<String>,
    pub descending: bool,
    pub order_by: ConversationOrder,
}

/// Letta's `Conversation`.
pub fn conversation_json(record: &ConversationRecord, in_context: &[String]) -> Value {
    json!({
        "id": record.id, "agent_id": record.agent_id, "summary": record.summary,
        "in_context_message_ids": in_context, "isolated_block_ids": [],
        "model": record.model, "model_settings": record.model_settings,
        "last_message_at": record.last_message_ms.map(rfc3339_micros),
        "created_at": rfc3339_micros(record.created_ms), "updated_at": rfc3339_micros(record.updated_ms),
        "created_by_id": null, "last_updated_by_id": null,
    })
}

pub struct Conversations {
    actors: Arc<AgentActors>,
    directory: Arc<AgentDirectory>,
    agents: Arc<Agents>,
    turns: Arc<Turns>,
    runs: Arc<Runs>,
    reclaimer: Arc<Reclaimer>,
    env: Env,
}

/// A conversation found, with its agent and in-context message ids.
pub struct Located {
    pub agent_id: String,
    pub record: ConversationRecord,
    pub in_context: Vec<String>,
}

impl Conversations {
    pub(crate) fn new(
        (actors, directory, agents): (Arc<AgentActors>, Arc<AgentDirectory>, Arc<Agents>),
        (turns, runs): (Arc<Turns>, Arc<Runs>),
        reclaimer: Arc<Reclaimer>,
        env: Env,
    ) -> Self {
        Conversations { actors, directory, agents, turns, runs, reclaimer, env }
    }

    fn new_record(&self, agent_id: &str, input: ConversationInput) -> ConversationRecord {
        let now = self.env.clock.wall_ms();
        ConversationRecord {
            id: new_conversation_id(agent_id, self.env.rng.as_ref()),
            agent_id: agent_id.to_string(),
            slot: 0,
            created_ms: now,
            updated_ms: now,
            summary: input.summary,
            model: input.model,
            model_settings: input.model_settings,
            last_message_ms: None,
            last_run_completion_ms: None,
            context: ContextState::default(),
            messages: 0,
        }
    }

    async fn conversation_reply(&self, agent_id: &str, command: AgentCommand) -> ServiceResult<Value> {
        match self.actors.invoke(agent_id, command).await? {
            AgentReply::Conversation { record, in_context } => Ok(conversation_json(&record, &in_context)),
            _ => Err(unexpected("conversation")),
        }
    }

    /// `POST /v1/conversations/?agent_id=`: a new, empty conversation.
    pub async fn create(&self, agent_id: &str, input: ConversationInput) -> ServiceResult<Value> {
        input.check()?;
        let record = self.new_record(agent_id, input);
        self.conversation_reply(agent_id, AgentCommand::CreateConversation(Box::new(record))).await
    }

    /// Conversation `id`, its agent and its in-context message ids.
    pub async fn locate(&self, id: &str) -> ServiceResult<Located> {
        let not_found = || ServiceError::ConversationNotFound(id.to_string());
        let prefix = conversation_agent_prefix(id).ok_or_else(not_found)?;
        for agent_id in self.directory.find_prefix(&prefix).await? {
            let command =
                AgentCommand::GetConversation { id: id.to_string(), count_max: PROMPT_MESSAGES_COUNT_MAX };
            match self.actors.invoke(&agent_id, command).await {
                Ok(AgentReply::Conversation { record, in_context }) => {
                    return Ok(Located { agent_id, record: *record, in_context })
                }
                // Another agent with the same prefix, or deleted since.
                Err(ServiceError::ConversationNotFound(_) | ServiceError::AgentNotFound(_)) => {}
                Ok(_) => return Err(unexpected("get conversation")),
                Err(err) => return Err(err),
            }
        }
        Err(not_found())
    }

    /// The agent conversation `id` belongs to, as far as the directory
    /// tells, without activating any agent when one agent's id has the
    /// conversation's prefix; when several have it, the one holding it.
    /// `None` when no agent holds it (or the id is malformed).
    pub async fn agent_of(&self, id: &str) -> ServiceResult<Option<String>> {
        let Some(prefix) = conversation_agent_prefix(id) else { return Ok(None) };
        let mut candidates = self.directory.find_prefix(&prefix).await?;
        if candidates.len() <= 1 {
            return Ok(candidates.pop());
        }
        match self.locate(id).await {
            Ok(found) => Ok(Some(found.agent_id)),
            Err(ServiceError::ConversationNotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The agent and conversation (`None`: the agent's own history) that
    /// `target` names; an unknown agent or conversation is not found.
    pub async fn resolve(&self, target: &Target) -> ServiceResult<(String, Option<String>)> {
        match target {
            Target::Agent(agent_id) => {
                self.actors.record(agent_id).await?;
                Ok((agent_id.clone(), None))
            }
            Target::Conversation(id) => Ok((self.locate(id).await?.agent_id, Some(id.clone()))),
        }
    }

    pub async fn get(&self, id: &str) -> ServiceResult<Value> {
        let found = self.locate(id).await?;
        Ok(conversation_json(&found.record, &found.in_context))
    }

    /// `PATCH /v1/conversations/{id}`.
    pub async fn update(&self, id: &str, input: ConversationInput) -> ServiceResult<Value> {
        input.check()?;
        let agent_id = self.locate(id).await?.agent_id;
        let patch = ConversationPatch {
            summary: input.summary,
            model: input.model,
            model_settings: input.model_settings,
            last_message_ms: input.last_message_ms,
        };
        self.conversation_reply(&agent_id, AgentCommand::UpdateConversation { id: id.to_string(), patch })
            .await
    }

    /// `DELETE /v1/conversations/{id}`: gone at once; its messages are
    /// reclaimed in the background.
    pub async fn delete(&self, id: &str) -> ServiceResult<()> {
        let agent_id = self.locate(id).await?.agent_id;
        self.reclaimer.note(&agent_id, PendingKind::Ended).await?;
        self.conversation_reply(&agent_id, AgentCommand::DeleteConversation { id: id.to_string() }).await?;
        Ok(())
    }

    /// `POST /v1/conversations/{id}/fork`: a new conversation of the same
    /// agent holding the source's in-context messages (same ids) and its
    /// compaction summary; a conversation's model is kept.
    pub async fn fork(&self, target: &Target) -> ServiceResult<Value> {
        let (agent_id, source, input) = match target {
            Target::Agent(agent_id) => {
                self.actors.record(agent_id).await?;
                (agent_id.clone(), None, ConversationInput::default())
            }
            Target::Conversation(id) => {
                let found = self.locate(id).await?;
                let input = ConversationInput {
                    model: found.record.model,
                    model_settings: found.record.model_settings,
                    ..ConversationInput::default()
                };
                (found.agent_id, Some(id.clone()), input)
            }
        };
        let record = Box::new(self.new_record(&agent_id, input));
        let command = AgentCommand::ForkConversation { record, source, count_max: PROMPT_MESSAGES_COUNT_MAX };
        self.conversation_reply(&agent_id, command).await
    }

    /// `GET /v1/conversations/{id}/messages`.
    pub async fn messages(&self, target: &Target, page: &Page) -> ServiceResult<Vec<Value>> {
        let (agent_id, conversation) = self.resolve(target).await?;
        self.agents.list_history_messages((&agent_id, conversation.as_deref()), page).await
    }

    /// `POST /v1/conversations/{id}/messages/preview-raw-payload`.
    pub async fn preview_payload(&self, target: &Target, texts: &[String]) -> ServiceResult<Value> {
        let (agent_id, conversation) = self.resolve(target).await?;
        self.turns.preview_payload_in((&agent_id, conversation.as_deref()), texts).await
    }

    /// `POST /v1/conversations/{id}/recompile`: the system prompt the next
    /// step sends (built at every step, so nothing is stored).
    pub async fn recompile(&self, target: &Target) -> ServiceResult<String> {
        let (agent_id, conversation) = self.resolve(target).await?;
        self.turns.system_prompt_in((&agent_id, conversation.as_deref())).await
    }

    /// `POST /v1/conversations/{id}/compact`: summarizes the history's
    /// context window now.
    pub async fn compact(&self, target: &Target, request: SummarizeRequest) -> ServiceResult<Value> {
        let (agent_id, conversation) = self.resolve(target).await?;
        self.turns.summarize_in((&agent_id, conversation.as_deref()), request).await
    }

    /// `POST /v1/conversations/{id}/cancel`: stops every active run of the
    /// history; `{run_id: "cancelled"}`, 409 when none runs.
    pub async fn cancel(&self, target: &Target) -> ServiceResult<Value> {
        let (agent_id, conversation) = self.resolve(target).await?;
        let cancelled = self.runs.cancel_in((&agent_id, conversation.as_deref()), None).await?;
        if cancelled.as_object().is_none_or(|runs| runs.is_empty()) {
            let whom = match &conversation {
                Some(id) => format!("conversation {id}"),
                None => format!("agent {agent_id}"),
            };
            return Err(ServiceError::NoActiveRuns(format!("No active runs to cancel for {whom}")));
        }
        Ok(cancelled)
    }

    /// The newest active run of the history, which `/stream` resumes: it
    /// must be a background run.
    pub async fn active_run(&self, target: &Target) -> ServiceResult<RunRecord> {
        let (agent_id, conversation) = self.resolve(target).await?;
        let filter = crate::actors::agent::RunFilter {
            conversation_id: conversation.clone(),
            ..crate::actors::agent::RunFilter::default()
        };
        let query = RunQuery {
            agent_ids: vec![agent_id],
            filter,
            active: true,
            page: Page { before: None, after: None, limit: 1, descending: true },
        };
        let runs = self.runs.list_records(query).await?;
        let newest = runs
            .into_iter()
            .find(|run| run.conversation_id == conversation && run.status == RunStatus::Running)
            .ok_or_else(|| ServiceError::Refused("No active runs found for this conversation.".into()))?;
        if !newest.background {
            return Err(ServiceError::Refused(
                "Run was not created in background mode, so it cannot be retrieved.".into(),
            ));
        }
        Ok(newest)
    }

    /// `GET /v1/conversations/`.
    pub async fn list(&self, query: ConversationQuery) -> ServiceResult<Vec<Value>> {
        let limit = query.limit;
        if limit == 0 || limit > AGENT_CONVERSATIONS_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "limit {limit} is outside 1..=AGENT_CONVERSATIONS_COUNT_MAX = {AGENT_CONVERSATIONS_COUNT_MAX}"
            )));
        }
        let records = match (&query.agent_id, query.order_by) {
            (Some(agent_id), ConversationOrder::CreatedAt) => {
                let filter =
                    ConversationFilter { summary_search: query.summary_search.clone(), beyond: None };
                self.page(agent_id, query.after.clone(), filter, (limit, query.descending)).await?
            }
            (Some(agent_id), order) => self.by_activity(agent_id, &query, order).await?,
            (None, ConversationOrder::CreatedAt) => self.across_agents(&query).await?,
            (None, _) => {
                return Err(ServiceError::Invalid(
                    "order_by last_message_at or last_run_completion needs agent_id".into(),
                ))
            }
        };
        Ok(records.iter().map(|record| conversation_json(record, &[])).collect())
    }

    async fn page(
        &self,
        agent_id: &str,
        after: Option<String>,
        filter: ConversationFilter,
        (limit, descending): (usize, bool),
    ) -> ServiceResult<Vec<ConversationRecord>> {
        let command = AgentCommand::ConversationPage { after, filter, limit, descending };
        match self.actors.invoke(agent_id, command).await? {
            AgentReply::Conversations(found) => Ok(found),
            _ => Err(unexpected("conversation page")),
        }
    }

    /// Every conversation of the agent (at most
    /// `AGENT_CONVERSATIONS_COUNT_MAX`), sorted by `order` (never-set times
    /// last, then by id), the page after `query.after`.
    async fn by_activity(
        &self,
        agent_id: &str,
        query: &ConversationQuery,
        order: ConversationOrder,
    ) -> ServiceResult<Vec<ConversationRecord>> {
        let filter = ConversationFilter { summary_search: query.summary_search.clone(), beyond: None };
        let mut all = self.page(agent_id, None, filter, (AGENT_CONVERSATIONS_COUNT_MAX, false)).await?;
        all.sort_by(|a, b| {
            let (ta, tb) = (order.time_of(a), order.time_of(b));
            let by_time = match (ta, tb) {
                (Some(x), Some(y)) if query.descending => y.cmp(&x),
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            let by_id = match query.descending {
                true => b.id.cmp(&a.id),
                false => a.id.cmp(&b.id),
            };
            by_time.then(by_id)
        });
        let start = match &query.after {
            Some(after) => match all.iter().position(|record| &record.id == after) {
                Some(at) => at + 1,
                None => return Ok(Vec::new()),
            },
            None => 0,
        };
        Ok(all.into_iter().skip(start).take(query.limit).collect())
    }

    /// Conversations of every agent (up to
    /// `CONVERSATION_LIST_AGENTS_COUNT_MAX`) in creation order: each agent's
    /// page beyond the cursor's (time, id), merged.
    async fn across_agents(&self, query: &ConversationQuery) -> ServiceResult<Vec<ConversationRecord>> {
        let entries = self.directory.entries().await?;
        if entries.len() > CONVERSATION_LIST_AGENTS_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "listing conversations without agent_id looks through at most \
                 CONVERSATION_LIST_AGENTS_COUNT_MAX = {CONVERSATION_LIST_AGENTS_COUNT_MAX} agents and there \
                 are {}; give agent_id",
                entries.len()
            )));
        }
        let beyond = match &query.after {
            Some(after) => {
                let found = self.locate(after).await?;
                Some((found.record.created_ms, found.record.id))
            }
            None => None,
        };
        let filter = ConversationFilter { summary_search: query.summary_search.clone(), beyond };
        let mut merged = Vec::new();
        for entry in entries {
            match self.page(&entry.id, None, filter.clone(), (query.limit, query.descending)).await {
                Ok(found) => merged.extend(found),
                // Deleted since the directory answered.
                Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        merged.sort_by(|a, b| match query.descending {
            true => (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)),
            false => (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)),
        });
        merged.truncate(query.limit);
        Ok(merged)
    }
}
