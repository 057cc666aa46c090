//! Kelpie's cluster layer: several nodes on one shared PostgreSQL.
//!
//! - [`membership`]: the sans-IO membership core (status, heartbeat timing,
//!   failure and self-isolation judgements); [`member`] is its heartbeat
//!   driver over a [`NodeStore`] ([`node_table`] on PostgreSQL, or
//!   [`MemoryNodeStore`]).
//! - [`transport`]: the [`Transport`] trait and its TCP client; [`server`]
//!   the TCP server; [`frame`] (wire format), [`auth`] (the mutual
//!   handshake on every connection, by a shared cluster secret) and
//!   [`backoff`] (reconnect timing) are their sans-IO parts.
//! - [`forward`]: carrying the runtime's routing out: [`ClusterRemote`]
//!   (the runtime's `Remote` over a transport) and the receiving
//!   [`NodeHandler`].
//! - [`rebalance`]: planned moves (pure): a newcomer's share on join, and
//!   every actor of a draining node.
//!
//! Placement (who owns which actor, leases, fencing epochs) lives in
//! `kelpie-registry`; this crate asks it, never duplicates it. Time, tasks
//! and randomness come from `kelpie_core::Env`. Never depends on the server.

pub mod auth;
pub mod backoff;
pub mod error;
pub mod forward;
pub mod frame;
pub mod member;
pub mod membership;
pub mod node_store;
pub mod node_table;
pub mod rebalance;
pub mod server;
pub mod tls;
pub mod transport;

pub use auth::ClusterSecret;
pub use error::{ClusterError, ClusterResult};
pub use forward::{ClusterRemote, HttpForwardHandler, Membership, NodeHandler, RequestKind};
pub use member::{Member, MemberView};
pub use membership::{Liveness, MembershipConfig, NodeStatus};
pub use node_store::{MemoryNodeStore, NodeStore};
pub use node_table::NodeTable;
pub use server::TcpServer;
pub use tls::{ClusterTls, TlsConfigError, CLUSTER_TLS_SERVER_NAME};
pub use transport::{RequestHandler, TcpTransport, Transport, TransportConfig};
