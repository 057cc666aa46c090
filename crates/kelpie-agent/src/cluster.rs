//! This node's part in a cluster (`kelpie serve --cluster`): membership,
//! placement and the moves of agents between nodes. HTTP is not here:
//! kelpie-server forwards client requests and hands them to [`ClusterNode::listen`].
//!
//! - [`ClusterNode::start`] joins the membership (node table in the shared
//!   PostgreSQL), opens the placement registry whose leases are judged by
//!   the database's clock, and builds the [`ClusterRemote`] the clustered
//!   runtimes forward single actor invocations through.
//! - [`ClusterNode::listen`] answers other nodes: actor invocations through
//!   the runtimes' [`NodeHandler`], whole HTTP requests about an agent through
//!   the HTTP layer's handler (see docs/cluster.md, "Forwarding").
//! - Planned moves of agents: a share of this node's agents to each node
//!   that joins ([`ClusterNode::start_rebalancing`]), all of them to the
//!   other nodes when this one leaves ([`ClusterNode::drain`]). One move runs
//!   under the agent's turn lock ([`AgentService::hand_off`]): a turn in
//!   progress finishes on the old owner and the next one waits for the move;
//!   the activation finishes its queued work, saves and releases its lease,
//!   then the target claims it. A request that meets the agent mid-move
//!   fails with a retriable error or waits, then reaches the new owner; none
//!   is applied twice because every commit is fenced.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::forward::{encode_forwarded, encode_request};
use kelpie_cluster::rebalance::{self, REBALANCE_INTERVAL_MS};
use kelpie_cluster::transport::REQUEST_TIMEOUT_MS_DEFAULT;
use kelpie_cluster::{
    ClusterRemote, ClusterSecret, ClusterTls, HttpForwardHandler, Liveness, Member, MemberView,
    MembershipConfig, NodeHandler, NodeTable, RequestKind, TcpServer, TcpTransport, TransportConfig,
};
use kelpie_core::limits::{HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS};
use kelpie_core::{ActorId, Env, NodeId};
use kelpie_registry::{PlacementDirectory, PostgresRegistry};
use kelpie_storage::PostgresBackend;

use crate::error::NodeError;
use crate::service::AgentService;

/// This node's part in the cluster.
pub struct ClusterNode {
    pub node_id: NodeId,
    pub member: Member,
    pub remote: Arc<ClusterRemote>,
    pub directory: Arc<dyn PlacementDirectory>,
    /// The transport server, started once the router exists.
    server: Mutex<Option<TcpServer>>,
    listen: SocketAddr,
    /// How the transport speaks, both ways (limits, the cluster secret).
    transport_config: TransportConfig,
    /// The rebalancing loop runs while this is set.
    rebalancing: AtomicBool,
    env: Env,
}

impl ClusterNode {
    /// Joins the cluster on `database_url` as `node_id`, reachable at
    /// `advertise`; the transport will listen on `listen`, every
    /// connection either way proves `secret` (none: a trusted network) and
    /// runs inside TLS when `tls` is given.
    pub async fn start(
        (database_url, backend): (&str, Arc<PostgresBackend>),
        node_id: NodeId,
        (advertise, listen, secret, tls): (SocketAddr, SocketAddr, Option<ClusterSecret>, Option<ClusterTls>),
        env: Env,
    ) -> Result<ClusterNode, NodeError> {
        let transport_config = TransportConfig { secret, tls, ..TransportConfig::default() };
        let directory: Arc<dyn PlacementDirectory> = Arc::new(PostgresRegistry::new(backend));
        let cluster_error = |e: kelpie_cluster::ClusterError| NodeError::Cluster(e.to_string());
        let table = NodeTable::connect(database_url).await.map_err(cluster_error)?;
        let membership = MembershipConfig::new(HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS);
        let member = Member::join(table, env.clone(), node_id.clone(), advertise, membership)
            .await
            .map_err(cluster_error)?;
        let transport = Arc::new(TcpTransport::new(env.clone(), transport_config.clone()));
        let remote = Arc::new(ClusterRemote::new(
            Arc::new(member.clone()),
            transport,
            env.clone(),
            REQUEST_TIMEOUT_MS_DEFAULT,
        ));
        Ok(ClusterNode {
            node_id,
            member,
            remote,
            directory,
            server: Mutex::new(None),
            listen,
            transport_config,
            rebalancing: AtomicBool::new(false),
            env,
        })
    }

    /// Starts answering other nodes: actor invocations through `handler`,
    /// forwarded HTTP requests through `http`.
    pub async fn listen(
        &self,
        handler: NodeHandler,
        http: Arc<dyn HttpForwardHandler>,
    ) -> Result<(), NodeError> {
        let handler = handler.with_http(http);
        let server =
            TcpServer::bind(self.listen, Arc::new(handler), self.env.clone(), self.transport_config.clone())
                .await
                .map_err(|e| NodeError::Bind { addr: self.listen, reason: e.to_string() })?;
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        Ok(())
    }

    /// Stops answering other nodes.
    pub fn stop_listening(&self) {
        if let Some(server) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            server.shutdown();
        }
    }

    /// The membership view, read afresh, as `GET /v1/cluster/nodes` shows it.
    pub async fn members(&self) -> Result<Vec<MemberView>, kelpie_core::Error> {
        Ok(self.member.members().await?)
    }

    /// Carries out planned moves one by one; returns how many completed.
    /// A move that fails leaves the agent released (claimed again on its
    /// next request) or where something else claimed it.
    pub async fn move_agents(&self, agents: &AgentService, moves: Vec<(ActorId, NodeId)>) -> usize {
        let mut completed = 0;
        for (actor_id, target) in moves {
            let touch = encode_request(RequestKind::Touch, &encode_forwarded(&actor_id, &[]));
            let complete = async { self.remote.send(Some(target.clone()), touch).await.map(|_| ()) };
            match agents.hand_off(&actor_id, complete).await {
                Ok(()) => completed += 1,
                Err(err) => tracing::warn!(%actor_id, %target, %err, "planned move did not complete"),
            }
        }
        completed
    }

    /// Before leaving: hands every active agent to the other routable
    /// nodes, so they are served at once instead of after a release.
    pub async fn drain(&self, agents: &AgentService) {
        self.rebalancing.store(false, Ordering::SeqCst);
        let routable = match self.remote.members().await {
            Ok(members) => rebalance::routable_nodes(&members),
            Err(err) => {
                tracing::warn!(%err, "drain: no membership view; agents are released instead of moved");
                return;
            }
        };
        let moves = rebalance::plan_drain_moves(&self.node_id, &agents.active_agents(), &routable);
        let planned = moves.len();
        let moved = self.move_agents(agents, moves).await;
        tracing::info!(planned, moved, "drained agents to the other nodes");
    }

    /// Every [`REBALANCE_INTERVAL_MS`], looks for nodes that became
    /// routable since the last look and moves them their share of this
    /// node's agents. Stops when the node drains.
    pub fn start_rebalancing(self: &Arc<Self>, agents: Arc<AgentService>) {
        self.rebalancing.store(true, Ordering::SeqCst);
        let node = Arc::clone(self);
        let task = async move {
            // The first view, read at once, is the baseline: nodes already
            // there when this one joined are not newcomers.
            let mut known: Option<BTreeSet<NodeId>> = None;
            let mut first = true;
            while node.rebalancing.load(Ordering::SeqCst) {
                if !std::mem::take(&mut first) {
                    node.env.clock.sleep(Duration::from_millis(REBALANCE_INTERVAL_MS)).await;
                }
                if !node.rebalancing.load(Ordering::SeqCst) || !node.member.accepts_activations() {
                    continue;
                }
                let Ok(members) = node.remote.members().await else { continue };
                // The background runs of nodes that failed or left are
                // ended here, without waiting for a request to their agents.
                let gone: BTreeSet<String> = members
                    .iter()
                    .filter(|view| !matches!(view.liveness, Liveness::Live))
                    .map(|view| view.row.node_id.as_str().to_string())
                    .collect();
                if !gone.is_empty() {
                    match agents.runs.recover_orphans(&gone).await {
                        Ok(0) => {}
                        Ok(recovered) => {
                            tracing::info!(recovered, ?gone, "ended the runs of nodes that are gone")
                        }
                        Err(err) => tracing::debug!(%err, "the runs of nodes that are gone are tried again"),
                    }
                }
                let routable = rebalance::routable_nodes(&members);
                let newcomers: BTreeSet<NodeId> = match &known {
                    Some(known) => routable.difference(known).cloned().collect(),
                    None => BTreeSet::new(),
                };
                known = Some(routable.clone());
                let moves =
                    rebalance::plan_join_moves(&node.node_id, &agents.active_agents(), &routable, &newcomers);
                if !moves.is_empty() {
                    let planned = moves.len();
                    let moved = node.move_agents(&agents, moves).await;
                    tracing::info!(?newcomers, planned, moved, "rebalanced agents to new nodes");
                }
            }
        };
        self.env.spawner.spawn("cluster-rebalance", Box::pin(task));
    }
}
