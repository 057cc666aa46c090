//! Where placement records live: an atomic compare-and-set interface.
//!
//! Every change to a record goes through [`PlacementStore::compare_and_set`],
//! which stores the new record only if the stored one is still exactly what
//! the caller decided on. Two claimants racing for one actor therefore cannot
//! both succeed: the second finds the first's record and decides again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Result};

use crate::lease::PlacementRecord;

/// Result of a compare-and-set: applied, or the record actually stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasResult {
    Applied,
    Mismatch(Option<PlacementRecord>),
}

pub trait PlacementStore: Send + Sync + 'static {
    fn get(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>>;

    /// Stores `next` for `next.actor_id` if and only if the stored record
    /// equals `expected` (`None`: no record yet).
    fn compare_and_set(
        &self,
        expected: Option<PlacementRecord>,
        next: PlacementRecord,
    ) -> BoxFuture<Result<CasResult>>;
}

/// Placements in process memory: for tests, the simulator and single-node
/// runs whose state store has no placement table of its own.
#[derive(Default)]
pub struct MemoryPlacementStore {
    records: Mutex<BTreeMap<ActorId, PlacementRecord>>,
}

impl MemoryPlacementStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn cas_now(&self, expected: Option<PlacementRecord>, next: PlacementRecord) -> CasResult {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let stored = records.get(&next.actor_id);
        if stored != expected.as_ref() {
            return CasResult::Mismatch(stored.cloned());
        }
        if let Some(stored) = stored {
            assert!(next.epoch >= stored.epoch, "epoch went backwards: {} -> {}", stored.epoch, next.epoch);
        }
        records.insert(next.actor_id.clone(), next);
        CasResult::Applied
    }
}

impl PlacementStore for MemoryPlacementStore {
    fn get(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        let record = self.records.lock().unwrap_or_else(|p| p.into_inner()).get(actor_id).cloned();
        Box::pin(async move { Ok(record) })
    }

    fn compare_and_set(
        &self,
        expected: Option<PlacementRecord>,
        next: PlacementRecord,
    ) -> BoxFuture<Result<CasResult>> {
        let result = self.cas_now(expected, next);
        Box::pin(async move { Ok(result) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Holder;
    use kelpie_core::NodeId;

    fn record(epoch: u64, node: &str) -> PlacementRecord {
        PlacementRecord {
            actor_id: ActorId::new("agents", "a1").unwrap(),
            epoch,
            holder: Some(Holder { node_id: NodeId::new(node).unwrap(), lease_expires_at_ms: 10 }),
        }
    }

    #[test]
    fn compare_and_set_applies_only_on_expected_match() {
        let store = MemoryPlacementStore::new();
        assert_eq!(
            futures::executor::block_on(store.compare_and_set(None, record(1, "n1"))).unwrap(),
            CasResult::Applied
        );
        assert_eq!(
            futures::executor::block_on(store.compare_and_set(None, record(1, "n2"))).unwrap(),
            CasResult::Mismatch(Some(record(1, "n1")))
        );
        assert_eq!(
            futures::executor::block_on(store.compare_and_set(Some(record(1, "n1")), record(2, "n2")))
                .unwrap(),
            CasResult::Applied
        );
        let actor = ActorId::new("agents", "a1").unwrap();
        assert_eq!(futures::executor::block_on(store.get(&actor)).unwrap(), Some(record(2, "n2")));
    }
}
