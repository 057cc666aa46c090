//! The runtime on real tokio time with the memory and redb stores.

// These tests drive the runtime from real tokio tasks and timers on purpose;
// the seeded interleavings are the simulator's job.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::{MemoryPlacementStore, Registry, StoragePlacementStore};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig};
use kelpie_storage::Storage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    total: u64,
    log: Vec<u64>,
    activations: u64,
    deactivations: u64,
}

enum Msg {
    Add(u64),
    AddThenFail(u64),
    AddThenPanic(u64),
    Get,
    WaitFor(tokio::sync::oneshot::Receiver<()>),
    Sleep(u64),
    Grow(usize),
    Note(&'static str, &'static str),
    ReadNote(&'static str),
}

#[derive(Debug, PartialEq)]
enum Reply {
    State(Counter),
    Note(Option<Vec<u8>>),
}

struct CounterActor;

impl Actor for CounterActor {
    type State = Counter;
    type Message = Msg;
    type Reply = Reply;

    async fn on_activate(&self, ctx: &mut ActorContext<'_, Counter>) -> Result<()> {
        ctx.state.activations += 1;
        Ok(())
    }

    async fn handle(&self, ctx: &mut ActorContext<'_, Counter>, message: Msg) -> Result<Reply> {
        match message {
            Msg::Add(n) => {
                ctx.state.total += n;
                ctx.state.log.push(n);
            }
            Msg::AddThenFail(n) => {
                ctx.state.total += n;
                ctx.kv_put(b"junk", b"x".to_vec())?;
                return Err(Error::validation("n", "refused after mutating"));
            }
            Msg::AddThenPanic(n) => {
                ctx.state.total += n;
                panic!("boom {n}");
            }
            Msg::Get => {}
            Msg::WaitFor(gate) => {
                let _ = gate.await;
            }
            Msg::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Msg::Grow(bytes) => ctx.state.log = vec![7; bytes],
            Msg::Note(key, value) => ctx.kv_put(key.as_bytes(), value.as_bytes().to_vec())?,
            Msg::ReadNote(key) => return Ok(Reply::Note(ctx.kv_get(key.as_bytes()).await?)),
        }
        Ok(Reply::State(ctx.state.clone()))
    }

    async fn on_deactivate(&self, ctx: &mut ActorContext<'_, Counter>) -> Result<()> {
        ctx.state.deactivations += 1;
        Ok(())
    }
}

fn node() -> NodeId {
    NodeId::new("node-1").unwrap()
}

fn id(name: &str) -> ActorId {
    ActorId::new("counters", name).unwrap()
}

fn runtime_with(storage: Storage, tune: impl FnOnce(&mut RuntimeConfig)) -> Runtime<CounterActor> {
    let env = Env::production();
    let registry = Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone());
    let mut config = RuntimeConfig::new(node());
    tune(&mut config);
    Runtime::new(CounterActor, storage, Arc::new(registry), env, config).unwrap()
}

fn state(reply: Reply) -> Counter {
    match reply {
        Reply::State(state) => state,
        other => panic!("expected state, got {other:?}"),
    }
}

async fn get(runtime: &Runtime<CounterActor>, name: &str) -> Counter {
    state(runtime.invoke(&id(name), Msg::Get).await.unwrap())
}

#[tokio::test]
async fn messages_from_one_sender_are_handled_in_order() {
    let runtime = runtime_with(Storage::memory(), |_| {});
    let counter = runtime.actor_ref(id("ordered"));
    // join_all polls in order, so the sends enter the mailbox in order.
    let sends = (1..=50).map(|n| counter.invoke(Msg::Add(n)));
    let replies = futures::future::join_all(sends).await;
    assert!(replies.iter().all(|r| r.is_ok()));
    let counter_state = get(&runtime, "ordered").await;
    assert_eq!(counter_state.log, (1..=50).collect::<Vec<u64>>());
    assert_eq!(counter_state.total, 1275);
    assert_eq!(counter_state.activations, 1, "activated once on demand");
}

#[tokio::test]
async fn handler_error_rolls_back_state_and_extra_keys() {
    let runtime = runtime_with(Storage::memory(), |_| {});
    runtime.invoke(&id("a"), Msg::Add(5)).await.unwrap();
    let err = runtime.invoke(&id("a"), Msg::AddThenFail(100)).await.unwrap_err();
    assert_eq!(err.to_string(), "invalid n: refused after mutating");
    assert_eq!(get(&runtime, "a").await.total, 5);
    assert_eq!(runtime.invoke(&id("a"), Msg::ReadNote("junk")).await.unwrap(), Reply::Note(None));
}

#[tokio::test]
async fn handler_panic_is_caught_rolled_back_and_actor_stays_usable() {
    let runtime = runtime_with(Storage::memory(), |_| {});
    runtime.invoke(&id("p"), Msg::Add(1)).await.unwrap();
    let err = runtime.invoke(&id("p"), Msg::AddThenPanic(9)).await.unwrap_err();
    assert_eq!(err.to_string(), "actor counters/p failed: handler panicked: boom 9");
    assert!(!err.is_retriable());
    let after = state(runtime.invoke(&id("p"), Msg::Add(2)).await.unwrap());
    assert_eq!(after.total, 3);
    assert_eq!(after.activations, 1, "the panic did not restart the activation");
}

#[tokio::test]
async fn full_mailbox_is_a_retriable_error_at_the_exact_depth() {
    let runtime = runtime_with(Storage::memory(), |c| c.mailbox_depth_max = 4);
    let (open, gate) = tokio::sync::oneshot::channel();
    let busy = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.invoke(&id("b"), Msg::WaitFor(gate)).await }
    });
    // Wait until the blocking message is being handled (mailbox empty again).
    while !runtime.is_active(&id("b")) {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut queued = Vec::new();
    for n in 0..4 {
        let runtime = runtime.clone();
        queued.push(tokio::spawn(async move { runtime.invoke(&id("b"), Msg::Add(n)).await }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = runtime.invoke(&id("b"), Msg::Add(99)).await.unwrap_err();
    assert_eq!(err, Error::MailboxFull { actor_id: id("b"), depth: 4 });
    assert!(err.is_retriable());
    open.send(()).unwrap();
    busy.await.unwrap().unwrap();
    for task in queued {
        task.await.unwrap().unwrap();
    }
    assert_eq!(get(&runtime, "b").await.total, 6, "all four queued messages ran, the rejected one did not");
}

#[tokio::test]
async fn invocation_times_out_with_a_retriable_error() {
    let runtime = runtime_with(Storage::memory(), |c| c.invocation_timeout_ms = 50);
    let err = runtime.invoke(&id("slow"), Msg::Sleep(500)).await.unwrap_err();
    assert_eq!(err, Error::InvocationTimeout { actor_id: id("slow"), timeout_ms: 50 });
    assert!(err.is_retriable());
}

#[tokio::test]
async fn lru_eviction_caps_active_actors_and_keeps_state() {
    let runtime = runtime_with(Storage::memory(), |c| c.active_actors_count_max = 2);
    for (name, n) in [("x", 1), ("y", 2), ("z", 3)] {
        runtime.invoke(&id(name), Msg::Add(n)).await.unwrap();
    }
    for _ in 0..100 {
        if !runtime.is_active(&id("x")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!runtime.is_active(&id("x")), "least recently used actor evicted");
    assert!(runtime.active_count() <= 2);
    let x = get(&runtime, "x").await;
    assert_eq!((x.total, x.log.clone()), (1, vec![1]), "state survived eviction");
    assert_eq!((x.activations, x.deactivations), (2, 1));
}

#[tokio::test]
async fn idle_actor_deactivates_and_reactivates_with_same_state() {
    let runtime = runtime_with(Storage::memory(), |c| c.idle_timeout_ms = 30);
    runtime.invoke(&id("idle"), Msg::Add(7)).await.unwrap();
    for _ in 0..100 {
        if !runtime.is_active(&id("idle")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!runtime.is_active(&id("idle")));
    let again = get(&runtime, "idle").await;
    assert_eq!((again.total, again.activations, again.deactivations), (7, 2, 1));
}

#[tokio::test]
async fn oversized_state_is_rejected_and_rolled_back() {
    let runtime = runtime_with(Storage::memory(), |_| {});
    runtime.invoke(&id("big"), Msg::Add(1)).await.unwrap();
    let err = runtime.invoke(&id("big"), Msg::Grow(6 * 1024 * 1024)).await.unwrap_err();
    assert!(err.to_string().contains("over the limit ACTOR_STATE_SIZE_BYTES_MAX"), "{err}");
    assert_eq!(get(&runtime, "big").await.log, vec![1]);
}

#[tokio::test]
async fn zombie_activation_cannot_commit_after_another_claim() {
    zombie_cannot_commit(Storage::memory()).await;
}

/// The same fencing on the embedded store the server runs on, not only on
/// the memory backend the other tests use.
#[tokio::test]
async fn zombie_activation_cannot_commit_after_another_claim_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    zombie_cannot_commit(Storage::open_redb(dir.path().join("fence.redb")).unwrap()).await;
}

async fn zombie_cannot_commit(storage: Storage) {
    let runtime = runtime_with(storage.clone(), |_| {});
    runtime.invoke(&id("z"), Msg::Add(1)).await.unwrap();
    // Another node takes the actor over behind this runtime's back.
    let placement = storage.get_placement(&id("z")).await.unwrap().unwrap();
    let other = NodeId::new("node-2").unwrap();
    storage.claim_placement(id("z"), other.clone(), placement.epoch).await.unwrap();

    let err = runtime.invoke(&id("z"), Msg::Add(100)).await.unwrap_err();
    assert_eq!(err, Error::Fenced { actor_id: id("z"), node_id: node(), epoch: placement.epoch });
    assert!(!err.is_retriable());
    // Nothing of the fenced invocation reached storage.
    let mut txn = storage.begin(id("z"));
    let saved: Counter = serde_json::from_slice(&txn.get(b"s").await.unwrap().unwrap()).unwrap();
    assert_eq!(saved.total, 1);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_flushes_and_rejects_new_calls() {
    shutdown_finishes_and_flushes(Storage::memory()).await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_work_flushes_and_rejects_new_calls_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    shutdown_finishes_and_flushes(Storage::open_redb(dir.path().join("shutdown.redb")).unwrap()).await;
}

async fn shutdown_finishes_and_flushes(storage: Storage) {
    let runtime = runtime_with(storage.clone(), |_| {});
    runtime.invoke(&id("s"), Msg::Add(1)).await.unwrap();
    let slow = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.invoke(&id("s"), Msg::Sleep(50)).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Queued in the mailbox behind the slow call when shutdown begins.
    let queued = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.invoke(&id("s"), Msg::Add(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    runtime.shutdown().await;
    // Checked the moment shutdown returns, before either caller is awaited
    // (awaiting them first would give work shutdown abandoned time to end
    // on its own): the in-flight and the queued call ran, on_deactivate
    // ran, and the state is in storage.
    assert_eq!(runtime.active_count(), 0);
    let mut txn = storage.begin(id("s"));
    let saved: Counter = serde_json::from_slice(&txn.get(b"s").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        (saved.total, saved.log.clone(), saved.deactivations),
        (6, vec![1, 5], 1),
        "the queued call ran and on_deactivate was saved before shutdown returned"
    );
    let placement = storage.get_placement(&id("s")).await.unwrap().unwrap();
    assert_eq!(placement.epoch, 1);
    let err = runtime.invoke(&id("s"), Msg::Get).await.unwrap_err();
    assert_eq!(err, Error::ShuttingDown { component: "actor runtime" });
    assert!(matches!(slow.await.unwrap(), Ok(Reply::State(_))), "in-flight invocation answered");
    let Ok(Reply::State(after_queued)) = queued.await.unwrap() else { panic!("the queued call failed") };
    assert_eq!(after_queued.total, 6);
}

#[tokio::test]
async fn state_survives_a_restart_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let runtime = runtime_with(Storage::open_redb(&path).unwrap(), |_| {});
        runtime.invoke(&id("r"), Msg::Add(3)).await.unwrap();
        runtime.invoke(&id("r"), Msg::Note("k", "v")).await.unwrap();
        runtime.shutdown().await;
    }
    let runtime = runtime_with(Storage::open_redb(&path).unwrap(), |_| {});
    let reloaded = get(&runtime, "r").await;
    assert_eq!((reloaded.total, reloaded.activations), (3, 2));
    assert_eq!(runtime.invoke(&id("r"), Msg::ReadNote("k")).await.unwrap(), Reply::Note(Some(b"v".to_vec())));
    runtime.shutdown().await;
}

#[tokio::test]
async fn claim_held_by_another_live_node_fails_activation_with_retriable_error() {
    let storage = Storage::memory();
    let env = Env::production();
    let store = Arc::new(MemoryPlacementStore::new());
    let other = Registry::new(store.clone(), env.clock.clone());
    other.claim(&id("held"), &NodeId::new("node-2").unwrap()).await.unwrap();
    let registry = Registry::new(store, env.clock.clone());
    let runtime =
        Runtime::new(CounterActor, storage, Arc::new(registry), env, RuntimeConfig::new(node())).unwrap();
    let err = runtime.invoke(&id("held"), Msg::Get).await.unwrap_err();
    assert_eq!(err.to_string(), "node node-1 unavailable: actor counters/held is active on node node-2");
    assert!(err.is_retriable());
}

#[test]
fn config_limits_are_checked() {
    let env_less = |tune: fn(&mut RuntimeConfig)| {
        let mut config = RuntimeConfig::new(node());
        tune(&mut config);
        let registry = Registry::new(Arc::new(MemoryPlacementStore::new()), Env::production().clock);
        Runtime::new(CounterActor, Storage::memory(), Arc::new(registry), Env::production(), config).err()
    };
    let err = env_less(|c| c.invocation_timeout_ms = 30_001).unwrap();
    assert_eq!(err.to_string(), "invalid invocation_timeout_ms: 30001 is outside 1..=30000");
    let err = env_less(|c| c.mailbox_depth_max = 0).unwrap();
    assert_eq!(err.to_string(), "invalid mailbox_depth_max: 0 is outside 1..=1024");
}

/// Spawns on tokio and keeps each task's abort handle, so a test can kill an
/// activation task the way a crash of the dispatcher would.
#[derive(Default)]
struct KillableSpawner {
    handles: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl kelpie_core::TaskSpawner for KillableSpawner {
    fn spawn(&self, _name: &'static str, task: kelpie_core::env::BoxFuture<()>) {
        let handle = tokio::spawn(task).abort_handle();
        self.handles.lock().unwrap().push(handle);
    }
}

#[tokio::test]
async fn a_dead_activation_task_fails_its_caller_and_is_restarted() {
    let storage = Storage::memory();
    let spawner = Arc::new(KillableSpawner::default());
    let mut env = Env::production();
    env.spawner = spawner.clone();
    let registry = Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone());
    let runtime =
        Runtime::new(CounterActor, storage, Arc::new(registry), env, RuntimeConfig::new(node())).unwrap();
    runtime.invoke(&id("k"), Msg::Add(2)).await.unwrap();

    let (_open, gate) = tokio::sync::oneshot::channel();
    let stuck = tokio::spawn({
        let runtime = runtime.clone();
        async move { runtime.invoke(&id("k"), Msg::WaitFor(gate)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let handles = std::mem::take(&mut *spawner.handles.lock().unwrap());
    assert_eq!(handles.len(), 1, "one activation task");
    handles[0].abort();

    let err = stuck.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "actor counters/k failed: the activation stopped before replying");
    // The next call starts a fresh activation with the last committed state.
    let after = get(&runtime, "k").await;
    assert_eq!((after.total, after.activations), (2, 2));
    assert_eq!(spawner.handles.lock().unwrap().len(), 1, "restarted once");
}
