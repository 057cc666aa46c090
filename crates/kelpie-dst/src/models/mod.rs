//! Stateright models of Kelpie's protocols, checked exhaustively.
//!
//! Each model is a small, bounded configuration (two or three nodes, one
//! actor, a few ticks of time) whose state records just enough history for
//! the shared [`crate::properties`] to be evaluated on every reachable state.
//! Each model also has planted bugs (a `bug` field, `None` for the correct
//! protocol): the tests assert that breadth-first search proves the correct
//! model safe and finds a counterexample for every bug, which shows the
//! properties can fail.
//!
//! Models of protocols whose pure core lives in another crate (the lease
//! state machine in `kelpie-registry`, the lifecycle in `kelpie-runtime`) are
//! in those crates' tests, where they drive the real functions; they use the
//! harness below.

pub mod activation;
pub mod idempotent_create;
pub mod membership;
pub mod migration;
pub mod transactions;

use std::fmt::Debug;
use std::hash::Hash;

use std::collections::BTreeSet;

use stateright::{Checker, HasDiscoveries, Model};

/// What an exhaustive check explored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exploration {
    /// Distinct states reached.
    pub unique_states: usize,
    /// Longest shortest path from an initial state.
    pub max_depth: usize,
}

/// Explores every reachable state of `model` breadth-first on one thread and
/// panics, printing the trace, if any property fails. Prints and returns the
/// size of the explored space.
pub fn check_exhaustively<M>(label: &str, model: M) -> Exploration
where
    M: Model + Send + Sync + 'static,
    M::State: Debug + Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Debug + Clone + PartialEq,
{
    let checker = model.checker().threads(1).spawn_bfs().join();
    let mut failures: Vec<(&'static str, String)> =
        checker.discoveries().into_iter().map(|(name, path)| (name, render_trace(path.into_vec()))).collect();
    failures.sort();
    if let Some((name, trace)) = failures.first() {
        panic!("model {label}: property {name} fails:\n{trace}");
    }
    let exploration =
        Exploration { unique_states: checker.unique_state_count(), max_depth: checker.max_depth() };
    assert!(exploration.unique_states > 1, "model {label} explored nothing");
    println!(
        "model {label}: {} states explored, depth {}, every property holds",
        exploration.unique_states, exploration.max_depth
    );
    exploration
}

/// Deepest search for a counterexample before giving up.
pub const COUNTEREXAMPLE_DEPTH_MAX: usize = 40;

/// Searches a model with a planted bug for a counterexample to `property`
/// and returns the shortest one as numbered lines, which it also prints.
/// Panics if there is none within [`COUNTEREXAMPLE_DEPTH_MAX`] steps.
///
/// Stateright keeps the last violating state found in a block of states,
/// not the first, so the search deepens one level at a time: the first depth
/// at which the property fails gives a shortest trace.
pub fn find_counterexample<M>(label: &str, model: M, property: &'static str) -> Vec<String>
where
    M: Model + Clone + Send + Sync + 'static,
    M::State: Debug + Hash + Send + Sync + Clone + PartialEq + 'static,
    M::Action: Debug + Clone + PartialEq,
{
    for depth in 1..=COUNTEREXAMPLE_DEPTH_MAX {
        let wanted = HasDiscoveries::AnyOf(BTreeSet::from([property]));
        let builder = model.clone().checker().threads(1).target_max_depth(depth).finish_when(wanted);
        let checker = builder.spawn_bfs().join();
        if let Some(path) = checker.discovery(property) {
            let lines: Vec<String> = render_trace(path.into_vec()).lines().map(str::to_string).collect();
            println!(
                "model {label}: counterexample to {property} ({} steps):\n{}",
                lines.len() - 1,
                lines.join("\n")
            );
            return lines;
        }
    }
    panic!("model {label}: no counterexample to {property} within {COUNTEREXAMPLE_DEPTH_MAX} steps");
}

fn render_trace<S: Debug, A: Debug>(steps: Vec<(S, Option<A>)>) -> String {
    let count = steps.len();
    let mut out = String::new();
    for (index, (state, action)) in steps.into_iter().enumerate() {
        match action {
            Some(action) => out.push_str(&format!("{:>3}. {action:?}\n", index + 1)),
            None => out.push_str(&format!("  => {state:?}\n")),
        }
    }
    assert!(count > 0, "a path has at least its initial state");
    out
}
