//! Per-node simulated clocks over the one simulated timeline.
//!
//! All nodes share the executor's virtual time; each node's [`SimClock`]
//! reads it through its own offsets. *Skew* shifts the wall clock only.
//! A *jump* forward moves both wall and monotonic readings ahead (the node
//! "lost" time, as after a VM pause); a jump backward moves only the wall
//! clock, because the `Clock` contract promises monotonic time never goes
//! back, and this module asserts that it does not. Time faults
//! ([`crate::Fault::ClockSkew`], [`crate::Fault::ClockJump`]) fire at clock
//! reads, so code observes them exactly where it looks at the time.

use std::sync::Arc;
use std::time::Duration;

use kelpie_core::env::BoxFuture;
use kelpie_core::Clock;

use crate::executor::{ExecState, Executor, Sleep};
use crate::fault::{Fault, FaultKind};

/// The Unix time, in ms, at which every simulation starts (2023-11-14T22:13:20Z).
pub const SIM_WALL_EPOCH_START_MS: u64 = 1_700_000_000_000;

/// Largest skew or jump a clock may be given, in ms (a day, either way).
pub const SIM_CLOCK_OFFSET_MS_MAX: u64 = 86_400_000;

/// One node's view of simulated time. Cheap to clone.
#[derive(Clone)]
pub struct SimClock {
    executor: Arc<Executor>,
    node: usize,
}

impl SimClock {
    pub(crate) fn new(executor: Arc<Executor>, node: usize) -> Self {
        assert!(node < executor.lock().nodes.len(), "clock for unknown node {node}");
        SimClock { executor, node }
    }

    /// Sets the wall-clock skew: `wall_ms` reads `skew_ms` off true time.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        assert!(skew_ms.unsigned_abs() <= SIM_CLOCK_OFFSET_MS_MAX, "skew {skew_ms} ms too large");
        self.executor.lock().nodes[self.node].clock.skew_ms = skew_ms;
    }

    pub fn skew_ms(&self) -> i64 {
        self.executor.lock().nodes[self.node].clock.skew_ms
    }

    /// Jumps the clock by `delta_ms`: forward moves wall and monotonic time,
    /// backward moves only wall time.
    pub fn jump_ms(&self, delta_ms: i64) {
        apply_jump(&mut self.executor.lock(), self.node, delta_ms);
    }

    /// Simulated time since the start of the run, ignoring this node's offsets.
    pub fn true_elapsed(&self) -> Duration {
        Duration::from_nanos(self.executor.now_ns())
    }

    fn read_with_faults(&self) -> std::sync::MutexGuard<'_, ExecState> {
        let mut state = self.executor.lock();
        if let Some(Fault::ClockSkew { skew_ms_max }) = state.fault(FaultKind::ClockSkew, Some(self.node)) {
            let magnitude = skew_ms_max.min(SIM_CLOCK_OFFSET_MS_MAX);
            let skew = state.rng.signed_within(magnitude);
            state.nodes[self.node].clock.skew_ms = skew;
        }
        if let Some(Fault::ClockJump { jump_ms_max }) = state.fault(FaultKind::ClockJump, Some(self.node)) {
            let magnitude = jump_ms_max.clamp(1, SIM_CLOCK_OFFSET_MS_MAX);
            let delta = state.rng.signed_within(magnitude);
            apply_jump(&mut state, self.node, delta);
        }
        state
    }
}

fn apply_jump(state: &mut ExecState, node: usize, delta_ms: i64) {
    assert!(delta_ms.unsigned_abs() <= SIM_CLOCK_OFFSET_MS_MAX, "jump {delta_ms} ms too large");
    let clock = &mut state.nodes[node].clock;
    clock.wall_jump_ms = clock.wall_jump_ms.saturating_add(delta_ms);
    if delta_ms > 0 {
        clock.monotonic_jump_ns = clock.monotonic_jump_ns.saturating_add(delta_ms.unsigned_abs() * 1_000_000);
    }
}

fn monotonic_of(state: &mut ExecState, node: usize) -> u64 {
    let now = state.now_ns;
    let clock = &mut state.nodes[node].clock;
    let reading = now.saturating_add(clock.monotonic_jump_ns);
    assert!(reading >= clock.last_monotonic_ns, "monotonic clock of node {node} went backwards");
    clock.last_monotonic_ns = reading;
    reading
}

impl Clock for SimClock {
    fn monotonic_ns(&self) -> u64 {
        let mut state = self.read_with_faults();
        monotonic_of(&mut state, self.node)
    }

    fn wall_ms(&self) -> u64 {
        let state = self.read_with_faults();
        // Forward jumps are already part of `wall_jump_ms`.
        let elapsed_ms = state.now_ns / 1_000_000;
        let clock = state.nodes[self.node].clock;
        let offset_ms = clock.skew_ms.saturating_add(clock.wall_jump_ms);
        let base = SIM_WALL_EPOCH_START_MS.saturating_add(elapsed_ms);
        let wall = base.saturating_add_signed(offset_ms);
        debug_assert!(wall.abs_diff(base) <= offset_ms.unsigned_abs());
        wall
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Box::pin(Sleep::new(self.executor.clone(), nanos))
    }
}

/// The simulation's true time, read by no node: the clock of a shared
/// service (a database) whose judgements must not depend on any node's skew
/// or jumps. Wall time starts at [`SIM_WALL_EPOCH_START_MS`]. Cheap to clone.
#[derive(Clone)]
pub struct TrueClock {
    executor: Arc<Executor>,
}

impl TrueClock {
    pub(crate) fn new(executor: Arc<Executor>) -> Self {
        TrueClock { executor }
    }
}

impl Clock for TrueClock {
    fn monotonic_ns(&self) -> u64 {
        self.executor.now_ns()
    }

    fn wall_ms(&self) -> u64 {
        SIM_WALL_EPOCH_START_MS.saturating_add(self.executor.now_ns() / 1_000_000)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Box::pin(Sleep::new(self.executor.clone(), nanos))
    }
}
