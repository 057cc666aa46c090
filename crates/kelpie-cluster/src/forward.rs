//! Forwarding: run a request for an actor on the node that owns it.
//!
//! [`route`] is the sans-IO decision: given this node, the actor's live
//! owner (by the registry's clock, i.e. the database's) and the membership
//! view, it answers *run here*, *forward to that node*, *claim here* or
//! *unavailable* (owned under a live lease by a node that stopped
//! heartbeating: nobody may run it until the lease expires). [`Forwarder`]
//! carries the decision out with a [`PlacementDirectory`], a [`Member`] and
//! a [`Transport`]; [`ForwardHandler`] is the receiving side. A forwarded
//! request is never forwarded again (one hop): a receiver that does not own
//! the actor answers an error ([`ClusterError::Remote`]); the caller may
//! retry, and the retry routes afresh.

use std::net::SocketAddr;
use std::sync::Arc;

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, NodeId};
use kelpie_registry::{LeaseOutcome, LiveOwner, PlacementDirectory};

use crate::error::{ClusterError, ClusterResult};
use crate::member::{Member, MemberView};
use crate::membership::Liveness;
use crate::transport::{RequestHandler, Transport};

/// Routing rounds per request: each lost claim race means another node won
/// and the next round forwards to it.
pub const FORWARD_ROUTE_ATTEMPTS_COUNT_MAX: u32 = 3;

/// Length prefix of the actor id in a forwarded request.
const ACTOR_LENGTH_SIZE_BYTES: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node holds the live lease at `epoch`.
    Local {
        epoch: u64,
    },
    Forward {
        node_id: NodeId,
        advertise: SocketAddr,
    },
    /// Nobody holds a live lease: claim it here.
    Claim,
    /// A node that is not live still holds a running lease.
    Unavailable {
        node_id: NodeId,
    },
}

/// Decides where a request for an actor runs. Pure.
pub fn route(self_node: &NodeId, owner: Option<&LiveOwner>, members: &[MemberView]) -> Route {
    let Some(owner) = owner else { return Route::Claim };
    assert!(owner.epoch > 0, "a live owner has a positive epoch");
    if &owner.node_id == self_node {
        return Route::Local { epoch: owner.epoch };
    }
    // A draining owner still serves the actors it holds until it releases them.
    match members.iter().find(|view| view.row.node_id == owner.node_id) {
        Some(view) if view.liveness == Liveness::Live => {
            Route::Forward { node_id: owner.node_id.clone(), advertise: view.row.advertise }
        }
        _ => Route::Unavailable { node_id: owner.node_id.clone() },
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

/// Runs a request on this node's activation of an actor held at `epoch`.
pub trait LocalInvoker: Send + Sync + 'static {
    fn invoke(&self, actor_id: ActorId, epoch: u64, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>>;
}

/// Sends each request to the owner of its actor, claiming unowned actors here.
#[derive(Clone)]
pub struct Forwarder {
    member: Member,
    directory: Arc<dyn PlacementDirectory>,
    transport: Arc<dyn Transport>,
    invoker: Arc<dyn LocalInvoker>,
    timeout_ms: u64,
}

impl Forwarder {
    pub fn new(
        member: Member,
        directory: Arc<dyn PlacementDirectory>,
        transport: Arc<dyn Transport>,
        invoker: Arc<dyn LocalInvoker>,
        timeout_ms: u64,
    ) -> Self {
        assert!(timeout_ms > 0, "forward timeout must be positive");
        Forwarder { member, directory, transport, invoker, timeout_ms }
    }

    /// Runs `payload` for `actor_id` wherever it is owned.
    pub async fn dispatch(&self, actor_id: &ActorId, payload: Vec<u8>) -> ClusterResult<Vec<u8>> {
        for _ in 0..FORWARD_ROUTE_ATTEMPTS_COUNT_MAX {
            let owner = self.directory.live_owner(actor_id).await.map_err(registry_error)?;
            let members = self.member.members().await?;
            match route(self.member.node_id(), owner.as_ref(), &members) {
                Route::Local { epoch } => return self.run_here(actor_id, epoch, payload).await,
                Route::Forward { advertise, .. } => {
                    let request = encode_forwarded(actor_id, &payload);
                    return self.transport.request(advertise, request, self.timeout_ms).await;
                }
                Route::Unavailable { node_id } => return Err(ClusterError::NodeNotLive { node_id }),
                Route::Claim => {
                    if let Some(epoch) = self.claim_here(actor_id).await? {
                        return self.run_here(actor_id, epoch, payload).await;
                    }
                }
            }
        }
        let reason =
            format!("routing of {actor_id} did not settle in {FORWARD_ROUTE_ATTEMPTS_COUNT_MAX} rounds");
        Err(ClusterError::Remote { peer: self.member.advertise(), reason })
    }

    /// Runs a request another node forwarded here: only if this node owns
    /// the actor or may claim it; never forwarded again.
    async fn accept_forwarded(&self, actor_id: &ActorId, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let owner = self.directory.live_owner(actor_id).await.map_err(|err| err.to_string())?;
        let epoch = match owner {
            Some(owner) if &owner.node_id == self.member.node_id() => owner.epoch,
            Some(owner) => return Err(format!("{actor_id} is owned by {}, not here", owner.node_id)),
            None => self
                .claim_here(actor_id)
                .await
                .map_err(|err| err.to_string())?
                .ok_or("lost the claim race")?,
        };
        self.invoker.invoke(actor_id.clone(), epoch, payload).await
    }

    /// Claims the actor for this node: its epoch, or `None` if another node won.
    async fn claim_here(&self, actor_id: &ActorId) -> ClusterResult<Option<u64>> {
        if !self.member.accepts_activations() {
            return Err(ClusterError::NodeNotLive { node_id: self.member.node_id().clone() });
        }
        match self.directory.claim(actor_id, self.member.node_id()).await.map_err(registry_error)? {
            LeaseOutcome::Claimed(record) => Ok(Some(record.epoch)),
            _ => Ok(None),
        }
    }

    async fn run_here(&self, actor_id: &ActorId, epoch: u64, payload: Vec<u8>) -> ClusterResult<Vec<u8>> {
        let peer = self.member.advertise();
        self.invoker
            .invoke(actor_id.clone(), epoch, payload)
            .await
            .map_err(|reason| ClusterError::Remote { peer, reason })
    }
}

fn registry_error(err: kelpie_core::Error) -> ClusterError {
    ClusterError::Database { operation: "placement lookup", reason: err.to_string() }
}

/// The receiving side: answers forwarded requests through a [`Forwarder`].
pub struct ForwardHandler {
    forwarder: Forwarder,
}

impl ForwardHandler {
    pub fn new(forwarder: Forwarder) -> Self {
        ForwardHandler { forwarder }
    }
}

impl RequestHandler for ForwardHandler {
    fn handle(&self, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>> {
        let forwarder = self.forwarder.clone();
        Box::pin(async move {
            let (actor_id, payload) = decode_forwarded(&payload)?;
            forwarder.accept_forwarded(&actor_id, payload).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{NodeRow, NodeStatus};

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn view(name: &str, status: NodeStatus, liveness: Liveness) -> MemberView {
        let row = NodeRow {
            node_id: node(name),
            advertise: "127.0.0.1:7100".parse().unwrap(),
            status,
            heartbeat_age_ms: 0,
        };
        MemberView { routable: status == NodeStatus::Active && liveness == Liveness::Live, row, liveness }
    }

    fn owner(name: &str, epoch: u64) -> LiveOwner {
        LiveOwner { node_id: node(name), epoch }
    }

    #[test]
    fn unowned_is_claimed_and_own_runs_here() {
        let members = [view("n1", NodeStatus::Active, Liveness::Live)];
        assert_eq!(route(&node("n1"), None, &members), Route::Claim);
        assert_eq!(route(&node("n1"), Some(&owner("n1", 4)), &members), Route::Local { epoch: 4 });
    }

    #[test]
    fn live_owner_elsewhere_gets_the_request_even_while_draining() {
        for status in [NodeStatus::Active, NodeStatus::Draining] {
            let members = [view("n2", status, Liveness::Live)];
            let expected =
                Route::Forward { node_id: node("n2"), advertise: "127.0.0.1:7100".parse().unwrap() };
            assert_eq!(route(&node("n1"), Some(&owner("n2", 1)), &members), expected, "{status:?}");
        }
    }

    #[test]
    fn failed_or_unknown_owner_with_a_running_lease_is_unavailable() {
        let failed = [view("n2", NodeStatus::Active, Liveness::Failed)];
        assert_eq!(
            route(&node("n1"), Some(&owner("n2", 1)), &failed),
            Route::Unavailable { node_id: node("n2") }
        );
        assert_eq!(
            route(&node("n1"), Some(&owner("n3", 1)), &failed),
            Route::Unavailable { node_id: node("n3") }
        );
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
}
