//! The seam between a runtime and the cluster: [`Remote`] is how a runtime
//! sends an invocation to the node that owns the actor, [`EncodedInvoker`]
//! is how the receiving node runs it on its own runtime.
//!
//! Messages and replies cross as JSON; a failed invocation's [`Error`]
//! crosses as a [`WireError`] and comes back as the same variant, so a
//! forwarded request fails exactly as a local one would. The transport
//! (TCP between nodes, or the simulator's network) lives in kelpie-cluster.

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Error, NodeId, Result, WireError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::actor::Actor;
use crate::runtime::Runtime;

/// Reaches other nodes on behalf of a runtime.
pub trait Remote: Send + Sync + 'static {
    /// Whether this node may activate actors now (not while draining or
    /// cut off from the cluster).
    fn accepts_activations(&self) -> bool;

    /// Sends an encoded invocation of `actor_id` to `target`, or, with
    /// `None`, to any live node that takes activations; returns the encoded
    /// reply. The receiver runs it with [`Runtime::invoke_local`], so a
    /// request is forwarded at most once.
    fn forward(
        &self,
        target: Option<NodeId>,
        actor_id: ActorId,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>>>;
}

/// A runtime seen from the wire: runs encoded invocations here.
pub trait EncodedInvoker: Send + Sync + 'static {
    /// Decodes, runs with [`Runtime::invoke_local`], and encodes the
    /// outcome (an error too).
    fn invoke_encoded(&self, actor_id: ActorId, payload: Vec<u8>) -> BoxFuture<Vec<u8>>;

    /// Activates the actor here (the last step of a planned move).
    fn touch(&self, actor_id: ActorId) -> BoxFuture<Result<()>>;
}

impl<A: Actor> EncodedInvoker for Runtime<A>
where
    A::Message: Serialize + DeserializeOwned,
    A::Reply: Serialize + DeserializeOwned,
{
    fn invoke_encoded(&self, actor_id: ActorId, payload: Vec<u8>) -> BoxFuture<Vec<u8>> {
        let runtime = self.clone();
        Box::pin(async move {
            let outcome = match decode_message::<A>(&actor_id, &payload) {
                Ok(message) => runtime.invoke_local(&actor_id, message).await,
                Err(err) => Err(err),
            };
            encode_outcome::<A>(&actor_id, outcome)
        })
    }

    fn touch(&self, actor_id: ActorId) -> BoxFuture<Result<()>> {
        let runtime = self.clone();
        Box::pin(async move { runtime.touch(&actor_id).await })
    }
}

fn codec_error(actor_id: &ActorId, what: &str, err: serde_json::Error) -> Error {
    Error::Internal(format!("{what} of actor {actor_id} does not (de)serialize: {err}"))
}

pub(crate) fn encode_message<A: Actor>(actor_id: &ActorId, message: &A::Message) -> Result<Vec<u8>>
where
    A::Message: Serialize,
{
    serde_json::to_vec(message).map_err(|e| codec_error(actor_id, "a message", e))
}

fn decode_message<A: Actor>(actor_id: &ActorId, payload: &[u8]) -> Result<A::Message>
where
    A::Message: DeserializeOwned,
{
    serde_json::from_slice(payload).map_err(|e| codec_error(actor_id, "a message", e))
}

fn encode_outcome<A: Actor>(actor_id: &ActorId, outcome: Result<A::Reply>) -> Vec<u8>
where
    A::Reply: Serialize,
{
    let wire: std::result::Result<A::Reply, WireError> = outcome.map_err(|err| WireError::from(&err));
    serde_json::to_vec(&wire).unwrap_or_else(|e| {
        let failed: std::result::Result<(), WireError> =
            Err(WireError::from(&codec_error(actor_id, "a reply", e)));
        serde_json::to_vec(&failed).expect("an error always serializes")
    })
}

pub(crate) fn decode_reply<A: Actor>(actor_id: &ActorId, bytes: &[u8]) -> Result<A::Reply>
where
    A::Reply: DeserializeOwned,
{
    let wire: std::result::Result<A::Reply, WireError> =
        serde_json::from_slice(bytes).map_err(|e| codec_error(actor_id, "a reply", e))?;
    wire.map_err(WireError::into_error)
}
