//! What every handler is given: the configuration and the services, not
//! data.

use std::sync::Arc;

use kelpie_agent::cluster::ClusterNode;
use kelpie_agent::AgentService;
use kelpie_core::config::KelpieConfig;

/// The version reported by `GET /v1/health/`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shared state of every handler: services, not data.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<KelpieConfig>,
    pub service: Arc<AgentService>,
    /// This node's part in a cluster; `None` when running alone.
    pub cluster: Option<Arc<ClusterNode>>,
    /// Cancelled when the server stops: ends the MCP endpoint's open streams.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Requests in flight, and whether the server drains (shuts down).
    pub drain: Arc<crate::drain::Drain>,
}
