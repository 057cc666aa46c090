//! Runs: `POST .../messages/async` starts a turn in the background and
//! answers with a run; `GET /v1/runs/{id}` reads it; `POST
//! .../messages/cancel` aborts active runs. Each run is a virtual actor
//! (`runs/<run id>`) whose state is its record, so runs survive restarts.
//!
//! A run in `running` state when the server stops stays `running` in
//! storage; its committed steps are kept (each step is atomic). Cancel
//! aborts the background task between or during steps: a step is either
//! committed or not, never half.
//!
//! Active runs are tracked in a table; whoever removes a run from it
//! (the finishing task or a cancel) writes its final status, so a run is
//! never both completed and cancelled.

use std::sync::Arc;

use kelpie_core::{ActorId, Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::service::{AgentService, ServiceError, ServiceResult};
use super::turn::check_turn_input;
use crate::ids::{new_id, rfc3339_micros};

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

impl AgentService {
    async fn put_run(&self, run: RunRecord) -> ServiceResult<RunRecord> {
        let actor_id = ActorId::new(RUN_NAMESPACE, &run.id)?;
        Ok(self.runs.invoke(&actor_id, RunCommand::Put(Box::new(run))).await?)
    }

    pub async fn get_run(&self, run_id: &str) -> ServiceResult<Value> {
        let not_found = || ServiceError::RunNotFound(run_id.to_string());
        let actor_id = ActorId::new(RUN_NAMESPACE, run_id).map_err(|_| not_found())?;
        match self.runs.invoke(&actor_id, RunCommand::Get).await {
            Ok(run) => Ok(run_json(&run)),
            Err(Error::NotFound { .. }) => Err(not_found()),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes the final state of `run` unless a cancel already did.
    async fn finish_run(&self, mut run: RunRecord, outcome: ServiceResult<&'static str>) {
        if self.active_runs.take(&run.id).is_none() {
            return;
        }
        run.completed_ms = Some(self.env.clock.wall_ms());
        match outcome {
            Ok(stop_reason) => (run.status, run.stop_reason) = ("completed".into(), Some(stop_reason.into())),
            Err(err) => {
                (run.status, run.stop_reason) = ("failed".into(), Some("error".into()));
                run.error = Some(err.to_string());
            }
        }
        if let Err(err) = self.put_run(run).await {
            tracing::warn!(error = %err, "cannot record the end of a run");
        }
    }

    /// Starts a turn in the background; the run as created.
    pub async fn start_async(
        self: &Arc<Self>,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
    ) -> ServiceResult<Value> {
        check_turn_input(&inputs, max_steps)?;
        self.record(agent_id).await?;
        let mut run = RunRecord {
            id: new_id("run", self.env.rng.as_ref()),
            agent_id: agent_id.to_string(),
            status: "running".into(),
            stop_reason: None,
            error: None,
            created_ms: self.env.clock.wall_ms(),
            completed_ms: None,
        };
        run = self.put_run(run).await?;
        let service = Arc::clone(self);
        let task_run = run.clone();
        self.active_runs.spawn(&run.id, agent_id, async move {
            let outcome = service
                .run_turn_as(&task_run.id, &task_run.agent_id, inputs, max_steps, None)
                .await
                .map(|outcome| outcome.stop_reason);
            service.finish_run(task_run, outcome).await;
        });
        Ok(run_json(&run))
    }

    /// Cancels `run_ids` of `agent_id` (every active run of it when
    /// `None`); `{run_id: "cancelled"}` for each run stopped.
    pub async fn cancel_runs(&self, agent_id: &str, run_ids: Option<Vec<String>>) -> ServiceResult<Value> {
        self.record(agent_id).await?;
        let mut cancelled = serde_json::Map::new();
        for run_id in self.active_runs.cancel(agent_id, run_ids.as_deref()) {
            let actor_id = ActorId::new(RUN_NAMESPACE, &run_id)?;
            let mut run = self.runs.invoke(&actor_id, RunCommand::Get).await?;
            (run.status, run.stop_reason) = ("cancelled".into(), Some("cancelled".into()));
            run.completed_ms = Some(self.env.clock.wall_ms());
            self.put_run(run).await?;
            cancelled.insert(run_id, json!("cancelled"));
        }
        Ok(Value::Object(cancelled))
    }
}

/// Background runs in flight: run id → (agent id, abort handle).
#[derive(Default)]
pub struct ActiveRuns {
    table: std::sync::Mutex<std::collections::HashMap<String, (String, tokio::task::AbortHandle)>>,
}

impl ActiveRuns {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, tokio::task::AbortHandle)>>
    {
        self.table.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Spawns `task` as run `run_id`; the table is locked until the run is
    /// in it, so even a task that ends at once finds itself there.
    fn spawn(
        &self,
        run_id: &str,
        agent_id: &str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut table = self.lock();
        let handle = tokio::spawn(task);
        table.insert(run_id.to_string(), (agent_id.to_string(), handle.abort_handle()));
    }

    fn take(&self, run_id: &str) -> Option<(String, tokio::task::AbortHandle)> {
        self.lock().remove(run_id)
    }

    /// Removes and aborts the matching runs of `agent_id`; their ids.
    fn cancel(&self, agent_id: &str, run_ids: Option<&[String]>) -> Vec<String> {
        let mut table = self.lock();
        let chosen: Vec<String> = table
            .iter()
            .filter(|(id, (agent, _))| agent == agent_id && run_ids.is_none_or(|ids| ids.contains(id)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &chosen {
            if let Some((_, handle)) = table.remove(id) {
                handle.abort();
            }
        }
        chosen
    }

    pub fn abort_all(&self) {
        for (_, (_, handle)) in self.lock().drain() {
            handle.abort();
        }
    }
}
