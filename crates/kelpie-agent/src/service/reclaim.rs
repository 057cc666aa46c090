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
//!
//! The folders and MCP servers an import makes before its decision are on
//! the list too, from before each is made: the decision takes them off;
//! without one, once their lease is out, the loop deletes each as a user's
//! delete does (a folder's files are then reclaimed by the document
//! worker) and takes it off. A folder or server already gone (never made,
//! or deleted since) is simply taken off.

use std::sync::Arc;

use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;

use super::agent_actors::AgentActors;
use super::folders::Folders;
use super::mcp::McpServers;
use super::worker::{Worker, WorkerSpec};
use crate::actors::agent::{AgentCommand, AgentReply};
use crate::actors::reclaim::{
    ImportDecision, MadeEntry, MadeKind, PendingEntry, PendingKind, ReclaimActor, ReclaimCommand,
    ReclaimReply, DECISIONS_PAGE_COUNT_MAX, RECLAIM_ACTOR, RECLAIM_PAGE_COUNT_MAX,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::limits::RECLAIM_BATCH_KEYS_COUNT;

/// How long an import may go without progress before it is taken as
/// abandoned, in milliseconds.
pub const IMPORT_LEASE_MS: u64 = 10 * 60 * 1000;
/// Pause of the background loop when the list is empty or a pass failed.
pub const RECLAIM_IDLE_POLL_MS: u64 = 1_000;

pub struct Reclaimer {
    list: Runtime<ReclaimActor>,
    actors: Arc<AgentActors>,
    /// Where an abandoned import's folders and MCP servers are deleted.
    folders: Arc<Folders>,
    mcp: Arc<McpServers>,
    env: Env,
    worker: Worker,
}

impl Reclaimer {
    pub(crate) fn new(
        list: Runtime<ReclaimActor>,
        actors: Arc<AgentActors>,
        (folders, mcp): (Arc<Folders>, Arc<McpServers>),
        env: Env,
    ) -> Self {
        Reclaimer { list, actors, folders, mcp, env, worker: Worker::default() }
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

    /// Puts what an import is about to make, `id` of `kind`, on the list,
    /// its lease running from now; call before making it.
    pub(crate) async fn note_made(&self, id: &str, kind: MadeKind) -> ServiceResult<()> {
        let lease_expires_ms = self.env.clock.wall_ms() + IMPORT_LEASE_MS;
        self.command(ReclaimCommand::PutMade(MadeEntry { id: id.to_string(), kind, lease_expires_ms }))
            .await?;
        Ok(())
    }

    /// Takes made `id` off the list (its import deleted it itself).
    pub(crate) async fn forget_made(&self, id: &str) -> ServiceResult<()> {
        self.command(ReclaimCommand::RemoveMade { id: id.to_string() }).await?;
        Ok(())
    }

    /// Records `decision` and takes its agents' import entries (`entries`)
    /// and what it made (`made`, by id) off the list in one commit: from
    /// here the import rolls forward.
    pub(crate) async fn decide(
        &self,
        decision: &ImportDecision,
        entries: Vec<PendingEntry>,
        made: Vec<String>,
    ) -> ServiceResult<()> {
        assert_eq!(decision.agents.len(), entries.len(), "one entry per decided agent");
        let decide = ReclaimCommand::Decide { decision: Box::new(decision.clone()), entries, made };
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

    /// Deletes what an import made if its lease is out (`false` if not),
    /// then takes it off the list.
    async fn reclaim_made(&self, entry: &MadeEntry) -> ServiceResult<bool> {
        if self.env.clock.wall_ms() < entry.lease_expires_ms {
            return Ok(false);
        }
        let deleted = match entry.kind {
            MadeKind::Folder => self.folders.delete(&entry.id).await.map(|_| ()),
            MadeKind::McpServer => self.mcp.delete(&entry.id).await,
        };
        match deleted {
            Ok(()) => {
                tracing::info!(id = %entry.id, kind = ?entry.kind, "an undecided import's leftover was deleted")
            }
            // Never made (the import stopped before), or deleted since.
            Err(ServiceError::FolderNotFound(_) | ServiceError::McpServerNotFound(_)) => {}
            Err(err) => return Err(err),
        }
        self.forget_made(&entry.id).await?;
        Ok(true)
    }

    /// Every made entry of the list, in id order.
    pub async fn made(&self) -> ServiceResult<Vec<MadeEntry>> {
        let mut all: Vec<MadeEntry> = Vec::new();
        loop {
            let after = all.last().map(|entry| entry.id.clone());
            let page = ReclaimCommand::MadePage { after, limit: RECLAIM_PAGE_COUNT_MAX };
            let ReclaimReply::Made(entries) = self.command(page).await? else {
                return Err(unexpected("made list"));
            };
            let full = entries.len() == RECLAIM_PAGE_COUNT_MAX;
            all.extend(entries);
            if !full {
                return Ok(all);
            }
        }
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

    /// One pass over the whole list; how many agents were fully reclaimed
    /// and leftovers of undecided imports deleted.
    pub async fn run_once(&self) -> ServiceResult<usize> {
        Ok(self.run_agents_once().await? + self.run_made_once().await?)
    }

    /// One pass over the made entries; how many were deleted.
    async fn run_made_once(&self) -> ServiceResult<usize> {
        let mut after: Option<String> = None;
        let mut deleted = 0;
        loop {
            let page = ReclaimCommand::MadePage { after: after.clone(), limit: RECLAIM_PAGE_COUNT_MAX };
            let ReclaimReply::Made(entries) = self.command(page).await? else {
                return Err(unexpected("made list"));
            };
            for entry in &entries {
                if self.reclaim_made(entry).await? {
                    deleted += 1;
                }
            }
            match entries.last() {
                Some(last) if entries.len() == RECLAIM_PAGE_COUNT_MAX => after = Some(last.id.clone()),
                _ => return Ok(deleted),
            }
        }
    }

    /// One pass over the agents of the list; how many were fully reclaimed.
    async fn run_agents_once(&self) -> ServiceResult<usize> {
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
