//! Message batches (`/v1/messages/batches`): a batch sends messages to many
//! agents at once, each request becoming a background run of its agent
//! (`Runs::start`, with the idempotency key `<batch id>/<index>`, so a
//! create sent again after a crash starts no run twice). Letta hands the
//! requests to Anthropic's batch API and polls it; Kelpie runs them itself,
//! so any model works and the results come as fast as the runs end.
//!
//! The batch ends `completed` once every run ended (each run keeps its own
//! status) or `cancelled` when cancelled; then its `callback_url`, if any,
//! is posted `{job_id, status, completed_at}` once, its outcome recorded.
//! A watcher task follows each running batch to its end; a starting node
//! starts one for every batch in the index (the running ones and the ones
//! whose callback is owed), so a kill -9 delays a batch's end, never loses it.
//! The callback is posted at least once: a crash between its POST and the
//! commit recording it posts it again after the restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;
use kelpie_tools::mcp::url::OutboundUrlError;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::runs::Runs;
use crate::actors::agent::{AgentCommand, AgentReply};
use crate::actors::batch::{
    BatchActor, BatchCommand, BatchIndexActor, BatchIndexCommand, BatchIndexReply, BatchItem, BatchRecord,
    BatchReply, BatchStatus, CallbackOutcome, BATCH_INDEX_ACTOR, BATCH_NAMESPACE, BATCH_REQUESTS_COUNT_MAX,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::{new_id, rfc3339_micros};
use crate::letta::internal_message_json;
use crate::model::RunStatus;
use crate::page::{json_id, paginate, Page};

/// Longest a callback POST may take, connection included.
pub const BATCH_CALLBACK_TIMEOUT_MS: u64 = 10_000;
/// Longest callback URL, in bytes (Letta's `maxLength`).
pub const BATCH_CALLBACK_URL_BYTES_MAX: usize = 2_083;

/// One request of a create: the agent and what its run is to do.
pub struct BatchRequest {
    pub agent_id: String,
    pub texts: Vec<String>,
    pub max_steps: Option<u32>,
}

pub struct Batches {
    batches: Runtime<BatchActor>,
    index: Runtime<BatchIndexActor>,
    runs: Arc<Runs>,
    actors: Arc<AgentActors>,
    /// Whether a callback URL may point at a loopback or private address.
    allow_internal_urls: bool,
    /// The watcher tasks, stopped at shutdown.
    watchers: Mutex<Vec<AbortHandle>>,
    env: Env,
}

/// Letta's `BatchJob`.
pub fn batch_json(batch: &BatchRecord) -> Value {
    let callback = batch.callback.as_ref();
    json!({
        "id": batch.id, "status": batch.status.as_str(), "job_type": "batch",
        "created_at": rfc3339_micros(batch.created_ms), "updated_at": rfc3339_micros(batch.updated_ms),
        "completed_at": batch.completed_ms.map(rfc3339_micros), "stop_reason": null,
        "metadata": {"job_type": "batch_messages"}, "background": null, "agent_id": null,
        "callback_url": batch.callback_url,
        "callback_sent_at": callback.map(|c| rfc3339_micros(c.sent_ms)),
        "callback_status_code": callback.and_then(|c| c.status_code),
        "callback_error": callback.and_then(|c| c.error.clone()),
        "ttft_ns": null,
        "total_duration_ns": batch.completed_ms.map(|done| done.saturating_sub(batch.created_ms) * 1_000_000),
        "user_id": null, "created_by_id": null, "last_updated_by_id": null,
    })
}

impl Batches {
    pub fn new(
        (batches, index): (Runtime<BatchActor>, Runtime<BatchIndexActor>),
        runs: Arc<Runs>,
        actors: Arc<AgentActors>,
        allow_internal_urls: bool,
        env: Env,
    ) -> Arc<Self> {
        Arc::new(Batches {
            batches,
            index,
            runs,
            actors,
            allow_internal_urls,
            watchers: Mutex::default(),
            env,
        })
    }

    async fn invoke(&self, batch_id: &str, command: BatchCommand) -> ServiceResult<BatchReply> {
        let not_found = || ServiceError::BatchNotFound(batch_id.to_string());
        let actor_id = ActorId::new(BATCH_NAMESPACE, batch_id).map_err(|_| not_found())?;
        self.batches.invoke(&actor_id, command).await.map_err(|err| match err {
            kelpie_core::Error::NotFound { kind: "batch", .. } => not_found(),
            other => other.into(),
        })
    }

    async fn invoke_index(&self, command: BatchIndexCommand) -> ServiceResult<BatchIndexReply> {
        let actor_id = ActorId::new(BATCH_INDEX_ACTOR.0, BATCH_INDEX_ACTOR.1)?;
        Ok(self.index.invoke(&actor_id, command).await?)
    }

    /// `POST /v1/messages/batches`: checks every request (its agent exists,
    /// its input is a turn's), starts a background run per request and
    /// answers the batch, running.
    pub async fn create(
        self: &Arc<Self>,
        requests: Vec<BatchRequest>,
        callback_url: Option<String>,
    ) -> ServiceResult<Value> {
        if requests.is_empty() || requests.len() > BATCH_REQUESTS_COUNT_MAX {
            return Err(ServiceError::Invalid(format!(
                "a batch holds 1..={BATCH_REQUESTS_COUNT_MAX} requests (BATCH_REQUESTS_COUNT_MAX), not {}",
                requests.len()
            )));
        }
        if let Some(url) = &callback_url {
            self.check_callback_url(url).await?;
        }
        for request in &requests {
            super::turn::check_turn_input(&request.texts, request.max_steps)?;
            self.actors.record(&request.agent_id).await?;
        }
        let id = new_id("job", self.env.rng.as_ref());
        let created_ms = self.env.clock.wall_ms();
        // Indexed first: a running batch always has the entry that lets a
        // starting node follow it to its end.
        self.invoke_index(BatchIndexCommand::Add { id: id.clone(), created_ms }).await?;
        let mut items = Vec::with_capacity(requests.len());
        for (position, request) in requests.into_iter().enumerate() {
            let key = format!("{id}/{position}");
            let run = self
                .runs
                .start_on_owner(&request.agent_id, request.texts, request.max_steps, Some(key))
                .await;
            let run = match run {
                Ok(run) => run,
                Err(err) => {
                    // The runs started so far run on (they are the agents'
                    // own runs now); the batch is not stored.
                    self.remove_from_index(&id).await;
                    return Err(err);
                }
            };
            let run_id = run["id"].as_str().ok_or_else(|| unexpected("run without id"))?.to_string();
            items.push(BatchItem { agent_id: request.agent_id, run_id });
        }
        let record = BatchRecord {
            id: id.clone(),
            created_ms,
            updated_ms: created_ms,
            status: BatchStatus::Running,
            completed_ms: None,
            items,
            callback_url,
            callback: None,
        };
        let BatchReply::Batch(Some(stored)) =
            self.invoke(&id, BatchCommand::Create(Box::new(record))).await?
        else {
            return Err(unexpected("batch create"));
        };
        self.watch(id);
        Ok(batch_json(&stored))
    }

    async fn check_callback_url(&self, url: &str) -> ServiceResult<()> {
        if url.is_empty() || url.len() > BATCH_CALLBACK_URL_BYTES_MAX {
            return Err(ServiceError::Invalid(format!(
                "callback_url must be 1..={BATCH_CALLBACK_URL_BYTES_MAX} bytes (BATCH_CALLBACK_URL_BYTES_MAX)"
            )));
        }
        kelpie_tools::mcp::url::check_outbound("callback_url", url, self.allow_internal_urls)
            .await
            .map_err(|err| match err {
                OutboundUrlError::Malformed(reason) => ServiceError::Invalid(reason),
                OutboundUrlError::Internal { url, address } => ServiceError::Invalid(format!(
                    "callback_url {url} resolves to {address}, an internal address; set mcp.allow_internal_urls \
                     to allow it"
                )),
            })
    }

    async fn record(&self, batch_id: &str) -> ServiceResult<BatchRecord> {
        match self.invoke(batch_id, BatchCommand::Get).await? {
            BatchReply::Batch(Some(batch)) => Ok(*batch),
            BatchReply::Batch(None) => Err(ServiceError::BatchNotFound(batch_id.to_string())),
            BatchReply::Ended { .. } => Err(unexpected("batch get")),
        }
    }

    /// `GET /v1/messages/batches/{id}`: the batch; a running batch whose
    /// runs all ended is ended here (its watcher may be gone with its node).
    pub async fn get(&self, batch_id: &str) -> ServiceResult<Value> {
        let mut batch = self.record(batch_id).await?;
        if batch.status == BatchStatus::Running && self.all_ended(&batch).await? {
            batch = self.end(&batch.id, BatchStatus::Completed).await?;
        }
        Ok(batch_json(&batch))
    }

    /// Whether every run of `batch` ended (a run deleted since counts).
    async fn all_ended(&self, batch: &BatchRecord) -> ServiceResult<bool> {
        for item in &batch.items {
            match self.runs.record(&item.run_id).await {
                Ok(run) if run.status == RunStatus::Running => return Ok(false),
                Ok(_) | Err(ServiceError::RunNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// Ends the batch with `status` (a batch already ended keeps its end);
    /// the caller that ended it settles what it owes: the callback, then
    /// its index entry (so two callers never both post the callback).
    async fn end(&self, batch_id: &str, status: BatchStatus) -> ServiceResult<BatchRecord> {
        let at_ms = self.env.clock.wall_ms();
        let BatchReply::Ended { batch, ended_now } =
            self.invoke(batch_id, BatchCommand::End { status, at_ms }).await?
        else {
            return Err(unexpected("batch end"));
        };
        match ended_now {
            true => self.settle(*batch).await,
            false => Ok(*batch),
        }
    }

    /// Posts the callback an ended batch owes, records what it did, and
    /// drops the batch from the index.
    async fn settle(&self, mut batch: BatchRecord) -> ServiceResult<BatchRecord> {
        assert_ne!(batch.status, BatchStatus::Running, "only an ended batch is settled");
        if batch.owes_callback() {
            let outcome = self.post_callback(&batch).await;
            if let BatchReply::Batch(Some(after)) =
                self.invoke(&batch.id, BatchCommand::Called(outcome)).await?
            {
                batch = *after;
            }
        }
        self.remove_from_index(&batch.id).await;
        Ok(batch)
    }

    async fn remove_from_index(&self, batch_id: &str) {
        if let Err(err) = self.invoke_index(BatchIndexCommand::Remove { id: batch_id.to_string() }).await {
            tracing::warn!(%err, batch_id, "cannot drop the batch from the index; its watcher runs again at the next start");
        }
    }

    /// POSTs `{job_id, status, completed_at}` to the batch's callback URL
    /// (checked again: a name may resolve elsewhere now).
    async fn post_callback(&self, batch: &BatchRecord) -> CallbackOutcome {
        let url = batch.callback_url.clone().unwrap_or_default();
        let body = json!({
            "job_id": batch.id, "status": batch.status.as_str(),
            "completed_at": batch.completed_ms.map(rfc3339_micros),
        });
        let result = async {
            self.check_callback_url(&url).await.map_err(|err| err.to_string())?;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(BATCH_CALLBACK_TIMEOUT_MS))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|err| err.to_string())?;
            let response = client.post(&url).json(&body).send().await.map_err(|err| err.to_string())?;
            Ok::<u16, String>(response.status().as_u16())
        }
        .await;
        let sent_ms = self.env.clock.wall_ms();
        match result {
            Ok(code) => CallbackOutcome { sent_ms, status_code: Some(code), error: None },
            Err(error) => {
                tracing::warn!(batch_id = %batch.id, %error, "the batch callback failed");
                CallbackOutcome { sent_ms, status_code: None, error: Some(error) }
            }
        }
    }

    /// `GET /v1/messages/batches`: the running batches (as Letta lists
    /// them: created and running jobs of type batch), paged by id.
    pub async fn list(&self, page: &Page) -> ServiceResult<Vec<Value>> {
        let BatchIndexReply::Batches(mut indexed) = self.invoke_index(BatchIndexCommand::List).await? else {
            return Err(unexpected("batch index list"));
        };
        indexed.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let mut running = Vec::new();
        for (id, _) in paginate(indexed, |(id, _)| id.as_str(), &Page { limit: usize::MAX, ..page.clone() }) {
            if running.len() == page.limit {
                break;
            }
            match self.record(&id).await {
                Ok(batch) if batch.status == BatchStatus::Running => running.push(batch_json(&batch)),
                // Ended, settling its callback; or indexed by a create that
                // failed before storing it.
                Ok(_) | Err(ServiceError::BatchNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(running)
    }

    /// `GET /v1/messages/batches/{id}/messages`: the messages the batch's
    /// runs stored (its requests' inputs and the agents' answers), as
    /// Letta's `Message`, by creation time, of one agent when `agent_id`
    /// is given; paged by message id.
    pub async fn messages(
        &self,
        batch_id: &str,
        agent_id: Option<&str>,
        page: &Page,
    ) -> ServiceResult<Value> {
        let batch = self.record(batch_id).await?;
        let mut messages = Vec::new();
        for item in batch.items.iter().filter(|item| agent_id.is_none_or(|agent| agent == item.agent_id)) {
            let command = AgentCommand::RunMessages { run_id: item.run_id.clone() };
            match self.actors.invoke(&item.agent_id, command).await {
                Ok(AgentReply::RunMessages { messages: stored, .. }) => {
                    messages.extend(
                        stored.into_iter().map(|message| (message.created_ms, message, &item.agent_id)),
                    );
                }
                // A deleted agent took its runs with it.
                Err(ServiceError::AgentNotFound(_)) => {}
                Ok(_) => return Err(unexpected("run messages")),
                Err(err) => return Err(err),
            }
        }
        // By time, then in each agent's own order.
        messages.sort_by(|a, b| (a.0, a.2, a.1.seq).cmp(&(b.0, b.2, b.1.seq)));
        let rendered: Vec<Value> =
            messages.iter().map(|(_, message, agent_id)| internal_message_json(agent_id, message)).collect();
        Ok(json!({"messages": paginate(rendered, json_id, page)}))
    }

    /// `PATCH /v1/messages/batches/{id}/cancel`: ends the batch cancelled
    /// (its callback posted) and cancels its runs still running here (each
    /// ends `cancelled` unless its end was committed first); answers the
    /// batch. An ended batch is answered as it is.
    pub async fn cancel(&self, batch_id: &str) -> ServiceResult<Value> {
        let batch = self.record(batch_id).await?;
        if batch.status == BatchStatus::Running {
            let ended = self.end(batch_id, BatchStatus::Cancelled).await?;
            let mut by_agent: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            for item in &batch.items {
                by_agent.entry(&item.agent_id).or_default().push(item.run_id.clone());
            }
            for (agent_id, run_ids) in by_agent {
                match self.runs.cancel_on_owner(agent_id, run_ids).await {
                    Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            return Ok(batch_json(&ended));
        }
        Ok(batch_json(&batch))
    }

    /// Follows batch `batch_id` to its end in a task of its own.
    fn watch(self: &Arc<Self>, batch_id: String) {
        let this = Arc::clone(self);
        let (handle, registration) = AbortHandle::new_pair();
        let task = async move {
            if let Err(err) = this.follow(&batch_id).await {
                tracing::warn!(%err, batch_id, "following the batch failed; a read of it or the next start ends it");
            }
        };
        self.env.spawner.spawn("batch", Box::pin(Abortable::new(task, registration).map(drop)));
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|watcher| !watcher.is_aborted());
        watchers.push(handle);
    }

    async fn follow(&self, batch_id: &str) -> ServiceResult<()> {
        let batch = self.record(batch_id).await?;
        if batch.status == BatchStatus::Running {
            for item in &batch.items {
                match self.runs.wait_until_ended(&item.run_id).await {
                    Ok(_) | Err(ServiceError::RunNotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            self.end(batch_id, BatchStatus::Completed).await?;
        } else {
            // Ended by a process that stopped before settling it.
            self.settle(batch).await?;
        }
        Ok(())
    }

    /// Starts a watcher for every indexed batch (at a node's start); how many.
    pub async fn recover(self: &Arc<Self>) -> ServiceResult<usize> {
        let BatchIndexReply::Batches(indexed) = self.invoke_index(BatchIndexCommand::List).await? else {
            return Err(unexpected("batch index list"));
        };
        for (id, _) in &indexed {
            match self.record(id).await {
                Ok(_) => self.watch(id.clone()),
                // A create that failed before storing its batch.
                Err(ServiceError::BatchNotFound(_)) => self.remove_from_index(id).await,
                Err(err) => return Err(err),
            }
        }
        Ok(indexed.len())
    }

    pub async fn shutdown(&self) {
        for watcher in self.watchers.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            watcher.abort();
        }
        self.batches.shutdown().await;
        self.index.shutdown().await;
    }
}
