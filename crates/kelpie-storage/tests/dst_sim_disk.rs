//! DST of the storage API on the simulated disk: transactions from several
//! writers per node, under storage write/read failures, torn writes and
//! crashes before, during and after a flush, with restarts. After every step:
//!
//! - Durability: every acknowledged commit is in a durable record.
//! - AtomicVisibility: after every restart, each transaction is visible with
//!   all of its keys or none of them (checked through the storage API on the
//!   rebuilt index).
//! - NoLostOrLeftoverWrite: after every restart, each actor's counter, which
//!   every transaction reads and increments, equals the number of its
//!   transactions visible: a commit refused for a conflict left nothing
//!   behind, and two that read the same value did not both commit.
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-storage --test dst_sim_disk`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::ActorId;
use kelpie_dst::{seeds_to_run, Fault, FaultKind, FaultRule, SimFailure, SimNode, SimReport, Simulation};
use kelpie_storage::sim_disk::{SimDiskBackend, SimDiskRecord};
use kelpie_storage::{KeyRange, Storage};

const NODES_COUNT: usize = 2;
const WRITERS_PER_NODE_COUNT: usize = 2;
const ACTORS_COUNT: u64 = 3;
const SEEDS_COUNT: u64 = 500;
const SIMULATED_MS: u64 = 300;
/// The keys every transaction writes; all or none must be visible.
const TXN_PARTS: [&str; 3] = ["a", "b", "c"];

#[derive(Default)]
struct Shared {
    /// Per node: transaction numbers whose commit returned Ok.
    acked: Vec<BTreeSet<u64>>,
    /// Atomic-visibility and counter violations found after restarts.
    torn: Vec<String>,
}

fn actor(n: u64) -> ActorId {
    ActorId::new("dst", format!("a{}", n % ACTORS_COUNT)).expect("valid id")
}

async fn writer(node: SimNode, storage: Storage, next: Arc<AtomicU64>, shared: Arc<Mutex<Shared>>) {
    let env = node.env();
    loop {
        // Every round waits a little, so a writer whose store keeps failing
        // still lets the simulator run other tasks (and the crash it asked for).
        env.clock.sleep(Duration::from_millis(env.rng.gen_range(2, 8))).await;
        let n = next.fetch_add(1, Ordering::SeqCst);
        let mut txn = storage.begin(actor(n));
        // A read-modify-write of a shared counter makes writers conflict.
        let counter = match txn.get(b"counter").await {
            Ok(value) => value.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))),
            Err(_) => continue,
        };
        // Work between the read and the commit (as an agent's step does),
        // so other writers' transactions on the actor overlap this one.
        env.clock.sleep(Duration::from_millis(env.rng.gen_range(0, 4))).await;
        let mut ok = txn.put(b"counter".to_vec(), (counter + 1).to_be_bytes().to_vec()).is_ok();
        for part in TXN_PARTS {
            ok &= txn.put(format!("t{n}/{part}").into_bytes(), n.to_be_bytes().to_vec()).is_ok();
        }
        assert!(ok, "small writes are within every limit");
        if txn.commit(None).await.is_ok() {
            shared.lock().unwrap().acked[node.index()].insert(n);
        }
    }
}

/// After a restart, every transaction is visible whole or not at all.
async fn check_atomic_visibility(storage: &Storage, shared: &Mutex<Shared>) {
    for a in 0..ACTORS_COUNT {
        let mut txn = storage.begin(actor(a));
        let Ok(rows) = txn.scan(KeyRange::prefix(b"t".to_vec())).await else { return };
        let mut parts: std::collections::BTreeMap<String, usize> = Default::default();
        for (key, _) in rows {
            let key = String::from_utf8_lossy(&key).into_owned();
            let txn_id = key.split('/').next().unwrap_or_default().to_string();
            *parts.entry(txn_id).or_default() += 1;
        }
        let visible = parts.len() as u64;
        for (txn_id, count) in parts {
            if count != TXN_PARTS.len() {
                shared.lock().unwrap().torn.push(format!("{txn_id} has {count} of {} keys", TXN_PARTS.len()));
            }
        }
        let Ok(counter) = txn.get(b"counter").await else { return };
        let counter = counter.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
        if counter != visible {
            shared.lock().unwrap().torn.push(format!(
                "actor a{a}: counter is {counter} but {visible} transactions that incremented it are visible"
            ));
        }
    }
}

fn durable_txns(node: &SimNode) -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    for bytes in node.storage().durable_entries().values() {
        if let Some(SimDiskRecord::Commit { writes, .. }) = SimDiskRecord::decode(bytes) {
            for key in writes.keys() {
                let text = String::from_utf8_lossy(key);
                if let Some(n) = text.strip_prefix('t').and_then(|rest| rest.split('/').next()) {
                    found.insert(n.parse().expect("txn number"));
                }
            }
        }
    }
    found
}

fn build(seed: u64) -> Simulation {
    let faults = [
        FaultRule::new(Fault::StorageWriteFail, 0.02),
        FaultRule::new(Fault::StorageReadFail, 0.01),
        FaultRule::new(Fault::StoragePartialWrite, 0.01),
        FaultRule::new(Fault::CrashBeforeWrite, 0.01),
        FaultRule::new(Fault::CrashDuringTransaction, 0.01),
        FaultRule::new(Fault::CrashAfterWrite, 0.01),
    ];
    let mut builder = Simulation::builder()
        .seed(seed)
        .nodes(NODES_COUNT)
        .restart_crashed_nodes_after(Duration::from_millis(20));
    for rule in faults {
        builder = builder.fault(rule);
    }
    builder.build().expect("valid simulation")
}

fn run_seed(seed: u64) -> Result<(SimReport, Arc<Mutex<Shared>>), SimFailure> {
    run_seed_with(seed, false)
}

/// One seed; `planted`: with commits that do not check what they read.
fn run_seed_with(seed: u64, planted: bool) -> Result<(SimReport, Arc<Mutex<Shared>>), SimFailure> {
    let mut sim = build(seed);
    let shared = Arc::new(Mutex::new(Shared { acked: vec![BTreeSet::new(); NODES_COUNT], torn: Vec::new() }));
    let next = Arc::new(AtomicU64::new(0));
    for index in 0..NODES_COUNT {
        let (handle, shared, next) = (sim.handle(), shared.clone(), next.clone());
        sim.on_boot(index, move |node| {
            let (handle, shared, next) = (handle.clone(), shared.clone(), next.clone());
            async move {
                let on_fatal = handle.clone();
                let fatal = Box::new(move || on_fatal.crash_node(index));
                let Ok(backend) = SimDiskBackend::open(node.storage().clone(), fatal).await else {
                    // A read failure while rebuilding: restart and try again.
                    handle.crash_node(index);
                    return;
                };
                let backend = if planted { backend.plant_commit_without_read_check() } else { backend };
                let storage = Storage::from_backend(Arc::new(backend));
                check_atomic_visibility(&storage, &shared).await;
                for _ in 0..WRITERS_PER_NODE_COUNT {
                    node.spawn("writer", writer(node.clone(), storage.clone(), next.clone(), shared.clone()));
                }
            }
        });
    }
    let durability = shared.clone();
    // The durable layer only grows (no corruption is injected), so a
    // transaction found durable once stays durable: each acknowledgement is
    // checked at the first step after it, and all of them again at the end.
    let verified = Mutex::new(vec![BTreeSet::new(); NODES_COUNT]);
    sim.invariant("Durability", move |view| {
        let shared = durability.lock().unwrap();
        let mut verified = verified.lock().unwrap();
        for (index, acked) in shared.acked.iter().enumerate() {
            if acked.len() == verified[index].len() {
                continue;
            }
            let durable = durable_txns(view.node(index));
            if let Some(lost) = acked.difference(&durable).next() {
                return Err(format!("node-{index}: acknowledged transaction t{lost} is not durable"));
            }
            verified[index] = acked.clone();
        }
        Ok(())
    });
    let atomic = shared.clone();
    sim.invariant("AtomicVisibility", move |_view| match atomic.lock().unwrap().torn.first() {
        Some(torn) => Err(format!("after a restart: {torn}")),
        None => Ok(()),
    });
    let report = sim.run_for(Duration::from_millis(SIMULATED_MS))?;
    for index in 0..NODES_COUNT {
        let durable = durable_txns(sim.node(index));
        let acked = &shared.lock().unwrap().acked[index];
        assert!(
            acked.is_subset(&durable),
            "seed {seed}: node-{index} lost an acknowledged transaction at the end"
        );
    }
    Ok((report, shared))
}

#[test]
fn storage_on_sim_disk_keeps_durability_and_atomic_visibility_under_faults() {
    let mut acked_total = 0;
    let mut crashes = 0;
    let seeds = seeds_to_run(0..SEEDS_COUNT).expect("DST_SEED parses");
    for &seed in &seeds {
        let (report, shared) = run_seed(seed).unwrap_or_else(|failure| panic!("{failure}"));
        acked_total += shared.lock().unwrap().acked.iter().map(BTreeSet::len).sum::<usize>();
        crashes += report
            .faults_fired
            .iter()
            .filter(|(kind, _)| kind.category() == "crash")
            .map(|(_, n)| *n)
            .sum::<u64>();
    }
    println!("acknowledged transactions: {acked_total}, crashes injected: {crashes}");
    // Two per seed on average: 1 000 over the full sweep, and a replay of
    // one seed (DST_SEED) is held to its share rather than failing.
    assert!(acked_total > 2 * seeds.len(), "the workload made progress: {acked_total}");
    if std::env::var(kelpie_dst::DST_SEED_ENV).is_err() {
        assert!(crashes > 100, "crashes were exercised: {crashes}");
    }
}

/// Seeds the planted defect gets.
const PLANTED_SEEDS_COUNT: u64 = 100;

/// A commit that does not check what it read (a lost update) is found by
/// the counter check, with the failing seed printed.
#[test]
fn a_commit_that_does_not_check_its_reads_is_found() {
    let found = (0..PLANTED_SEEDS_COUNT).find_map(|seed| run_seed_with(seed, true).err().map(|f| (seed, f)));
    let Some((seed, failure)) = found else {
        panic!("no seed of {PLANTED_SEEDS_COUNT} found the commit that does not check its reads")
    };
    println!("planted commit-without-read-check found at seed {seed}:\n{failure}");
    let text = failure.to_string();
    assert!(text.contains(&format!("seed {seed}")) && text.contains("counter is"), "{text}");
}

#[test]
fn one_seed_replays_to_the_same_trace() {
    let (first, _) = run_seed(7).unwrap_or_else(|failure| panic!("{failure}"));
    let (second, _) = run_seed(7).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(first.trace_hash, second.trace_hash);
    assert!(
        first.faults_fired.get(&FaultKind::StorageWriteFail).copied().unwrap_or(0) > 0,
        "{:?}",
        first.faults_fired
    );
}
