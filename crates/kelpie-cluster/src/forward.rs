//! Forwarding: how a node's runtimes reach actors owned by other nodes.
//!
//! The runtime decides *where* an invocation runs (it asks the placement
//! directory for the live owner; see `kelpie_runtime::Runtime::invoke`).
//! This module carries the decision out:
//!
//! - [`resolve_target`] (pure) turns the target node, or "any node", into
//!   an address using the membership view: only a live member gets
//!   requests; a failed, left or unknown owner is unavailable (retriable)
//!   until its lease runs out and someone else claims the actor.
//! - [`ClusterRemote`] is the runtime's [`Remote`]: it resolves the target
//!   and sends the request over a [`Transport`]. Transport failures come
//!   back as retriable `NodeUnavailable` errors.
//! - [`NodeHandler`] is the receiving side: it runs an invocation on the
//!   local runtime of the actor's namespace with `invoke_local`, so a
//!   request is forwarded at most once (one hop); the HTTP requests the
//!   server forwards go to an [`HttpForwardHandler`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_runtime::{EncodedInvoker, Remote};
use tokio::sync::mpsc;

use crate::error::{ClusterError, ClusterResult};
use crate::member::{Member, MemberView};
use crate::membership::{Liveness, NodeStatus};
use crate::transport::{Transport, STREAM_CHUNKS_BUFFERED_COUNT_MAX};

/// Length prefix of the actor id in a forwarded request.
const ACTOR_LENGTH_SIZE_BYTES: usize = 2;
/// How long a membership view is reused before it is read again.
pub const MEMBER_VIEW_TTL_MS: u64 = 250;

/// First byte of every request between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RequestKind {
    /// An encoded actor invocation (actor id + payload).
    Invoke = 1,
    /// Activate an actor here (the end of a planned move).
    Touch = 2,
    /// An HTTP request forwarded by the server, opaque to this crate.
    Http = 3,
}

impl RequestKind {
    fn parse(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RequestKind::Invoke),
            2 => Some(RequestKind::Touch),
            3 => Some(RequestKind::Http),
            _ => None,
        }
    }
}

/// Prefixes `body` with its kind byte.
pub fn encode_request(kind: RequestKind, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + body.len());
    bytes.push(kind as u8);
    bytes.extend_from_slice(body);
    bytes
}

/// Where a forwarded request goes: the node and its address, or why not.
/// Pure. `target: None` means any routable node other than `self_node`,
/// chosen by `pick` (an index below the number of candidates).
pub fn resolve_target(
    self_node: &NodeId,
    target: Option<&NodeId>,
    members: &[MemberView],
    pick: impl FnOnce(usize) -> usize,
) -> std::result::Result<(NodeId, SocketAddr), String> {
    match target {
        Some(node_id) => match members.iter().find(|view| &view.row.node_id == node_id) {
            // A draining owner still serves the actors it holds until it
            // releases them.
            Some(view)
                if view.liveness == Liveness::Live
                    && matches!(view.row.status, NodeStatus::Active | NodeStatus::Draining) =>
            {
                Ok((node_id.clone(), view.row.advertise))
            }
            Some(_) => Err(format!("owner {node_id} is not live; its lease must run out first")),
            None => Err(format!("owner {node_id} is not a member")),
        },
        None => {
            let candidates: Vec<&MemberView> =
                members.iter().filter(|view| view.routable && &view.row.node_id != self_node).collect();
            if candidates.is_empty() {
                return Err("no other live node takes activations".to_string());
            }
            let view = candidates[pick(candidates.len()).min(candidates.len() - 1)];
            Ok((view.row.node_id.clone(), view.row.advertise))
        }
    }
}

/// Membership as forwarding needs it; [`Member`] on PostgreSQL, a
/// simulated table in the simulator.
pub trait Membership: Send + Sync + 'static {
    fn node_id(&self) -> &NodeId;
    fn accepts_activations(&self) -> bool;
    fn members(&self) -> BoxFuture<ClusterResult<Vec<MemberView>>>;
}

impl Membership for Member {
    fn node_id(&self) -> &NodeId {
        Member::node_id(self)
    }

    fn accepts_activations(&self) -> bool {
        Member::accepts_activations(self)
    }

    fn members(&self) -> BoxFuture<ClusterResult<Vec<MemberView>>> {
        let member = self.clone();
        Box::pin(async move { Member::members(&member).await })
    }
}

struct CachedView {
    read_at_ms: u64,
    members: Vec<MemberView>,
}

/// The runtime's [`Remote`] over a [`Transport`]. Cheap to clone.
#[derive(Clone)]
pub struct ClusterRemote {
    membership: Arc<dyn Membership>,
    transport: Arc<dyn Transport>,
    env: Env,
    timeout_ms: u64,
    view: Arc<Mutex<Option<CachedView>>>,
}

impl ClusterRemote {
    pub fn new(
        membership: Arc<dyn Membership>,
        transport: Arc<dyn Transport>,
        env: Env,
        timeout_ms: u64,
    ) -> Self {
        assert!(timeout_ms > 0, "forward timeout must be positive");
        ClusterRemote { membership, transport, env, timeout_ms, view: Arc::new(Mutex::new(None)) }
    }

    /// The membership view, re-read at most every [`MEMBER_VIEW_TTL_MS`].
    pub async fn members(&self) -> Result<Vec<MemberView>> {
        let now_ms = self.env.clock.monotonic_ms();
        if let Some(cached) = self.lock_view().as_ref() {
            if now_ms.saturating_sub(cached.read_at_ms) < MEMBER_VIEW_TTL_MS {
                return Ok(cached.members.clone());
            }
        }
        let members = self.membership.members().await.map_err(Error::from)?;
        *self.lock_view() = Some(CachedView { read_at_ms: now_ms, members: members.clone() });
        Ok(members)
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, Option<CachedView>> {
        self.view.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sends `request` (kind byte included) to `target` or any live node.
    pub async fn send(&self, target: Option<NodeId>, request: Vec<u8>) -> Result<Vec<u8>> {
        let (node_id, advertise) = self.resolve(target).await?;
        self.transport.request(advertise, request, self.timeout_ms).await.map_err(|err| {
            // The view may be stale: read it afresh next time.
            *self.lock_view() = None;
            unavailable(node_id, err)
        })
    }

    /// [`Self::send`], with the answer in parts as the peer produces them.
    pub async fn send_streaming(&self, target: Option<NodeId>, request: Vec<u8>) -> Result<PartReceiver> {
        let (node_id, advertise) = self.resolve(target).await?;
        let mut parts =
            self.transport.request_stream(advertise, request, self.timeout_ms).await.map_err(|err| {
                *self.lock_view() = None;
                unavailable(node_id.clone(), err)
            })?;
        let (sender, receiver) = mpsc::channel(STREAM_CHUNKS_BUFFERED_COUNT_MAX);
        let relay = async move {
            while let Some(part) = parts.recv().await {
                let part = part.map_err(|err| unavailable(node_id.clone(), err));
                if sender.send(part).await.is_err() {
                    return;
                }
            }
        };
        self.env.spawner.spawn("cluster-forward-parts", Box::pin(relay));
        Ok(receiver)
    }

    /// The node to send to. A cached view that cannot route the request
    /// (an owner that joined or came back since it was read) is read
    /// afresh once before the request is refused.
    async fn resolve(&self, target: Option<NodeId>) -> Result<(NodeId, SocketAddr)> {
        let self_node = self.membership.node_id().clone();
        let rng = self.env.rng.clone();
        let mut refused = String::new();
        for _ in 0..2 {
            let members = self.members().await?;
            let pick = |count: usize| rng.gen_range(0, count as u64) as usize;
            match resolve_target(&self_node, target.as_ref(), &members, pick) {
                Ok(resolved) => return Ok(resolved),
                Err(reason) => refused = reason,
            }
            *self.lock_view() = None;
        }
        Err(Error::NodeUnavailable { node_id: target.unwrap_or(self_node), reason: refused })
    }
}

/// The parts of a streamed answer, errors as [`Error`].
pub type PartReceiver = mpsc::Receiver<Result<Vec<u8>>>;

fn unavailable(node_id: NodeId, err: ClusterError) -> Error {
    Error::NodeUnavailable { node_id, reason: err.to_string() }
}

impl Remote for ClusterRemote {
    fn accepts_activations(&self) -> bool {
        self.membership.accepts_activations()
    }

    fn forward(
        &self,
        target: Option<NodeId>,
        actor_id: ActorId,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>>> {
        let this = self.clone();
        Box::pin(async move {
            let request = encode_request(RequestKind::Invoke, &encode_forwarded(&actor_id, &payload));
            this.send(target, request).await
        })
    }
}

/// Answers HTTP requests another node forwarded (the server's side). The
/// answer goes out in parts on `parts` as it is produced (a response head,
/// then pieces of the body, so a stream of events flows through).
pub trait HttpForwardHandler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Vec<u8>,
        parts: mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<std::result::Result<(), String>>;
}

/// The receiving side of forwarding: one [`EncodedInvoker`] per actor
/// namespace, and optionally the server's HTTP handler.
#[derive(Default, Clone)]
pub struct NodeHandler {
    invokers: BTreeMap<String, Arc<dyn EncodedInvoker>>,
    http: Option<Arc<dyn HttpForwardHandler>>,
}

impl NodeHandler {
    /// Routes invocations of actors in `namespace` to `invoker`.
    pub fn with_namespace(mut self, namespace: &str, invoker: Arc<dyn EncodedInvoker>) -> Self {
        let previous = self.invokers.insert(namespace.to_string(), invoker);
        assert!(previous.is_none(), "namespace {namespace} registered twice");
        self
    }

    pub fn with_http(mut self, http: Arc<dyn HttpForwardHandler>) -> Self {
        self.http = Some(http);
        self
    }

    fn invoker(&self, actor_id: &ActorId) -> std::result::Result<Arc<dyn EncodedInvoker>, String> {
        self.invokers
            .get(actor_id.namespace())
            .cloned()
            .ok_or_else(|| format!("no runtime for namespace {:?} here", actor_id.namespace()))
    }
}

impl crate::transport::RequestHandler for NodeHandler {
    /// Whole answers; a forwarded HTTP answer's parts are joined.
    fn handle(&self, payload: Vec<u8>) -> BoxFuture<std::result::Result<Vec<u8>, String>> {
        let (parts, mut produced) = mpsc::channel(STREAM_CHUNKS_BUFFERED_COUNT_MAX);
        let answer = self.handle_streaming(payload, parts);
        Box::pin(async move {
            let collect = async {
                let mut joined = Vec::new();
                while let Some(part) = produced.recv().await {
                    joined.extend_from_slice(&part);
                }
                joined
            };
            let (last, mut joined) = tokio::join!(answer, collect);
            joined.extend_from_slice(&last?);
            Ok(joined)
        })
    }

    fn handle_streaming(
        &self,
        payload: Vec<u8>,
        parts: mpsc::Sender<Vec<u8>>,
    ) -> BoxFuture<std::result::Result<Vec<u8>, String>> {
        let this = self.clone();
        Box::pin(async move {
            let (&kind, body) = payload.split_first().ok_or("empty request")?;
            match RequestKind::parse(kind).ok_or(format!("unknown request kind {kind}"))? {
                RequestKind::Invoke => {
                    let (actor_id, payload) = decode_forwarded(body)?;
                    Ok(this.invoker(&actor_id)?.invoke_encoded(actor_id, payload).await)
                }
                RequestKind::Touch => {
                    let (actor_id, _) = decode_forwarded(body)?;
                    this.invoker(&actor_id)?.touch(actor_id).await.map_err(|err| err.to_string())?;
                    Ok(Vec::new())
                }
                RequestKind::Http => match &this.http {
                    Some(http) => http.handle(body.to_vec(), parts).await.map(|()| Vec::new()),
                    None => Err("this node does not serve HTTP".to_string()),
                },
            }
        })
    }
}

/// A forwarded request: the actor id (u16 length, `namespace/id`) and the payload.
pub fn encode_forwarded(actor_id: &ActorId, payload: &[u8]) -> Vec<u8> {
    let actor = actor_id.to_string();
    let length = u16::try_from(actor.len()).expect("actor ids are bounded far below u16::MAX bytes");
    let mut bytes = Vec::with_capacity(ACTOR_LENGTH_SIZE_BYTES + actor.len() + payload.len());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(actor.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Parses [`encode_forwarded`]'s output; malformed input is an error.
pub fn decode_forwarded(bytes: &[u8]) -> Result<(ActorId, Vec<u8>), String> {
    let header: [u8; ACTOR_LENGTH_SIZE_BYTES] = bytes
        .get(..ACTOR_LENGTH_SIZE_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or("forwarded request too short")?;
    let end = ACTOR_LENGTH_SIZE_BYTES + usize::from(u16::from_be_bytes(header));
    let actor =
        bytes.get(ACTOR_LENGTH_SIZE_BYTES..end).ok_or("forwarded request truncated in its actor id")?;
    let actor = std::str::from_utf8(actor).map_err(|_| "actor id is not UTF-8")?;
    let actor_id: ActorId = actor.parse().map_err(|err| format!("actor id {actor:?}: {err}"))?;
    Ok((actor_id, bytes[end..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::NodeRow;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn view(name: &str, status: NodeStatus, liveness: Liveness, port: u16) -> MemberView {
        let row = NodeRow {
            node_id: node(name),
            advertise: SocketAddr::from(([127, 0, 0, 1], port)),
            status,
            heartbeat_age_ms: 0,
        };
        MemberView { routable: status == NodeStatus::Active && liveness == Liveness::Live, row, liveness }
    }

    #[test]
    fn a_live_owner_gets_the_request_even_while_draining() {
        for status in [NodeStatus::Active, NodeStatus::Draining] {
            let members = [view("n2", status, Liveness::Live, 7100)];
            let resolved = resolve_target(&node("n1"), Some(&node("n2")), &members, |_| 0);
            assert_eq!(resolved, Ok((node("n2"), "127.0.0.1:7100".parse().unwrap())), "{status:?}");
        }
    }

    #[test]
    fn a_failed_left_or_unknown_owner_is_unavailable() {
        let members = [
            view("n2", NodeStatus::Active, Liveness::Failed, 7100),
            view("n3", NodeStatus::Left, Liveness::Live, 7101),
        ];
        for owner in ["n2", "n3", "n4"] {
            let resolved = resolve_target(&node("n1"), Some(&node(owner)), &members, |_| 0);
            assert!(resolved.unwrap_err().contains(owner), "{owner}");
        }
    }

    #[test]
    fn any_node_means_a_routable_node_other_than_this_one() {
        let members = [
            view("n1", NodeStatus::Active, Liveness::Live, 7100),
            view("n2", NodeStatus::Draining, Liveness::Live, 7101),
            view("n3", NodeStatus::Active, Liveness::Live, 7102),
            view("n4", NodeStatus::Active, Liveness::Failed, 7103),
            view("n5", NodeStatus::Active, Liveness::Live, 7104),
        ];
        let mut offered = 0;
        let first = resolve_target(&node("n1"), None, &members, |count| {
            offered = count;
            0
        });
        assert_eq!(offered, 2, "only n3 and n5 take activations");
        assert_eq!(first.unwrap().0, node("n3"));
        assert_eq!(resolve_target(&node("n1"), None, &members, |_| 1).unwrap().0, node("n5"));
        let alone = [view("n1", NodeStatus::Active, Liveness::Live, 7100)];
        assert!(resolve_target(&node("n1"), None, &alone, |_| 0).is_err());
    }

    #[test]
    fn forwarded_requests_round_trip_and_malformed_ones_are_refused() {
        let actor = ActorId::new("agents", "a-1").unwrap();
        let bytes = encode_forwarded(&actor, b"payload");
        assert_eq!(decode_forwarded(&bytes), Ok((actor, b"payload".to_vec())));
        assert_eq!(decode_forwarded(&[0]), Err("forwarded request too short".to_string()));
        assert_eq!(
            decode_forwarded(&[0, 9, b'a']),
            Err("forwarded request truncated in its actor id".to_string())
        );
    }

    #[tokio::test]
    async fn the_handler_refuses_unknown_kinds_and_namespaces() {
        use crate::transport::RequestHandler;
        let handler = NodeHandler::default();
        assert_eq!(handler.handle(vec![]).await, Err("empty request".to_string()));
        assert_eq!(handler.handle(vec![9]).await, Err("unknown request kind 9".to_string()));
        let actor = ActorId::new("agents", "a-1").unwrap();
        let request = encode_request(RequestKind::Invoke, &encode_forwarded(&actor, b"{}"));
        assert_eq!(
            handler.handle(request).await,
            Err("no runtime for namespace \"agents\" here".to_string())
        );
        let http = encode_request(RequestKind::Http, b"GET /");
        assert_eq!(handler.handle(http).await, Err("this node does not serve HTTP".to_string()));
    }
}
