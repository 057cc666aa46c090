//! An agent node: the storage the configuration names, this node's place
//! in a cluster (when configured), and the agent service on runtimes that
//! tie the two together. kelpie-server puts HTTP in front of it.
//!
//! Single node: every runtime has its own registry over the store. Cluster:
//! every runtime is clustered on the shared PostgreSQL registry and reaches
//! actors owned elsewhere through the cluster's transport, and other nodes
//! reach this node's actors by namespace through the [`NodeHandler`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::{ClusterSecret, ClusterTls, HttpForwardHandler, NodeHandler};
use kelpie_core::config::{KelpieConfig, SandboxBackend, SandboxConfig, StorageConfig};
use kelpie_core::Env;
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::LlmClients;
use kelpie_registry::{PlacementDirectory, Registry, StoragePlacementStore};
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_sandbox::gvisor::GvisorBackend;
use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::unsandboxed::UnsandboxedBackend;
use kelpie_sandbox::Backend;
use kelpie_storage::{PostgresBackend, Storage};
use kelpie_tools::{RunnerSettings, ToolRunner};

use crate::actors::agent::{AgentActor, AGENT_NAMESPACE};
use crate::actors::block_store::{BlockStoreActor, BLOCK_STORE_ACTOR};
use crate::actors::directory::{DirectoryActor, DIRECTORY_NAMESPACE};
use crate::actors::reclaim::{ReclaimActor, RECLAIM_ACTOR};
use crate::actors::run_store::{
    RunActor, RunIndexActor, RunPointerActor, RUN_INDEX_ACTOR, RUN_NAMESPACE, RUN_POINTER_NAMESPACE,
};
use crate::actors::sandbox_config_store::{SandboxConfigActor, SANDBOX_CONFIG_ACTOR};
use crate::actors::tool_store::{ToolStoreActor, TOOL_STORE_ACTOR};
use crate::cluster::ClusterNode;
pub use crate::error::NodeError;
use crate::service::{AgentRuntimes, AgentService};

/// The storage a node opened: its actors' data and, on PostgreSQL, the
/// connection pool, which a cluster's placement leases share (one pool of
/// `storage.pool_size` connections per node, not one per use).
#[derive(Clone)]
pub struct NodeStorage {
    pub storage: Storage,
    postgres: Option<Arc<PostgresBackend>>,
}

/// Prepares the data dir and opens the configured storage.
pub async fn open_storage(config: &KelpieConfig) -> Result<NodeStorage, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let failed = |backend| move |e: kelpie_core::Error| NodeError::Storage { backend, reason: e.to_string() };
    match &config.storage {
        StorageConfig::Memory => Ok(NodeStorage { storage: Storage::memory(), postgres: None }),
        StorageConfig::Redb { path } => {
            Ok(NodeStorage { storage: Storage::open_redb(path).map_err(failed("redb"))?, postgres: None })
        }
        StorageConfig::Postgres { database_url, pool_size } => {
            let backend = PostgresBackend::connect_sized(database_url, *pool_size as usize)
                .await
                .map_err(failed("postgres"))?;
            let backend = Arc::new(backend);
            Ok(NodeStorage { storage: Storage::from_backend(backend.clone()), postgres: Some(backend) })
        }
    }
}

/// Where the agent service's actors are placed: on this node only, or in a
/// cluster (leases in the shared PostgreSQL, other nodes reached through
/// the cluster's transport).
#[derive(Clone)]
pub enum Placement {
    Local,
    Cluster { directory: Arc<dyn PlacementDirectory>, remote: Arc<kelpie_cluster::ClusterRemote> },
}

/// How long start-up waits for a peer that holds an actor it needs and
/// does not answer yet (a peer starting at the same moment), in ms.
pub const STARTUP_UNAVAILABLE_WAIT_MS: u64 = 60_000;
/// First pause between start-up attempts, in ms; doubled up to the max.
const STARTUP_RETRY_PAUSE_MS_MIN: u64 = 50;
const STARTUP_RETRY_PAUSE_MS_MAX: u64 = 1_000;

/// The running agent service of this node and its part in a cluster.
pub struct AgentNode {
    pub service: Arc<AgentService>,
    /// `None` when running alone.
    pub cluster: Option<Arc<ClusterNode>>,
    /// What answers other nodes' actor invocations, until [`Self::listen`] takes it.
    handler: Mutex<Option<NodeHandler>>,
    /// The sandbox root, removed at shutdown when nothing is left in it.
    sandbox_dir: std::path::PathBuf,
}

impl AgentNode {
    /// Joins the cluster when configured and builds the agent service over
    /// `storage`. Nothing is served yet: [`Self::listen`] follows.
    pub async fn start(config: &KelpieConfig, opened: &NodeStorage) -> Result<AgentNode, NodeError> {
        let storage = &opened.storage;
        let (cluster, placement) = match (&config.cluster, &config.storage, &opened.postgres) {
            (Some(cluster), StorageConfig::Postgres { database_url, .. }, Some(backend)) => {
                let secret = cluster.secret.as_deref().map(|secret| ClusterSecret::new(secret.as_bytes()));
                if secret.is_none() {
                    tracing::warn!("cluster.trusted_network is set: the cluster transport runs any peer's commands unauthenticated");
                }
                let tls = match &cluster.tls {
                    Some(files) => Some(
                        ClusterTls::from_pem_files(&files.cert, &files.key, &files.ca)
                            .map_err(|err| NodeError::Cluster(err.to_string()))?,
                    ),
                    None => None,
                };
                let node = ClusterNode::start(
                    (database_url, Arc::clone(backend)),
                    config.node_id.clone(),
                    (cluster.advertise, cluster.listen, secret, tls),
                    Env::production(),
                )
                .await?;
                let placement =
                    Placement::Cluster { directory: node.directory.clone(), remote: node.remote.clone() };
                (Some(Arc::new(node)), placement)
            }
            (Some(_), _, _) => return Err(NodeError::Cluster("a cluster needs PostgreSQL storage".into())),
            (None, _, _) => (None, Placement::Local),
        };
        let (service, handler) = agent_service(config, storage, &placement)?;
        let sandbox_dir = config.sandbox.dir.clone();
        Ok(AgentNode { service: Arc::new(service), cluster, handler: Mutex::new(Some(handler)), sandbox_dir })
    }

    /// Starts answering: in a cluster, other nodes (actor invocations, and
    /// whole HTTP requests through `http`) and rebalancing agents onto
    /// nodes that join. Then moves agents of an unsharded directory into
    /// its shards, finishes the imports a crash left past their decision and
    /// starts reclaiming what deletes and abandoned imports left.
    ///
    /// Nodes may start at the same moment: the actors the start-up touches
    /// may be held by a node that is itself starting, so this node answers
    /// its peers before touching them, and waits (up to
    /// `STARTUP_UNAVAILABLE_WAIT_MS`) while the holder is not answering yet.
    pub async fn listen(&self, http: Arc<dyn HttpForwardHandler>) -> Result<(), NodeError> {
        if let Some(cluster) = &self.cluster {
            let handler = self.handler.lock().unwrap_or_else(|p| p.into_inner()).take();
            let handler = handler.ok_or_else(|| NodeError::Cluster("the node listens already".into()))?;
            cluster.listen(handler, http).await?;
            cluster.start_rebalancing(Arc::clone(&self.service));
        }
        let migrated = self.migrate_legacy_directory().await?;
        if migrated > 0 {
            tracing::info!(migrated, "moved agents of the unsharded directory into its shards");
        }
        self.service.decided_imports.start();
        self.service.reclaimer.start();
        self.service.documents.start();
        self.service.archives.start();
        match self.service.runs.recover().await {
            Ok(0) => {}
            Ok(recovered) => {
                tracing::warn!(recovered, "runs left in flight by the last stop were marked failed")
            }
            Err(err) => {
                tracing::warn!(%err, "cannot recover the runs left in flight; they are tried at the next start")
            }
        }
        match self.service.batches.recover().await {
            Ok(0) => {}
            Ok(followed) => tracing::info!(followed, "following the batches the last stop left running"),
            Err(err) => {
                tracing::warn!(%err, "cannot read the running batches; they are followed at the next start")
            }
        }
        Ok(())
    }

    /// The legacy directory's migration, tried again while the node that
    /// holds one of its actors cannot be reached (a peer still starting).
    async fn migrate_legacy_directory(&self) -> Result<usize, NodeError> {
        let clock = self.service.env().clock.clone();
        let started_ms = clock.monotonic_ms();
        let mut pause_ms = STARTUP_RETRY_PAUSE_MS_MIN;
        loop {
            match self.service.migrate_legacy_directory().await {
                Ok(migrated) => return Ok(migrated),
                Err(err)
                    if err.is_unavailable()
                        && clock.monotonic_ms().saturating_sub(started_ms) < STARTUP_UNAVAILABLE_WAIT_MS =>
                {
                    tracing::info!(%err, pause_ms, "a peer holding a directory actor is not answering yet");
                    clock.sleep(Duration::from_millis(pause_ms)).await;
                    pause_ms = (pause_ms * 2).min(STARTUP_RETRY_PAUSE_MS_MAX);
                }
                Err(err) => return Err(NodeError::Service(err.to_string())),
            }
        }
    }

    /// Stops the agent service. In a cluster, leaving is a drain: the node
    /// is marked draining (no new activations come here), its agents are
    /// handed to the other nodes, its actors finish their queued work, save
    /// and release their placements, then it is marked left.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        let Some(cluster) = &self.cluster else {
            self.service.shutdown().await;
            let _ = std::fs::remove_dir(&self.sandbox_dir);
            return Ok(());
        };
        let drain = async {
            cluster.drain(&self.service).await;
            self.service.shutdown().await;
        };
        let left = cluster.member.leave(drain).await;
        cluster.stop_listening();
        let _ = std::fs::remove_dir(&self.sandbox_dir);
        left.map_err(|e| NodeError::Cluster(format!("leave: {e}")))
    }
}

/// The agent service over `storage`: the agent, directory, run, block store
/// and tool store runtimes, the LLM clients and the model catalog from
/// `config`; in a cluster also the [`NodeHandler`] that runs invocations
/// other nodes send here.
pub fn agent_service(
    config: &KelpieConfig,
    storage: &Storage,
    placement: &Placement,
) -> Result<(AgentService, NodeHandler), NodeError> {
    let env = Env::production();
    let runtime_config = RuntimeConfig::new(config.node_id.clone());
    let runtimes = agent_runtimes(storage, placement, &env, &runtime_config)
        .map_err(|e| NodeError::Service(e.to_string()))?;
    // In a cluster, other nodes reach these runtimes by actor namespace.
    let handler = match placement {
        Placement::Local => NodeHandler::default(),
        Placement::Cluster { .. } => NodeHandler::default()
            .with_namespace(AGENT_NAMESPACE, Arc::new(runtimes.agents.clone()))
            .with_namespace(DIRECTORY_NAMESPACE, Arc::new(runtimes.directory.clone()))
            .with_namespace(TOOL_STORE_ACTOR.0, Arc::new(runtimes.tool_store.clone()))
            .with_namespace(RUN_NAMESPACE, Arc::new(runtimes.runs.clone()))
            .with_namespace(RUN_INDEX_ACTOR.0, Arc::new(runtimes.run_index.clone()))
            .with_namespace(RUN_POINTER_NAMESPACE, Arc::new(runtimes.run_pointers.clone()))
            .with_namespace(BLOCK_STORE_ACTOR.0, Arc::new(runtimes.blocks.clone()))
            .with_namespace(SANDBOX_CONFIG_ACTOR.0, Arc::new(runtimes.sandbox_configs.clone()))
            .with_namespace(RECLAIM_ACTOR.0, Arc::new(runtimes.reclaim.clone()))
            .with_namespace(
                crate::actors::identity_store::IDENTITY_STORE_ACTOR.0,
                Arc::new(runtimes.identities.clone()),
            )
            .with_namespace(
                crate::actors::group_store::GROUP_STORE_ACTOR.0,
                Arc::new(runtimes.groups.clone()),
            )
            .with_namespace(
                crate::actors::provider_store::PROVIDER_STORE_ACTOR.0,
                Arc::new(runtimes.providers.clone()),
            )
            .with_namespace(
                crate::actors::folder_store::FOLDER_STORE_ACTOR.0,
                Arc::new(runtimes.folder_store.clone()),
            )
            .with_namespace(crate::actors::folder::FOLDER_NAMESPACE, Arc::new(runtimes.folders.clone()))
            .with_namespace(crate::actors::batch::BATCH_NAMESPACE, Arc::new(runtimes.batches.clone()))
            .with_namespace(crate::actors::batch::BATCH_INDEX_ACTOR.0, Arc::new(runtimes.batch_index.clone()))
            .with_namespace(
                crate::actors::archive_store::ARCHIVE_STORE_ACTOR.0,
                Arc::new(runtimes.archive_store.clone()),
            )
            .with_namespace(crate::actors::archive::ARCHIVE_NAMESPACE, Arc::new(runtimes.archives.clone())),
    };
    let llm = LlmClients::from_config(&config.llm).map_err(|e| NodeError::Service(e.to_string()))?;
    let catalog = ModelCatalog::new(config.llm.clone(), llm.clone());
    let runner = Arc::new(tool_runner(&config.sandbox));
    Ok((AgentService::new(runtimes, env, Arc::new(llm), catalog, runner), handler))
}

/// Every runtime of the agent service, placed as `placement` says, on
/// `env` (the production environment, or a simulated node's).
pub fn agent_runtimes(
    storage: &Storage,
    placement: &Placement,
    env: &Env,
    config: &RuntimeConfig,
) -> Result<AgentRuntimes, kelpie_core::Error> {
    let parts = RuntimeParts { storage, placement, env, config };
    let live_runs = Arc::new(crate::model::LiveRuns::default());
    // The boot id is drawn at every start: the runs this process begins are its own.
    let boot_id = crate::ids::new_id("boot", env.rng.as_ref());
    let planted = crate::planted::Planted::default();
    let folders = crate::actors::folder::FolderActor::new(planted.clone());
    Ok(AgentRuntimes {
        agents: parts.runtime(AgentActor::new(boot_id, Arc::clone(&live_runs), planted.clone()))?,
        live_runs,
        planted,
        directory: parts.runtime(DirectoryActor)?,
        runs: parts.runtime(RunActor)?,
        run_pointers: parts.runtime(RunPointerActor)?,
        run_index: parts.runtime(RunIndexActor)?,
        blocks: parts.runtime(BlockStoreActor)?,
        tool_store: parts.runtime(ToolStoreActor)?,
        sandbox_configs: parts.runtime(SandboxConfigActor)?,
        reclaim: parts.runtime(ReclaimActor)?,
        identities: parts.runtime(crate::actors::identity_store::IdentityStoreActor)?,
        groups: parts.runtime(crate::actors::group_store::GroupStoreActor)?,
        providers: parts.runtime(crate::actors::provider_store::ProviderStoreActor)?,
        folder_store: parts.runtime(crate::actors::folder_store::FolderStoreActor)?,
        folders: parts.runtime(folders)?,
        batches: parts.runtime(crate::actors::batch::BatchActor)?,
        batch_index: parts.runtime(crate::actors::batch::BatchIndexActor)?,
        archive_store: parts.runtime(crate::actors::archive_store::ArchiveStoreActor)?,
        archives: parts.runtime(crate::actors::archive::ArchiveActor::default())?,
    })
}

/// The sandbox backend `config` names, and the runner of tool code on it.
/// A backend this machine cannot run is reported here, at start, and again
/// by every tool it would run; `none` is never chosen without being named.
pub fn tool_runner(config: &SandboxConfig) -> ToolRunner {
    let sandboxes = config.dir.join("run");
    let backend: Arc<dyn Backend> = match config.backend {
        SandboxBackend::Process => Arc::new(ProcessBackend::open(sandboxes)),
        SandboxBackend::Gvisor => Arc::new(GvisorBackend::open(sandboxes)),
        SandboxBackend::None => {
            tracing::warn!("sandbox.backend is \"none\": tool code runs unsandboxed, as the server's user, with its files, network and secrets in reach");
            Arc::new(UnsandboxedBackend::open(sandboxes))
        }
    };
    if let Err(err) = backend.check_available() {
        tracing::warn!(%err, "custom tools cannot run until this is fixed");
    }
    let mut settings = RunnerSettings::new(config.python.clone(), config.dir.join("pip"));
    settings.pip_index_url = config.pip_index_url.clone();
    settings.warm_sandboxes_count = config.warm_count;
    settings.fork_server_calls_max = config.fork_server_calls;
    settings.mcp = kelpie_tools::mcp::McpSettings {
        allow_internal_urls: config.mcp_allow_internal_urls,
        stdio_network: config.mcp_stdio_network,
    };
    ToolRunner::new(backend, settings)
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
