//! The workspace-wide error type.
//!
//! Each variant carries the context a user needs to act on it (which actor,
//! which key, which limit). [`Error::is_retriable`] tells a caller whether the
//! same request may succeed if sent again unchanged: conflicts, unavailable
//! nodes, timeouts and overload are transient; bad input, missing things and
//! fencing are not.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::id::{ActorId, NodeId};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// An identifier failed validation.
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId { kind: &'static str, value: String, reason: String },

    /// A request or configuration value failed validation.
    #[error("invalid {field}: {reason}")]
    Validation { field: String, reason: String },

    /// A size or count limit was exceeded by input.
    #[error("{what} is {actual}, over the limit {limit_name} = {limit}")]
    LimitExceeded { what: String, actual: u64, limit_name: &'static str, limit: u64 },

    /// The named thing does not exist.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },

    /// A concurrent transaction changed what this one read or wrote.
    #[error("transaction conflict for actor {actor_id} on key {key:?}")]
    TransactionConflict { actor_id: ActorId, key: String },

    /// The commit's fencing condition failed: another activation owns the actor.
    #[error(
        "commit for actor {actor_id} fenced: node {node_id} epoch {epoch} no longer holds the placement"
    )]
    Fenced { actor_id: ActorId, node_id: NodeId, epoch: u64 },

    /// The node that should serve the request cannot be reached.
    #[error("node {node_id} unavailable: {reason}")]
    NodeUnavailable { node_id: NodeId, reason: String },

    /// An actor invocation did not finish in time.
    #[error("invocation of actor {actor_id} timed out after {timeout_ms} ms")]
    InvocationTimeout { actor_id: ActorId, timeout_ms: u64 },

    /// An actor's mailbox is full; the caller should back off and retry.
    #[error("actor {actor_id} is overloaded: mailbox holds {depth} messages")]
    MailboxFull { actor_id: ActorId, depth: usize },

    /// The component is shutting down and takes no new work.
    #[error("{component} is shutting down")]
    ShuttingDown { component: &'static str },

    /// A storage operation failed at the I/O level.
    #[error("storage {operation} failed: {reason}")]
    StorageIo { operation: &'static str, reason: String },

    /// Stored data failed its integrity check.
    #[error("stored data corrupt at {location}: {reason}")]
    Corruption { location: String, reason: String },

    /// An actor's handler returned an error or panicked; its state change was rolled back.
    #[error("actor {actor_id} failed: {reason}")]
    ActorFailed { actor_id: ActorId, reason: String },

    /// A bug: an internal invariant was found broken at run time.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether sending the same request again unchanged may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::TransactionConflict { .. }
            | Error::NodeUnavailable { .. }
            | Error::InvocationTimeout { .. }
            | Error::MailboxFull { .. }
            | Error::StorageIo { .. } => true,
            Error::InvalidId { .. }
            | Error::Validation { .. }
            | Error::LimitExceeded { .. }
            | Error::NotFound { .. }
            | Error::Fenced { .. }
            | Error::ShuttingDown { .. }
            | Error::Corruption { .. }
            | Error::ActorFailed { .. }
            | Error::Internal(_) => false,
        }
    }

    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Validation { field: field.into(), reason: reason.into() }
    }
}

/// Distinct `&'static str` values [`WireError::into_error`] will intern;
/// names past this many arrive as [`UNKNOWN_REMOTE_NAME`].
pub const INTERNED_NAMES_COUNT_MAX: usize = 512;
/// Stands for a static name that could not be interned.
pub const UNKNOWN_REMOTE_NAME: &str = "remote";

/// An [`Error`] in a form that crosses the wire between nodes, so a caller
/// gets back the same variant (and status code) the owner's actor produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "error")]
pub enum WireError {
    InvalidId { kind: String, value: String, reason: String },
    Validation { field: String, reason: String },
    LimitExceeded { what: String, actual: u64, limit_name: String, limit: u64 },
    NotFound { kind: String, id: String },
    TransactionConflict { actor_id: ActorId, key: String },
    Fenced { actor_id: ActorId, node_id: NodeId, epoch: u64 },
    NodeUnavailable { node_id: NodeId, reason: String },
    InvocationTimeout { actor_id: ActorId, timeout_ms: u64 },
    MailboxFull { actor_id: ActorId, depth: usize },
    ShuttingDown { component: String },
    StorageIo { operation: String, reason: String },
    Corruption { location: String, reason: String },
    ActorFailed { actor_id: ActorId, reason: String },
    Internal { reason: String },
}

impl From<&Error> for WireError {
    fn from(err: &Error) -> Self {
        let s = |text: &str| text.to_string();
        match err.clone() {
            Error::InvalidId { kind, value, reason } => WireError::InvalidId { kind: s(kind), value, reason },
            Error::Validation { field, reason } => WireError::Validation { field, reason },
            Error::LimitExceeded { what, actual, limit_name, limit } => {
                WireError::LimitExceeded { what, actual, limit_name: s(limit_name), limit }
            }
            Error::NotFound { kind, id } => WireError::NotFound { kind: s(kind), id },
            Error::TransactionConflict { actor_id, key } => WireError::TransactionConflict { actor_id, key },
            Error::Fenced { actor_id, node_id, epoch } => WireError::Fenced { actor_id, node_id, epoch },
            Error::NodeUnavailable { node_id, reason } => WireError::NodeUnavailable { node_id, reason },
            Error::InvocationTimeout { actor_id, timeout_ms } => {
                WireError::InvocationTimeout { actor_id, timeout_ms }
            }
            Error::MailboxFull { actor_id, depth } => WireError::MailboxFull { actor_id, depth },
            Error::ShuttingDown { component } => WireError::ShuttingDown { component: s(component) },
            Error::StorageIo { operation, reason } => {
                WireError::StorageIo { operation: s(operation), reason }
            }
            Error::Corruption { location, reason } => WireError::Corruption { location, reason },
            Error::ActorFailed { actor_id, reason } => WireError::ActorFailed { actor_id, reason },
            Error::Internal(reason) => WireError::Internal { reason },
        }
    }
}

impl WireError {
    /// The [`Error`] this stands for; static names are interned.
    pub fn into_error(self) -> Error {
        match self {
            WireError::InvalidId { kind, value, reason } => {
                Error::InvalidId { kind: intern(kind), value, reason }
            }
            WireError::Validation { field, reason } => Error::Validation { field, reason },
            WireError::LimitExceeded { what, actual, limit_name, limit } => {
                Error::LimitExceeded { what, actual, limit_name: intern(limit_name), limit }
            }
            WireError::NotFound { kind, id } => Error::NotFound { kind: intern(kind), id },
            WireError::TransactionConflict { actor_id, key } => Error::TransactionConflict { actor_id, key },
            WireError::Fenced { actor_id, node_id, epoch } => Error::Fenced { actor_id, node_id, epoch },
            WireError::NodeUnavailable { node_id, reason } => Error::NodeUnavailable { node_id, reason },
            WireError::InvocationTimeout { actor_id, timeout_ms } => {
                Error::InvocationTimeout { actor_id, timeout_ms }
            }
            WireError::MailboxFull { actor_id, depth } => Error::MailboxFull { actor_id, depth },
            WireError::ShuttingDown { component } => Error::ShuttingDown { component: intern(component) },
            WireError::StorageIo { operation, reason } => {
                Error::StorageIo { operation: intern(operation), reason }
            }
            WireError::Corruption { location, reason } => Error::Corruption { location, reason },
            WireError::ActorFailed { actor_id, reason } => Error::ActorFailed { actor_id, reason },
            WireError::Internal { reason } => Error::Internal(reason),
        }
    }
}

/// A `'static` copy of `name`. Names are the code's own constants (kinds,
/// limit names, components), so the set stays small; it is capped anyway.
fn intern(name: String) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    if names.len() >= INTERNED_NAMES_COUNT_MAX {
        return UNKNOWN_REMOTE_NAME;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> ActorId {
        ActorId::new("agents", "a1").unwrap()
    }

    fn node() -> NodeId {
        NodeId::new("n1").unwrap()
    }

    #[test]
    fn retriable_variants() {
        let retriable = [
            Error::TransactionConflict { actor_id: actor(), key: "k".into() },
            Error::NodeUnavailable { node_id: node(), reason: "connection refused".into() },
            Error::InvocationTimeout { actor_id: actor(), timeout_ms: 100 },
            Error::MailboxFull { actor_id: actor(), depth: 1024 },
            Error::StorageIo { operation: "commit", reason: "EIO".into() },
        ];
        for err in retriable {
            assert!(err.is_retriable(), "{err} should be retriable");
        }
    }

    #[test]
    fn non_retriable_variants() {
        let permanent = [
            Error::InvalidId { kind: "actor id", value: "".into(), reason: "empty".into() },
            Error::validation("name", "must not be empty"),
            Error::LimitExceeded { what: "value".into(), actual: 2, limit_name: "X_MAX", limit: 1 },
            Error::NotFound { kind: "agent", id: "agent-1".into() },
            Error::Fenced { actor_id: actor(), node_id: node(), epoch: 3 },
            Error::ShuttingDown { component: "runtime" },
            Error::Corruption { location: "wal".into(), reason: "checksum".into() },
            Error::ActorFailed { actor_id: actor(), reason: "panic".into() },
            Error::Internal("bug".into()),
        ];
        for err in permanent {
            assert!(!err.is_retriable(), "{err} should not be retriable");
        }
    }

    #[test]
    fn messages_carry_context() {
        let fenced = Error::Fenced { actor_id: actor(), node_id: node(), epoch: 7 };
        assert_eq!(
            fenced.to_string(),
            "commit for actor agents/a1 fenced: node n1 epoch 7 no longer holds the placement"
        );
        let limit = Error::LimitExceeded {
            what: "value of key \"state\"".into(),
            actual: 11,
            limit_name: "STORAGE_VALUE_SIZE_BYTES_MAX",
            limit: 10,
        };
        assert_eq!(
            limit.to_string(),
            "value of key \"state\" is 11, over the limit STORAGE_VALUE_SIZE_BYTES_MAX = 10"
        );
        let conflict = Error::TransactionConflict { actor_id: actor(), key: "k".into() };
        assert_eq!(conflict.to_string(), "transaction conflict for actor agents/a1 on key \"k\"");
        let missing = Error::NotFound { kind: "agent", id: "agent-9".into() };
        assert_eq!(missing.to_string(), "agent agent-9 not found");
    }

    #[test]
    fn every_variant_survives_the_wire() {
        let errors = [
            Error::InvalidId { kind: "actor id", value: "".into(), reason: "empty".into() },
            Error::validation("name", "must not be empty"),
            Error::LimitExceeded { what: "value".into(), actual: 2, limit_name: "X_MAX", limit: 1 },
            Error::NotFound { kind: "agent", id: "agent-1".into() },
            Error::TransactionConflict { actor_id: actor(), key: "k".into() },
            Error::Fenced { actor_id: actor(), node_id: node(), epoch: 3 },
            Error::NodeUnavailable { node_id: node(), reason: "down".into() },
            Error::InvocationTimeout { actor_id: actor(), timeout_ms: 100 },
            Error::MailboxFull { actor_id: actor(), depth: 1024 },
            Error::ShuttingDown { component: "runtime" },
            Error::StorageIo { operation: "commit", reason: "EIO".into() },
            Error::Corruption { location: "wal".into(), reason: "checksum".into() },
            Error::ActorFailed { actor_id: actor(), reason: "panic".into() },
            Error::Internal("bug".into()),
        ];
        for err in errors {
            let bytes = serde_json::to_vec(&WireError::from(&err)).unwrap();
            let back: WireError = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back.into_error(), err);
        }
    }

    #[test]
    fn interned_names_are_shared() {
        let a = WireError::NotFound { kind: "agent".into(), id: "1".into() }.into_error();
        let b = WireError::NotFound { kind: "agent".into(), id: "2".into() }.into_error();
        match (a, b) {
            (Error::NotFound { kind: x, .. }, Error::NotFound { kind: y, .. }) => {
                assert_eq!(x, "agent");
                assert!(std::ptr::eq(x, y), "one allocation per distinct name");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
