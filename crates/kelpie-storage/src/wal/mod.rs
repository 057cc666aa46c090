//! The write-ahead log of mutating operations, stored through the storage
//! API itself, so it works (and is exactly as durable) on every backend.
//!
//! An operation on actor A with idempotency key K is recorded as a `Pending`
//! entry in A's reserved key space before it is applied. Applying it stages
//! its effects in a transaction on A that also moves the entry to `Complete`
//! and commits both at once: the effects and the status change are one
//! atomic commit, so an operation takes effect exactly once however often it
//! is retried or replayed. Submitting K again returns the first outcome.
//!
//! So that recovery can find pending entries without scanning every actor,
//! each one is also indexed under the system actor [`WAL_INDEX_ACTOR`]
//! (written before the entry, removed after it finishes); recovery walks the
//! index and lets [`entry::recovery_action`] decide per entry, which makes a
//! crash at any point during recovery harmless. Finished entries are kept
//! per actor up to `WAL_RETAINED_ENTRIES_COUNT_MAX`, then compacted oldest
//! first in the same commit that finishes a newer one.

pub mod entry;

use kelpie_core::{ActorId, Error, Result};

use crate::backend::BoxFut;
use crate::limits::{
    WAL_APPLY_ATTEMPTS_COUNT_MAX, WAL_IDEMPOTENCY_KEY_SIZE_BYTES_MAX, WAL_RECOVERY_BATCH_COUNT_MAX,
    WAL_RETAINED_ENTRIES_COUNT_MAX,
};
use crate::storage::{Storage, Transaction};
use crate::txn::KeySpace;
use crate::types::{FenceCondition, KeyRange, RESERVED_KEY_PREFIX_BYTE};
use entry::{recovery_action, RecoveryAction};
pub use entry::{WalEntry, WalOutcome, WalStatus};

/// Namespace and id of the system actor holding the pending-entry index.
pub const WAL_INDEX_ACTOR: (&str, &str) = ("kelpie.system", "wal-pending");

const ENTRY_TAG: u8 = b'e';
const DONE_TAG: u8 = b'd';
const META_TAG: u8 = b'm';

fn reserved_key(tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = vec![RESERVED_KEY_PREFIX_BYTE, b'w', tag];
    key.extend_from_slice(rest);
    key
}

fn entry_key(idempotency_key: &str) -> Vec<u8> {
    reserved_key(ENTRY_TAG, idempotency_key.as_bytes())
}

fn index_actor() -> ActorId {
    ActorId::new(WAL_INDEX_ACTOR.0, WAL_INDEX_ACTOR.1).expect("the WAL index actor id is valid")
}

fn index_key(actor: &ActorId, idempotency_key: &str) -> Vec<u8> {
    let mut key = actor.to_string().into_bytes();
    key.push(0x00);
    key.extend_from_slice(idempotency_key.as_bytes());
    key
}

fn parse_index_key(key: &[u8]) -> Result<(ActorId, String)> {
    let corrupt = |reason: &str| Error::Corruption { location: "wal index".into(), reason: reason.into() };
    let split = key.iter().position(|byte| *byte == 0x00).ok_or_else(|| corrupt("no separator"))?;
    let actor = std::str::from_utf8(&key[..split]).map_err(|_| corrupt("actor not UTF-8"))?;
    let actor = actor.parse::<ActorId>().map_err(|err| corrupt(&err.to_string()))?;
    let idempotency_key =
        String::from_utf8(key[split + 1..].to_vec()).map_err(|_| corrupt("key not UTF-8"))?;
    Ok((actor, idempotency_key))
}

fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::validation("idempotency key", "must not be empty"));
    }
    if key.len() > WAL_IDEMPOTENCY_KEY_SIZE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: "idempotency key".into(),
            actual: key.len() as u64,
            limit_name: "WAL_IDEMPOTENCY_KEY_SIZE_BYTES_MAX",
            limit: WAL_IDEMPOTENCY_KEY_SIZE_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// Applies an operation: stages its effects in `txn`, a transaction on the
/// target actor, and returns its result. It must not commit `txn`; the WAL
/// commits it together with the entry's status change. A non-retriable error
/// fails the entry for good; a retriable one leaves it pending for a retry.
pub trait WalApplier: Send + Sync {
    fn apply<'a>(&'a self, txn: &'a mut Transaction, op: &'a [u8]) -> BoxFut<'a, Result<Vec<u8>>>;
}

/// What one recovery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Pending entries applied to completion (or failure).
    pub replayed_count: usize,
    /// Index entries dropped because their entry had already finished.
    pub dropped_count: usize,
}

/// The WAL over one store.
#[derive(Debug, Clone)]
pub struct Wal {
    storage: Storage,
}

impl Wal {
    pub fn new(storage: Storage) -> Self {
        Wal { storage }
    }

    /// Records and applies `op` once for `idempotency_key`: a repeated key
    /// returns the outcome of the first execution without a second effect.
    pub async fn execute(
        &self,
        actor: &ActorId,
        idempotency_key: &str,
        op: Vec<u8>,
        applier: &dyn WalApplier,
        fence: Option<FenceCondition>,
    ) -> Result<WalOutcome> {
        let entry = self.append(actor, idempotency_key, op, fence.clone()).await?;
        match entry.outcome() {
            Some(outcome) => Ok(outcome),
            None => self.apply(actor, idempotency_key, applier, fence).await,
        }
    }

    /// Records `op` as pending unless `idempotency_key` is already known;
    /// returns the stored entry either way.
    pub async fn append(
        &self,
        actor: &ActorId,
        idempotency_key: &str,
        op: Vec<u8>,
        fence: Option<FenceCondition>,
    ) -> Result<WalEntry> {
        check_idempotency_key(idempotency_key)?;
        if let Some(existing) = self.entry(actor, idempotency_key).await? {
            return Ok(existing);
        }
        let mut index = self.storage.begin(index_actor());
        index.put(index_key(actor, idempotency_key), Vec::new())?;
        index.commit(None).await?;
        let mut txn = self.storage.begin(actor.clone());
        if let Some(existing) = read_entry(&mut txn, idempotency_key).await? {
            return Ok(existing);
        }
        let entry = WalEntry::pending(idempotency_key.to_string(), op);
        txn.write_in(entry_key(idempotency_key), Some(entry.encode()), KeySpace::Reserved)?;
        txn.commit(fence).await?;
        Ok(entry)
    }

    /// The stored entry for `idempotency_key`, if it is known (and not yet compacted).
    pub async fn entry(&self, actor: &ActorId, idempotency_key: &str) -> Result<Option<WalEntry>> {
        check_idempotency_key(idempotency_key)?;
        let mut txn = self.storage.begin(actor.clone());
        read_entry(&mut txn, idempotency_key).await
    }

    /// Applies a pending entry, committing its effects and its completion
    /// together; answers the stored outcome if it already finished.
    pub async fn apply(
        &self,
        actor: &ActorId,
        idempotency_key: &str,
        applier: &dyn WalApplier,
        fence: Option<FenceCondition>,
    ) -> Result<WalOutcome> {
        let mut last_error = None;
        for _ in 0..WAL_APPLY_ATTEMPTS_COUNT_MAX {
            match self.apply_once(actor, idempotency_key, applier, fence.clone()).await {
                Ok(outcome) => {
                    // The operation is done; a stale index entry only costs
                    // recovery a lookup, so failing to drop it is not an error.
                    if let Err(err) = self.drop_index(actor, idempotency_key).await {
                        tracing::warn!(%actor, idempotency_key, %err, "could not drop WAL index entry");
                    }
                    return Ok(outcome);
                }
                Err(err) if err.is_retriable() => last_error = Some(err),
                Err(err) => return Err(err),
            }
        }
        // Still pending: the caller may retry, and recovery will finish it.
        Err(last_error.unwrap_or_else(|| Error::Internal("no apply attempt ran".into())))
    }

    async fn apply_once(
        &self,
        actor: &ActorId,
        idempotency_key: &str,
        applier: &dyn WalApplier,
        fence: Option<FenceCondition>,
    ) -> Result<WalOutcome> {
        let mut txn = self.storage.begin(actor.clone());
        let entry = read_entry(&mut txn, idempotency_key)
            .await?
            .ok_or_else(|| Error::NotFound { kind: "WAL entry", id: format!("{actor}/{idempotency_key}") })?;
        if let Some(outcome) = entry.outcome() {
            return Ok(outcome);
        }
        let finished = match applier.apply(&mut txn, &entry.op).await {
            Ok(result) => entry.complete(result),
            Err(err) if err.is_retriable() => return Err(err),
            Err(err) => {
                // The operation's staged effects are discarded with `txn`;
                // the failure is recorded in a fresh transaction.
                txn = self.storage.begin(actor.clone());
                let current = read_entry(&mut txn, idempotency_key).await?;
                if current.as_ref() != Some(&entry) {
                    return Err(Error::TransactionConflict {
                        actor_id: actor.clone(),
                        key: idempotency_key.into(),
                    });
                }
                entry.fail(&err.to_string())
            }
        };
        let outcome = finished.outcome().expect("a finished entry has an outcome");
        txn.write_in(entry_key(idempotency_key), Some(finished.encode()), KeySpace::Reserved)?;
        retain_finished(&mut txn, idempotency_key).await?;
        txn.commit(fence).await?;
        Ok(outcome)
    }

    async fn drop_index(&self, actor: &ActorId, idempotency_key: &str) -> Result<()> {
        let mut index = self.storage.begin(index_actor());
        index.delete(index_key(actor, idempotency_key))?;
        index.commit(None).await.map(drop)
    }

    /// Finishes every pending entry (start-up recovery). Safe to run again
    /// after a crash part-way: finished entries are only dropped from the index.
    pub async fn recover(&self, applier: &dyn WalApplier) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        loop {
            let mut index = self.storage.begin(index_actor());
            let rows = index.scan(KeyRange::prefix(Vec::new())).await?;
            index.abort();
            if rows.is_empty() {
                return Ok(report);
            }
            let before = report;
            for (key, _) in rows.into_iter().take(WAL_RECOVERY_BATCH_COUNT_MAX) {
                let (actor, idempotency_key) = parse_index_key(&key)?;
                match recovery_action(self.entry(&actor, &idempotency_key).await?.as_ref()) {
                    RecoveryAction::Apply => {
                        self.apply(&actor, &idempotency_key, applier, None).await?;
                        report.replayed_count += 1;
                    }
                    RecoveryAction::DropIndex => {
                        self.drop_index(&actor, &idempotency_key).await?;
                        report.dropped_count += 1;
                    }
                }
            }
            assert!(report != before, "each recovery pass removes index entries");
        }
    }
}

async fn read_entry(txn: &mut Transaction, idempotency_key: &str) -> Result<Option<WalEntry>> {
    let stored = txn.get_in(&entry_key(idempotency_key), KeySpace::Reserved).await?;
    let entry = stored.map(|bytes| WalEntry::decode(&bytes)).transpose()?;
    assert!(entry.as_ref().is_none_or(|entry| entry.idempotency_key == idempotency_key));
    Ok(entry)
}

/// The retained range of finished entries: `(first, next)` sequence numbers.
fn decode_meta(bytes: &[u8]) -> Result<(u64, u64)> {
    let corrupt = || Error::Corruption {
        location: "wal meta".into(),
        reason: format!("{} bytes, not 16", bytes.len()),
    };
    let (first, next) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let next: [u8; 8] = next.try_into().map_err(|_| corrupt())?;
    let (first, next) = (u64::from_be_bytes(*first), u64::from_be_bytes(next));
    if first > next {
        return Err(Error::Corruption {
            location: "wal meta".into(),
            reason: format!("first {first} > next {next}"),
        });
    }
    Ok((first, next))
}

/// Records `idempotency_key` as finished and compacts the oldest finished
/// entry once more than `WAL_RETAINED_ENTRIES_COUNT_MAX` are kept.
async fn retain_finished(txn: &mut Transaction, idempotency_key: &str) -> Result<()> {
    let meta_key = reserved_key(META_TAG, &[]);
    let meta = txn.get_in(&meta_key, KeySpace::Reserved).await?;
    let (mut first, mut next) = match meta {
        None => (0, 0),
        Some(bytes) => decode_meta(&bytes)?,
    };
    txn.write_in(
        reserved_key(DONE_TAG, &next.to_be_bytes()),
        Some(idempotency_key.as_bytes().to_vec()),
        KeySpace::Reserved,
    )?;
    next += 1;
    while next - first > WAL_RETAINED_ENTRIES_COUNT_MAX as u64 {
        let done_key = reserved_key(DONE_TAG, &first.to_be_bytes());
        if let Some(old_key) = txn.get_in(&done_key, KeySpace::Reserved).await? {
            txn.write_in(reserved_key(ENTRY_TAG, &old_key), None, KeySpace::Reserved)?;
        }
        txn.write_in(done_key, None, KeySpace::Reserved)?;
        first += 1;
    }
    assert!(next - first <= WAL_RETAINED_ENTRIES_COUNT_MAX as u64 && next > first);
    let mut meta = first.to_be_bytes().to_vec();
    meta.extend_from_slice(&next.to_be_bytes());
    txn.write_in(meta_key, Some(meta), KeySpace::Reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_round_trip() {
        let actor = ActorId::new("agents", "a-1").unwrap();
        let key = index_key(&actor, "req:42");
        assert_eq!(parse_index_key(&key).unwrap(), (actor, "req:42".to_string()));
        assert!(matches!(parse_index_key(b"no-separator"), Err(Error::Corruption { .. })));
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(check_idempotency_key("k").is_ok());
        assert!(matches!(check_idempotency_key(""), Err(Error::Validation { .. })));
        let long = "k".repeat(WAL_IDEMPOTENCY_KEY_SIZE_BYTES_MAX + 1);
        let err = check_idempotency_key(&long).unwrap_err();
        assert!(err.to_string().contains("WAL_IDEMPOTENCY_KEY_SIZE_BYTES_MAX"), "{err}");
    }
}
