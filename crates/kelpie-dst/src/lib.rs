//! Deterministic simulation testing (DST) for Kelpie.
//!
//! A [`Simulation`] runs the tasks of many simulated nodes on one thread. At
//! each step a seeded RNG picks the next ready task, so a seed names one
//! interleaving and replays it exactly; time is virtual and jumps to the next
//! timer when every task waits. Around the executor sit the simulated world:
//! per-node [`SimClock`]s with skew and jumps, a [`SimNetwork`] with latency,
//! loss, duplication, reordering and partitions, a [`SimStorage`] disk per
//! node with durable and pending data and crash points, and the
//! [`FaultInjector`] that fires typed [`Fault`]s by probability and time
//! window. Named invariants are checked after every step; every event feeds a
//! 64-bit [`Trace`] hash. [`SimLlmClient`], [`SimTool`] and [`SimSandbox`]
//! stand in for an agent's LLM, tools and sandbox.
//!
//! [`properties`] holds the named safety properties shared by the DST
//! scenarios and the stateright [`models`] of each protocol.
//!
//! Code under test receives a [`kelpie_core::Env`] from [`SimNode::env`] and
//! runs unchanged. The crate depends only on `kelpie-core`, and itself reads
//! no clock and spawns no thread: the one nondeterministic input is the
//! choice of seed (see [`seed`]). How to write a scenario and the fault
//! catalogue: `docs/dst.md`.

pub mod agent;
pub mod clock;
mod executor;
pub mod fault;
pub mod hash;
pub mod invariant;
pub mod models;
pub mod network;
pub mod properties;
pub mod reference;
pub mod rng;
pub mod seed;
pub mod simulation;
pub mod storage;
pub mod trace;

pub use agent::{
    LlmError, LlmMessage, LlmRequest, LlmResponse, LlmToolCall, SandboxError, SandboxSnapshot, SimLlmClient,
    SimSandbox, SimTool, ToolError,
};
pub use clock::{SimClock, TrueClock};
pub use executor::{yield_now, Sleep, YieldNow, SIM_TASKS_COUNT_MAX, SIM_TIMERS_COUNT_MAX};
pub use fault::{Fault, FaultInjector, FaultKind, FaultRule};
pub use invariant::{InvariantChecker, InvariantViolation};
pub use network::{Envelope, NetworkConfig, NetworkError, NetworkStats, SimNetwork};
pub use rng::DeterministicRng;
pub use seed::{replay_command, seed_from_env, seeds_to_run, SeedError, DST_SEED_ENV};
pub use simulation::{
    FailureKind, ResourceError, SimFailure, SimHandle, SimNode, SimReport, SimSpawner, SimView, Simulation,
    SimulationBuilder,
};
pub use storage::{
    Condition, KeyValue, SimStorage, StorageConfig, StorageError, StorageOp, StorageStats, WriteBatch,
};
pub use trace::{Trace, TraceEvent, TraceEventKind};
