//! DST of the cluster: up to four simulated nodes, each running the real
//! `Runtime::clustered`, the real membership (`Member` over the shared node
//! table), the real `ClusterRemote` and `NodeHandler`, talking over
//! kelpie-dst's `SimNetwork`. They share one database: actor state with
//! fenced commits, placements with leases and fencing epochs (a `Registry`
//! judging leases by the simulation's true time, as `PostgresRegistry`
//! judges by the database's clock) and the node table (heartbeats stamped by
//! the same true time).
//!
//! Clients on every node invoke a few actors, recording each acknowledged
//! invocation. A chaos task makes a node join, leave gracefully (draining
//! with `runtime.shutdown()`), crash and come back, pause past its lease
//! (it must be fenced when it resumes), partitions nodes from each other and
//! from the database, and skews and jumps their clocks. After every step the
//! properties of `kelpie_dst::properties` are checked (see
//! `kelpie-runtime/tests/dst/checks.rs`, shared with the runtime's DST).
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-cluster --test dst_cluster`.

// The world, probe actor and checks of the runtime's DST, shared as they are.
#[path = "../../kelpie-runtime/tests/dst/mod.rs"]
#[allow(dead_code)]
mod dst;
#[path = "dst_cluster/links.rs"]
mod links;
#[path = "dst_cluster/sim_transport.rs"]
mod sim_transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::{ClusterRemote, Member, MembershipConfig, MemoryNodeStore, NodeHandler, NodeStatus};
use kelpie_core::{ActorId, Error, NodeId};
use kelpie_dst::properties;
use kelpie_dst::{Fault, FaultRule, SimFailure, SimHandle, SimNode, SimReport, Simulation};
use kelpie_registry::Registry;
use kelpie_runtime::runtime::{Runtime, RuntimeConfig};
use kelpie_storage::Storage;

use dst::checks::{register_properties, Checked};
use dst::probe::{client, ProbeActor, Served};
use dst::world::{lock, DatabaseLink, NodeBackend, Observations, RecordingPlacementStore, SharedDatabase};
use links::{LinkedDirectory, LinkedNodeStore};
use sim_transport::{advertise, SimTransport};

/// Simulated nodes; the last one is down at the start and joins later.
const NODES_COUNT: usize = 4;
const ACTORS_COUNT: u64 = 3;
const CLIENTS_PER_NODE_COUNT: usize = 2;
/// Seeds run in CI (`DST_SEED` narrows the sweep to one).
const SEEDS_COUNT: u64 = 500;
const SIM_DURATION_MS: u64 = 800;
const LEASE_MS: u64 = 150;
const HEARTBEAT_INTERVAL_MS: u64 = 25;
/// Four heartbeats: a node is failed in every view 100 ms after its last one.
const HEARTBEAT_TIMEOUT_MS: u64 = 4 * HEARTBEAT_INTERVAL_MS;
const IDLE_TIMEOUT_MS: u64 = 120;
const INVOCATION_TIMEOUT_MS: u64 = 400;
const FORWARD_TIMEOUT_MS: u64 = 150;
const JOIN_ATTEMPTS_COUNT_MAX: u32 = 20;
const CLIENT_PAUSE_MS_MAX: u64 = 40;
/// Every request whose number is a multiple of this makes the probe's
/// handler panic after it changed the state (also when forwarded).
const PROBE_PANIC_EVERY: u64 = 10;
const CHAOS_PAUSE_MS_MAX: u64 = 120;
/// A pause outlasts the lease (and the heartbeat timeout): others take over.
const NODE_PAUSE_MS_MIN: u64 = LEASE_MS + HEARTBEAT_TIMEOUT_MS;
const NODE_PAUSE_MS_MAX: u64 = 2 * NODE_PAUSE_MS_MIN;
const CUT_MS_MAX: u64 = 2 * LEASE_MS;
const DOWN_MS_MAX: u64 = 2 * LEASE_MS;
/// Skews far beyond a lease: were leases judged by node clocks, owners would overlap.
const CLOCK_SKEW_MS_MAX: u64 = 10 * LEASE_MS;
const CLOCK_JUMP_MS_MAX: u64 = 3 * LEASE_MS;
const PAUSE_SCRIPT_SEEDS_COUNT: u64 = 50;
/// Long enough for both nodes to have joined.
const SCRIPT_SETTLE_MS: u64 = 20;
/// The paused owner's lease has run out, and its heartbeats too.
const SCRIPT_TAKEOVER_AFTER_MS: u64 = LEASE_MS + HEARTBEAT_TIMEOUT_MS + HEARTBEAT_INTERVAL_MS;
const SCRIPT_PAUSE_MS: u64 = SCRIPT_TAKEOVER_AFTER_MS + LEASE_MS;
const SCRIPT_QUEUE_BEFORE_RESUME_MS: u64 = 10;

/// Everything the nodes share and the invariants read.
#[derive(Clone)]
struct World {
    checked: Checked,
    registry: Registry,
    node_store: MemoryNodeStore,
    links: Vec<DatabaseLink>,
    members: Arc<Mutex<Vec<Option<Member>>>>,
    peers: Arc<BTreeMap<SocketAddr, NodeId>>,
    request_ids: Arc<AtomicU64>,
    next_request: Arc<AtomicU64>,
    clients_per_node: usize,
}

impl World {
    fn new(sim: &Simulation, clients_per_node: usize) -> Self {
        let truth: Arc<dyn kelpie_core::Clock> = Arc::new(sim.handle().true_clock());
        let observations = Arc::new(Mutex::new(Observations::default()));
        let database = SharedDatabase::new(Arc::clone(&observations));
        // Leases are judged, and their events stamped, by the database's clock.
        let recording = RecordingPlacementStore::on(&database, LEASE_MS, Some(Arc::clone(&truth)));
        let registry = Registry::with_lease(recording, Arc::clone(&truth), LEASE_MS);
        let node_ids: Vec<NodeId> = sim.nodes().iter().map(|n| n.id().clone()).collect();
        let peers = node_ids.iter().enumerate().map(|(i, id)| (advertise(i), id.clone())).collect();
        World {
            checked: Checked {
                observations,
                database,
                runtimes: Arc::new(Mutex::new(vec![None; NODES_COUNT])),
                node_ids,
                actors: (0..ACTORS_COUNT).map(World::actor).collect(),
            },
            registry,
            node_store: MemoryNodeStore::new(truth),
            links: (0..NODES_COUNT).map(|_| DatabaseLink::default()).collect(),
            members: Arc::new(Mutex::new(vec![None; NODES_COUNT])),
            peers: Arc::new(peers),
            request_ids: Arc::new(AtomicU64::new(1)),
            next_request: Arc::new(AtomicU64::new(1)),
            clients_per_node,
        }
    }

    fn actor(index: u64) -> ActorId {
        ActorId::new("dst", format!("actor-{index}")).expect("valid id")
    }
}

/// Joins the node table, retrying while the database is out of reach.
async fn join(world: &World, node: &SimNode) -> Option<Member> {
    let env = node.env();
    let config = MembershipConfig::new(HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS);
    for _ in 0..JOIN_ATTEMPTS_COUNT_MAX {
        let store =
            LinkedNodeStore { store: world.node_store.clone(), link: world.links[node.index()].clone() };
        let joined =
            Member::join(store, env.clone(), node.id().clone(), advertise(node.index()), config).await;
        if let Ok(member) = joined {
            return Some(member);
        }
        env.clock.sleep(Duration::from_millis(HEARTBEAT_INTERVAL_MS)).await;
    }
    None
}

/// One node's process: membership, a clustered runtime, the transport
/// serving the node's `NodeHandler`, and clients.
async fn boot(world: World, node: SimNode) {
    let index = node.index();
    lock(&world.checked.observations).activations.retain(|(_, at), _| *at != index);
    lock(&world.checked.runtimes)[index] = None;
    let Some(member) = join(&world, &node).await else { return };
    let env = node.env();
    let link = world.links[index].clone();
    let backend = NodeBackend { database: Arc::clone(&world.checked.database), node: node.clone(), link };
    let directory =
        Arc::new(LinkedDirectory { registry: world.registry.clone(), link: world.links[index].clone() });
    let transport = SimTransport::new(node.clone(), Arc::clone(&world.peers), Arc::clone(&world.request_ids));
    let remote = ClusterRemote::new(
        Arc::new(member.clone()),
        Arc::new(transport.clone()),
        env.clone(),
        FORWARD_TIMEOUT_MS,
    );
    let mut config = RuntimeConfig::new(node.id().clone());
    config.idle_timeout_ms = IDLE_TIMEOUT_MS;
    config.invocation_timeout_ms = INVOCATION_TIMEOUT_MS;
    let actor = ProbeActor {
        node_index: index,
        observations: Arc::clone(&world.checked.observations),
        panic_every: Some(PROBE_PANIC_EVERY),
    };
    let storage = Storage::from_backend(Arc::new(backend));
    let runtime =
        Runtime::clustered(actor, storage, directory, env, config, Arc::new(remote)).expect("valid config");
    transport.serve(Arc::new(NodeHandler::default().with_namespace("dst", Arc::new(runtime.clone()))));
    lock(&world.checked.runtimes)[index] = Some(runtime.clone());
    lock(&world.members)[index] = Some(member);
    for _ in 0..world.clients_per_node {
        let observations = Arc::clone(&world.checked.observations);
        let (requests, actors) = (Arc::clone(&world.next_request), world.checked.actors.clone());
        node.spawn(
            "client",
            client(node.clone(), runtime.clone(), observations, requests, actors, CLIENT_PAUSE_MS_MAX),
        );
    }
}

/// What the chaos task did, counted over a run.
#[derive(Debug, Default, Clone, Copy)]
struct ChaosCounts {
    joins: u64,
    leaves: u64,
    crashes: u64,
    pauses: u64,
    partitions: u64,
    database_cuts: u64,
    clock_changes: u64,
}

/// Members that are up and neither leaving nor left.
fn serving(world: &World, nodes: &[SimNode]) -> usize {
    let members = lock(&world.members);
    let active = |i: usize| members[i].as_ref().is_some_and(|m| m.status() == NodeStatus::Active);
    (0..nodes.len()).filter(|&i| nodes[i].is_up() && active(i)).count()
}

/// A node that is down (never started, or crashed) or has left starts a
/// fresh process, which joins the node table. False if it was serving.
fn join_again(world: &World, handle: &SimHandle, index: usize) -> bool {
    let left = lock(&world.members)[index].as_ref().is_some_and(|m| m.status() == NodeStatus::Left);
    if left {
        handle.crash_node(index);
    }
    handle.restart_node(index)
}

/// A graceful leave of an active node: draining is the runtime's shutdown.
fn leave(world: &World, node: &SimNode) -> bool {
    let member = lock(&world.members)[node.index()].clone().filter(|m| m.status() == NodeStatus::Active);
    let runtime = lock(&world.checked.runtimes)[node.index()].clone();
    let (Some(member), Some(runtime)) = (member, runtime) else { return false };
    node.spawn("leave", async move {
        let _ = member.leave(runtime.shutdown()).await;
    })
}

/// Every 1 to `CHAOS_PAUSE_MS_MAX` ms, does one thing to a random node.
async fn chaos(world: World, handle: SimHandle, nodes: Vec<SimNode>, tally: Arc<Mutex<ChaosCounts>>) {
    let rng = nodes[0].rng().clone();
    let between = |low: u64, high: u64| Duration::from_millis(rng.between_inclusive(low, high));
    loop {
        handle.sleep(between(1, CHAOS_PAUSE_MS_MAX)).await;
        let victim = rng.index_below(nodes.len());
        let node = &nodes[victim];
        let mut counts = *lock(&tally);
        match rng.index_below(8) {
            0 => counts.joins += u64::from(join_again(&world, &handle, victim)),
            1 if node.is_up() && serving(&world, &nodes) > 1 => {
                counts.leaves += u64::from(leave(&world, node));
            }
            2 if node.is_up() && serving(&world, &nodes) > 1 => {
                counts.crashes += 1;
                handle.crash_node(victim);
                handle.sleep(between(1, DOWN_MS_MAX)).await;
                handle.restart_node(victim);
            }
            3 => {
                counts.pauses += 1;
                handle.pause_node(victim, between(NODE_PAUSE_MS_MIN, NODE_PAUSE_MS_MAX));
            }
            4 => {
                counts.partitions += 1;
                let others: Vec<NodeId> =
                    nodes.iter().filter(|n| n.index() != victim).map(|n| n.id().clone()).collect();
                handle.network().partition(&[node.id().clone()], &others).expect("known nodes");
                handle.sleep(between(1, CUT_MS_MAX)).await;
                handle.network().heal();
            }
            5 => {
                counts.database_cuts += 1;
                world.links[victim].set_cut(true);
                handle.sleep(between(1, CUT_MS_MAX)).await;
                world.links[victim].set_cut(false);
            }
            6 => {
                counts.clock_changes += 1;
                let skew = rng.between_inclusive(0, 2 * CLOCK_SKEW_MS_MAX) as i64 - CLOCK_SKEW_MS_MAX as i64;
                node.clock().set_skew_ms(skew);
            }
            7 => {
                counts.clock_changes += 1;
                let jump = rng.between_inclusive(0, 2 * CLOCK_JUMP_MS_MAX) as i64 - CLOCK_JUMP_MS_MAX as i64;
                node.clock().jump_ms(jump);
            }
            _ => {}
        }
        *lock(&tally) = counts;
    }
}

fn run_seed(seed: u64) -> Result<(SimReport, World, ChaosCounts), SimFailure> {
    dst::probe::quiet_planned_panics();
    let mut sim = Simulation::builder()
        .seed(seed)
        .nodes(NODES_COUNT)
        .fault(FaultRule::new(Fault::NetworkPacketLoss, 0.01))
        .fault(FaultRule::new(Fault::NetworkDelay { extra_ms_max: 20 }, 0.05))
        .fault(FaultRule::new(Fault::StorageReadFail, 0.01))
        .fault(FaultRule::new(Fault::StorageLatency { extra_ms_max: 10 }, 0.05))
        .build()
        .expect("seeded simulation");
    let world = World::new(&sim, CLIENTS_PER_NODE_COUNT);
    for index in 0..NODES_COUNT {
        let w = world.clone();
        sim.on_boot(index, move |node| boot(w.clone(), node));
    }
    // The last node is not started: it joins when the chaos task says so.
    sim.crash_node(NODES_COUNT - 1);
    let tally = Arc::new(Mutex::new(ChaosCounts::default()));
    let chaos_task = chaos(world.clone(), sim.handle(), sim.nodes().to_vec(), Arc::clone(&tally));
    sim.spawn_control("chaos", chaos_task);
    register_properties(&mut sim, &world.checked);
    let report = sim.run_for(Duration::from_millis(SIM_DURATION_MS))?;
    let counts = *lock(&tally);
    Ok((report, world, counts))
}

#[test]
fn no_split_brain_and_no_lost_write_under_join_leave_crash_pause_partition_and_clock_faults() {
    let seeds = kelpie_dst::seeds_to_run(0..SEEDS_COUNT).expect("DST_SEED parses");
    let (mut acknowledged, mut commits, mut grants, mut fenced, mut forwarded) = (0, 0, 0, 0, 0u64);
    let mut chaos = ChaosCounts::default();
    for &seed in &seeds {
        let (report, world, counts) = run_seed(seed).unwrap_or_else(|failure| panic!("{failure}"));
        assert_eq!(report.seed, seed);
        let observed = lock(&world.checked.observations);
        acknowledged += observed.acknowledged.len();
        commits += observed.commits.len();
        fenced += observed.fenced_count;
        forwarded += observed.forwarded_count;
        grants += observed
            .lease_events
            .iter()
            .filter(|e| matches!(e, properties::LeaseEvent::Granted { .. }))
            .count();
        chaos.joins += counts.joins;
        chaos.leaves += counts.leaves;
        chaos.crashes += counts.crashes;
        chaos.pauses += counts.pauses;
        chaos.partitions += counts.partitions;
        chaos.database_cuts += counts.database_cuts;
        chaos.clock_changes += counts.clock_changes;
    }
    println!(
        "{} seeds: {acknowledged} acknowledged invocations, {commits} fenced commits, {grants} lease grants, \
         {fenced} zombie invocations fenced off, {forwarded} acknowledged through forwarding; chaos {chaos:?}",
        seeds.len()
    );
    assert!(acknowledged > 10 * seeds.len(), "the workload made progress: {acknowledged}");
    assert!(grants > seeds.len(), "leases changed hands: {grants}");
    assert!(forwarded > seeds.len() as u64, "invocations were forwarded to owners: {forwarded}");
    if seeds.len() as u64 == SEEDS_COUNT {
        assert!(fenced > 0, "paused and cut-off owners came back as zombies, and fencing refused them");
        let ChaosCounts { joins, leaves, crashes, pauses, partitions, database_cuts, clock_changes } = chaos;
        for (what, count) in [
            ("joins", joins),
            ("leaves", leaves),
            ("crashes", crashes),
            ("pauses", pauses),
            ("partitions", partitions),
            ("database cuts", database_cuts),
            ("clock changes", clock_changes),
        ] {
            // Joins only follow leaves, so they are the rarest (about one
            // seed in four); each kind must reach a fifth of the seeds.
            assert!(count > seeds.len() as u64 / 5, "the chaos task made {what}: {count}");
        }
    }
}

/// What the three invocations of the pause script returned.
type PauseOutcome = [kelpie_core::Result<Served>; 3];

/// Node 0 activates an actor, is paused past its lease, node 1 takes the
/// actor over, and a request to node 0 is queued just before it resumes.
fn run_pause_script(seed: u64) -> Result<(World, PauseOutcome), SimFailure> {
    dst::probe::quiet_planned_panics();
    let mut sim = Simulation::builder().seed(seed).nodes(NODES_COUNT).build().expect("seeded simulation");
    let world = World::new(&sim, 0);
    for index in 0..NODES_COUNT {
        let w = world.clone();
        sim.on_boot(index, move |node| boot(w.clone(), node));
    }
    sim.crash_node(2);
    sim.crash_node(3);
    let outcome: Arc<Mutex<Vec<kelpie_core::Result<Served>>>> = Arc::default();
    let (w, handle, record) = (world.clone(), sim.handle(), Arc::clone(&outcome));
    sim.spawn_control("pause-script", async move {
        handle.sleep(Duration::from_millis(SCRIPT_SETTLE_MS)).await;
        let runtimes = lock(&w.checked.runtimes).clone();
        let (zombie, heir) =
            (runtimes[0].clone().expect("node 0 up"), runtimes[1].clone().expect("node 1 up"));
        let actor = World::actor(0);
        let first = zombie.invoke(&actor, 1).await;
        handle.pause_node(0, Duration::from_millis(SCRIPT_PAUSE_MS));
        handle.sleep(Duration::from_millis(SCRIPT_TAKEOVER_AFTER_MS)).await;
        let second = heir.invoke(&actor, 2).await;
        // Queued while node 0 still sleeps: its stale activation finds the
        // request waiting when it resumes.
        let before_resume_ms = SCRIPT_PAUSE_MS - SCRIPT_TAKEOVER_AFTER_MS - SCRIPT_QUEUE_BEFORE_RESUME_MS;
        handle.sleep(Duration::from_millis(before_resume_ms)).await;
        let third = zombie.invoke(&actor, 3).await;
        lock(&record).extend([first, second, third]);
    });
    register_properties(&mut sim, &world.checked);
    sim.run_for(Duration::from_millis(SIM_DURATION_MS))?;
    let outcome: Vec<_> = std::mem::take(&mut *lock(&outcome));
    let outcome: PauseOutcome =
        outcome.try_into().unwrap_or_else(|v: Vec<_>| panic!("script did not finish: {v:?}"));
    Ok((world, outcome))
}

#[test]
fn a_paused_owner_resumes_fenced_while_its_actor_lives_on_elsewhere() {
    let seeds = kelpie_dst::seeds_to_run(0..PAUSE_SCRIPT_SEEDS_COUNT).expect("DST_SEED parses");
    for &seed in &seeds {
        let (world, [first, second, third]) =
            run_pause_script(seed).unwrap_or_else(|failure| panic!("{failure}"));
        let served = |node: &str, epoch: u64| Served { node: node.to_string(), epoch };
        assert_eq!(first.expect("node 0 serves"), served("node-0", 1), "seed {seed}");
        assert_eq!(second.expect("node 1 takes over"), served("node-1", 2), "seed {seed}");
        // Resumed, node 0's stale activation finds the request queued: its
        // commit at epoch 1 is refused (or its renewal is, which fences it too).
        assert!(matches!(third, Err(Error::Fenced { .. })), "seed {seed}: the zombie answered {third:?}");
        let durable = world.checked.database.durable_log(&World::actor(0));
        let at = |request: u64| durable.get(&(World::actor(0), request)).map(|v| v.value.clone());
        assert_eq!(at(1), Some(("node-0".to_string(), 1)), "seed {seed}");
        assert_eq!(at(2), Some(("node-1".to_string(), 2)), "seed {seed}");
        assert_eq!(at(3), None, "seed {seed}: the zombie committed");
    }
}

#[test]
fn one_seed_replays_to_the_same_trace() {
    let (first, _, _) = run_seed(7).unwrap_or_else(|failure| panic!("{failure}"));
    let (second, _, _) = run_seed(7).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.steps, second.steps);
}
