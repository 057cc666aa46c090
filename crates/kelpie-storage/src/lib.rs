//! Transactional per-actor key-value storage with fenced commits.
//!
//! - [`Storage`] is the handle; [`Storage::begin`] opens a [`Transaction`] over
//!   one actor's keys (get, scan, put, delete, commit, abort). Keys are
//!   namespaced by [`kelpie_core::ActorId`] inside every backend, so one actor
//!   can never read another's keys.
//! - Commits are optimistic: reads record versions, and the backend validates
//!   them and applies the writes in one atomic step ([`commit_check`] is the
//!   shared, sans-IO validation). A commit may carry a [`FenceCondition`]
//!   checked in that same step against the actor's [`Placement`].
//! - Backends: [`MemoryBackend`] (tests, DST), [`RedbBackend`] (embedded,
//!   single-node default, group commit), [`PostgresBackend`] (cluster).
//!
//! Never depends on the runtime or server.

pub mod backend;
mod commit_check;
pub mod limits;
mod memory;
mod placement;
mod postgres;
#[cfg(test)]
mod redb_dst_tests;
mod redb_store;
#[cfg(feature = "dst")]
pub mod sim_disk;
mod storage;
#[cfg(feature = "test-support")]
pub mod test_support;
mod txn;
pub mod types;

pub use backend::{Backend, BoxFut};
pub use memory::MemoryBackend;
pub use postgres::{connect_pool, LeasedPlacement, PostgresBackend};
pub use redb_store::RedbBackend;
pub use storage::{Storage, Transaction};
pub use types::{
    ClaimOutcome, CommitInfo, FenceCondition, KeyRange, Placement, ScanOrder, ScanPage, Versioned,
};
