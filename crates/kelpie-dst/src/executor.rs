//! The deterministic executor: one thread, a seeded choice of the next task.
//!
//! All tasks of all simulated nodes live in one task table. A task is *ready*
//! when its waker has fired; each step the executor picks one ready task with
//! the scheduler's seeded stream and polls it once. When no task is ready,
//! simulated time jumps to the earliest pending timer and fires it. Nothing
//! reads the wall clock, so one seed gives one execution.
//!
//! Locking: the executor's state sits behind one mutex that is a *leaf*: it is
//! never held while user code runs (polls, wakes, drops of user futures), so
//! wakers and components may take it from anywhere.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use kelpie_core::env::BoxFuture;
use kelpie_core::NodeId;

use crate::fault::{Fault, FaultInjector, FaultKind};
use crate::rng::DeterministicRng;
use crate::trace::{Trace, TraceEventKind};

/// Most live tasks (all nodes together) a simulation may hold.
pub const SIM_TASKS_COUNT_MAX: usize = 100_000;

/// Most pending timers (sleeps, deferred tasks) a simulation may hold.
pub const SIM_TIMERS_COUNT_MAX: usize = 200_000;

/// A node's boot function: builds the node's root task, at start and after each restart.
pub(crate) type BootFn = Arc<dyn Fn() -> BoxFuture<()> + Send + Sync>;

/// Per-node clock offsets (see `clock.rs`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ClockOffsets {
    pub skew_ms: i64,
    pub wall_jump_ms: i64,
    pub monotonic_jump_ns: u64,
    pub last_monotonic_ns: u64,
}

pub(crate) struct NodeSlot {
    pub id: NodeId,
    pub up: bool,
    /// Bumped at every crash: components compare it to drop volatile state.
    pub incarnation: u64,
    pub crashed_at_ns: Option<u64>,
    /// While `now_ns` is below this, none of the node's tasks runs (a
    /// stopped process: SIGSTOP, a VM pause, a long GC).
    pub paused_until_ns: u64,
    pub clock: ClockOffsets,
    pub boot: Option<BootFn>,
}

struct TaskSlot {
    node: Option<usize>,
    name: &'static str,
    future: Option<BoxFuture<()>>,
    waker: Waker,
    queued: bool,
}

pub(crate) struct ExecState {
    pub now_ns: u64,
    pub step: u64,
    pub nodes: Vec<NodeSlot>,
    pub faults: FaultInjector,
    pub trace: Trace,
    pub rng: DeterministicRng,
    tasks: BTreeMap<u64, TaskSlot>,
    ready: Vec<u64>,
    timers: BTreeMap<(u64, u64), Waker>,
    next_task_id: u64,
    next_timer_id: u64,
    pub tasks_spawned: u64,
    pub tasks_finished: u64,
}

impl ExecState {
    pub fn record(&mut self, kind: TraceEventKind) {
        let (step, now) = (self.step, self.now_ns);
        self.trace.record(step, now, kind);
    }

    /// Consults the fault injector for `kind` at this fault point and traces a hit.
    pub fn fault(&mut self, kind: FaultKind, node: Option<usize>) -> Option<Fault> {
        let node_id = node.map(|index| &self.nodes[index].id);
        let fault = self.faults.check(kind, node_id, self.now_ns / 1_000_000)?;
        self.record(TraceEventKind::FaultInjected { fault: kind, node: node.map(|n| n as u32) });
        Some(fault)
    }

    /// A fresh timer key: timers due at the same instant fire in key order,
    /// i.e. in the order their sleeps were created.
    pub fn timer_key(&mut self, deadline_ns: u64) -> (u64, u64) {
        let key = (deadline_ns, self.next_timer_id);
        self.next_timer_id += 1;
        key
    }

    pub fn add_timer(&mut self, key: (u64, u64), waker: Waker) {
        assert!(self.timers.len() < SIM_TIMERS_COUNT_MAX, "more than {SIM_TIMERS_COUNT_MAX} timers");
        let previous = self.timers.insert(key, waker);
        assert!(previous.is_none(), "timer key {key:?} registered twice");
    }

    pub fn replace_timer_waker(&mut self, key: (u64, u64), waker: &Waker) {
        if let Some(slot) = self.timers.get_mut(&key) {
            if !slot.will_wake(waker) {
                *slot = waker.clone();
            }
        }
    }

    pub fn remove_timer(&mut self, key: (u64, u64)) -> Option<Waker> {
        self.timers.remove(&key)
    }

    fn make_ready(&mut self, task: u64) {
        if let Some(slot) = self.tasks.get_mut(&task) {
            if !slot.queued {
                slot.queued = true;
                self.ready.push(task);
            }
        }
    }

    pub fn live_tasks(&self) -> usize {
        self.tasks.len()
    }

    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }
}

/// A task picked for polling, taken out of the table while it runs.
struct Picked {
    task: u64,
    future: BoxFuture<()>,
    waker: Waker,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutcome {
    Polled,
    TimerFired,
    /// Nothing is ready and no timer is due before the horizon.
    Idle,
}

/// A task panicked while being polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskPanic {
    pub task: &'static str,
    pub node: Option<NodeId>,
    pub message: String,
}

pub(crate) struct Executor {
    state: Mutex<ExecState>,
}

struct TaskWaker {
    executor: Weak<Executor>,
    task: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(executor) = self.executor.upgrade() {
            executor.lock().make_ready(self.task);
        }
    }
}

impl Executor {
    pub fn new(seed: u64, node_ids: Vec<NodeId>, faults: FaultInjector) -> Arc<Self> {
        let root = DeterministicRng::new(seed);
        let nodes = node_ids
            .into_iter()
            .map(|id| NodeSlot {
                id,
                up: true,
                incarnation: 0,
                crashed_at_ns: None,
                paused_until_ns: 0,
                clock: ClockOffsets::default(),
                boot: None,
            })
            .collect();
        let state = ExecState {
            now_ns: 0,
            step: 0,
            nodes,
            faults,
            trace: Trace::default(),
            rng: root.fork("scheduler"),
            tasks: BTreeMap::new(),
            ready: Vec::new(),
            timers: BTreeMap::new(),
            next_task_id: 0,
            next_timer_id: 0,
            tasks_spawned: 0,
            tasks_finished: 0,
        };
        Arc::new(Executor { state: Mutex::new(state) })
    }

    pub fn lock(&self) -> MutexGuard<'_, ExecState> {
        // The lock is never held across user code, so poison can only come
        // from a bug in this crate already reported by its own panic.
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn now_ns(&self) -> u64 {
        self.lock().now_ns
    }

    pub fn record(&self, kind: TraceEventKind) {
        self.lock().record(kind);
    }

    pub fn fault(&self, kind: FaultKind, node: Option<usize>) -> Option<Fault> {
        self.lock().fault(kind, node)
    }

    /// Adds a task; refused (and dropped) when its node is down.
    pub fn spawn(self: &Arc<Self>, node: Option<usize>, name: &'static str, future: BoxFuture<()>) -> bool {
        let refused = {
            let mut state = self.lock();
            if let Some(index) = node.filter(|&index| !state.nodes[index].up) {
                state.record(TraceEventKind::SpawnRefused { node: index as u32, name });
                Some(future)
            } else {
                assert!(state.tasks.len() < SIM_TASKS_COUNT_MAX, "more than {SIM_TASKS_COUNT_MAX} tasks");
                let task = state.next_task_id;
                state.next_task_id += 1;
                state.tasks_spawned += 1;
                let waker = Waker::from(Arc::new(TaskWaker { executor: Arc::downgrade(self), task }));
                state.tasks.insert(task, TaskSlot { node, name, future: Some(future), waker, queued: false });
                state.make_ready(task);
                state.record(TraceEventKind::TaskSpawned { task, node: node.map(|n| n as u32), name });
                None
            }
        };
        // Dropped outside the lock: user futures may take it in their Drop.
        refused.is_none()
    }

    /// Runs one step: polls one ready task, or fires the next timer due by `horizon_ns`.
    pub fn step(self: &Arc<Self>, horizon_ns: u64) -> Result<StepOutcome, TaskPanic> {
        let picked = {
            let mut state = self.lock();
            state.step += 1;
            self.pick_ready(&mut state)
        };
        match picked {
            Some(picked) => self.poll_picked(picked).map(|()| StepOutcome::Polled),
            None => Ok(self.fire_next_timer(horizon_ns)),
        }
    }

    fn pick_ready(&self, state: &mut ExecState) -> Option<Picked> {
        while !state.ready.is_empty() {
            let index = state.rng.index_below(state.ready.len());
            let task = state.ready.swap_remove(index);
            let Some(slot) = state.tasks.get_mut(&task) else { continue };
            slot.queued = false;
            let node = slot.node;
            if let Some(until_ns) = node.map(|n| state.nodes[n].paused_until_ns).filter(|&u| u > state.now_ns)
            {
                let waker = state.tasks[&task].waker.clone();
                let key = state.timer_key(until_ns);
                state.add_timer(key, waker);
                state.record(TraceEventKind::TaskDeferred { task, delay_ns: until_ns - state.now_ns });
                continue;
            }
            if let Some(Fault::CpuStarvation { delay_ms_max }) = state.fault(FaultKind::CpuStarvation, node) {
                let delay_ns = state.rng.between_inclusive(1, delay_ms_max.max(1)) * 1_000_000;
                let waker = state.tasks[&task].waker.clone();
                let key = state.timer_key(state.now_ns + delay_ns);
                state.add_timer(key, waker);
                state.record(TraceEventKind::TaskDeferred { task, delay_ns });
                continue;
            }
            let slot = state.tasks.get_mut(&task)?;
            let future = slot.future.take()?;
            let waker = slot.waker.clone();
            state.record(TraceEventKind::TaskPolled { task });
            return Some(Picked { task, future, waker });
        }
        None
    }

    fn poll_picked(&self, picked: Picked) -> Result<(), TaskPanic> {
        let Picked { task, mut future, waker } = picked;
        let mut context = Context::from_waker(&waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut context)));
        let orphan = {
            let mut state = self.lock();
            match polled {
                Ok(Poll::Pending) => match state.tasks.get_mut(&task) {
                    Some(slot) => {
                        debug_assert!(slot.future.is_none());
                        slot.future = Some(future);
                        None
                    }
                    // Killed (its node crashed) while it ran.
                    None => Some(future),
                },
                Ok(Poll::Ready(())) => {
                    if state.tasks.remove(&task).is_some() {
                        state.tasks_finished += 1;
                        state.record(TraceEventKind::TaskFinished { task });
                    }
                    Some(future)
                }
                Err(payload) => {
                    let slot = state.tasks.remove(&task);
                    let name = slot.as_ref().map_or("<killed>", |slot| slot.name);
                    let node = slot.and_then(|slot| slot.node).map(|index| state.nodes[index].id.clone());
                    drop(state);
                    drop(future);
                    return Err(TaskPanic { task: name, node, message: panic_message(payload.as_ref()) });
                }
            }
        };
        drop(orphan);
        Ok(())
    }

    fn fire_next_timer(&self, horizon_ns: u64) -> StepOutcome {
        let waker = {
            let mut state = self.lock();
            let Some((&(deadline_ns, id), _)) = state.timers.iter().next() else {
                return StepOutcome::Idle;
            };
            if deadline_ns > horizon_ns {
                return StepOutcome::Idle;
            }
            let waker = state.timers.remove(&(deadline_ns, id));
            state.now_ns = state.now_ns.max(deadline_ns);
            state.record(TraceEventKind::TimerFired { deadline_ns });
            waker
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        StepOutcome::TimerFired
    }

    /// Moves time forward to `to_ns` when nothing else is due before it.
    pub fn advance_to(&self, to_ns: u64) {
        let mut state = self.lock();
        state.now_ns = state.now_ns.max(to_ns);
    }

    /// The node's process dies: all its tasks are dropped, volatile state is lost.
    pub fn crash_node(&self, node: usize) {
        let killed: Vec<TaskSlot> = {
            let mut state = self.lock();
            if !state.nodes[node].up {
                return;
            }
            let now = state.now_ns;
            let slot = &mut state.nodes[node];
            slot.up = false;
            slot.incarnation += 1;
            slot.crashed_at_ns = Some(now);
            state.record(TraceEventKind::NodeCrashed { node: node as u32 });
            let doomed: Vec<u64> =
                state.tasks.iter().filter(|(_, slot)| slot.node == Some(node)).map(|(&id, _)| id).collect();
            let mut killed = Vec::with_capacity(doomed.len());
            for task in doomed {
                state.record(TraceEventKind::TaskKilled { task });
                killed.extend(state.tasks.remove(&task));
            }
            killed
        };
        drop(killed);
    }

    /// Brings a crashed node back and runs its boot function, if it has one.
    pub fn restart_node(self: &Arc<Self>, node: usize) -> bool {
        let boot = {
            let mut state = self.lock();
            if state.nodes[node].up {
                return false;
            }
            state.nodes[node].up = true;
            state.nodes[node].crashed_at_ns = None;
            state.record(TraceEventKind::NodeRestarted { node: node as u32 });
            state.nodes[node].boot.clone()
        };
        if let Some(boot) = boot {
            self.spawn(Some(node), "boot", boot());
        }
        true
    }

    /// Stops running the node's tasks until `duration_ns` from now; its
    /// clocks, timers and inbox carry on, as for a stopped process.
    pub fn pause_node(&self, node: usize, duration_ns: u64) {
        let mut state = self.lock();
        let until_ns = state.now_ns.saturating_add(duration_ns);
        let slot = &mut state.nodes[node];
        slot.paused_until_ns = slot.paused_until_ns.max(until_ns);
        state.record(TraceEventKind::Note { label: format!("node {node} paused until {until_ns} ns") });
    }

    /// Drops every task (ending the reference cycles through their futures).
    pub fn shutdown(&self) {
        let tasks = {
            let mut state = self.lock();
            state.ready.clear();
            let timers = std::mem::take(&mut state.timers);
            (std::mem::take(&mut state.tasks), timers)
        };
        drop(tasks);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

/// A future that completes at a deadline of simulated time.
pub struct Sleep {
    executor: Arc<Executor>,
    key: (u64, u64),
    registered: bool,
}

impl Sleep {
    pub(crate) fn new(executor: Arc<Executor>, duration_ns: u64) -> Self {
        let key = {
            let mut state = executor.lock();
            let deadline_ns = state.now_ns.saturating_add(duration_ns);
            state.timer_key(deadline_ns)
        };
        Sleep { executor, key, registered: false }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.executor.lock();
        if state.now_ns >= this.key.0 {
            if this.registered {
                this.registered = false;
                let stale = state.remove_timer(this.key);
                drop(state);
                drop(stale);
            }
            return Poll::Ready(());
        }
        if this.registered {
            state.replace_timer_waker(this.key, context.waker());
        } else {
            state.add_timer(this.key, context.waker().clone());
            this.registered = true;
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if self.registered {
            let stale = self.executor.lock().remove_timer(self.key);
            drop(stale);
        }
    }
}

/// Gives the scheduler a chance to run another ready task before continuing.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future returned by [`yield_now`].
#[derive(Debug)]
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        context.waker().wake_by_ref();
        Poll::Pending
    }
}
