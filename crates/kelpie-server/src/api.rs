//! What only the HTTP layer reads: query strings (pages, filters) and the
//! message bodies that handlers turn into the service's arguments, with
//! Letta's field names. The bodies the agent service takes whole are in
//! `kelpie_agent::requests`. Unknown fields are ignored, as Letta's clients
//! send many we do not use.

use serde::Deserialize;
use serde_json::Value;

use kelpie_agent::page::{Page, PAGE_LIMIT_COUNT_MAX};

/// Message content: a string or a list of `{"type": "text", "text": ...}` parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    pub text: String,
}

impl Content {
    pub fn into_text(self) -> String {
        match self {
            Content::Text(text) => text,
            Content::Parts(parts) => parts.into_iter().map(|part| part.text).collect::<Vec<_>>().join(""),
        }
    }
}

/// One input message: a user message (`role`, `content`), or an answer to
/// an approval request (`type: "approval"` with `approvals`, or Letta's
/// older `approve` and `reason` for every pending call).
#[derive(Debug, Clone, Deserialize)]
pub struct MessageCreate {
    /// The client's id for the message: the first message's is the turn's
    /// idempotency key when no `Idempotency-Key` header is sent.
    pub otid: Option<String>,
    pub role: Option<String>,
    pub content: Option<Content>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub approvals: Option<Vec<ApprovalItem>>,
    pub approve: Option<bool>,
    pub reason: Option<String>,
}

/// One decision of an approval message: `type: "approval"` (`approve`,
/// `reason`) or `type: "tool"` (the client ran it: `tool_return`, `status`).
#[derive(Debug, Clone, Deserialize)]
pub struct ApprovalItem {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub tool_call_id: String,
    pub approve: Option<bool>,
    pub reason: Option<String>,
    pub tool_return: Option<Value>,
    pub status: Option<String>,
}

/// `PATCH /v1/agents/{id}/tools/approval/{tool_name}`: in the body
/// (preferred) or the query.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApprovalSetting {
    pub requires_approval: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SendMessages {
    pub messages: Option<Vec<MessageCreate>>,
    pub input: Option<Content>,
    pub max_steps: Option<u32>,
    /// `POST /messages` answers as `/messages/stream` does when set.
    #[serde(default)]
    pub streaming: bool,
    /// When streaming: stream the LLM's tokens as partial messages too.
    #[serde(default)]
    pub stream_tokens: bool,
}

/// `POST /v1/agents/{agent_id}/messages/cancel`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CancelRuns {
    pub run_ids: Option<Vec<String>>,
}

/// `limit`, `before`, `after`, `order` of any list route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub order: Option<String>,
    pub ascending: Option<bool>,
}

impl PageQuery {
    /// The page, with `default_limit` and `default_descending` when not given.
    pub fn page(&self, default_limit: usize, default_descending: bool) -> Result<Page, String> {
        let limit = self.limit.unwrap_or(default_limit);
        if limit == 0 || limit > PAGE_LIMIT_COUNT_MAX {
            return Err(format!("limit {limit} is outside 1..={PAGE_LIMIT_COUNT_MAX}"));
        }
        let descending = match (self.order.as_deref(), self.ascending) {
            (Some("asc"), _) => false,
            (Some("desc"), _) => true,
            (Some(other), _) => return Err(format!("order {other:?} is neither \"asc\" nor \"desc\"")),
            (None, Some(ascending)) => !ascending,
            (None, None) => default_descending,
        };
        Ok(Page { before: self.before.clone(), after: self.after.clone(), limit, descending })
    }
}

/// `GET /v1/agents/` filters besides the page (read with a [`PageQuery`]
/// from the same query string). `tags` may repeat, so the handler reads them
/// from the raw query string ([`repeated_param`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AgentListQuery {
    pub name: Option<String>,
    pub match_all_tags: Option<bool>,
    /// Only the agents of this identity.
    pub identity_id: Option<String>,
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let hex = bytes.get(index + 1..index + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (byte, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                index += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                index += 1;
            }
            _ => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every value of `name` in a query string (`tags=a&tags=b`).
/// Every value of query parameter `name`, given repeated or comma-separated,
/// trimmed, empty ones dropped.
pub fn listed_param(query: Option<&str>, name: &str) -> Vec<String> {
    repeated_param(query, name)
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn repeated_param(query: Option<&str>, name: &str) -> Vec<String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| percent_decode(key) == name)
        .map(|(_, value)| percent_decode(value))
        .collect()
}

/// `GET /v1/blocks/`: a label filter (the page is a [`PageQuery`] read
/// from the same query string).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BlockListQuery {
    pub label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ArchivalSearchQuery {
    pub query: String,
    pub top_k: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_params_are_all_read_and_decoded() {
        let query = Some("tags=a%20b&limit=2&tags=c+d&tagsx=no");
        assert_eq!(repeated_param(query, "tags"), ["a b", "c d"]);
        assert_eq!(repeated_param(None, "tags"), Vec::<String>::new());
    }

    #[test]
    fn page_query_checks_limit_and_order() {
        let query = PageQuery { limit: Some(0), ..PageQuery::default() };
        assert_eq!(query.page(50, true).unwrap_err(), "limit 0 is outside 1..=1000");
        let query = PageQuery { order: Some("up".into()), ..PageQuery::default() };
        assert!(query.page(50, true).unwrap_err().contains("\"up\""));
        let page = PageQuery { ascending: Some(true), ..PageQuery::default() }.page(50, true).unwrap();
        assert_eq!((page.limit, page.descending), (50, false));
    }
}
