//! The Letta-compatible HTTP API (port 8283 by default): HTTP and nothing
//! else.
//!
//! Handlers parse and validate, call the agent service of kelpie-agent, and
//! map its errors to status codes through [`error::ApiError`]. Routers are
//! one module per resource under [`routes`], composed in [`app`] behind the
//! bearer-token check and, in a cluster, [`forward`], which sends requests
//! about an agent to the node that owns it. [`bind`] opens the node and binds
//! the listener; [`BoundServer::run`] serves until the shutdown future
//! completes. What is and is not served yet: `docs/server.md`.

pub mod api;
pub mod drain;
pub mod error;
pub mod forward;
pub mod mcp_server;
pub mod routes;
pub mod state;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kelpie_agent::node::{open_storage, AgentNode, NodeError};
use kelpie_agent::AgentService;
use kelpie_core::config::KelpieConfig;
use thiserror::Error;

pub use state::AppState;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("server failed: {0}")]
    Serve(String),
}

/// The full router with every resource mounted.
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// A listener bound and ready, so callers (and tests) learn the real port
/// before requests arrive.
pub struct BoundServer {
    listener: tokio::net::TcpListener,
    state: AppState,
    node: AgentNode,
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.bind)
    }

    /// Sets the least time the drain at shutdown lasts (default
    /// `drain::SHUTDOWN_DRAIN_MS_MIN`): an embedder whose clients hold no
    /// keep-alive connections (tests) may stop at once.
    pub fn set_drain_least_ms(&self, least_ms: u64) {
        self.state.drain.set_least_ms(least_ms);
    }

    /// The agent service behind the routes (for embedders and tests).
    pub fn service(&self) -> Arc<AgentService> {
        Arc::clone(&self.state.service)
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests
    /// and shuts the node down (in a cluster: drains it and leaves).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let token = self.state.shutdown.clone();
        let drain = Arc::clone(&self.state.drain);
        let shutdown = async move {
            shutdown.await;
            // New requests get 503 while those in flight end (drain.rs).
            drain.drain().await;
            token.cancel();
        };
        let served = axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServerError::Serve(e.to_string()));
        self.node.shutdown().await?;
        served
    }
}

/// Prepares the data dir, opens the configured storage, binds the
/// configured address and starts the node; any failure is reported before
/// serving starts.
pub async fn bind(config: KelpieConfig) -> Result<BoundServer, ServerError> {
    let storage = open_storage(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| ServerError::Bind { addr: config.bind, reason: e.to_string() })?;
    let node = AgentNode::start(&config, &storage).await?;
    let state = AppState {
        config: Arc::new(config),
        service: Arc::clone(&node.service),
        cluster: node.cluster.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        drain: Arc::default(),
    };
    if let Some(cluster) = &node.cluster {
        // Groups and batches run their agents' turns on the agents' owners.
        let api_key = state.config.api_key.clone();
        let router = forward::OwnerRouter::new(Arc::clone(cluster), Arc::downgrade(&node.service), api_key);
        node.service.set_turn_router(Arc::new(router));
    }
    node.listen(Arc::new(forward::HttpForwarder::new(app(state.clone())))).await?;
    Ok(BoundServer { listener, state, node })
}
