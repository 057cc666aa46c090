//! The agent loop: build the prompt ([`prompt`]), call the LLM with the
//! agent's tool schemas (its tokens streamed as partial messages when asked,
//! [`token_stream`]), run the custom tools the answer calls out of process,
//! persist the step through the actor (which runs the built-in tools in the
//! same transaction), and repeat until the agent replies or the step limit
//! is reached. The whole turn holds the agent's turn lock.

pub mod compaction;
mod external;
mod prompt;
pub mod token_stream;

use std::sync::Arc;

use futures::future::{BoxFuture, Shared};
use kelpie_core::Env;
use kelpie_llm::{
    ChatModel, ChatRequest, ChatResponse, EmbeddingSettings, LlmSettings, TokenUsage, ToolCall,
};
use kelpie_runtime::ActorRef;
use kelpie_tools::builtin::{ARCHIVAL_MEMORY_INSERT, ARCHIVAL_MEMORY_SEARCH};
use kelpie_tools::SEND_MESSAGE;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::agent_files::AgentFiles;
use super::archives::Archives;
use super::sandbox_configs::SandboxConfigs;
use super::tools::ToolService;
use crate::actors::agent::{
    AgentActor, AgentCommand, AgentReply, ApprovalInput, ExternalResult, StepInput, TagFilter,
};
use crate::actors::tool_store::ToolRecord;
use crate::context::{self, SharedMessage};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{new_id, new_message_id, step_id};
use crate::letta::letta_messages;
use crate::limits::{AGENT_STEPS_COUNT_DEFAULT, AGENT_STEPS_COUNT_MAX, PROMPT_MESSAGES_COUNT_MAX};
use crate::model::{
    AgentRecord, ApprovalDecision, ApprovalVerdict, ArchiveHits, CompactionMode, CompactionSettings,
    MessageBody, RunEnd, RunStart, StepTiming, StoredMessage, TextEmbedding,
};
use crate::requests::SummarizeRequest;
use crate::tool_rules::{AfterStep, RuleSolver};
use compaction::{Compacted, CompactionInput};
use prompt::PromptParts;
use token_stream::{assistant_envelope, TokenRenderer, TurnEvents};

/// The run a turn is, and what its commits wait for: the run being found
/// by its id (see [`crate::service::runs`]), so no commit makes a run
/// visible that its id does not lead to.
pub struct TurnRun {
    pub start: RunStart,
    /// Resolves once the run can be stored: `Err` with the reason when it
    /// cannot (then the turn stores nothing and fails).
    pub begun: Shared<BoxFuture<'static, Result<(), String>>>,
    /// Told once the turn has read its agent (what a run not yet stored
    /// waits for before it records where it is: a turn for an id that names
    /// no agent records nothing); dropped untold when the turn ends first.
    pub agent_read: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl TurnRun {
    /// The turn read its agent: a run not yet stored may now be.
    fn agent_was_read(&self) {
        if let Some(read) = self.take_agent_read() {
            let _ = read.send(());
        }
    }

    /// The turn is over (or never read its agent): a run not yet stored
    /// and not yet allowed to be stays unstored.
    pub fn close(&self) {
        drop(self.take_agent_read());
    }

    fn take_agent_read(&self) -> Option<tokio::sync::oneshot::Sender<()>> {
        self.agent_read.lock().unwrap_or_else(|poison| poison.into_inner()).take()
    }
}

/// The parts of an agent's next prompt ([`Turns::next_prompt`]).
struct NextPrompt {
    agent: AgentRecord,
    custom: Vec<ToolRecord>,
    window: Window,
    shown: usize,
    hidden: u64,
    now_ms: u64,
}

/// What a turn produced.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    /// The run the turn is.
    pub run_id: String,
    pub messages: Vec<Value>,
    pub stop_reason: &'static str,
    pub usage: TokenUsage,
    pub step_count: u32,
    /// Steps of the run given an id so far (the next step's index).
    pub steps_begun: usize,
    /// The run's end was committed with its last step.
    pub run_ended: bool,
    /// The group the agent manages, when it has `enable_sleeptime` set:
    /// its sleeptime agents may follow the turn (see `service::groups`).
    pub sleeptime_group: Option<String>,
    /// The runs started after the turn (sleeptime agents'), named in the
    /// usage's `run_ids` after the turn's own.
    pub follow_up_run_ids: Vec<String>,
}

impl TurnOutcome {
    fn new(run_id: &str) -> Self {
        TurnOutcome {
            run_id: run_id.to_string(),
            run_ended: false,
            messages: Vec::new(),
            stop_reason: "max_steps",
            usage: TokenUsage::default(),
            step_count: 0,
            steps_begun: 0,
            sleeptime_group: None,
            follow_up_run_ids: Vec::new(),
        }
    }

    pub fn usage_json(&self) -> Value {
        let total = self.usage.prompt_tokens + self.usage.completion_tokens;
        let mut run_ids = vec![self.run_id.clone()];
        run_ids.extend(self.follow_up_run_ids.iter().cloned());
        json!({
            "message_type": "usage_statistics", "completion_tokens": self.usage.completion_tokens,
            "prompt_tokens": self.usage.prompt_tokens, "total_tokens": total, "step_count": self.step_count,
            "run_ids": run_ids, "cached_input_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
            "context_tokens": total,
        })
    }

    pub fn stop_reason_json(&self) -> Value {
        json!({"message_type": "stop_reason", "stop_reason": self.stop_reason})
    }
}

/// The step limit of a turn, after checking the turn's input.
pub(crate) fn check_turn_input(inputs: &[String], max_steps: Option<u32>) -> ServiceResult<u32> {
    let max_steps = check_max_steps(max_steps)?;
    if inputs.is_empty() || inputs.iter().any(|text| text.trim().is_empty()) {
        return Err(ServiceError::Invalid("messages must hold at least one non-empty user message".into()));
    }
    Ok(max_steps)
}

/// `max_steps`, or the default, within its range.
fn check_max_steps(max_steps: Option<u32>) -> ServiceResult<u32> {
    let max_steps = max_steps.unwrap_or(AGENT_STEPS_COUNT_DEFAULT);
    if max_steps == 0 || max_steps > AGENT_STEPS_COUNT_MAX {
        return Err(ServiceError::Invalid(format!(
            "max_steps {max_steps} is outside 1..={AGENT_STEPS_COUNT_MAX}"
        )));
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

/// Compactions one step may run before it sends what fits.
const STEP_COMPACTIONS_COUNT_MAX: u32 = 3;
/// Times a step compacts everything and retries after the provider refused
/// its prompt as too long.
const OVERFLOW_RETRIES_COUNT_MAX: u32 = 2;

/// The context window as a turn holds it between steps.
struct Window {
    /// In-context messages, oldest first, shared with the agent's cached
    /// window (each printed for the prompt once).
    history: Vec<SharedMessage>,
    /// The summary message of what left the window.
    summary: Option<String>,
    summary_content: Option<String>,
    /// Messages stored outside the window.
    hidden: u64,
    /// The conversation the window is of; `None`: the agent's own history.
    conversation: Option<String>,
}

fn prompt_parts<'a>(
    agent: &'a AgentRecord,
    custom: &'a [ToolRecord],
    window: &'a Window,
    pending: &'a [String],
    now_ms: u64,
) -> PromptParts<'a> {
    PromptParts {
        agent,
        custom,
        history: &window.history,
        summary: window.summary_content.as_deref(),
        hidden: window.hidden,
        pending,
        now_ms,
    }
}

pub struct Turns {
    actors: Arc<AgentActors>,
    agent_files: Arc<AgentFiles>,
    archives: Arc<Archives>,
    tools: Arc<ToolService>,
    sandbox_configs: Arc<SandboxConfigs>,
    llm: Arc<dyn ChatModel>,
    providers: Arc<crate::service::providers::Providers>,
    env: Env,
}

impl Turns {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        (agent_files, archives): (Arc<AgentFiles>, Arc<Archives>),
        tools: Arc<ToolService>,
        sandbox_configs: Arc<SandboxConfigs>,
        llm: Arc<dyn ChatModel>,
        providers: Arc<crate::service::providers::Providers>,
        env: Env,
    ) -> Self {
        Turns { actors, agent_files, archives, tools, sandbox_configs, llm, providers, env }
    }

    /// The context window of agent `agent_ref`'s own history, or of its
    /// conversation `conversation`, as stored.
    async fn window(
        &self,
        agent_ref: &ActorRef<AgentActor>,
        conversation: Option<&str>,
    ) -> ServiceResult<Window> {
        let command = AgentCommand::InContext {
            count_max: PROMPT_MESSAGES_COUNT_MAX,
            conversation: conversation.map(str::to_string),
        };
        let AgentReply::InContext { messages, summary, summary_content, counts } =
            agent_ref.invoke_local(command).await?
        else {
            return Err(unexpected("context window"));
        };
        let hidden = counts.messages.saturating_sub(messages.len() as u64);
        let conversation = conversation.map(str::to_string);
        Ok(Window { history: messages, summary, summary_content, hidden, conversation })
    }

    /// The agent as a turn in `conversation` sees it: with the
    /// conversation's model when it names one (Letta's conversation
    /// `model`), keeping the agent's context window unless the model's is
    /// smaller.
    async fn history_agent(&self, agent_id: &str, conversation: Option<&str>) -> ServiceResult<AgentRecord> {
        let mut agent = self.actors.record(agent_id).await?;
        let Some(id) = conversation else { return Ok(agent) };
        let command = AgentCommand::GetConversation { id: id.to_string(), count_max: 1 };
        let AgentReply::Conversation { record, .. } = self.actors.invoke(agent_id, command).await? else {
            return Err(unexpected("get conversation"));
        };
        if let Some(handle) = record.model.as_deref().filter(|handle| *handle != agent.llm.handle) {
            let mut llm = self.providers.resolve_llm(Some(handle)).await?;
            llm.context_window = llm.context_window.min(agent.llm.context_window);
            agent.llm = llm;
        }
        Ok(agent)
    }

    /// The lock that serializes the turns of one history: an agent's
    /// conversations take turns at the same time, each one at a time.
    fn turn_lock(&self, agent_id: &str, conversation: Option<&str>) -> Arc<tokio::sync::Mutex<()>> {
        match conversation {
            None => self.actors.turn_lock(agent_id),
            Some(id) => self.actors.turn_lock(&format!("{agent_id}/{id}")),
        }
    }

    /// Compacts `window` with `settings` (for a prompt whose other parts
    /// take `fixed_tokens`); the compaction, or `None` when nothing could be
    /// summarized.
    async fn compact(
        &self,
        agent_ref: &ActorRef<AgentActor>,
        agent: &AgentRecord,
        window: &mut Window,
        fixed_tokens: u64,
        settings: &CompactionSettings,
    ) -> ServiceResult<Option<Compacted>> {
        let input = CompactionInput {
            agent,
            history: &window.history,
            previous_summary: window.summary.as_deref(),
            fixed_tokens,
            settings,
            now_ms: self.env.clock.wall_ms(),
            conversation: window.conversation.as_deref(),
        };
        let done = compaction::compact(self.llm.as_ref(), &self.providers, agent_ref, input).await?;
        if let Some(done) = &done {
            window.hidden += (window.history.len() - done.kept.len()) as u64;
            window.history = done.kept.clone();
            window.summary = Some(done.summary.clone());
            if let MessageBody::Summary { content, .. } = &done.message.body {
                window.summary_content = Some(content.clone());
            }
        }
        Ok(done)
    }

    /// Runs one turn for `inputs` (the user's messages) as run `run`. Each
    /// step's Letta messages go to `events` as soon as they are committed.
    /// A run not already begun is begun by its first step's commit; it is
    /// ended here only when `outcome.run_ended` (else by the caller,
    /// [`crate::service::runs::Runs`]).
    pub async fn run_as(
        &self,
        run: &TurnRun,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
        events: Option<&TurnEvents>,
    ) -> ServiceResult<TurnOutcome> {
        let max_steps = check_turn_input(&inputs, max_steps)?;
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let conversation = run.start.conversation_id.as_deref();
        let lock = self.turn_lock(agent_id, conversation);
        let _turn = lock.lock().await;
        let agent = self.history_agent(agent_id, conversation).await?;
        run.agent_was_read();
        let mut window = self.window(&agent_ref, conversation).await?;
        if held_calls(&window).is_some() {
            return Err(ServiceError::Refused(
                "a tool call is waiting for approval: Please approve or deny the pending request before continuing"
                    .into(),
            ));
        }
        let custom = self.tools.custom_tools().await?;
        let sandbox = self.sandbox_configs.tool_settings().await?;
        let mut outcome = TurnOutcome::new(&run.start.run_id);
        outcome.sleeptime_group =
            agent.managed_group.clone().filter(|_| agent.enable_sleeptime == Some(true));
        let turn = TurnParts { run, agent_ref: &agent_ref, custom: &custom, sandbox: &sandbox, events };
        self.steps(&turn, agent, &mut window, inputs, max_steps, &mut outcome).await?;
        Ok(outcome)
    }

    /// Answers the agent's pending approval request (Letta's `approval`
    /// message): approved calls run, denied ones tell the model why, calls
    /// the client ran take its return; then the turn goes on as any turn.
    pub async fn answer_approval(
        &self,
        run: &TurnRun,
        agent_id: &str,
        answer: ApprovalAnswer,
        max_steps: Option<u32>,
        events: Option<&TurnEvents>,
    ) -> ServiceResult<TurnOutcome> {
        let max_steps = check_max_steps(max_steps)?;
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let conversation = run.start.conversation_id.as_deref();
        let lock = self.turn_lock(agent_id, conversation);
        let _turn = lock.lock().await;
        let agent = self.history_agent(agent_id, conversation).await?;
        run.agent_was_read();
        let mut window = self.window(&agent_ref, conversation).await?;
        let held = held_calls(&window)
            .ok_or_else(|| ServiceError::Refused("No tool call is currently awaiting approval".into()))?;
        let decisions = answer.decisions_for(&held).map_err(ServiceError::Refused)?;
        let custom = self.tools.custom_tools().await?;
        let sandbox = self.sandbox_configs.tool_settings().await?;
        let approved: Vec<ToolCall> = held
            .iter()
            .filter(|call| {
                decisions.iter().any(|d| {
                    d.tool_call_id == call.id && matches!(d.verdict, ApprovalVerdict::Approve { .. })
                })
            })
            .cloned()
            .collect();
        let mut external =
            external::run_external_calls(&self.tools, &agent, &custom, &sandbox, &approved).await;
        let (file_results, file_ops) = self.agent_files.run_calls(&agent, &approved).await;
        external.extend(file_results);
        for decision in &decisions {
            let (result, ok) = match &decision.verdict {
                ApprovalVerdict::Approve { .. } => continue,
                ApprovalVerdict::Deny { reason } => (
                    format!(
                        "Error: request to call tool denied. User reason: {}",
                        reason.as_deref().unwrap_or("none given")
                    ),
                    false,
                ),
                ApprovalVerdict::ClientReturn { tool_return, ok } => (tool_return.clone(), *ok),
            };
            external.push(ExternalResult {
                tool_call_id: decision.tool_call_id.clone(),
                result,
                ok,
                stdout: None,
                stderr: None,
            });
        }
        let embeddings = self.embed_tool_texts(&agent.embedding, &approved).await?;
        let archive_hits = self.search_archives(&agent, &approved, &embeddings).await?;
        let input = ApprovalInput {
            run: run.start.clone(),
            step_id: step_id(&run.start.run_id, 0),
            decisions,
            calls: held,
            external,
            embeddings,
            archive_hits,
            file_ops,
        };
        run.begun.clone().await.map_err(|reason| ServiceError::Core(kelpie_core::Error::Internal(reason)))?;
        let AgentReply::Step { agent, messages } =
            agent_ref.invoke_local(AgentCommand::CommitApproval(Box::new(input))).await?
        else {
            return Err(unexpected("commit approval"));
        };
        let mut outcome = TurnOutcome::new(&run.start.run_id);
        outcome.steps_begun = 1;
        emit_step(&mut outcome, &messages, events, None);
        window.history.extend(messages.into_iter().map(SharedMessage::from));
        let turn = TurnParts { run, agent_ref: &agent_ref, custom: &custom, sandbox: &sandbox, events };
        self.steps(&turn, *agent, &mut window, Vec::new(), max_steps, &mut outcome).await?;
        Ok(outcome)
    }

    /// The agent loop: steps until the agent replies, a rule ends the turn,
    /// a call waits for approval, or `max_steps`.
    async fn steps(
        &self,
        turn: &TurnParts<'_>,
        mut agent: AgentRecord,
        window: &mut Window,
        mut pending: Vec<String>,
        max_steps: u32,
        outcome: &mut TurnOutcome,
    ) -> ServiceResult<()> {
        let (agent_ref, custom, events) = (turn.agent_ref, turn.custom, turn.events);
        let mut rules = RuleSolver::new(agent.tool_rules.clone());
        while outcome.step_count < max_steps {
            let step_id = step_id(&outcome.run_id, outcome.steps_begun);
            outcome.steps_begun += 1;
            let clock = &self.env.clock;
            let (start_ms, start_ns) = (clock.wall_ms(), clock.monotonic_ns());
            let assistant_message_id = new_message_id(&agent.id, self.env.rng.as_ref());
            let attached = attached_names(&agent, custom);
            let step_agent = offered_tools(&agent, custom, &rules, &attached);
            let (answer, streamed) = self
                .step_answer(
                    agent_ref,
                    step_agent.as_ref(),
                    custom,
                    window,
                    &pending,
                    (&turn.run.start.run_id, &step_id, &assistant_message_id),
                    events,
                    outcome,
                )
                .await?;
            let llm_request_ns = clock.monotonic_ns().saturating_sub(start_ns);
            outcome.step_count += 1;
            outcome.usage.prompt_tokens += answer.usage.prompt_tokens;
            outcome.usage.completion_tokens += answer.usage.completion_tokens;
            let (allowed_calls, refused) = screen_calls(&rules, &attached, &answer.tool_calls);
            let hold = allowed_calls
                .iter()
                .any(|call| crate::tool_rules::requires_approval(&agent.tool_rules, &call.name));
            let replied =
                answer.tool_calls.is_empty() || allowed_calls.iter().any(|call| call.name == SEND_MESSAGE);
            let tools_start_ns = clock.monotonic_ns();
            let (external, embeddings, file_ops) = match hold {
                true => (Vec::new(), Vec::new(), Vec::new()),
                false => {
                    let mut external = external::run_external_calls(
                        &self.tools,
                        &agent,
                        custom,
                        turn.sandbox,
                        &allowed_calls,
                    )
                    .await;
                    let (file_results, file_ops) = self.agent_files.run_calls(&agent, &allowed_calls).await;
                    external.extend(file_results);
                    external.extend(refused.iter().cloned());
                    (external, self.embed_tool_texts(&agent.embedding, &answer.tool_calls).await?, file_ops)
                }
            };
            let archive_hits = self.search_archives(&agent, &allowed_calls, &embeddings).await?;
            let tool_execution_ns = clock.monotonic_ns().saturating_sub(tools_start_ns);
            let refused_ids: Vec<String> = refused.iter().map(|r| r.tool_call_id.clone()).collect();
            // Without tool rules the loop knows now whether the turn ends
            // with this step, and the run's end rides on its commit.
            let end = match (hold, rules.is_empty(), replied) {
                (true, _, _) => Some("requires_approval"),
                (false, true, true) => Some("end_turn"),
                (false, true, false) if outcome.step_count >= max_steps => Some("max_steps"),
                _ => None,
            };
            let step = StepInput {
                run: turn.run.start.clone(),
                step_id,
                model: Some(agent.llm.handle.clone()),
                prompt_tokens: answer.usage.prompt_tokens,
                completion_tokens: answer.usage.completion_tokens,
                end: end.map(RunEnd::completed),
                user_messages: std::mem::take(&mut pending),
                assistant: MessageBody::Assistant {
                    content: answer.content,
                    tool_calls: answer.tool_calls,
                    awaiting_approval: false,
                },
                assistant_message_id,
                external,
                embeddings,
                archive_hits,
                hold_calls: hold,
                timing: Some(StepTiming {
                    start_ms,
                    llm_request_ns,
                    tool_execution_ns,
                    step_ns: clock.monotonic_ns().saturating_sub(start_ns),
                }),
                file_ops,
            };
            turn.run
                .begun
                .clone()
                .await
                .map_err(|reason| ServiceError::Core(kelpie_core::Error::Internal(reason)))?;
            let AgentReply::Step { agent: updated, messages } =
                agent_ref.invoke_local(AgentCommand::CommitStep(Box::new(step))).await?
            else {
                return Err(unexpected("commit step"));
            };
            agent = *updated;
            outcome.run_ended = end.is_some();
            emit_step(outcome, &messages, events, streamed.as_ref());
            if hold {
                window.history.extend(messages.into_iter().map(SharedMessage::from));
                outcome.stop_reason = "requires_approval";
                break;
            }
            let ended = match rules.is_empty() {
                true => replied,
                false => {
                    let mut step_names = Vec::new();
                    for message in &messages {
                        if let MessageBody::Tool { tool_call_id, name, result, .. } = &message.body {
                            if !refused_ids.contains(tool_call_id) {
                                rules.called(name, result);
                                step_names.push(name.clone());
                            }
                        }
                    }
                    rules.after_step(&step_names, replied) == AfterStep::End
                }
            };
            window.history.extend(messages.into_iter().map(SharedMessage::from));
            if ended {
                outcome.stop_reason = "end_turn";
                break;
            }
        }
        Ok(())
    }

    /// `POST /v1/agents/{id}/tools/{tool_name}/run`: calls one of the
    /// agent's tools once with `args`, with the agent's environment, outside
    /// any turn (nothing is stored but what `open_files` opens); Letta's
    /// `ToolExecutionResult`. Built-in tools that edit the agent's memory run
    /// only in its loop.
    pub async fn run_tool(&self, agent_id: &str, tool_name: &str, args: Value) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        let custom = self.tools.custom_tools().await?;
        if !attached_names(&agent, &custom).iter().any(|name| name == tool_name) {
            return Err(ServiceError::Invalid(format!(
                "tool {tool_name} is not attached to agent {agent_id}"
            )));
        }
        let file_tool = kelpie_tools::builtin::FILE_TOOLS.contains(&tool_name);
        let external_tool = file_tool
            || tool_name == kelpie_tools::RUN_CODE
            || custom.iter().any(|tool| tool.name == tool_name);
        if !external_tool {
            return Err(ServiceError::Invalid(format!(
                "built-in tool {tool_name} works on the agent's memory and runs only in its loop"
            )));
        }
        let args = if args.is_null() { json!({}) } else { args };
        let call = ToolCall {
            id: new_id("call", self.env.rng.as_ref()),
            name: tool_name.to_string(),
            arguments: args.to_string(),
        };
        let results = match file_tool {
            // Outside a turn, what `open_files` changes is applied at once.
            true => vec![self.agent_files.run_tool(&agent, &call).await?],
            false => {
                let sandbox = self.sandbox_configs.tool_settings().await?;
                external::run_external_calls(&self.tools, &agent, &custom, &sandbox, &[call]).await
            }
        };
        let result = results.into_iter().next().ok_or_else(|| unexpected("a tool run"))?;
        let lines = |text: Option<String>| match text.filter(|t| !t.is_empty()) {
            Some(text) => json!([text]),
            None => json!([]),
        };
        Ok(json!({
            "status": if result.ok { "success" } else { "error" }, "func_return": result.result,
            "stdout": lines(result.stdout), "stderr": lines(result.stderr),
            "agent_state": null, "sandbox_config_fingerprint": null,
        }))
    }

    /// `POST /v1/agents/{id}/summarize`: compacts the context window now,
    /// with the agent's settings and `request`'s changes over them (for this
    /// compaction only); `{summary, num_messages_before, num_messages_after}`.
    pub async fn summarize(&self, agent_id: &str, request: SummarizeRequest) -> ServiceResult<Value> {
        self.summarize_in((agent_id, None), request).await
    }

    /// [`Turns::summarize`] of the agent's own history (`None`) or of one
    /// of its conversations.
    pub async fn summarize_in(
        &self,
        (agent_id, conversation): (&str, Option<&str>),
        request: SummarizeRequest,
    ) -> ServiceResult<Value> {
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let lock = self.turn_lock(agent_id, conversation);
        let _turn = lock.lock().await;
        let agent = self.history_agent(agent_id, conversation).await?;
        let settings = match &request.compaction_settings {
            Some(changes) => {
                context::merge_settings(agent.compaction.as_ref(), changes).map_err(ServiceError::Invalid)?
            }
            None => agent.compaction.clone().unwrap_or_default(),
        };
        let custom = self.tools.custom_tools().await?;
        let mut window = self.window(&agent_ref, conversation).await?;
        let fixed_tokens =
            prompt_parts(&agent, &custom, &window, &[], self.env.clock.wall_ms()).fixed_tokens();
        match self.compact(&agent_ref, &agent, &mut window, fixed_tokens, &settings).await? {
            Some(done) => Ok(json!({
                "summary": done.summary, "num_messages_before": done.before, "num_messages_after": done.after,
            })),
            None => Err(ServiceError::Refused(
                "there is nothing to summarize: no message is in the context window".into(),
            )),
        }
    }

    /// What the agent's next step would put in its prompt: the messages in
    /// view (the newest `shown` of the window) and how many stay out.
    async fn next_prompt(&self, (agent_id, conversation): (&str, Option<&str>)) -> ServiceResult<NextPrompt> {
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let agent = self.history_agent(agent_id, conversation).await?;
        let custom = self.tools.custom_tools().await?;
        let window = self.window(&agent_ref, conversation).await?;
        let now_ms = self.env.clock.wall_ms();
        let parts = prompt_parts(&agent, &custom, &window, &[], now_ms);
        let shown = match parts.tokens() > agent.llm.context_window {
            true => parts.fitting_history().len(),
            false => window.history.len(),
        };
        let hidden = window.hidden + (window.history.len() - shown) as u64;
        Ok(NextPrompt { agent, custom, window, shown, hidden, now_ms })
    }

    /// `POST /v1/agents/{id}/messages/preview-raw-payload`: the body the
    /// agent's next step would send its provider with `texts` as the new
    /// user messages; nothing is sent or stored.
    pub async fn preview_payload(&self, agent_id: &str, texts: &[String]) -> ServiceResult<Value> {
        self.preview_payload_in((agent_id, None), texts).await
    }

    /// [`Turns::preview_payload`] of a step in the agent's own history
    /// (`None`) or in one of its conversations.
    pub async fn preview_payload_in(
        &self,
        target: (&str, Option<&str>),
        texts: &[String],
    ) -> ServiceResult<Value> {
        check_turn_input(texts, None)?;
        let next = self.next_prompt(target).await?;
        let parts = prompt_parts(&next.agent, &next.custom, &next.window, texts, next.now_ms);
        let history = &next.window.history[next.window.history.len() - next.shown..];
        let request = parts.request(history);
        Ok(kelpie_llm::clients::provider_payload(&next.agent.llm.provider, &request))
    }

    /// `POST /v1/agents/{id}/generate`: one completion of `prompt` (after
    /// `system_prompt` when given) from the agent's model, or from
    /// `override_model`: no memory, no tools, nothing stored.
    pub async fn generate(
        &self,
        agent_id: &str,
        prompt: &str,
        (system_prompt, override_model): (Option<&str>, Option<&str>),
    ) -> ServiceResult<Value> {
        if prompt.is_empty() {
            return Err(ServiceError::Invalid("prompt must not be empty".into()));
        }
        let agent = self.actors.record(agent_id).await?;
        let llm = match override_model {
            Some(handle) => self.providers.resolve_llm(Some(handle)).await?,
            None => agent.llm.clone(),
        };
        let mut messages = Vec::new();
        if let Some(system) = system_prompt {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let request = ChatRequest {
            model: llm.model.clone(),
            messages: messages.into_iter().map(kelpie_llm::ChatMessage::from).collect(),
            tools: Vec::new(),
            max_tokens: llm.max_tokens,
            temperature: llm.temperature,
        };
        let answer = self.llm.chat(&llm, &request).await?;
        let usage = &answer.usage;
        Ok(json!({
            "content": answer.content.unwrap_or_default(), "model": llm.handle,
            "usage": {"message_type": "usage_statistics", "completion_tokens": usage.completion_tokens,
                      "prompt_tokens": usage.prompt_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens, "step_count": 1,
                      "run_ids": null},
        }))
    }

    /// `POST /v1/agents/{id}/recompile`: the system prompt the agent's next
    /// step sends. Kelpie builds it at every step, so nothing is stored.
    pub async fn system_prompt(&self, agent_id: &str) -> ServiceResult<String> {
        self.system_prompt_in((agent_id, None)).await
    }

    /// [`Turns::system_prompt`] of the agent's next step in its own history
    /// (`None`) or in one of its conversations.
    pub async fn system_prompt_in(&self, target: (&str, Option<&str>)) -> ServiceResult<String> {
        let next = self.next_prompt(target).await?;
        Ok(context::system_text(&next.agent, next.shown, next.hidden, next.now_ms))
    }

    /// `GET /v1/agents/{id}/context`: Letta's `ContextWindowOverview` of the
    /// prompt the agent's next step would send (estimated tokens).
    pub async fn context_window(&self, agent_id: &str) -> ServiceResult<Value> {
        let agent_ref = self.actors.agent_ref(agent_id)?;
        let AgentReply::Counts(counts) = agent_ref.invoke_local(AgentCommand::Counts).await? else {
            return Err(unexpected("counts"));
        };
        let NextPrompt { agent, custom, window, shown, hidden, now_ms } =
            self.next_prompt((agent_id, None)).await?;
        let history = &window.history[window.history.len() - shown..];
        let core = format!("{}\n{}", context::core_memory_text(&agent), agent.working.render(now_ms));
        let metadata = context::metadata_text(&agent, history.len(), hidden, now_ms);
        let directories =
            crate::files::directories_text(&agent.folders, &agent.open_files, agent.file_limits());
        let functions: Vec<Value> = prompt::tool_schemas(&agent, &custom)
            .into_iter()
            .map(|schema| json!({"type": "function", "function": schema}))
            .collect();
        let tokens = context::tokens_of;
        let message_tokens: u64 = history.iter().map(SharedMessage::tokens).sum();
        let summary_tokens = window.summary_content.as_deref().map_or(0, tokens);
        let functions_tokens = tokens(&Value::Array(functions.clone()).to_string());
        let counted = [
            tokens(&agent.system),
            tokens(&core),
            tokens(&metadata),
            tokens(&directories),
            summary_tokens,
            functions_tokens,
        ];
        let messages: Vec<Value> =
            history.iter().map(|message| crate::letta::internal_message_json(agent_id, message)).collect();
        Ok(json!({
            "context_window_size_max": agent.llm.context_window,
            "context_window_size_current": counted.iter().sum::<u64>() + message_tokens,
            "num_messages": 1 + usize::from(window.summary_content.is_some()) + history.len(),
            "num_archival_memory": counts.passages,
            "num_recall_memory": counts.messages,
            "num_tokens_external_memory_summary": tokens(&metadata), "external_memory_summary": metadata,
            "num_tokens_system": tokens(&agent.system), "system_prompt": agent.system,
            "num_tokens_core_memory": tokens(&core), "core_memory": core,
            "num_tokens_memory_filesystem": 0, "memory_filesystem": null,
            "num_tokens_tool_usage_rules": 0, "tool_usage_rules": null,
            "num_tokens_directories": tokens(&directories),
            "directories": (!directories.is_empty()).then_some(directories.as_str()),
            "num_tokens_summary_memory": summary_tokens, "summary_memory": window.summary_content,
            "num_tokens_functions_definitions": functions_tokens, "functions_definitions": functions,
            "num_tokens_messages": message_tokens, "messages": messages,
        }))
    }

    /// The answer of one step. The prompt is compacted first when it would
    /// fill the window past the trigger (or the window holds as many
    /// messages as a prompt reads), and compacted wholly and sent again when
    /// the provider refuses it as too long; when no compaction can make
    /// room, the newest messages that fit are sent. Summaries go to the
    /// outcome and the stream as they are stored.
    #[allow(clippy::too_many_arguments)]
    async fn step_answer<'e>(
        &self,
        agent_ref: &ActorRef<AgentActor>,
        agent: &AgentRecord,
        custom: &[ToolRecord],
        window: &mut Window,
        pending: &[String],
        (run_id, step_id, message_id): (&str, &str, &str),
        events: Option<&'e TurnEvents>,
        outcome: &mut TurnOutcome,
    ) -> ServiceResult<(ChatResponse, Option<TokenRenderer<'e>>)> {
        let stored = agent.compaction.clone().unwrap_or_default();
        let (mut compactions, mut overflows, mut force_all) = (0, 0, false);
        loop {
            let now_ms = self.env.clock.wall_ms();
            // Counted once per prompt: a full window is hundreds of messages.
            let (fixed_tokens, prompt_tokens) = {
                let parts = prompt_parts(agent, custom, window, pending, now_ms);
                let fixed_tokens = parts.fixed_tokens();
                (fixed_tokens, fixed_tokens + parts.history_tokens())
            };
            let full = window.history.len() >= PROMPT_MESSAGES_COUNT_MAX
                || context::over_trigger(prompt_tokens, agent.llm.context_window);
            if force_all || (full && compactions < STEP_COMPACTIONS_COUNT_MAX) {
                let settings = match force_all {
                    true => CompactionSettings { mode: CompactionMode::All, ..stored.clone() },
                    false => stored.clone(),
                };
                (compactions, force_all) = (compactions + 1, false);
                match self.compact(agent_ref, agent, window, fixed_tokens, &settings).await {
                    Ok(Some(done)) => {
                        emit_step(outcome, std::slice::from_ref(&done.message), events, None);
                        continue;
                    }
                    Ok(None) => {}
                    // No turn fails because its history grew: without a
                    // summary, the newest messages that fit are sent.
                    Err(err) => tracing::warn!(%err, agent_id = %agent.id, "compaction failed"),
                }
            }
            let request = {
                let parts = prompt_parts(agent, custom, window, pending, now_ms);
                let sent = match prompt_tokens > agent.llm.context_window {
                    true => parts.fitting_history(),
                    false => &window.history[..],
                };
                parts.request(sent)
            };
            let envelope = assistant_envelope(message_id, run_id, step_id, now_ms);
            match self.call_llm(&agent.llm, &request, events, envelope).await {
                Err(ServiceError::Llm(err))
                    if err.is_context_overflow() && overflows < OVERFLOW_RETRIES_COUNT_MAX =>
                {
                    tracing::warn!(%err, agent_id = %agent.id, "the provider refused the prompt as too long; compacting");
                    (overflows, force_all) = (overflows + 1, true);
                }
                other => return other,
            }
        }
    }

    /// One LLM call of a step: streamed into `events` as partial messages
    /// carrying `envelope`'s id when the client asked for tokens, a plain
    /// call otherwise. Answers the completion and, when streamed, what the
    /// stream showed.
    async fn call_llm<'e>(
        &self,
        llm: &LlmSettings,
        request: &ChatRequest,
        events: Option<&'e TurnEvents>,
        envelope: StoredMessage,
    ) -> ServiceResult<(ChatResponse, Option<TokenRenderer<'e>>)> {
        let Some(events) = events.filter(|events| events.stream_tokens) else {
            return Ok((self.llm.chat(llm, request).await?, None));
        };
        let mut renderer = TokenRenderer::new(&events.sender, envelope, !request.tools.is_empty());
        let answer = self.llm.chat_streaming(llm, request, &mut |delta| renderer.on_delta(delta)).await?;
        Ok((answer, Some(renderer)))
    }

    /// What the archives the agent has attached find for each
    /// `archival_memory_search` among `calls` (whose queries `embeddings`
    /// holds, embedded with the agent's embedding), for the actor to rank
    /// with the agent's own passages.
    async fn search_archives(
        &self,
        agent: &AgentRecord,
        calls: &[ToolCall],
        embeddings: &[TextEmbedding],
    ) -> ServiceResult<Vec<ArchiveHits>> {
        let searches: Vec<&ToolCall> =
            calls.iter().filter(|call| call.name == ARCHIVAL_MEMORY_SEARCH).collect();
        if searches.is_empty() || embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let archives = self.archives.of_agent(&agent.id).await?;
        if archives.is_empty() {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for call in searches {
            let Some(query) = archival_text(call) else { continue };
            let Some((_, vector)) = embeddings.iter().find(|(text, _)| *text == query) else { continue };
            let args: Value = serde_json::from_str(&call.arguments).unwrap_or_default();
            let top_k = crate::actors::agent::builtin::archival_top_k(&args);
            let known = Some((&agent.embedding, vector.as_slice()));
            let hits =
                self.archives.search(archives.clone(), (&query, known), top_k, &TagFilter::default()).await?;
            let found = hits.into_iter().map(|hit| (hit.passage.text, hit.score)).collect();
            all.push(ArchiveHits { query, found });
        }
        Ok(all)
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

/// What every step of one turn shares.
struct TurnParts<'a> {
    run: &'a TurnRun,
    agent_ref: &'a ActorRef<AgentActor>,
    custom: &'a [ToolRecord],
    sandbox: &'a crate::service::sandbox_configs::ToolSandboxSettings,
    events: Option<&'a TurnEvents>,
}

/// The calls waiting for approval: those of the newest message when it is
/// an approval request (nothing has answered it).
fn held_calls(window: &Window) -> Option<Vec<ToolCall>> {
    match window.history.last().map(|message| &message.body) {
        Some(MessageBody::Assistant { tool_calls, awaiting_approval: true, .. }) => Some(tool_calls.clone()),
        _ => None,
    }
}

/// The client's answer to an approval request.
#[derive(Debug, Clone)]
pub enum ApprovalAnswer {
    /// One decision per call (Letta's `approvals`).
    Each(Vec<ApprovalDecision>),
    /// The same decision for every held call (Letta's older `approve`,
    /// `reason`).
    All { approve: bool, reason: Option<String> },
}

impl ApprovalAnswer {
    /// A decision for every held call: the given ones, which must name held
    /// calls, once each; a held call not named runs as if approved.
    fn decisions_for(self, held: &[ToolCall]) -> Result<Vec<ApprovalDecision>, String> {
        let given = match self {
            ApprovalAnswer::All { approve, reason } => held
                .iter()
                .map(|call| ApprovalDecision {
                    tool_call_id: call.id.clone(),
                    verdict: match approve {
                        true => ApprovalVerdict::Approve { reason: reason.clone() },
                        false => ApprovalVerdict::Deny { reason: reason.clone() },
                    },
                })
                .collect(),
            ApprovalAnswer::Each(decisions) => decisions,
        };
        let unknown: Vec<&str> = given
            .iter()
            .filter(|d| !held.iter().any(|call| call.id == d.tool_call_id))
            .map(|d| d.tool_call_id.as_str())
            .collect();
        if !unknown.is_empty() {
            let expected: Vec<&str> = held.iter().map(|call| call.id.as_str()).collect();
            return Err(format!("Invalid tool call IDs: {unknown:?}; the pending calls are {expected:?}"));
        }
        let mut decisions = Vec::with_capacity(held.len());
        for call in held {
            let mut for_call = given.iter().filter(|d| d.tool_call_id == call.id);
            let decision = for_call.next().cloned().unwrap_or_else(|| ApprovalDecision {
                tool_call_id: call.id.clone(),
                verdict: ApprovalVerdict::Approve { reason: None },
            });
            if for_call.next().is_some() {
                return Err(format!("tool call {} has more than one decision", call.id));
            }
            decisions.push(decision);
        }
        Ok(decisions)
    }
}

/// The names of the agent's attached tools, in attach order.
fn attached_names(agent: &AgentRecord, custom: &[ToolRecord]) -> Vec<String> {
    let builtins = kelpie_tools::builtin_tools();
    agent
        .tool_ids
        .iter()
        .filter_map(|id| match builtins.iter().find(|tool| tool.id == id) {
            Some(builtin) => Some(builtin.name.to_string()),
            None => custom.iter().find(|tool| &tool.id == id).map(|tool| tool.name.clone()),
        })
        .collect()
}

/// The agent as one step sees it: with tool rules, only the tools they
/// allow now are offered to the model.
fn offered_tools<'a>(
    agent: &'a AgentRecord,
    custom: &[ToolRecord],
    rules: &RuleSolver,
    attached: &[String],
) -> std::borrow::Cow<'a, AgentRecord> {
    if rules.is_empty() {
        return std::borrow::Cow::Borrowed(agent);
    }
    let allowed = rules.allowed(attached);
    let builtins = kelpie_tools::builtin_tools();
    let name_of = |id: &String| -> Option<String> {
        match builtins.iter().find(|tool| tool.id == id) {
            Some(builtin) => Some(builtin.name.to_string()),
            None => custom.iter().find(|tool| &tool.id == id).map(|tool| tool.name.clone()),
        }
    };
    let mut restricted = agent.clone();
    restricted.tool_ids.retain(|id| name_of(id).is_some_and(|name| allowed.contains(&name)));
    std::borrow::Cow::Owned(restricted)
}

/// Splits a step's calls into those the rules allow (in order, each
/// counted before the next is judged) and refusals, as failed results the
/// model sees. Without rules every call goes ahead.
fn screen_calls(
    rules: &RuleSolver,
    attached: &[String],
    calls: &[ToolCall],
) -> (Vec<ToolCall>, Vec<ExternalResult>) {
    if rules.is_empty() {
        return (calls.to_vec(), Vec::new());
    }
    let mut probe = rules.clone();
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for call in calls {
        match probe.refusal(&call.name, attached) {
            Some(reason) => refused.push(ExternalResult {
                tool_call_id: call.id.clone(),
                result: reason,
                ok: false,
                stdout: None,
                stderr: None,
            }),
            None => {
                probe.called(&call.name, "");
                allowed.push(call.clone());
            }
        }
    }
    (allowed, refused)
}
