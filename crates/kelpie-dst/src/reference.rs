//! The reference scenario: three nodes exchanging pings and pongs and
//! committing writes, under every network, storage, crash, time and CPU
//! fault at low rates. It is the workload of the determinism tests and of
//! the simulation-speed benchmark, and a template for real scenarios.
//!
//! Each node's process is written against [`kelpie_core::Env`] only (clock,
//! rng, spawner), plus its [`crate::SimStorage`] and its inbox. A test-side
//! oracle records each node's last acknowledged commit; the invariant
//! `acked_commit_is_durable` demands it be on disk whatever crashed since.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::Clock as _;

use crate::fault::{Fault, FaultRule};
use crate::simulation::{SimFailure, SimNode, SimReport, Simulation};
use crate::storage::WriteBatch;

/// Nodes in the reference scenario.
pub const REFERENCE_NODES_COUNT: usize = 3;

/// Longest pause between two pings of one node.
pub const REFERENCE_PING_INTERVAL_MS_MAX: u64 = 10;

/// A node commits one write every this many pings.
pub const REFERENCE_COMMIT_EVERY_PINGS: u64 = 4;

/// How long a crashed node stays down.
pub const REFERENCE_RESTART_DELAY_MS: u64 = 100;

const MESSAGE_PING: u8 = 1;
const MESSAGE_PONG: u8 = 2;
const MESSAGE_BYTES: usize = 17;

/// The faults of the reference scenario: every family except agent-level,
/// corruption and torn writes (which its invariant does not tolerate by design).
pub fn reference_faults() -> Vec<FaultRule> {
    vec![
        FaultRule::new(Fault::NetworkPacketLoss, 0.02),
        FaultRule::new(Fault::NetworkDuplicate, 0.02),
        FaultRule::new(Fault::NetworkReorder, 0.05),
        FaultRule::new(Fault::NetworkDelay { extra_ms_max: 30 }, 0.05),
        FaultRule::new(Fault::NetworkPartition { duration_ms: 200 }, 0.001),
        FaultRule::new(Fault::StorageWriteFail, 0.01),
        FaultRule::new(Fault::StorageReadFail, 0.01),
        FaultRule::new(Fault::StorageLatency { extra_ms_max: 10 }, 0.02),
        FaultRule::new(Fault::StorageDiskFull, 0.002),
        FaultRule::new(Fault::CrashBeforeWrite, 0.0005),
        FaultRule::new(Fault::CrashAfterWrite, 0.001),
        FaultRule::new(Fault::CrashDuringTransaction, 0.001),
        FaultRule::new(Fault::ClockSkew { skew_ms_max: 500 }, 0.001),
        FaultRule::new(Fault::ClockJump { jump_ms_max: 200 }, 0.0005),
        FaultRule::new(Fault::CpuStarvation { delay_ms_max: 5 }, 0.005),
    ]
}

/// The test-side record of each node's last acknowledged commit: `(key, value)`.
type AckedCommits = Arc<Mutex<Vec<Option<(Vec<u8>, Vec<u8>)>>>>;

/// Builds the reference simulation for `seed`, faults included, ready to run.
pub fn reference_simulation(seed: u64) -> Simulation {
    let mut builder = Simulation::builder()
        .seed(seed)
        .nodes(REFERENCE_NODES_COUNT)
        .restart_crashed_nodes_after(Duration::from_millis(REFERENCE_RESTART_DELAY_MS));
    for rule in reference_faults() {
        builder = builder.fault(rule);
    }
    // An explicit seed never consults the environment, so this cannot fail.
    let mut sim = builder.build().unwrap_or_else(|error| unreachable!("{error}"));
    let acked: AckedCommits = Arc::new(Mutex::new(vec![None; REFERENCE_NODES_COUNT]));
    for index in 0..REFERENCE_NODES_COUNT {
        let acked = acked.clone();
        sim.on_boot(index, move |node| boot(node, acked.clone()));
    }
    add_invariants(&mut sim, acked);
    sim
}

/// Runs the reference scenario for `duration` of simulated time.
pub fn run_reference(seed: u64, duration: Duration) -> Result<SimReport, SimFailure> {
    reference_simulation(seed).run_for(duration)
}

fn add_invariants(sim: &mut Simulation, acked: AckedCommits) {
    sim.invariant("acked_commit_is_durable", move |view| {
        let acked = acked.lock().unwrap_or_else(|poison| poison.into_inner());
        for (node, last) in view.nodes().iter().zip(acked.iter()) {
            let Some((key, value)) = last else { continue };
            if node.storage().durable_value(key).as_ref() != Some(value) {
                return Err(format!(
                    "{}: acknowledged commit {:?} is not on disk",
                    node.id(),
                    String::from_utf8_lossy(key)
                ));
            }
        }
        Ok(())
    });
    sim.invariant("no_message_invented", |view| {
        let stats = view.network().stats();
        if stats.delivered > stats.sent + stats.duplicated {
            return Err(format!(
                "{} delivered > {} sent + {} duplicated",
                stats.delivered, stats.sent, stats.duplicated
            ));
        }
        Ok(())
    });
}

fn encode(kind: u8, seq: u64, wall_ms: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MESSAGE_BYTES);
    bytes.push(kind);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&wall_ms.to_le_bytes());
    debug_assert_eq!(bytes.len(), MESSAGE_BYTES);
    bytes
}

fn decode(bytes: &[u8]) -> Option<(u8, u64)> {
    if bytes.len() != MESSAGE_BYTES {
        return None;
    }
    let seq = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    Some((bytes[0], seq))
}

/// A node's process: a server task answering pings, and the pinger loop.
async fn boot(node: SimNode, acked: AckedCommits) {
    let env = node.env();
    let server_node = node.clone();
    env.spawner.spawn("server", Box::pin(serve(server_node)));
    let peers: Vec<_> = (0..REFERENCE_NODES_COUNT)
        .filter(|&peer| peer != node.index())
        .map(|peer| kelpie_core::NodeId::new(format!("node-{peer}")))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| unreachable!("{error}"));
    let mut seq = 0u64;
    loop {
        seq += 1;
        env.clock
            .sleep(Duration::from_millis(env.rng.gen_range(1, REFERENCE_PING_INTERVAL_MS_MAX + 1)))
            .await;
        let peer = &peers[env.rng.gen_range(0, peers.len() as u64) as usize];
        let sent = node.send(peer, encode(MESSAGE_PING, seq, env.clock.wall_ms()));
        assert!(sent.is_ok(), "peers are members of the simulation");
        if seq.is_multiple_of(REFERENCE_COMMIT_EVERY_PINGS) {
            commit_once(&node, seq, &acked).await;
        }
    }
}

async fn commit_once(node: &SimNode, seq: u64, acked: &AckedCommits) {
    let key = format!("commit/{}/{seq:010}", node.id()).into_bytes();
    let value = seq.to_le_bytes().to_vec();
    let storage = node.storage();
    if storage.commit(WriteBatch::new().put(key.clone(), value.clone())).await.is_ok() {
        let mut acked = acked.lock().unwrap_or_else(|poison| poison.into_inner());
        acked[node.index()] = Some((key.clone(), value.clone()));
    }
    // Read-your-writes: a successful read of an acked key must return its value.
    if let Ok(Some(read)) = storage.get(&key).await {
        assert_eq!(read, value, "read back a different value than committed");
    }
}

async fn serve(node: SimNode) {
    loop {
        let envelope = node.recv().await;
        let Some((kind, seq)) = decode(&envelope.payload) else { continue };
        if kind == MESSAGE_PING {
            let wall_ms = node.clock().wall_ms();
            let replied = node.send(&envelope.from, encode(MESSAGE_PONG, seq, wall_ms));
            assert!(replied.is_ok(), "the sender is a member of the simulation");
        } else {
            debug_assert_eq!(kind, MESSAGE_PONG);
            let key = format!("pong/{}/{seq:010}", envelope.from).into_bytes();
            // Unflushed on purpose: the next commit or a crash decides its fate.
            let _ = node.storage().put(key, envelope.payload).await;
        }
    }
}
