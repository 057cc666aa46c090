//! Runtime throughput, latency and memory, printed as a table.
//!
//! `cargo bench -p kelpie-runtime --bench runtime` runs every case;
//! `-- --quick` shrinks the large run for a smoke test. Cases:
//! - no-op invocations/s on one actor, memory store;
//! - persisted invocations/s (state write per call) on redb, 1 and 64 actors;
//! - activations/s and resident memory per idle active actor;
//! - 1 000 000 registered actors on redb, 100 000 random touches with an
//!   active cap of 10 000: peak RSS and p50/p99 invocation latency.

// A benchmark measures wall time and drives real tasks: outside the boundary.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Instant;

use kelpie_core::{ActorId, Env, NodeId, Result};
use kelpie_registry::{Registry, StoragePlacementStore};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig};
use kelpie_storage::Storage;
use rand::{Rng, SeedableRng};

struct Noop;
impl Actor for Noop {
    type State = ();
    type Message = ();
    type Reply = ();
    async fn handle(&self, _ctx: &mut ActorContext<'_, ()>, _message: ()) -> Result<()> {
        Ok(())
    }
}

struct Tally;
impl Actor for Tally {
    type State = u64;
    type Message = ();
    type Reply = u64;
    async fn handle(&self, ctx: &mut ActorContext<'_, u64>, _message: ()) -> Result<u64> {
        *ctx.state += 1;
        Ok(*ctx.state)
    }
}

/// Callers touching actors at once in the large run: enough for group
/// commit to batch the claims and state writes of different actors.
const TOUCH_CALLERS_COUNT: usize = 16;
const TOUCH_PROGRESS_EVERY_COUNT: usize = 1_000;

fn runtime<A: Actor>(actor: A, storage: Storage, tune: impl FnOnce(&mut RuntimeConfig)) -> Runtime<A> {
    let env = Env::production();
    let registry = Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone());
    let mut config = RuntimeConfig::new(NodeId::new("bench").unwrap());
    tune(&mut config);
    Runtime::new(actor, storage, Arc::new(registry), env, config).unwrap()
}

fn id(i: usize) -> ActorId {
    ActorId::new("bench", format!("a{i}")).unwrap()
}

fn rss_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn percentile(sorted_us: &[u64], p: f64) -> u64 {
    sorted_us[((sorted_us.len() - 1) as f64 * p) as usize]
}

async fn invocations_per_second<A: Actor<Message = ()>>(
    runtime: &Runtime<A>,
    actors: usize,
    calls: usize,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..actors {
        let actor = runtime.actor_ref(id(a));
        let per_actor = calls / actors;
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_actor {
                actor.invoke(()).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

async fn register(storage: &Storage, count: usize) -> f64 {
    let start = Instant::now();
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(writers) {
                let mut txn = storage.begin(id(i));
                txn.put(b"s".to_vec(), b"0".to_vec()).unwrap();
                txn.commit(None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn million_actors(dir: &std::path::Path, registered: usize, touches: usize, cap: usize) {
    let storage = Storage::open_redb(dir.join("million.redb")).unwrap();
    let rate = register(&storage, registered).await;
    println!("registered {registered} actors on redb at {rate:.0}/s");
    let runtime = runtime(Tally, storage, |c| c.active_actors_count_max = cap);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let picks: Vec<usize> = (0..touches).map(|_| rng.random_range(0..registered)).collect();
    let mut latencies_us = Vec::with_capacity(touches);
    let concurrency = TOUCH_CALLERS_COUNT;
    let chunks: Vec<Vec<usize>> = picks.chunks(touches / concurrency).map(|c| c.to_vec()).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (caller, chunk) in chunks.into_iter().enumerate() {
        let runtime = runtime.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(chunk.len());
            for (done, i) in chunk.into_iter().enumerate() {
                let t = Instant::now();
                runtime.invoke(&id(i), ()).await.unwrap();
                lat.push(t.elapsed().as_micros() as u64);
                if caller == 0 && done % TOUCH_PROGRESS_EVERY_COUNT == 0 {
                    eprintln!("  touch progress: {} of {touches}", done * concurrency);
                }
            }
            lat
        }));
    }
    for task in tasks {
        latencies_us.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    println!(
        "touched {touches} random actors (cap {cap}, {concurrency} concurrent): {:.0}/s, p50 {} us, p99 {} us, active now {}, peak RSS {:.0} MiB",
        touches as f64 / elapsed,
        percentile(&latencies_us, 0.50),
        percentile(&latencies_us, 0.99),
        runtime.active_count(),
        rss_bytes("VmHWM:") as f64 / (1024.0 * 1024.0)
    );
    runtime.shutdown().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let noop = runtime(Noop, Storage::memory(), |_| {});
        let calls = if quick { 20_000 } else { 200_000 };
        println!("no-op invocations, 1 actor, memory store: {:.0}/s", invocations_per_second(&noop, 1, calls).await);
        println!("no-op invocations, 64 actors, memory store: {:.0}/s", invocations_per_second(&noop, 64, calls).await);
        noop.shutdown().await;

        let persisted = runtime(Tally, Storage::open_redb(dir.path().join("tally.redb")).unwrap(), |_| {});
        let calls = if quick { 2_000 } else { 20_000 };
        for actors in [1, 64] {
            let rate = invocations_per_second(&persisted, actors, calls).await;
            println!("persisted invocations on redb (group commit), {actors} actors: {rate:.0}/s");
        }
        persisted.shutdown().await;

        let count = if quick { 10_000 } else { 100_000 };
        let idle = runtime(Noop, Storage::memory(), |c| c.active_actors_count_max = count);
        let before = rss_bytes("VmRSS:");
        let start = Instant::now();
        for i in 0..count {
            idle.invoke(&id(i), ()).await.unwrap();
        }
        let rate = count as f64 / start.elapsed().as_secs_f64();
        let per_actor = (rss_bytes("VmRSS:").saturating_sub(before)) as f64 / count as f64;
        println!("activations (1 caller, memory store): {rate:.0}/s; resident memory per idle active actor: {per_actor:.0} bytes");
        idle.shutdown().await;

        let (registered, touches, cap) = if quick { (20_000, 5_000, 1_000) } else { (1_000_000, 100_000, 10_000) };
        million_actors(dir.path(), registered, touches, cap).await;
    });
}
