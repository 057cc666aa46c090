//! The [`Actor`] trait and the [`ActorContext`] a handler works through.
//!
//! An actor type is behaviour; its data is `State`, loaded when an activation
//! starts and saved, with any extra keys written through the context, in one
//! fenced transaction per invocation. A handler that returns an error or
//! panics leaves no trace: the transaction is dropped and the in-memory state
//! is restored to what it was before the message.

use std::future::Future;

use kelpie_core::{ActorId, Env, NodeId, Result};
use std::ops::Bound;

use kelpie_storage::types::prefix_successor;
use kelpie_storage::{KeyRange, ScanOrder, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Key of the serialized state inside the actor's key space.
pub(crate) const STATE_KEY: &[u8] = b"s";
/// Prefix of the keys a handler writes through [`ActorContext`], so they can
/// never collide with the state key.
const USER_KEY_PREFIX: &[u8] = b"u/";

pub trait Actor: Send + Sync + 'static {
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;
    /// Messages and replies of actors run in a cluster must also be
    /// serializable (see [`crate::remote`]).
    type Message: Send + 'static;
    type Reply: Send + 'static;

    /// Runs once per activation after the state is loaded; an error aborts
    /// the activation and fails the request that caused it.
    fn on_activate(
        &self,
        _ctx: &mut ActorContext<'_, Self::State>,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Whether `message`, arriving while the actor is not active on this
    /// node, must first pass [`Actor::admit_activation`]: for messages that
    /// only make sense to an actor that already holds something, so that a
    /// caller naming actors at random activates and claims nothing. The
    /// default screens no message (and reads nothing more).
    fn screens_activation(&self, _message: &Self::Message) -> bool {
        false
    }

    /// Whether a screened message may activate an actor whose stored state
    /// is `stored` (`None`: nothing was ever saved). Asked before anything
    /// is claimed, from a read of the state outside any activation; an
    /// error is the message's reply and leaves no activation and no
    /// placement behind.
    fn admit_activation(&self, _actor_id: &ActorId, _stored: Option<&Self::State>) -> Result<()> {
        Ok(())
    }

    /// Handles one message. Messages of one actor never run concurrently.
    fn handle(
        &self,
        ctx: &mut ActorContext<'_, Self::State>,
        message: Self::Message,
    ) -> impl Future<Output = Result<Self::Reply>> + Send;

    /// Runs before the activation ends (idle, eviction, shutdown); its state
    /// changes are saved like a handler's.
    fn on_deactivate(
        &self,
        _ctx: &mut ActorContext<'_, Self::State>,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// What a handler sees: its id, the node and fencing epoch of this
/// activation, its state, its environment, and a transaction over its own
/// extra keys.
pub struct ActorContext<'a, S> {
    pub actor_id: &'a ActorId,
    pub node_id: &'a NodeId,
    /// The fencing epoch this activation claimed; every commit carries it.
    pub epoch: u64,
    pub state: &'a mut S,
    pub env: &'a Env,
    txn: &'a mut Transaction,
}

fn strip_user_prefix(rows: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    rows.into_iter().map(|(key, value)| (key[USER_KEY_PREFIX.len()..].to_vec(), value)).collect()
}

fn user_key(key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(USER_KEY_PREFIX.len() + key.len());
    full.extend_from_slice(USER_KEY_PREFIX);
    full.extend_from_slice(key);
    full
}

/// `range` over a handler's keys as the same range over stored keys.
fn user_range(range: &KeyRange) -> KeyRange {
    let map = |bound: &Bound<Vec<u8>>| match bound {
        Bound::Included(key) => Bound::Included(user_key(key)),
        Bound::Excluded(key) => Bound::Excluded(user_key(key)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let start = match map(&range.start) {
        Bound::Unbounded => Bound::Included(USER_KEY_PREFIX.to_vec()),
        bound => bound,
    };
    let end = match map(&range.end) {
        Bound::Unbounded => {
            Bound::Excluded(prefix_successor(USER_KEY_PREFIX).expect("the user prefix has a successor"))
        }
        bound => bound,
    };
    KeyRange { start, end }
}

impl<'a, S> ActorContext<'a, S> {
    pub(crate) fn new(
        (actor_id, node_id, epoch): (&'a ActorId, &'a NodeId, u64),
        state: &'a mut S,
        env: &'a Env,
        txn: &'a mut Transaction,
    ) -> Self {
        assert!(epoch > 0, "an activation runs under a claimed epoch");
        ActorContext { actor_id, node_id, epoch, state, env, txn }
    }

    /// Reads an extra key, seeing this invocation's own writes.
    pub async fn kv_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.txn.get(&user_key(key)).await
    }

    /// Writes an extra key; committed with the state, or not at all.
    pub fn kv_put(&mut self, key: &[u8], value: Vec<u8>) -> Result<()> {
        self.txn.put(user_key(key), value)
    }

    pub fn kv_delete(&mut self, key: &[u8]) -> Result<()> {
        self.txn.delete(user_key(key))
    }

    /// Extra keys starting with `prefix`, in key order, prefix included.
    /// Fails past `SCAN_ROWS_COUNT_MAX` rows: for ranges that can grow
    /// without bound, use [`Self::kv_scan_page`].
    pub async fn kv_scan_prefix(&mut self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rows = self.txn.scan(KeyRange::prefix(user_key(prefix))).await?;
        Ok(strip_user_prefix(rows))
    }

    /// At most `limit` extra keys of `range` (over this handler's keys),
    /// from the end `order` names and in that order: O(limit + log n).
    pub async fn kv_scan_page(
        &mut self,
        range: &KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rows = self.txn.scan_page(user_range(range), order, limit).await?;
        Ok(strip_user_prefix(rows))
    }
}
