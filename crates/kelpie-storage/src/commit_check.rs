//! Commit validation, shared by every backend (sans-IO).
//!
//! Optimistic concurrency: a transaction records the version of every key it
//! read and the `(key, version)` rows of every range it scanned. At commit the
//! backend, inside its atomic section, observes the current state of exactly
//! those keys and ranges plus the placement named by the fence, and hands the
//! observation to [`check_commit`]. The commit may proceed only if nothing it
//! depended on changed and the fence (if any) still holds. The fence is
//! checked first: a fenced activation must learn it is fenced (permanent), not
//! that it conflicted (retriable).

use std::collections::BTreeMap;

use kelpie_core::{Error, Result};

use crate::limits::SCAN_ROWS_COUNT_MAX;
use crate::txn::key_text;
use crate::types::{CommitRequest, KeyRange, Placement};

/// The current state of everything a [`CommitRequest`] depends on.
#[derive(Debug, Default)]
pub(crate) struct CommitObservation {
    /// Current version of every key in `request.reads`.
    pub read_versions: BTreeMap<Vec<u8>, Option<u64>>,
    /// Current `(key, version)` rows of every range in `request.scans`, in order.
    pub scan_rows: Vec<Vec<(Vec<u8>, u64)>>,
    /// Current placement of the fenced actor (when the request has a fence).
    pub placement: Option<Placement>,
}

/// Synchronous access to committed state, for backends that validate inline
/// (memory, and redb inside its write transaction).
pub(crate) trait CommitView {
    fn version_of(&self, key: &[u8]) -> Result<Option<u64>>;
    /// At most `SCAN_ROWS_COUNT_MAX + 1` rows of `range`, in key order.
    fn scan_versions(&self, range: &KeyRange) -> Result<Vec<(Vec<u8>, u64)>>;
    fn placement(&self) -> Result<Option<Placement>>;
}

/// Gathers the observation for `request` from a synchronous view.
pub(crate) fn observe(request: &CommitRequest, view: &dyn CommitView) -> Result<CommitObservation> {
    let mut observation = CommitObservation::default();
    for key in request.reads.keys() {
        observation.read_versions.insert(key.clone(), view.version_of(key)?);
    }
    for scan in &request.scans {
        let rows = view.scan_versions(&scan.range)?;
        assert!(rows.len() <= SCAN_ROWS_COUNT_MAX + 1, "a view returns at most one row past the limit");
        observation.scan_rows.push(rows);
    }
    if request.fence.is_some() {
        observation.placement = view.placement()?;
    }
    Ok(observation)
}

/// Decides whether `request` may commit given the current `observation`.
pub(crate) fn check_commit(request: &CommitRequest, observation: &CommitObservation) -> Result<()> {
    assert_eq!(observation.scan_rows.len(), request.scans.len(), "one observation per scan");
    if let Some(fence) = &request.fence {
        assert_eq!(fence.actor_id, request.actor_id, "a fence guards the committing actor");
        let holds = observation
            .placement
            .as_ref()
            .is_some_and(|placement| placement.node_id == fence.node_id && placement.epoch == fence.epoch);
        if !holds {
            return Err(Error::Fenced {
                actor_id: fence.actor_id.clone(),
                node_id: fence.node_id.clone(),
                epoch: fence.epoch,
            });
        }
    }
    for (key, seen) in &request.reads {
        let current = observation.read_versions.get(key).copied().flatten();
        if current != *seen {
            return Err(conflict(request, key));
        }
    }
    for (scan, current) in request.scans.iter().zip(&observation.scan_rows) {
        if scan.seen != *current {
            let key = first_difference(&scan.seen, current);
            return Err(conflict(request, &key));
        }
    }
    Ok(())
}

fn conflict(request: &CommitRequest, key: &[u8]) -> Error {
    Error::TransactionConflict { actor_id: request.actor_id.clone(), key: key_text(key) }
}

/// The first key at which two scans of one range disagree.
fn first_difference(seen: &[(Vec<u8>, u64)], current: &[(Vec<u8>, u64)]) -> Vec<u8> {
    assert!(seen != current, "called only when the scans differ");
    let mismatch = seen.iter().zip(current).find(|(a, b)| a != b);
    match mismatch {
        Some((a, b)) => a.0.clone().min(b.0.clone()),
        None => {
            seen.get(current.len()).or(current.get(seen.len())).map(|row| row.0.clone()).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use kelpie_core::{ActorId, NodeId};

    use super::*;
    use crate::types::{FenceCondition, ScanObservation};

    fn actor() -> ActorId {
        ActorId::new("agents", "a1").unwrap()
    }

    fn request() -> CommitRequest {
        CommitRequest {
            actor_id: actor(),
            reads: BTreeMap::from([(b"r".to_vec(), Some(3)), (b"absent".to_vec(), None)]),
            scans: vec![ScanObservation {
                range: KeyRange::prefix(b"p".to_vec()),
                seen: vec![(b"p1".to_vec(), 2)],
            }],
            writes: BTreeMap::from([(b"w".to_vec(), Some(b"v".to_vec()))]),
            fence: None,
        }
    }

    fn unchanged() -> CommitObservation {
        CommitObservation {
            read_versions: BTreeMap::from([(b"r".to_vec(), Some(3)), (b"absent".to_vec(), None)]),
            scan_rows: vec![vec![(b"p1".to_vec(), 2)]],
            placement: None,
        }
    }

    #[test]
    fn unchanged_state_commits() {
        assert_eq!(check_commit(&request(), &unchanged()), Ok(()));
    }

    #[test]
    fn changed_read_or_inserted_key_conflicts_naming_the_key() {
        let mut changed = unchanged();
        changed.read_versions.insert(b"absent".to_vec(), Some(7));
        let err = check_commit(&request(), &changed).unwrap_err();
        assert_eq!(err, Error::TransactionConflict { actor_id: actor(), key: "absent".into() });
        assert!(err.is_retriable());
    }

    #[test]
    fn phantom_row_in_scanned_range_conflicts() {
        let mut changed = unchanged();
        changed.scan_rows[0].push((b"p2".to_vec(), 9));
        let err = check_commit(&request(), &changed).unwrap_err();
        assert_eq!(err, Error::TransactionConflict { actor_id: actor(), key: "p2".into() });
    }

    #[test]
    fn fence_is_checked_before_conflicts_and_is_permanent() {
        let node = NodeId::new("n1").unwrap();
        let mut fenced = request();
        fenced.fence = Some(FenceCondition { actor_id: actor(), node_id: node.clone(), epoch: 2 });
        let mut changed = unchanged();
        changed.read_versions.insert(b"r".to_vec(), Some(4));
        changed.placement = Some(Placement { actor_id: actor(), node_id: node.clone(), epoch: 3 });
        let err = check_commit(&fenced, &changed).unwrap_err();
        assert_eq!(err, Error::Fenced { actor_id: actor(), node_id: node.clone(), epoch: 2 });
        assert!(!err.is_retriable());
        let mut holds = unchanged();
        holds.placement = Some(Placement { actor_id: actor(), node_id: node, epoch: 2 });
        assert_eq!(check_commit(&fenced, &holds), Ok(()));
    }
}
