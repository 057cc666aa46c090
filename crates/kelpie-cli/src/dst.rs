//! `kelpie dst run`: the deterministic simulator's reference scenario
//! (`kelpie_dst::reference`: three nodes pinging and committing under every
//! non-agent fault family, with its durability invariant checked after each
//! step) over a range of seeds, with progress on standard error and a
//! summary on standard output. A failing seed is printed with its report
//! and the command that replays it; the exit status is then 1.
//!
//! The protocol scenarios (runtime, cluster, storage, agent service) are
//! test targets; docs/dst.md says how to run and replay those.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use kelpie_dst::reference::run_reference;
use kelpie_dst::{SimFailure, SimReport};

/// One seed of a scenario for `duration` of simulated time.
type Scenario = dyn Fn(u64, Duration) -> Result<SimReport, SimFailure>;

/// Most seeds one `kelpie dst run` takes.
pub const DST_RUN_SEEDS_COUNT_MAX: u64 = 1_000_000;
/// Longest simulated time per seed, in milliseconds.
pub const DST_RUN_SIMULATED_MS_MAX: u64 = 600_000;
/// Width of the progress bar, in characters.
const PROGRESS_BAR_WIDTH: u64 = 30;

#[derive(Debug, Args)]
pub struct DstRunArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed; the run takes first-seed .. first-seed + seeds.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Simulated time per seed, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    simulated_ms: u64,
    /// Keep going after a failing seed (else stop at the first).
    #[arg(long)]
    keep_going: bool,
}

/// Runs the reference scenario's seeds; `Ok(true)` when every one passed.
pub fn run(args: &DstRunArgs, out: &mut impl Write, progress: &mut impl Write) -> Result<bool, String> {
    run_scenario(&run_reference, args, out, progress)
}

fn run_scenario(
    scenario: &Scenario,
    args: &DstRunArgs,
    out: &mut impl Write,
    progress: &mut impl Write,
) -> Result<bool, String> {
    if !(1..=DST_RUN_SEEDS_COUNT_MAX).contains(&args.seeds) {
        return Err(format!("--seeds {} is outside 1..={DST_RUN_SEEDS_COUNT_MAX}", args.seeds));
    }
    if !(1..=DST_RUN_SIMULATED_MS_MAX).contains(&args.simulated_ms) {
        return Err(format!(
            "--simulated-ms {} is outside 1..={DST_RUN_SIMULATED_MS_MAX}",
            args.simulated_ms
        ));
    }
    let last = args.first_seed.checked_add(args.seeds - 1).ok_or_else(|| {
        format!("--first-seed {} + --seeds {} passes u64::MAX", args.first_seed, args.seeds)
    })?;
    let write =
        |sink: &mut dyn Write, text: &str| sink.write_all(text.as_bytes()).and_then(|()| sink.flush());
    let (mut events, mut steps, mut passed) = (0u64, 0u64, 0u64);
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for (done, seed) in (args.first_seed..=last).enumerate() {
        match scenario(seed, Duration::from_millis(args.simulated_ms)) {
            Ok(report) => {
                passed += 1;
                events += report.events;
                steps += report.steps;
                for (kind, count) in report.faults_fired {
                    *faults.entry(format!("{kind:?}")).or_default() += count;
                }
            }
            Err(failure) => {
                let replay = format!(
                    "kelpie dst run --first-seed {seed} --seeds 1 --simulated-ms {}",
                    args.simulated_ms
                );
                write(out, &format!("\nseed {seed} FAILED\n{failure}replay with: {replay}\n"))
                    .map_err(|e| e.to_string())?;
                failures.push(seed);
                if !args.keep_going {
                    break;
                }
            }
        }
        let _ = write(progress, &progress_line(done as u64 + 1, args.seeds, failures.len()));
    }
    let _ = write(progress, "\n");
    let mut summary = format!(
        "{passed} of {} seeds passed ({}..={last}, {} ms simulated each): {events} events, {steps} steps\n",
        passed + failures.len() as u64,
        args.first_seed,
        args.simulated_ms
    );
    if !faults.is_empty() {
        let fired: Vec<String> = faults.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        summary.push_str(&format!("faults injected: {}\n", fired.join(", ")));
    }
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(u64::to_string).collect();
        summary.push_str(&format!("failing seeds: {}\n", seeds.join(", ")));
    }
    write(out, &summary).map_err(|e| e.to_string())?;
    Ok(failures.is_empty())
}

/// `\r[#####.....] done/total seeds (n failed)`.
fn progress_line(done: u64, total: u64, failed: usize) -> String {
    assert!(done <= total && total > 0, "progress within the run");
    let filled = done * PROGRESS_BAR_WIDTH / total;
    let bar: String = (0..PROGRESS_BAR_WIDTH).map(|i| if i < filled { '#' } else { '.' }).collect();
    let failed = if failed > 0 { format!(" ({failed} failed)") } else { String::new() };
    format!("\r[{bar}] {done}/{total} seeds{failed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seeds: u64, first_seed: u64) -> DstRunArgs {
        DstRunArgs { seeds, first_seed, simulated_ms: 200, keep_going: false }
    }

    #[test]
    fn seeds_run_with_progress_and_a_summary_that_adds_up() {
        let (mut out, mut progress) = (Vec::new(), Vec::new());
        assert_eq!(run(&args(4, 10), &mut out, &mut progress), Ok(true));
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("4 of 4 seeds passed (10..=13, 200 ms simulated each): "), "{out}");
        let events: u64 = out.split(" events").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
        let expected: u64 =
            (10..14).map(|seed| run_reference(seed, Duration::from_millis(200)).unwrap().events).sum();
        assert_eq!(events, expected);
        let progress = String::from_utf8(progress).unwrap();
        assert!(progress.contains("\r[#######.......................] 1/4 seeds"), "{progress:?}");
        assert!(progress.ends_with(&format!("\r[{}] 4/4 seeds\n", "#".repeat(30))), "{progress:?}");
    }

    #[test]
    fn out_of_range_arguments_are_refused() {
        let mut sink = Vec::new();
        let err = run(&args(0, 0), &mut sink, &mut Vec::new()).unwrap_err();
        assert_eq!(err, "--seeds 0 is outside 1..=1000000");
        let err = run(&args(2, u64::MAX), &mut sink, &mut Vec::new()).unwrap_err();
        assert!(err.contains("passes u64::MAX"), "{err}");
        let long = DstRunArgs { simulated_ms: DST_RUN_SIMULATED_MS_MAX + 1, ..args(1, 0) };
        assert!(run(&long, &mut sink, &mut Vec::new()).unwrap_err().starts_with("--simulated-ms 600001"));
    }

    #[test]
    fn a_failing_seed_is_printed_with_its_replay_and_the_run_fails() {
        let failing = |seed: u64, duration: Duration| match seed {
            2 | 4 => Err(SimFailure {
                kind: Box::new(kelpie_dst::FailureKind::InvariantViolated {
                    invariant: "planted".into(),
                    message: format!("seed {seed} breaks it"),
                }),
                seed,
                step: 7,
                time_ms: 3,
                replay_command: String::new(),
                trace_tail: Vec::new(),
            }),
            _ => run_reference(seed, duration),
        };
        let (mut out, mut progress) = (Vec::new(), Vec::new());
        let keep_going = DstRunArgs { keep_going: true, ..args(5, 1) };
        assert_eq!(run_scenario(&failing, &keep_going, &mut out, &mut progress), Ok(false));
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("seed 2 FAILED\nsimulation failed at step 7 (t = 3 ms), seed 2: invariant `planted` violated: seed 2 breaks it"), "{out}");
        assert!(
            out.contains("replay with: kelpie dst run --first-seed 4 --seeds 1 --simulated-ms 200\n"),
            "{out}"
        );
        assert!(
            out.contains("3 of 5 seeds passed (1..=5,") && out.ends_with("failing seeds: 2, 4\n"),
            "{out}"
        );
        assert!(String::from_utf8(progress).unwrap().contains("5/5 seeds (2 failed)"));
        // Without --keep-going the run stops at the first failure.
        let mut out = Vec::new();
        assert_eq!(run_scenario(&failing, &args(5, 1), &mut out, &mut Vec::new()), Ok(false));
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("1 of 2 seeds passed") && !out.contains("seed 4 FAILED"), "{out}");
    }

    #[test]
    fn the_bar_counts_failures() {
        assert_eq!(
            progress_line(5, 10, 2),
            format!("\r[{}{}] 5/10 seeds (2 failed)", "#".repeat(15), ".".repeat(15))
        );
    }
}
