//! The server as one node of a cluster (`kelpie serve --cluster`).
//!
//! - [`ClusterNode::start`] joins the membership (node table in the shared
//!   PostgreSQL), opens the placement registry whose leases are judged by
//!   the database's clock, and builds the [`ClusterRemote`] the clustered
//!   runtimes forward through.
//! - Agent requests (`/v1/agents/{agent_id}` and below) are forwarded whole,
//!   as HTTP, to the node that owns the agent, so an agent's turns run on
//!   its owner where its turn lock lives ([`forward_agent_requests`]). The
//!   owner serves them with its own router ([`HttpForwarder`]); a forwarded
//!   request carries [`FORWARDED_HEADER`] and is never forwarded again.
//! - Everything else reaches actors through the runtimes, which forward
//!   single invocations (directory, tool store, runs, block store).
//! - Planned moves of agents: a share of this node's agents to each node
//!   that joins ([`ClusterNode::start_rebalancing`]), all of them to the
//!   other nodes when this one leaves ([`ClusterNode::drain`]).
//!
//! The HTTP encoding is ours: a 4-byte big-endian length, a JSON head
//! (method, path, headers or status, headers), then the body bytes. A
//! response travels as parts: the head first, then the body as the owner
//! produces it, so a Server-Sent Events stream flows through event by event.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use kelpie_cluster::forward::{encode_forwarded, encode_request};
use kelpie_cluster::rebalance::{self, REBALANCE_INTERVAL_MS};
use kelpie_cluster::transport::REQUEST_TIMEOUT_MS_DEFAULT;
use kelpie_cluster::{
    ClusterRemote, HttpForwardHandler, Member, MemberView, MembershipConfig, NodeHandler, NodeTable,
    RequestKind, TcpServer, TcpTransport, TransportConfig,
};
use kelpie_core::env::BoxFuture;
use kelpie_core::limits::{HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS};
use kelpie_core::{ActorId, Env, NodeId};
use kelpie_registry::{PlacementDirectory, PostgresRegistry};
use kelpie_storage::PostgresBackend;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::agent::actor::AGENT_NAMESPACE;
use crate::agent::service::AgentService;
use crate::error::ApiError;
use crate::{AppState, ServerError};

/// Marks a request another node forwarded here: it is served, never
/// forwarded again.
pub const FORWARDED_HEADER: &str = "x-kelpie-forwarded-by";
/// Names the node that served an agent request (the owner, when it was
/// forwarded), on every agent response in a cluster.
pub const SERVED_BY_HEADER: &str = "x-kelpie-served-by";
/// Largest HTTP body (request or response) forwarded between nodes; the
/// transport's frame limit is 16 MiB.
pub const FORWARDED_BODY_BYTES_MAX: usize = 15 * 1024 * 1024;
/// Size of the length prefix of the JSON head.
const HEAD_LENGTH_SIZE_BYTES: usize = 4;

/// This node's part in the cluster.
pub struct ClusterNode {
    pub node_id: NodeId,
    pub member: Member,
    pub remote: Arc<ClusterRemote>,
    pub directory: Arc<dyn PlacementDirectory>,
    /// The transport server, started once the router exists.
    server: Mutex<Option<TcpServer>>,
    listen: SocketAddr,
    /// The rebalancing loop runs while this is set.
    rebalancing: AtomicBool,
    env: Env,
}

impl ClusterNode {
    /// Joins the cluster on `database_url` as `node_id`, reachable at
    /// `advertise`; the transport will listen on `listen`.
    pub async fn start(
        database_url: &str,
        node_id: NodeId,
        (advertise, listen): (SocketAddr, SocketAddr),
        env: Env,
    ) -> Result<ClusterNode, ServerError> {
        let storage_error =
            |e: kelpie_core::Error| ServerError::Storage { backend: "postgres", reason: e.to_string() };
        let backend = Arc::new(PostgresBackend::connect(database_url).await.map_err(storage_error)?);
        let directory: Arc<dyn PlacementDirectory> = Arc::new(PostgresRegistry::new(backend));
        let cluster_error = |e: kelpie_cluster::ClusterError| ServerError::Cluster(e.to_string());
        let table = NodeTable::connect(database_url).await.map_err(cluster_error)?;
        let membership = MembershipConfig::new(HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS);
        let member = Member::join(table, env.clone(), node_id.clone(), advertise, membership)
            .await
            .map_err(cluster_error)?;
        let transport = Arc::new(TcpTransport::new(env.clone(), TransportConfig::default()));
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
            rebalancing: AtomicBool::new(false),
            env,
        })
    }

    /// Starts answering other nodes: actor invocations through `handler`,
    /// forwarded HTTP through `router`.
    pub async fn listen(&self, handler: NodeHandler, router: Router) -> Result<(), ServerError> {
        let handler = handler.with_http(Arc::new(HttpForwarder { router }));
        let server =
            TcpServer::bind(self.listen, Arc::new(handler), self.env.clone(), TransportConfig::default())
                .await
                .map_err(|e| ServerError::Bind { addr: self.listen, reason: e.to_string() })?;
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

/// The agent id a path addresses (`/v1/agents/{agent_id}[/...]`), if any.
pub fn agent_id_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/agents/")?;
    let agent_id = rest.split('/').next()?;
    agent_id.starts_with("agent-").then_some(agent_id)
}

#[derive(Debug, Serialize, Deserialize)]
struct RequestHead {
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
}

fn encode<H: Serialize>(head: &H, body: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("a head always serializes");
    let length = u32::try_from(head.len()).expect("heads are far below 4 GiB");
    let mut bytes = Vec::with_capacity(HEAD_LENGTH_SIZE_BYTES + head.len() + body.len());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(body);
    bytes
}

fn decode<H: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<(H, Vec<u8>), String> {
    let prefix: [u8; HEAD_LENGTH_SIZE_BYTES] = bytes
        .get(..HEAD_LENGTH_SIZE_BYTES)
        .and_then(|p| p.try_into().ok())
        .ok_or("forwarded HTTP too short")?;
    let end = HEAD_LENGTH_SIZE_BYTES + u32::from_be_bytes(prefix) as usize;
    let head = bytes.get(HEAD_LENGTH_SIZE_BYTES..end).ok_or("forwarded HTTP truncated in its head")?;
    let head = serde_json::from_slice(head).map_err(|e| format!("forwarded HTTP head: {e}"))?;
    Ok((head, bytes[end..].to_vec()))
}

fn header_pairs(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

/// Middleware: sends a request about an agent another live node owns to
/// that node and returns its answer; everything else is served here.
pub async fn forward_agent_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else { return next.run(request).await };
    let Some(agent_id) = agent_id_of(request.uri().path()) else { return next.run(request).await };
    let serve_here = |next: Next, request: Request| {
        let node_id = cluster.node_id.to_string();
        async move {
            let mut response = next.run(request).await;
            if let Ok(value) = HeaderValue::try_from(node_id) {
                response.headers_mut().insert(SERVED_BY_HEADER, value);
            }
            response
        }
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return serve_here(next, request).await;
    }
    let Ok(actor_id) = ActorId::new(AGENT_NAMESPACE, agent_id) else { return next.run(request).await };
    let owner = match cluster.directory.live_owner(&actor_id).await {
        Ok(Some(owner)) if owner.node_id != cluster.node_id => owner.node_id,
        Ok(_) => return serve_here(next, request).await,
        Err(err) => return ApiError::from(err).into_response(),
    };
    match forward(&cluster, owner, request).await {
        Ok(response) => response,
        Err(api_error) => api_error.into_response(),
    }
}

async fn forward(cluster: &ClusterNode, owner: NodeId, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, FORWARDED_BODY_BYTES_MAX).await.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {FORWARDED_BODY_BYTES_MAX} bytes: {e}"),
        )
    })?;
    let mut headers = header_pairs(&parts.headers);
    headers.push((FORWARDED_HEADER.to_string(), cluster.node_id.to_string()));
    let head = RequestHead {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers,
    };
    let request = encode_request(RequestKind::Http, &encode(&head, &body));
    let mut parts = cluster.remote.send_streaming(Some(owner), request).await.map_err(ApiError::from)?;
    let gateway = |reason: String| ApiError::new(StatusCode::BAD_GATEWAY, reason);
    let first = parts.recv().await.ok_or_else(|| gateway("the owner sent no answer".into()))?;
    let (head, body_start): (ResponseHead, Vec<u8>) =
        decode(&first.map_err(ApiError::from)?).map_err(gateway)?;
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for (name, value) in head.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response = response.header(name, value);
        }
    }
    // The body flows on as the owner produces it (an event stream arrives
    // event by event); a failure mid-body ends the response early.
    let start = futures::stream::iter((!body_start.is_empty()).then_some(Ok(Bytes::from(body_start))));
    let rest = futures::stream::unfold(parts, |mut parts| async move {
        let part = parts.recv().await?;
        Some((part.map(Bytes::from).map_err(|err| std::io::Error::other(err.to_string())), parts))
    });
    response.body(Body::from_stream(start.chain(rest))).map_err(|e| gateway(e.to_string()))
}

/// Largest body piece sent as one part; well below the frame limit.
const FORWARDED_PART_BYTES_MAX: usize = 1024 * 1024;

/// Serves HTTP requests other nodes forwarded here with this node's
/// router, sending the response head and then the body as it is produced.
struct HttpForwarder {
    router: Router,
}

impl HttpForwardHandler for HttpForwarder {
    fn handle(&self, request: Vec<u8>, parts: mpsc::Sender<Vec<u8>>) -> BoxFuture<Result<(), String>> {
        let router = self.router.clone();
        Box::pin(async move {
            let (head, body): (RequestHead, Vec<u8>) = decode(&request)?;
            let method = Method::from_bytes(head.method.as_bytes()).map_err(|e| e.to_string())?;
            let mut builder = Request::builder().method(method).uri(head.path_and_query);
            for (name, value) in head.headers {
                builder = builder.header(name, value);
            }
            let request = builder.body(Body::from(body)).map_err(|e| e.to_string())?;
            let response = router.oneshot(request).await.map_err(|e| e.to_string())?;
            let (head, body) = response.into_parts();
            let head = ResponseHead { status: head.status.as_u16(), headers: header_pairs(&head.headers) };
            let closed = |_| "the forwarding node stopped listening".to_string();
            parts.send(encode(&head, &[])).await.map_err(closed)?;
            let mut body = body.into_data_stream();
            let mut sent_bytes = 0usize;
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| e.to_string())?;
                sent_bytes += piece.len();
                if sent_bytes > FORWARDED_BODY_BYTES_MAX {
                    return Err(format!("response body over {FORWARDED_BODY_BYTES_MAX} bytes"));
                }
                for part in piece.chunks(FORWARDED_PART_BYTES_MAX) {
                    parts.send(part.to_vec()).await.map_err(closed)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_paths_are_recognised() {
        assert_eq!(agent_id_of("/v1/agents/agent-1"), Some("agent-1"));
        assert_eq!(agent_id_of("/v1/agents/agent-1/messages/stream"), Some("agent-1"));
        assert_eq!(agent_id_of("/v1/agents/"), None);
        assert_eq!(agent_id_of("/v1/agents/import"), None);
        assert_eq!(agent_id_of("/v1/blocks/block-1"), None);
    }

    #[test]
    fn heads_and_bodies_round_trip_and_garbage_is_refused() {
        let head =
            ResponseHead { status: 201, headers: vec![("content-type".into(), "text/event-stream".into())] };
        let bytes = encode(&head, b"data: [DONE]\n\n");
        let (back, body): (ResponseHead, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!((back.status, back.headers, body), (201, head.headers, b"data: [DONE]\n\n".to_vec()));
        assert_eq!(decode::<ResponseHead>(&[0, 0]).unwrap_err(), "forwarded HTTP too short");
        assert_eq!(
            decode::<ResponseHead>(&[0, 0, 0, 9, b'{']).unwrap_err(),
            "forwarded HTTP truncated in its head"
        );
    }
}
