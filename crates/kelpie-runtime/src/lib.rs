//! Virtual actor runtime: actors exist by id, are activated on demand on one
//! node, handle one message at a time, persist transactionally and sleep
//! when idle. Never depends on the server or the cluster.
//!
//! - [`actor`]: the [`Actor`] trait and [`ActorContext`].
//! - [`runtime`]: [`Runtime`] (the dispatcher) and [`ActorRef`] handles;
//!   bounded mailboxes, a cap on active actors with LRU eviction, invocation
//!   timeouts, graceful shutdown.
//! - `activation`: the task of one activation: claim, load, serve, save,
//!   release, with every commit fenced by the activation's epoch.
//! - [`lifecycle`]: the activation state machine (pure).
//! - [`remote`]: the seam to the cluster: [`Remote`] sends invocations to
//!   the owning node, [`EncodedInvoker`] runs them on arrival.
//!
//! Time, task spawning and randomness come from the [`kelpie_core::Env`]
//! given to [`Runtime::new`], so the same code runs in the simulator.

mod activation;
pub mod actor;
pub mod lifecycle;
pub mod remote;
pub mod runtime;

pub use activation::LEASE_SERVE_PERCENT;
pub use actor::{Actor, ActorContext};
pub use lifecycle::{ActivationState, Lifecycle, LifecycleEvent};
pub use remote::{EncodedInvoker, Remote};
pub use runtime::{ActorRef, PlantedDefect, Runtime, RuntimeConfig};
