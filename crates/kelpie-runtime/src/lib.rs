//! Virtual actor runtime: the Actor trait, ActorRef handles, the dispatcher,
//! the activation state machine, bounded mailboxes and idle deactivation. Never
//! depends on the server or the cluster.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
