//! The memory backend made durable on kelpie-dst's simulated disk, so the
//! storage API runs under the simulator's storage faults (feature `dst`).
//!
//! [`MemoryBackend`] keeps the live index and does all validation. Every
//! accepted change is then appended to the [`SimStorage`] disk as one record
//! (`r/<sequence>`) and flushed before the caller is answered. One record is
//! one single-key write, so a torn batch can only drop a whole record, never
//! half of a transaction. Opening the backend replays the records in order.
//!
//! A change that the index accepted but the disk did not take (write
//! failure, torn write, full disk) leaves memory ahead of disk. Like a
//! database that panics when fsync fails, the backend then stops serving:
//! every later call fails and `on_fatal` is invoked, so the node restarts and
//! rebuilds from what is durable. Reads and commits exclude each other, so no
//! reader ever sees a change before it is durable.
//!
//! Every call first yields to the simulator, as a real backend's round trip
//! to its disk or database does: other tasks run between a transaction's
//! reads and its commit, so the conflict checks meet real interleavings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kelpie_core::{ActorId, Error, NodeId, Result};
use kelpie_dst::{SimStorage, WriteBatch};
use tokio::sync::RwLock;

use crate::backend::{Backend, BoxFut};
use crate::memory::MemoryBackend;
use crate::types::{ClaimOutcome, CommitInfo, CommitRequest, Placement, ScanPage, StoredRows, Versioned};

const RECORD_KEY_PREFIX: &[u8] = b"r/";
const RECORD_TAG_COMMIT: u8 = b'C';
const RECORD_TAG_PLACEMENT: u8 = b'P';

/// One durable change, as appended to the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimDiskRecord {
    Commit { actor_id: ActorId, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> },
    Placement(Placement),
}

pub struct SimDiskBackend {
    disk: SimStorage,
    index: MemoryBackend,
    /// Readers share it; a change holds it alone until the disk has it.
    gate: RwLock<()>,
    next_sequence: AtomicU64,
    failed: AtomicBool,
    on_fatal: Box<dyn Fn() + Send + Sync>,
    /// A planted defect (see [`SimDiskBackend::plant_commit_without_read_check`]).
    commit_without_read_check: bool,
}

impl SimDiskBackend {
    /// Rebuilds the index from the disk's records. `on_fatal` runs when a
    /// change could not be made durable (typically: crash the node).
    pub async fn open(disk: SimStorage, on_fatal: Box<dyn Fn() + Send + Sync>) -> Result<Self> {
        let index = MemoryBackend::new();
        let records = disk.scan_prefix(RECORD_KEY_PREFIX).await.map_err(Error::from)?;
        let count = records.len() as u64;
        for (key, bytes) in records {
            let record = SimDiskRecord::decode(&bytes).ok_or_else(|| Error::Corruption {
                location: String::from_utf8_lossy(&key).into_owned(),
                reason: "undecodable record".into(),
            })?;
            replay(&index, record).await?;
        }
        Ok(SimDiskBackend {
            disk,
            index,
            gate: RwLock::new(()),
            next_sequence: AtomicU64::new(count),
            failed: AtomicBool::new(false),
            on_fatal,
            commit_without_read_check: false,
        })
    }

    /// Plants a defect for the DST to find: commits no longer check that
    /// what the transaction read is unchanged, so two transactions that
    /// read the same value both commit (a lost update). Only tests call it.
    pub fn plant_commit_without_read_check(mut self) -> Self {
        self.commit_without_read_check = true;
        self
    }

    fn check_alive(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::StorageIo {
                operation: "sim disk",
                reason: "stopped after a failed write; restart to recover".into(),
            });
        }
        Ok(())
    }

    /// Appends and flushes `record`; on failure stops the backend for good.
    async fn persist(&self, record: SimDiskRecord) -> Result<()> {
        let sequence = self.next_sequence.fetch_add(1, Ordering::SeqCst);
        let key = record_key(sequence);
        match self.disk.commit(WriteBatch::new().put(key, record.encode())).await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.failed.store(true, Ordering::SeqCst);
                (self.on_fatal)();
                Err(err.into())
            }
        }
    }
}

/// `r/` and a zero-padded sequence number, so key order is append order.
pub fn record_key(sequence: u64) -> Vec<u8> {
    let mut key = RECORD_KEY_PREFIX.to_vec();
    key.extend_from_slice(format!("{sequence:020}").as_bytes());
    key
}

async fn replay(index: &MemoryBackend, record: SimDiskRecord) -> Result<()> {
    match record {
        SimDiskRecord::Commit { actor_id, writes } => {
            let request =
                CommitRequest { actor_id, reads: BTreeMap::new(), scans: Vec::new(), writes, fence: None };
            index.commit(request).await.map(drop)
        }
        SimDiskRecord::Placement(placement) => index.put_placement(placement).await,
    }
}

impl Backend for SimDiskBackend {
    fn name(&self) -> &'static str {
        "sim-disk"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            let _read = self.gate.read().await;
            self.check_alive()?;
            self.index.get(actor, key).await
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            let _read = self.gate.read().await;
            self.check_alive()?;
            self.index.scan(actor, page).await
        })
    }

    fn commit(&self, mut request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>> {
        if self.commit_without_read_check {
            request.reads.clear();
            request.scans.clear();
        }
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            let _write = self.gate.write().await;
            self.check_alive()?;
            let record =
                SimDiskRecord::Commit { actor_id: request.actor_id.clone(), writes: request.writes.clone() };
            let read_only = request.is_read_only();
            let info = self.index.commit(request).await?;
            if !read_only {
                self.persist(record).await?;
            }
            Ok(info)
        })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            let _read = self.gate.read().await;
            self.check_alive()?;
            self.index.get_placement(actor).await
        })
    }

    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            let _write = self.gate.write().await;
            self.check_alive()?;
            self.index.put_placement(placement.clone()).await?;
            self.persist(SimDiskRecord::Placement(placement)).await
        })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            let _write = self.gate.write().await;
            self.check_alive()?;
            let outcome = self.index.claim_placement(actor, node, expected_epoch).await?;
            if let ClaimOutcome::Claimed(placement) = &outcome {
                self.persist(SimDiskRecord::Placement(placement.clone())).await?;
            }
            Ok(outcome)
        })
    }
}

impl SimDiskRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            SimDiskRecord::Commit { actor_id, writes } => {
                out.push(RECORD_TAG_COMMIT);
                put_field(&mut out, actor_id.to_string().as_bytes());
                out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
                for (key, value) in writes {
                    put_field(&mut out, key);
                    out.push(u8::from(value.is_some()));
                    put_field(&mut out, value.as_deref().unwrap_or_default());
                }
            }
            SimDiskRecord::Placement(placement) => {
                out.push(RECORD_TAG_PLACEMENT);
                put_field(&mut out, placement.actor_id.to_string().as_bytes());
                put_field(&mut out, placement.node_id.as_str().as_bytes());
                out.extend_from_slice(&placement.epoch.to_be_bytes());
            }
        }
        out
    }

    /// `None` for bytes that are not a whole, well-formed record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&tag, mut rest) = bytes.split_first()?;
        let record = match tag {
            RECORD_TAG_COMMIT => {
                let actor_id = take_text(&mut rest)?.parse().ok()?;
                let count = u32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
                let mut writes = BTreeMap::new();
                for _ in 0..count {
                    let key = take_field(&mut rest)?.to_vec();
                    let is_put = take(&mut rest, 1)?[0] == 1;
                    let value = take_field(&mut rest)?.to_vec();
                    writes.insert(key, is_put.then_some(value));
                }
                SimDiskRecord::Commit { actor_id, writes }
            }
            RECORD_TAG_PLACEMENT => {
                let actor_id = take_text(&mut rest)?.parse().ok()?;
                let node_id = NodeId::new(take_text(&mut rest)?).ok()?;
                let epoch = u64::from_be_bytes(take(&mut rest, 8)?.try_into().ok()?);
                SimDiskRecord::Placement(Placement { actor_id, node_id, epoch })
            }
            _ => return None,
        };
        rest.is_empty().then_some(record)
    }
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).expect("fields are bounded by the value size limit");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

fn take<'a>(rest: &mut &'a [u8], count: usize) -> Option<&'a [u8]> {
    if rest.len() < count {
        return None;
    }
    let (head, tail) = rest.split_at(count);
    *rest = tail;
    Some(head)
}

fn take_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(take(rest, 4)?.try_into().ok()?) as usize;
    take(rest, len)
}

fn take_text(rest: &mut &[u8]) -> Option<String> {
    String::from_utf8(take_field(rest)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncations_are_refused() {
        let actor_id = ActorId::new("dst", "a1").unwrap();
        let mut writes = BTreeMap::new();
        writes.insert(b"k1".to_vec(), Some(b"v1".to_vec()));
        writes.insert(b"k2".to_vec(), None);
        let commit = SimDiskRecord::Commit { actor_id: actor_id.clone(), writes };
        let placement = SimDiskRecord::Placement(Placement {
            actor_id,
            node_id: NodeId::new("node-1").unwrap(),
            epoch: 7,
        });
        for record in [commit, placement] {
            let bytes = record.encode();
            assert_eq!(SimDiskRecord::decode(&bytes), Some(record));
            for cut in 0..bytes.len() {
                assert_eq!(SimDiskRecord::decode(&bytes[..cut]), None, "prefix of {cut} bytes");
            }
        }
        assert_eq!(record_key(42), b"r/00000000000000000042".to_vec());
    }
}
