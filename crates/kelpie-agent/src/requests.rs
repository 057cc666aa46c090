//! The request bodies the agent service takes, with Letta's field names.
//! Serde checks their shape (a wrong type is a 422 at the HTTP layer); the
//! service checks their meaning. Unknown fields are ignored, as Letta's
//! clients send many we do not use.

use std::collections::BTreeMap;

use kelpie_tools::pip::PipRequirement;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::model::CompactionSettings;

/// A `metadata` field: a JSON object of the user's keys, or null (read as
/// absent). Anything else is refused, so a stored agent, block, tool or
/// folder answers the object Letta's schemas promise.
pub fn metadata_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(object @ Value::Object(_)) => Ok(Some(object)),
        Some(_) => Err(serde::de::Error::custom("metadata must be a JSON object or null")),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreateBlock {
    pub label: String,
    pub value: String,
    pub limit: Option<u64>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlmConfigIn {
    pub model: String,
    pub handle: Option<String>,
    pub context_window: Option<u64>,
}

/// Letta's `embedding_config` on create: its handle (or provider and
/// model) chooses the embedding, as `embedding` does.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingConfigIn {
    pub handle: Option<String>,
    pub embedding_model: Option<String>,
    pub embedding_endpoint_type: Option<String>,
}

impl EmbeddingConfigIn {
    /// The handle it names: `handle`, else `<endpoint type>/<model>`.
    pub fn handle(&self) -> Option<String> {
        self.handle.clone().or_else(|| {
            Some(format!("{}/{}", self.embedding_endpoint_type.as_deref()?, self.embedding_model.as_deref()?))
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateAgent {
    pub name: Option<String>,
    pub system: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "metadata_object")]
    pub metadata: Option<Value>,
    pub memory_blocks: Option<Vec<CreateBlock>>,
    pub tools: Option<Vec<String>>,
    pub tool_ids: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub model: Option<String>,
    pub llm_config: Option<LlmConfigIn>,
    pub embedding: Option<String>,
    pub embedding_config: Option<EmbeddingConfigIn>,
    /// Identities the new agent is linked to (each must exist).
    #[serde(default)]
    pub identity_ids: Option<Vec<String>>,
    pub context_window_limit: Option<u64>,
    pub max_tokens: Option<u64>,
    /// Letta's limits of the agent's open files (see `crate::files`).
    pub max_files_open: Option<u32>,
    pub per_file_view_window_char_limit: Option<u64>,
    /// Environment variables of the agent's tool calls (Letta's `secrets`).
    pub secrets: Option<BTreeMap<String, String>>,
    /// Letta's older name for `secrets`; `secrets` wins when both are given.
    pub tool_exec_environment_variables: Option<BTreeMap<String, String>>,
    pub compaction_settings: Option<CompactionSettings>,
    /// Letta's tool rules, read by [`crate::tool_rules::parse_rules`].
    pub tool_rules: Option<Vec<Value>>,
    /// Letta's `enable_sleeptime`: a sleeptime group the agent manages runs
    /// after its turns only when set.
    pub enable_sleeptime: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub system: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "metadata_object")]
    pub metadata: Option<Value>,
    pub tags: Option<Vec<String>>,
    pub tool_ids: Option<Vec<String>>,
    /// Replaces every environment variable of the agent's tool calls.
    pub secrets: Option<BTreeMap<String, String>>,
    pub tool_exec_environment_variables: Option<BTreeMap<String, String>>,
    /// Merged into the stored settings: only the fields given change.
    pub compaction_settings: Option<Value>,
    /// Replaces the agent's tool rules.
    pub tool_rules: Option<Vec<Value>>,
    pub max_files_open: Option<u32>,
    pub per_file_view_window_char_limit: Option<u64>,
    pub enable_sleeptime: Option<bool>,
}

/// The body of `PATCH /v1/agents/{id}/messages/{message_id}` (any of
/// Letta's `Update*Message`): `content` is a string or a list of text
/// parts; a reasoning edit carries `reasoning`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModifyMessage {
    pub message_type: Option<String>,
    pub content: Option<Value>,
    pub reasoning: Option<String>,
}

impl ModifyMessage {
    /// The Letta message type edited and the edit.
    pub fn edit(self) -> crate::error::ServiceResult<(&'static str, crate::actors::agent::MessageEdit)> {
        use crate::actors::agent::MessageEdit;
        let invalid = |reason: &str| crate::error::ServiceError::Invalid(reason.to_string());
        let text = |content: Option<Value>| -> crate::error::ServiceResult<String> {
            match content {
                Some(Value::String(text)) => Ok(text),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|part| match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text") | None, Some(text)) => Ok(text.to_string()),
                        _ => Err(invalid("only text content parts can be set")),
                    })
                    .collect::<crate::error::ServiceResult<Vec<String>>>()
                    .map(|texts| texts.join("")),
                _ => Err(invalid("content is required: a string or a list of text parts")),
            }
        };
        // A blank reply or reasoning is not rendered (a message shows no such part), so it
        // could not be answered back or seen again: refused rather than stored.
        let shown = |field: &str, text: String| -> crate::error::ServiceResult<String> {
            match text.trim().is_empty() {
                true => Err(invalid(&format!("{field} must not be blank: a blank one is not shown"))),
                false => Ok(text),
            }
        };
        match self.message_type.as_deref() {
            Some("user_message") => Ok(("user_message", MessageEdit::User(text(self.content)?))),
            Some("assistant_message") => {
                Ok(("assistant_message", MessageEdit::Assistant(shown("content", text(self.content)?)?)))
            }
            Some("reasoning_message") | None if self.reasoning.is_some() => Ok((
                "reasoning_message",
                MessageEdit::Reasoning(shown("reasoning", self.reasoning.expect("checked"))?),
            )),
            Some("system_message") => Err(invalid(
                "system messages are built from the agent's system prompt and memory at every step; \
                 change the system prompt or the memory blocks instead",
            )),
            Some(other) => Err(invalid(&format!(
                "message_type {other:?} cannot be edited: user_message, assistant_message or reasoning_message"
            ))),
            None => Ok(("user_message", MessageEdit::User(text(self.content)?))),
        }
    }
}

/// The body of `POST /v1/agents/{id}/summarize` (Letta's `CompactionRequest`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SummarizeRequest {
    /// Merged over the agent's settings for this compaction only.
    pub compaction_settings: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateBlock {
    pub value: Option<String>,
    pub limit: Option<u64>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
}

/// `POST /v1/tools/` and `PUT /v1/tools/`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateTool {
    pub source_code: String,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub json_schema: Option<Value>,
    pub return_char_limit: Option<usize>,
    pub pip_requirements: Option<Vec<PipRequirement>>,
    /// Not in Letta's create body, but in its update's; accepted here too.
    #[serde(rename = "metadata_")]
    #[serde(default, deserialize_with = "metadata_object")]
    pub metadata: Option<Value>,
    /// Agents it is attached to ask the client's approval before calling it.
    pub default_requires_approval: Option<bool>,
}

/// `PATCH /v1/tools/{tool_id}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateTool {
    pub source_code: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub json_schema: Option<Value>,
    pub return_char_limit: Option<usize>,
    pub pip_requirements: Option<Vec<PipRequirement>>,
    #[serde(rename = "metadata_")]
    #[serde(default, deserialize_with = "metadata_object")]
    pub metadata: Option<Value>,
    pub default_requires_approval: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatePassage {
    pub text: String,
    pub tags: Option<Vec<String>>,
}

/// `POST /v1/passages/search` (Letta's `PassageSearchRequest`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PassageSearch {
    pub query: Option<String>,
    pub agent_id: Option<String>,
    pub archive_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub tag_match_mode: Option<String>,
    pub limit: Option<usize>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

/// `POST /v1/archives/` (Letta's `ArchiveCreateRequest`).
#[derive(Debug, Clone, Deserialize)]
pub struct CreateArchive {
    pub name: String,
    pub description: Option<String>,
    /// The embedding handle; `embedding_config` is Letta's older way.
    pub embedding: Option<String>,
    pub embedding_config: Option<EmbeddingConfigIn>,
}

/// `PATCH /v1/archives/{id}` (Letta's `ArchiveUpdateRequest`): only what is given changes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModifyArchive {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// One passage of `POST /v1/archives/{id}/passages` (Letta's `PassageCreateRequest`).
#[derive(Debug, Clone, Deserialize)]
pub struct CreateArchivePassage {
    pub text: String,
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub tags: Option<Vec<String>>,
    /// ISO 8601; now when absent.
    pub created_at: Option<String>,
}

/// `POST /v1/archives/{id}/passages/batch` (Letta's `PassageBatchCreateRequest`).
#[derive(Debug, Clone, Deserialize)]
pub struct CreateArchivePassages {
    pub passages: Vec<CreateArchivePassage>,
}

/// The `config` of `POST /v1/mcp-servers/` and `PATCH /v1/mcp-servers/{id}`:
/// Letta's three shapes in one (`mcp_server_type` picks; without it, a
/// `command` means stdio and a `server_url` streamable HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct McpServerConfigIn {
    pub mcp_server_type: Option<String>,
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub server_url: Option<String>,
    pub auth_header: Option<String>,
    pub auth_token: Option<String>,
    pub custom_headers: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /v1/mcp-servers/`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateMcpServer {
    pub server_name: String,
    pub config: McpServerConfigIn,
}

/// `PATCH /v1/mcp-servers/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateMcpServer {
    pub server_name: Option<String>,
    pub config: Option<McpServerConfigIn>,
}

/// `POST /v1/tools/run`: a function run once from its source.
#[derive(Debug, Clone, Deserialize)]
pub struct RunToolFromSource {
    pub source_code: String,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// The function to call; the source's schema names it when absent.
    pub name: Option<String>,
    pub source_type: Option<String>,
    pub json_schema: Option<Value>,
    pub pip_requirements: Option<Vec<PipRequirement>>,
}

/// `POST /v1/tools/generate-tool` (Letta's `GenerateToolInput`).
#[derive(Debug, Clone, Deserialize)]
pub struct GenerateTool {
    pub tool_name: String,
    pub prompt: String,
    /// The model's handle; the server's default model when absent.
    #[serde(default)]
    pub handle: Option<String>,
    #[serde(default)]
    pub starter_code: Option<String>,
    /// Required by Letta's schema (an empty list for none).
    pub validation_errors: Vec<String>,
}

/// `POST /v1/tools/generate-schema`.
#[derive(Debug, Clone, Deserialize)]
pub struct CodeInput {
    pub code: String,
    pub source_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::agent::MessageEdit;
    use crate::model::MessageBody;
    use kelpie_llm::ToolCall;
    use serde_json::json;

    fn edit_of(body: Value) -> crate::error::ServiceResult<(&'static str, MessageEdit)> {
        serde_json::from_value::<ModifyMessage>(body).unwrap().edit()
    }

    #[test]
    fn edits_are_read_from_each_of_lettas_update_shapes() {
        let (kind, edit) = edit_of(json!({"message_type": "user_message", "content": "hi"})).unwrap();
        assert_eq!(kind, "user_message");
        let mut body = MessageBody::User { content: "old".into() };
        edit.apply(&mut body).unwrap();
        assert_eq!(body, MessageBody::User { content: "hi".into() });

        let parts = json!({"message_type": "assistant_message", "content": [{"type": "text", "text": "a"}, {"text": "b"}]});
        let (kind, edit) = edit_of(parts).unwrap();
        assert_eq!(kind, "assistant_message");
        let call = ToolCall {
            id: "c1".into(),
            name: "send_message".into(),
            arguments: r#"{"message":"old"}"#.into(),
        };
        let mut body = MessageBody::Assistant {
            content: Some("thinking".into()),
            tool_calls: vec![call],
            awaiting_approval: false,
        };
        edit.apply(&mut body).unwrap();
        let MessageBody::Assistant { content, tool_calls, .. } = &body else { panic!("assistant") };
        assert_eq!(content.as_deref(), Some("thinking"), "the reasoning stays");
        assert_eq!(
            serde_json::from_str::<Value>(&tool_calls[0].arguments).unwrap(),
            json!({"message": "ab"})
        );

        // Blank text would render as no part at all (a 500 schemathesis found): refused.
        for blank in
            [json!({"reasoning": ""}), json!({"message_type": "reasoning_message", "reasoning": " \n"})]
        {
            let refused = edit_of(blank).map(|(kind, _)| kind).unwrap_err();
            assert_eq!(refused.to_string(), "reasoning must not be blank: a blank one is not shown");
        }
        let refused =
            edit_of(json!({"message_type": "assistant_message", "content": "  "})).map(|(kind, _)| kind);
        assert_eq!(refused.unwrap_err().to_string(), "content must not be blank: a blank one is not shown");
        let (kind, edit) = edit_of(json!({"reasoning": "why"})).unwrap();
        assert_eq!(kind, "reasoning_message");
        edit.apply(&mut body).unwrap();
        let MessageBody::Assistant { content, .. } = &body else { panic!("assistant") };
        assert_eq!(content.as_deref(), Some("why"));

        let (_, edit) = edit_of(json!({"message_type": "user_message", "content": "x"})).unwrap();
        assert_eq!(edit.apply(&mut body).unwrap_err(), "the message is not a user message");
        let tool_only =
            ToolCall { id: "c2".into(), name: "archival_memory_search".into(), arguments: "{}".into() };
        let mut body =
            MessageBody::Assistant { content: None, tool_calls: vec![tool_only], awaiting_approval: false };
        let (_, edit) = edit_of(json!({"message_type": "assistant_message", "content": "x"})).unwrap();
        assert!(edit.apply(&mut body).unwrap_err().contains("no assistant reply"));

        for refused in [
            json!({"message_type": "system_message", "content": "x"}),
            json!({"message_type": "tool_return_message", "content": "x"}),
            json!({"message_type": "user_message"}),
            json!({"message_type": "user_message", "content": [{"type": "image", "url": "x"}]}),
        ] {
            assert!(
                matches!(edit_of(refused.clone()), Err(crate::error::ServiceError::Invalid(_))),
                "{refused}"
            );
        }
    }
}
