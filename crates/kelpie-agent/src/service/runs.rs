//! Runs: every turn is one. `POST .../messages` and `.../messages/stream`
//! run it while the client waits; `POST .../messages/async` answers the
//! run at once and runs it in the background. A run and its steps live
//! with their agent (`actors::agent::runs`): each step is written into the
//! run in the commit that stores the step's messages. The run actor
//! `runs/<id>` only says which agent holds the run.
//!
//! Every run executes as a task of its own, in a table of active runs, so
//! a client that goes away does not stop it half-recorded; the task ends
//! the run (completed, failed with the error, or cancelled) unless the last
//! step's commit already did. A synchronous run is stored running while
//! its first LLM call is made, so it is listed as active from the start. Cancel reaches any active run, synchronous
//! or not: the turn stops between or during steps (a step is either
//! committed or not, never half) and the run ends `cancelled` unless its
//! end was already committed.
//!
//! A run whose process dies is ended failed by the next command its agent
//! gets on whichever node (the agent knows which process owns each open
//! run); the background runs a node leaves in flight are in the run index,
//! and that node ends them as soon as it starts again, without waiting for
//! a request.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::{select, Either};
use futures::FutureExt;
use kelpie_core::{ActorId, Env, Error};
use kelpie_runtime::Runtime;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use super::agent_actors::AgentActors;
use super::agents::IDEMPOTENCY_KEY_BYTES_MAX;
use super::directory::AgentDirectory;
use super::turn::token_stream::TurnEvents;
use super::turn::{check_turn_input, ApprovalAnswer, TurnOutcome, TurnRun, Turns};
use super::turn_router::{OwnerOp, TurnRouter, TurnRouterSlot};
use crate::actors::agent::{AgentCommand, AgentReply, PageSpec, RunFilter, RUN_INTERRUPTED_ERROR};
use crate::actors::run_store::{
    run_json, run_pointer_shard, step_json, InFlightRun, RunActor, RunCommand, RunIndexActor,
    RunIndexCommand, RunIndexReply, RunPointerActor, RunPointerCommand, RUN_INDEX_ACTOR, RUN_NAMESPACE,
    RUN_POINTER_NAMESPACE,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_run_id;
use crate::letta::{letta_messages, render_page};
use crate::model::{LiveRuns, MessageBody, RunEnd, RunOwner, RunRecord, RunStart, RunStatus};
use crate::page::{paginate, Page};

/// What a run left in flight by a server that shut down ends with.
pub const RUN_SHUTDOWN_ERROR: &str =
    "the server shut down while the run was in flight; the steps it committed are kept";
/// Longest a shutdown waits for the runs it stops to record their end.
pub const RUN_SHUTDOWN_WAIT_MS: u64 = 5_000;
/// Shortest and longest wait between two reads of a run that a resumed
/// stream follows (Letta's `poll_interval`, default 0.1 s).
pub const RUN_STREAM_POLL_MS_MIN: u64 = 20;
pub const RUN_STREAM_POLL_MS_MAX: u64 = 5_000;
/// Most agents a run list without an agent filter looks through.
pub const RUN_LIST_AGENTS_COUNT_MAX: usize = 1_000;

/// What runs after a user's turn of an agent that manages a sleeptime
/// group ([`TurnOutcome::sleeptime_group`]), before the turn is answered:
/// the ids of the runs it started (the groups service implements it; set
/// once with [`Runs::set_after_turn`], as the groups come after the runs).
pub trait AfterTurn: Send + Sync {
    fn after_turn<'a>(
        &'a self,
        agent_id: &'a str,
        outcome: &'a TurnOutcome,
    ) -> futures::future::BoxFuture<'a, Vec<String>>;
}

/// The hook of [`AfterTurn`], empty until set.
type AfterTurnHook = Arc<std::sync::OnceLock<Arc<dyn AfterTurn>>>;

/// What a turn is asked to do.
pub enum TurnInput {
    /// The user's messages.
    Texts(Vec<String>),
    /// The answer to the agent's pending approval request.
    Approval(ApprovalAnswer),
}

/// `GET /v1/runs/`: which runs, and which page of them.
#[derive(Debug, Clone)]
pub struct RunQuery {
    /// Runs of these agents (all agents when empty).
    pub agent_ids: Vec<String>,
    pub filter: RunFilter,
    /// Only runs still running.
    pub active: bool,
    pub page: Page,
}

pub struct Runs {
    actors: Arc<AgentActors>,
    directory: Arc<AgentDirectory>,
    turns: Arc<Turns>,
    records: Arc<RunRecords>,
    after_turn: AfterTurnHook,
    /// Where runs of agents another node owns are started (groups, batches).
    router: TurnRouterSlot,
    planted: crate::planted::Planted,
}

/// What a run's task needs to record the run: the run actors, the run
/// index, the table of active runs.
struct RunRecords {
    actors: Arc<AgentActors>,
    pointers: Runtime<RunPointerActor>,
    /// The runs whose tasks are alive here (the agent actors end any open
    /// run of this process not in it).
    live: Arc<LiveRuns>,
    /// This node, as the owner of the runs it runs (the boot id is the
    /// agent actors' business; this one only labels unstored runs).
    owner: RunOwner,
    /// The actors of runs stored before runs moved into their agents.
    runtime: Runtime<RunActor>,
    index: Runtime<RunIndexActor>,
    active: ActiveRuns,
    env: Env,
}

impl RunRecords {
    async fn pointer(&self, command: RunPointerCommand, run_id: &str) -> ServiceResult<Option<String>> {
        let actor_id = ActorId::new(RUN_POINTER_NAMESPACE, run_pointer_shard(run_id))?;
        Ok(self.pointers.invoke(&actor_id, command).await?)
    }

    /// Records that `agent_id` holds run `run_id`.
    async fn point(&self, run_id: &str, agent_id: &str) -> ServiceResult<()> {
        let command = RunPointerCommand::Put { run_id: run_id.to_string(), agent_id: agent_id.to_string() };
        self.pointer(command, run_id).await.map(drop)
    }

    /// Stores where run `start` of `agent_id` is, then the run as running:
    /// a run listed anywhere is found by its id.
    async fn begin(&self, agent_id: &str, start: &RunStart) -> ServiceResult<RunRecord> {
        self.actors.agent_ref(agent_id)?;
        self.point(&start.run_id, agent_id).await?;
        match self.actors.invoke(agent_id, AgentCommand::StartRun(start.clone())).await? {
            AgentReply::Run(Some(run)) => Ok(*run),
            _ => Err(unexpected("start run")),
        }
    }

    async fn index(&self, command: RunIndexCommand) -> ServiceResult<RunIndexReply> {
        let actor_id = ActorId::new(RUN_INDEX_ACTOR.0, RUN_INDEX_ACTOR.1)?;
        Ok(self.index.invoke(&actor_id, command).await?)
    }

    /// Takes a finished run out of the index; a failure leaves it there
    /// for the next start's recovery, which finds it ended.
    async fn unindex(&self, run_id: &str) {
        if let Err(err) = self.index(RunIndexCommand::Remove { run_id: run_id.to_string() }).await {
            tracing::warn!(error = %err, run_id, "cannot take a finished run out of the run index");
        }
    }

    /// Ends run `start` of `agent_id` with `end` unless it already ended;
    /// the run as stored.
    async fn end(&self, agent_id: &str, start: &RunStart, end: RunEnd) -> ServiceResult<RunRecord> {
        let command = AgentCommand::EndRun { start: start.clone(), end };
        match self.actors.invoke(agent_id, command).await? {
            AgentReply::Run(Some(run)) => Ok(*run),
            _ => Err(unexpected("end run")),
        }
    }

    /// What a turn that was cancelled (or stopped by a shutdown) answers:
    /// the messages its committed steps stored, and the run's end as stored.
    async fn stopped_outcome(
        &self,
        agent_id: &str,
        start: &RunStart,
        end: RunEnd,
    ) -> ServiceResult<TurnOutcome> {
        let run = self.end(agent_id, start, end).await?;
        let AgentReply::RunMessages { messages, .. } =
            self.actors.invoke(agent_id, AgentCommand::RunMessages { run_id: run.id.clone() }).await?
        else {
            return Err(unexpected("run messages"));
        };
        let mut outcome = ended_outcome(&run);
        for message in messages.iter().filter(|m| !matches!(m.body, MessageBody::User { .. })) {
            outcome.messages.extend(letta_messages(message));
        }
        Ok(outcome)
    }
}

/// A run's place among the live runs, from before anything stores it until
/// its task ends (or it never starts).
struct LiveRun {
    live: Arc<LiveRuns>,
    run_id: String,
}

impl LiveRun {
    fn new(live: &Arc<LiveRuns>, run_id: &str) -> LiveRun {
        live.insert(run_id);
        LiveRun { live: Arc::clone(live), run_id: run_id.to_string() }
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        self.live.remove(&self.run_id);
    }
}

/// A key within `1..=IDEMPOTENCY_KEY_BYTES_MAX` bytes, if any.
fn check_idempotency_key(key: Option<&str>) -> ServiceResult<()> {
    match key {
        Some(key) if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX => {
            Err(ServiceError::Invalid(format!(
                "an idempotency key (Idempotency-Key or the first message's otid) must be \
             1..={IDEMPOTENCY_KEY_BYTES_MAX} bytes, not {}",
                key.len()
            )))
        }
        _ => Ok(()),
    }
}

/// The outcome an ended run stored (its messages not included).
fn ended_outcome(run: &RunRecord) -> TurnOutcome {
    assert_ne!(run.status, RunStatus::Running, "only an ended run has an outcome");
    TurnOutcome {
        run_id: run.id.clone(),
        messages: Vec::new(),
        stop_reason: static_stop_reason(run.stop_reason.as_deref().unwrap_or("error")),
        usage: kelpie_llm::TokenUsage {
            prompt_tokens: run.prompt_tokens(),
            completion_tokens: run.completion_tokens(),
        },
        // Steps with a model are LLM calls; an approval's commit is not.
        step_count: run.steps.iter().filter(|step| step.model.is_some()).count() as u32,
        steps_begun: run.steps.len(),
        run_ended: true,
        sleeptime_group: None,
        follow_up_run_ids: Vec::new(),
    }
}

/// What a run stopped before anything of it could be stored answers.
fn unstored_outcome(run_id: &str, end: &RunEnd) -> TurnOutcome {
    TurnOutcome {
        run_id: run_id.to_string(),
        messages: Vec::new(),
        stop_reason: static_stop_reason(&end.stop_reason),
        usage: kelpie_llm::TokenUsage::default(),
        step_count: 0,
        steps_begun: 0,
        run_ended: true,
        sleeptime_group: None,
        follow_up_run_ids: Vec::new(),
    }
}

/// The stop reason of Letta's `StopReasonType` named `name`.
fn static_stop_reason(name: &str) -> &'static str {
    const REASONS: [&str; 13] = [
        "end_turn",
        "error",
        "llm_api_error",
        "invalid_llm_response",
        "invalid_tool_call",
        "max_steps",
        "max_tokens_exceeded",
        "no_tool_call",
        "tool_rule",
        "cancelled",
        "insufficient_credits",
        "requires_approval",
        "context_window_overflow_in_system_prompt",
    ];
    REASONS.iter().find(|reason| **reason == name).copied().unwrap_or("error")
}

impl Runs {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        directory: Arc<AgentDirectory>,
        turns: Arc<Turns>,
        (runtime, pointers, index): (Runtime<RunActor>, Runtime<RunPointerActor>, Runtime<RunIndexActor>),
        live: Arc<LiveRuns>,
        env: Env,
        planted: crate::planted::Planted,
    ) -> Self {
        let owner = RunOwner { node_id: runtime.node_id().as_str().to_string(), boot_id: String::new() };
        let records = Arc::new(RunRecords {
            actors: Arc::clone(&actors),
            pointers,
            live,
            owner,
            runtime,
            index,
            active: ActiveRuns::default(),
            env,
        });
        let (after_turn, router) = (AfterTurnHook::default(), TurnRouterSlot::default());
        Runs { actors, directory, turns, records, after_turn, router, planted }
    }

    /// Sets the router that sends runs of agents other nodes own to their
    /// owner ([`Runs::start_on_owner`]); only the first call counts.
    pub fn set_turn_router(&self, router: Arc<dyn TurnRouter>) {
        self.router.set(router);
    }

    /// The router runs of other nodes' agents go through.
    pub fn router(&self) -> &TurnRouterSlot {
        &self.router
    }

    /// [`Runs::start`] on the node that owns `agent_id` (here when this
    /// node owns it or claims it): what the service's own multi-agent
    /// operations (groups, batches) start member runs with.
    pub async fn start_on_owner(
        &self,
        agent_id: &str,
        texts: Vec<String>,
        max_steps: Option<u32>,
        idempotency_key: Option<String>,
    ) -> ServiceResult<Value> {
        check_turn_input(&texts, max_steps)?;
        check_idempotency_key(idempotency_key.as_deref())?;
        let op =
            OwnerOp::StartRun { texts: texts.clone(), max_steps, idempotency_key: idempotency_key.clone() };
        match self.router.on_owner(agent_id, &op).await? {
            Some(run) => Ok(run),
            None => self.start(agent_id, texts, max_steps, idempotency_key).await,
        }
    }

    /// [`Runs::cancel`] of `run_ids` on the node that owns `agent_id`, where
    /// its runs run.
    pub async fn cancel_on_owner(&self, agent_id: &str, run_ids: Vec<String>) -> ServiceResult<Value> {
        let op = OwnerOp::CancelRuns { run_ids: run_ids.clone() };
        match self.router.on_owner(agent_id, &op).await? {
            Some(cancelled) => Ok(cancelled),
            None => self.cancel(agent_id, Some(run_ids)).await,
        }
    }

    /// Sets what runs after the turns of sleeptime groups' managers; only
    /// the first call counts.
    pub fn set_after_turn(&self, hook: Arc<dyn AfterTurn>) {
        let set = self.after_turn.set(hook).is_ok();
        debug_assert!(set, "the after-turn hook is set once");
    }

    /// Run `run_id` once it has ended.
    pub async fn wait_end(&self, run_id: &str) -> ServiceResult<RunRecord> {
        let run = self.record(run_id).await?;
        self.wait_ended(run).await
    }

    /// Runs a turn of `agent_id` as a run while the caller waits (its
    /// messages go to `events` as they are committed); the turn goes on to
    /// its end if the caller stops waiting.
    ///
    /// With an idempotency key, the run is stored before the turn starts;
    /// a turn whose key another run of the agent already has does not run
    /// again: it waits for that run to end and answers what it stored.
    pub async fn run_turn(
        &self,
        agent_id: &str,
        input: TurnInput,
        max_steps: Option<u32>,
        events: Option<TurnEvents>,
        idempotency_key: Option<String>,
    ) -> ServiceResult<TurnOutcome> {
        self.run_turn_in((agent_id, None), input, max_steps, events, idempotency_key).await
    }

    /// [`Runs::run_turn`] in the history `target` names: the agent's own
    /// (`None`) or one of its conversations.
    pub async fn run_turn_in(
        &self,
        (agent_id, conversation_id): (&str, Option<String>),
        input: TurnInput,
        max_steps: Option<u32>,
        events: Option<TurnEvents>,
        idempotency_key: Option<String>,
    ) -> ServiceResult<TurnOutcome> {
        if let TurnInput::Texts(texts) = &input {
            check_turn_input(texts, max_steps)?;
        }
        check_idempotency_key(idempotency_key.as_deref())?;
        let forget_key = self.planted.has(crate::planted::PlantedBug::TurnIgnoresIdempotencyKey);
        let idempotency_key = idempotency_key.filter(|_| !forget_key);
        let keyed = idempotency_key.is_some();
        let start = self.new_start(false, idempotency_key, conversation_id);
        let live = LiveRun::new(&self.records.live, &start.run_id);
        if keyed {
            // Nothing is recorded for an id that names no agent.
            self.actors.record(agent_id).await?;
            let run = self.records.begin(agent_id, &start).await?;
            if run.id != start.run_id {
                return self.replay(run, events.as_ref()).await;
            }
        }
        let finished = self.spawn(agent_id, (start, live), input, max_steps, events, keyed);
        finished.await.unwrap_or(Err(ServiceError::Core(Error::ShuttingDown { component: "runs" })))
    }

    /// What run `run` (begun by an earlier send with the same key) answers
    /// once it ended; its messages go to `events` too.
    async fn replay(&self, run: RunRecord, events: Option<&TurnEvents>) -> ServiceResult<TurnOutcome> {
        let run = self.wait_ended(run).await?;
        let AgentReply::RunMessages { messages, .. } =
            self.actors.invoke(&run.agent_id, AgentCommand::RunMessages { run_id: run.id.clone() }).await?
        else {
            return Err(unexpected("run messages"));
        };
        let mut outcome = ended_outcome(&run);
        for message in messages.iter().filter(|m| !matches!(m.body, MessageBody::User { .. })) {
            for rendered in letta_messages(message) {
                if let Some(events) = events {
                    let _ = events.sender.send(rendered.clone());
                }
                outcome.messages.push(rendered);
            }
        }
        Ok(outcome)
    }

    /// `run` once it has ended: waits on it when it runs here, else reads
    /// it again every `RUN_STREAM_POLL_MS_MIN` × 5 ms (a run of a process
    /// that is gone is ended by its agent when read).
    async fn wait_ended(&self, mut run: RunRecord) -> ServiceResult<RunRecord> {
        while run.status == RunStatus::Running {
            match self.records.active.ended(&run.id) {
                Some(mut ended) => {
                    let _ = ended.wait_for(|ended| *ended).await;
                }
                None => {
                    let pause = std::time::Duration::from_millis(RUN_STREAM_POLL_MS_MIN * 5);
                    self.records.env.clock.sleep(pause).await;
                }
            }
            run = self.record(&run.id).await?;
        }
        Ok(run)
    }

    /// Run `run_id` once it has ended (see `wait_ended`).
    pub async fn wait_until_ended(&self, run_id: &str) -> ServiceResult<RunRecord> {
        self.wait_ended(self.record(run_id).await?).await
    }

    /// Starts a turn in the background; the run as stored, running.
    pub async fn start(
        &self,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
        idempotency_key: Option<String>,
    ) -> ServiceResult<Value> {
        Ok(run_json(&self.start_in((agent_id, None), inputs, max_steps, idempotency_key).await?))
    }

    /// [`Runs::start`] in the agent's own history (`None`) or in one of its
    /// conversations; the run as stored.
    pub async fn start_in(
        &self,
        (agent_id, conversation_id): (&str, Option<String>),
        inputs: Vec<String>,
        max_steps: Option<u32>,
        idempotency_key: Option<String>,
    ) -> ServiceResult<RunRecord> {
        check_turn_input(&inputs, max_steps)?;
        check_idempotency_key(idempotency_key.as_deref())?;
        self.actors.record(agent_id).await?;
        let start = self.new_start(true, idempotency_key, conversation_id);
        let live = LiveRun::new(&self.records.live, &start.run_id);
        let in_flight = InFlightRun {
            run_id: start.run_id.clone(),
            agent_id: agent_id.to_string(),
            node_id: self.records.runtime.node_id().as_str().to_string(),
            created_ms: start.created_ms,
        };
        // Indexed first: a background run is never running without an
        // entry that lets its node's restart find it.
        self.records.index(RunIndexCommand::Add(in_flight)).await?;
        let run = match self.records.begin(agent_id, &start).await {
            Ok(run) if run.id == start.run_id => run,
            Ok(earlier) => {
                // An earlier send with this key started it.
                self.records.unindex(&start.run_id).await;
                return Ok(earlier);
            }
            Err(err) => {
                self.records.unindex(&start.run_id).await;
                return Err(err);
            }
        };
        // The caller does not wait: the run's end is read from the run.
        drop(self.spawn(agent_id, (start, live), TurnInput::Texts(inputs), max_steps, None, true));
        Ok(run)
    }

    fn new_start(
        &self,
        background: bool,
        idempotency_key: Option<String>,
        conversation_id: Option<String>,
    ) -> RunStart {
        let env = &self.records.env;
        RunStart {
            run_id: new_run_id(env.rng.as_ref()),
            background,
            created_ms: env.clock.wall_ms(),
            idempotency_key,
            conversation_id,
        }
    }

    /// Runs the turn as a task in the table of active runs; its outcome.
    /// `begun`: the run is already stored (else it is stored while the
    /// turn makes its first LLM call).
    fn spawn(
        &self,
        agent_id: &str,
        (start, live): (RunStart, LiveRun),
        input: TurnInput,
        max_steps: Option<u32>,
        events: Option<TurnEvents>,
        begun: bool,
    ) -> oneshot::Receiver<ServiceResult<TurnOutcome>> {
        let (reply, finished) = oneshot::channel();
        let (turns, records) = (Arc::clone(&self.turns), Arc::clone(&self.records));
        let after_turn = Arc::clone(&self.after_turn);
        let user_turn = matches!(input, TurnInput::Texts(_));
        let agent_id = agent_id.to_string();
        let owner = self.records.owner.clone();
        let (mut stop, ended) = self.records.active.add(&start, &agent_id, owner);
        let (agent_read, agent_found) = oneshot::channel::<()>();
        let never_answer = self.planted.has(crate::planted::PlantedBug::StoppedTurnNeverAnswers);
        let task = async move {
            // Where a synchronous run is is stored while its first LLM call
            // is made, once the turn has read its agent (an id that names
            // no agent records nothing); the commit that first stores the
            // run waits for it, so a stored run is always found by its id.
            // Until then the run is read from the table of active runs.
            let begun = {
                let (records, agent_id, start) = (Arc::clone(&records), agent_id.clone(), start.clone());
                async move {
                    if begun {
                        return Ok(());
                    }
                    let run_id = &start.run_id;
                    agent_found.await.map_err(|_| format!("run {run_id} ended before its agent was read"))?;
                    records
                        .point(run_id, &agent_id)
                        .await
                        .map_err(|err| format!("cannot record where run {run_id} is: {err}"))
                }
                .boxed()
                .shared()
            };
            let agent_read = std::sync::Mutex::new(Some(agent_read));
            let run = TurnRun { start: start.clone(), begun, agent_read };
            let turn = async {
                let (_, outcome) = futures::join!(run.begun.clone(), async {
                    let outcome = match input {
                        TurnInput::Texts(texts) => {
                            turns.run_as(&run, &agent_id, texts, max_steps, events.as_ref()).await
                        }
                        TurnInput::Approval(answer) => {
                            turns.answer_approval(&run, &agent_id, answer, max_steps, events.as_ref()).await
                        }
                    };
                    run.close();
                    outcome
                });
                outcome
            };
            let turn = AssertUnwindSafe(turn).catch_unwind();
            let stopped = async {
                let end = stop.wait_for(Option::is_some).await.map(|end| end.clone());
                end.ok().flatten()
            };
            let finished = match select(Box::pin(turn), Box::pin(stopped)).await {
                Either::Left((Ok(outcome), _)) => Ok(outcome),
                Either::Left((Err(_panic), _)) => Err(None),
                Either::Right((end, _)) => Err(Some(end)),
            };
            // A run is stored only where its id leads: when where it is
            // could not be recorded, nothing of it is stored, its end neither.
            run.close();
            let pointed = run.begun.clone().await.is_ok();
            let end = |end: RunEnd| {
                let (records, agent_id, start) = (&records, &agent_id, &start);
                async move {
                    match pointed {
                        true => records.end(agent_id, start, end).await.map(Some),
                        false => Ok(None),
                    }
                }
            };
            let result = match finished {
                Ok(Ok(outcome)) => {
                    let ended = match outcome.run_ended {
                        true => Ok(outcome),
                        false => end(RunEnd::completed(outcome.stop_reason)).await.map(|_| outcome),
                    };
                    match (ended, after_turn.get()) {
                        (Ok(mut outcome), Some(hook)) if user_turn && outcome.sleeptime_group.is_some() => {
                            outcome.follow_up_run_ids = hook.after_turn(&agent_id, &outcome).await;
                            Ok(outcome)
                        }
                        (ended, _) => ended,
                    }
                }
                Ok(Err(err)) => {
                    if let Err(end_err) = end(RunEnd::failed(err.to_string())).await {
                        tracing::debug!(error = %end_err, run_id = start.run_id, "cannot record a failed run");
                    }
                    Err(err)
                }
                Err(None) => {
                    let err = ServiceError::Core(Error::Internal("the turn panicked".into()));
                    if let Err(end_err) = end(RunEnd::failed(err.to_string())).await {
                        tracing::warn!(error = %end_err, run_id = start.run_id, "cannot record a failed run");
                    }
                    Err(err)
                }
                Err(Some(end)) => {
                    let end = end.unwrap_or_else(|| RunEnd::failed(RUN_SHUTDOWN_ERROR.into()));
                    let cancelled = end.status == RunStatus::Cancelled;
                    let outcome = match pointed {
                        true => records.stopped_outcome(&agent_id, &start, end).await,
                        false => Ok(unstored_outcome(&start.run_id, &end)),
                    };
                    match cancelled {
                        true => outcome,
                        // Stopped by a shutdown: a waiting client gets a 503.
                        false => Err(ServiceError::Core(Error::ShuttingDown { component: "runs" })),
                    }
                }
            };
            if start.background {
                records.unindex(&start.run_id).await;
            }
            records.active.remove(&start.run_id);
            drop(live);
            let _ = ended.send(true);
            let shut_down = matches!(&result, Err(ServiceError::Core(Error::ShuttingDown { .. })));
            if never_answer && shut_down {
                std::future::pending::<()>().await;
            }
            let _ = reply.send(result);
        };
        self.records.env.spawner.spawn("run", Box::pin(task));
        finished
    }

    /// Cancels `run_ids` of `agent_id` (every active run of it when
    /// `None`) and waits until each has recorded its end;
    /// `{run_id: "cancelled"}` for each run stopped.
    pub async fn cancel(&self, agent_id: &str, run_ids: Option<Vec<String>>) -> ServiceResult<Value> {
        self.cancel_in((agent_id, None), run_ids).await
    }

    /// [`Runs::cancel`], of the runs of conversation `conversation_id` only
    /// when given.
    pub async fn cancel_in(
        &self,
        (agent_id, conversation_id): (&str, Option<&str>),
        run_ids: Option<Vec<String>>,
    ) -> ServiceResult<Value> {
        self.actors.record(agent_id).await?;
        let runs = (Some(agent_id), conversation_id, run_ids.as_deref());
        let stopping = self.records.active.stop(runs, RunEnd::cancelled());
        let mut cancelled = serde_json::Map::new();
        for (run_id, mut ended) in stopping {
            let _ = ended.wait_for(|ended| *ended).await;
            cancelled.insert(run_id, json!("cancelled"));
        }
        Ok(Value::Object(cancelled))
    }

    /// The run `run_id` as stored (a run of an older layout is upgraded).
    /// A run that runs here and has not stored a step yet is read from the
    /// table of active runs.
    pub async fn record(&self, run_id: &str) -> ServiceResult<RunRecord> {
        let not_found = || ServiceError::RunNotFound(run_id.to_string());
        let get = RunPointerCommand::Get { run_id: run_id.to_string() };
        let agent_id = match self.records.pointer(get, run_id).await? {
            Some(agent_id) => agent_id,
            None => {
                if let Some(run) = self.records.active.unstored(run_id) {
                    return Ok(run);
                }
                // A run stored before runs moved into their agents.
                let actor_id = ActorId::new(RUN_NAMESPACE, run_id).map_err(|_| not_found())?;
                let legacy = self.records.runtime.invoke(&actor_id, RunCommand::Get).await?;
                return legacy.map(|run| run.upgrade()).ok_or_else(not_found);
            }
        };
        match self.actors.invoke(&agent_id, AgentCommand::GetRun { run_id: run_id.to_string() }).await {
            Ok(AgentReply::Run(Some(run))) => Ok(*run),
            Ok(AgentReply::Run(None)) | Err(ServiceError::AgentNotFound(_)) => {
                self.records.active.unstored(run_id).ok_or_else(not_found)
            }
            Ok(_) => Err(unexpected("get run")),
            Err(err) => Err(err),
        }
    }

    pub async fn get(&self, run_id: &str) -> ServiceResult<Value> {
        Ok(run_json(&self.record(run_id).await?))
    }

    /// `GET /v1/runs/`: the runs of the agents asked for (of every agent,
    /// up to [`RUN_LIST_AGENTS_COUNT_MAX`] of them, when none is named),
    /// oldest first unless the page is descending.
    pub async fn list(&self, query: RunQuery) -> ServiceResult<Vec<Value>> {
        Ok(self.list_records(query).await?.iter().map(run_json).collect())
    }

    /// The runs of [`Runs::list`], as stored.
    pub async fn list_records(&self, query: RunQuery) -> ServiceResult<Vec<RunRecord>> {
        let mut filter = query.filter.clone();
        if query.active {
            filter.statuses = Some(vec![RunStatus::Running]);
        }
        let agent_ids = match query.agent_ids.is_empty() {
            false => query.agent_ids.clone(),
            true => {
                let entries = self.directory.entries().await?;
                if entries.len() > RUN_LIST_AGENTS_COUNT_MAX {
                    return Err(ServiceError::Invalid(format!(
                        "listing runs without agent_id looks through at most RUN_LIST_AGENTS_COUNT_MAX = \
                         {RUN_LIST_AGENTS_COUNT_MAX} agents and there are {}; give agent_id",
                        entries.len()
                    )));
                }
                entries.into_iter().map(|entry| entry.id).collect()
            }
        };
        let limit = query.page.limit.max(1);
        // Runs here that have not stored a step yet: newer than every
        // stored run of their agent.
        let mut unstored = Vec::new();
        for run in self.records.active.unstored_of(&query.agent_ids) {
            let command = AgentCommand::GetRun { run_id: run.id.clone() };
            if filter.accepts(&run)
                && matches!(self.actors.invoke(&run.agent_id, command).await, Ok(AgentReply::Run(None)))
            {
                unstored.push(run);
            }
        }
        if let [agent_id] = agent_ids.as_slice() {
            let page = PageSpec {
                after: query.page.after.clone(),
                before: query.page.before.clone(),
                limit,
                descending: query.page.descending,
            };
            let stored = self.agent_runs(agent_id, page, &filter).await?;
            unstored.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
            let runs = match query.page.descending {
                // Newest first: they open the first page.
                true if query.page.after.is_none() => {
                    unstored.reverse();
                    unstored.into_iter().chain(stored).collect()
                }
                // Oldest first: they close the last page.
                false if query.page.before.is_none() && stored.len() < limit => {
                    stored.into_iter().chain(unstored).collect()
                }
                _ => stored,
            };
            return Ok(runs.into_iter().take(limit).collect());
        }
        // Over several agents the cursors are places in the merged order
        // (creation time, then id): each agent is read from its start in the
        // page's order until it passes the page.
        let place = |run: &RunRecord| (run.created_ms, run.id.clone());
        let after = match &query.page.after {
            Some(id) => Some(place(&self.record(id).await?)),
            None => None,
        };
        let before = match &query.page.before {
            Some(id) => Some(place(&self.record(id).await?)),
            None => None,
        };
        let descending = query.page.descending;
        // `a` comes before `b` in the page's order.
        let precedes = |a: &(u64, String), b: &(u64, String)| if descending { a > b } else { a < b };
        let mut runs = Vec::new();
        for agent_id in &agent_ids {
            let mut spec = PageSpec { after: None, before: None, limit, descending };
            let (mut taken, mut read) = (0, 0);
            'agent: loop {
                let page = match self.agent_runs(agent_id, spec.clone(), &filter).await {
                    Ok(page) => page,
                    // Deleted since the directory was read.
                    Err(ServiceError::AgentNotFound(_)) => break,
                    Err(err) => return Err(err),
                };
                read += page.len();
                let last = page.last().map(|run| run.id.clone());
                let short = page.len() < spec.limit;
                for run in page {
                    let key = place(&run);
                    if after.as_ref().is_some_and(|after| !precedes(after, &key)) {
                        continue;
                    }
                    if before.as_ref().is_some_and(|before| !precedes(&key, before)) || taken >= limit {
                        break 'agent;
                    }
                    runs.push(run);
                    taken += 1;
                }
                match last {
                    Some(last) if !short && read < crate::actors::agent::RUN_SCAN_ROWS_COUNT_MAX => {
                        spec.after = Some(last)
                    }
                    _ => break,
                }
            }
        }
        for run in unstored {
            let key = place(&run);
            let inside = after.as_ref().is_none_or(|after| precedes(after, &key))
                && before.as_ref().is_none_or(|before| precedes(&key, before));
            if inside && agent_ids.contains(&run.agent_id) {
                runs.push(run);
            }
        }
        runs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        if descending {
            runs.reverse();
        }
        runs.truncate(limit);
        Ok(runs)
    }

    async fn agent_runs(
        &self,
        agent_id: &str,
        page: PageSpec,
        filter: &RunFilter,
    ) -> ServiceResult<Vec<RunRecord>> {
        match self.actors.invoke(agent_id, AgentCommand::RunPage { page, filter: filter.clone() }).await? {
            AgentReply::Runs(runs) => Ok(runs),
            _ => Err(unexpected("run page")),
        }
    }

    /// `GET /v1/runs/{id}/messages`: the Letta messages the run stored, paged.
    pub async fn messages(&self, run_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let run = self.record(run_id).await?;
        let AgentReply::RunMessages { messages, .. } =
            self.actors.invoke(&run.agent_id, AgentCommand::RunMessages { run_id: run.id.clone() }).await?
        else {
            return Err(unexpected("run messages"));
        };
        let every = Page { limit: usize::MAX, ..page.clone() };
        let selected = paginate(messages, |message| message.id.as_str(), &every);
        Ok(render_page(&selected, page.limit, page.descending).0)
    }

    /// `POST /v1/runs/{id}/stream`: the run's events after `starting_after`
    /// (events are numbered from 1 by `seq_id`) go to `sink` as Letta's
    /// messages, then, once the run has ended, its `stop_reason` and
    /// `usage_statistics`. A run still going is read again every
    /// `poll_ms`, so a client that lost a stream resumes it where it left
    /// off. Ends early, without error, when `sink` is closed.
    pub async fn follow(
        &self,
        run_id: &str,
        starting_after: u64,
        poll_ms: u64,
        sink: &tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> ServiceResult<()> {
        let poll_ms = poll_ms.clamp(RUN_STREAM_POLL_MS_MIN, RUN_STREAM_POLL_MS_MAX);
        let mut sent = starting_after;
        loop {
            let run = self.record(run_id).await?;
            let AgentReply::RunMessages { messages, .. } = self
                .actors
                .invoke(&run.agent_id, AgentCommand::RunMessages { run_id: run.id.clone() })
                .await?
            else {
                return Err(unexpected("run messages"));
            };
            let mut events: Vec<Value> = messages
                .iter()
                .filter(|m| !matches!(m.body, MessageBody::User { .. }))
                .flat_map(letta_messages)
                .collect();
            let ended = run.status != RunStatus::Running;
            if ended {
                let outcome = ended_outcome(&run);
                events.push(outcome.stop_reason_json());
                events.push(outcome.usage_json());
            }
            for (index, mut event) in events.into_iter().enumerate() {
                let seq_id = index as u64 + 1;
                if seq_id <= sent {
                    continue;
                }
                event["seq_id"] = json!(seq_id);
                event["run_id"] = json!(run.id);
                if sink.send(event).is_err() {
                    return Ok(());
                }
                sent = seq_id;
            }
            if ended {
                return Ok(());
            }
            self.records.env.clock.sleep(std::time::Duration::from_millis(poll_ms)).await;
        }
    }

    /// `GET /v1/runs/{id}/usage`: Letta's `UsageStatistics` of the run.
    pub async fn usage(&self, run_id: &str) -> ServiceResult<Value> {
        let run = self.record(run_id).await?;
        let (prompt, completion) = (run.prompt_tokens(), run.completion_tokens());
        Ok(json!({
            "completion_tokens": completion, "prompt_tokens": prompt, "total_tokens": prompt + completion,
            "prompt_tokens_details": null, "completion_tokens_details": null,
        }))
    }

    /// `GET /v1/runs/{id}/metrics`: Letta's `RunMetrics`: when the run
    /// began and how long it took (null while running), its steps, and the
    /// ids of the tools it ran (as the agent has them now; a tool detached
    /// or deleted since is left out).
    pub async fn metrics(&self, run_id: &str) -> ServiceResult<Value> {
        let run = self.record(run_id).await?;
        let AgentReply::RunMessages { messages, .. } =
            self.actors.invoke(&run.agent_id, AgentCommand::RunMessages { run_id: run.id.clone() }).await?
        else {
            return Err(unexpected("run messages"));
        };
        let mut used: Vec<&str> = Vec::new();
        for message in &messages {
            if let MessageBody::Tool { name, .. } = &message.body {
                if !used.contains(&name.as_str()) {
                    used.push(name);
                }
            }
        }
        let tools = match self.actors.record(&run.agent_id).await {
            Ok(agent) => self.actors.render(&agent).await?["tools"].clone(),
            Err(ServiceError::AgentNotFound(_)) => json!([]),
            Err(err) => return Err(err),
        };
        let tool_ids: Vec<Value> = used
            .iter()
            .filter_map(|name| tools.as_array()?.iter().find(|tool| tool["name"] == *name))
            .map(|tool| tool["id"].clone())
            .collect();
        let run_ns =
            run.completed_ms.map(|done| done.saturating_sub(run.created_ms).saturating_mul(1_000_000));
        Ok(json!({
            "id": run.id, "organization_id": null, "agent_id": run.agent_id, "project_id": null,
            "run_start_ns": run.created_ms.saturating_mul(1_000_000), "run_ns": run_ns,
            "num_steps": run.steps.len(), "tools_used": tool_ids, "template_id": null, "base_template_id": null,
        }))
    }

    /// `GET /v1/runs/{id}/steps`: Letta's `Step`s of the run, paged.
    pub async fn steps(&self, run_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let run = self.record(run_id).await?;
        let steps: Vec<Value> = run.steps.iter().map(|step| step_json(&run, step)).collect();
        Ok(paginate(steps, crate::page::json_id, page))
    }

    /// `DELETE /v1/runs/{id}`: cancels the run if it is active, then
    /// forgets it (the messages it stored stay with the agent).
    pub async fn delete(&self, run_id: &str) -> ServiceResult<()> {
        let run = self.record(run_id).await?;
        let stopping =
            self.records.active.stop((None, None, Some(std::slice::from_ref(&run.id))), RunEnd::cancelled());
        for (_, mut ended) in stopping {
            let _ = ended.wait_for(|ended| *ended).await;
        }
        // A run of the older layout has no owner; its record is its actor.
        if run.owner.node_id.is_empty() {
            let actor_id = ActorId::new(RUN_NAMESPACE, run_id)?;
            self.records.runtime.invoke(&actor_id, RunCommand::Delete).await?;
            return Ok(());
        }
        match self.actors.invoke(&run.agent_id, AgentCommand::DeleteRun { run_id: run.id.clone() }).await {
            Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
            Err(err) => return Err(err),
        }
        self.records.pointer(RunPointerCommand::Delete { run_id: run.id.clone() }, run_id).await?;
        Ok(())
    }

    /// Ends failed the background runs this node left in flight when it
    /// last stopped (in the index under its node id, not running here);
    /// how many. A run whose record already ended only leaves the index.
    pub async fn recover(&self) -> ServiceResult<usize> {
        let RunIndexReply::Runs(runs) = self.records.index(RunIndexCommand::List).await? else {
            return Err(unexpected("a run index command"));
        };
        let node = self.records.runtime.node_id().as_str().to_string();
        let mut recovered = 0;
        for entry in runs.into_iter().filter(|run| run.node_id == node) {
            if self.records.active.contains(&entry.run_id) {
                continue;
            }
            match self.record(&entry.run_id).await {
                Ok(run) if run.status == RunStatus::Running => {
                    let start = RunStart {
                        run_id: run.id.clone(),
                        background: true,
                        created_ms: run.created_ms,
                        idempotency_key: run.idempotency_key.clone(),
                        conversation_id: run.conversation_id.clone(),
                    };
                    self.records
                        .end(&run.agent_id, &start, RunEnd::failed(RUN_INTERRUPTED_ERROR.into()))
                        .await?;
                    recovered += 1;
                }
                Ok(_) | Err(ServiceError::RunNotFound(_)) | Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
            self.records.unindex(&entry.run_id).await;
        }
        Ok(recovered)
    }

    /// The durable reminder of a node failure: for every background run in
    /// the index under a node of `gone` (failed or left, per membership),
    /// reads the run through its agent, which ends it failed once the
    /// agent is active on a live node (the read activates it there after
    /// the dead node's lease), and takes every run that has ended out of
    /// the index. How many it took out; a run whose agent cannot be
    /// reached yet stays for the next round.
    pub async fn recover_orphans(&self, gone: &std::collections::BTreeSet<String>) -> ServiceResult<usize> {
        let RunIndexReply::Runs(runs) = self.records.index(RunIndexCommand::List).await? else {
            return Err(unexpected("a run index command"));
        };
        let mut recovered = 0;
        for entry in runs.into_iter().filter(|run| gone.contains(&run.node_id)) {
            match self.record(&entry.run_id).await {
                Ok(run) if run.status == RunStatus::Running => continue,
                Ok(_) | Err(ServiceError::RunNotFound(_)) | Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => {
                    tracing::debug!(error = %err, run_id = entry.run_id, "an orphaned run is not reachable yet");
                    continue;
                }
            }
            self.records.unindex(&entry.run_id).await;
            recovered += 1;
        }
        Ok(recovered)
    }

    /// `GET /v1/runs/active`: the background runs in flight (of `agent_id`
    /// when given), oldest first.
    pub async fn active(&self, agent_id: Option<&str>) -> ServiceResult<Vec<Value>> {
        let RunIndexReply::Runs(mut runs) = self.records.index(RunIndexCommand::List).await? else {
            return Err(unexpected("a run index command"));
        };
        runs.retain(|run| agent_id.is_none_or(|id| run.agent_id == id));
        runs.sort_by_key(|run| (run.created_ms, run.run_id.clone()));
        let mut listed = Vec::with_capacity(runs.len());
        for entry in runs {
            match self.record(&entry.run_id).await {
                Ok(run) if run.status == RunStatus::Running => listed.push(run_json(&run)),
                Ok(_) | Err(ServiceError::RunNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(listed)
    }

    /// Stops every active run (at shutdown): each ends failed with
    /// [`RUN_SHUTDOWN_ERROR`] unless its end is already committed; waits
    /// up to [`RUN_SHUTDOWN_WAIT_MS`] for them to record it.
    pub async fn stop_all(&self) {
        let stopping =
            self.records.active.stop((None, None, None), RunEnd::failed(RUN_SHUTDOWN_ERROR.into()));
        let all_ended = futures::future::join_all(
            stopping
                .into_iter()
                .map(|(_, mut ended)| async move { ended.wait_for(|ended| *ended).await.map(drop) }),
        );
        let timeout = self.records.env.clock.sleep(std::time::Duration::from_millis(RUN_SHUTDOWN_WAIT_MS));
        if let Either::Right(_) = select(Box::pin(all_ended), timeout).await {
            tracing::warn!(wait_ms = RUN_SHUTDOWN_WAIT_MS, "runs still recording their end at shutdown");
        }
    }

    pub async fn shutdown(&self) {
        self.records.runtime.shutdown().await;
        self.records.pointers.shutdown().await;
        self.records.index.shutdown().await;
    }
}

/// Runs in flight on this node: run id → its agent and the channels that
/// stop it and tell it ended.
#[derive(Default)]
struct ActiveRuns {
    table: std::sync::Mutex<BTreeMap<String, ActiveRun>>,
}

struct ActiveRun {
    agent_id: String,
    /// The run as it is before its first commit stores it.
    unstored: RunRecord,
    /// Set to the end a stop asks for.
    stop: watch::Sender<Option<RunEnd>>,
    /// Becomes `true` once the run's task recorded its end.
    ended: watch::Receiver<bool>,
}

impl ActiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ActiveRun>> {
        self.table.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds run `run_id`; the task's ends of its channels.
    fn add(
        &self,
        start: &RunStart,
        agent_id: &str,
        owner: RunOwner,
    ) -> (watch::Receiver<Option<RunEnd>>, watch::Sender<bool>) {
        let (stop, stop_rx) = watch::channel(None);
        let (ended_tx, ended) = watch::channel(false);
        let unstored = RunRecord::running(start, agent_id, 0, owner);
        let run = ActiveRun { agent_id: agent_id.to_string(), unstored, stop, ended };
        let previous = self.lock().insert(start.run_id.clone(), run);
        assert!(previous.is_none(), "run ids are never reused");
        (stop_rx, ended_tx)
    }

    /// Run `run_id` as it is before its first commit, if it runs here.
    fn unstored(&self, run_id: &str) -> Option<RunRecord> {
        self.lock().get(run_id).map(|run| run.unstored.clone())
    }

    /// The runs here of the agents in `agent_ids` (of every agent when
    /// empty), as they are before their first commit.
    fn unstored_of(&self, agent_ids: &[String]) -> Vec<RunRecord> {
        let table = self.lock();
        let runs = table.values().filter(|run| agent_ids.is_empty() || agent_ids.contains(&run.agent_id));
        runs.map(|run| run.unstored.clone()).collect()
    }

    fn contains(&self, run_id: &str) -> bool {
        self.lock().contains_key(run_id)
    }

    /// What tells when run `run_id` ended, if it runs here.
    fn ended(&self, run_id: &str) -> Option<watch::Receiver<bool>> {
        self.lock().get(run_id).map(|run| run.ended.clone())
    }

    fn remove(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    /// Asks the matching runs (of `agent_id` if given, among `run_ids` if
    /// given) to stop with `end`; their ids and the receivers that tell
    /// when each ended.
    fn stop(
        &self,
        (agent_id, conversation_id, run_ids): (Option<&str>, Option<&str>, Option<&[String]>),
        end: RunEnd,
    ) -> Vec<(String, watch::Receiver<bool>)> {
        let table = self.lock();
        let mut stopping = Vec::new();
        for (run_id, run) in table.iter() {
            let in_conversation =
                conversation_id.is_none_or(|id| run.unstored.conversation_id.as_deref() == Some(id));
            if agent_id.is_none_or(|id| run.agent_id == id)
                && in_conversation
                && run_ids.is_none_or(|ids| ids.contains(run_id))
            {
                run.stop.send_if_modified(|current| {
                    let first = current.is_none();
                    if first {
                        *current = Some(end.clone());
                    }
                    first
                });
                stopping.push((run_id.clone(), run.ended.clone()));
            }
        }
        stopping
    }
}
