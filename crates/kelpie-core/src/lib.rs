//! Kelpie's shared vocabulary, used by every other crate of the workspace.
//!
//! - [`id`]: validated identifiers ([`ActorId`], [`NodeId`]).
//! - [`error`]: the workspace-wide [`Error`] with [`Error::is_retriable`].
//! - [`limits`]: every bound of the system as a named constant with its unit.
//! - [`env`]: the deterministic boundary: clock, randomness and task spawning as
//!   traits, with the tokio-backed production implementation.
//! - [`config`]: the typed server configuration, layered from defaults, file,
//!   environment and command line, validated once at load time.
//!
//! This crate depends on nothing else in the workspace. It performs no I/O of
//! its own except reading a config file when asked to.

pub mod config;
pub mod env;
pub mod error;
pub mod id;
pub mod limits;
pub mod metrics;

pub use env::{Clock, Env, RngSource, TaskSpawner};
pub use error::{Error, Result, WireError};
pub use id::{ActorId, NodeId};
