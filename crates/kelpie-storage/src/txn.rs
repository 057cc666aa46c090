//! The sans-IO transaction buffer: read set, scan set, write set and limits.
//!
//! A transaction never touches the backend to write: puts and deletes land in
//! the write set (so reads see them: read-your-writes), reads record the
//! version they observed, and at commit the buffer becomes one
//! [`CommitRequest`] that the backend validates and applies atomically.
//! Every limit of `kelpie_core::limits` is enforced here, where the data
//! enters, so no backend ever receives an oversized request.

use std::collections::BTreeMap;

use kelpie_core::limits::{
    STORAGE_KEY_SIZE_BYTES_MAX, STORAGE_VALUE_SIZE_BYTES_MAX, TRANSACTION_OPS_COUNT_MAX,
    TRANSACTION_SIZE_BYTES_MAX,
};
use kelpie_core::{ActorId, Error, Result};

use crate::types::{CommitRequest, FenceCondition, KeyRange, ScanObservation, StoredRows};

/// Checks a key against its size limit.
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > STORAGE_KEY_SIZE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: format!("key of {} bytes", key.len()),
            actual: key.len() as u64,
            limit_name: "STORAGE_KEY_SIZE_BYTES_MAX",
            limit: STORAGE_KEY_SIZE_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// Display form of a key for error messages: UTF-8 when it is, else escaped.
pub(crate) fn key_text(key: &[u8]) -> String {
    String::from_utf8(key.to_vec()).unwrap_or_else(|_| key.escape_ascii().to_string())
}

/// The buffered state of one open transaction.
#[derive(Debug)]
pub(crate) struct TxnBuffer {
    actor_id: ActorId,
    reads: BTreeMap<Vec<u8>, Option<u64>>,
    scans: Vec<ScanObservation>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ops_count: usize,
    write_bytes: usize,
}

impl TxnBuffer {
    pub(crate) fn new(actor_id: ActorId) -> Self {
        TxnBuffer {
            actor_id,
            reads: BTreeMap::new(),
            scans: Vec::new(),
            writes: BTreeMap::new(),
            ops_count: 0,
            write_bytes: 0,
        }
    }

    pub(crate) fn writes_count(&self) -> usize {
        self.writes.len()
    }

    pub(crate) fn actor_id(&self) -> &ActorId {
        &self.actor_id
    }

    /// The transaction's own write of `key`, if any: `Some(None)` is a delete.
    pub(crate) fn local(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|value| value.as_deref())
    }

    /// Remembers the version a read observed. The first observation of a key
    /// is the one validated at commit: later reads cannot hide a change.
    pub(crate) fn record_read(&mut self, key: &[u8], version: Option<u64>) {
        assert!(version != Some(0), "stored versions are strictly positive");
        self.reads.entry(key.to_vec()).or_insert(version);
    }

    /// How many of the transaction's own deletes fall inside `range`.
    pub(crate) fn deletes_in(&self, range: &KeyRange) -> usize {
        self.writes.iter().filter(|(key, value)| value.is_none() && range.contains(key)).count()
    }

    /// Remembers a scan and merges the transaction's own writes into its rows.
    pub(crate) fn record_scan(&mut self, range: KeyRange, rows: StoredRows) -> Vec<(Vec<u8>, Vec<u8>)> {
        assert!(rows.windows(2).all(|pair| pair[0].0 < pair[1].0), "scan rows must be sorted and unique");
        let seen = rows.iter().map(|(key, stored)| (key.clone(), stored.version)).collect();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            rows.into_iter().map(|(key, stored)| (key, stored.value)).collect();
        for (key, value) in self.writes.iter().filter(|(key, _)| range.contains(key)) {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        self.scans.push(ScanObservation { range, seen });
        merged.into_iter().collect()
    }

    /// Buffers a write (`None` deletes), enforcing every transaction limit.
    pub(crate) fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        check_key(&key)?;
        let value_len = value.as_ref().map_or(0, Vec::len);
        if value_len > STORAGE_VALUE_SIZE_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: format!("value of key {:?}", key_text(&key)),
                actual: value_len as u64,
                limit_name: "STORAGE_VALUE_SIZE_BYTES_MAX",
                limit: STORAGE_VALUE_SIZE_BYTES_MAX as u64,
            });
        }
        if self.ops_count + 1 > TRANSACTION_OPS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: format!("transaction of actor {} operation count", self.actor_id),
                actual: (self.ops_count + 1) as u64,
                limit_name: "TRANSACTION_OPS_COUNT_MAX",
                limit: TRANSACTION_OPS_COUNT_MAX as u64,
            });
        }
        let replaced = self.writes.get(&key).map_or(0, |old| key.len() + old.as_ref().map_or(0, Vec::len));
        let new_bytes = self.write_bytes - replaced + key.len() + value_len;
        if new_bytes > TRANSACTION_SIZE_BYTES_MAX {
            return Err(Error::LimitExceeded {
                what: format!("transaction of actor {} write size in bytes", self.actor_id),
                actual: new_bytes as u64,
                limit_name: "TRANSACTION_SIZE_BYTES_MAX",
                limit: TRANSACTION_SIZE_BYTES_MAX as u64,
            });
        }
        self.ops_count += 1;
        self.write_bytes = new_bytes;
        self.writes.insert(key, value);
        assert!(self.write_bytes <= TRANSACTION_SIZE_BYTES_MAX);
        Ok(())
    }

    /// Turns the buffer into the request a backend commits.
    pub(crate) fn into_request(self, fence: Option<FenceCondition>) -> CommitRequest {
        assert!(self.ops_count >= self.writes.len(), "each buffered key took at least one operation");
        CommitRequest {
            actor_id: self.actor_id,
            reads: self.reads,
            scans: self.scans,
            writes: self.writes,
            fence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Versioned;

    fn buffer() -> TxnBuffer {
        TxnBuffer::new(ActorId::new("agents", "a1").unwrap())
    }

    #[test]
    fn writes_are_visible_locally_and_deletes_shadow_rows() {
        let mut txn = buffer();
        txn.write(b"a".to_vec(), Some(b"1".to_vec())).unwrap();
        txn.write(b"b".to_vec(), None).unwrap();
        assert_eq!(txn.local(b"a"), Some(Some(&b"1"[..])));
        assert_eq!(txn.local(b"b"), Some(None));
        assert_eq!(txn.local(b"c"), None);
        let rows = vec![
            (b"b".to_vec(), Versioned { value: b"old".to_vec(), version: 3 }),
            (b"c".to_vec(), Versioned { value: b"3".to_vec(), version: 4 }),
        ];
        let merged = txn.record_scan(KeyRange::prefix(Vec::new()), rows);
        assert_eq!(merged, vec![(b"a".to_vec(), b"1".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
        let request = txn.into_request(None);
        assert_eq!(request.scans[0].seen, vec![(b"b".to_vec(), 3), (b"c".to_vec(), 4)]);
        assert_eq!(request.writes.len(), 2);
    }

    #[test]
    fn overwrites_count_bytes_once() {
        let mut txn = buffer();
        txn.write(b"k".to_vec(), Some(vec![0; 100])).unwrap();
        txn.write(b"k".to_vec(), Some(vec![0; 10])).unwrap();
        assert_eq!(txn.write_bytes, 11);
        assert_eq!(txn.ops_count, 2);
    }

    #[test]
    fn first_read_version_is_kept() {
        let mut txn = buffer();
        txn.record_read(b"k", Some(5));
        txn.record_read(b"k", Some(9));
        assert_eq!(txn.into_request(None).reads.get(b"k".as_slice()), Some(&Some(5)));
    }
}
