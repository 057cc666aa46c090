//! Reads are served only under a proven lease: an active actor whose node
//! is cut off from the placement registry (every renewal fails) answers
//! from memory for at most `LEASE_SERVE_PERCENT` of a lease after its last
//! granted renewal was sent, then refuses with `NodeUnavailable` and ends
//! its activation, saving nothing. Once the registry answers again, the
//! actor is claimed afresh (a new epoch) and serves its stored state.
//! Real time, a short lease, the memory registry behind a switch.

// Real tokio tasks and sleeps on purpose.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::{
    LeaseOutcome, LiveOwner, PlacementDirectory, PlacementRecord, Registry, StoragePlacementStore,
};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig, LEASE_SERVE_PERCENT};
use kelpie_storage::Storage;

const LEASE_MS: u64 = 600;
/// Pause between reads while the registry is cut off.
const READ_PAUSE_MS: u64 = 20;

/// A registry the test can cut off: every call then fails as a database
/// out of reach would.
struct Switched {
    inner: Registry,
    cut: AtomicBool,
}

impl Switched {
    fn check(&self) -> Result<()> {
        match self.cut.load(Ordering::SeqCst) {
            true => Err(Error::StorageIo { operation: "lease", reason: "the registry is cut off".into() }),
            false => Ok(()),
        }
    }
}

impl PlacementDirectory for Switched {
    fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> BoxFuture<Result<LeaseOutcome>> {
        match self.check() {
            Ok(()) => PlacementDirectory::claim(&self.inner, actor_id, node_id),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        match self.check() {
            Ok(()) => PlacementDirectory::renew(&self.inner, actor_id, node_id, epoch),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        match self.check() {
            Ok(()) => PlacementDirectory::release(&self.inner, actor_id, node_id, epoch),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn lookup(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        match self.check() {
            Ok(()) => PlacementDirectory::lookup(&self.inner, actor_id),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn live_owner(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<LiveOwner>>> {
        match self.check() {
            Ok(()) => PlacementDirectory::live_owner(&self.inner, actor_id),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn lease_ms(&self) -> u64 {
        PlacementDirectory::lease_ms(&self.inner)
    }
}

/// A counter: `Some(n)` adds n, `None` reads.
struct Counter;

impl Actor for Counter {
    type State = u64;
    type Message = Option<u64>;
    type Reply = (u64, u64);

    async fn handle(&self, ctx: &mut ActorContext<'_, u64>, add: Option<u64>) -> Result<(u64, u64)> {
        *ctx.state += add.unwrap_or(0);
        Ok((*ctx.state, ctx.epoch))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_activation_stops_answering_reads_within_the_lease() {
    let env = Env::production();
    let storage = Storage::memory();
    let store = Arc::new(StoragePlacementStore::new(storage.clone()));
    let directory = Arc::new(Switched {
        inner: Registry::with_lease(store, env.clock.clone(), LEASE_MS),
        cut: AtomicBool::new(false),
    });
    let config = RuntimeConfig::new(NodeId::new("n1").unwrap());
    let runtime = Runtime::new(Counter, storage, directory.clone(), env, config).unwrap();
    let actor = ActorId::new("counters", "c1").unwrap();
    assert_eq!(runtime.invoke(&actor, Some(5)).await.unwrap(), (5, 1));

    // Renewals run every third of a lease; wait for one, then cut off.
    tokio::time::sleep(Duration::from_millis(LEASE_MS / 2)).await;
    directory.cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let mut served_until = None;
    let refused = loop {
        assert!(cut_at.elapsed() < Duration::from_millis(3 * LEASE_MS), "reads never stopped");
        match runtime.invoke(&actor, None).await {
            Ok(reply) => {
                assert_eq!(reply, (5, 1), "a read from memory before the lease ran out");
                served_until = Some(cut_at.elapsed());
            }
            Err(err) => break (err, cut_at.elapsed()),
        }
        tokio::time::sleep(Duration::from_millis(READ_PAUSE_MS)).await;
    };
    assert!(matches!(refused.0, Error::NodeUnavailable { .. } | Error::StorageIo { .. }), "{:?}", refused.0);
    // The last granted renewal was sent before the cut, so the activation
    // stops within the serving share of a lease from the cut.
    let window = Duration::from_millis(LEASE_MS * LEASE_SERVE_PERCENT / 100);
    assert!(served_until.is_some_and(|served| served < window), "served {served_until:?}, window {window:?}");
    assert!(
        refused.1 <= window + Duration::from_millis(2 * READ_PAUSE_MS + 50),
        "refused only at {:?}",
        refused.1
    );
    // The refusal is answered as the activation ends: its slot goes just after.
    let ending_until = Instant::now() + Duration::from_millis(LEASE_MS);
    while runtime.is_active(&actor) && Instant::now() < ending_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!runtime.is_active(&actor), "the activation ended");
    // Still cut off: nothing is served, the actor cannot be claimed.
    assert!(runtime.invoke(&actor, None).await.is_err());

    // Reachable again: claimed afresh, at a new epoch, with the stored state.
    directory.cut.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(LEASE_MS)).await;
    let (value, epoch) = runtime.invoke(&actor, None).await.unwrap();
    assert_eq!(value, 5);
    assert!(epoch > 1, "epoch {epoch}");
    runtime.shutdown().await;
}
