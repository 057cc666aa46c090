//! The agent loop: build the prompt ([`prompt`]), call the LLM with the
//! agent's tool schemas (its tokens streamed as partial messages when asked,
//! [`token_stream`]), run the custom tools the answer calls out of process,
//! persist the step through the actor (which runs the built-in tools in the
//! same transaction), and repeat until the agent replies or the step limit
//! is reached. The whole turn holds the agent's turn lock.

mod external;
mod prompt;
pub mod token_stream;

use std::sync::Arc;

use kelpie_core::Env;
use kelpie_llm::{ChatModel, ChatRequest, ChatResponse, EmbeddingSettings, TokenUsage, ToolCall};
use kelpie_tools::builtin::{ARCHIVAL_MEMORY_INSERT, ARCHIVAL_MEMORY_SEARCH};
use kelpie_tools::SEND_MESSAGE;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::sandbox_configs::SandboxConfigs;
use super::tools::ToolService;
use crate::actors::agent::{AgentCommand, AgentReply, StepInput};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::letta::letta_messages;
use crate::limits::{AGENT_STEPS_COUNT_DEFAULT, AGENT_STEPS_COUNT_MAX, PROMPT_MESSAGES_COUNT_MAX};
use crate::model::{MessageBody, StoredMessage, TextEmbedding};
use prompt::build_request;
use token_stream::{assistant_envelope, TokenRenderer, TurnEvents};

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

/// The step limit of a turn, after checking the turn's input.
pub(crate) fn check_turn_input(inputs: &[String], max_steps: Option<u32>) -> ServiceResult<u32> {
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

/// The text an archival tool call embeds: `content` to insert, `query` to search.
fn archival_text(call: &ToolCall) -> Option<String> {
    let field = match call.name.as_str() {
        ARCHIVAL_MEMORY_INSERT => "content",
        ARCHIVAL_MEMORY_SEARCH => "query",
        _ => return None,
    };
    let args: Value = serde_json::from_str(&call.arguments).ok()?;
    args[field].as_str().map(str::to_string)
}

pub struct Turns {
    actors: Arc<AgentActors>,
    tools: Arc<ToolService>,
    sandbox_configs: Arc<SandboxConfigs>,
    llm: Arc<dyn ChatModel>,
    env: Env,
}

impl Turns {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        tools: Arc<ToolService>,
        sandbox_configs: Arc<SandboxConfigs>,
        llm: Arc<dyn ChatModel>,
        env: Env,
    ) -> Self {
        Turns { actors, tools, sandbox_configs, llm, env }
    }

    /// Runs one turn for `inputs` (the user's messages). Each step's Letta
    /// messages go to `events` as soon as they are committed.
    pub async fn run(
        &self,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
        events: Option<&TurnEvents>,
    ) -> ServiceResult<TurnOutcome> {
        let run_id = new_id("run", self.env.rng.as_ref());
        self.run_as(&run_id, agent_id, inputs, max_steps, events).await
    }

    /// [`Self::run`] with the run id its messages are tagged with.
    pub async fn run_as(
        &self,
        run_id: &str,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
        events: Option<&TurnEvents>,
    ) -> ServiceResult<TurnOutcome> {
        let max_steps = check_turn_input(&inputs, max_steps)?;
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let lock = self.actors.turn_lock(agent_id);
        let _turn = lock.lock().await;
        let mut agent = self.actors.record(agent_id).await?;
        let AgentReply::Messages(mut history) =
            agent_ref.invoke_local(AgentCommand::Recent { count_max: PROMPT_MESSAGES_COUNT_MAX }).await?
        else {
            return Err(unexpected("recent messages"));
        };
        let custom = self.tools.custom_tools().await?;
        let sandbox = self.sandbox_configs.tool_settings().await?;
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
            let runner = self.tools.runner();
            let external =
                external::run_external_calls(runner, &agent, &custom, &sandbox, &answer.tool_calls).await;
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
                return Err(unexpected("commit step"));
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

    /// One LLM call of a step: streamed into `events` as partial messages
    /// carrying `envelope`'s id when the client asked for tokens, a plain
    /// call otherwise. Answers the completion and, when streamed, what the
    /// stream showed.
    async fn call_llm<'e>(
        &self,
        provider: &str,
        request: &ChatRequest,
        events: Option<&'e TurnEvents>,
        envelope: StoredMessage,
    ) -> ServiceResult<(ChatResponse, Option<TokenRenderer<'e>>)> {
        let Some(events) = events.filter(|events| events.stream_tokens) else {
            return Ok((self.llm.chat(provider, request).await?, None));
        };
        let mut renderer = TokenRenderer::new(&events.sender, envelope, !request.tools.is_empty());
        let answer =
            self.llm.chat_streaming(provider, request, &mut |delta| renderer.on_delta(delta)).await?;
        Ok((answer, Some(renderer)))
    }

    /// Embeddings of the texts the archival tools among `calls` will store
    /// or search for, so the actor needs no network during the step.
    async fn embed_tool_texts(
        &self,
        settings: &EmbeddingSettings,
        calls: &[ToolCall],
    ) -> ServiceResult<Vec<TextEmbedding>> {
        let texts: Vec<String> = calls.iter().filter_map(archival_text).collect();
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self.llm.embed(settings, &texts).await?;
        Ok(texts.into_iter().zip(vectors).collect())
    }
}
