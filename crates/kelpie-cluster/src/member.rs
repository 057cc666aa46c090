//! [`Member`]: the I/O shell around [`LocalMember`]. It registers the node
//! in a [`NodeStore`] (PostgreSQL's `NodeTable` in production, a
//! [`crate::MemoryNodeStore`] on the simulation's true clock in DST), runs the heartbeat loop on the environment's task
//! spawner and clock, carries out the core's actions, and answers "who is in
//! the cluster" by judging the table's rows with [`membership::liveness`].
//! Every decision is the core's; this module only moves data.

use kelpie_core::metrics::{self, MEMBERSHIP_EVENTS};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::{Env, NodeId};

use crate::error::{ClusterError, ClusterResult};
use crate::membership::{
    self, Liveness, LocalMember, MemberAction, MemberInput, MembershipConfig, NodeRow, NodeStatus,
};
use crate::node_store::NodeStore;

/// Most actions one round carries out (a tick, its write, the ack's write).
const MEMBER_ACTIONS_PER_ROUND_COUNT_MAX: usize = 8;

/// A row of the node table with the verdict every node reaches on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub row: NodeRow,
    pub liveness: Liveness,
    /// Active and live: may receive forwarded requests.
    pub routable: bool,
}

struct MemberInner {
    table: Arc<dyn NodeStore>,
    env: Env,
    node_id: NodeId,
    advertise: SocketAddr,
    config: MembershipConfig,
    core: Mutex<LocalMember>,
    halted: AtomicBool,
}

/// This node's membership; cheap to clone.
#[derive(Clone)]
pub struct Member {
    inner: Arc<MemberInner>,
}

impl Member {
    /// Registers the node (Joining, then Active once the write commits) and
    /// starts heartbeating every `config.heartbeat_interval_ms`.
    pub async fn join(
        table: impl NodeStore,
        env: Env,
        node_id: NodeId,
        advertise: SocketAddr,
        config: MembershipConfig,
    ) -> ClusterResult<Member> {
        let core = LocalMember::new(config, env.clock.monotonic_ms());
        let inner = MemberInner {
            table: Arc::new(table),
            env,
            node_id,
            advertise,
            config,
            core: Mutex::new(core),
            halted: AtomicBool::new(false),
        };
        let member = Member { inner: Arc::new(inner) };
        member.round().await?;
        if member.status() != NodeStatus::Active {
            return Err(ClusterError::Database {
                operation: "join",
                reason: "registration did not commit".into(),
            });
        }
        let looping = member.clone();
        member
            .inner
            .env
            .spawner
            .spawn("cluster-heartbeat", Box::pin(async move { looping.heartbeat_loop().await }));
        Ok(member)
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    pub fn advertise(&self) -> SocketAddr {
        self.inner.advertise
    }

    pub fn status(&self) -> NodeStatus {
        self.core().status()
    }

    /// Active and not isolated: may start new activations.
    pub fn accepts_activations(&self) -> bool {
        self.core().accepts_activations()
    }

    pub fn is_isolated(&self) -> bool {
        self.core().is_isolated()
    }

    /// Every node in the table, judged by the database-clock heartbeat age.
    pub async fn members(&self) -> ClusterResult<Vec<MemberView>> {
        let config = self.inner.config;
        let rows = self.inner.table.rows().await?;
        Ok(rows
            .into_iter()
            .map(|row| MemberView {
                liveness: membership::liveness(&row, &config),
                routable: membership::is_routable(&row, &config),
                row,
            })
            .collect())
    }

    /// Leaves: announces Draining (no new work comes here), awaits `drain`
    /// (finish in-flight work, release placements), then writes Left and
    /// stops heartbeating. Calling it again (after an error, or twice) is
    /// safe: the status never goes back, and the drain simply runs again.
    pub async fn leave(&self, drain: impl Future<Output = ()>) -> ClusterResult<()> {
        self.apply(MemberInput::LeaveRequested).await?;
        assert!(self.status() >= NodeStatus::Draining, "leave moves to draining or beyond");
        drain.await;
        self.apply(MemberInput::DrainCompleted).await?;
        assert!(self.inner.halted.load(Ordering::SeqCst), "a left node stops heartbeating");
        Ok(())
    }

    /// Stops heartbeating without leaving, as a crashed process would; peers
    /// declare this node failed after the heartbeat timeout.
    pub fn halt(&self) {
        self.inner.halted.store(true, Ordering::SeqCst);
    }

    fn core(&self) -> std::sync::MutexGuard<'_, LocalMember> {
        self.inner.core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn heartbeat_loop(self) {
        let interval = Duration::from_millis(self.inner.config.heartbeat_interval_ms);
        while !self.inner.halted.load(Ordering::SeqCst) {
            if let Err(err) = self.round().await {
                tracing::warn!(node = %self.inner.node_id, "heartbeat failed: {err}");
            }
            self.inner.env.clock.sleep(interval).await;
        }
    }

    async fn round(&self) -> ClusterResult<()> {
        let now_ms = self.inner.env.clock.monotonic_ms();
        self.apply(MemberInput::Tick { now_ms }).await
    }

    /// Feeds `input` to the core and carries out what it asks, including the
    /// follow-ups of acknowledged writes. Returns the first write error.
    async fn apply(&self, input: MemberInput) -> ClusterResult<()> {
        let mut queue: VecDeque<MemberAction> = self.core().step(input).into();
        let mut first_error = None;
        for _ in 0..MEMBER_ACTIONS_PER_ROUND_COUNT_MAX {
            let Some(action) = queue.pop_front() else { break };
            match action {
                MemberAction::WriteHeartbeat { status } => match self.write(status).await {
                    Ok(sent_ms) => {
                        metrics::increment(&MEMBERSHIP_EVENTS, &["heartbeat_committed"], 1);
                        queue.extend(self.core().step(MemberInput::HeartbeatAcked { sent_ms }))
                    }
                    Err(err) => {
                        metrics::increment(&MEMBERSHIP_EVENTS, &["heartbeat_failed"], 1);
                        first_error = first_error.or(Some(err))
                    }
                },
                MemberAction::Isolated => {
                    metrics::increment(&MEMBERSHIP_EVENTS, &["isolated"], 1);
                    tracing::warn!(node = %self.inner.node_id, "no heartbeat committed for a timeout: isolated")
                }
                MemberAction::Reconnected => {
                    metrics::increment(&MEMBERSHIP_EVENTS, &["reconnected"], 1);
                    tracing::info!(node = %self.inner.node_id, "heartbeats commit again")
                }
                MemberAction::Stop => {
                    metrics::increment(&MEMBERSHIP_EVENTS, &["stopped"], 1);
                    self.halt()
                }
            }
        }
        assert!(queue.is_empty(), "membership actions exceed MEMBER_ACTIONS_PER_ROUND_COUNT_MAX");
        first_error.map_or(Ok(()), Err)
    }

    /// Writes the row, giving up after one heartbeat interval so a hung
    /// database cannot stall the self-isolation check. Returns the send time.
    async fn write(&self, status: NodeStatus) -> ClusterResult<u64> {
        let inner = &self.inner;
        let sent_ms = inner.env.clock.monotonic_ms();
        let limit_ms = inner.config.heartbeat_interval_ms;
        let write = inner.table.write(inner.node_id.clone(), inner.advertise, status);
        let timeout = inner.env.clock.sleep(Duration::from_millis(limit_ms));
        tokio::select! {
            biased;
            written = write => written.map(|()| sent_ms),
            () = timeout => Err(ClusterError::Database { operation: "heartbeat write", reason: format!("no answer in {limit_ms} ms") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use kelpie_core::Clock;

    use super::*;
    use crate::node_store::{MemoryNodeStore, NodeStore};

    #[tokio::test]
    async fn leaving_twice_drains_twice_and_stays_left() {
        let env = Env::production();
        let store = MemoryNodeStore::new(Arc::clone(&env.clock) as Arc<dyn Clock>);
        let node = NodeId::new("n1").unwrap();
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let config = MembershipConfig::new(10, 30);
        let member = Member::join(store.clone(), env, node, addr, config).await.unwrap();
        assert_eq!(member.status(), NodeStatus::Active);
        let drains = AtomicU32::new(0);
        for _ in 0..2 {
            member
                .leave(async {
                    drains.fetch_add(1, Ordering::SeqCst);
                })
                .await
                .unwrap();
            assert_eq!(member.status(), NodeStatus::Left);
        }
        assert_eq!(drains.load(Ordering::SeqCst), 2);
        let rows = store.rows().await.unwrap();
        assert_eq!(rows.iter().map(|r| r.status).collect::<Vec<_>>(), vec![NodeStatus::Left]);
    }
}
