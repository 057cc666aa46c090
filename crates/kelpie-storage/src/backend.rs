//! The backend interface: what a store must provide under [`crate::Storage`].
//!
//! Reads are plain (latest committed state, with versions). The one hard
//! obligation is [`Backend::commit`]: observe what the request depends on,
//! run [`crate::commit_check`]'s validation and apply the writes as one atomic
//! step with respect to every other commit and placement change of the same
//! actor, then make it durable before returning `Ok`.

use std::future::Future;
use std::pin::Pin;

use kelpie_core::{ActorId, NodeId, Result};

use crate::types::{ClaimOutcome, CommitInfo, CommitRequest, Placement, ScanPage, StoredRows, Versioned};

/// A boxed, sendable future borrowing from its receiver.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store of per-actor keys and placements.
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and test output (`memory`, `redb`, `postgres`).
    fn name(&self) -> &'static str;

    /// The committed value of `key` in `actor`'s key space.
    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>>;

    /// Committed rows of `page.range`: the first `page.limit` from the end
    /// `page.order` names, in that order. Costs O(limit + log n): a backend
    /// reads no row past the limit.
    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>>;

    /// Validates and applies `request` atomically and durably.
    fn commit(&self, request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>>;

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>>;

    /// Stores `placement`, refusing an epoch lower than the stored one.
    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>>;

    /// Compare-and-set: if the stored epoch is `expected_epoch` (0 = no
    /// placement yet), the placement becomes `(node, expected_epoch + 1)`.
    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>>;
}
