//! Validated identifiers.
//!
//! An [`ActorId`] names a virtual actor: a `namespace` (the actor's kind or
//! tenant, e.g. `agents`) and an `id` within it. Both parts are validated when
//! constructed, parsed or deserialized, so every `ActorId` in the system is
//! well formed.
//!
//! Allowed characters in each part: ASCII letters, digits, and `-`, `_`, `.`,
//! `:`, `@`. Each part is non-empty and at most
//! [`ACTOR_ID_LENGTH_BYTES_MAX`] bytes. The text form is `namespace/id`, which
//! is why `/` is not allowed inside a part.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::limits::ACTOR_ID_LENGTH_BYTES_MAX;

/// Longest node id, in bytes.
pub const NODE_ID_LENGTH_BYTES_MAX: usize = 128;

fn is_allowed_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

fn validate_part(kind: &'static str, field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidId {
        kind,
        value: value.chars().take(64).collect(),
        reason: format!("{field} {reason}"),
    };
    if value.is_empty() {
        return Err(invalid("must not be empty".to_string()));
    }
    if value.len() > max {
        return Err(invalid(format!("is {} bytes, longer than the maximum of {max}", value.len())));
    }
    if let Some(bad) = value.chars().find(|c| !is_allowed_char(*c)) {
        return Err(invalid(format!("contains {bad:?}; allowed are ASCII letters, digits and - _ . : @")));
    }
    Ok(())
}

/// The name of a virtual actor: `namespace/id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "ActorIdParts")]
pub struct ActorId {
    namespace: String,
    id: String,
}

#[derive(Deserialize)]
struct ActorIdParts {
    namespace: String,
    id: String,
}

impl TryFrom<ActorIdParts> for ActorId {
    type Error = Error;
    fn try_from(parts: ActorIdParts) -> Result<Self, Error> {
        ActorId::new(parts.namespace, parts.id)
    }
}

impl ActorId {
    /// Builds an id, rejecting empty, over-long or badly-charactered parts.
    pub fn new(namespace: impl Into<String>, id: impl Into<String>) -> Result<Self, Error> {
        let namespace = namespace.into();
        let id = id.into();
        validate_part("actor id", "namespace", &namespace, ACTOR_ID_LENGTH_BYTES_MAX)?;
        validate_part("actor id", "id", &id, ACTOR_ID_LENGTH_BYTES_MAX)?;
        Ok(Self { namespace, id })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

impl FromStr for ActorId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.split_once('/') {
            Some((namespace, id)) => ActorId::new(namespace, id),
            None => Err(Error::InvalidId {
                kind: "actor id",
                value: s.chars().take(64).collect(),
                reason: "expected the form namespace/id".to_string(),
            }),
        }
    }
}

/// The name of a node of a cluster (or the single node of a standalone server).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    pub fn new(value: impl Into<String>) -> Result<Self, Error> {
        let value = value.into();
        validate_part("node id", "node id", &value, NODE_ID_LENGTH_BYTES_MAX)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = Error;
    fn try_from(value: String) -> Result<Self, Error> {
        NodeId::new(value)
    }
}

impl From<NodeId> for String {
    fn from(node: NodeId) -> String {
        node.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        NodeId::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_id_display_and_parse_round_trip() {
        let id = ActorId::new("agents", "agent-3f2a.v1:x@y_z").unwrap();
        assert_eq!(id.namespace(), "agents");
        assert_eq!(id.id(), "agent-3f2a.v1:x@y_z");
        let text = id.to_string();
        assert_eq!(text, "agents/agent-3f2a.v1:x@y_z");
        let parsed: ActorId = text.parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn actor_id_rejects_empty_parts_naming_the_part() {
        let err = ActorId::new("", "a").unwrap_err();
        assert_eq!(err.to_string(), "invalid actor id \"\": namespace must not be empty");
        let err = ActorId::new("ns", "").unwrap_err();
        assert_eq!(err.to_string(), "invalid actor id \"\": id must not be empty");
    }

    #[test]
    fn actor_id_length_limit_is_inclusive() {
        let at_limit = "a".repeat(ACTOR_ID_LENGTH_BYTES_MAX);
        assert!(ActorId::new("ns", at_limit.clone()).is_ok());
        let over = format!("{at_limit}a");
        let err = ActorId::new("ns", over).unwrap_err();
        assert!(err.to_string().contains("257 bytes, longer than the maximum of 256"), "{err}");
        assert!(!err.is_retriable());
    }

    #[test]
    fn actor_id_rejects_disallowed_characters() {
        for bad in ["a/b", "a b", "é", "a\n", "a*"] {
            let err = ActorId::new("ns", bad).unwrap_err();
            assert!(err.to_string().contains("allowed are ASCII letters"), "{bad}: {err}");
        }
    }

    #[test]
    fn actor_id_parse_requires_a_slash() {
        let err = "noslash".parse::<ActorId>().unwrap_err();
        assert_eq!(err.to_string(), "invalid actor id \"noslash\": expected the form namespace/id");
        assert!("a/b/c".parse::<ActorId>().is_err(), "the id part must not contain a slash");
    }

    #[test]
    fn actor_id_serde_round_trip_and_validation() {
        let id = ActorId::new("agents", "a1").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#"{"namespace":"agents","id":"a1"}"#);
        let back: ActorId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<ActorId>(r#"{"namespace":"","id":"a1"}"#).unwrap_err();
        assert!(err.to_string().contains("namespace must not be empty"), "{err}");
    }

    #[test]
    fn node_id_validates_and_round_trips() {
        let node = NodeId::new("node-1").unwrap();
        assert_eq!(node.to_string(), "node-1");
        assert_eq!("node-1".parse::<NodeId>().unwrap(), node);
        assert_eq!(serde_json::to_string(&node).unwrap(), "\"node-1\"");
        assert!(serde_json::from_str::<NodeId>("\"bad node\"").is_err());
        assert!(NodeId::new("x".repeat(NODE_ID_LENGTH_BYTES_MAX + 1)).is_err());
    }
}
