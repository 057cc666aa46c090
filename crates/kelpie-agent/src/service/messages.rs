//! Messages across agents (`/v1/messages/{id}`, `/v1/messages/search`,
//! `/v1/agents/messages/search`). Messages live with their agents; a
//! message id names the first 64 bits of its agent's id
//! ([`crate::ids::new_message_id`]), so one is found by id through the
//! directory without an index that every step would have to write.
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
use crate::ids::{message_agent_prefix, parse_iso_ms, rfc3339_micros};
use crate::letta::{internal_message_json, letta_messages};
use crate::model::{MessageBody, StoredMessage};

/// Most agents a search without `agent_id` looks through.
pub const MESSAGE_SEARCH_AGENTS_COUNT_MAX: usize = 1_000;
/// Most results of one search (Letta's default is 50).
pub const MESSAGE_SEARCH_RESULTS_COUNT_MAX: usize = 100;
/// Most messages read from one agent for a search with a role or date
/// filter (the filter applies to them).
pub const MESSAGE_SEARCH_AGENT_READ_COUNT_MAX: usize = 1_000;
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

/// A message found, with its agent.
pub struct Found {
    pub agent_id: String,
    pub message: StoredMessage,
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

    /// The stored message `message_id` and its agent.
    pub async fn find(&self, message_id: &str) -> ServiceResult<Found> {
        let not_found = || ServiceError::MessageNotFound(message_id.to_string());
        let prefix = message_agent_prefix(message_id).ok_or_else(not_found)?;
        for agent_id in self.directory.find_prefix(&prefix).await? {
            let command = AgentCommand::GetMessage { id: message_id.to_string() };
            match self.actors.invoke(&agent_id, command).await {
                Ok(AgentReply::Messages(mut messages)) => {
                    if let Some(message) = messages.pop() {
                        return Ok(Found { agent_id, message });
                    }
                }
                // Deleted since the directory answered.
                Err(ServiceError::AgentNotFound(_)) => {}
                Ok(_) => return Err(unexpected("get message")),
                Err(err) => return Err(err),
            }
        }
        Err(not_found())
    }

    /// `GET /v1/messages/{id}`: the message as Letta's messages.
    pub async fn get(&self, message_id: &str) -> ServiceResult<Vec<Value>> {
        Ok(letta_messages(&self.find(message_id).await?.message))
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
        // Projects, templates and conversations are Letta cloud's; no
        // Kelpie message belongs to one.
        if search.project_id.is_some() || search.template_id.is_some() || search.conversation_id.is_some() {
            return Ok(Vec::new());
        }
        let agent_ids = match &search.agent_id {
            Some(agent_id) => vec![agent_id.clone()],
            None => {
                let entries = self.directory.entries().await?;
                if entries.len() > MESSAGE_SEARCH_AGENTS_COUNT_MAX {
                    return Err(ServiceError::Invalid(format!(
                        "a message search without agent_id looks through at most \
                         MESSAGE_SEARCH_AGENTS_COUNT_MAX = {MESSAGE_SEARCH_AGENTS_COUNT_MAX} agents and there \
                         are {}; give agent_id",
                        entries.len()
                    )));
                }
                entries.into_iter().map(|entry| entry.id).collect()
            }
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
                true => AgentCommand::MessagePage(PageSpec {
                    after: None,
                    before: None,
                    limit: read,
                    descending: true,
                }),
                false => AgentCommand::SearchMessages { query: query.clone(), limit: read },
            };
            let messages = match self.actors.invoke(&agent_id, command).await {
                Ok(AgentReply::Messages(messages)) => messages,
                // A named agent must exist; one listed may be deleted since.
                Err(ServiceError::AgentNotFound(_)) if search.agent_id.is_none() => continue,
                Ok(_) => return Err(unexpected("search messages")),
                Err(err) => return Err(err),
            };
            found.extend(
                messages
                    .into_iter()
                    .filter(|message| accepts(message))
                    .map(|message| Found { agent_id: agent_id.clone(), message }),
            );
        }
        found.sort_by(|a, b| {
            (b.message.created_ms, &b.message.id).cmp(&(a.message.created_ms, &a.message.id))
        });
        found.truncate(limit);
        Ok(found)
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
                "conversation_id": null, "created_at": rfc3339_micros(found.message.created_ms),
            });
            if let (Some(result), Value::Object(text)) = (result.as_object_mut(), text) {
                result.extend(text);
            }
            results.push(result);
        }
    }
    results
}
