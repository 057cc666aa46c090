//! The durable list of agents whose storage may need reclaiming: one actor
//! with a key per agent (`a/<agent id>`), written *before* the work that
//! leaves something to reclaim (a delete, a reset, an import), so a crash
//! at any point leaves an entry behind and the work is resumed after a
//! restart. The agent's own state says what is left; an entry only says
//! "ask it". See `service::reclaim` for the loop that does the work.

use std::ops::Bound;

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_storage::{KeyRange, ScanOrder};
use serde::{Deserialize, Serialize};

/// The list's own actor id (namespace, id).
pub const RECLAIM_ACTOR: (&str, &str) = ("reclaim", "pending");
/// Most entries one page of the list returns.
pub const RECLAIM_PAGE_COUNT_MAX: usize = 256;

/// Why an agent is on the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingKind {
    /// A delete or a reset left ended generations of keys.
    Ended,
    /// An import is writing the agent's history. Until `lease_expires_ms`
    /// (wall clock) it is in progress and left alone; past it, it is taken
    /// as abandoned (its server stopped) and its keys are reclaimed.
    Import { lease_expires_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub agent_id: String,
    pub kind: PendingKind,
}

#[derive(Serialize, Deserialize)]
pub enum ReclaimCommand {
    /// Adds or replaces the entry of `entry.agent_id`.
    Put(PendingEntry),
    /// Removes the entry of `agent_id` if it is still `kind` (an import's
    /// entry replaced by a later delete stays).
    Remove { agent_id: String, kind: PendingKind },
    /// Up to `limit` entries after `after` (an agent id), in id order.
    Page { after: Option<String>, limit: usize },
}

#[derive(Serialize, Deserialize)]
pub enum ReclaimReply {
    Done,
    Entries(Vec<PendingEntry>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReclaimState {}

pub struct ReclaimActor;

fn entry_key(agent_id: &str) -> Vec<u8> {
    format!("a/{agent_id}").into_bytes()
}

fn decode(bytes: &[u8]) -> Result<PendingEntry> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corruption { location: "reclaim entry".into(), reason: e.to_string() })
}

impl Actor for ReclaimActor {
    type State = ReclaimState;
    type Message = ReclaimCommand;
    type Reply = ReclaimReply;

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, ReclaimState>,
        command: ReclaimCommand,
    ) -> Result<ReclaimReply> {
        match command {
            ReclaimCommand::Put(entry) => {
                let bytes = serde_json::to_vec(&entry).map_err(|e| Error::Internal(e.to_string()))?;
                ctx.kv_put(&entry_key(&entry.agent_id), bytes)?;
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::Remove { agent_id, kind } => {
                if let Some(bytes) = ctx.kv_get(&entry_key(&agent_id)).await? {
                    if decode(&bytes)?.kind == kind {
                        ctx.kv_delete(&entry_key(&agent_id))?;
                    }
                }
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::Page { after, limit } => {
                let mut range = KeyRange::prefix(b"a/".to_vec());
                if let Some(after) = after {
                    range.start = Bound::Excluded(entry_key(&after));
                }
                let limit = limit.clamp(1, RECLAIM_PAGE_COUNT_MAX);
                let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, limit).await?;
                let entries = rows.iter().map(|(_, value)| decode(value)).collect::<Result<_>>()?;
                Ok(ReclaimReply::Entries(entries))
            }
        }
    }
}
