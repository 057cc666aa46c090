//! Properties of transactional storage.
//!
//! Versions: every committed transaction gets a commit sequence number
//! (`seq`, strictly positive, increasing in commit order); a stored value
//! remembers the `seq` of the transaction that wrote it, and `0` stands for
//! "never written".

use std::collections::{BTreeMap, BTreeSet};

use super::{
    violation, Ident, PropertyResult, ATOMIC_VISIBILITY, DURABILITY, FAILURE_ATOMICITY, READ_YOUR_WRITES,
    SERIALIZABLE_ISOLATION,
};

/// A value and the commit sequence number of its writer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionedValue<V> {
    pub seq: u64,
    pub value: V,
}

/// Durability: for every key, durable state holds the last acknowledged
/// write or a later one, never an older one or nothing.
pub fn durability<K: Ident, V: PartialEq + std::fmt::Debug>(
    acknowledged: &BTreeMap<K, VersionedValue<V>>,
    durable: &BTreeMap<K, VersionedValue<V>>,
) -> PropertyResult {
    for (key, acked) in acknowledged {
        let kept = durable.get(key);
        let ok = kept.is_some_and(|d| d.seq > acked.seq || (d.seq == acked.seq && d.value == acked.value));
        if !ok {
            return violation(
                DURABILITY,
                format!("key {key:?} acknowledged as {acked:?} but durable {kept:?}"),
            );
        }
    }
    Ok(())
}

/// FailureAtomicity: no key written by a request that was answered with a
/// definite failure (its handler failed or panicked, or its commit was
/// refused, so it committed nothing) is in durable state.
pub fn failure_atomicity<K: Ident, V: std::fmt::Debug>(
    failed: &BTreeSet<K>,
    durable: &BTreeMap<K, V>,
) -> PropertyResult {
    for key in failed {
        if let Some(kept) = durable.get(key) {
            return violation(
                FAILURE_ATOMICITY,
                format!("{key:?} was answered with a failure, yet durable state holds its write {kept:?}"),
            );
        }
    }
    Ok(())
}

/// One transaction as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedTxn<K> {
    /// Key -> `seq` of the version the transaction read (0: never written).
    pub reads: BTreeMap<K, u64>,
    pub writes: BTreeSet<K>,
    /// The transaction's commit sequence number, if it committed.
    pub commit_seq: Option<u64>,
}

/// AtomicVisibility: for every committed transaction, either each of its
/// keys shows its write (or a later one) or none does.
pub fn atomic_visibility<K: Ident>(txns: &[ObservedTxn<K>], visible: &BTreeMap<K, u64>) -> PropertyResult {
    for txn in txns {
        let Some(seq) = txn.commit_seq else { continue };
        let shown: BTreeSet<&K> =
            txn.writes.iter().filter(|key| visible.get(*key).copied().unwrap_or(0) >= seq).collect();
        if !shown.is_empty() && shown.len() != txn.writes.len() {
            return violation(
                ATOMIC_VISIBILITY,
                format!("transaction {seq} is visible at {shown:?} only, of {:?}", txn.writes),
            );
        }
    }
    Ok(())
}

/// One read inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObservedRead<K, V> {
    pub key: K,
    /// The transaction's own latest buffered write of `key` at the time of
    /// the read: `Some(None)` is a buffered delete, `None` no write.
    pub own_write: Option<Option<V>>,
    pub returned: Option<V>,
}

/// ReadYourWrites: a read of a key the transaction wrote returns that write.
pub fn read_your_writes<K: Ident, V: PartialEq + std::fmt::Debug>(
    reads: &[ObservedRead<K, V>],
) -> PropertyResult {
    for read in reads {
        if let Some(own) = &read.own_write {
            if own != &read.returned {
                return violation(READ_YOUR_WRITES, format!("{read:?}"));
            }
        }
    }
    Ok(())
}

/// SerializableIsolation: a committed transaction saw, for every key it
/// read, the last version committed before it; so of two conflicting
/// transactions (one reads what the other writes, concurrently) at most one
/// commits. This is the optimistic check every backend performs.
pub fn serializable_isolation<K: Ident>(txns: &[ObservedTxn<K>]) -> PropertyResult {
    for txn in txns {
        let Some(seq) = txn.commit_seq else { continue };
        for (key, read_seq) in &txn.reads {
            let overwritten = txns.iter().find_map(|other| {
                let other_seq = other.commit_seq?;
                (other.writes.contains(key) && *read_seq < other_seq && other_seq < seq).then_some(other_seq)
            });
            if let Some(other_seq) = overwritten {
                return violation(SERIALIZABLE_ISOLATION, format!(
                    "transaction {seq} read {key:?} at version {read_seq}, but transaction {other_seq} wrote it before {seq} committed"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(seq: u64, value: &str) -> VersionedValue<&str> {
        VersionedValue { seq, value }
    }
    fn txn(reads: &[(char, u64)], writes: &[char], commit_seq: Option<u64>) -> ObservedTxn<char> {
        ObservedTxn {
            reads: reads.iter().copied().collect(),
            writes: writes.iter().copied().collect(),
            commit_seq,
        }
    }

    #[test]
    fn durability_accepts_newer_and_rejects_lost_or_older() {
        let acked = BTreeMap::from([('x', vv(2, "b"))]);
        assert_eq!(durability(&acked, &BTreeMap::from([('x', vv(2, "b"))])), Ok(()));
        assert_eq!(durability(&acked, &BTreeMap::from([('x', vv(3, "c"))])), Ok(()));
        assert!(durability(&acked, &BTreeMap::from([('x', vv(1, "a"))])).is_err());
        let err = durability(&acked, &BTreeMap::new()).unwrap_err();
        assert_eq!(err.property, DURABILITY);
    }

    #[test]
    fn failure_atomicity_rejects_a_failed_request_in_durable_state() {
        let durable = BTreeMap::from([('x', vv(1, "a")), ('y', vv(2, "b"))]);
        assert_eq!(failure_atomicity(&BTreeSet::from(['z']), &durable), Ok(()));
        assert_eq!(failure_atomicity(&BTreeSet::new(), &durable), Ok(()));
        let err = failure_atomicity(&BTreeSet::from(['z', 'y']), &durable).unwrap_err();
        assert_eq!(err.property, FAILURE_ATOMICITY);
        assert!(err.detail.contains("'y'"), "{err}");
    }

    #[test]
    fn atomic_visibility_rejects_a_half_applied_transaction() {
        let txns = [txn(&[], &['x', 'y'], Some(1))];
        assert_eq!(atomic_visibility(&txns, &BTreeMap::from([('x', 1), ('y', 1)])), Ok(()));
        assert_eq!(atomic_visibility(&txns, &BTreeMap::new()), Ok(()));
        assert_eq!(atomic_visibility(&txns, &BTreeMap::from([('x', 2), ('y', 1)])), Ok(()));
        let err = atomic_visibility(&txns, &BTreeMap::from([('x', 1)])).unwrap_err();
        assert_eq!(err.property, ATOMIC_VISIBILITY);
    }

    #[test]
    fn read_your_writes_compares_with_the_buffered_write() {
        let good = ObservedRead { key: 'x', own_write: Some(Some(2)), returned: Some(2) };
        let deleted = ObservedRead { key: 'x', own_write: Some(None), returned: None };
        let unwritten = ObservedRead { key: 'y', own_write: None, returned: Some(9) };
        assert_eq!(read_your_writes(&[good, deleted, unwritten]), Ok(()));
        let stale = ObservedRead { key: 'x', own_write: Some(Some(2)), returned: Some(1) };
        assert_eq!(read_your_writes(&[stale]).unwrap_err().property, READ_YOUR_WRITES);
    }

    #[test]
    fn serializable_isolation_rejects_a_lost_update() {
        let serial = [txn(&[('x', 0)], &['x'], Some(1)), txn(&[('x', 1)], &['x'], Some(2))];
        assert_eq!(serializable_isolation(&serial), Ok(()));
        let one_aborted = [txn(&[('x', 0)], &['x'], Some(1)), txn(&[('x', 0)], &['x'], None)];
        assert_eq!(serializable_isolation(&one_aborted), Ok(()));
        let lost_update = [txn(&[('x', 0)], &['x'], Some(1)), txn(&[('x', 0)], &['x'], Some(2))];
        let err = serializable_isolation(&lost_update).unwrap_err();
        assert!(err.detail.contains("transaction 1 wrote it before 2"), "{err}");
    }
}
