//! [`NodeStore`]: what membership needs from the node table, as a trait, so
//! the same [`crate::Member`] runs on PostgreSQL ([`crate::NodeTable`]) and
//! on [`MemoryNodeStore`] (one process, or the simulator, where the store's
//! clock is the simulation's true time, not any node's skewed clock).
//!
//! The contract every implementation keeps: heartbeats are stamped, and
//! their ages measured, by the *store's* clock alone, so two nodes reading
//! one row agree on its age whatever their own clocks say.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kelpie_core::env::BoxFuture;
use kelpie_core::{Clock, NodeId};

use crate::error::ClusterResult;
use crate::membership::{NodeRow, NodeStatus};
use crate::node_table::NODE_TABLE_ROWS_COUNT_MAX;

/// The node table as membership uses it.
pub trait NodeStore: Send + Sync + 'static {
    /// Upserts the node's row with `status`, its heartbeat stamped now by
    /// the store's clock.
    fn write(
        &self,
        node_id: NodeId,
        advertise: SocketAddr,
        status: NodeStatus,
    ) -> BoxFuture<ClusterResult<()>>;

    /// Every row, ordered by node id, each heartbeat's age measured by the
    /// store's clock.
    fn rows(&self) -> BoxFuture<ClusterResult<Vec<NodeRow>>>;
}

struct StoredRow {
    advertise: SocketAddr,
    status: NodeStatus,
    heartbeat_ms: u64,
}

/// A node table in memory, judged by the clock it is given (the one clock
/// every reader shares). Cheap to clone; clones share the rows.
#[derive(Clone)]
pub struct MemoryNodeStore {
    clock: Arc<dyn Clock>,
    rows: Arc<Mutex<BTreeMap<NodeId, StoredRow>>>,
}

impl MemoryNodeStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryNodeStore { clock, rows: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, StoredRow>> {
        self.rows.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl NodeStore for MemoryNodeStore {
    fn write(
        &self,
        node_id: NodeId,
        advertise: SocketAddr,
        status: NodeStatus,
    ) -> BoxFuture<ClusterResult<()>> {
        let heartbeat_ms = self.clock.wall_ms();
        let mut rows = self.lock();
        let limit = usize::try_from(NODE_TABLE_ROWS_COUNT_MAX).unwrap_or(usize::MAX);
        assert!(rows.len() < limit || rows.contains_key(&node_id), "more than {limit} nodes");
        rows.insert(node_id, StoredRow { advertise, status, heartbeat_ms });
        Box::pin(async { Ok(()) })
    }

    fn rows(&self) -> BoxFuture<ClusterResult<Vec<NodeRow>>> {
        let now_ms = self.clock.wall_ms();
        let rows: Vec<NodeRow> = self
            .lock()
            .iter()
            .map(|(node_id, row)| NodeRow {
                node_id: node_id.clone(),
                advertise: row.advertise,
                status: row.status,
                // A store clock stepping back reads as age zero, as the SQL's GREATEST(0, ..).
                heartbeat_age_ms: now_ms.saturating_sub(row.heartbeat_ms),
            })
            .collect();
        Box::pin(async move { Ok(rows) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A clock the test moves by hand.
    #[derive(Default)]
    struct HandClock(AtomicU64);

    impl Clock for HandClock {
        fn monotonic_ns(&self) -> u64 {
            self.0.load(Ordering::SeqCst) * 1_000_000
        }

        fn wall_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }

        fn sleep(&self, _duration: Duration) -> BoxFuture<()> {
            Box::pin(async {})
        }
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[tokio::test]
    async fn ages_are_measured_by_the_store_clock_and_rows_come_back_in_id_order() {
        let clock = Arc::new(HandClock::default());
        let store = MemoryNodeStore::new(clock.clone());
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        clock.0.store(1_000, Ordering::SeqCst);
        store.write(node("n2"), addr, NodeStatus::Active).await.unwrap();
        clock.0.store(1_300, Ordering::SeqCst);
        store.write(node("n1"), addr, NodeStatus::Joining).await.unwrap();
        store.write(node("n1"), addr, NodeStatus::Active).await.unwrap();
        clock.0.store(1_450, Ordering::SeqCst);
        let rows = store.rows().await.unwrap();
        let seen: Vec<_> = rows.iter().map(|r| (r.node_id.as_str(), r.status, r.heartbeat_age_ms)).collect();
        assert_eq!(seen, vec![("n1", NodeStatus::Active, 150), ("n2", NodeStatus::Active, 450)]);
        clock.0.store(900, Ordering::SeqCst);
        let rows = store.rows().await.unwrap();
        assert_eq!(rows[0].heartbeat_age_ms, 0, "a store clock that went back reads as age zero");
    }
}
