//! The Letta-compatible HTTP API (port 8283 by default).
//!
//! Handlers parse and validate, call a service, and map errors to status
//! codes through [`error::ApiError`]; nothing else. Routers are one module per
//! resource under [`routes`], composed in [`app`]. [`serve`] binds the
//! listener and runs until the shutdown future completes.
//!
//! Agents live in [`agent`]: each is a virtual actor of kelpie-runtime whose
//! state is in kelpie-storage; [`agent::service::AgentService`] is the one
//! service the handlers call. LLM providers are in [`llm`], the model
//! catalog in [`models`]. What is and is not served yet: `docs/server.md`.

pub mod agent;
pub mod api;
pub mod cluster;
pub mod error;
pub mod ids;
pub mod llm;
pub mod models;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use kelpie_core::config::{KelpieConfig, StorageConfig};
use kelpie_core::Env;
use kelpie_registry::{PlacementDirectory, Registry, StoragePlacementStore};
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_storage::Storage;
use thiserror::Error;

use agent::actor::{AgentActor, AGENT_NAMESPACE};
use agent::block_store::{BlockStoreActor, BLOCK_STORE_ACTOR};
use agent::directory::{DirectoryActor, DIRECTORY_NAMESPACE};
use agent::runs::{RunActor, RUN_NAMESPACE};
use agent::service::{AgentRuntimes, AgentService};
use agent::tool_service::ToolService;
use agent::tool_store::{ToolStoreActor, TOOL_STORE_ACTOR};
use cluster::ClusterNode;
use kelpie_cluster::NodeHandler;
use llm::anthropic::AnthropicClient;
use llm::openai::OpenAiClient;
use llm::LlmClients;
use models::ModelCatalog;

/// The version reported by `GET /v1/health/`.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shared state of every handler: services, not data.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<KelpieConfig>,
    pub storage: Storage,
    pub agents: Arc<AgentService>,
    /// This node's part in a cluster; `None` when running alone.
    pub cluster: Option<Arc<ClusterNode>>,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot create data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot open {backend} storage: {reason}")]
    Storage { backend: &'static str, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("server failed: {0}")]
    Serve(String),
    #[error("cannot start the agent service: {0}")]
    Service(String),
    #[error("cluster: {0}")]
    Cluster(String),
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
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.bind)
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    /// In a cluster, leaving is a drain: the node is marked draining (no
    /// new activations come here), its actors finish their queued work,
    /// save and release their placements, then it is marked left.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let agents = Arc::clone(&self.state.agents);
        let cluster = self.state.cluster.clone();
        let served = axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServerError::Serve(e.to_string()));
        match cluster {
            Some(cluster) => {
                let drain = async {
                    cluster.drain(&agents).await;
                    agents.shutdown().await;
                };
                let left = cluster.member.leave(drain).await;
                cluster.stop_listening();
                left.map_err(|e| ServerError::Cluster(format!("leave: {e}")))?;
            }
            None => agents.shutdown().await,
        }
        served
    }
}

/// Prepares the data dir, opens the configured storage and binds the
/// configured address; any failure is reported before serving starts.
pub async fn bind(config: KelpieConfig) -> Result<BoundServer, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::DataDir {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let storage = open_storage(&config.storage).await?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| ServerError::Bind { addr: config.bind, reason: e.to_string() })?;
    let (cluster, placement) = match (&config.cluster, &config.storage) {
        (Some(cluster), StorageConfig::Postgres { database_url, .. }) => {
            let node = ClusterNode::start(
                database_url,
                config.node_id.clone(),
                (cluster.advertise, cluster.listen),
                Env::production(),
            )
            .await?;
            let placement =
                Placement::Cluster { directory: node.directory.clone(), remote: node.remote.clone() };
            (Some(Arc::new(node)), placement)
        }
        (Some(_), _) => return Err(ServerError::Cluster("a cluster needs PostgreSQL storage".into())),
        (None, _) => (None, Placement::Local),
    };
    let (agents, handler) = agent_service(&config, &storage, &placement)?;
    let migrated =
        agents.migrate_legacy_directory().await.map_err(|e| ServerError::Service(e.to_string()))?;
    if migrated > 0 {
        tracing::info!(migrated, "moved agents of the unsharded directory into its shards");
    }
    let state =
        AppState { config: Arc::new(config), storage, agents: Arc::new(agents), cluster: cluster.clone() };
    if let Some(cluster) = &cluster {
        cluster.listen(handler, app(state.clone())).await?;
        cluster.start_rebalancing(Arc::clone(&state.agents));
    }
    Ok(BoundServer { listener, state })
}

/// Where the agent service's actors are placed: on this node only, or in a
/// cluster (leases in the shared PostgreSQL, other nodes reached through
/// the cluster's transport).
#[derive(Clone)]
pub enum Placement {
    Local,
    Cluster { directory: Arc<dyn PlacementDirectory>, remote: Arc<kelpie_cluster::ClusterRemote> },
}

/// The agent service over `storage`: the agent, directory, run, block store
/// and tool store runtimes, the LLM client and the model catalog from
/// `config`; in a cluster also the [`NodeHandler`] that runs invocations
/// other nodes send here.
pub fn agent_service(
    config: &KelpieConfig,
    storage: &Storage,
    placement: &Placement,
) -> Result<(AgentService, NodeHandler), ServerError> {
    let env = Env::production();
    let service_error = |e: kelpie_core::Error| ServerError::Service(e.to_string());
    let runtime_config = RuntimeConfig::new(config.node_id.clone());
    let parts = RuntimeParts { storage, placement, env: &env, config: &runtime_config };
    let agents = parts.runtime(AgentActor).map_err(service_error)?;
    let directory = parts.runtime(DirectoryActor).map_err(service_error)?;
    let tool_store = parts.runtime(ToolStoreActor).map_err(service_error)?;
    let runs = parts.runtime(RunActor).map_err(service_error)?;
    let blocks = parts.runtime(BlockStoreActor).map_err(service_error)?;
    // In a cluster, other nodes reach these runtimes by actor namespace.
    let handler = match placement {
        Placement::Local => NodeHandler::default(),
        Placement::Cluster { .. } => NodeHandler::default()
            .with_namespace(AGENT_NAMESPACE, Arc::new(agents.clone()))
            .with_namespace(DIRECTORY_NAMESPACE, Arc::new(directory.clone()))
            .with_namespace(TOOL_STORE_ACTOR.0, Arc::new(tool_store.clone()))
            .with_namespace(RUN_NAMESPACE, Arc::new(runs.clone()))
            .with_namespace(BLOCK_STORE_ACTOR.0, Arc::new(blocks.clone())),
    };
    let tools = Arc::new(ToolService::new(tool_store, env.clone()));
    let llm = llm_clients(&config.llm).map_err(|e| ServerError::Service(e.to_string()))?;
    let catalog = ModelCatalog::new(config.llm.clone(), llm.clone());
    let runtimes = AgentRuntimes { agents, directory, runs, blocks };
    Ok((AgentService::new(runtimes, env, llm, catalog, tools), handler))
}

/// What every runtime of the agent service is built from.
struct RuntimeParts<'a> {
    storage: &'a Storage,
    placement: &'a Placement,
    env: &'a Env,
    config: &'a RuntimeConfig,
}

impl RuntimeParts<'_> {
    /// A runtime for `actor`: with its own registry over the store on a
    /// single node, clustered on the shared directory in a cluster.
    fn runtime<A>(&self, actor: A) -> Result<Runtime<A>, kelpie_core::Error>
    where
        A: kelpie_runtime::Actor,
        A::Message: serde::Serialize + serde::de::DeserializeOwned,
        A::Reply: serde::Serialize + serde::de::DeserializeOwned,
    {
        let (storage, env, config) = (self.storage.clone(), self.env.clone(), self.config.clone());
        match self.placement {
            Placement::Local => {
                let store = Arc::new(StoragePlacementStore::new(storage.clone()));
                let registry: Arc<dyn PlacementDirectory> = Arc::new(Registry::new(store, env.clock.clone()));
                Runtime::new(actor, storage, registry, env, config)
            }
            Placement::Cluster { directory, remote } => {
                Runtime::clustered(actor, storage, directory.clone(), env, config, remote.clone())
            }
        }
    }
}

/// The configured LLM providers: OpenAI-compatible always, Anthropic with a key.
fn llm_clients(config: &kelpie_core::config::LlmConfig) -> Result<LlmClients, llm::LlmError> {
    let openai = OpenAiClient::new(&config.openai_base_url, config.openai_api_key.clone())?;
    let anthropic = match &config.anthropic_api_key {
        Some(key) => Some(AnthropicClient::new(&config.anthropic_base_url, key.clone())?),
        None => None,
    };
    Ok(LlmClients { openai, anthropic })
}

async fn open_storage(config: &StorageConfig) -> Result<Storage, ServerError> {
    let opened = match config {
        StorageConfig::Memory => Ok(Storage::memory()),
        StorageConfig::Redb { path } => Storage::open_redb(path),
        StorageConfig::Postgres { database_url, .. } => Storage::connect_postgres(database_url).await,
    };
    let backend = match config {
        StorageConfig::Memory => "memory",
        StorageConfig::Redb { .. } => "redb",
        StorageConfig::Postgres { .. } => "postgres",
    };
    opened.map_err(|e| ServerError::Storage { backend, reason: e.to_string() })
}
