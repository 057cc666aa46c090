//! Runs: `POST .../messages/async` starts a turn in the background and
//! answers with a run; `GET /v1/runs/{id}` reads it; `POST
//! .../messages/cancel` aborts active runs. Each run is a virtual actor
//! (`runs/<run id>`, [`crate::actors::run_store`]) whose state is its record,
//! so runs survive restarts.
//!
//! A run in flight is in the run index with the node that runs it. When
//! that node stops (or is killed) and starts again, it marks the runs it
//! left in flight `failed`, with the reason, before serving: none stays
//! `running`; their committed steps are kept (each step is atomic). Cancel
//! aborts the background task between or during steps: a step is either
//! committed or not, never half.
//!
//! Active runs are tracked in a table; whoever removes a run from it
//! (the finishing task or a cancel) writes its final status, so a run is
//! never both completed and cancelled.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use kelpie_core::{ActorId, Env, Error, TaskSpawner};
use kelpie_runtime::Runtime;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::turn::{check_turn_input, Turns};
use crate::actors::run_store::{
    run_json, InFlightRun, RunActor, RunCommand, RunIndexActor, RunIndexCommand, RunIndexReply, RunRecord,
    RUN_INDEX_ACTOR, RUN_NAMESPACE,
};
use crate::error::{ServiceError, ServiceResult};
use crate::ids::new_id;

pub struct Runs {
    actors: Arc<AgentActors>,
    turns: Arc<Turns>,
    records: Arc<RunRecords>,
}

/// The run actors and the table of active runs: what a background run
/// needs to record its end.
struct RunRecords {
    runtime: Runtime<RunActor>,
    index: Runtime<RunIndexActor>,
    active: ActiveRuns,
    env: Env,
}

/// What a run left in flight by a stopped server is marked failed with.
pub const RUN_INTERRUPTED_ERROR: &str =
    "the server stopped while the run was in flight; the steps it committed are kept";

impl RunRecords {
    async fn put(&self, run: RunRecord) -> ServiceResult<RunRecord> {
        let actor_id = ActorId::new(RUN_NAMESPACE, &run.id)?;
        Ok(self.runtime.invoke(&actor_id, RunCommand::Put(Box::new(run))).await?)
    }

    async fn index(&self, command: RunIndexCommand) -> ServiceResult<RunIndexReply> {
        let actor_id = ActorId::new(RUN_INDEX_ACTOR.0, RUN_INDEX_ACTOR.1)?;
        Ok(self.index.invoke(&actor_id, command).await?)
    }

    /// Takes a finished run out of the index; a failure leaves it there
    /// for the next start's recovery, which finds its final record.
    async fn unindex(&self, run_id: &str) {
        if let Err(err) = self.index(RunIndexCommand::Remove { run_id: run_id.to_string() }).await {
            tracing::warn!(error = %err, run_id, "cannot take a finished run out of the run index");
        }
    }

    /// Writes the final state of `run` unless a cancel already did.
    async fn finish(&self, mut run: RunRecord, outcome: ServiceResult<&'static str>) {
        if self.active.take(&run.id).is_none() {
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
        let run_id = run.id.clone();
        match self.put(run).await {
            Ok(_) => self.unindex(&run_id).await,
            Err(err) => tracing::warn!(error = %err, "cannot record the end of a run"),
        }
    }
}

impl Runs {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        turns: Arc<Turns>,
        runtime: Runtime<RunActor>,
        index: Runtime<RunIndexActor>,
        env: Env,
    ) -> Self {
        let records = Arc::new(RunRecords { runtime, index, active: ActiveRuns::default(), env });
        Runs { actors, turns, records }
    }

    pub async fn get(&self, run_id: &str) -> ServiceResult<Value> {
        let not_found = || ServiceError::RunNotFound(run_id.to_string());
        let actor_id = ActorId::new(RUN_NAMESPACE, run_id).map_err(|_| not_found())?;
        match self.records.runtime.invoke(&actor_id, RunCommand::Get).await {
            Ok(run) => Ok(run_json(&run)),
            Err(Error::NotFound { .. }) => Err(not_found()),
            Err(err) => Err(err.into()),
        }
    }

    /// Starts a turn in the background; the run as created.
    pub async fn start(
        &self,
        agent_id: &str,
        inputs: Vec<String>,
        max_steps: Option<u32>,
    ) -> ServiceResult<Value> {
        check_turn_input(&inputs, max_steps)?;
        self.actors.record(agent_id).await?;
        let env = &self.records.env;
        let mut run = RunRecord {
            id: new_id("run", env.rng.as_ref()),
            agent_id: agent_id.to_string(),
            status: "running".into(),
            stop_reason: None,
            error: None,
            created_ms: env.clock.wall_ms(),
            completed_ms: None,
        };
        let in_flight = InFlightRun {
            run_id: run.id.clone(),
            agent_id: agent_id.to_string(),
            node_id: self.records.runtime.node_id().as_str().to_string(),
            created_ms: run.created_ms,
        };
        // Indexed first: a run record is never `running` without an entry
        // that lets a restart find it.
        self.records.index(RunIndexCommand::Add(in_flight)).await?;
        let run_id = run.id.clone();
        run = match self.records.put(run).await {
            Ok(run) => run,
            Err(err) => {
                self.records.unindex(&run_id).await;
                return Err(err);
            }
        };
        let (turns, records) = (Arc::clone(&self.turns), Arc::clone(&self.records));
        let task_run = run.clone();
        let spawner = Arc::clone(&self.records.env.spawner);
        self.records.active.spawn(spawner.as_ref(), &run.id, agent_id, async move {
            let outcome = turns
                .run_as(&task_run.id, &task_run.agent_id, inputs, max_steps, None)
                .await
                .map(|outcome| outcome.stop_reason);
            records.finish(task_run, outcome).await;
        });
        Ok(run_json(&run))
    }

    /// Cancels `run_ids` of `agent_id` (every active run of it when
    /// `None`); `{run_id: "cancelled"}` for each run stopped.
    pub async fn cancel(&self, agent_id: &str, run_ids: Option<Vec<String>>) -> ServiceResult<Value> {
        self.actors.record(agent_id).await?;
        let mut cancelled = serde_json::Map::new();
        for run_id in self.records.active.cancel(agent_id, run_ids.as_deref()) {
            let actor_id = ActorId::new(RUN_NAMESPACE, &run_id)?;
            let mut run = self.records.runtime.invoke(&actor_id, RunCommand::Get).await?;
            (run.status, run.stop_reason) = ("cancelled".into(), Some("cancelled".into()));
            run.completed_ms = Some(self.records.env.clock.wall_ms());
            self.records.put(run).await?;
            self.records.unindex(&run_id).await;
            cancelled.insert(run_id, json!("cancelled"));
        }
        Ok(Value::Object(cancelled))
    }

    /// Marks failed the runs this node left in flight when it last stopped
    /// (in the index under its node id, not running here); how many. A run
    /// whose record already ended only leaves the index.
    pub async fn recover(&self) -> ServiceResult<usize> {
        let RunIndexReply::Runs(runs) = self.records.index(RunIndexCommand::List).await? else {
            return Err(crate::error::unexpected("a run index command"));
        };
        let node = self.records.runtime.node_id().as_str().to_string();
        let mut recovered = 0;
        for entry in runs.into_iter().filter(|run| run.node_id == node) {
            if self.records.active.contains(&entry.run_id) {
                continue;
            }
            let actor_id = ActorId::new(RUN_NAMESPACE, &entry.run_id)?;
            match self.records.runtime.invoke(&actor_id, RunCommand::Get).await {
                Ok(mut run) if run.status == "running" || run.status == "created" => {
                    (run.status, run.stop_reason) = ("failed".into(), Some("error".into()));
                    run.error = Some(RUN_INTERRUPTED_ERROR.into());
                    run.completed_ms = Some(self.records.env.clock.wall_ms());
                    self.records.put(run).await?;
                    recovered += 1;
                }
                Ok(_) | Err(Error::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
            self.records.unindex(&entry.run_id).await;
        }
        Ok(recovered)
    }

    /// `GET /v1/runs/active`: the runs in flight (of `agent_id` when given),
    /// oldest first.
    pub async fn active(&self, agent_id: Option<&str>) -> ServiceResult<Vec<Value>> {
        let RunIndexReply::Runs(mut runs) = self.records.index(RunIndexCommand::List).await? else {
            return Err(crate::error::unexpected("a run index command"));
        };
        runs.retain(|run| agent_id.is_none_or(|id| run.agent_id == id));
        runs.sort_by_key(|run| (run.created_ms, run.run_id.clone()));
        let mut listed = Vec::with_capacity(runs.len());
        for entry in runs {
            listed.push(self.get(&entry.run_id).await?);
        }
        Ok(listed)
    }

    /// Aborts every background run (at shutdown).
    pub fn abort_all(&self) {
        self.records.active.abort_all();
    }

    pub async fn shutdown(&self) {
        self.records.runtime.shutdown().await;
        self.records.index.shutdown().await;
    }
}

/// Background runs in flight: run id → (agent id, abort handle).
#[derive(Default)]
struct ActiveRuns {
    table: std::sync::Mutex<BTreeMap<String, (String, AbortHandle)>>,
}

impl ActiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, AbortHandle)>> {
        self.table.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Spawns `task` as run `run_id` on `spawner`, abortable; the table is
    /// locked until the run is in it, so even a task that ends at once finds
    /// itself there.
    fn spawn(
        &self,
        spawner: &dyn TaskSpawner,
        run_id: &str,
        agent_id: &str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut table = self.lock();
        let (handle, registration) = AbortHandle::new_pair();
        spawner.spawn("background-run", Box::pin(Abortable::new(task, registration).map(drop)));
        table.insert(run_id.to_string(), (agent_id.to_string(), handle));
    }

    fn contains(&self, run_id: &str) -> bool {
        self.lock().contains_key(run_id)
    }

    fn take(&self, run_id: &str) -> Option<(String, AbortHandle)> {
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

    fn abort_all(&self) {
        for (_, (_, handle)) in std::mem::take(&mut *self.lock()) {
            handle.abort();
        }
    }
}
