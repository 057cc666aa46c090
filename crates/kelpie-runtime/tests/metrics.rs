//! The runtime's metrics over a known workload: activations, deactivations
//! by reason and lease operations move by exactly what the workload implies.
//!
//! The metrics registry is process-wide, so this file holds one test:
//! nothing else in its process records.

// Real tokio time: the idle timeout has to pass.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use kelpie_core::metrics::{counter_total, ACTOR_ACTIVATIONS, ACTOR_DEACTIVATIONS, LEASE_OPERATIONS};
use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::{Registry, StoragePlacementStore};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig};
use kelpie_storage::Storage;

/// Short, so the idle deactivation comes soon; the test waits for it.
const IDLE_TIMEOUT_MS: u64 = 100;
/// How long the test waits for the idle deactivation at most.
const IDLE_WAIT_MS_MAX: u64 = 10_000;

struct Tally;

impl Actor for Tally {
    type State = u64;
    type Message = bool;
    type Reply = u64;

    async fn on_activate(&self, ctx: &mut ActorContext<'_, u64>) -> Result<()> {
        if ctx.actor_id.id() == "refuses" {
            return Err(Error::validation("actor", "refuses to activate"));
        }
        Ok(())
    }

    async fn handle(&self, ctx: &mut ActorContext<'_, u64>, add: bool) -> Result<u64> {
        *ctx.state += u64::from(add);
        Ok(*ctx.state)
    }
}

fn id(name: &str) -> ActorId {
    ActorId::new("tally", name).unwrap()
}

fn totals() -> [u64; 8] {
    [
        counter_total(&ACTOR_ACTIVATIONS, &["activated"]),
        counter_total(&ACTOR_ACTIVATIONS, &["failed"]),
        counter_total(&ACTOR_DEACTIVATIONS, &["idle"]),
        counter_total(&ACTOR_DEACTIVATIONS, &["requested"]),
        counter_total(&LEASE_OPERATIONS, &["claim", "granted"]),
        counter_total(&LEASE_OPERATIONS, &["release", "released"]),
        counter_total(&ACTOR_DEACTIVATIONS, &["lease_lost"]),
        counter_total(&LEASE_OPERATIONS, &["claim", "error"]),
    ]
}

#[tokio::test]
async fn a_known_workload_moves_the_runtime_counters_by_known_amounts() {
    let storage = Storage::memory();
    let env = Env::production();
    let registry = Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone());
    let mut config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    config.idle_timeout_ms = IDLE_TIMEOUT_MS;
    let runtime = Runtime::new(Tally, storage, Arc::new(registry), env, config).unwrap();
    assert_eq!(totals(), [0; 8], "nothing recorded before the workload");

    // Three actors activated, each once, whatever the number of messages.
    for name in ["a", "b", "c"] {
        for _ in 0..3 {
            runtime.invoke(&id(name), true).await.unwrap();
        }
    }
    // One whose activation fails: its claim is granted, then the hook refuses.
    let err = runtime.invoke(&id("refuses"), true).await.unwrap_err();
    assert_eq!(err.to_string(), "invalid actor: refuses to activate");
    let [activated, failed, idle, requested, granted, released, lost, claim_errors] = totals();
    assert_eq!((activated, failed, granted), (3, 1, 4));

    // One asked to deactivate; the other two go idle.
    runtime.deactivate(&id("a")).await;
    assert_eq!(totals()[3], 1, "one requested deactivation");
    let mut waited_ms = 0;
    while runtime.active_count() > 0 && waited_ms < IDLE_WAIT_MS_MAX {
        tokio::time::sleep(Duration::from_millis(IDLE_TIMEOUT_MS)).await;
        waited_ms += IDLE_TIMEOUT_MS;
    }
    assert_eq!(runtime.active_count(), 0, "b and c went idle within {IDLE_WAIT_MS_MAX} ms");
    assert_eq!((idle, requested, released, lost, claim_errors), (0, 0, 0, 0, 0), "before deactivation");
    let after = totals();
    assert_eq!(after, [3, 1, 2, 1, 4, 3, 0, 0], "2 idle + 1 requested, each releasing its lease");

    // Activating again claims again.
    assert_eq!(runtime.invoke(&id("a"), true).await.unwrap(), 4, "the state came back");
    assert_eq!(totals()[0], 4);
    assert_eq!(totals()[4], 5);
}
