//! Rendering of persisted records into Letta's wire shapes (AgentState,
//! Block, the message union, Passage, Tool).

use kelpie_memory::{Block, Passage};
use kelpie_tools::{BuiltinTool, SEND_MESSAGE};
use serde_json::{json, Value};

use crate::actors::tool_store::{McpServerConfig, McpServerRecord, ToolRecord};
use crate::model::{AgentRecord, MessageBody, StoredMessage};
use kelpie_llm::ToolCall;

use crate::ids::{id_from_key, rfc3339_micros, rfc3339_seconds, uuid_part};

pub fn block_json(block: &Block) -> Value {
    json!({
        "id": block.id, "label": block.label, "value": block.value, "limit": block.limit,
        "description": block.description, "read_only": block.read_only, "metadata": {},
        "hidden": null, "tags": [], "project_id": null, "template_name": null, "is_template": false,
        "template_id": null, "base_template_id": null, "deployment_id": null, "entity_id": null,
        "preserve_on_migration": false, "created_by_id": null, "last_updated_by_id": null,
    })
}

pub fn builtin_tool_json(tool: &BuiltinTool) -> Value {
    json!({
        "id": tool.id, "tool_type": tool.tool_type, "description": tool.description, "source_type": "python",
        "name": tool.name, "tags": [tool.tool_type], "source_code": null, "json_schema": tool.json_schema,
        "args_json_schema": null, "return_char_limit": crate::limits::TOOL_RETURN_CHARS_MAX,
        "pip_requirements": null, "npm_requirements": null, "default_requires_approval": null,
        "enable_parallel_execution": false, "created_by_id": null, "last_updated_by_id": null,
        "metadata_": {}, "project_id": null,
    })
}

pub fn custom_tool_json(tool: &ToolRecord) -> Value {
    let mut metadata = tool.metadata.clone().unwrap_or_else(|| json!({}));
    let (tool_type, source_code) = match &tool.mcp {
        Some(source) => {
            if let Some(object) = metadata.as_object_mut() {
                object.insert(
                    "mcp".into(),
                    json!({"server_name": source.server_name, "server_id": source.server_id}),
                );
            }
            ("external_mcp", None)
        }
        None => ("custom", Some(&tool.source_code)),
    };
    json!({
        "id": tool.id, "tool_type": tool_type, "description": tool.description, "source_type": "python",
        "name": tool.name, "tags": tool.tags, "source_code": source_code, "json_schema": tool.json_schema,
        "args_json_schema": null, "return_char_limit": tool.return_char_limit,
        "pip_requirements": (!tool.pip_requirements.is_empty()).then_some(&tool.pip_requirements),
        "npm_requirements": null, "default_requires_approval": tool.default_requires_approval,
        "enable_parallel_execution": false, "created_by_id": null, "last_updated_by_id": null,
        "metadata_": metadata, "project_id": null,
    })
}

/// A `tool_return_message` of a call made outside any agent (`POST /v1/tools/run`).
pub fn loose_tool_return_json(id: &str, now_ms: u64, run: &kelpie_tools::ToolRun) -> Value {
    let lines = |text: &str| if text.is_empty() { Value::Null } else { json!([text]) };
    json!({
        "id": id, "date": rfc3339_seconds(now_ms), "name": null, "message_type": "tool_return_message",
        "otid": uuid_part(id), "sender_id": null, "step_id": null, "is_err": null, "seq_id": null,
        "run_id": null, "tool_return": run.result, "status": if run.ok { "success" } else { "error" },
        "tool_call_id": "null", "stdout": lines(&run.stdout), "stderr": lines(&run.stderr),
    })
}

/// What a secret is shown as when it is too short to show any of it.
pub const SECRET_MASK: &str = "****";
/// Characters of a secret's end shown, when it is long enough.
const SECRET_SHOWN_CHARS: usize = 4;
/// Shortest secret whose end is shown.
const SECRET_SHOWN_FROM_CHARS: usize = 12;

/// A secret as the API shows it: never whole, at most its last 4 characters.
pub fn mask_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < SECRET_SHOWN_FROM_CHARS {
        return SECRET_MASK.to_string();
    }
    let tail: String = chars[chars.len() - SECRET_SHOWN_CHARS..].iter().collect();
    format!("{SECRET_MASK}{tail}")
}

/// Letta's `StdioMCPServer`, `SSEMCPServer` or `StreamableHTTPMCPServer`,
/// secrets masked.
pub fn mcp_server_json(server: &McpServerRecord) -> Value {
    let masked = |map: &std::collections::BTreeMap<String, String>| -> Value {
        map.iter().map(|(k, v)| (k.clone(), json!(mask_secret(v)))).collect::<serde_json::Map<_, _>>().into()
    };
    match &server.config {
        McpServerConfig::Stdio { command, args, env } => json!({
            "id": server.id, "server_name": server.server_name, "mcp_server_type": "stdio",
            "command": command, "args": args, "env": masked(env),
        }),
        McpServerConfig::StreamableHttp(http) | McpServerConfig::Sse(http) => {
            let kind =
                if matches!(server.config, McpServerConfig::Sse(_)) { "sse" } else { "streamable_http" };
            json!({
                "id": server.id, "server_name": server.server_name, "mcp_server_type": kind,
                "server_url": http.server_url, "auth_header": http.auth_header,
                "auth_token": http.auth_token.as_deref().map(mask_secret),
                "custom_headers": masked(&http.custom_headers),
            })
        }
    }
}

pub fn llm_config_json(agent: &AgentRecord) -> Value {
    let llm = &agent.llm;
    json!({
        "model": llm.model, "display_name": llm.model, "model_endpoint_type": llm.provider,
        "model_endpoint": llm.endpoint, "provider_name": llm.handle.split_once('/').map_or(llm.provider.as_str(), |(provider, _)| provider),
        "provider_category": if llm.byok_provider.is_some() { "byok" } else { "base" },
        "model_wrapper": null, "context_window": llm.context_window, "put_inner_thoughts_in_kwargs": false,
        "handle": llm.handle, "temperature": llm.temperature, "max_tokens": llm.max_tokens,
        "enable_reasoner": false, "reasoning_effort": null, "max_reasoning_tokens": 0, "effort": null,
        "frequency_penalty": null, "compatibility_type": null, "verbosity": null, "tier": null,
        "parallel_tool_calls": false, "response_format": null, "strict": false, "return_logprobs": false,
        "top_logprobs": null, "return_token_ids": false, "tool_call_parser": null,
    })
}

/// Letta's `model_settings` of an agent: the settings of its LLM as the
/// provider's settings object (Anthropic's or, for every OpenAI-compatible
/// provider, OpenAI's). Kelpie asks for no reasoning or extended thinking,
/// no structured output and one tool call at a time, and says so.
pub fn model_settings_json(llm: &kelpie_llm::LlmSettings) -> Value {
    let common = json!({
        "max_output_tokens": llm.max_tokens, "parallel_tool_calls": false, "temperature": llm.temperature,
        "response_format": null, "strict": false,
    });
    let specific = if llm.provider == kelpie_llm::PROVIDER_ANTHROPIC {
        json!({"provider_type": "anthropic", "thinking": {"type": "disabled", "budget_tokens": 0},
               "effort": null, "verbosity": null})
    } else {
        json!({"provider_type": "openai", "reasoning": {"reasoning_effort": "none"}})
    };
    with(common, specific)
}

/// Letta's `embedding_endpoint_type` of an embedding handle: the provider
/// when Letta's enum has it, else "openai" (the built-in local embedding).
pub fn embedding_endpoint_type(handle: &str) -> &str {
    match handle.split_once('/') {
        Some(("anthropic" | "ollama" | "azure" | "mistral" | "together" | "vllm", _)) => {
            handle.split_once('/').map_or("openai", |(provider, _)| provider)
        }
        _ => "openai",
    }
}

pub fn embedding_config_json(agent: &AgentRecord) -> Value {
    embedding_settings_json(&agent.embedding)
}

/// Letta's `EmbeddingConfig` of `embedding`.
pub fn embedding_settings_json(embedding: &kelpie_llm::EmbeddingSettings) -> Value {
    json!({
        // Letta's enum has no in-process embedding; like Letta's own free
        // embedding, the built-in one reports "openai" (with no endpoint).
        "embedding_endpoint_type": embedding_endpoint_type(&embedding.handle),
        "embedding_endpoint": null,
        "embedding_model": embedding.model, "embedding_dim": embedding.dim, "embedding_chunk_size": 300,
        "handle": embedding.handle, "batch_size": 32,
        "azure_endpoint": null, "azure_version": null, "azure_deployment": null,
    })
}

/// Letta's `Source` of a folder as an agent holds it.
pub fn agent_folder_json(folder: &crate::files::AgentFolder) -> Value {
    json!({
        "id": folder.id, "name": folder.name, "description": folder.description,
        "instructions": folder.instructions, "metadata": folder.metadata,
        "embedding_config": embedding_settings_json(&folder.embedding),
        "organization_id": null, "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(folder.created_ms), "updated_at": rfc3339_micros(folder.updated_ms),
        "vector_db_provider": "native",
    })
}

/// Letta's `AgentState`; `tools` are the attached tools, already rendered.
pub fn agent_json(agent: &AgentRecord, tools: Vec<Value>) -> Value {
    let (files_open, window_chars) = agent.file_limits();
    let blocks: Vec<Value> = agent.memory.blocks().iter().map(block_json).collect();
    let core = json!({
        "id": agent.id, "name": agent.name, "system": agent.system, "agent_type": "letta_v1_agent",
        "description": agent.description, "metadata": agent.metadata, "tags": agent.tags,
        "created_at": rfc3339_micros(agent.created_ms), "updated_at": rfc3339_micros(agent.updated_ms),
        "created_by_id": null, "last_updated_by_id": null,
        "tool_rules": agent.tool_rules.iter().map(crate::tool_rules::ToolRule::to_json).collect::<Vec<_>>(),
        "message_ids": [],
        "llm_config": llm_config_json(agent), "embedding_config": embedding_config_json(agent),
        "model_settings": model_settings_json(&agent.llm), "model": agent.llm.handle, "embedding": agent.embedding.handle,
        "memory": {"agent_type": "letta_v1_agent", "git_enabled": false, "blocks": blocks, "file_blocks": [], "prompt_template": ""},
        "blocks": blocks, "tools": tools,
        "sources": agent.folders.iter().map(agent_folder_json).collect::<Vec<_>>(),
    });
    let rest = json!({
        "tool_exec_environment_variables": secrets_json(agent), "secrets": secrets_json(agent), "project_id": null, "template_id": null, "base_template_id": null, "deployment_id": null, "entity_id": null,
        "identity_ids": agent.identity_ids, "identities": [], "pending_approval": null, "message_buffer_autoclear": false,
        "enable_sleeptime": agent.enable_sleeptime, "multi_agent_group": null, "managed_group": null, "response_format": null,
        "last_run_completion": null, "last_run_duration_ms": null, "last_stop_reason": null,
        "timezone": "UTC", "max_files_open": files_open, "per_file_view_window_char_limit": window_chars, "hidden": null,
        "compaction_settings": crate::context::settings_json(agent),
    });
    with(core, rest)
}

fn envelope(message: &StoredMessage, message_type: &str) -> Value {
    json!({
        "id": message.id, "date": rfc3339_seconds(message.created_ms), "name": null,
        "message_type": message_type, "otid": uuid_part(&message.id), "sender_id": null,
        "step_id": message.step_id, "is_err": null, "seq_id": null, "run_id": message.run_id,
    })
}

fn with(mut base: Value, fields: Value) -> Value {
    if let (Some(base), Some(fields)) = (base.as_object_mut(), fields.as_object()) {
        base.extend(fields.clone());
    }
    base
}

/// A Letta message of `message_type` with the envelope of `message` and
/// `fields` (a streamed chunk carries the envelope of the message it becomes).
pub fn letta_chunk(message: &StoredMessage, message_type: &str, fields: Value) -> Value {
    with(envelope(message, message_type), fields)
}

/// The `message` argument of a `send_message` call, if it parses.
pub fn send_message_text(call: &ToolCall) -> Option<String> {
    let args: Value = serde_json::from_str(&call.arguments).ok()?;
    args.get("message").and_then(Value::as_str).map(str::to_string)
}

fn assistant_parts(
    message: &StoredMessage,
    content: &Option<String>,
    calls: &[ToolCall],
    awaiting_approval: bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    let text = content.as_deref().filter(|text| !text.trim().is_empty());
    match (text, calls.is_empty()) {
        (Some(text), true) => {
            out.push(with(envelope(message, "assistant_message"), json!({"content": text})))
        }
        (Some(text), false) => out.push(with(
            envelope(message, "reasoning_message"),
            json!({"reasoning": text, "source": "reasoner_model", "signature": null}),
        )),
        (None, _) => {}
    }
    if awaiting_approval {
        // Letta's approval request: the first held call, and all of them.
        let held: Vec<Value> = calls
            .iter()
            .map(|call| json!({"name": call.name, "arguments": call.arguments, "tool_call_id": call.id}))
            .collect();
        if let Some(first) = held.first() {
            out.push(with(
                envelope(message, "approval_request_message"),
                json!({"tool_call": first, "tool_calls": held}),
            ));
        }
        return out;
    }
    for call in calls {
        match send_message_text(call).filter(|_| call.name == SEND_MESSAGE) {
            Some(text) => out.push(with(envelope(message, "assistant_message"), json!({"content": text}))),
            None => {
                let tool_call =
                    json!({"name": call.name, "arguments": call.arguments, "tool_call_id": call.id});
                out.push(with(
                    envelope(message, "tool_call_message"),
                    json!({"tool_call": tool_call, "tool_calls": [tool_call]}),
                ));
            }
        }
    }
    out
}

/// A tool's captured output as Letta shows it: one string in a list, or
/// null when it printed nothing.
fn captured(text: &Option<String>) -> Value {
    match text.as_deref() {
        Some(text) if !text.is_empty() => json!([text]),
        _ => Value::Null,
    }
}

/// Letta's `AgentEnvironmentVariable` list of an agent's tool environment.
/// Values are secrets: never sent back, only their names.
fn secrets_json(agent: &AgentRecord) -> Vec<Value> {
    agent
        .secrets
        .keys()
        .map(|key| {
            json!({
                "id": id_from_key("agent-env", &format!("{}/{key}", agent.id)), "key": key, "value": "",
                "description": null, "agent_id": agent.id, "organization_id": null, "value_enc": null,
                "created_by_id": null, "last_updated_by_id": null, "created_at": null, "updated_at": null,
            })
        })
        .collect()
}

/// Renders `messages` (in page order) as Letta messages until at least
/// `limit` are rendered, whole stored messages only: the parts one stored
/// message renders as share its id, and a page that ended inside them
/// would make the next page (after that id) skip the rest. Parts come in
/// page order too (reversed when `descending`). Also how many stored
/// messages were used.
pub fn render_page<'m>(
    messages: impl IntoIterator<Item = &'m StoredMessage>,
    limit: usize,
    descending: bool,
) -> (Vec<Value>, usize) {
    let mut rendered = Vec::new();
    let mut used = 0;
    for message in messages {
        if rendered.len() >= limit {
            break;
        }
        let mut parts = letta_messages(message);
        if descending {
            parts.reverse();
        }
        rendered.extend(parts);
        used += 1;
    }
    (rendered, used)
}

/// One persisted message as zero or more Letta messages (a `send_message`
/// return is not shown, as Letta does not show it).
pub fn letta_messages(message: &StoredMessage) -> Vec<Value> {
    match &message.body {
        MessageBody::User { content } | MessageBody::Summary { content, .. } => {
            vec![with(envelope(message, "user_message"), json!({"content": content}))]
        }
        MessageBody::Assistant { content, tool_calls, awaiting_approval } => {
            assistant_parts(message, content, tool_calls, *awaiting_approval)
        }
        MessageBody::ApprovalResponse { decisions } => {
            let first = decisions.first();
            let (approve, reason) = match first.map(|d| &d.verdict) {
                Some(crate::model::ApprovalVerdict::Deny { reason }) => (false, reason.clone()),
                Some(crate::model::ApprovalVerdict::Approve { reason }) => (true, reason.clone()),
                _ => (true, None),
            };
            let approvals: Vec<Value> = decisions.iter().map(|d| d.to_json()).collect();
            vec![with(
                envelope(message, "approval_response_message"),
                json!({
                    "approval_request_id": first.map(|d| d.tool_call_id.clone()), "approve": approve,
                    "reason": reason, "approvals": approvals,
                }),
            )]
        }
        MessageBody::Tool { name, .. } if name == SEND_MESSAGE => vec![],
        MessageBody::Tool { tool_call_id, result, ok, stdout, stderr, .. } => vec![with(
            envelope(message, "tool_return_message"),
            json!({
                "tool_return": result, "status": if *ok { "success" } else { "error" },
                "tool_call_id": tool_call_id, "stdout": captured(stdout), "stderr": captured(stderr),
            }),
        )],
    }
}

/// A stored message as Letta's internal `Message` (the shape
/// `GET /v1/agents/{id}/context` lists), with its role and text.
pub fn internal_message_json(agent_id: &str, message: &StoredMessage) -> Value {
    let text = |text: &str| json!([{"type": "text", "text": text}]);
    let (role, content, tool_calls, tool_call_id, name) = match &message.body {
        MessageBody::User { content } => ("user", text(content), Value::Null, Value::Null, Value::Null),
        MessageBody::Summary { content, .. } => {
            ("summary", text(content), Value::Null, Value::Null, Value::Null)
        }
        MessageBody::ApprovalResponse { decisions } => {
            let approvals: Vec<Value> = decisions.iter().map(|d| d.to_json()).collect();
            (
                "approval",
                json!([{"type": "text", "text": Value::Array(approvals).to_string()}]),
                Value::Null,
                Value::Null,
                Value::Null,
            )
        }
        MessageBody::Assistant { content, tool_calls, .. } => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect();
            let content = content.as_deref().map_or(json!([]), text);
            ("assistant", content, Value::Array(calls), Value::Null, Value::Null)
        }
        MessageBody::Tool { tool_call_id, name, result, .. } => {
            ("tool", text(result), Value::Null, json!(tool_call_id), json!(name))
        }
    };
    json!({
        "id": message.id, "agent_id": agent_id, "role": role, "content": content, "name": name,
        "tool_calls": tool_calls, "tool_call_id": tool_call_id, "step_id": message.step_id,
        "run_id": message.run_id, "otid": uuid_part(&message.id),
        "created_at": rfc3339_micros(message.created_ms), "updated_at": rfc3339_micros(message.created_ms),
        "model": null, "created_by_id": null, "last_updated_by_id": null, "tool_returns": null, "group_id": null,
        "sender_id": null, "batch_item_id": null, "conversation_id": null, "is_err": null,
    })
}

/// Letta's `Group`.
pub fn group_json(group: &crate::actors::group_store::GroupRecord) -> Value {
    json!({
        "id": group.id, "manager_type": group.manager_type, "agent_ids": group.agent_ids,
        "description": group.description, "project_id": group.project_id, "template_id": null,
        "base_template_id": null, "deployment_id": null, "shared_block_ids": group.shared_block_ids,
        "manager_agent_id": group.manager_agent_id, "termination_token": group.termination_token,
        "max_turns": group.max_turns, "sleeptime_agent_frequency": group.sleeptime_agent_frequency,
        "turns_counter": group.turns_counter, "last_processed_message_id": group.last_processed_message_id,
        "max_message_buffer_length": group.max_message_buffer_length,
        "min_message_buffer_length": group.min_message_buffer_length, "hidden": group.hidden,
    })
}

pub fn passage_json(agent: &AgentRecord, passage: &Passage) -> Value {
    json!({
        "id": passage.id, "text": passage.text, "tags": passage.tags, "metadata": {},
        "embedding": passage.embedding, "embedding_config": embedding_config_json(agent),
        "created_at": rfc3339_micros(passage.created_ms), "updated_at": rfc3339_micros(passage.created_ms),
        "is_deleted": false, "archive_id": null, "source_id": null, "file_id": null, "file_name": null,
        "created_by_id": null, "last_updated_by_id": null, "organization_id": null,
    })
}

pub fn search_result_json(passage: &Passage) -> Value {
    json!({
        "id": passage.id, "content": passage.text, "tags": passage.tags,
        "timestamp": rfc3339_micros(passage.created_ms).replace('Z', "+00:00"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm(provider: &str) -> kelpie_llm::LlmSettings {
        kelpie_llm::LlmSettings {
            handle: format!("{provider}/m"),
            provider: provider.into(),
            model: "m".into(),
            endpoint: "http://127.0.0.1:1/v1".into(),
            context_window: 32_000,
            max_tokens: 2_048,
            temperature: 0.5,
            byok_provider: None,
        }
    }

    #[test]
    fn model_settings_are_the_providers_letta_settings_object() {
        assert_eq!(
            model_settings_json(&llm("openai")),
            json!({"provider_type": "openai", "max_output_tokens": 2_048, "temperature": 0.5,
                   "parallel_tool_calls": false, "response_format": null, "strict": false,
                   "reasoning": {"reasoning_effort": "none"}})
        );
        assert_eq!(
            model_settings_json(&llm(kelpie_llm::PROVIDER_ANTHROPIC)),
            json!({"provider_type": "anthropic", "max_output_tokens": 2_048, "temperature": 0.5,
                   "parallel_tool_calls": false, "response_format": null, "strict": false,
                   "thinking": {"type": "disabled", "budget_tokens": 0}, "effort": null, "verbosity": null})
        );
    }
}
