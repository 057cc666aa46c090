//! DST of the real runtime, registry and fenced storage: three simulated
//! nodes, each running a `Runtime` on its own `SimNode::env()`, share one
//! database and one placement directory. Clients on every node invoke the
//! same two actors concurrently while nodes crash and restart, clocks jump
//! (a node whose wall clock leaps past a lease claims an actor another node
//! still believes it holds, making that one a zombie), tasks starve,
//! database and directory calls fail or stall, and now and then the reply
//! to a directory change the directory applied is lost. The probe's handler
//! panics on some requests, and on even seeds a node keeps one actor
//! active, so switching actors evicts the other. After every step the shared properties of
//! `kelpie_dst::properties` are checked on what the scenario observes.
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-runtime --test dst_single_activation`.

// Shared with the cluster DST, which uses parts this scenario does not.
#[allow(dead_code)]
mod dst;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::{ActorId, NodeId};
use kelpie_dst::properties;
use kelpie_dst::{Fault, FaultRule, SimFailure, SimHandle, SimNode, SimReport, Simulation};
use kelpie_registry::{PlacementStore, Registry, StoragePlacementStore};
use kelpie_runtime::runtime::{PlantedDefect, Runtime, RuntimeConfig};
use kelpie_storage::{MemoryBackend, Storage};

use dst::checks::{register_properties, Checked};
use dst::probe::{client, ProbeActor};
use dst::world::{
    lock, DatabaseLink, NodeBackend, NodeDirectory, Observations, RecordingPlacementStore, SharedDatabase,
};

const NODES_COUNT: usize = 3;
const ACTORS_COUNT: u64 = 2;
const CLIENTS_PER_NODE_COUNT: usize = 3;
/// Seeds run in CI (`DST_SEED` narrows the sweep to one).
const SEEDS_COUNT: u64 = 500;
const SIM_DURATION_MS: u64 = 800;
const LEASE_MS: u64 = 150;
const IDLE_TIMEOUT_MS: u64 = 120;
const INVOCATION_TIMEOUT_MS: u64 = 400;
const CLIENT_PAUSE_MS_MAX: u64 = 50;
const CHAOS_PAUSE_MS_MAX: u64 = 200;
/// Largest clock jump the chaos task applies: enough to outrun a lease.
const CLOCK_JUMP_MS_MAX: u64 = 3 * LEASE_MS;
const RESTART_AFTER_MS: u64 = 80;
/// Share of directory changes whose reply the node loses after the
/// directory applied them.
const DIRECTORY_LOST_REPLY_PROBABILITY: f64 = 0.01;
/// Every request whose number is a multiple of this makes the probe's
/// handler panic after it changed the state.
const PROBE_PANIC_EVERY: u64 = 10;

/// A defect planted in the code under test for one run (none in the sweep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planted {
    /// The directory's compare-and-set does not compare before it sets.
    ClaimWithoutCompare,
    /// The database applies a commit's writes before it validates them.
    ApplyBeforeValidation,
    /// A defect of the runtime itself.
    Runtime(PlantedDefect),
}

/// Everything the nodes share and the invariants read.
#[derive(Clone)]
struct World {
    observations: Arc<Mutex<Observations>>,
    database: Arc<SharedDatabase>,
    directory: Arc<dyn PlacementStore>,
    runtimes: Arc<Mutex<Vec<Option<Runtime<ProbeActor>>>>>,
    next_request: Arc<AtomicU64>,
    node_ids: Vec<NodeId>,
    /// How many actors a node keeps active (1 on even seeds: every switch
    /// of actor evicts the other, with invocations queued behind it).
    active_actors_count_max: usize,
    planted_defect: Option<PlantedDefect>,
}

impl World {
    fn new(node_ids: Vec<NodeId>, planted: Option<Planted>) -> Self {
        let observations = Arc::new(Mutex::new(Observations::default()));
        let backend = match planted {
            Some(Planted::ApplyBeforeValidation) => MemoryBackend::new().plant_apply_before_validation(),
            _ => MemoryBackend::new(),
        };
        let database = SharedDatabase::on_backend(Arc::clone(&observations), backend);
        // Leases here are judged by each node's own (jumping) clock.
        let directory = RecordingPlacementStore::on_store(&database, LEASE_MS, None, |storage| {
            let store = StoragePlacementStore::new(storage);
            if planted == Some(Planted::ClaimWithoutCompare) {
                store.plant_claim_without_compare()
            } else {
                store
            }
        });
        let runtimes = Arc::new(Mutex::new(vec![None; NODES_COUNT]));
        World {
            observations,
            database,
            directory,
            runtimes,
            next_request: Arc::new(AtomicU64::new(1)),
            node_ids,
            active_actors_count_max: ACTORS_COUNT as usize,
            planted_defect: match planted {
                Some(Planted::Runtime(defect)) => Some(defect),
                _ => None,
            },
        }
    }

    fn actor(index: u64) -> ActorId {
        ActorId::new("dst", format!("actor-{index}")).expect("valid id")
    }
}

/// One node's process: a runtime over the shared database and directory,
/// and clients invoking the actors.
async fn boot(world: World, node: SimNode) {
    let env = node.env();
    lock(&world.observations).activations.retain(|(_, index), _| *index != node.index());
    let link = DatabaseLink::default();
    let backend = NodeBackend { database: Arc::clone(&world.database), node: node.clone(), link };
    let storage = Storage::from_backend(Arc::new(backend));
    let directory = NodeDirectory {
        inner: Arc::clone(&world.directory),
        node: node.clone(),
        lost_reply_probability: DIRECTORY_LOST_REPLY_PROBABILITY,
    };
    let registry = Registry::with_lease(Arc::new(directory), env.clock.clone(), LEASE_MS);
    let mut config = RuntimeConfig::new(node.id().clone());
    config.idle_timeout_ms = IDLE_TIMEOUT_MS;
    config.invocation_timeout_ms = INVOCATION_TIMEOUT_MS;
    config.active_actors_count_max = world.active_actors_count_max;
    config.planted_defect = world.planted_defect;
    let actor = ProbeActor {
        node_index: node.index(),
        observations: Arc::clone(&world.observations),
        panic_every: Some(PROBE_PANIC_EVERY),
    };
    let runtime = Runtime::new(actor, storage, Arc::new(registry), env, config).expect("valid config");
    lock(&world.runtimes)[node.index()] = Some(runtime.clone());
    for _ in 0..CLIENTS_PER_NODE_COUNT {
        let actors = (0..ACTORS_COUNT).map(World::actor).collect();
        let observations = Arc::clone(&world.observations);
        let requests = Arc::clone(&world.next_request);
        node.spawn(
            "client",
            client(node.clone(), runtime.clone(), observations, requests, actors, CLIENT_PAUSE_MS_MAX),
        );
    }
}

/// Crashes nodes (they restart by themselves) and makes clocks jump.
async fn chaos(handle: SimHandle, nodes: Vec<SimNode>) {
    let rng = nodes[0].rng().clone();
    loop {
        handle.sleep(Duration::from_millis(rng.between_inclusive(1, CHAOS_PAUSE_MS_MAX))).await;
        let victim = rng.index_below(nodes.len());
        match rng.index_below(3) {
            0 => handle.crash_node(victim),
            1 => nodes[victim].clock().jump_ms(rng.between_inclusive(LEASE_MS, CLOCK_JUMP_MS_MAX) as i64),
            _ => nodes[victim].clock().jump_ms(-(rng.between_inclusive(1, LEASE_MS) as i64)),
        }
    }
}

fn run_seed(seed: u64) -> Result<(SimReport, World), SimFailure> {
    run_seed_with(seed, None)
}

/// One seed, with `planted` in the code under test.
fn run_seed_with(seed: u64, planted: Option<Planted>) -> Result<(SimReport, World), SimFailure> {
    dst::probe::quiet_planned_panics();
    let mut sim = Simulation::builder()
        .seed(seed)
        .nodes(NODES_COUNT)
        .fault(FaultRule::new(Fault::StorageReadFail, 0.01))
        .fault(FaultRule::new(Fault::StorageLatency { extra_ms_max: 10 }, 0.05))
        .fault(FaultRule::new(Fault::CpuStarvation { delay_ms_max: LEASE_MS }, 0.001))
        .restart_crashed_nodes_after(Duration::from_millis(RESTART_AFTER_MS))
        .build()
        .expect("seeded simulation");
    let mut world = World::new(sim.nodes().iter().map(|n| n.id().clone()).collect(), planted);
    if seed.is_multiple_of(2) {
        world.active_actors_count_max = 1;
    }
    for index in 0..NODES_COUNT {
        let w = world.clone();
        sim.on_boot(index, move |node| boot(w.clone(), node));
    }
    sim.spawn_control("chaos", chaos(sim.handle(), sim.nodes().to_vec()));
    let checked = Checked {
        observations: Arc::clone(&world.observations),
        database: Arc::clone(&world.database),
        runtimes: Arc::clone(&world.runtimes),
        node_ids: world.node_ids.clone(),
        actors: (0..ACTORS_COUNT).map(World::actor).collect(),
    };
    register_properties(&mut sim, &checked);
    let report = sim.run_for(Duration::from_millis(SIM_DURATION_MS))?;
    Ok((report, world))
}

#[test]
fn single_activation_and_fencing_hold_under_crashes_clock_jumps_and_storage_faults() {
    let seeds = kelpie_dst::seeds_to_run(0..SEEDS_COUNT).expect("DST_SEED parses");
    let (mut acknowledged, mut commits, mut handovers, mut fenced) = (0, 0, 0, 0);
    for &seed in &seeds {
        let (report, world) = run_seed(seed).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.seed, seed);
        let observed = lock(&world.observations);
        acknowledged += observed.acknowledged.len();
        commits += observed.commits.len();
        fenced += observed.fenced_count;
        handovers += observed
            .lease_events
            .iter()
            .filter(|e| matches!(e, properties::LeaseEvent::Granted { .. }))
            .count();
    }
    println!(
        "{} seeds: {acknowledged} acknowledged invocations, {commits} fenced commits, {handovers} lease grants, {fenced} zombie invocations fenced off",
        seeds.len()
    );
    assert!(acknowledged > 10 * seeds.len(), "the workload made progress: {acknowledged}");
    assert!(handovers > seeds.len(), "leases changed hands: {handovers}");
    if seeds.len() as u64 == SEEDS_COUNT {
        assert!(fenced > 0, "clock jumps made zombies, and fencing refused them");
    }
}

/// Seeds a planted defect gets, within CI's budget of [`SEEDS_COUNT`].
const PLANTED_SEEDS_COUNT: u64 = 200;

/// Runs seeds with `planted` until one fails; asserts that one does, that
/// one of the properties `expected` is what catches it (not an assertion on
/// the way), and that the failure names its seed (the replay command).
/// Returns the seed.
fn find_planted(planted: Planted, expected: &[&str]) -> u64 {
    let found = (0..PLANTED_SEEDS_COUNT).find_map(|seed| match run_seed_with(seed, Some(planted)) {
        Ok(_) => None,
        Err(failure) => Some((seed, failure)),
    });
    let Some((seed, failure)) = found else {
        panic!("no seed of {PLANTED_SEEDS_COUNT} found the planted {planted:?}")
    };
    println!("planted {planted:?} found at seed {seed}:\n{failure}");
    let text = failure.to_string();
    assert!(text.contains(&format!("seed {seed}")), "the failure names its seed: {text}");
    let caught_by = |name: &&str| text.contains(&format!("invariant `{name}` violated"));
    assert!(expected.iter().any(caught_by), "one of {expected:?} finds it: {text}");
    seed
}

/// The simulator reaches the window between a claim's read and its write:
/// with the directory's compare-and-set not comparing, two nodes win one
/// claim, and the directory and the fencing record disagree.
#[test]
fn a_claim_that_does_not_compare_before_it_sets_is_found() {
    let caught_by =
        [properties::LEASE_UNIQUENESS, properties::PLACEMENT_CONSISTENCY, properties::SINGLE_ACTIVATION];
    find_planted(Planted::ClaimWithoutCompare, &caught_by);
}

/// A database that applies a commit before validating it lets a zombie's
/// refused commit land: its stale state overwrites acknowledged writes, and
/// the write of a request answered `Fenced` is durable.
#[test]
fn a_commit_applied_before_validation_is_found() {
    find_planted(Planted::ApplyBeforeValidation, &[properties::DURABILITY, properties::FAILURE_ATOMICITY]);
}

/// A runtime that keeps a panicking handler's half-changed state saves it
/// with the next invocation: the panicked request's write becomes durable.
#[test]
fn a_panicking_handlers_state_kept_is_found() {
    find_planted(Planted::Runtime(PlantedDefect::KeepStateAfterPanic), &[properties::FAILURE_ATOMICITY]);
}

/// A deactivation (here: eviction when a node keeps one actor active) that
/// drops the invocations queued in its mailbox leaves them unanswered.
#[test]
fn a_deactivation_that_drops_queued_invocations_is_found() {
    find_planted(
        Planted::Runtime(PlantedDefect::DropQueuedOnDeactivate),
        &[properties::GRACEFUL_DEACTIVATION],
    );
}

#[test]
fn one_seed_replays_to_the_same_trace() {
    let (first, _) = run_seed(7).unwrap_or_else(|failure| panic!("{failure}"));
    let (second, _) = run_seed(7).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.steps, second.steps);
}
