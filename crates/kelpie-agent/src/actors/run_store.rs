//! Where runs are found: the run pointers (`run-ids/shard-<k>`, 64 shard
//! actors, a row per run naming the agent that holds the run and its steps,
//! `actors::agent::runs`), so a run is found by its id alone; the record's
//! wire shape; and the run index (`run-index/all`): every background run in
//! flight with the node that runs it, so a node that starts again finds the
//! runs it left running.
//!
//! Runs stored before runs moved into their agents keep their whole record
//! in an actor of their own (`runs/<run id>`) and are still read.

use std::collections::BTreeMap;

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ids::{fnv1a_64, rfc3339_micros};
use crate::model::{RunOwner, RunRecord, RunStatus};

/// Namespace of the actors of runs stored before runs moved into their agents.
pub const RUN_NAMESPACE: &str = "runs";
/// Namespace of the run pointer shards.
pub const RUN_POINTER_NAMESPACE: &str = "run-ids";
/// Shards the run pointers are spread over (fixed forever: a run's shard
/// is FNV-1a of its id modulo this).
pub const RUN_POINTER_SHARDS_COUNT: u64 = 64;

/// The pointer shard (actor id) holding run `run_id`.
pub fn run_pointer_shard(run_id: &str) -> String {
    format!("shard-{}", fnv1a_64(run_id) % RUN_POINTER_SHARDS_COUNT)
}

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
            conversation_id: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub run: Option<LegacyRunRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum RunCommand {
    Get,
    /// Forgets the run.
    Delete,
}

/// The actor of a run stored before runs moved into their agents.
pub struct RunActor;

impl Actor for RunActor {
    type State = RunState;
    type Message = RunCommand;
    type Reply = Option<LegacyRunRecord>;

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, RunState>,
        command: RunCommand,
    ) -> Result<Option<LegacyRunRecord>> {
        match command {
            RunCommand::Get => Ok(ctx.state.run.clone()),
            RunCommand::Delete => Ok(ctx.state.run.take()),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub enum RunPointerCommand {
    /// Records that agent `agent_id` holds run `run_id`.
    Put {
        run_id: String,
        agent_id: String,
    },
    Get {
        run_id: String,
    },
    Delete {
        run_id: String,
    },
}

/// A shard of run pointers: a row per run (key: the run id, value: the
/// agent id).
pub struct RunPointerActor;

impl Actor for RunPointerActor {
    type State = ();
    type Message = RunPointerCommand;
    /// The agent holding the run, if known.
    type Reply = Option<String>;

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, ()>,
        command: RunPointerCommand,
    ) -> Result<Option<String>> {
        let agent_of = |bytes: Vec<u8>, run_id: &str| {
            String::from_utf8(bytes).map_err(|_| Error::Corruption {
                location: format!("run pointer {run_id}"),
                reason: "the agent id is not UTF-8".into(),
            })
        };
        match command {
            RunPointerCommand::Put { run_id, agent_id } => {
                assert_eq!(
                    run_pointer_shard(&run_id),
                    ctx.actor_id.id(),
                    "a run's pointer lives in its shard"
                );
                ctx.kv_put(run_id.as_bytes(), agent_id.clone().into_bytes())?;
                Ok(Some(agent_id))
            }
            RunPointerCommand::Get { run_id } => match ctx.kv_get(run_id.as_bytes()).await? {
                Some(bytes) => Ok(Some(agent_of(bytes, &run_id)?)),
                None => Ok(None),
            },
            RunPointerCommand::Delete { run_id } => {
                ctx.kv_delete(run_id.as_bytes())?;
                Ok(None)
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
    let run_type = match (&run.conversation_id, run.background) {
        (Some(_), _) => "send_conversation_message",
        (None, true) => "send_message_async",
        (None, false) => "send_message",
    };
    let duration_ns = run.completed_ms.map(|done| done.saturating_sub(run.created_ms) * 1_000_000);
    json!({
        "id": run.id, "status": run.status.as_str(), "created_at": rfc3339_micros(run.created_ms),
        "completed_at": run.completed_ms.map(rfc3339_micros), "agent_id": run.agent_id,
        "conversation_id": run.conversation_id, "base_template_id": null, "background": run.background,
        "metadata": {"run_type": run_type, "error": run.error},
        "request_config": {"use_assistant_message": true, "assistant_message_tool_name": "send_message",
                           "assistant_message_tool_kwarg": "message", "include_return_message_types": null},
        "stop_reason": run.stop_reason, "callback_url": null, "callback_sent_at": null,
        "callback_status_code": null, "callback_error": null, "ttft_ns": null, "total_duration_ns": duration_ns,
    })
}

/// Letta's `Step`.
pub fn step_json(run: &RunRecord, step: &crate::model::StepRecord) -> Value {
    let model = step.model.as_deref();
    let provider = model.and_then(|handle| handle.split_once('/')).map(|(provider, _)| provider);
    json!({
        "id": step.id, "origin": null, "organization_id": null, "provider_id": null, "run_id": run.id,
        "agent_id": run.agent_id, "provider_name": provider, "provider_category": provider.map(|_| "base"),
        "model": model.and_then(|handle| handle.split_once('/')).map(|(_, name)| name), "model_handle": model,
        "model_endpoint": null, "context_window_limit": null, "completion_tokens": step.completion_tokens,
        "prompt_tokens": step.prompt_tokens, "total_tokens": step.prompt_tokens + step.completion_tokens,
        "cached_input_tokens": null, "cache_write_tokens": null, "reasoning_tokens": null,
        "completion_tokens_details": null, "prompt_tokens_details": null, "stop_reason": null, "tags": step.tags,
        "tid": step.tid, "trace_id": null, "request_id": null, "messages": [],
        "feedback": step.feedback.map(|feedback| feedback.as_str()), "project_id": null,
        "error_type": null, "error_data": null, "status": "success",
        "created_at": rfc3339_micros(step.created_ms),
    })
}

/// Letta's `StepMetrics` of a step: its timings where the loop measured
/// them (an approval's commit calls no model: its timings are null).
pub fn step_metrics_json(run: &RunRecord, step: &crate::model::StepRecord) -> Value {
    let timing = step.timing;
    json!({
        "id": step.id, "organization_id": null, "provider_id": null, "run_id": run.id, "agent_id": run.agent_id,
        "step_start_ns": timing.map(|t| t.start_ms.saturating_mul(1_000_000)),
        "llm_request_start_ns": timing.map(|t| t.start_ms.saturating_mul(1_000_000)),
        "llm_request_ns": timing.map(|t| t.llm_request_ns),
        "tool_execution_ns": timing.map(|t| t.tool_execution_ns),
        "step_ns": timing.map(|t| t.step_ns),
        "base_template_id": null, "template_id": null, "project_id": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_pointer_shard_is_fixed_and_runs_spread_over_every_shard() {
        // FNV-1a, so every release places a run where earlier ones did.
        assert_eq!(run_pointer_shard("run-00000000-0000-4000-8000-000000000000"), "shard-53");
        assert_eq!(fnv1a_64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64("a"), 0xaf63_dc4c_8601_ec8c);
        let mut used = std::collections::BTreeSet::new();
        for n in 0..2_000 {
            used.insert(run_pointer_shard(&format!("run-{n:08x}-0000-4000-8000-000000000000")));
        }
        assert_eq!(used.len() as u64, RUN_POINTER_SHARDS_COUNT);
    }
}
