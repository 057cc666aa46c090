//! A simulated disk holding one node's key-value data.
//!
//! The model has two layers. Writes ([`SimStorage::write_batch`], `put`,
//! `delete`) land in the *pending* layer, like data in the page cache: reads
//! see it, a crash loses it. [`SimStorage::flush`] makes pending batches
//! *durable*, in order. A crash of the node (any crash fault, or
//! [`crate::Simulation::crash_node`]) drops exactly the pending layer.
//!
//! Each batch is atomic on its own (it lands whole or not at all), as in an
//! embedded transactional engine, unless the [`crate::Fault::StoragePartialWrite`]
//! fault tears it. Durable records carry a checksum over key and value that
//! every read verifies, so injected corruption surfaces as
//! [`StorageError::Corrupt`], never as wrong data. A batch may carry
//! conditions (compare-and-set on keys) checked atomically with its writes;
//! that is where fencing checks and the concurrency-conflict fault live.
//!
//! Fault points: reads (read fail, latency); writes (crash before write,
//! write fail, disk full, conflict, partial write, latency); flushes (write
//! fail, crash during transaction, crash after write, corruption, latency).
//! Another crate's storage backend can be built on this type in its tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kelpie_core::limits::{STORAGE_VALUE_SIZE_BYTES_MAX, TRANSACTION_OPS_COUNT_MAX};
use kelpie_core::{NodeId, RngSource};
use thiserror::Error;

use crate::executor::{Executor, Sleep};
use crate::fault::{Fault, FaultKind};
use crate::hash::{fnv1a64, Fnv1a64};
use crate::rng::DeterministicRng;
use crate::trace::{StorageOpKind, TraceEventKind};

/// Most operations one write batch may carry.
pub const SIM_STORAGE_BATCH_OPS_COUNT_MAX: usize = TRANSACTION_OPS_COUNT_MAX;

/// Most unflushed batches a disk buffers; more is a caller that never flushes.
pub const SIM_STORAGE_PENDING_BATCHES_COUNT_MAX: usize = 1_000_000;

/// Disk size when the configuration does not choose one: 256 MiB.
pub const SIM_STORAGE_CAPACITY_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Largest latency a configuration may ask for, in µs (10 s).
pub const SIM_STORAGE_LATENCY_US_MAX: u64 = 10_000_000;

/// Latency and size of a simulated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// Reads and writes take uniform `[op_latency_us_min, op_latency_us_max]`.
    pub op_latency_us_min: u64,
    pub op_latency_us_max: u64,
    /// Flushes take uniform `[flush_latency_us_min, flush_latency_us_max]`.
    pub flush_latency_us_min: u64,
    pub flush_latency_us_max: u64,
    /// Durable plus pending bytes (keys and values) the disk can hold.
    pub capacity_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            op_latency_us_min: 20,
            op_latency_us_max: 200,
            flush_latency_us_min: 200,
            flush_latency_us_max: 2_000,
            capacity_bytes: SIM_STORAGE_CAPACITY_BYTES_DEFAULT,
        }
    }
}

impl StorageConfig {
    fn validate(&self) {
        assert!(self.op_latency_us_min <= self.op_latency_us_max, "empty op latency range");
        assert!(self.flush_latency_us_min <= self.flush_latency_us_max, "empty flush latency range");
        assert!(self.op_latency_us_max.max(self.flush_latency_us_max) <= SIM_STORAGE_LATENCY_US_MAX);
        assert!(self.capacity_bytes > 0, "a disk needs some capacity");
    }
}

/// A key and its value, as returned by scans.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl StorageOp {
    pub fn key(&self) -> &[u8] {
        match self {
            StorageOp::Put { key, .. } | StorageOp::Delete { key } => key,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            StorageOp::Put { key, value } => (key.len() + value.len()) as u64,
            StorageOp::Delete { key } => key.len() as u64,
        }
    }
}

/// A precondition of a batch: `key` currently holds `expected` (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// Writes applied together, if all conditions hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub conditions: Vec<Condition>,
    pub ops: Vec<StorageOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        WriteBatch::default()
    }

    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(StorageOp::Put { key: key.into(), value: value.into() });
        self
    }

    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(StorageOp::Delete { key: key.into() });
        self
    }

    /// Requires `key` to hold `expected` (`None`: to be absent) when the batch applies.
    pub fn expect(mut self, key: impl Into<Vec<u8>>, expected: Option<Vec<u8>>) -> Self {
        self.conditions.push(Condition { key: key.into(), expected });
        self
    }

    fn bytes(&self) -> u64 {
        self.ops.iter().map(StorageOp::bytes).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorageError {
    #[error("storage of node {node}: {operation} failed with an I/O error")]
    Io { node: NodeId, operation: &'static str },
    #[error("storage of node {node}: record {key} is corrupt (stored checksum {stored:#018x}, computed {computed:#018x})")]
    Corrupt { node: NodeId, key: String, stored: u64, computed: u64 },
    #[error("storage of node {node}: disk full, {needed_bytes} bytes needed, {free_bytes} free")]
    DiskFull { node: NodeId, needed_bytes: u64, free_bytes: u64 },
    #[error("storage of node {node}: torn write, {applied_ops} of {total_ops} operations landed")]
    TornWrite { node: NodeId, applied_ops: usize, total_ops: usize },
    #[error("storage of node {node}: the node has crashed")]
    Crashed { node: NodeId },
    #[error("storage of node {node}: condition on key {key} failed (concurrent write)")]
    Conflict { node: NodeId, key: String },
    #[error("storage of node {node}: {what} is {actual}, over {limit_name} = {limit}")]
    LimitExceeded { node: NodeId, what: &'static str, actual: u64, limit_name: &'static str, limit: u64 },
}

impl From<StorageError> for kelpie_core::Error {
    fn from(error: StorageError) -> Self {
        let reason = error.to_string();
        match error {
            StorageError::Corrupt { key, .. } => kelpie_core::Error::Corruption { location: key, reason },
            StorageError::LimitExceeded { what, actual, limit_name, limit, .. } => {
                kelpie_core::Error::LimitExceeded { what: what.to_string(), actual, limit_name, limit }
            }
            StorageError::Io { operation, .. } => kelpie_core::Error::StorageIo { operation, reason },
            StorageError::DiskFull { .. } | StorageError::TornWrite { .. } | StorageError::Crashed { .. } => {
                kelpie_core::Error::StorageIo { operation: "write", reason }
            }
            StorageError::Conflict { .. } => kelpie_core::Error::StorageIo { operation: "commit", reason },
        }
    }
}

/// Counters of what the disk has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub reads: u64,
    pub batches_written: u64,
    pub flushes: u64,
    pub batches_made_durable: u64,
    pub batches_lost_in_crash: u64,
    pub torn_writes: u64,
    pub records_corrupted: u64,
    pub corruptions_detected: u64,
}

#[derive(Debug, Clone)]
struct Record {
    value: Vec<u8>,
    checksum: u64,
}

fn checksum(key: &[u8], value: &[u8]) -> u64 {
    let mut hasher = Fnv1a64::new();
    hasher.write_u64(key.len() as u64);
    hasher.write(key);
    hasher.write(value);
    hasher.finish()
}

fn display_key(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

struct DiskState {
    durable: BTreeMap<Vec<u8>, Record>,
    durable_bytes: u64,
    pending: Vec<Vec<StorageOp>>,
    pending_bytes: u64,
    incarnation: u64,
    stats: StorageStats,
}

impl DiskState {
    /// Forgets the pending layer if the node crashed since the last access.
    fn sync(&mut self, incarnation: u64) {
        if self.incarnation == incarnation {
            return;
        }
        debug_assert!(self.incarnation < incarnation);
        self.stats.batches_lost_in_crash += self.pending.len() as u64;
        self.pending.clear();
        self.pending_bytes = 0;
        self.incarnation = incarnation;
    }

    /// The newest value of `key` in the pending layer: `Some(None)` if deleted there.
    fn pending_value(&self, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        let newest =
            self.pending.iter().rev().flat_map(|batch| batch.iter().rev()).find(|op| op.key() == key)?;
        Some(match newest {
            StorageOp::Put { value, .. } => Some(value),
            StorageOp::Delete { .. } => None,
        })
    }

    fn persist(&mut self, batches: Vec<Vec<StorageOp>>) {
        for op in batches.into_iter().flatten() {
            match op {
                StorageOp::Put { key, value } => {
                    self.durable_bytes += (key.len() + value.len()) as u64;
                    let record = Record { checksum: checksum(&key, &value), value };
                    if let Some(old) = self.durable.insert(key.clone(), record) {
                        self.durable_bytes -= (key.len() + old.value.len()) as u64;
                    }
                }
                StorageOp::Delete { key } => {
                    if let Some(old) = self.durable.remove(&key) {
                        self.durable_bytes -= (key.len() + old.value.len()) as u64;
                    }
                }
            }
        }
        debug_assert_eq!(
            self.durable_bytes,
            self.durable.iter().map(|(k, r)| (k.len() + r.value.len()) as u64).sum::<u64>()
        );
    }
}

struct DiskInner {
    executor: Arc<Executor>,
    node: usize,
    node_id: NodeId,
    rng: DeterministicRng,
    config: StorageConfig,
    state: Mutex<DiskState>,
}

/// One node's simulated disk. Cheap to clone; clones share the disk.
#[derive(Clone)]
pub struct SimStorage {
    inner: Arc<DiskInner>,
}

impl SimStorage {
    pub(crate) fn new(
        executor: Arc<Executor>,
        node: usize,
        rng: DeterministicRng,
        config: StorageConfig,
    ) -> Self {
        config.validate();
        let (node_id, incarnation) = {
            let state = executor.lock();
            (state.nodes[node].id.clone(), state.nodes[node].incarnation)
        };
        let state = DiskState {
            durable: BTreeMap::new(),
            durable_bytes: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            incarnation,
            stats: StorageStats::default(),
        };
        SimStorage {
            inner: Arc::new(DiskInner { executor, node, node_id, rng, config, state: Mutex::new(state) }),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.node_id
    }

    /// The disk's state, with the pending layer dropped if the node crashed meanwhile.
    fn lock(&self) -> MutexGuard<'_, DiskState> {
        let incarnation = self.inner.executor.lock().nodes[self.inner.node].incarnation;
        let mut state = self.inner.state.lock().unwrap_or_else(|poison| poison.into_inner());
        state.sync(incarnation);
        state
    }

    /// Like [`lock`](Self::lock), failing when the node is down.
    fn lock_live(&self) -> Result<MutexGuard<'_, DiskState>, StorageError> {
        let up = self.inner.executor.lock().nodes[self.inner.node].up;
        if !up {
            return Err(StorageError::Crashed { node: self.inner.node_id.clone() });
        }
        Ok(self.lock())
    }

    fn fault(&self, kind: FaultKind) -> Option<Fault> {
        self.inner.executor.fault(kind, Some(self.inner.node))
    }

    fn trace(&self, op: StorageOpKind, key: &[u8], ok: bool) {
        let node = self.inner.node as u32;
        self.inner.executor.record(TraceEventKind::StorageOp { node, op, key_hash: fnv1a64(key), ok });
    }

    async fn latency(&self, flush: bool) {
        let config = &self.inner.config;
        let (low, high) = if flush {
            (config.flush_latency_us_min, config.flush_latency_us_max)
        } else {
            (config.op_latency_us_min, config.op_latency_us_max)
        };
        let mut nanos = self.inner.rng.between_inclusive(low, high) * 1_000;
        if let Some(Fault::StorageLatency { extra_ms_max }) = self.fault(FaultKind::StorageLatency) {
            nanos += self.inner.rng.between_inclusive(1, extra_ms_max.max(1)) * 1_000_000;
        }
        Sleep::new(self.inner.executor.clone(), nanos).await;
    }

    /// The node dies at a crash point: tasks dropped, pending layer lost.
    fn crash(&self, state: MutexGuard<'_, DiskState>) -> StorageError {
        drop(state);
        self.inner.executor.crash_node(self.inner.node);
        StorageError::Crashed { node: self.inner.node_id.clone() }
    }

    /// Hands a result back to the caller, unless the operation crashed the
    /// caller's own node: then the caller's task is already dead, and yielding
    /// once lets the executor drop it before it can observe anything.
    /// Callers on other nodes (a shared disk) see `Crashed`.
    async fn settle<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if matches!(result, Err(StorageError::Crashed { .. })) {
            crate::executor::yield_now().await;
        }
        result
    }

    /// Reads `key` (pending writes included), verifying the record's checksum.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.latency(false).await;
        let result = self.get_now(key);
        self.trace(StorageOpKind::Get, key, result.is_ok());
        result
    }

    fn get_now(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut state = self.lock_live()?;
        state.stats.reads += 1;
        if self.fault(FaultKind::StorageReadFail).is_some() {
            return Err(StorageError::Io { node: self.inner.node_id.clone(), operation: "read" });
        }
        if let Some(pending) = state.pending_value(key) {
            return Ok(pending.cloned());
        }
        let Some(record) = state.durable.get(key) else { return Ok(None) };
        let computed = checksum(key, &record.value);
        if computed != record.checksum {
            let stored = record.checksum;
            state.stats.corruptions_detected += 1;
            let node = self.inner.node_id.clone();
            return Err(StorageError::Corrupt { node, key: display_key(key), stored, computed });
        }
        Ok(Some(record.value.clone()))
    }

    /// Every live key starting with `prefix`, in key order, pending writes included.
    pub async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        self.latency(false).await;
        let result = self.scan_now(prefix);
        self.trace(StorageOpKind::Scan, prefix, result.is_ok());
        result
    }

    fn scan_now(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        let mut state = self.lock_live()?;
        state.stats.reads += 1;
        if self.fault(FaultKind::StorageReadFail).is_some() {
            return Err(StorageError::Io { node: self.inner.node_id.clone(), operation: "scan" });
        }
        let mut view: BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)> = BTreeMap::new();
        for (key, record) in
            state.durable.range(prefix.to_vec()..).take_while(|(key, _)| key.starts_with(prefix))
        {
            view.insert(key.clone(), (record.value.clone(), Some(record.checksum)));
        }
        for op in state.pending.iter().flatten().filter(|op| op.key().starts_with(prefix)) {
            match op {
                StorageOp::Put { key, value } => view.insert(key.clone(), (value.clone(), None)),
                StorageOp::Delete { key } => view.remove(key),
            };
        }
        let mut entries = Vec::with_capacity(view.len());
        for (key, (value, stored)) in view {
            let computed = checksum(&key, &value);
            if let Some(stored) = stored.filter(|&stored| stored != computed) {
                state.stats.corruptions_detected += 1;
                let node = self.inner.node_id.clone();
                return Err(StorageError::Corrupt { node, key: display_key(&key), stored, computed });
            }
            entries.push((key, value));
        }
        debug_assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0));
        Ok(entries)
    }

    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<(), StorageError> {
        self.write_batch(WriteBatch::new().put(key, value)).await
    }

    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<(), StorageError> {
        self.write_batch(WriteBatch::new().delete(key)).await
    }

    /// Checks the batch's conditions and appends its writes to the pending
    /// layer, atomically. Not durable until [`flush`](Self::flush).
    pub async fn write_batch(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.latency(false).await;
        let first_key = batch.ops.first().map(|op| op.key().to_vec()).unwrap_or_default();
        let result = self.write_now(batch);
        self.trace(StorageOpKind::WriteBatch, &first_key, result.is_ok());
        self.settle(result).await
    }

    fn write_now(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let node = || self.inner.node_id.clone();
        self.check_batch_limits(&batch)?;
        let mut state = self.lock_live()?;
        if self.fault(FaultKind::CrashBeforeWrite).is_some() {
            return Err(self.crash(state));
        }
        if self.fault(FaultKind::StorageWriteFail).is_some() {
            return Err(StorageError::Io { node: node(), operation: "write" });
        }
        let needed_bytes = batch.bytes();
        let used = state.durable_bytes + state.pending_bytes;
        let free_bytes = self.inner.config.capacity_bytes.saturating_sub(used);
        if needed_bytes > free_bytes || self.fault(FaultKind::StorageDiskFull).is_some() {
            return Err(StorageError::DiskFull { node: node(), needed_bytes, free_bytes });
        }
        self.check_conditions(&state, &batch.conditions)?;
        assert!(state.pending.len() < SIM_STORAGE_PENDING_BATCHES_COUNT_MAX, "pending batches never flushed");
        let mut ops = batch.ops;
        let total_ops = ops.len();
        let torn = total_ops > 0 && self.fault(FaultKind::StoragePartialWrite).is_some();
        if torn {
            ops.truncate(self.inner.rng.index_below(total_ops));
        }
        let applied_ops = ops.len();
        state.pending_bytes += ops.iter().map(StorageOp::bytes).sum::<u64>();
        state.pending.push(ops);
        state.stats.batches_written += 1;
        if torn {
            state.stats.torn_writes += 1;
            return Err(StorageError::TornWrite { node: node(), applied_ops, total_ops });
        }
        Ok(())
    }

    fn check_batch_limits(&self, batch: &WriteBatch) -> Result<(), StorageError> {
        let node = self.inner.node_id.clone();
        if batch.ops.len() > SIM_STORAGE_BATCH_OPS_COUNT_MAX {
            let (what, actual) = ("batch operation count", batch.ops.len() as u64);
            let (limit_name, limit) =
                ("SIM_STORAGE_BATCH_OPS_COUNT_MAX", SIM_STORAGE_BATCH_OPS_COUNT_MAX as u64);
            return Err(StorageError::LimitExceeded { node, what, actual, limit_name, limit });
        }
        let largest = batch.ops.iter().filter_map(|op| match op {
            StorageOp::Put { value, .. } => Some(value.len()),
            StorageOp::Delete { .. } => None,
        });
        if let Some(actual) = largest.max().filter(|&len| len > STORAGE_VALUE_SIZE_BYTES_MAX) {
            let (limit_name, limit) = ("STORAGE_VALUE_SIZE_BYTES_MAX", STORAGE_VALUE_SIZE_BYTES_MAX as u64);
            return Err(StorageError::LimitExceeded {
                node,
                what: "value size",
                actual: actual as u64,
                limit_name,
                limit,
            });
        }
        Ok(())
    }

    fn check_conditions(&self, state: &DiskState, conditions: &[Condition]) -> Result<(), StorageError> {
        for condition in conditions {
            let current = match state.pending_value(&condition.key) {
                Some(pending) => pending.cloned(),
                None => state.durable.get(&condition.key).map(|record| record.value.clone()),
            };
            if current != condition.expected {
                return Err(StorageError::Conflict {
                    node: self.inner.node_id.clone(),
                    key: display_key(&condition.key),
                });
            }
        }
        if let Some(first) = conditions.first() {
            if self.fault(FaultKind::ConcurrentConflict).is_some() {
                return Err(StorageError::Conflict {
                    node: self.inner.node_id.clone(),
                    key: display_key(&first.key),
                });
            }
        }
        Ok(())
    }

    /// Makes every pending batch durable, in order (an fsync).
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.latency(true).await;
        let result = self.flush_now();
        self.trace(StorageOpKind::Flush, b"", result.is_ok());
        self.settle(result).await
    }

    fn flush_now(&self) -> Result<(), StorageError> {
        let mut state = self.lock_live()?;
        state.stats.flushes += 1;
        if state.pending.is_empty() {
            return Ok(());
        }
        if self.fault(FaultKind::StorageWriteFail).is_some() {
            return Err(StorageError::Io { node: self.inner.node_id.clone(), operation: "flush" });
        }
        let mut batches = std::mem::take(&mut state.pending);
        state.pending_bytes = 0;
        if self.fault(FaultKind::CrashDuringTransaction).is_some() {
            let landed = self.inner.rng.index_below(batches.len());
            state.stats.batches_lost_in_crash += (batches.len() - landed) as u64;
            batches.truncate(landed);
            state.stats.batches_made_durable += landed as u64;
            state.persist(batches);
            return Err(self.crash(state));
        }
        let written: Vec<Vec<u8>> = batches.iter().flatten().map(|op| op.key().to_vec()).collect();
        state.stats.batches_made_durable += batches.len() as u64;
        state.persist(batches);
        if self.fault(FaultKind::CrashAfterWrite).is_some() {
            return Err(self.crash(state));
        }
        if self.fault(FaultKind::StorageCorruption).is_some() {
            self.corrupt_one(&mut state, &written);
        }
        Ok(())
    }

    /// Flips one bit of one record just written, leaving its checksum stale.
    fn corrupt_one(&self, state: &mut DiskState, written: &[Vec<u8>]) {
        let candidates: Vec<&Vec<u8>> =
            written.iter().filter(|key| state.durable.contains_key(*key)).collect();
        if candidates.is_empty() {
            return;
        }
        let key = candidates[self.inner.rng.index_below(candidates.len())].clone();
        let bit = self.inner.rng.next_u64();
        let Some(record) = state.durable.get_mut(&key) else { return };
        match record.value.len() {
            0 => record.checksum ^= 1 << (bit % 64),
            len => record.value[(bit as usize / 8) % len] ^= 1 << (bit % 8),
        }
        debug_assert_ne!(checksum(&key, &record.value), record.checksum);
        state.stats.records_corrupted += 1;
    }

    /// [`write_batch`](Self::write_batch) then [`flush`](Self::flush): durable when it returns `Ok`.
    pub async fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.write_batch(batch).await?;
        self.flush().await
    }

    /// The durable records as they sit on disk (corrupt bytes included), for
    /// invariants and assertions. No latency, no faults.
    pub fn durable_entries(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.lock().durable.iter().map(|(key, record)| (key.clone(), record.value.clone())).collect()
    }

    /// The durable value of `key` as on disk, without faults or latency.
    pub fn durable_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().durable.get(key).map(|record| record.value.clone())
    }

    /// Unflushed batches, i.e. what a crash now would lose.
    pub fn pending_batches(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn stats(&self) -> StorageStats {
        self.lock().stats
    }
}
