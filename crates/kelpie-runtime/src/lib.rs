//! Virtual actor runtime: the Actor trait, ActorRef handles, the dispatcher,
//! the activation state machine, bounded mailboxes and idle deactivation.
//! Never depends on the server or the cluster.
//!
//! - [`lifecycle`]: the activation state machine (pure).
//!
//! The dispatcher and actor API build on `kelpie-storage` transactions and
//! `kelpie-registry` placements and are not here yet.

pub mod lifecycle;

pub use lifecycle::{ActivationState, Lifecycle, LifecycleEvent};
