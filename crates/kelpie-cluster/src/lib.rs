//! Kelpie's cluster layer: several nodes on one shared PostgreSQL.
//!
//! - [`membership`]: the sans-IO membership core (status, heartbeat timing,
//!   failure and self-isolation judgements); [`node_table`] and [`member`]
//!   are its PostgreSQL shell and heartbeat driver.
//!
//! Placement (who owns which actor, leases, fencing epochs) lives in
//! `kelpie-registry`; this crate asks it, never duplicates it. Time, tasks
//! and randomness come from `kelpie_core::Env`. Never depends on the server.

pub mod error;
pub mod member;
pub mod membership;
pub mod node_table;

pub use error::{ClusterError, ClusterResult};
pub use member::{Member, MemberView};
pub use membership::{Liveness, MembershipConfig, NodeStatus};
pub use node_table::NodeTable;
