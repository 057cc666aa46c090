//! One seed, one execution: the reference 3-node scenario with faults replays
//! bit for bit, and different seeds explore different executions.

use std::collections::BTreeSet;
use std::time::Duration;

use kelpie_dst::reference::run_reference;
use kelpie_dst::FaultKind;

/// Simulated time per run; long enough for well over 10 000 trace events.
const RUN_SIMULATED_MS: u64 = 5_000;

#[test]
fn same_seed_gives_identical_trace_hash_over_ten_thousand_events() {
    let seed = kelpie_dst::seed_from_env().expect("DST_SEED must be a u64");
    let first = run_reference(seed, Duration::from_millis(RUN_SIMULATED_MS)).unwrap();
    let second = run_reference(seed, Duration::from_millis(RUN_SIMULATED_MS)).unwrap();
    assert!(first.events >= 10_000, "only {} events (seed {seed})", first.events);
    assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} did not replay");
    assert_eq!(first, second, "reports differ for seed {seed}");
    assert_eq!(first.simulated_ms, RUN_SIMULATED_MS);
}

#[test]
fn twenty_seeds_give_at_least_fifteen_distinct_hashes() {
    let mut hashes = BTreeSet::new();
    for seed in 0..20 {
        let report = run_reference(seed, Duration::from_millis(RUN_SIMULATED_MS / 5)).unwrap();
        hashes.insert(report.trace_hash);
    }
    assert!(hashes.len() >= 15, "only {} distinct hashes from 20 seeds", hashes.len());
}

#[test]
fn reference_scenario_fires_every_family_of_fault_it_configures() {
    let report = run_reference(7, Duration::from_millis(RUN_SIMULATED_MS)).unwrap();
    let fired: BTreeSet<&str> = report.faults_fired.keys().map(|kind| kind.category()).collect();
    assert_eq!(
        fired,
        BTreeSet::from(["crash", "network", "resource", "storage", "time"]),
        "{:?}",
        report.faults_fired
    );
    assert!(report.faults_fired[&FaultKind::NetworkPacketLoss] > 10, "{:?}", report.faults_fired);
    assert!(report.network.delivered > 1_000, "{:?}", report.network);
    assert!(report.invariant_evaluations >= report.steps, "invariants run after every step");
}
