//! Errors of sandboxes, each with the context a user needs: which backend,
//! which limit, which state.

use thiserror::Error;

use crate::lifecycle::Refused;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SandboxError {
    /// The backend cannot run on this machine (a program or kernel feature
    /// is missing); nothing was started.
    #[error("sandbox backend {backend} is unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error("{0}")]
    Lifecycle(Refused),
    #[error("limit {name} = {value} is outside {min}..={max}")]
    InvalidLimit { name: &'static str, value: u64, min: u64, max: u64 },
    #[error("invalid sandbox request: {0}")]
    InvalidRequest(String),
    /// Setting the sandbox up failed (a directory, a cgroup, the runtime).
    #[error("cannot create the sandbox: {0}")]
    Create(String),
    /// The program could not be started in the sandbox.
    #[error("cannot start {program} in the sandbox: {reason}")]
    Spawn { program: String, reason: String },
    /// The sandbox went away during the call (stopped or destroyed).
    #[error("the sandbox was {0} during the call")]
    Interrupted(&'static str),
    /// Pausing needs a freezer (a cgroup) this machine does not give.
    #[error("cannot {what} the sandbox: {reason}")]
    Control { what: &'static str, reason: String },
    #[error("sandbox I/O failed: {0}")]
    Io(String),
}

impl From<Refused> for SandboxError {
    fn from(refused: Refused) -> Self {
        SandboxError::Lifecycle(refused)
    }
}
