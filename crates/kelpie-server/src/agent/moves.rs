//! Moving agents between nodes of a cluster (rebalancing on join, drain on
//! leave). The plan is kelpie-cluster's (`rebalance`); this carries one
//! move out for an agent: with the agent's turn lock held, so a turn in
//! progress finishes on the old owner and the next one waits for the move,
//! the activation finishes its queued work, saves and releases its lease,
//! and then `complete` makes the target claim it. A request that meets the
//! agent mid-move fails with a retriable error or waits, and then reaches
//! the new owner; none is applied twice because every commit is fenced.

use std::future::Future;

use kelpie_core::{ActorId, Result};

use super::actor::AGENT_NAMESPACE;
use super::service::AgentService;

impl AgentService {
    /// The agents active on this node, least recently used first.
    pub fn active_agents(&self) -> Vec<ActorId> {
        self.agents.active_actors()
    }

    /// Deactivates `actor_id` here under its turn lock, then runs
    /// `complete` (the target's claim) before letting turns proceed.
    pub async fn hand_off<F>(&self, actor_id: &ActorId, complete: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        assert_eq!(actor_id.namespace(), AGENT_NAMESPACE, "only agents are moved");
        let lock = self.turn_lock(actor_id.id());
        let _turn = lock.lock().await;
        self.agents.deactivate(actor_id).await;
        complete.await
    }
}
