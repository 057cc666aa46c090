//! Message batches (Letta's `/v1/messages/batches`): one request per agent,
//! each run as a background run of its agent. A batch is its own actor
//! (`batch/<job id>`) holding which run each request became, its status and
//! what its callback did; the batch index (`batch-index/all`) holds the
//! batches still running, which are what Letta lists and what a starting
//! node watches to their end.

use std::collections::BTreeMap;

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

/// The namespace of the batch actors (one per batch, by its id).
pub const BATCH_NAMESPACE: &str = "batch";
/// The batch index's own actor id (namespace, id).
pub const BATCH_INDEX_ACTOR: (&str, &str) = ("batch-index", "all");
/// Most requests (agents) in one batch.
pub const BATCH_REQUESTS_COUNT_MAX: usize = 1_000;
/// Most batches running at once, over the whole cluster.
pub const BATCHES_RUNNING_COUNT_MAX: usize = 1_000;

/// Letta's job statuses a batch takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchStatus {
    Running,
    /// Every run ended (each with its own status).
    Completed,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Running => "running",
            BatchStatus::Completed => "completed",
            BatchStatus::Cancelled => "cancelled",
        }
    }
}

/// One request of a batch: its agent and the background run it became.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    pub agent_id: String,
    pub run_id: String,
}

/// What posting the callback did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackOutcome {
    pub sent_ms: u64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub status: BatchStatus,
    pub completed_ms: Option<u64>,
    pub items: Vec<BatchItem>,
    pub callback_url: Option<String>,
    pub callback: Option<CallbackOutcome>,
}

impl BatchRecord {
    /// Whether the batch still owes its callback (it ended, one is asked
    /// for and none was attempted yet).
    pub fn owes_callback(&self) -> bool {
        self.status != BatchStatus::Running && self.callback_url.is_some() && self.callback.is_none()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchState {
    pub record: Option<BatchRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum BatchCommand {
    /// Stores the batch; a batch with this id already stored stays as it is.
    Create(Box<BatchRecord>),
    Get,
    /// Ends the running batch with `status` at `at_ms`; an ended batch
    /// keeps its end. Answers whether this call ended it, with the batch.
    End {
        status: BatchStatus,
        at_ms: u64,
    },
    /// Records what the callback did (once; a later outcome is ignored).
    Called(CallbackOutcome),
}

#[derive(Serialize, Deserialize)]
pub enum BatchReply {
    Batch(Option<Box<BatchRecord>>),
    Ended { ended_now: bool, batch: Box<BatchRecord> },
}

pub struct BatchActor;

fn missing(ctx: &ActorContext<'_, BatchState>) -> Error {
    Error::NotFound { kind: "batch", id: ctx.actor_id.id().to_string() }
}

impl Actor for BatchActor {
    type State = BatchState;
    type Message = BatchCommand;
    type Reply = BatchReply;

    /// Only `Create` may activate a batch actor that holds no batch: asking
    /// for an id no batch has claims no placement and starts no activation.
    fn screens_activation(&self, command: &BatchCommand) -> bool {
        !matches!(command, BatchCommand::Create(_))
    }

    fn admit_activation(&self, actor_id: &kelpie_core::ActorId, stored: Option<&BatchState>) -> Result<()> {
        match stored {
            Some(BatchState { record: Some(_) }) => Ok(()),
            _ => Err(Error::NotFound { kind: "batch", id: actor_id.id().to_string() }),
        }
    }

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, BatchState>,
        command: BatchCommand,
    ) -> Result<BatchReply> {
        match command {
            BatchCommand::Create(record) => {
                assert_eq!(record.id, ctx.actor_id.id(), "a batch lives in its own actor");
                assert!(
                    record.items.len() <= BATCH_REQUESTS_COUNT_MAX,
                    "the service bounds a batch's requests"
                );
                if ctx.state.record.is_none() {
                    ctx.state.record = Some(*record);
                }
                Ok(BatchReply::Batch(ctx.state.record.clone().map(Box::new)))
            }
            BatchCommand::Get => Ok(BatchReply::Batch(ctx.state.record.clone().map(Box::new))),
            BatchCommand::End { status, at_ms } => {
                assert_ne!(status, BatchStatus::Running, "a batch ends completed or cancelled");
                let error = missing(ctx);
                let record = ctx.state.record.as_mut().ok_or(error)?;
                let ended_now = record.status == BatchStatus::Running;
                if ended_now {
                    record.status = status;
                    record.completed_ms = Some(at_ms);
                    record.updated_ms = at_ms;
                }
                Ok(BatchReply::Ended { ended_now, batch: Box::new(record.clone()) })
            }
            BatchCommand::Called(outcome) => {
                let error = missing(ctx);
                let record = ctx.state.record.as_mut().ok_or(error)?;
                if record.callback.is_none() {
                    record.updated_ms = record.updated_ms.max(outcome.sent_ms);
                    record.callback = Some(outcome);
                }
                Ok(BatchReply::Batch(Some(Box::new(record.clone()))))
            }
        }
    }
}

/// The batches still running (or owing their callback), by id, with their
/// creation time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchIndexState {
    pub running: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize)]
pub enum BatchIndexCommand {
    /// Refused past [`BATCHES_RUNNING_COUNT_MAX`].
    Add {
        id: String,
        created_ms: u64,
    },
    Remove {
        id: String,
    },
    List,
}

#[derive(Serialize, Deserialize)]
pub enum BatchIndexReply {
    Done,
    /// (id, created_ms) of every indexed batch.
    Batches(Vec<(String, u64)>),
}

pub struct BatchIndexActor;

impl Actor for BatchIndexActor {
    type State = BatchIndexState;
    type Message = BatchIndexCommand;
    type Reply = BatchIndexReply;

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, BatchIndexState>,
        command: BatchIndexCommand,
    ) -> Result<BatchIndexReply> {
        match command {
            BatchIndexCommand::Add { id, created_ms } => {
                if !ctx.state.running.contains_key(&id)
                    && ctx.state.running.len() >= BATCHES_RUNNING_COUNT_MAX
                {
                    return Err(Error::LimitExceeded {
                        what: "running batches".into(),
                        actual: ctx.state.running.len() as u64 + 1,
                        limit_name: "BATCHES_RUNNING_COUNT_MAX",
                        limit: BATCHES_RUNNING_COUNT_MAX as u64,
                    });
                }
                ctx.state.running.insert(id, created_ms);
                Ok(BatchIndexReply::Done)
            }
            BatchIndexCommand::Remove { id } => {
                ctx.state.running.remove(&id);
                Ok(BatchIndexReply::Done)
            }
            BatchIndexCommand::List => Ok(BatchIndexReply::Batches(
                ctx.state.running.iter().map(|(id, created_ms)| (id.clone(), *created_ms)).collect(),
            )),
        }
    }
}
