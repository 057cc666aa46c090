//! Simulation speed of the reference scenario (3 nodes, all low-rate faults):
//! simulated events per wall-clock second, and seeds per minute.
//!
//! `cargo bench -p kelpie-dst` runs it in release. A plain binary
//! (`harness = false`) keeps the dependency list short; each figure is the
//! median of several repetitions.

use std::time::Duration;

use kelpie_dst::reference::run_reference;

/// Simulated time per seed, as in the determinism test.
const SCENARIO_SIMULATED_MS: u64 = 5_000;

/// Seeds run per repetition.
const SEEDS_PER_REPETITION_COUNT: u64 = 20;

/// Repetitions; the median is reported.
const REPETITIONS_COUNT: usize = 5;

// A benchmark measures the real machine, so it is the one place in this crate
// that reads the wall clock; nothing here feeds back into a simulation.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn wall_since(started: std::time::Instant) -> Duration {
    started.elapsed()
}

struct Repetition {
    events: u64,
    steps: u64,
    seeds: u64,
    wall: Duration,
}

fn repetition(first_seed: u64) -> Repetition {
    let started = wall_now();
    let mut events = 0;
    let mut steps = 0;
    for seed in first_seed..first_seed + SEEDS_PER_REPETITION_COUNT {
        match run_reference(seed, Duration::from_millis(SCENARIO_SIMULATED_MS)) {
            Ok(report) => {
                events += report.events;
                steps += report.steps;
            }
            Err(failure) => panic!("reference scenario failed:\n{failure}"),
        }
    }
    Repetition { events, steps, seeds: SEEDS_PER_REPETITION_COUNT, wall: wall_since(started) }
}

fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful. Both just run.
    let mut events_per_second = Vec::new();
    let mut steps_per_second = Vec::new();
    let mut seeds_per_minute = Vec::new();
    let mut events_per_seed = 0;
    for rep in 0..REPETITIONS_COUNT {
        let result = repetition(1_000 + rep as u64 * SEEDS_PER_REPETITION_COUNT);
        let seconds = result.wall.as_secs_f64();
        events_per_second.push(result.events as f64 / seconds);
        steps_per_second.push(result.steps as f64 / seconds);
        seeds_per_minute.push(result.seeds as f64 * 60.0 / seconds);
        events_per_seed = result.events / result.seeds;
        println!(
            "repetition {rep}: {} seeds, {} events, {} steps in {:.3} s",
            result.seeds, result.events, result.steps, seconds
        );
    }
    println!("reference scenario: {} nodes, {SCENARIO_SIMULATED_MS} ms simulated per seed, ~{events_per_seed} events per seed", kelpie_dst::reference::REFERENCE_NODES_COUNT);
    println!("simulated events per wall second (median): {:.0}", median(events_per_second));
    println!("executor steps per wall second (median):   {:.0}", median(steps_per_second));
    println!("seeds per minute (median):                 {:.0}", median(seeds_per_minute));
}
