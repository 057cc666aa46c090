//! The run actor: one virtual actor per run (`runs/<run id>`) whose state is
//! the run's record, so runs survive restarts; the record's wire shape; and
//! the run index (`run-index/all`): every run in flight with the node that
//! runs it, so a node that starts again finds the runs it left running.

use std::collections::BTreeMap;

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ids::rfc3339_micros;

/// Namespace of the run actors.
pub const RUN_NAMESPACE: &str = "runs";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub agent_id: String,
    /// `created`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub stop_reason: Option<String>,
    pub error: Option<String>,
    pub created_ms: u64,
    pub completed_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub run: Option<RunRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum RunCommand {
    Put(Box<RunRecord>),
    Get,
}

pub struct RunActor;

impl Actor for RunActor {
    type State = RunState;
    type Message = RunCommand;
    type Reply = RunRecord;

    async fn handle(&self, ctx: &mut ActorContext<'_, RunState>, command: RunCommand) -> Result<RunRecord> {
        match command {
            RunCommand::Put(run) => {
                assert_eq!(run.id, ctx.actor_id.id(), "a run record lives in its own actor");
                ctx.state.run = Some((*run).clone());
                Ok(*run)
            }
            RunCommand::Get => ctx
                .state
                .run
                .clone()
                .ok_or_else(|| Error::NotFound { kind: "run", id: ctx.actor_id.id().to_string() }),
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
    json!({
        "id": run.id, "status": run.status, "created_at": rfc3339_micros(run.created_ms),
        "completed_at": run.completed_ms.map(rfc3339_micros), "agent_id": run.agent_id,
        "conversation_id": null, "base_template_id": null, "background": true,
        "metadata": {"run_type": "send_message_async", "error": run.error},
        "request_config": {"use_assistant_message": true, "assistant_message_tool_name": "send_message",
                           "assistant_message_tool_kwarg": "message", "include_return_message_types": null},
        "stop_reason": run.stop_reason, "callback_url": null, "callback_sent_at": null,
        "callback_status_code": null, "callback_error": null, "ttft_ns": null, "total_duration_ns": null,
    })
}
