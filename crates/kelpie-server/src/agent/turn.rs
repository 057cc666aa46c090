//! The agent loop: build the prompt (system prompt, rendered core memory,
//! recent messages within the context window), call the LLM with the
//! agent's tool schemas, persist the step through the actor (which runs the
//! built-in tools in the same transaction), and repeat until the agent
//! replies or the step limit is reached.

use kelpie_tools::{builtin_tools, SEND_MESSAGE};
use serde_json::{json, Value};

use kelpie_tools::python::{run_tool, TOOL_EXECUTION_TIMEOUT_MS};

use super::actor::{AgentCommand, AgentReply, ExternalResult, StepInput};
use super::letta::letta_messages;
use super::model::{AgentRecord, MessageBody, StoredMessage, ToolCallRecord};
use super::service::{AgentService, ServiceError, ServiceResult};
use super::token_stream::{assistant_envelope, TokenRenderer, TurnEvents};
use super::tool_store::ToolRecord;
use super::{AGENT_STEPS_COUNT_DEFAULT, AGENT_STEPS_COUNT_MAX, PROMPT_MESSAGES_COUNT_MAX};
use crate::ids::new_id;
use crate::llm::{ChatRequest, TokenUsage};

/// Characters per token assumed when fitting messages into the context window.
const CHARS_PER_TOKEN_COUNT: u64 = 4;
/// Share of the context window (percent) the prompt may fill; the rest is
/// left for the answer.
const PROMPT_WINDOW_PERCENT_MAX: u64 = 75;

/// What a turn produced.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    pub messages: Vec<Value>,
    pub stop_reason: &'static str,
    pub usage: TokenUsage,
    pub step_count: u32,
}

impl TurnOutcome {
    pub fn usage_json(&self) -> Value {
        let total = self.usage.prompt_tokens + self.usage.completion_tokens;
        json!({
            "message_type": "usage_statistics", "completion_tokens": self.usage.completion_tokens,
            "prompt_tokens": self.usage.prompt_tokens, "total_tokens": total, "step_count": self.step_count,
            "run_ids": null, "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
            "context_tokens": total,
        })
    }

    pub fn stop_reason_json(&self) -> Value {
        json!({"message_type": "stop_reason", "stop_reason": self.stop_reason})
    }
}

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

/// The custom tools attached to `agent` (a deleted one is skipped).
fn attached_custom(agent: &AgentRecord, custom: &[ToolRecord]) -> Vec<ToolRecord> {
    custom.iter().filter(|tool| agent.tool_ids.contains(&tool.id)).cloned().collect()
}

fn clip_chars(text: String, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text;
    }
    text.chars().take(chars_max).collect()
}

/// Runs the calls of custom tools out of process, one `python3` per call,
/// before the step is committed; their results are committed with it. A
/// failure or timeout is a failed tool result the LLM sees.
async fn run_custom_calls(calls: &[ToolCallRecord], attached: &[ToolRecord]) -> Vec<ExternalResult> {
    let mut results = Vec::new();
    for call in calls {
        let Some(tool) = attached.iter().find(|tool| tool.name == call.name) else { continue };
        let outcome = match serde_json::from_str::<Value>(&call.arguments) {
            Ok(args @ Value::Object(_)) => {
                run_tool(&tool.source_code, &tool.name, &args, TOOL_EXECUTION_TIMEOUT_MS)
                    .await
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!("arguments of {} are not a JSON object", call.name)),
        };
        let (result, ok) = match outcome {
            Ok(text) => (text, true),
            Err(text) => (text, false),
        };
        let result = clip_chars(result, tool.return_char_limit);
        results.push(ExternalResult { tool_call_id: call.id.clone(), result, ok });
    }
    results
}

fn build_request(
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

/// The step limit of a turn, after checking the turn's input.
pub(super) fn check_turn_input(inputs: &[String], max_steps: Option<u32>) -> ServiceResult<u32> {
    let max_steps = max_steps.unwrap_or(AGENT_STEPS_COUNT_DEFAULT);
    if max_steps == 0 || max_steps > AGENT_STEPS_COUNT_MAX {
        return Err(ServiceError::Invalid(format!(
            "max_steps {max_steps} is outside 1..={AGENT_STEPS_COUNT_MAX}"
        )));
    }
    if inputs.is_empty() || inputs.iter().any(|text| text.trim().is_empty()) {
        return Err(ServiceError::Invalid("messages must hold at least one non-empty user message".into()));
    }
    Ok(max_steps)
}

/// Adds a committed step's Letta messages (not the user's) to the outcome
/// and to the stream, if any, except what its tokens already showed.
fn emit_step(
    outcome: &mut TurnOutcome,
    messages: &[StoredMessage],
    events: Option<&TurnEvents>,
    streamed: Option<&TokenRenderer<'_>>,
) {
    for message in messages.iter().filter(|m| !matches!(m.body, MessageBody::User { .. })) {
        let assistant = matches!(message.body, MessageBody::Assistant { .. });
        for rendered in letta_messages(message) {
            let shown = assistant && streamed.is_some_and(|tokens| tokens.covers(&rendered));
            if let Some(events) = events.filter(|_| !shown) {
                // A client that went away does not stop the turn.
                let _ = events.sender.send(rendered.clone());
            }
            outcome.messages.push(rendered);
        }
    }
}

impl AgentService {
    /// Runs one turn for `inputs` (the user's messages). Each step's Letta
    /// messages go to `events` as soon as they are committed.
    pub async fn run_turn(
        &self,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
        events: Option<&TurnEvents>,
    ) -> ServiceResult<TurnOutcome> {
        let run_id = new_id("run", self.env.rng.as_ref());
        self.run_turn_as(&run_id, agent_id, inputs, max_steps, events).await
    }

    /// [`Self::run_turn`] with the run id its messages are tagged with.
    pub async fn run_turn_as(
        &self,
        run_id: &str,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
        events: Option<&TurnEvents>,
    ) -> ServiceResult<TurnOutcome> {
        let max_steps = check_turn_input(&inputs, max_steps)?;
        let agent_ref = self.agent_ref(agent_id)?;
        let lock = self.turn_lock(agent_id);
        let _turn = lock.lock().await;
        let mut agent = self.record(agent_id).await?;
        let AgentReply::Messages(mut history) =
            agent_ref.invoke_local(AgentCommand::Recent { count_max: PROMPT_MESSAGES_COUNT_MAX }).await?
        else {
            return Err(ServiceError::Invalid("unexpected reply".into()));
        };
        let custom = self.tools.custom_tools().await?;
        let mut pending = inputs;
        let mut outcome = TurnOutcome {
            messages: Vec::new(),
            stop_reason: "max_steps",
            usage: TokenUsage::default(),
            step_count: 0,
        };
        while outcome.step_count < max_steps {
            let step_id = new_id("step", self.env.rng.as_ref());
            let assistant_message_id = new_id("message", self.env.rng.as_ref());
            let now_ms = self.env.clock.wall_ms();
            let envelope = assistant_envelope(&assistant_message_id, run_id, &step_id, now_ms);
            let request = build_request(&agent, &custom, &history, &pending, now_ms);
            let (answer, streamed) = self.call_llm(&agent.llm.provider, &request, events, envelope).await?;
            outcome.step_count += 1;
            outcome.usage.prompt_tokens += answer.usage.prompt_tokens;
            outcome.usage.completion_tokens += answer.usage.completion_tokens;
            let replied = answer.tool_calls.is_empty()
                || answer.tool_calls.iter().any(|call| call.name == SEND_MESSAGE);
            let external = run_custom_calls(&answer.tool_calls, &attached_custom(&agent, &custom)).await;
            let embeddings = self.embed_tool_texts(&agent.embedding, &answer.tool_calls).await?;
            let step = StepInput {
                run_id: run_id.to_string(),
                step_id,
                user_messages: std::mem::take(&mut pending),
                assistant: MessageBody::Assistant { content: answer.content, tool_calls: answer.tool_calls },
                assistant_message_id,
                external,
                embeddings,
            };
            let AgentReply::Step { agent: updated, messages } =
                agent_ref.invoke_local(AgentCommand::CommitStep(Box::new(step))).await?
            else {
                return Err(ServiceError::Invalid("unexpected reply".into()));
            };
            agent = *updated;
            emit_step(&mut outcome, &messages, events, streamed.as_ref());
            history.extend(messages);
            if replied {
                outcome.stop_reason = "end_turn";
                break;
            }
        }
        Ok(outcome)
    }
}
