//! `kelpie_cluster_membership_events_total` over a known sequence: a join
//! that cannot write its row, a join that can, and a leave. Heartbeats are
//! an hour apart, so no periodic beat lands in between and every count is
//! exact.
//!
//! The metrics registry is process-wide, so this file holds one test.

use std::net::SocketAddr;
use std::sync::Arc;

use kelpie_cluster::node_store::{MemoryNodeStore, NodeStore};
use kelpie_cluster::{ClusterError, ClusterResult, Member, MembershipConfig, NodeStatus};
use kelpie_core::env::BoxFuture;
use kelpie_core::metrics::{counter_total, MEMBERSHIP_EVENTS};
use kelpie_core::{Clock, Env, NodeId};

/// No periodic heartbeat falls due during the test.
const HEARTBEAT_INTERVAL_MS: u64 = 3_600_000;
const HEARTBEAT_TIMEOUT_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;

/// A node table that refuses every write (the database is unreachable).
struct Unreachable;

impl NodeStore for Unreachable {
    fn write(&self, _: NodeId, _: SocketAddr, _: NodeStatus) -> BoxFuture<ClusterResult<()>> {
        Box::pin(async {
            Err(ClusterError::Database { operation: "heartbeat write", reason: "unreachable".into() })
        })
    }

    fn rows(&self) -> BoxFuture<ClusterResult<Vec<kelpie_cluster::membership::NodeRow>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn totals() -> [u64; 5] {
    ["heartbeat_committed", "heartbeat_failed", "isolated", "reconnected", "stopped"]
        .map(|event| counter_total(&MEMBERSHIP_EVENTS, &[event]))
}

#[tokio::test]
async fn a_known_sequence_moves_the_membership_counters_by_known_amounts() {
    let env = Env::production();
    let config = MembershipConfig::new(HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS);
    let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let node = NodeId::new("n1").unwrap();
    assert_eq!(totals(), [0; 5]);

    let refused = Member::join(Unreachable, env.clone(), node.clone(), addr, config).await;
    assert!(refused.is_err(), "a join whose row cannot be written fails");
    assert_eq!(totals(), [0, 1, 0, 0, 0], "one failed heartbeat (the Joining row)");

    let store = MemoryNodeStore::new(Arc::clone(&env.clock) as Arc<dyn Clock>);
    let member = Member::join(store, env, node, addr, config).await.unwrap();
    assert_eq!(member.status(), NodeStatus::Active);
    assert_eq!(totals(), [2, 1, 0, 0, 0], "the Joining row, then the Active row at once");

    member.leave(async {}).await.unwrap();
    assert_eq!(member.status(), NodeStatus::Left);
    assert_eq!(totals(), [4, 1, 0, 0, 1], "the Draining and Left rows, then the stop");
}
