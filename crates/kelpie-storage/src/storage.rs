//! The public API: a [`Storage`] handle over one backend, and the
//! [`Transaction`] through which an actor reads and writes its own keys.
//!
//! A transaction is bound to one actor at `begin`; every key it touches lives
//! in that actor's key space, so no transaction can see another actor's keys.
//! It ends in exactly one of [`Transaction::commit`] or
//! [`Transaction::abort`] (both consume it); dropping it aborts.

use std::path::Path;
use std::sync::Arc;

use kelpie_core::{ActorId, Error, NodeId, Result};

use crate::backend::Backend;
use crate::limits::SCAN_ROWS_COUNT_MAX;
use crate::memory::MemoryBackend;
use crate::postgres::PostgresBackend;
use crate::redb_store::RedbBackend;
use crate::txn::{check_key, TxnBuffer};
use crate::types::{ClaimOutcome, CommitInfo, FenceCondition, KeyRange, Placement, ScanOrder, ScanPage};

/// A handle to one store. Cheap to clone; all clones share the backend.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("backend", &self.backend.name()).finish()
    }
}

impl Storage {
    /// A fresh, empty in-memory store.
    pub fn memory() -> Self {
        Self::from_backend(Arc::new(MemoryBackend::new()))
    }

    /// Opens (creating if needed) the redb file at `path`, with group commit.
    pub fn open_redb(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::from_backend(Arc::new(RedbBackend::open(path.as_ref())?)))
    }

    /// Connects to PostgreSQL at `url` and creates or migrates the schema.
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        Ok(Self::from_backend(Arc::new(PostgresBackend::connect(url).await?)))
    }

    pub fn from_backend(backend: Arc<dyn Backend>) -> Self {
        Storage { backend }
    }

    /// The backend's short name (`memory`, `redb`, `postgres`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Starts a transaction over `actor_id`'s keys.
    pub fn begin(&self, actor_id: ActorId) -> Transaction {
        Transaction { backend: Arc::clone(&self.backend), buffer: TxnBuffer::new(actor_id) }
    }

    pub async fn get_placement(&self, actor_id: &ActorId) -> Result<Option<Placement>> {
        self.backend.get_placement(actor_id).await
    }

    /// Stores a placement as is; its epoch may not be below the stored one.
    pub async fn put_placement(&self, placement: Placement) -> Result<()> {
        self.backend.put_placement(placement).await
    }

    /// Atomically claims `actor_id` for `node_id` if its epoch is still
    /// `expected_epoch` (0 when it was never placed); the claim raises the
    /// epoch by one, which fences every commit of earlier activations.
    pub async fn claim_placement(
        &self,
        actor_id: ActorId,
        node_id: NodeId,
        expected_epoch: u64,
    ) -> Result<ClaimOutcome> {
        self.backend.claim_placement(actor_id, node_id, expected_epoch).await
    }
}

/// One open transaction over one actor's keys.
pub struct Transaction {
    backend: Arc<dyn Backend>,
    buffer: TxnBuffer,
}

impl Transaction {
    pub fn actor_id(&self) -> &ActorId {
        self.buffer.actor_id()
    }

    /// Whether any put or delete is buffered. A transaction without writes
    /// changes nothing when committed; it only validates what it read.
    pub fn has_writes(&self) -> bool {
        self.buffer.writes_count() > 0
    }

    /// The value of `key`: this transaction's own write if it made one, else
    /// the committed value (whose version is validated at commit).
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        if let Some(local) = self.buffer.local(key) {
            return Ok(local.map(<[u8]>::to_vec));
        }
        let stored = self.backend.get(self.buffer.actor_id(), key).await?;
        self.buffer.record_read(key, stored.as_ref().map(|stored| stored.version));
        Ok(stored.map(|stored| stored.value))
    }

    /// Rows of `range` in key order, with this transaction's writes applied.
    /// Fails with `LimitExceeded` past `SCAN_ROWS_COUNT_MAX` stored rows.
    pub async fn scan(&mut self, range: KeyRange) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let page = ScanPage::new(range, ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX + 1);
        let rows = self.backend.scan(self.buffer.actor_id(), &page).await?;
        let range = page.range;
        if rows.len() > SCAN_ROWS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: format!("scan of actor {} row count", self.actor_id()),
                actual: rows.len() as u64,
                limit_name: "SCAN_ROWS_COUNT_MAX",
                limit: SCAN_ROWS_COUNT_MAX as u64,
            });
        }
        Ok(self.buffer.record_scan(range, rows))
    }

    /// At most `limit` rows of `range`, from the end `order` names and in
    /// that order, with this transaction's writes applied. Costs
    /// O(limit + log n) however large the range; walk a range of any size
    /// page by page, each starting past the last key of the one before.
    /// `limit` is 1..=`SCAN_ROWS_COUNT_MAX`.
    pub async fn scan_page(
        &mut self,
        range: KeyRange,
        order: ScanOrder,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let page = ScanPage::new(range, order, limit);
        if !(1..=SCAN_ROWS_COUNT_MAX).contains(&page.limit) {
            return Err(Error::validation(
                "scan limit",
                format!("{} is not in 1..={SCAN_ROWS_COUNT_MAX} (SCAN_ROWS_COUNT_MAX)", page.limit),
            ));
        }
        // Rows this transaction deleted come back from the backend and are
        // dropped below: fetch that many more so a full page stays full.
        let fetch = ScanPage { limit: page.limit + self.buffer.deletes_in(&page.range), ..page.clone() };
        let mut rows = self.backend.scan(self.buffer.actor_id(), &fetch).await?;
        assert!(rows.len() <= fetch.limit, "a backend returns at most the page's limit");
        let covered = fetch.covered(rows.len(), rows.last().map(|(key, _)| key.as_slice()));
        if page.order == ScanOrder::Descending {
            rows.reverse();
        }
        let mut merged = self.buffer.record_scan(covered, rows);
        if page.order == ScanOrder::Descending {
            merged.reverse();
        }
        merged.truncate(page.limit);
        Ok(merged)
    }

    /// Buffers `key = value`, checking the key, value and transaction limits.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<()> {
        self.buffer.write(key.into(), Some(value.into()))
    }

    /// Buffers the deletion of `key` (deleting an absent key is not an error).
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<()> {
        self.buffer.write(key.into(), None)
    }

    /// Validates and applies every buffered write atomically and durably.
    ///
    /// Errors: `TransactionConflict` (retriable) when a key or range this
    /// transaction read changed since; `Fenced` (permanent) when `fence` no
    /// longer matches the actor's placement. Either way nothing was written.
    pub async fn commit(self, fence: Option<FenceCondition>) -> Result<CommitInfo> {
        if let Some(fence) = &fence {
            if &fence.actor_id != self.buffer.actor_id() {
                return Err(Error::validation(
                    "fence.actor_id",
                    format!(
                        "fence names actor {} but the transaction is on {}",
                        fence.actor_id,
                        self.actor_id()
                    ),
                ));
            }
        }
        let request = self.buffer.into_request(fence);
        self.backend.commit(request).await
    }

    /// Discards every buffered write. Dropping the transaction does the same.
    pub fn abort(self) {}
}
