//! The prompt of one step: the system message (system prompt, rendered
//! core memory, live working memory, statistics), the newest messages that
//! fit the context window, the pending user messages, and the schemas of the
//! agent's tools, in OpenAI's chat shape (the Anthropic client translates).

use kelpie_llm::ChatRequest;
use kelpie_tools::builtin_tools;
use serde_json::{json, Value};

use crate::actors::tool_store::ToolRecord;
use crate::limits::PROMPT_MESSAGES_COUNT_MAX;
use crate::model::{AgentRecord, MessageBody, StoredMessage};

/// Characters per token assumed when fitting messages into the context window.
const CHARS_PER_TOKEN_COUNT: u64 = 4;
/// Share of the context window (percent) the prompt may fill; the rest is
/// left for the answer.
const PROMPT_WINDOW_PERCENT_MAX: u64 = 75;

fn openai_message(message: &StoredMessage) -> Value {
    match &message.body {
        MessageBody::User { content } => json!({"role": "user", "content": content}),
        MessageBody::Assistant { content, tool_calls } => {
            let mut out = json!({"role": "assistant", "content": content});
            if !tool_calls.is_empty() {
                out["tool_calls"] = tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
            out
        }
        MessageBody::Tool { tool_call_id, result, .. } => {
            json!({"role": "tool", "tool_call_id": tool_call_id, "content": result})
        }
    }
}

/// The system message: prompt, core memory, working memory live at `now_ms`
/// (from the service's clock) and statistics.
fn system_text(agent: &AgentRecord, shown: usize, now_ms: u64) -> String {
    format!(
        "{}\n\n<memory_blocks>\n{}</memory_blocks>\n{}<memory_metadata>\nRecent messages in view: {shown}\nWorking memory entries: {}\n</memory_metadata>",
        agent.system,
        agent.memory.render(),
        agent.working.render(now_ms),
        agent.working.len(now_ms),
    )
}

/// The newest messages that fit the window, starting at a user message so
/// no tool result is cut from its call.
fn fit_history<'a>(
    agent: &AgentRecord,
    history: &'a [StoredMessage],
    extra_chars: u64,
    now_ms: u64,
) -> &'a [StoredMessage] {
    let budget_chars = agent.llm.context_window * CHARS_PER_TOKEN_COUNT * PROMPT_WINDOW_PERCENT_MAX / 100;
    let mut used = extra_chars + system_text(agent, 0, now_ms).len() as u64;
    let mut start = history.len();
    for (index, message) in history.iter().enumerate().rev().take(PROMPT_MESSAGES_COUNT_MAX) {
        used += openai_message(message).to_string().len() as u64;
        if used > budget_chars {
            break;
        }
        start = index;
    }
    while start < history.len() && !matches!(history[start].body, MessageBody::User { .. }) {
        start += 1;
    }
    &history[start..]
}

fn tool_schemas(agent: &AgentRecord, custom: &[ToolRecord]) -> Vec<Value> {
    let builtins = builtin_tools();
    agent
        .tool_ids
        .iter()
        .filter_map(|id| match builtins.iter().find(|tool| tool.id == id) {
            Some(builtin) => Some(builtin.json_schema.clone()),
            None => custom.iter().find(|tool| &tool.id == id).map(|tool| tool.json_schema.clone()),
        })
        .collect()
}

pub(super) fn build_request(
    agent: &AgentRecord,
    custom: &[ToolRecord],
    history: &[StoredMessage],
    pending: &[String],
    now_ms: u64,
) -> ChatRequest {
    let pending_chars: u64 = pending.iter().map(|text| text.len() as u64).sum();
    let shown = fit_history(agent, history, pending_chars, now_ms);
    let mut messages = vec![json!({"role": "system", "content": system_text(agent, shown.len(), now_ms)})];
    messages.extend(shown.iter().map(openai_message));
    messages.extend(pending.iter().map(|text| json!({"role": "user", "content": text})));
    ChatRequest {
        model: agent.llm.model.clone(),
        messages,
        tools: tool_schemas(agent, custom),
        max_tokens: agent.llm.max_tokens,
        temperature: agent.llm.temperature,
    }
}
