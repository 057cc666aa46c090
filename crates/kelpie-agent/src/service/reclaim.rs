//! Reclaiming what deletes, resets and abandoned imports leave in storage,
//! in bounded batches, in the background, resumed after a crash.
//!
//! The protocol: before an operation that leaves keys behind, the agent is
//! put on the durable list ([`crate::actors::reclaim`]); the agent actor
//! ends the generation at once (the user sees the agent gone or reset);
//! the loop here then asks the agent actor to delete up to
//! `RECLAIM_BATCH_KEYS_COUNT` keys per invocation until it answers that
//! nothing is left, and only then takes the agent off the list. Every step
//! is idempotent, so a crash anywhere is repaired by running the loop
//! again; an entry whose agent has nothing to reclaim is simply removed.

use std::sync::Arc;

use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;

use super::agent_actors::AgentActors;
use super::worker::{Worker, WorkerSpec};
use crate::actors::agent::{AgentCommand, AgentReply};
use crate::actors::reclaim::{
    ImportDecision, PendingEntry, PendingKind, ReclaimActor, ReclaimCommand, ReclaimReply,
    DECISIONS_PAGE_COUNT_MAX, RECLAIM_ACTOR, RECLAIM_PAGE_COUNT_MAX,
};
use crate::error::{unexpected, ServiceResult};
use crate::limits::RECLAIM_BATCH_KEYS_COUNT;

/// How long an import may go without progress before it is taken as
/// abandoned, in milliseconds.
pub const IMPORT_LEASE_MS: u64 = 10 * 60 * 1000;
/// Pause of the background loop when the list is empty or a pass failed.
pub const RECLAIM_IDLE_POLL_MS: u64 = 1_000;

pub struct Reclaimer {
    list: Runtime<ReclaimActor>,
    actors: Arc<AgentActors>,
    env: Env,
    worker: Worker,
}

impl Reclaimer {
    pub(crate) fn new(list: Runtime<ReclaimActor>, actors: Arc<AgentActors>, env: Env) -> Self {
        Reclaimer { list, actors, env, worker: Worker::default() }
    }

    fn list_id() -> ActorId {
        ActorId::new(RECLAIM_ACTOR.0, RECLAIM_ACTOR.1).expect("a valid actor id")
    }

    async fn command(&self, command: ReclaimCommand) -> ServiceResult<ReclaimReply> {
        Ok(self.list.invoke(&Self::list_id(), command).await?)
    }

    /// Puts `agent_id` on the list; call before the operation that leaves
    /// keys to reclaim.
    pub async fn note(&self, agent_id: &str, kind: PendingKind) -> ServiceResult<()> {
        self.command(ReclaimCommand::Put(PendingEntry { agent_id: agent_id.to_string(), kind })).await?;
        Ok(())
    }

    /// An import's entry, its lease running from now.
    pub(crate) fn import_kind(&self) -> PendingKind {
        PendingKind::Import { lease_expires_ms: self.env.clock.wall_ms() + IMPORT_LEASE_MS }
    }

    /// Takes `agent_id` off the list if its entry is still `kind`.
    pub(crate) async fn forget(&self, agent_id: &str, kind: PendingKind) -> ServiceResult<()> {
        self.command(ReclaimCommand::Remove { agent_id: agent_id.to_string(), kind }).await?;
        Ok(())
    }

    /// Records `decision` and takes its agents' import entries (`entries`)
    /// off the list in one commit: from here the import rolls forward.
    pub(crate) async fn decide(
        &self,
        decision: &ImportDecision,
        entries: Vec<PendingEntry>,
    ) -> ServiceResult<()> {
        assert_eq!(decision.agents.len(), entries.len(), "one entry per decided agent");
        let decide = ReclaimCommand::Decide { decision: Box::new(decision.clone()), entries };
        self.command(decide).await?;
        Ok(())
    }

    /// Up to `DECISIONS_PAGE_COUNT_MAX` decided imports after import `after`.
    pub async fn decisions(&self, after: Option<String>) -> ServiceResult<Vec<ImportDecision>> {
        let page = ReclaimCommand::Decisions { after, limit: DECISIONS_PAGE_COUNT_MAX };
        match self.command(page).await? {
            ReclaimReply::Decisions(decisions) => Ok(decisions),
            _ => Err(unexpected("decided imports")),
        }
    }

    /// Forgets decided import `import_id`: all it decided has appeared.
    pub(crate) async fn settle(&self, import_id: &str) -> ServiceResult<()> {
        self.command(ReclaimCommand::Settle { id: import_id.to_string() }).await?;
        Ok(())
    }

    /// Reclaims everything agent `entry` left, then takes it off the list;
    /// an import still within its lease is left alone (`false`).
    async fn reclaim(&self, entry: &PendingEntry) -> ServiceResult<bool> {
        let agent_ref = self.actors.agent_ref(&entry.agent_id)?;
        if let PendingKind::Import { lease_expires_ms } = entry.kind {
            if self.env.clock.wall_ms() < lease_expires_ms {
                return Ok(false);
            }
            agent_ref.invoke(AgentCommand::AbandonImport).await?;
        }
        loop {
            let reply =
                agent_ref.invoke(AgentCommand::Reclaim { keys_max: RECLAIM_BATCH_KEYS_COUNT }).await?;
            match reply {
                AgentReply::Reclaimed { done: true } => break,
                AgentReply::Reclaimed { done: false } => continue,
                _ => return Err(unexpected("reclaim")),
            }
        }
        self.forget(&entry.agent_id, entry.kind.clone()).await?;
        Ok(true)
    }

    /// Every entry of the list, in agent id order.
    pub async fn pending(&self) -> ServiceResult<Vec<PendingEntry>> {
        let mut all: Vec<PendingEntry> = Vec::new();
        loop {
            let after = all.last().map(|entry| entry.agent_id.clone());
            let ReclaimReply::Entries(entries) =
                self.command(ReclaimCommand::Page { after, limit: RECLAIM_PAGE_COUNT_MAX }).await?
            else {
                return Err(unexpected("reclaim list"));
            };
            let full = entries.len() == RECLAIM_PAGE_COUNT_MAX;
            all.extend(entries);
            if !full {
                return Ok(all);
            }
        }
    }

    /// One pass over the whole list; how many agents were fully reclaimed.
    pub async fn run_once(&self) -> ServiceResult<usize> {
        let mut after: Option<String> = None;
        let mut reclaimed = 0;
        loop {
            let page = ReclaimCommand::Page { after: after.clone(), limit: RECLAIM_PAGE_COUNT_MAX };
            let ReclaimReply::Entries(entries) = self.command(page).await? else {
                return Err(unexpected("reclaim list"));
            };
            for entry in &entries {
                if self.reclaim(entry).await? {
                    reclaimed += 1;
                }
            }
            match entries.last() {
                Some(last) if entries.len() == RECLAIM_PAGE_COUNT_MAX => after = Some(last.agent_id.clone()),
                _ => return Ok(reclaimed),
            }
        }
    }

    /// Starts the background loop: a pass, then another after
    /// `RECLAIM_IDLE_POLL_MS` when the last one found nothing or failed.
    pub fn start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let spec = WorkerSpec {
            name: "reclaimer",
            failure: "reclaiming deleted agents' storage failed",
            idle_poll_ms: RECLAIM_IDLE_POLL_MS,
            wake: None,
        };
        self.worker.start(&self.env, spec, move || {
            let this = Arc::clone(&this);
            async move { this.run_once().await }
        });
    }

    pub async fn shutdown(&self) {
        self.worker.stop();
        self.list.shutdown().await;
    }
}
