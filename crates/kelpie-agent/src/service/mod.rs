//! The agent service: every operation of the API on agents and what they
//! hold, as small services composed here. The HTTP layer calls
//! [`AgentService`] and nothing else; each of its parts routes operations to
//! the actors of [`crate::actors`].
//!
//! The parts, each using only those listed before it:
//! - [`tools::ToolService`]: built-in and custom tools, and the runner that
//!   runs tool code in sandboxes;
//! - [`mcp::McpServers`]: MCP servers, their tools and their clients;
//! - [`sandbox_configs::SandboxConfigs`]: the sandbox configuration and the
//!   environment every tool call gets;
//! - [`providers::Providers`]: the LLM providers, configured and created
//!   (`/v1/providers`), the model listing and the resolution of handles;
//!   every model call goes through its [`providers::ProviderRouter`];
//! - [`directory::AgentDirectory`]: the agent listing (shards, creation order);
//! - [`agent_actors::AgentActors`]: the agent actors and what every operation
//!   on one agent needs (its record, its rendering, its turn lock);
//! - [`shared_blocks::SharedBlocks`]: standalone blocks and their copies in agents;
//! - [`agents::Agents`]: create, read, list, modify and delete agents, their
//!   core memory blocks and messages;
//! - [`archives::Archives`]: archives, shared collections of passages that
//!   agents attach and search beside their own;
//! - [`archival::Archival`]: archival memory (passages and their search);
//! - [`turn::Turns`]: the agent loop;
//! - [`runs::Runs`]: every turn as a durable run (sync, streaming, background);
//! - [`conversations::Conversations`]: an agent's other message histories, each
//!   with its own context window, sharing its memory;
//! - [`steps::Steps`]: the steps of the runs, found by id;
//! - [`batches::Batches`]: message batches, a background run per agent;
//! - [`messages::Messages`]: messages across agents, by id and by search;
//! - [`reclaim::Reclaimer`]: deleting, in the background, what deletes,
//!   resets and abandoned imports leave in storage, and the folders and
//!   MCP servers of imports that never decided;
//! - [`folders::Folders`]: folders and their files (upload, list, delete);
//! - [`agent_files::AgentFiles`]: an agent's folders, open files and file tools;
//! - [`documents::Documents`]: processing uploads into text and passages,
//!   in the background, resumed after a crash;
//! - [`groups::Groups`]: multi-agent groups, their sleeptime agents after
//!   their manager's turns and their round robin turns;
//! - [`decided_imports::DecidedImports`]: imports past their decision,
//!   rolled forward to the end (by the import, or after a crash);
//! - [`transfer::Transfer`]: export and import of agents (with their
//!   conversations, and a Letta file's groups and shared blocks);
//! - [`tool_generation::ToolGenerator`]: tools a model writes from a prompt;
//! - [`embeddings::EmbeddingStorage`]: the estimated size of the stored
//!   embeddings.

pub mod agent_actors;
pub mod agent_files;
pub mod agents;
pub mod archival;
pub mod archives;
pub mod batches;
pub mod conversations;
pub mod decided_imports;
pub mod directory;
pub mod documents;
pub mod embeddings;
pub mod folders;
pub mod groups;
pub mod identities;
mod locks;
pub mod mcp;
pub mod mcp_clients;
pub mod mcp_oauth;
pub mod messages;
pub mod providers;
pub mod reclaim;
pub mod runs;
pub mod sandbox_configs;
pub mod shared_blocks;
pub mod steps;
pub mod tool_generation;
pub mod tools;
pub mod transfer;
pub mod turn;
pub mod turn_router;
mod worker;

use std::future::Future;
use std::sync::Arc;

use kelpie_core::{ActorId, Env, Result};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::ChatModel;
use kelpie_runtime::Runtime;
use kelpie_tools::ToolRunner;

use crate::actors::agent::AgentActor;
use crate::actors::block_store::BlockStoreActor;
use crate::actors::directory::DirectoryActor;
use crate::actors::reclaim::ReclaimActor;
use crate::actors::run_store::RunActor;
use crate::actors::sandbox_config_store::SandboxConfigActor;
use crate::actors::tool_store::ToolStoreActor;
use crate::error::ServiceResult;
use agent_actors::AgentActors;
use agents::Agents;
use archival::Archival;
use directory::AgentDirectory;
use reclaim::Reclaimer;
use runs::Runs;
use sandbox_configs::SandboxConfigs;
use shared_blocks::SharedBlocks;
use tools::ToolService;
use transfer::Transfer;
use turn::Turns;

/// The actor runtimes the agent service routes commands to.
pub struct AgentRuntimes {
    pub agents: Runtime<AgentActor>,
    pub directory: Runtime<DirectoryActor>,
    pub runs: Runtime<RunActor>,
    pub run_pointers: Runtime<crate::actors::run_store::RunPointerActor>,
    /// The runs this process is running, shared with the agent actors.
    pub live_runs: Arc<crate::model::LiveRuns>,
    pub run_index: Runtime<crate::actors::run_store::RunIndexActor>,
    pub blocks: Runtime<BlockStoreActor>,
    pub tool_store: Runtime<ToolStoreActor>,
    pub sandbox_configs: Runtime<SandboxConfigActor>,
    pub reclaim: Runtime<ReclaimActor>,
    pub identities: Runtime<crate::actors::identity_store::IdentityStoreActor>,
    pub groups: Runtime<crate::actors::group_store::GroupStoreActor>,
    pub providers: Runtime<crate::actors::provider_store::ProviderStoreActor>,
    pub folder_store: Runtime<crate::actors::folder_store::FolderStoreActor>,
    pub folders: Runtime<crate::actors::folder::FolderActor>,
    pub batches: Runtime<crate::actors::batch::BatchActor>,
    pub batch_index: Runtime<crate::actors::batch::BatchIndexActor>,
    pub archive_store: Runtime<crate::actors::archive_store::ArchiveStoreActor>,
    pub archives: Runtime<crate::actors::archive::ArchiveActor>,
    /// The defect a test planted in this service, if any (see [`crate::planted`]).
    pub planted: crate::planted::Planted,
}

pub struct AgentService {
    pub tools: Arc<ToolService>,
    pub mcp_servers: mcp::McpServers,
    pub sandbox_configs: Arc<SandboxConfigs>,
    pub catalog: ModelCatalog,
    pub providers: Arc<providers::Providers>,
    pub agents: Arc<Agents>,
    pub blocks: Arc<SharedBlocks>,
    pub groups: Arc<groups::Groups>,
    pub conversations: conversations::Conversations,
    pub identities: identities::Identities,
    pub archival: Archival,
    pub archives: Arc<archives::Archives>,
    pub turns: Arc<Turns>,
    pub runs: Arc<Runs>,
    pub batches: Arc<batches::Batches>,
    pub messages: messages::Messages,
    pub transfer: Transfer,
    pub decided_imports: Arc<decided_imports::DecidedImports>,
    pub reclaimer: Arc<Reclaimer>,
    pub folders: Arc<folders::Folders>,
    pub agent_files: Arc<agent_files::AgentFiles>,
    pub documents: Arc<documents::Documents>,
    pub tool_generator: tool_generation::ToolGenerator,
    pub embedding_storage: embeddings::EmbeddingStorage,
    directory: Arc<AgentDirectory>,
    actors: Arc<AgentActors>,
    env: Env,
    planted: crate::planted::Planted,
}

impl AgentService {
    pub fn new(
        runtimes: AgentRuntimes,
        env: Env,
        llm: Arc<dyn ChatModel>,
        catalog: ModelCatalog,
        runner: Arc<ToolRunner>,
    ) -> Self {
        let tools = Arc::new(ToolService::new(runtimes.tool_store, Arc::clone(&runner), env.clone()));
        let mcp_servers = mcp::McpServers::new(Arc::clone(&tools), env.clone());
        let sandbox_configs = Arc::new(SandboxConfigs::new(runtimes.sandbox_configs, runner, env.clone()));
        let providers = Arc::new(providers::Providers::new(runtimes.providers, catalog.clone(), env.clone()));
        let llm: Arc<dyn ChatModel> = Arc::new(providers::ProviderRouter::new(llm, Arc::clone(&providers)));
        let directory = Arc::new(AgentDirectory::new(runtimes.directory, env.clone()));
        let actors = Arc::new(AgentActors::new(runtimes.agents, Arc::clone(&tools), runtimes.groups.clone()));
        let blocks = Arc::new(SharedBlocks::new(Arc::clone(&actors), runtimes.blocks, env.clone()));
        let folders = Arc::new(folders::Folders::new(
            runtimes.folder_store,
            runtimes.folders,
            Arc::clone(&providers),
            env.clone(),
        ));
        // What imports make of MCP servers, and the reclaimer takes back.
        let import_mcp = Arc::new(mcp::McpServers::new(Arc::clone(&tools), env.clone()));
        let reclaimer = Arc::new(Reclaimer::new(
            runtimes.reclaim,
            Arc::clone(&actors),
            (Arc::clone(&folders), Arc::clone(&import_mcp)),
            env.clone(),
        ));
        let agents = Arc::new(Agents::new(
            Arc::clone(&actors),
            Arc::clone(&directory),
            Arc::clone(&blocks),
            Arc::clone(&reclaimer),
            Arc::clone(&tools),
            Arc::clone(&providers),
            (env.clone(), runtimes.planted.clone()),
        ));
        let identities = identities::Identities::new(
            runtimes.identities,
            Arc::clone(&actors),
            Arc::clone(&blocks),
            env.clone(),
        );
        let archives = Arc::new(archives::Archives::new(
            (runtimes.archive_store, runtimes.archives),
            Arc::clone(&actors),
            Arc::clone(&llm),
            catalog.clone(),
            env.clone(),
        ));
        let archival = Archival::new(Arc::clone(&actors), Arc::clone(&archives), Arc::clone(&llm));
        let agent_files = Arc::new(agent_files::AgentFiles::new(
            Arc::clone(&folders),
            Arc::clone(&actors),
            Arc::clone(&llm),
            env.clone(),
        ));
        let documents = Arc::new(documents::Documents::new(
            Arc::clone(&folders),
            Arc::clone(&agent_files),
            Arc::clone(&llm),
            env.clone(),
        ));
        let turns = Arc::new(Turns::new(
            Arc::clone(&actors),
            (Arc::clone(&agent_files), Arc::clone(&archives)),
            Arc::clone(&tools),
            Arc::clone(&sandbox_configs),
            Arc::clone(&llm),
            Arc::clone(&providers),
            env.clone(),
        ));
        let runs = Arc::new(Runs::new(
            Arc::clone(&actors),
            Arc::clone(&directory),
            Arc::clone(&turns),
            (runtimes.runs, runtimes.run_pointers, runtimes.run_index),
            runtimes.live_runs,
            env.clone(),
            runtimes.planted.clone(),
        ));
        let batches = batches::Batches::new(
            (runtimes.batches, runtimes.batch_index),
            Arc::clone(&runs),
            Arc::clone(&actors),
            tools.runner().settings().mcp.allow_internal_urls,
            env.clone(),
        );
        let groups = groups::Groups::new(
            runtimes.groups,
            Arc::clone(&actors),
            (Arc::clone(&agents), Arc::clone(&blocks)),
            Arc::clone(&runs),
            env.clone(),
        );
        let messages = messages::Messages::new(Arc::clone(&actors), Arc::clone(&directory));
        let conversations = conversations::Conversations::new(
            (Arc::clone(&actors), Arc::clone(&directory), Arc::clone(&agents)),
            (Arc::clone(&turns), Arc::clone(&runs)),
            Arc::clone(&reclaimer),
            env.clone(),
        );
        let tool_generator = tool_generation::ToolGenerator::new(
            Arc::clone(&tools),
            Arc::clone(&llm),
            Arc::clone(&providers),
            env.clone(),
        );
        let embedding_storage = embeddings::EmbeddingStorage::new(
            Arc::clone(&directory),
            Arc::clone(&actors),
            Arc::clone(&archives),
        );
        let decided_imports = Arc::new(decided_imports::DecidedImports::new(
            Arc::clone(&reclaimer),
            Arc::clone(&actors),
            Arc::clone(&directory),
            (Arc::clone(&blocks), Arc::clone(&groups), Arc::clone(&agent_files)),
            Arc::clone(&import_mcp),
            env.clone(),
        ));
        let transfer = Transfer::new(
            Arc::clone(&actors),
            (Arc::clone(&tools), Arc::clone(&reclaimer)),
            (Arc::clone(&decided_imports), Arc::clone(&groups)),
            (llm, catalog.clone()),
            (Arc::clone(&folders), import_mcp),
            env.clone(),
        );
        AgentService {
            tools,
            mcp_servers,
            sandbox_configs,
            catalog,
            providers,
            agents,
            blocks,
            groups,
            conversations,
            identities,
            archival,
            archives,
            turns,
            runs,
            batches,
            messages,
            transfer,
            decided_imports,
            reclaimer,
            folders,
            agent_files,
            documents,
            tool_generator,
            embedding_storage,
            directory,
            actors,
            env,
            planted: runtimes.planted,
        }
    }

    /// The steps of the runs (`/v1/steps/`).
    pub fn steps(&self) -> steps::Steps<'_> {
        steps::Steps::new(&self.runs, &self.actors)
    }

    /// The randomness ids are drawn from.
    pub fn rng(&self) -> &dyn kelpie_core::RngSource {
        self.env.rng.as_ref()
    }

    /// Moves the agents of a data dir from before the directory was sharded
    /// into the shards; how many were moved.
    /// The environment (clock, rng, spawner) the service runs on.
    pub fn env(&self) -> &Env {
        &self.env
    }

    pub async fn migrate_legacy_directory(&self) -> ServiceResult<usize> {
        self.directory.migrate_legacy().await
    }

    /// The agents active on this node, least recently used first.
    pub fn active_agents(&self) -> Vec<ActorId> {
        self.actors.active()
    }

    /// Whether agent `actor_id` is active on this node (so a request for
    /// it is served here without asking the directory who owns it).
    pub fn is_agent_active(&self, actor_id: &ActorId) -> bool {
        self.actors.is_active(actor_id)
    }

    /// Sets where the service's multi-agent operations (groups, batches)
    /// run the turns of agents other nodes own (see [`turn_router`]); set
    /// once, by the server of a cluster node.
    pub fn set_turn_router(&self, router: Arc<dyn turn_router::TurnRouter>) {
        self.runs.set_turn_router(router);
    }

    /// Creates an agent (see [`Agents::create`]) and links it to the
    /// identities the request names, which must exist (404 before anything
    /// is created).
    pub async fn create_agent(
        &self,
        request: crate::requests::CreateAgent,
        idempotency_key: Option<&str>,
    ) -> ServiceResult<serde_json::Value> {
        let identity_ids = request.identity_ids.clone().unwrap_or_default();
        for identity_id in &identity_ids {
            self.identities.get(identity_id).await?;
        }
        let sleeptime = request.enable_sleeptime == Some(true);
        let mut agent = self.agents.create(request, idempotency_key).await?;
        let agent_id = agent["id"].as_str().unwrap_or_default().to_string();
        for identity_id in &identity_ids {
            agent = self.identities.link_agent(&agent_id, identity_id, true).await?;
        }
        if sleeptime {
            // All or nothing for the client: an agent whose sleeptime agent
            // could not be made is deleted again and the reason answered.
            if let Err(err) = self.groups.add_sleeptime_agent(&agent_id).await {
                if let Err(cleanup) = self.delete_agent(&agent_id).await {
                    tracing::warn!(error = %cleanup, agent_id, "an agent without its sleeptime agent was not deleted");
                }
                return Err(err);
            }
            agent = self.agents.get(&agent_id).await?;
        }
        Ok(agent)
    }

    /// `PATCH /v1/agents/{id}`: [`Agents::update`]; turning
    /// `enable_sleeptime` on for an agent that manages no group also makes
    /// its sleeptime agent and group, as Letta does.
    pub async fn update_agent(
        &self,
        agent_id: &str,
        request: crate::requests::UpdateAgent,
    ) -> ServiceResult<serde_json::Value> {
        let sleeptime = request.enable_sleeptime == Some(true);
        let agent = self.agents.update(agent_id, request).await?;
        if !sleeptime {
            return Ok(agent);
        }
        self.groups.add_sleeptime_agent(agent_id).await?;
        self.agents.get(agent_id).await
    }

    /// `GET /v1/agents/`: [`Agents::list`], of the agents of identity
    /// `identity_id` only when given (404 for an unknown identity).
    pub async fn list_agents(
        &self,
        (name, tags, match_all): (Option<&str>, &[String], bool),
        identity_id: Option<&str>,
        page: &crate::page::Page,
    ) -> ServiceResult<Vec<serde_json::Value>> {
        let among = match identity_id {
            Some(identity_id) => {
                let identity = self.identities.get(identity_id).await?;
                let ids = identity["agent_ids"].as_array().cloned().unwrap_or_default();
                Some(ids.iter().filter_map(|id| id.as_str().map(str::to_string)).collect::<Vec<_>>())
            }
            None => None,
        };
        self.agents.list_among(name, (tags, match_all), among.as_deref(), page).await
    }

    /// Deletes agent `agent_id`, and forgets it in the identities, the
    /// groups, the archives and the folders.
    pub async fn delete_agent(&self, agent_id: &str) -> ServiceResult<serde_json::Value> {
        let deleted = self.agents.delete(agent_id).await?;
        self.identities.forget(agent_id).await?;
        self.groups.forget_agent(agent_id).await?;
        self.archives.forget_agent(agent_id).await?;
        self.agent_files.forget_agent(agent_id).await?;
        Ok(deleted)
    }

    /// Deletes standalone block `block_id`, and forgets it in the identities and groups.
    pub async fn delete_block(&self, block_id: &str) -> ServiceResult<serde_json::Value> {
        let deleted = self.blocks.delete(block_id).await?;
        self.identities.forget(block_id).await?;
        self.groups.forget_block(block_id).await?;
        Ok(deleted)
    }

    /// Activates agent `actor_id` here (claims it) without running anything;
    /// refused when another node holds it.
    pub async fn activate_agent(&self, actor_id: &ActorId) -> Result<()> {
        self.actors.activate(actor_id).await
    }

    /// Deactivates agent `actor_id` here under its turn lock, then runs
    /// `complete` (the target node's claim) before letting turns proceed.
    pub async fn hand_off<F>(&self, actor_id: &ActorId, complete: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        self.actors.hand_off(actor_id, complete).await
    }

    /// Stops the runs in flight (each records its end) and finishes every
    /// activation (their state is already committed).
    pub async fn shutdown(&self) {
        // Watchers first: one woken by the runs' stop could post a callback
        // the stop then cuts short of being recorded (and sent again).
        self.batches.shutdown().await;
        self.runs.stop_all().await;
        self.decided_imports.shutdown();
        self.reclaimer.shutdown().await;
        self.documents.shutdown().await;
        if !self.planted.has(crate::planted::PlantedBug::ShutdownLeavesAgentsServing) {
            self.actors.shutdown().await;
        }
        self.runs.shutdown().await;
        self.directory.shutdown().await;
        self.blocks.shutdown().await;
        self.identities.shutdown().await;
        self.groups.shutdown().await;
        self.providers.shutdown().await;
        self.folders.shutdown().await;
        self.archives.shutdown().await;
        self.tools.shutdown().await;
        self.sandbox_configs.shutdown().await;
    }
}
