//! The scenario API: build nodes, inject faults, run, check invariants.
//!
//! ```text
//! let mut sim = Simulation::builder().seed(seed).nodes(3)
//!     .fault(FaultRule::new(Fault::NetworkPacketLoss, 0.05)).build()?;
//! sim.on_boot(0, |node| async move { /* the node's code, using node.env() */ });
//! sim.invariant("acked_writes_are_durable", move |view| { ... });
//! let report = sim.run_for(Duration::from_secs(10))?;
//! ```
//!
//! Each simulated node has an id, a [`SimClock`], an RNG fork, a
//! [`SimStorage`] disk, an inbox on the shared [`SimNetwork`], and a
//! [`kelpie_core::Env`] wiring the first three for code written against the
//! deterministic boundary. A node's *boot* function is its process: it runs
//! at start and again after every restart, while a crash drops every task of
//! the node and whatever it had not made durable.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kelpie_core::env::BoxFuture;
use kelpie_core::limits::DST_STEPS_COUNT_MAX;
use kelpie_core::{Env, NodeId, TaskSpawner};
use thiserror::Error;

use crate::clock::{SimClock, TrueClock};
use crate::executor::{Executor, StepOutcome, TaskPanic};
use crate::fault::{FaultInjector, FaultKind, FaultRule};
use crate::invariant::{InvariantChecker, InvariantViolation};
use crate::network::{Envelope, NetworkConfig, NetworkError, NetworkStats, Recv, SimNetwork};
use crate::rng::DeterministicRng;
use crate::seed::{replay_command, seed_from_env, SeedError};
use crate::storage::{SimStorage, StorageConfig};
use crate::trace::{TraceEvent, TraceEventKind};

/// Most nodes one simulation may have.
pub const SIM_NODES_COUNT_MAX: usize = 64;

/// Trace events quoted in a failure report.
pub const SIM_FAILURE_TRACE_TAIL_COUNT: usize = 40;

/// Largest single allocation [`SimNode::try_allocate`] grants: 1 GiB.
pub const SIM_NODE_ALLOCATION_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Configures a [`Simulation`].
#[derive(Debug, Clone)]
pub struct SimulationBuilder {
    seed: Option<u64>,
    node_count: usize,
    network: NetworkConfig,
    storage: StorageConfig,
    faults: Vec<FaultRule>,
    restart_after: Option<Duration>,
    steps_max: u64,
}

impl SimulationBuilder {
    /// Runs with `seed`; without it, `DST_SEED` or a printed random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// `count` nodes, named `node-0`, `node-1`, ...
    pub fn nodes(mut self, count: usize) -> Self {
        assert!(
            (1..=SIM_NODES_COUNT_MAX).contains(&count),
            "node count {count} outside 1..={SIM_NODES_COUNT_MAX}"
        );
        self.node_count = count;
        self
    }

    pub fn network(mut self, config: NetworkConfig) -> Self {
        self.network = config;
        self
    }

    pub fn storage(mut self, config: StorageConfig) -> Self {
        self.storage = config;
        self
    }

    pub fn fault(mut self, rule: FaultRule) -> Self {
        self.faults.push(rule);
        self
    }

    /// Restarts a crashed node (re-running its boot function) `delay` after the crash.
    pub fn restart_crashed_nodes_after(mut self, delay: Duration) -> Self {
        self.restart_after = Some(delay);
        self
    }

    /// Stops a run as runaway after `steps` steps (default `DST_STEPS_COUNT_MAX`).
    pub fn max_steps(mut self, steps: u64) -> Self {
        assert!(
            (1..=DST_STEPS_COUNT_MAX).contains(&steps),
            "max_steps {steps} outside 1..=DST_STEPS_COUNT_MAX"
        );
        self.steps_max = steps;
        self
    }

    pub fn build(self) -> Result<Simulation, SeedError> {
        let seed = match self.seed {
            Some(seed) => seed,
            None => seed_from_env()?,
        };
        let root = DeterministicRng::new(seed);
        let ids: Vec<NodeId> = (0..self.node_count).map(node_id).collect();
        let mut injector = FaultInjector::new(root.fork("faults"));
        for rule in self.faults {
            injector.add(rule);
        }
        let executor = Executor::new(seed, ids.clone(), injector);
        let network = SimNetwork::new(executor.clone(), root.fork("network"), self.network);
        let nodes = ids
            .into_iter()
            .enumerate()
            .map(|(index, id)| {
                let storage = SimStorage::new(
                    executor.clone(),
                    index,
                    root.fork_indexed("storage", index as u64),
                    self.storage.clone(),
                );
                SimNode {
                    index,
                    id,
                    executor: executor.clone(),
                    network: network.clone(),
                    storage,
                    clock: SimClock::new(executor.clone(), index),
                    rng: Arc::new(root.fork_indexed("node", index as u64)),
                }
            })
            .collect();
        let restart_after_ns =
            self.restart_after.map(|delay| u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX));
        Ok(Simulation {
            seed,
            executor,
            network,
            nodes,
            invariants: InvariantChecker::new(),
            restart_after_ns,
            steps_max: self.steps_max,
        })
    }
}

fn node_id(index: usize) -> NodeId {
    // Always valid: ASCII letters, digits and '-'.
    NodeId::new(format!("node-{index}")).unwrap_or_else(|error| unreachable!("{error}"))
}

/// Spawns tasks onto the simulator, bound to a node (or to no node).
pub struct SimSpawner {
    executor: Arc<Executor>,
    node: Option<usize>,
}

impl TaskSpawner for SimSpawner {
    fn spawn(&self, name: &'static str, task: BoxFuture<()>) {
        self.executor.spawn(self.node, name, task);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourceError {
    #[error("node {node}: out of memory allocating {bytes} bytes")]
    OutOfMemory { node: NodeId, bytes: u64 },
}

/// One simulated node. Cheap to clone.
#[derive(Clone)]
pub struct SimNode {
    index: usize,
    id: NodeId,
    executor: Arc<Executor>,
    network: SimNetwork,
    storage: SimStorage,
    clock: SimClock,
    rng: Arc<DeterministicRng>,
}

impl SimNode {
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The deterministic boundary for code under test on this node.
    pub fn env(&self) -> Env {
        Env {
            clock: Arc::new(self.clock.clone()),
            rng: self.rng.clone(),
            spawner: Arc::new(SimSpawner { executor: self.executor.clone(), node: Some(self.index) }),
        }
    }

    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    pub fn rng(&self) -> &Arc<DeterministicRng> {
        &self.rng
    }

    pub fn storage(&self) -> &SimStorage {
        &self.storage
    }

    pub fn network(&self) -> &SimNetwork {
        &self.network
    }

    pub fn send(&self, to: &NodeId, payload: Vec<u8>) -> Result<u64, NetworkError> {
        self.network.send(&self.id, to, payload)
    }

    /// The next message for this node.
    pub fn recv(&self) -> Recv {
        // The node's own id always resolves.
        self.network.recv(&self.id).unwrap_or_else(|error| unreachable!("{error}"))
    }

    pub fn try_recv(&self) -> Option<Envelope> {
        self.network.try_recv(&self.id).unwrap_or_else(|error| unreachable!("{error}"))
    }

    /// Spawns a task on this node; refused (returns false) while the node is down.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> bool {
        self.executor.spawn(Some(self.index), name, Box::pin(task))
    }

    pub fn is_up(&self) -> bool {
        self.executor.lock().nodes[self.index].up
    }

    /// The allocation-failure path: fails under the out-of-memory fault or
    /// beyond [`SIM_NODE_ALLOCATION_BYTES_MAX`]. Code that models its big
    /// allocations calls this first.
    pub fn try_allocate(&self, bytes: u64) -> Result<(), ResourceError> {
        let refused = bytes > SIM_NODE_ALLOCATION_BYTES_MAX
            || self.executor.fault(FaultKind::OutOfMemory, Some(self.index)).is_some();
        if refused {
            return Err(ResourceError::OutOfMemory { node: self.id.clone(), bytes });
        }
        Ok(())
    }

    /// Records a labelled event in the trace (it joins the trace hash).
    pub fn note(&self, label: impl Into<String>) {
        self.executor.record(TraceEventKind::Note { label: format!("{}: {}", self.id, label.into()) });
    }

    pub(crate) fn executor(&self) -> &Arc<Executor> {
        &self.executor
    }
}

/// What an invariant may look at.
pub struct SimView<'a> {
    sim: &'a Simulation,
    now_ns: u64,
    step: u64,
}

impl SimView<'_> {
    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns)
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn nodes(&self) -> &[SimNode] {
        &self.sim.nodes
    }

    pub fn node(&self, index: usize) -> &SimNode {
        &self.sim.nodes[index]
    }

    pub fn network(&self) -> &SimNetwork {
        &self.sim.network
    }
}

/// Control over a running simulation, for control tasks: crash, restart, partition.
#[derive(Clone)]
pub struct SimHandle {
    executor: Arc<Executor>,
    network: SimNetwork,
}

impl SimHandle {
    pub fn crash_node(&self, index: usize) {
        self.executor.crash_node(index);
    }

    /// Restarts a crashed node and re-runs its boot function; false if it was up.
    pub fn restart_node(&self, index: usize) -> bool {
        self.executor.restart_node(index)
    }

    pub fn network(&self) -> &SimNetwork {
        &self.network
    }

    /// Stops node `index` for `duration`: none of its tasks runs meanwhile,
    /// while time, its timers and its inbox go on. A stopped process (SIGSTOP,
    /// VM pause) that resumes to find its leases gone.
    pub fn pause_node(&self, index: usize, duration: Duration) {
        self.executor.pause_node(index, nanos(duration));
    }

    /// The simulation's true time as a [`kelpie_core::Clock`]: no node's
    /// skew or jumps. The clock of a shared database.
    pub fn true_clock(&self) -> TrueClock {
        TrueClock::new(self.executor.clone())
    }

    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.executor.now_ns())
    }

    /// Completes after `duration` of true simulated time (no node's skew or jumps).
    pub fn sleep(&self, duration: Duration) -> crate::executor::Sleep {
        crate::executor::Sleep::new(self.executor.clone(), nanos(duration))
    }
}

/// A summary of a finished (or paused) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u64,
    pub events: u64,
    pub trace_hash: u64,
    pub simulated_ms: u64,
    pub tasks_spawned: u64,
    pub tasks_finished: u64,
    pub invariant_evaluations: u64,
    pub faults_fired: BTreeMap<FaultKind, u64>,
    pub network: NetworkStats,
}

/// Why a run stopped early.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FailureKind {
    #[error("invariant `{invariant}` violated: {message}")]
    InvariantViolated { invariant: String, message: String },
    #[error("task `{task}` on {node} panicked: {message}")]
    TaskPanicked { task: String, node: String, message: String },
    #[error("still running after {steps_max} steps: a task that never waits, or a livelock")]
    StepLimitExceeded { steps_max: u64 },
}

/// A failed run: what, when, with which seed, how to replay, and what led to it.
#[derive(Clone, PartialEq, Eq)]
pub struct SimFailure {
    /// Boxed to keep `Result<_, SimFailure>` small.
    pub kind: Box<FailureKind>,
    pub seed: u64,
    pub step: u64,
    pub time_ms: u64,
    pub replay_command: String,
    pub trace_tail: Vec<TraceEvent>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation failed at step {} (t = {} ms), seed {}: {}",
            self.step, self.time_ms, self.seed, self.kind
        )?;
        writeln!(f, "replay: {}", self.replay_command)?;
        writeln!(f, "last {} trace events:", self.trace_tail.len())?;
        for event in &self.trace_tail {
            writeln!(f, "  {event}")?;
        }
        Ok(())
    }
}

// `unwrap()` on a failed run prints Debug: make that the readable report.
impl fmt::Debug for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for SimFailure {}

/// A deterministic simulation of a cluster of nodes.
pub struct Simulation {
    seed: u64,
    executor: Arc<Executor>,
    network: SimNetwork,
    nodes: Vec<SimNode>,
    invariants: InvariantChecker,
    restart_after_ns: Option<u64>,
    steps_max: u64,
}

impl Drop for Simulation {
    fn drop(&mut self) {
        // Task futures hold handles to the executor; dropping them ends the cycle.
        self.executor.shutdown();
    }
}

impl Simulation {
    pub fn builder() -> SimulationBuilder {
        SimulationBuilder {
            seed: None,
            node_count: 1,
            network: NetworkConfig::default(),
            storage: StorageConfig::default(),
            faults: Vec::new(),
            restart_after: None,
            steps_max: DST_STEPS_COUNT_MAX,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &SimNode {
        assert!(index < self.nodes.len(), "node {index} of {}", self.nodes.len());
        &self.nodes[index]
    }

    pub fn network(&self) -> &SimNetwork {
        &self.network
    }

    pub fn handle(&self) -> SimHandle {
        SimHandle { executor: self.executor.clone(), network: self.network.clone() }
    }

    /// Makes `boot` node `index`'s process: spawned now (if the node is up)
    /// and again at every restart.
    pub fn on_boot<F, Fut>(&self, index: usize, boot: F)
    where
        F: Fn(SimNode) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let node = self.node(index).clone();
        let boot_fn: Arc<dyn Fn() -> BoxFuture<()> + Send + Sync> =
            Arc::new(move || Box::pin(boot(node.clone())));
        let first = boot_fn();
        self.executor.lock().nodes[index].boot = Some(boot_fn);
        self.executor.spawn(Some(index), "boot", first);
    }

    /// Spawns a task on node `index`; it dies with the node.
    pub fn spawn(
        &self,
        index: usize,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> bool {
        self.node(index).spawn(name, task)
    }

    /// Spawns a task bound to no node (a test driver or chaos controller); it never crashes.
    pub fn spawn_control(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.executor.spawn(None, name, Box::pin(task));
    }

    /// Adds an invariant checked after every step from now on.
    pub fn invariant(
        &mut self,
        name: impl Into<String>,
        predicate: impl Fn(&SimView<'_>) -> Result<(), String> + Send + 'static,
    ) {
        self.invariants.add(name, predicate);
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.executor.lock().faults.add(rule);
    }

    /// Removes every rule of `kind`, e.g. to check that the system recovers.
    pub fn clear_faults(&self, kind: FaultKind) {
        self.executor.lock().faults.clear(kind);
    }

    pub fn fault_count(&self, kind: FaultKind) -> u64 {
        self.executor.lock().faults.fired_count(kind)
    }

    pub fn crash_node(&self, index: usize) {
        self.executor.crash_node(index);
    }

    pub fn restart_node(&self, index: usize) -> bool {
        self.executor.restart_node(index)
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.executor.now_ns())
    }

    pub fn trace_hash(&self) -> u64 {
        self.executor.lock().trace.hash()
    }

    pub fn trace_tail(&self, count: usize) -> Vec<TraceEvent> {
        self.executor.lock().trace.tail(count)
    }

    /// Records a labelled event (part of the trace hash).
    pub fn note(&self, label: impl Into<String>) {
        self.executor.record(TraceEventKind::Note { label: label.into() });
    }

    /// Runs for `duration` of simulated time; time ends exactly `duration` later.
    pub fn run_for(&mut self, duration: Duration) -> Result<SimReport, SimFailure> {
        let horizon = self.executor.now_ns().saturating_add(nanos(duration));
        self.run_until(horizon, false)
    }

    /// Runs until no task is ready and no timer is due, or `limit` has passed.
    pub fn run_until_idle(&mut self, limit: Duration) -> Result<SimReport, SimFailure> {
        let horizon = self.executor.now_ns().saturating_add(nanos(limit));
        self.run_until(horizon, true)
    }

    fn run_until(&mut self, horizon_ns: u64, stop_when_idle: bool) -> Result<SimReport, SimFailure> {
        self.check_invariants()?;
        loop {
            let steps = self.executor.lock().step;
            if steps >= self.steps_max {
                return Err(self.failure(FailureKind::StepLimitExceeded { steps_max: self.steps_max }));
            }
            let restart_due = self.restart_due_nodes();
            let bound = restart_due.map_or(horizon_ns, |due| due.min(horizon_ns));
            match self.executor.step(bound) {
                Ok(StepOutcome::Polled | StepOutcome::TimerFired) => {}
                Ok(StepOutcome::Idle) => match restart_due.filter(|&due| due <= horizon_ns) {
                    Some(due) => self.executor.advance_to(due),
                    None => {
                        if !stop_when_idle {
                            self.executor.advance_to(horizon_ns);
                        }
                        break;
                    }
                },
                Err(panic) => return Err(self.panic_failure(panic)),
            }
            self.check_invariants()?;
        }
        Ok(self.report())
    }

    /// Restarts crashed nodes whose restart delay is over; returns the next restart time.
    fn restart_due_nodes(&self) -> Option<u64> {
        let delay = self.restart_after_ns?;
        let (now, crashed): (u64, Vec<(usize, u64)>) = {
            let state = self.executor.lock();
            let crashed = state
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.crashed_at_ns.map(|at| (i, at)))
                .collect();
            (state.now_ns, crashed)
        };
        let mut next_due = None;
        for (index, crashed_at) in crashed {
            let due = crashed_at.saturating_add(delay);
            if due <= now {
                self.executor.restart_node(index);
            } else {
                next_due = Some(next_due.map_or(due, |next: u64| next.min(due)));
            }
        }
        next_due
    }

    fn check_invariants(&mut self) -> Result<(), SimFailure> {
        if self.invariants.is_empty() {
            return Ok(());
        }
        let (now_ns, step) = {
            let state = self.executor.lock();
            (state.now_ns, state.step)
        };
        let mut invariants = std::mem::take(&mut self.invariants);
        let verdict = invariants.check(&SimView { sim: self, now_ns, step });
        self.invariants = invariants;
        verdict.map_err(|InvariantViolation { invariant, message }| {
            self.failure(FailureKind::InvariantViolated { invariant, message })
        })
    }

    fn panic_failure(&self, panic: TaskPanic) -> SimFailure {
        let node = panic.node.map_or_else(|| "the control plane".to_string(), |node| format!("node {node}"));
        self.failure(FailureKind::TaskPanicked { task: panic.task.to_string(), node, message: panic.message })
    }

    fn failure(&self, kind: FailureKind) -> SimFailure {
        let state = self.executor.lock();
        SimFailure {
            kind: Box::new(kind),
            seed: self.seed,
            step: state.step,
            time_ms: state.now_ns / 1_000_000,
            replay_command: replay_command(self.seed),
            trace_tail: state.trace.tail(SIM_FAILURE_TRACE_TAIL_COUNT),
        }
    }

    /// The summary of the run so far.
    pub fn report(&self) -> SimReport {
        let network = self.network.stats();
        let state = self.executor.lock();
        SimReport {
            seed: self.seed,
            steps: state.step,
            events: state.trace.events_count(),
            trace_hash: state.trace.hash(),
            simulated_ms: state.now_ns / 1_000_000,
            tasks_spawned: state.tasks_spawned,
            tasks_finished: state.tasks_finished,
            invariant_evaluations: self.invariants.evaluations(),
            faults_fired: state.faults.fired().clone(),
            network,
        }
    }

    /// Live tasks and pending timers, for tests of the simulator itself.
    pub fn pending_work(&self) -> (usize, usize) {
        let state = self.executor.lock();
        (state.live_tasks(), state.pending_timers())
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
