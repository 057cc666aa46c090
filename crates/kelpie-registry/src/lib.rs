//! Placement directory: which node hosts which actor, under which lease and
//! fencing epoch.
//!
//! - [`lease`]: the sans-IO claim/renew/release state machine. It decides;
//!   it never reads a clock or touches storage. The model checker, the
//!   simulator and the backends all drive this one function.
//! - [`store`]: the [`PlacementStore`] trait, an atomic compare-and-set over
//!   placement records, and its in-memory implementation. The durable one
//!   lives beside actor state in `kelpie-storage`, so that a state commit can
//!   check its fencing epoch in the same transaction as its writes
//!   ([`storage_store`]).
//! - [`registry`]: [`Registry`], which reads time from the environment's
//!   clock, runs the state machine and applies the result with one
//!   compare-and-set, so there is no window between "is it placed?" and
//!   "place it".
//!
//! - [`directory`]: [`PlacementDirectory`], the operations every backend
//!   offers, implemented by [`Registry`] and [`PostgresRegistry`].
//! - [`postgres_registry`]: [`PostgresRegistry`], the cluster backend, whose
//!   leases are judged by the database's clock.
//!
//! This crate never depends on the runtime or the server.

pub mod directory;
pub mod lease;
pub mod postgres_registry;
pub mod registry;
pub mod storage_store;
pub mod store;

pub use directory::{LiveOwner, PlacementDirectory};
pub use lease::{LeaseCommand, LeaseOutcome, PlacementRecord};
pub use postgres_registry::PostgresRegistry;
pub use registry::Registry;
pub use storage_store::StoragePlacementStore;
pub use store::{CasResult, MemoryPlacementStore, PlacementStore};
