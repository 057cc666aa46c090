//! Rolling decided imports forward. An import of one or several agents
//! writes each invisibly; once all are written it records its decision
//! (the agents with their final names, the blocks they share, its groups
//! with ids drawn then) and takes its agents off the reclaim list, in one
//! commit ([`crate::actors::reclaim`]), with the folders and MCP servers it
//! made. From that commit on the import only goes forward: the MCP servers
//! of the file's names here take the file's config, every agent is listed
//! and made visible, then the shared blocks and the groups are made and
//! the folders attached, then the decision is forgotten.
//!
//! Every step changes nothing when done already (setting a config, listing,
//! finishing an import, adopting a block, making a group under its decided
//! id, attaching a folder), so the
//! importing request and, after a crash or a failed step, the background
//! pass here can take a decision to its end, and the user sees either
//! nothing of the file or all of it. The pass leaves alone the decisions
//! this process's own imports are rolling forward. An agent deleted
//! between two attempts is left out, and so is a group naming it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use kelpie_core::Env;

use super::agent_actors::AgentActors;
use super::agent_files::AgentFiles;
use super::directory::AgentDirectory;
use super::groups::Groups;
use super::mcp::McpServers;
use super::reclaim::Reclaimer;
use super::shared_blocks::SharedBlocks;
use super::worker::{Worker, WorkerSpec};
use crate::actors::agent::AgentCommand;
use crate::actors::directory::DirectoryEntry;
use crate::actors::reclaim::{ImportDecision, PendingEntry, DECISIONS_PAGE_COUNT_MAX};
use crate::error::{ServiceError, ServiceResult};

/// Pause of the background pass when no decided import waits.
pub const DECIDED_IMPORTS_IDLE_POLL_MS: u64 = 1_000;

pub struct DecidedImports {
    reclaimer: Arc<Reclaimer>,
    actors: Arc<AgentActors>,
    directory: Arc<AgentDirectory>,
    blocks: Arc<SharedBlocks>,
    groups: Arc<Groups>,
    agent_files: Arc<AgentFiles>,
    mcp: Arc<McpServers>,
    /// The decisions this process's imports are rolling forward themselves.
    live: Mutex<BTreeSet<String>>,
    worker: Worker,
    env: Env,
}

impl DecidedImports {
    pub(crate) fn new(
        reclaimer: Arc<Reclaimer>,
        actors: Arc<AgentActors>,
        directory: Arc<AgentDirectory>,
        (blocks, groups, agent_files): (Arc<SharedBlocks>, Arc<Groups>, Arc<AgentFiles>),
        mcp: Arc<McpServers>,
        env: Env,
    ) -> Self {
        DecidedImports {
            reclaimer,
            actors,
            directory,
            blocks,
            groups,
            agent_files,
            mcp,
            live: Mutex::new(BTreeSet::new()),
            worker: Worker::default(),
            env,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `decision` (one commit, which also takes `entries`, its
    /// agents' import entries, and `made`, the ids of the folders and MCP
    /// servers it made, off the reclaim list), held by the caller,
    /// who then calls [`Self::roll_forward_held`]. A decision whose record
    /// failed stays held: its import takes its agents back, and the pass
    /// of this process must not make them appear meanwhile.
    pub(crate) async fn decide(
        &self,
        decision: &ImportDecision,
        entries: Vec<PendingEntry>,
        made: Vec<String>,
    ) -> ServiceResult<()> {
        assert!(!decision.agents.is_empty(), "an import decides at least one agent");
        let inserted = self.live().insert(decision.id.clone());
        assert!(inserted, "a decision is recorded once");
        self.reclaimer.decide(decision, entries, made).await
    }

    /// Rolls forward a decision [`Self::decide`] recorded, then hands it
    /// to the background pass (which finds nothing left, or finishes what
    /// a failed step left); the agents that appeared, in decision order.
    pub(crate) async fn roll_forward_held(&self, decision: &ImportDecision) -> ServiceResult<Vec<String>> {
        let outcome = self.roll_forward(decision).await;
        let released = self.live().remove(&decision.id);
        assert!(released, "a held decision is released once");
        outcome
    }

    /// Takes `decision` to its end: MCP servers configured, agents listed
    /// and visible, shared blocks made, groups made, folders attached, the
    /// decision forgotten.
    async fn roll_forward(&self, decision: &ImportDecision) -> ServiceResult<Vec<String>> {
        self.set_mcp_configs(decision).await?;
        let mut visible = Vec::with_capacity(decision.agents.len());
        for agent in &decision.agents {
            // Listed before it is visible: the listing skips an agent it
            // cannot read.
            let entry =
                DirectoryEntry { id: agent.id.clone(), name: agent.name.clone(), tags: agent.tags.clone() };
            self.directory.register(entry).await?;
            let finish = AgentCommand::ImportFinish {
                name: agent.name.clone(),
                tool_ids: agent.tool_ids.clone(),
                drop_messages: agent.drop_messages,
            };
            match self.actors.invoke(&agent.id, finish).await {
                Ok(_) => visible.push(agent.id.clone()),
                // Deleted since it appeared, or taken back before: not listed.
                Err(ServiceError::AgentNotFound(_)) => self.directory.unregister(&agent.id).await?,
                Err(err) => return Err(err),
            }
        }
        for block in &decision.shared_blocks {
            let holders: Vec<String> =
                block.holders.iter().filter(|holder| visible.contains(holder)).cloned().collect();
            let copy = match (holders.first(), &block.unheld) {
                (Some(holder), _) => {
                    let record = self.actors.record(holder).await?;
                    record.memory.blocks().iter().find(|held| held.id == block.id).cloned()
                }
                (None, unheld) => unheld.clone(),
            };
            match copy {
                Some(copy) => self.blocks.adopt(copy, &holders).await?,
                None => {
                    tracing::warn!(block_id = %block.id, import = %decision.id, "a shared block of an import is held by no agent left; not made")
                }
            }
        }
        for group in &decision.groups {
            match self.groups.make_decided(group.clone()).await {
                Ok(()) => {}
                Err(err @ (ServiceError::AgentNotFound(_) | ServiceError::BlockNotFound(_))) => {
                    tracing::warn!(%err, group_id = %group.id, import = %decision.id, "a group of an import names what is gone; not made");
                }
                Err(err) => return Err(err),
            }
        }
        self.attach_folders(decision, &visible).await?;
        self.reclaimer.settle(&decision.id).await?;
        Ok(visible)
    }

    /// As Letta, a server of a name the file gives, here before the
    /// import, takes the file's config: once the import is decided, crash
    /// or not.
    async fn set_mcp_configs(&self, decision: &ImportDecision) -> ServiceResult<()> {
        for decided in &decision.mcp_configs {
            match self.mcp.set_config(&decided.id, &decided.config).await {
                Ok(()) => {}
                Err(err @ ServiceError::McpServerNotFound(_)) => {
                    tracing::warn!(%err, mcp_server_id = %decided.id, import = %decision.id, "an MCP server of an import is gone; its config not set");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Attaches the import's folders to the agents of `visible` that name
    /// them; attaching again after a crash finds them attached already.
    async fn attach_folders(&self, decision: &ImportDecision, visible: &[String]) -> ServiceResult<()> {
        for folder in &decision.folders {
            for agent_id in folder.agent_ids.iter().filter(|id| visible.contains(id)) {
                match self.agent_files.attach(agent_id, &folder.id).await {
                    Ok(_) => {}
                    Err(err @ (ServiceError::AgentNotFound(_) | ServiceError::FolderNotFound(_))) => {
                        tracing::warn!(%err, folder_id = %folder.id, import = %decision.id, "a folder of an import is gone; not attached");
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// One pass: every decided import no import of this process holds,
    /// rolled forward; how many.
    pub async fn run_once(&self) -> ServiceResult<usize> {
        let mut after: Option<String> = None;
        let mut finished = 0;
        loop {
            let page = self.reclaimer.decisions(after.clone()).await?;
            for decision in &page {
                if self.live().contains(&decision.id) {
                    continue;
                }
                let visible = self.roll_forward(decision).await?;
                tracing::info!(import = %decision.id, agents = visible.len(), "a decided import was finished");
                finished += 1;
            }
            match page.last() {
                Some(last) if page.len() == DECISIONS_PAGE_COUNT_MAX => after = Some(last.id.clone()),
                _ => return Ok(finished),
            }
        }
    }

    /// Starts the background pass: at once (the decisions a crash left),
    /// then every `DECIDED_IMPORTS_IDLE_POLL_MS` while none waits.
    pub fn start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let spec = WorkerSpec {
            name: "decided-imports",
            failure: "finishing a decided import failed",
            idle_poll_ms: DECIDED_IMPORTS_IDLE_POLL_MS,
            wake: None,
        };
        self.worker.start(&self.env, spec, move || {
            let this = Arc::clone(&this);
            async move { this.run_once().await }
        });
    }

    pub fn shutdown(&self) {
        self.worker.stop();
    }
}
