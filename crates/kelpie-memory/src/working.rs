//! Working memory: an agent's small key-value scratchpad whose entries
//! expire after a time-to-live.
//!
//! Time is an input: every call takes `now_ms`, which the caller reads from
//! the agent's [`kelpie_core::env::Clock`] with `wall_ms()`. Wall time,
//! not monotonic, because entries are persisted in the agent's state and
//! outlive the process, while the monotonic origin does not; a wall-clock
//! jump can therefore stretch or shorten a TTL, which a scratchpad accepts.
//!
//! Invariants:
//! - an entry with `expires_at_ms <= now_ms` is expired: never returned and
//!   never counted toward a limit;
//! - live entries are at most `entries_count_max`, each value at most
//!   `value_bytes_max`, keys plus values together at most `total_bytes_max`.
//!
//! Expired entries are purged on every write (put, delete). A put that would
//! still break a limit after the purge is refused with a
//! [`WorkingMemoryError`] naming the limit, and no live entry changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default most live entries one agent's working memory holds.
pub const WORKING_ENTRIES_COUNT_MAX: usize = 256;
/// Default largest value of one entry, in bytes.
pub const WORKING_VALUE_BYTES_MAX: usize = 16 * 1024;
/// Default largest sum of all live keys and values, in bytes.
pub const WORKING_TOTAL_BYTES_MAX: usize = 256 * 1024;
/// Longest key, in bytes.
pub const WORKING_KEY_BYTES_MAX: usize = 256;
/// Milliseconds in a second, for TTLs given and shown in seconds.
pub const MS_PER_SECOND: u64 = 1_000;
/// Longest time-to-live a put may ask for: 30 days, in milliseconds.
pub const WORKING_TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WorkingMemoryError {
    #[error("working memory key {key:?} is invalid: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("working memory key {key:?}: ttl {ttl_ms} ms is outside 1..={ttl_ms_max}")]
    InvalidTtl { key: String, ttl_ms: u64, ttl_ms_max: u64 },
    #[error("working memory key {key:?}: value is {actual_bytes} bytes, over value_bytes_max {limit_bytes}")]
    ValueTooLarge { key: String, actual_bytes: usize, limit_bytes: usize },
    #[error("working memory key {key:?}: already {limit_count} live entries, the entries_count_max")]
    TooManyEntries { key: String, limit_count: usize },
    #[error(
        "working memory key {key:?}: would hold {actual_bytes} bytes, over total_bytes_max {limit_bytes}"
    )]
    TotalOverLimit { key: String, actual_bytes: usize, limit_bytes: usize },
}

/// The limits of one working memory; the defaults are the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingLimits {
    pub entries_count_max: usize,
    pub value_bytes_max: usize,
    pub total_bytes_max: usize,
}

impl Default for WorkingLimits {
    fn default() -> WorkingLimits {
        WorkingLimits {
            entries_count_max: WORKING_ENTRIES_COUNT_MAX,
            value_bytes_max: WORKING_VALUE_BYTES_MAX,
            total_bytes_max: WORKING_TOTAL_BYTES_MAX,
        }
    }
}

/// One stored value and the instant it stops being visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingEntry {
    pub value: String,
    pub expires_at_ms: u64,
}

impl WorkingEntry {
    fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

fn entry_bytes(key: &str, value: &str) -> usize {
    key.len() + value.len()
}

/// An agent's working memory, kept in the agent actor's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingMemory {
    limits: WorkingLimits,
    entries: BTreeMap<String, WorkingEntry>,
    /// A planted defect (see [`WorkingMemory::plant_count_expired`]).
    #[serde(skip)]
    count_expired: bool,
}

impl WorkingMemory {
    pub fn new(limits: WorkingLimits) -> WorkingMemory {
        assert!(limits.entries_count_max > 0, "entries_count_max must be positive");
        assert!(limits.value_bytes_max > 0, "value_bytes_max must be positive");
        WorkingMemory { limits, entries: BTreeMap::new(), count_expired: false }
    }

    /// Plants a defect for the seeded test to find: `put` no longer drops
    /// expired entries first, so they count toward `entries_count_max` and
    /// `total_bytes_max` and refuse a put that live entries leave room for.
    /// Only tests call it.
    pub fn plant_count_expired(mut self) -> WorkingMemory {
        self.count_expired = true;
        self
    }

    pub fn limits(&self) -> WorkingLimits {
        self.limits
    }

    /// Stores `value` under `key` until `now_ms + ttl_ms`, replacing any
    /// earlier value (whose bytes then no longer count).
    pub fn put(
        &mut self,
        key: &str,
        value: String,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<(), WorkingMemoryError> {
        check_key(key)?;
        if ttl_ms == 0 || ttl_ms > WORKING_TTL_MS_MAX {
            let key = key.to_string();
            return Err(WorkingMemoryError::InvalidTtl { key, ttl_ms, ttl_ms_max: WORKING_TTL_MS_MAX });
        }
        if value.len() > self.limits.value_bytes_max {
            return Err(WorkingMemoryError::ValueTooLarge {
                key: key.to_string(),
                actual_bytes: value.len(),
                limit_bytes: self.limits.value_bytes_max,
            });
        }
        if !self.count_expired {
            self.purge_expired(now_ms);
        }
        let replaced = self.entries.get(key).filter(|entry| entry.is_live(now_ms));
        let replaced_bytes = replaced.map_or(0, |old| entry_bytes(key, &old.value));
        if replaced.is_none() && self.entries.len() >= self.limits.entries_count_max {
            let limit_count = self.limits.entries_count_max;
            return Err(WorkingMemoryError::TooManyEntries { key: key.to_string(), limit_count });
        }
        let actual_bytes = self.used_bytes(now_ms) - replaced_bytes + entry_bytes(key, &value);
        if actual_bytes > self.limits.total_bytes_max {
            return Err(WorkingMemoryError::TotalOverLimit {
                key: key.to_string(),
                actual_bytes,
                limit_bytes: self.limits.total_bytes_max,
            });
        }
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        self.entries.insert(key.to_string(), WorkingEntry { value, expires_at_ms });
        debug_assert!(self.entries.len() <= self.limits.entries_count_max);
        debug_assert_eq!(self.used_bytes(now_ms), actual_bytes);
        Ok(())
    }

    /// The live value under `key`, or `None` when absent or expired.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<&str> {
        let entry = self.entries.get(key).filter(|entry| entry.is_live(now_ms))?;
        debug_assert!(entry.value.len() <= self.limits.value_bytes_max);
        Some(&entry.value)
    }

    /// Removes `key`; true when a live entry was removed. Purges expired
    /// entries too.
    pub fn delete(&mut self, key: &str, now_ms: u64) -> bool {
        self.purge_expired(now_ms);
        let removed = self.entries.remove(key).is_some();
        debug_assert!(!self.entries.contains_key(key));
        removed
    }

    /// Live entries in key order.
    pub fn list(&self, now_ms: u64) -> impl Iterator<Item = (&str, &WorkingEntry)> {
        self.entries
            .iter()
            .filter(move |(_, entry)| entry.is_live(now_ms))
            .map(|(key, entry)| (key.as_str(), entry))
    }

    /// Number of live entries.
    pub fn len(&self, now_ms: u64) -> usize {
        self.list(now_ms).count()
    }

    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.len(now_ms) == 0
    }

    /// Bytes of live keys and values, the measure `total_bytes_max` bounds.
    pub fn used_bytes(&self, now_ms: u64) -> usize {
        self.list(now_ms).map(|(key, entry)| entry_bytes(key, &entry.value)).sum()
    }

    /// The live entries as prompt text, in key order, each with the whole
    /// seconds it has left (rounded up); expired entries are not shown.
    pub fn render(&self, now_ms: u64) -> String {
        let mut out = format!(
            "<working_memory entries=\"{}/{}\" bytes=\"{}/{}\">\n",
            self.len(now_ms),
            self.limits.entries_count_max,
            self.used_bytes(now_ms),
            self.limits.total_bytes_max
        );
        for (key, entry) in self.list(now_ms) {
            let left_ms = entry.expires_at_ms - now_ms;
            let left_seconds = left_ms.div_ceil(MS_PER_SECOND);
            out.push_str(&format!("{key} (expires in {left_seconds} s): {}\n", entry.value));
        }
        out.push_str("</working_memory>\n");
        out
    }

    fn purge_expired(&mut self, now_ms: u64) {
        self.entries.retain(|_, entry| entry.is_live(now_ms));
        debug_assert!(self.entries.values().all(|entry| entry.is_live(now_ms)));
    }
}

fn check_key(key: &str) -> Result<(), WorkingMemoryError> {
    let bad = |reason| Err(WorkingMemoryError::InvalidKey { key: key.to_string(), reason });
    if key.is_empty() {
        return bad("must not be empty");
    }
    if key.len() > WORKING_KEY_BYTES_MAX {
        return bad("longer than 256 bytes");
    }
    if key.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: WorkingLimits =
        WorkingLimits { entries_count_max: 2, value_bytes_max: 8, total_bytes_max: 12 };

    #[test]
    fn get_returns_value_until_expiry_then_none() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("plan", "step 1".into(), 100, 1_000).unwrap();
        assert_eq!(memory.get("plan", 1_000), Some("step 1"));
        assert_eq!(memory.get("plan", 1_099), Some("step 1"));
        assert_eq!(memory.get("plan", 1_100), None);
        assert_eq!(memory.list(1_100).count(), 0);
        assert_eq!(memory.used_bytes(1_100), 0);
    }

    #[test]
    fn expired_entry_frees_count_capacity_for_a_new_one() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("a", "1".into(), 50, 0).unwrap();
        memory.put("b", "2".into(), 500, 0).unwrap();
        let err = memory.put("c", "3".into(), 500, 10).unwrap_err();
        assert_eq!(err, WorkingMemoryError::TooManyEntries { key: "c".into(), limit_count: 2 });
        memory.put("c", "3".into(), 500, 50).unwrap();
        let live: Vec<_> = memory.list(50).map(|(key, entry)| (key, entry.value.as_str())).collect();
        assert_eq!(live, vec![("b", "2"), ("c", "3")]);
        assert_eq!(memory.get("a", 50), None);
    }

    #[test]
    fn expired_entry_frees_byte_capacity_for_a_new_one() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("k1", "12345678".into(), 10, 0).unwrap();
        assert_eq!(memory.used_bytes(0), 10);
        let err = memory.put("k2", "abc".into(), 10, 5).unwrap_err();
        assert_eq!(
            err,
            WorkingMemoryError::TotalOverLimit { key: "k2".into(), actual_bytes: 15, limit_bytes: 12 }
        );
        assert_eq!(memory.get("k1", 5), Some("12345678"));
        memory.put("k2", "abc".into(), 10, 10).unwrap();
        assert_eq!(memory.used_bytes(10), 5);
        assert_eq!(memory.get("k2", 10), Some("abc"));
    }

    #[test]
    fn replacing_a_key_counts_only_the_new_value() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("a", "1234".into(), 100, 0).unwrap();
        memory.put("b", "1234".into(), 100, 0).unwrap();
        memory.put("a", "123456".into(), 200, 0).unwrap();
        assert_eq!(memory.used_bytes(0), 12);
        assert_eq!(memory.get("a", 150), Some("123456"));
        assert_eq!(memory.get("b", 150), None);
    }

    #[test]
    fn limits_give_errors_naming_key_and_limit() {
        let mut memory = WorkingMemory::new(SMALL);
        let err = memory.put("big", "123456789".into(), 10, 0).unwrap_err();
        assert_eq!(
            err,
            WorkingMemoryError::ValueTooLarge { key: "big".into(), actual_bytes: 9, limit_bytes: 8 }
        );
        assert_eq!(err.to_string(), "working memory key \"big\": value is 9 bytes, over value_bytes_max 8");
        let err = memory.put("t", "x".into(), 0, 0).unwrap_err();
        assert_eq!(
            err,
            WorkingMemoryError::InvalidTtl { key: "t".into(), ttl_ms: 0, ttl_ms_max: WORKING_TTL_MS_MAX }
        );
        let err = memory.put("", "x".into(), 10, 0).unwrap_err();
        assert_eq!(err, WorkingMemoryError::InvalidKey { key: String::new(), reason: "must not be empty" });
        let long_key = "k".repeat(WORKING_KEY_BYTES_MAX + 1);
        assert!(matches!(
            memory.put(&long_key, "x".into(), 10, 0),
            Err(WorkingMemoryError::InvalidKey { .. })
        ));
        assert!(memory.is_empty(0));
    }

    #[test]
    fn delete_removes_live_entries_and_reports_expired_as_absent() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("a", "1".into(), 10, 0).unwrap();
        memory.put("b", "2".into(), 100, 0).unwrap();
        assert!(memory.delete("b", 5));
        assert_eq!(memory.get("b", 5), None);
        assert!(!memory.delete("a", 10));
        assert_eq!(memory.len(10), 0);
    }

    #[test]
    fn render_shows_live_entries_with_seconds_left_and_hides_expired_ones() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("a", "1".into(), 1_500, 0).unwrap();
        memory.put("b", "two".into(), 10_000, 0).unwrap();
        assert_eq!(
            memory.render(400),
            "<working_memory entries=\"2/2\" bytes=\"6/12\">\na (expires in 2 s): 1\nb (expires in 10 s): two\n</working_memory>\n"
        );
        assert_eq!(
            memory.render(1_500),
            "<working_memory entries=\"1/2\" bytes=\"4/12\">\nb (expires in 9 s): two\n</working_memory>\n"
        );
    }

    #[test]
    fn ttl_near_u64_max_saturates_instead_of_wrapping() {
        let mut memory = WorkingMemory::default();
        memory.put("k", "v".into(), WORKING_TTL_MS_MAX, u64::MAX - 1).unwrap();
        assert_eq!(memory.list(u64::MAX - 1).next().unwrap().1.expires_at_ms, u64::MAX);
        assert_eq!(memory.get("k", u64::MAX), None);
    }

    #[test]
    fn survives_a_serde_round_trip_with_limits_and_expiry() {
        let mut memory = WorkingMemory::new(SMALL);
        memory.put("a", "1".into(), 100, 0).unwrap();
        let json = serde_json::to_string(&memory).unwrap();
        let back: WorkingMemory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, memory);
        assert_eq!(back.limits(), SMALL);
        assert_eq!(back.get("a", 99), Some("1"));
        assert_eq!(back.get("a", 100), None);
    }
}
