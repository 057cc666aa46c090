//! A node's calls to the shared database go through its [`DatabaseLink`]:
//! while the link is cut, placement operations and node-table reads and
//! writes fail, as they would across a partition between the node and
//! PostgreSQL. The state behind them is shared by every node and judged by
//! the simulation's true time (the database's clock).

use std::net::SocketAddr;

use kelpie_cluster::membership::NodeRow;
use kelpie_cluster::{ClusterError, ClusterResult, MemoryNodeStore, NodeStatus, NodeStore};
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, NodeId, Result};
use kelpie_registry::{LeaseOutcome, LiveOwner, PlacementDirectory, PlacementRecord, Registry};

use super::dst::world::DatabaseLink;

/// The shared placement directory as one node reaches it.
pub struct LinkedDirectory {
    pub registry: Registry,
    pub link: DatabaseLink,
}

impl LinkedDirectory {
    fn checked<T: Send + 'static>(
        &self,
        operation: &'static str,
        call: BoxFuture<Result<T>>,
    ) -> BoxFuture<Result<T>> {
        let link = self.link.clone();
        Box::pin(async move {
            link.check(operation)?;
            call.await
        })
    }
}

impl PlacementDirectory for LinkedDirectory {
    fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> BoxFuture<Result<LeaseOutcome>> {
        self.checked("claim", PlacementDirectory::claim(&self.registry, actor_id, node_id))
    }

    fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        self.checked("renew", PlacementDirectory::renew(&self.registry, actor_id, node_id, epoch))
    }

    fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        self.checked("release", PlacementDirectory::release(&self.registry, actor_id, node_id, epoch))
    }

    fn lookup(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        self.checked("lookup", PlacementDirectory::lookup(&self.registry, actor_id))
    }

    fn live_owner(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<LiveOwner>>> {
        self.checked("live owner", PlacementDirectory::live_owner(&self.registry, actor_id))
    }

    fn lease_ms(&self) -> u64 {
        PlacementDirectory::lease_ms(&self.registry)
    }
}

/// The shared node table as one node reaches it.
pub struct LinkedNodeStore {
    pub store: MemoryNodeStore,
    pub link: DatabaseLink,
}

impl LinkedNodeStore {
    fn check(&self, operation: &'static str) -> ClusterResult<()> {
        match self.link.is_cut() {
            true => {
                Err(ClusterError::Database { operation, reason: "cut off from the database".to_string() })
            }
            false => Ok(()),
        }
    }
}

impl NodeStore for LinkedNodeStore {
    fn write(
        &self,
        node_id: NodeId,
        advertise: SocketAddr,
        status: NodeStatus,
    ) -> BoxFuture<ClusterResult<()>> {
        match self.check("heartbeat write") {
            Ok(()) => self.store.write(node_id, advertise, status),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn rows(&self) -> BoxFuture<ClusterResult<Vec<NodeRow>>> {
        match self.check("node table read") {
            Ok(()) => self.store.rows(),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }
}
