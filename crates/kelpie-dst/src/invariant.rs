//! Named invariants, checked after every step of a simulation.
//!
//! An invariant is a predicate over what a test can observe: the
//! [`SimView`] of the simulation (time, nodes, disks, network) plus any
//! shared state the closure captures (a model of acknowledged writes, an
//! account balance). It returns `Err(explanation)` when broken. The first
//! violation stops the run; the failure report names the invariant, the step,
//! the seed and the tail of the trace.
//!
//! Captured state is read between task polls, when no task is running, so a
//! `std::sync::Mutex` around it is always free; state guarded by an async
//! mutex held across an `await` would not be, and should not be observed.

use crate::simulation::SimView;

/// Most invariants one simulation may check (each runs after every step).
pub const SIM_INVARIANTS_COUNT_MAX: usize = 64;

type Predicate = Box<dyn Fn(&SimView<'_>) -> Result<(), String> + Send>;

/// A broken invariant: which one and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolation {
    pub invariant: String,
    pub message: String,
}

/// An ordered set of named invariants.
#[derive(Default)]
pub struct InvariantChecker {
    invariants: Vec<(String, Predicate)>,
    evaluations: u64,
}

impl InvariantChecker {
    pub fn new() -> Self {
        InvariantChecker::default()
    }

    /// Adds the invariant `name`; names must be unique, to make reports unambiguous.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        predicate: impl Fn(&SimView<'_>) -> Result<(), String> + Send + 'static,
    ) {
        let name = name.into();
        assert!(!name.is_empty(), "an invariant needs a name");
        assert!(
            self.invariants.len() < SIM_INVARIANTS_COUNT_MAX,
            "over {SIM_INVARIANTS_COUNT_MAX} invariants"
        );
        assert!(self.invariants.iter().all(|(existing, _)| *existing != name), "duplicate invariant {name}");
        self.invariants.push((name, Box::new(predicate)));
    }

    pub fn len(&self) -> usize {
        self.invariants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.invariants.is_empty()
    }

    /// How many single predicate evaluations have run.
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// Evaluates every invariant in order; the first broken one is returned.
    pub fn check(&mut self, view: &SimView<'_>) -> Result<(), InvariantViolation> {
        for (name, predicate) in &self.invariants {
            self.evaluations += 1;
            if let Err(message) = predicate(view) {
                return Err(InvariantViolation { invariant: name.clone(), message });
            }
        }
        Ok(())
    }
}
