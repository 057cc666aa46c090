//! [`PlacementDirectory`]: the placement operations every registry backend
//! offers, so callers (the runtime, cluster forwarding) and conformance tests
//! can use any backend through one interface.
//!
//! Two backends implement it: [`Registry`] (the lease state machine over a
//! `PlacementStore`, time from the environment's clock: single node, tests,
//! the simulator) and [`PostgresRegistry`] (the
//! same state machine, time from the database's clock: a cluster). Liveness
//! of a holder is always judged by the backend's own clock, never by the
//! caller's.

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, NodeId, Result};

use crate::lease::{LeaseOutcome, PlacementRecord};
use crate::postgres_registry::PostgresRegistry;
use crate::registry::Registry;

/// The node holding a live lease on an actor, and its fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOwner {
    pub node_id: NodeId,
    pub epoch: u64,
}

pub trait PlacementDirectory: Send + Sync + 'static {
    /// Claims the actor: `Claimed` with a larger epoch, or `HeldByOther`.
    fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> BoxFuture<Result<LeaseOutcome>>;
    /// Extends the lease of the holder `node_id` at `epoch`.
    fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>>;
    /// Gives the placement up; the epoch stays so later claims are newer.
    fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>>;
    /// The stored record, lease instants on the backend's clock.
    fn lookup(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>>;
    /// The holder whose lease is running now by the backend's clock.
    fn live_owner(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<LiveOwner>>>;
    /// The lease each successful claim or renewal grants, in milliseconds.
    fn lease_ms(&self) -> u64;
}

/// The live holder of `record` at `now_ms`, as a [`LiveOwner`].
pub(crate) fn live_owner_at(record: Option<&PlacementRecord>, now_ms: u64) -> Option<LiveOwner> {
    let record = record?;
    let holder = record.live_holder(now_ms)?;
    assert!(record.epoch > 0, "a held placement has a positive epoch");
    Some(LiveOwner { node_id: holder.node_id.clone(), epoch: record.epoch })
}

impl PlacementDirectory for Registry {
    fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> BoxFuture<Result<LeaseOutcome>> {
        let (this, actor_id, node_id) = (self.clone(), actor_id.clone(), node_id.clone());
        Box::pin(async move { Registry::claim(&this, &actor_id, &node_id).await })
    }

    fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        let (this, actor_id, node_id) = (self.clone(), actor_id.clone(), node_id.clone());
        Box::pin(async move { Registry::renew(&this, &actor_id, &node_id, epoch).await })
    }

    fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        let (this, actor_id, node_id) = (self.clone(), actor_id.clone(), node_id.clone());
        Box::pin(async move { Registry::release(&this, &actor_id, &node_id, epoch).await })
    }

    fn lookup(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        let (this, actor_id) = (self.clone(), actor_id.clone());
        Box::pin(async move { Registry::lookup(&this, &actor_id).await })
    }

    fn live_owner(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<LiveOwner>>> {
        let (this, actor_id) = (self.clone(), actor_id.clone());
        Box::pin(async move {
            let record = Registry::lookup(&this, &actor_id).await?;
            Ok(live_owner_at(record.as_ref(), this.now_ms()))
        })
    }

    fn lease_ms(&self) -> u64 {
        Registry::lease_ms(self)
    }
}

impl PlacementDirectory for PostgresRegistry {
    fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> BoxFuture<Result<LeaseOutcome>> {
        let (this, actor_id, node_id) = (self.clone(), actor_id.clone(), node_id.clone());
        Box::pin(async move { PostgresRegistry::claim(&this, &actor_id, &node_id).await })
    }

    fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        let (this, actor_id, node_id) = (self.clone(), actor_id.clone(), node_id.clone());
        Box::pin(async move { PostgresRegistry::renew(&this, &actor_id, &node_id, epoch).await })
    }

    fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        let (this, actor_id, node_id) = (self.clone(), actor_id.clone(), node_id.clone());
        Box::pin(async move { PostgresRegistry::release(&this, &actor_id, &node_id, epoch).await })
    }

    fn lookup(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        let (this, actor_id) = (self.clone(), actor_id.clone());
        Box::pin(async move { PostgresRegistry::lookup(&this, &actor_id).await })
    }

    fn live_owner(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<LiveOwner>>> {
        let (this, actor_id) = (self.clone(), actor_id.clone());
        Box::pin(async move { PostgresRegistry::live_owner(&this, &actor_id).await })
    }

    fn lease_ms(&self) -> u64 {
        PostgresRegistry::lease_ms(self)
    }
}
