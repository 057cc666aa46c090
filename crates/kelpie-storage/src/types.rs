//! Plain data shared by the API, the sans-IO commit logic and the backends.
//!
//! Keys and values are bytes. A [`KeyRange`] is a half-open or closed byte
//! range inside one actor's key space; a [`CommitRequest`] is everything a
//! backend needs to validate and apply one transaction atomically: what was
//! read (with versions), what was scanned, what is written, and the optional
//! [`FenceCondition`].

use std::collections::BTreeMap;
use std::ops::Bound;

use kelpie_core::{ActorId, NodeId};

/// A stored value with the commit version that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    /// Commit version of the write; strictly positive, grows with every commit.
    pub version: u64,
}

/// Stored rows of one actor in key order: `(key, value with version)`.
pub type StoredRows = Vec<(Vec<u8>, Versioned)>;

/// A byte range of keys within one actor's key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key that starts with `prefix` (all keys when it is empty).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let prefix = prefix.into();
        let end = match prefix_successor(&prefix) {
            Some(successor) => Bound::Excluded(successor),
            None => Bound::Unbounded,
        };
        KeyRange { start: Bound::Included(prefix), end }
    }

    /// Keys in `[start, end)`.
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange { start: Bound::Included(start.into()), end: Bound::Excluded(end.into()) }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(start) => key >= start.as_slice(),
            Bound::Excluded(start) => key > start.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(end) => key <= end.as_slice(),
            Bound::Excluded(end) => key < end.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// Which end of a range a bounded scan starts from, and so the order of
/// the rows it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOrder {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// A bounded scan: at most `limit` rows of `range`, taken from the end
/// `order` names and returned in that order. The way to walk a range of
/// any size: each page starts past the last key of the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub range: KeyRange,
    pub order: ScanOrder,
    pub limit: usize,
}

impl ScanPage {
    pub fn new(range: KeyRange, order: ScanOrder, limit: usize) -> Self {
        ScanPage { range, order, limit }
    }

    /// The range the rows returned account for: the whole range when fewer
    /// than `limit` rows came back (the range is exhausted), else the part
    /// from the starting end through the last row returned.
    pub fn covered(&self, rows_count: usize, last_key: Option<&[u8]>) -> KeyRange {
        match last_key {
            Some(last) if rows_count >= self.limit => match self.order {
                ScanOrder::Ascending => {
                    KeyRange { start: self.range.start.clone(), end: Bound::Included(last.to_vec()) }
                }
                ScanOrder::Descending => {
                    KeyRange { start: Bound::Included(last.to_vec()), end: self.range.end.clone() }
                }
            },
            _ => self.range.clone(),
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last < u8::MAX {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// The condition under which an activation may commit: the placement of
/// `actor_id` must still name `node_id` at exactly `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceCondition {
    pub actor_id: ActorId,
    pub node_id: NodeId,
    pub epoch: u64,
}

/// Which node holds an actor, and under which fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub actor_id: ActorId,
    pub node_id: NodeId,
    /// Grows by one with every claim; never goes backwards.
    pub epoch: u64,
}

/// The result of a compare-and-set claim of a placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claim succeeded; the placement now holds the new epoch.
    Claimed(Placement),
    /// The stored epoch was not the expected one; nothing changed.
    Stale { current: Option<Placement> },
}

/// What a successful commit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    /// The version given to every key the commit wrote (0 for a commit that
    /// wrote nothing: it only validated its reads).
    pub version: u64,
}

/// One scan a transaction made, with the versions it observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanObservation {
    pub range: KeyRange,
    /// Every `(key, version)` the backend returned, in key order.
    pub seen: Vec<(Vec<u8>, u64)>,
}

/// A transaction ready to be validated and applied atomically by a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    pub actor_id: ActorId,
    /// Key → version seen when read (`None`: the key was absent).
    pub reads: BTreeMap<Vec<u8>, Option<u64>>,
    pub scans: Vec<ScanObservation>,
    /// Key → new value (`None`: delete).
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub fence: Option<FenceCondition>,
}

impl CommitRequest {
    /// Whether applying the request changes nothing (read-only transaction).
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let range = KeyRange::prefix(b"ab".to_vec());
        assert!(range.contains(b"ab"));
        assert!(range.contains(b"ab\xff\xff"));
        assert!(!range.contains(b"ac"));
        assert!(!range.contains(b"aa\xff"));
        assert_eq!(range.end, Bound::Excluded(b"ac".to_vec()));
        let all_ff = KeyRange::prefix(vec![0xFF, 0xFF]);
        assert_eq!(all_ff.end, Bound::Unbounded);
        assert_eq!(KeyRange::prefix(b"a\xff".to_vec()).end, Bound::Excluded(b"b".to_vec()));
    }

    #[test]
    fn a_full_page_covers_up_to_its_last_row_and_a_short_one_the_whole_range() {
        let range = KeyRange::between(b"a".to_vec(), b"z".to_vec());
        let up = ScanPage::new(range.clone(), ScanOrder::Ascending, 2);
        assert_eq!(
            up.covered(2, Some(b"c")),
            KeyRange { start: Bound::Included(b"a".to_vec()), end: Bound::Included(b"c".to_vec()) }
        );
        assert_eq!(up.covered(1, Some(b"c")), range);
        assert_eq!(up.covered(0, None), range);
        let down = ScanPage::new(range.clone(), ScanOrder::Descending, 2);
        assert_eq!(
            down.covered(2, Some(b"m")),
            KeyRange { start: Bound::Included(b"m".to_vec()), end: Bound::Excluded(b"z".to_vec()) }
        );
    }
}
