//! Messages across agents (`/v1/messages/{id}`, `/v1/messages/search`,
//! `/v1/agents/messages/search`). Messages live with their agents; a
//! message id names the first 64 bits of its agent's id
//! ([`crate::ids::new_message_id`]), so one is found by id through the
//! directory without an index that every step would have to write.
//!
//! The list of every agent's messages (`GET /v1/messages/`) is in time
//! order (creation time, then agent id, then the agent's own order): each
//! agent answers its page past the cursor's place through a binary search
//! of its messages by time, and the pages are merged.
//!
//! Search is keyword search through each agent's word index (the one
//! `conversation_search` uses): the messages whose text holds the query,
//! newest first. Letta answers these routes only on its cloud (Turbopuffer
//! embeddings and full-text ranks); Kelpie serves them on any store, ranked
//! by recency, with `fts_rank` the place in that order and `vector_rank`
//! null.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::directory::AgentDirectory;
use crate::actors::agent::{AgentCommand, AgentReply, PageSpec};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{conversation_agent_prefix, message_agent_prefix, parse_iso_ms, rfc3339_micros};
use crate::letta::{internal_message_json, letta_messages};
use crate::model::{MessageBody, StoredMessage};
use crate::page::{Page, PAGE_LIMIT_COUNT_MAX};

/// Most agents a search without `agent_id`, or the list of every agent's
/// messages, looks through.
pub const MESSAGES_ACROSS_AGENTS_COUNT_MAX: usize = 1_000;
/// Most results of one search (Letta's default is 50).
pub const MESSAGE_SEARCH_RESULTS_COUNT_MAX: usize = 100;
/// Most messages read from one agent for a search with a role or date
/// filter (the filter applies to them).
pub const MESSAGE_SEARCH_AGENT_READ_COUNT_MAX: usize = 1_000;
/// Fewest messages read from an agent at a time by the list of every
/// agent's messages (a page of 1 still reads past hidden messages quickly).
pub const MESSAGES_LIST_READ_COUNT_MIN: usize = 16;
/// Reciprocal rank fusion's constant (`1 / (k + rank)`), as Letta uses.
const RRF_K: f64 = 60.0;

/// Letta's `MessageSearchRequest` and `SearchAllMessagesRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageSearch {
    pub query: Option<String>,
    pub search_mode: Option<String>,
    pub roles: Option<Vec<String>>,
    pub agent_id: Option<String>,
    pub project_id: Option<String>,
    pub template_id: Option<String>,
    pub conversation_id: Option<String>,
    pub limit: Option<usize>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

/// A message found, with its agent (and conversation, when one holds it).
pub struct Found {
    pub agent_id: String,
    pub message: StoredMessage,
    pub conversation_id: Option<String>,
}

pub struct Messages {
    actors: Arc<AgentActors>,
    directory: Arc<AgentDirectory>,
}

/// Letta's `MessageRole` of a stored message.
fn role_of(message: &StoredMessage) -> &'static str {
    match message.body {
        MessageBody::User { .. } => "user",
        MessageBody::Assistant { .. } => "assistant",
        MessageBody::Tool { .. } => "tool",
        MessageBody::Summary { .. } => "summary",
        MessageBody::ApprovalResponse { .. } => "approval",
    }
}

const ROLES: [&str; 7] = ["assistant", "user", "tool", "function", "system", "approval", "summary"];

impl Messages {
    pub fn new(actors: Arc<AgentActors>, directory: Arc<AgentDirectory>) -> Self {
        Messages { actors, directory }
    }

    /// The stored message `message_id` and its agent: through the agent its
    /// id names, else (a message stored before ids named their agent) by
    /// asking every agent, when there are at most
    /// [`MESSAGES_ACROSS_AGENTS_COUNT_MAX`].
    pub async fn find(&self, message_id: &str) -> ServiceResult<Found> {
        let not_found = || ServiceError::MessageNotFound(message_id.to_string());
        let prefix = message_agent_prefix(message_id).ok_or_else(not_found)?;
        if let Some(found) = self.find_in(message_id, self.directory.find_prefix(&prefix).await?).await? {
            return Ok(found);
        }
        let entries = self.directory.entries().await?;
        if entries.len() > MESSAGES_ACROSS_AGENTS_COUNT_MAX {
            return Err(not_found());
        }
        let agent_ids =
            entries.into_iter().map(|entry| entry.id).filter(|id| !id.starts_with(&prefix)).collect();
        self.find_in(message_id, agent_ids).await?.ok_or_else(not_found)
    }

    /// Message `message_id` in the first of `agent_ids` that has it.
    async fn find_in(&self, message_id: &str, agent_ids: Vec<String>) -> ServiceResult<Option<Found>> {
        for agent_id in agent_ids {
            let command = AgentCommand::GetMessage { id: message_id.to_string() };
            match self.actors.invoke(&agent_id, command).await {
                Ok(AgentReply::Message(Some((message, conversation_id)))) => {
                    return Ok(Some(Found { agent_id, message: *message, conversation_id }));
                }
                Ok(AgentReply::Message(None)) => {}
                // Deleted since the directory answered.
                Err(ServiceError::AgentNotFound(_)) => {}
                Ok(_) => return Err(unexpected("get message")),
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    }

    /// `GET /v1/messages/{id}`: the message as Letta's messages.
    pub async fn get(&self, message_id: &str) -> ServiceResult<Vec<Value>> {
        let found = self.find(message_id).await?;
        let mut parts = letta_messages(&found.message);
        if let Some(conversation_id) = &found.conversation_id {
            for part in &mut parts {
                part["conversation_id"] = Value::from(conversation_id.as_str());
            }
        }
        Ok(parts)
    }

    /// The agents the routes across agents look through: every agent,
    /// refused past [`MESSAGES_ACROSS_AGENTS_COUNT_MAX`] (`what` says which
    /// route, `narrow` how to name fewer).
    async fn every_agent(&self, what: &str, narrow: &str) -> ServiceResult<Vec<String>> {
        let entries = self.directory.entries().await?;
        if entries.len() > MESSAGES_ACROSS_AGENTS_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "{what} looks through at most MESSAGES_ACROSS_AGENTS_COUNT_MAX = \
                 {MESSAGES_ACROSS_AGENTS_COUNT_MAX} agents and there are {}; {narrow}",
                entries.len()
            )));
        }
        Ok(entries.into_iter().map(|entry| entry.id).collect())
    }

    /// `GET /v1/messages/`: every agent's messages as Letta's messages, in
    /// time order (`page.descending`: newest first), `before`/`after`
    /// message ids; of `types` only when given. An unknown cursor selects
    /// nothing. Costs O(agents × (limit + log n)).
    pub async fn list(&self, page: &Page, types: Option<&[String]>) -> ServiceResult<Vec<Value>> {
        let agent_ids =
            self.every_agent("listing every agent's messages", "list one agent's messages").await?;
        let mut cursors = Vec::new();
        for cursor in [&page.after, &page.before] {
            cursors.push(match cursor {
                None => None,
                Some(id) => match self.find(id).await {
                    Ok(found) => Some(found),
                    Err(ServiceError::MessageNotFound(_)) => return Ok(Vec::new()),
                    Err(err) => return Err(err),
                },
            });
        }
        let (after, before) = (cursors.remove(0), cursors.remove(0));
        // In time order, `after` is the older end unless newest first.
        let (older, newer) = match page.descending {
            false => (after, before),
            true => (before, after),
        };
        // A k-way merge: each agent's next messages in the page's order,
        // read a page at a time as the merge uses them up (messages Letta
        // does not show, such as `send_message` returns, use none of the
        // page's room).
        let mut heads: Vec<AgentHead> = agent_ids
            .iter()
            .map(|agent_id| AgentHead {
                agent_id: agent_id.clone(),
                from: older.as_ref().map(|cursor| later_than(cursor, agent_id)),
                to: newer.as_ref().map(|cursor| earlier_than(cursor, agent_id)),
                buffer: std::collections::VecDeque::new(),
                exhausted: false,
            })
            .collect();
        let read_count = page.limit.clamp(MESSAGES_LIST_READ_COUNT_MIN, PAGE_LIMIT_COUNT_MAX);
        let mut listed = Vec::new();
        while listed.len() < page.limit {
            for head in heads.iter_mut().filter(|head| head.buffer.is_empty() && !head.exhausted) {
                self.refill(head, page.descending, read_count).await?;
            }
            let place = |head: &AgentHead| {
                head.buffer.front().map(|message| (message.created_ms, head.agent_id.clone(), message.seq))
            };
            let next = heads
                .iter()
                .enumerate()
                .filter_map(|(index, head)| place(head).map(|place| (place, index)))
                .reduce(|a, b| match (b.0 < a.0) != page.descending {
                    true => b,
                    false => a,
                });
            let Some((_, index)) = next else { break };
            let message = heads[index].buffer.pop_front().expect("the chosen head has a message");
            let mut parts = letta_messages(&message);
            if page.descending {
                parts.reverse();
            }
            parts.retain(|part| {
                types.is_none_or(|types| types.iter().any(|kind| part["message_type"] == kind.as_str()))
            });
            listed.extend(parts);
        }
        Ok(listed)
    }

    /// Reads `head`'s next messages past what it read (in the page's order).
    async fn refill(&self, head: &mut AgentHead, descending: bool, limit: usize) -> ServiceResult<()> {
        let command = AgentCommand::MessagesBetween { from: head.from, to: head.to, descending, limit };
        let messages = match self.actors.invoke(&head.agent_id, command).await {
            Ok(AgentReply::Messages(messages)) => messages,
            // Deleted since the directory answered.
            Err(ServiceError::AgentNotFound(_)) => Vec::new(),
            Ok(_) => return Err(unexpected("messages between")),
            Err(err) => return Err(err),
        };
        head.exhausted = messages.len() < limit;
        if let Some(last) = messages.last() {
            match descending {
                true => head.to = Some((last.created_ms, last.seq)),
                false => head.from = Some((last.created_ms, last.seq.saturating_add(1))),
            }
        }
        head.buffer.extend(messages);
        Ok(())
    }

    /// The messages a search selects, newest first, at most its limit.
    pub async fn search(&self, search: &MessageSearch) -> ServiceResult<Vec<Found>> {
        let limit = search.limit.unwrap_or(50);
        if limit == 0 || limit > MESSAGE_SEARCH_RESULTS_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "limit {limit} is outside 1..={MESSAGE_SEARCH_RESULTS_COUNT_MAX} (MESSAGE_SEARCH_RESULTS_COUNT_MAX)"
            )));
        }
        if let Some(mode) = &search.search_mode {
            if !["fts", "vector", "hybrid"].contains(&mode.as_str()) {
                return Err(ServiceError::Invalid(format!(
                    "search_mode {mode:?} is none of fts, vector, hybrid"
                )));
            }
        }
        let roles = search.roles.clone().unwrap_or_default();
        if let Some(role) = roles.iter().find(|role| !ROLES.contains(&role.as_str())) {
            return Err(ServiceError::Invalid(format!("role {role:?} is none of {}", ROLES.join(", "))));
        }
        let date = |field: &str, text: &Option<String>| match text {
            None => Ok(None),
            Some(text) => parse_iso_ms(text)
                .map(Some)
                .ok_or_else(|| ServiceError::Invalid(format!("{field} {text:?} is not an ISO 8601 date"))),
        };
        let (start_ms, end_ms) =
            (date("start_date", &search.start_date)?, date("end_date", &search.end_date)?);
        // Projects and templates are Letta cloud's; no Kelpie message
        // belongs to one.
        if search.project_id.is_some() || search.template_id.is_some() {
            return Ok(Vec::new());
        }
        let conversation = search.conversation_id.clone();
        let agent_ids = match (&search.agent_id, &conversation) {
            (Some(agent_id), _) => vec![agent_id.clone()],
            // The agents whose id the conversation's begins with (one,
            // but for a 64-bit collision); the others hold no such
            // conversation.
            (None, Some(id)) => match conversation_agent_prefix(id) {
                Some(prefix) => self.directory.find_prefix(&prefix).await?,
                None => return Ok(Vec::new()),
            },
            (None, None) => self.every_agent("a message search without agent_id", "give agent_id").await?,
        };
        let filtered = !roles.is_empty() || start_ms.is_some() || end_ms.is_some();
        let read = if filtered { MESSAGE_SEARCH_AGENT_READ_COUNT_MAX } else { limit };
        let query = search.query.clone().unwrap_or_default();
        let accepts = |message: &StoredMessage| {
            (roles.is_empty() || roles.iter().any(|role| role == role_of(message)))
                && start_ms.is_none_or(|start| message.created_ms >= start)
                && end_ms.is_none_or(|end| message.created_ms <= end)
        };
        let mut found = Vec::new();
        for agent_id in agent_ids {
            let command = match query.trim().is_empty() {
                true => {
                    let page = PageSpec { after: None, before: None, limit: read, descending: true };
                    match &conversation {
                        None => AgentCommand::MessagePage(page),
                        Some(id) => AgentCommand::ConversationMessages { id: id.clone(), page },
                    }
                }
                false => AgentCommand::SearchMessages {
                    query: query.clone(),
                    limit: read,
                    conversation: conversation.clone(),
                },
            };
            let messages = match self.actors.invoke(&agent_id, command).await {
                Ok(AgentReply::Messages(messages)) => messages,
                // A named agent must exist; one listed may be deleted since.
                Err(ServiceError::AgentNotFound(_)) if search.agent_id.is_none() => continue,
                // The conversation is another agent's, or none at all.
                Err(ServiceError::ConversationNotFound(_)) => continue,
                Ok(_) => return Err(unexpected("search messages")),
                Err(err) => return Err(err),
            };
            found.extend(messages.into_iter().filter(|message| accepts(message)).map(|message| Found {
                agent_id: agent_id.clone(),
                message,
                conversation_id: conversation.clone(),
            }));
        }
        found.sort_by(|a, b| {
            (b.message.created_ms, &b.agent_id, b.message.seq).cmp(&(
                a.message.created_ms,
                &a.agent_id,
                a.message.seq,
            ))
        });
        found.truncate(limit);
        Ok(found)
    }
}

/// One agent's part of the merge of every agent's messages: the place range
/// it has left to read, what it read and not yet merged, and whether it
/// has nothing more.
struct AgentHead {
    agent_id: String,
    from: Option<(u64, u64)>,
    to: Option<(u64, u64)>,
    buffer: std::collections::VecDeque<StoredMessage>,
    exhausted: bool,
}

/// The first place in `agent_id`'s messages that comes after the cursor in
/// time order (creation time, agent id, seq).
fn later_than(cursor: &Found, agent_id: &str) -> (u64, u64) {
    let (ms, seq) = (cursor.message.created_ms, cursor.message.seq);
    match agent_id.cmp(cursor.agent_id.as_str()) {
        std::cmp::Ordering::Less => (ms.saturating_add(1), 0),
        std::cmp::Ordering::Greater => (ms, 0),
        std::cmp::Ordering::Equal => (ms, seq.saturating_add(1)),
    }
}

/// The first place in `agent_id`'s messages that is not before the cursor
/// in time order (the cursor itself excluded).
fn earlier_than(cursor: &Found, agent_id: &str) -> (u64, u64) {
    match agent_id.cmp(cursor.agent_id.as_str()) {
        std::cmp::Ordering::Equal => (cursor.message.created_ms, cursor.message.seq),
        _ => later_than(cursor, agent_id),
    }
}

/// `POST /v1/agents/messages/search`: Letta's `MessageSearchResult`s.
pub fn search_results_json(found: &[Found]) -> Vec<Value> {
    found
        .iter()
        .enumerate()
        .map(|(place, found)| {
            let rank = place + 1;
            json!({
                "embedded_text": found.message.searchable_text(),
                "message": internal_message_json(&found.agent_id, &found.message),
                "fts_rank": rank, "vector_rank": null, "rrf_score": 1.0 / (RRF_K + rank as f64),
            })
        })
        .collect()
}

/// `POST /v1/messages/search`: Letta's `*MessageListResult`s (system,
/// user, reasoning and assistant messages; tool calls and returns are not
/// among Letta's result types).
pub fn list_results_json(found: &[Found]) -> Vec<Value> {
    let mut results = Vec::new();
    for found in found {
        for message in letta_messages(&found.message) {
            let kind = message["message_type"].as_str().unwrap_or_default().to_string();
            let text = match kind.as_str() {
                "user_message" | "assistant_message" | "system_message" => {
                    json!({"content": message["content"]})
                }
                "reasoning_message" => json!({"reasoning": message["reasoning"]}),
                _ => continue,
            };
            let mut result = json!({
                "message_type": kind, "message_id": found.message.id, "agent_id": found.agent_id,
                "conversation_id": found.conversation_id, "created_at": rfc3339_micros(found.message.created_ms),
            });
            if let (Some(result), Value::Object(text)) = (result.as_object_mut(), text) {
                result.extend(text);
            }
            results.push(result);
        }
    }
    results
}
