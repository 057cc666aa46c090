//! [`ClusterError`]: what can go wrong in membership, transport and
//! forwarding, with the context an operator needs. Converted to
//! [`kelpie_core::Error`] at the crate boundary.

use std::net::SocketAddr;

use kelpie_core::{ActorId, NodeId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("node table {operation} failed: {reason}")]
    Database { operation: &'static str, reason: String },
    #[error("node table row {what} is corrupt: {reason}")]
    CorruptRow { what: String, reason: String },
    #[error("connecting to {peer} failed: {reason}")]
    Connect { peer: SocketAddr, reason: String },
    #[error("connection to {peer} failed: {reason}")]
    Io { peer: SocketAddr, reason: String },
    /// The cluster handshake with the peer failed: it does not hold this
    /// cluster's secret, or does not speak the handshake.
    #[error("authenticating with {peer} failed: {reason}")]
    Auth { peer: SocketAddr, reason: String },
    #[error(
        "frame of {size_bytes} bytes exceeds FRAME_SIZE_BYTES_MAX ({limit_bytes}) on the link to {peer}"
    )]
    FrameTooLarge { peer: SocketAddr, size_bytes: u64, limit_bytes: u64 },
    #[error("request to {peer} timed out after {timeout_ms} ms")]
    Timeout { peer: SocketAddr, timeout_ms: u64 },
    #[error("{in_flight} requests already in flight to {peer} (IN_FLIGHT_REQUESTS_COUNT_MAX)")]
    TooManyInFlight { peer: SocketAddr, in_flight: usize },
    #[error("peer {peer} answered with an error: {reason}")]
    Remote { peer: SocketAddr, reason: String },
    #[error("node {node_id} is not a live member")]
    NodeNotLive { node_id: NodeId },
    #[error("routing of {actor_id} did not settle in {attempts} rounds (FORWARD_ROUTE_ATTEMPTS_COUNT_MAX)")]
    RoutingUnsettled { actor_id: ActorId, attempts: u32 },
    #[error("{what} is shut down")]
    ShutDown { what: &'static str },
}

impl From<ClusterError> for kelpie_core::Error {
    fn from(err: ClusterError) -> Self {
        match err {
            ClusterError::Database { operation, reason } => {
                kelpie_core::Error::StorageIo { operation, reason }
            }
            ClusterError::CorruptRow { what, reason } => {
                kelpie_core::Error::Corruption { location: what, reason }
            }
            ClusterError::NodeNotLive { node_id } => {
                kelpie_core::Error::NodeUnavailable { node_id, reason: "not a live member".to_string() }
            }
            ClusterError::RoutingUnsettled { actor_id, .. } => {
                kelpie_core::Error::TransactionConflict { actor_id, key: "placement".to_string() }
            }
            ClusterError::ShutDown { what } => kelpie_core::Error::ShuttingDown { component: what },
            other => kelpie_core::Error::Internal(other.to_string()),
        }
    }
}

pub type ClusterResult<T> = Result<T, ClusterError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_conversion_keeps_retriability_and_context() {
        let node_id = NodeId::new("n2").unwrap();
        let err = kelpie_core::Error::from(ClusterError::NodeNotLive { node_id: node_id.clone() });
        assert_eq!(err, kelpie_core::Error::NodeUnavailable { node_id, reason: "not a live member".into() });
        assert!(err.is_retriable(), "a failed owner is retried once its lease expires");
        let actor_id = ActorId::new("agents", "a").unwrap();
        let unsettled = kelpie_core::Error::from(ClusterError::RoutingUnsettled { actor_id, attempts: 3 });
        assert!(unsettled.is_retriable());
    }
}
