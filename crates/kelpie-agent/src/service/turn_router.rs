//! Running one agent's turn, or another operation that takes its turn
//! lock, on the node that owns the agent, for the operations that act on
//! several agents from inside the service: a group turn (its members'
//! runs), a sleeptime group's member runs after its manager's turn, a group
//! reset, a message batch (its requests' runs, its cancel).
//!
//! A turn runs only where the agent's lease is (it uses `invoke_local`
//! between its LLM calls, under the agent's turn lock), so such an
//! operation asks a [`TurnRouter`] first. The server injects one in a
//! cluster (kelpie-server's `forward::OwnerRouter`): when another live node
//! owns the agent, it sends that node the HTTP request the operation
//! stands for (`POST /v1/agents/{id}/messages/async`, `.../messages/cancel`,
//! `PATCH .../reset-messages`) through the same forwarding a client's
//! agent request takes, and answers the owner's reply; otherwise (this node
//! owns the agent or has just claimed it) the caller runs the operation
//! here. Without a router (a single node) everything runs here.
//! The whole story: docs/cluster.md, "Forwarding".

use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;
use serde_json::Value;

use crate::error::ServiceResult;

/// One operation of one agent that must run on the agent's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerOp {
    /// `Runs::start`: a background run over the user's `texts`; answers
    /// the run as stored, running.
    StartRun { texts: Vec<String>, max_steps: Option<u32>, idempotency_key: Option<String> },
    /// `Runs::cancel` of these runs; answers `{run_id: "cancelled"}`.
    CancelRuns { run_ids: Vec<String> },
    /// `Agents::reset_messages`; answers the agent.
    ResetMessages,
}

/// Sends an agent's operation to the node that owns the agent.
pub trait TurnRouter: Send + Sync {
    /// Runs `op` of `agent_id` on its owner when that is another node, and
    /// answers what the owner answered (errors as the local operation's);
    /// `None` when this node serves it (it owns the agent, or claimed it):
    /// then the caller runs it here.
    fn on_owner<'a>(
        &'a self,
        agent_id: &'a str,
        op: &'a OwnerOp,
    ) -> BoxFuture<'a, ServiceResult<Option<Value>>>;
}

/// The router of a service, empty (everything runs here) until set.
#[derive(Default, Clone)]
pub struct TurnRouterSlot(Arc<OnceLock<Arc<dyn TurnRouter>>>);

impl TurnRouterSlot {
    /// Sets the router; only the first call counts.
    pub fn set(&self, router: Arc<dyn TurnRouter>) {
        let set = self.0.set(router).is_ok();
        debug_assert!(set, "the turn router is set once");
    }

    /// [`TurnRouter::on_owner`], or `None` (run here) without a router.
    pub async fn on_owner(&self, agent_id: &str, op: &OwnerOp) -> ServiceResult<Option<Value>> {
        match self.0.get() {
            Some(router) => router.on_owner(agent_id, op).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex;

    /// Serves agents named `agent-far` elsewhere, answering a fixed run.
    struct Far(Mutex<Vec<(String, OwnerOp)>>);

    impl TurnRouter for Far {
        fn on_owner<'a>(
            &'a self,
            agent_id: &'a str,
            op: &'a OwnerOp,
        ) -> BoxFuture<'a, ServiceResult<Option<Value>>> {
            async move {
                self.0.lock().unwrap().push((agent_id.to_string(), op.clone()));
                Ok((agent_id == "agent-far").then(|| serde_json::json!({"id": "run-far"})))
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn an_empty_slot_runs_here_and_a_set_one_asks_its_router() {
        let slot = TurnRouterSlot::default();
        let op = OwnerOp::ResetMessages;
        assert_eq!(slot.on_owner("agent-far", &op).await.unwrap(), None);
        let far = Arc::new(Far(Mutex::new(Vec::new())));
        slot.clone().set(Arc::clone(&far) as Arc<dyn TurnRouter>);
        let start = OwnerOp::StartRun { texts: vec!["hi".into()], max_steps: Some(2), idempotency_key: None };
        assert_eq!(
            slot.on_owner("agent-far", &start).await.unwrap(),
            Some(serde_json::json!({"id": "run-far"}))
        );
        assert_eq!(slot.on_owner("agent-near", &op).await.unwrap(), None);
        assert_eq!(
            *far.0.lock().unwrap(),
            vec![("agent-far".to_string(), start), ("agent-near".to_string(), op)]
        );
    }
}
