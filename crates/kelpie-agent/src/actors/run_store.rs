//! The run actors: one virtual actor per run (`runs/<run id>`) that says
//! which agent holds the run (the run and its steps live with the agent,
//! `actors::agent::runs`), so a run is found by its id alone; the record's
//! wire shape; and the run index (`run-index/all`): every background run in
//! flight with the node that runs it, so a node that starts again finds the
//! runs it left running.
//!
//! Runs stored before runs moved into their agents keep their whole record
//! here (`RunState::run`) and are still read.

use std::collections::BTreeMap;

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ids::rfc3339_micros;
use crate::model::{RunOwner, RunRecord, RunStatus};

/// Namespace of the run actors.
pub const RUN_NAMESPACE: &str = "runs";

/// A run's whole record as it was stored before runs moved into their
/// agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyRunRecord {
    pub id: String,
    pub agent_id: String,
    pub status: String,
    pub stop_reason: Option<String>,
    pub error: Option<String>,
    pub created_ms: u64,
    pub completed_ms: Option<u64>,
}

impl LegacyRunRecord {
    /// The record in today's shape (a background run, no steps kept).
    pub fn upgrade(self) -> RunRecord {
        RunRecord {
            status: RunStatus::parse(&self.status).unwrap_or(RunStatus::Failed),
            id: self.id,
            agent_id: self.agent_id,
            seq: 0,
            stop_reason: self.stop_reason,
            error: self.error,
            created_ms: self.created_ms,
            completed_ms: self.completed_ms,
            background: true,
            owner: RunOwner { node_id: String::new(), boot_id: String::new() },
            steps: Vec::new(),
            idempotency_key: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    /// A record stored before runs moved into their agents.
    #[serde(default)]
    pub run: Option<LegacyRunRecord>,
    /// The agent holding the run.
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub enum RunCommand {
    /// Records that agent `agent_id` holds the run.
    Point {
        agent_id: String,
    },
    Get,
    /// Forgets the run.
    Delete,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RunLocation {
    Agent(String),
    Legacy(LegacyRunRecord),
    Unknown,
}

pub struct RunActor;

impl Actor for RunActor {
    type State = RunState;
    type Message = RunCommand;
    type Reply = RunLocation;

    async fn handle(&self, ctx: &mut ActorContext<'_, RunState>, command: RunCommand) -> Result<RunLocation> {
        match command {
            RunCommand::Point { agent_id } => {
                ctx.state.agent_id = Some(agent_id.clone());
                Ok(RunLocation::Agent(agent_id))
            }
            RunCommand::Get => Ok(match (&ctx.state.agent_id, &ctx.state.run) {
                (Some(agent_id), _) => RunLocation::Agent(agent_id.clone()),
                (None, Some(run)) => RunLocation::Legacy(run.clone()),
                (None, None) => RunLocation::Unknown,
            }),
            RunCommand::Delete => {
                *ctx.state = RunState::default();
                Ok(RunLocation::Unknown)
            }
        }
    }
}

/// The run index's own actor id (namespace, id).
pub const RUN_INDEX_ACTOR: (&str, &str) = ("run-index", "all");
/// Most runs in flight at once, over the whole cluster.
pub const RUNS_IN_FLIGHT_COUNT_MAX: usize = 10_000;

/// A run in flight and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightRun {
    pub run_id: String,
    pub agent_id: String,
    /// The node whose task runs it.
    pub node_id: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunIndexState {
    pub runs: BTreeMap<String, InFlightRun>,
}

#[derive(Serialize, Deserialize)]
pub enum RunIndexCommand {
    /// Records a run as in flight; refused past [`RUNS_IN_FLIGHT_COUNT_MAX`].
    Add(InFlightRun),
    /// The run ended (or was recovered); nothing if it was not there.
    Remove {
        run_id: String,
    },
    List,
}

#[derive(Serialize, Deserialize)]
pub enum RunIndexReply {
    Done,
    Runs(Vec<InFlightRun>),
}

pub struct RunIndexActor;

impl Actor for RunIndexActor {
    type State = RunIndexState;
    type Message = RunIndexCommand;
    type Reply = RunIndexReply;

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, RunIndexState>,
        command: RunIndexCommand,
    ) -> Result<RunIndexReply> {
        match command {
            RunIndexCommand::Add(run) => {
                if ctx.state.runs.len() >= RUNS_IN_FLIGHT_COUNT_MAX {
                    return Err(Error::LimitExceeded {
                        what: "runs in flight".into(),
                        actual: ctx.state.runs.len() as u64 + 1,
                        limit_name: "RUNS_IN_FLIGHT_COUNT_MAX",
                        limit: RUNS_IN_FLIGHT_COUNT_MAX as u64,
                    });
                }
                ctx.state.runs.insert(run.run_id.clone(), run);
                Ok(RunIndexReply::Done)
            }
            RunIndexCommand::Remove { run_id } => {
                ctx.state.runs.remove(&run_id);
                Ok(RunIndexReply::Done)
            }
            RunIndexCommand::List => Ok(RunIndexReply::Runs(ctx.state.runs.values().cloned().collect())),
        }
    }
}

/// Letta's `Run`.
pub fn run_json(run: &RunRecord) -> Value {
    let run_type = if run.background { "send_message_async" } else { "send_message" };
    let duration_ns = run.completed_ms.map(|done| done.saturating_sub(run.created_ms) * 1_000_000);
    json!({
        "id": run.id, "status": run.status.as_str(), "created_at": rfc3339_micros(run.created_ms),
        "completed_at": run.completed_ms.map(rfc3339_micros), "agent_id": run.agent_id,
        "conversation_id": null, "base_template_id": null, "background": run.background,
        "metadata": {"run_type": run_type, "error": run.error},
        "request_config": {"use_assistant_message": true, "assistant_message_tool_name": "send_message",
                           "assistant_message_tool_kwarg": "message", "include_return_message_types": null},
        "stop_reason": run.stop_reason, "callback_url": null, "callback_sent_at": null,
        "callback_status_code": null, "callback_error": null, "ttft_ns": null, "total_duration_ns": duration_ns,
    })
}
