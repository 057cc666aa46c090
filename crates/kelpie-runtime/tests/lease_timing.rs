//! An activation's lease timing, to the millisecond, on a clock the test
//! moves by hand: renewals go out every third of a lease, an activation
//! whose renewals stop answers until exactly `LEASE_SERVE_PERCENT` of a
//! lease after its last granted claim or renewal was sent and not one
//! millisecond longer, and an activation whose commit is fenced ends at once
//! rather than answering reads from its memory.
//!
//! The clock only moves when the test advances it, and the runtime runs on
//! one thread, so each step below is exact: the activation handles a
//! message at the instant the test sent it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kelpie_core::env::{BoxFuture, ChaChaRngSource, TokioSpawner};
use kelpie_core::{ActorId, Clock, Env, Error, NodeId, Result};
use kelpie_registry::{
    LeaseOutcome, LiveOwner, PlacementDirectory, PlacementRecord, Registry, StoragePlacementStore,
};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig, LEASE_SERVE_PERCENT};
use kelpie_storage::Storage;
use tokio::sync::watch;

const LEASE_MS: u64 = 600;
/// A third of the lease: the renewal interval the runtime derives from it.
const RENEW_INTERVAL_MS: u64 = LEASE_MS / 3;
/// Wall time at the clock's zero (leases are stamped with wall time).
const WALL_ORIGIN_MS: u64 = 1_700_000_000_000;

/// Time that moves only when `advance_to` says; sleepers wake when it
/// reaches their deadline.
struct ManualClock {
    now_ms: watch::Sender<u64>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock { now_ms: watch::channel(0).0 })
    }

    fn now_ms(&self) -> u64 {
        *self.now_ms.borrow()
    }

    fn advance_to(&self, ms: u64) {
        assert!(ms >= self.now_ms(), "the clock never goes back");
        self.now_ms.send_replace(ms);
    }
}

impl Clock for ManualClock {
    fn monotonic_ns(&self) -> u64 {
        self.now_ms() * 1_000_000
    }

    fn wall_ms(&self) -> u64 {
        WALL_ORIGIN_MS + self.now_ms()
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let deadline_ms = self.now_ms() + u64::try_from(duration.as_millis()).expect("sleep fits u64 ms");
        let mut now = self.now_ms.subscribe();
        Box::pin(async move {
            while *now.borrow_and_update() < deadline_ms {
                if now.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// The registry behind a switch (cut: every call fails at once, as a
/// database out of reach), counting the renewals it is asked for.
struct Registrar {
    inner: Registry,
    cut: AtomicBool,
    renewals_count: AtomicU64,
}

impl Registrar {
    fn refuse<T: Send + 'static>(&self) -> Option<BoxFuture<Result<T>>> {
        let cut = self.cut.load(Ordering::SeqCst);
        let err = Error::StorageIo { operation: "lease", reason: "the registry is cut off".into() };
        cut.then(|| -> BoxFuture<Result<T>> { Box::pin(async move { Err(err) }) })
    }
}

impl PlacementDirectory for Registrar {
    fn claim(&self, actor_id: &ActorId, node_id: &NodeId) -> BoxFuture<Result<LeaseOutcome>> {
        self.refuse().unwrap_or_else(|| PlacementDirectory::claim(&self.inner, actor_id, node_id))
    }

    fn renew(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        self.renewals_count.fetch_add(1, Ordering::SeqCst);
        self.refuse().unwrap_or_else(|| PlacementDirectory::renew(&self.inner, actor_id, node_id, epoch))
    }

    fn release(&self, actor_id: &ActorId, node_id: &NodeId, epoch: u64) -> BoxFuture<Result<LeaseOutcome>> {
        self.refuse().unwrap_or_else(|| PlacementDirectory::release(&self.inner, actor_id, node_id, epoch))
    }

    fn lookup(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        self.refuse().unwrap_or_else(|| PlacementDirectory::lookup(&self.inner, actor_id))
    }

    fn live_owner(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<LiveOwner>>> {
        self.refuse().unwrap_or_else(|| PlacementDirectory::live_owner(&self.inner, actor_id))
    }

    fn lease_ms(&self) -> u64 {
        PlacementDirectory::lease_ms(&self.inner)
    }
}

/// A counter: `Some(n)` adds n, `None` reads. Replies `(total, epoch)`.
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

struct World {
    clock: Arc<ManualClock>,
    registrar: Arc<Registrar>,
    storage: Storage,
    runtime: Runtime<Counter>,
}

fn node() -> NodeId {
    NodeId::new("node-1").unwrap()
}

fn actor() -> ActorId {
    ActorId::new("counters", "timed").unwrap()
}

fn world() -> World {
    let clock = ManualClock::new();
    let storage = Storage::memory();
    let store = Arc::new(StoragePlacementStore::new(storage.clone()));
    let inner = Registry::with_lease(store, clock.clone(), LEASE_MS);
    let registrar =
        Arc::new(Registrar { inner, cut: AtomicBool::new(false), renewals_count: AtomicU64::new(0) });
    let env = Env {
        clock: clock.clone(),
        rng: Arc::new(ChaChaRngSource::from_seed(7)),
        spawner: Arc::new(TokioSpawner),
    };
    let runtime =
        Runtime::new(Counter, storage.clone(), registrar.clone(), env, RuntimeConfig::new(node())).unwrap();
    World { clock, registrar, storage, runtime }
}

impl World {
    async fn at(&self, ms: u64, message: Option<u64>) -> Result<(u64, u64)> {
        self.clock.advance_to(ms);
        self.runtime.invoke(&actor(), message).await
    }

    fn renewals_count(&self) -> u64 {
        self.registrar.renewals_count.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn renewals_go_out_every_third_of_a_lease_and_keep_the_activation() {
    const STEP_MS: u64 = 10;
    const UNTIL_MS: u64 = 1_000;
    let world = world();
    assert_eq!(world.at(0, Some(1)).await, Ok((1, 1)));
    for ms in (STEP_MS..=UNTIL_MS).step_by(STEP_MS as usize) {
        assert_eq!(world.at(ms, None).await, Ok((1, 1)), "at {ms} ms the first activation answers");
        assert_eq!(world.renewals_count(), ms / RENEW_INTERVAL_MS, "renewals sent by {ms} ms");
    }
    assert_eq!(world.renewals_count(), 5, "at 200, 400, 600, 800 and 1 000 ms");
}

#[tokio::test]
async fn a_cut_off_activation_answers_until_nine_tenths_of_a_lease_after_its_claim_and_not_after() {
    let serve_ms = LEASE_MS * LEASE_SERVE_PERCENT / 100;
    assert_eq!(serve_ms, 540);
    let world = world();
    assert_eq!(world.at(0, Some(1)).await, Ok((1, 1)), "claimed at 0 ms");
    world.registrar.cut.store(true, Ordering::SeqCst);

    // Every renewal from 200 ms on fails; the claim sent at 0 ms still holds.
    assert_eq!(world.at(serve_ms - 1, None).await, Ok((1, 1)));
    assert!(world.renewals_count() >= 1, "a renewal was tried and failed");
    let refused = world.at(serve_ms, None).await.unwrap_err();
    let reason = format!("the lease on actor {} has not been confirmed for {serve_ms} ms", actor());
    assert_eq!(refused, Error::NodeUnavailable { node_id: node(), reason });

    // The registry answers again: a new activation claims a newer epoch and
    // serves the stored state.
    world.registrar.cut.store(false, Ordering::SeqCst);
    assert_eq!(world.at(serve_ms + 1, None).await, Ok((1, 2)));
}

#[tokio::test]
async fn a_fenced_commit_ends_the_activation_so_its_memory_answers_nothing_more() {
    let world = world();
    assert_eq!(world.at(0, Some(1)).await, Ok((1, 1)));
    // Another node takes the actor over in storage behind this runtime's back.
    world.storage.claim_placement(actor(), NodeId::new("node-2").unwrap(), 1).await.unwrap();

    let fenced = world.at(1, Some(5)).await.unwrap_err();
    assert_eq!(fenced, Error::Fenced { actor_id: actor(), node_id: node(), epoch: 1 });
    // The zombie activation is gone: the next read is served by a new
    // activation that claimed a newer epoch and loaded what storage holds.
    assert_eq!(world.at(2, None).await, Ok((1, 3)));
}

#[tokio::test]
async fn an_activation_that_ends_normally_releases_its_lease_for_another_node_at_once() {
    let world = world();
    assert_eq!(world.at(0, Some(1)).await, Ok((1, 1)));
    world.clock.advance_to(10);
    world.runtime.shutdown().await;

    let record = world.registrar.inner.lookup(&actor()).await.unwrap().unwrap();
    assert_eq!((record.epoch, record.holder), (1, None), "released, epoch kept");
    // Long before the lease granted at 0 ms would run out (600 ms).
    let taken = world.registrar.inner.claim(&actor(), &NodeId::new("node-2").unwrap()).await.unwrap();
    assert!(matches!(taken, LeaseOutcome::Claimed(ref record) if record.epoch == 2), "{taken:?}");
}
