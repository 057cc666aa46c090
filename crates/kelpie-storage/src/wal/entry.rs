//! The WAL entry state machine and its encoding (sans-IO).
//!
//! An entry is born `Pending` when its operation is appended, and moves at
//! most once, to `Complete` (with the operation's result) or `Failed` (with
//! the reason). Any other transition is a bug and panics. Recovery decides
//! what to do with an indexed entry from its state alone
//! ([`recovery_action`]), so it can be re-run after a crash at any point.

use kelpie_core::{Error, Result};

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalStatus {
    Pending,
    Complete,
    Failed,
}

impl WalStatus {
    fn to_byte(self) -> u8 {
        match self {
            WalStatus::Pending => 1,
            WalStatus::Complete => 2,
            WalStatus::Failed => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(WalStatus::Pending),
            2 => Some(WalStatus::Complete),
            3 => Some(WalStatus::Failed),
            _ => None,
        }
    }
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    pub idempotency_key: String,
    /// The operation, encoded by the caller.
    pub op: Vec<u8>,
    pub status: WalStatus,
    /// The result (`Complete`) or the failure reason as UTF-8 (`Failed`);
    /// empty while `Pending`.
    pub outcome: Vec<u8>,
}

/// How an operation ended, as answered to every caller of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalOutcome {
    Completed(Vec<u8>),
    Failed(String),
}

impl WalEntry {
    pub fn pending(idempotency_key: String, op: Vec<u8>) -> Self {
        assert!(!idempotency_key.is_empty());
        WalEntry { idempotency_key, op, status: WalStatus::Pending, outcome: Vec::new() }
    }

    /// `Pending → Complete`. Panics from any other state.
    pub fn complete(self, result: Vec<u8>) -> Self {
        assert_eq!(self.status, WalStatus::Pending, "WAL entry {:?} finished twice", self.idempotency_key);
        WalEntry { status: WalStatus::Complete, outcome: result, ..self }
    }

    /// `Pending → Failed`. Panics from any other state.
    pub fn fail(self, reason: &str) -> Self {
        assert_eq!(self.status, WalStatus::Pending, "WAL entry {:?} finished twice", self.idempotency_key);
        WalEntry { status: WalStatus::Failed, outcome: reason.as_bytes().to_vec(), ..self }
    }

    /// The final answer, once the entry is no longer pending.
    pub fn outcome(&self) -> Option<WalOutcome> {
        match self.status {
            WalStatus::Pending => None,
            WalStatus::Complete => Some(WalOutcome::Completed(self.outcome.clone())),
            WalStatus::Failed => {
                Some(WalOutcome::Failed(String::from_utf8_lossy(&self.outcome).into_owned()))
            }
        }
    }

    /// `status ‖ key len (u32 BE) ‖ key ‖ op len (u32 BE) ‖ op ‖ outcome`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(9 + self.idempotency_key.len() + self.op.len() + self.outcome.len());
        bytes.push(self.status.to_byte());
        for part in [self.idempotency_key.as_bytes(), self.op.as_slice()] {
            let len = u32::try_from(part.len()).expect("WAL parts are bounded by the value size limit");
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(part);
        }
        bytes.extend_from_slice(&self.outcome);
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt =
            |reason: &str| Error::Corruption { location: "wal entry".into(), reason: reason.into() };
        let (&status, mut rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        let status = WalStatus::from_byte(status).ok_or_else(|| corrupt("unknown status"))?;
        let mut parts = Vec::with_capacity(2);
        for _ in 0..2 {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| corrupt("truncated length"))?;
            let len = u32::from_be_bytes(*len) as usize;
            if tail.len() < len {
                return Err(corrupt("truncated part"));
            }
            parts.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        let op = parts.pop().unwrap_or_default();
        let key = String::from_utf8(parts.pop().unwrap_or_default()).map_err(|_| corrupt("key not UTF-8"))?;
        if key.is_empty() {
            return Err(corrupt("empty idempotency key"));
        }
        Ok(WalEntry { idempotency_key: key, op, status, outcome: rest.to_vec() })
    }
}

/// What recovery does with one indexed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecoveryAction {
    /// The entry is pending: apply it to completion.
    Apply,
    /// The entry finished (or was never written, because the crash came
    /// between indexing and appending): only the index entry remains to drop.
    DropIndex,
}

pub(crate) fn recovery_action(entry: Option<&WalEntry>) -> RecoveryAction {
    match entry.map(|entry| entry.status) {
        Some(WalStatus::Pending) => RecoveryAction::Apply,
        Some(WalStatus::Complete | WalStatus::Failed) | None => RecoveryAction::DropIndex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_through_its_encoding() {
        let pending = WalEntry::pending("req-1".into(), b"op bytes".to_vec());
        assert_eq!(WalEntry::decode(&pending.encode()).unwrap(), pending);
        let complete = pending.complete(b"result".to_vec());
        let decoded = WalEntry::decode(&complete.encode()).unwrap();
        assert_eq!(decoded.outcome(), Some(WalOutcome::Completed(b"result".to_vec())));
        assert_eq!(decoded, complete);
    }

    #[test]
    fn truncated_encodings_are_corruption() {
        let bytes = WalEntry::pending("k".into(), b"op".to_vec()).encode();
        for len in 0..bytes.len() - 2 {
            let err = WalEntry::decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, Error::Corruption { .. }), "prefix of {len} bytes: {err}");
        }
    }

    #[test]
    fn status_moves_only_from_pending() {
        let failed = WalEntry::pending("k".into(), Vec::new()).fail("bad input");
        assert_eq!(failed.status, WalStatus::Failed);
        assert_eq!(failed.outcome(), Some(WalOutcome::Failed("bad input".into())));
        let again = std::panic::catch_unwind(|| failed.clone().complete(Vec::new()));
        assert!(again.is_err(), "Failed -> Complete must panic");
    }

    #[test]
    fn recovery_applies_only_pending_entries() {
        let pending = WalEntry::pending("k".into(), Vec::new());
        assert_eq!(recovery_action(Some(&pending)), RecoveryAction::Apply);
        assert_eq!(recovery_action(Some(&pending.clone().complete(Vec::new()))), RecoveryAction::DropIndex);
        assert_eq!(recovery_action(Some(&pending.fail("x"))), RecoveryAction::DropIndex);
        assert_eq!(recovery_action(None), RecoveryAction::DropIndex);
    }
}
