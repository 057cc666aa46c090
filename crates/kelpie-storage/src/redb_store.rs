//! The redb backend: the single-node default, one file under the data dir.
//!
//! Reads run on the caller's thread against redb's MVCC snapshots. Every
//! mutation (commit, placement put, claim) goes to one group committer: a
//! dedicated thread that takes whatever requests are queued (at most
//! `GROUP_COMMIT_BATCH_COUNT_MAX`), validates and applies each inside one
//! redb write transaction — so each sees the effects of the earlier ones in
//! its batch — commits that transaction with one durable fsync, and only then
//! acknowledges every request of the batch. A request that fails validation
//! writes nothing and is answered with its error; an I/O failure fails the
//! whole batch, none of which was acknowledged.
//!
//! Layout: table `kv` maps `actor text ‖ 0x00 ‖ key` to `version (u64 BE) ‖
//! value`; `placements` maps actor text to `epoch (u64 BE) ‖ node id`; `meta`
//! holds the last commit version. `0x00` cannot occur in an actor id, so one
//! actor's keys form one contiguous range that no other actor's keys enter.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use kelpie_core::limits::GROUP_COMMIT_BATCH_COUNT_MAX;
use kelpie_core::{ActorId, Error, NodeId, Result};
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Backend, BoxFut};
use crate::commit_check::{check_commit, observe, CommitView};
use crate::limits::{GROUP_COMMIT_QUEUE_DEPTH_MAX, SCAN_ROWS_COUNT_MAX};
use crate::placement::{check_put, decide_claim};
use crate::types::{
    ClaimOutcome, CommitInfo, CommitRequest, KeyRange, Placement, ScanOrder, ScanPage, StoredRows, Versioned,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const PLACEMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("placements");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_LAST_VERSION: &str = "last_version";
const VERSION_SIZE_BYTES: usize = 8;
/// Pages redb keeps in memory, in bytes. Its own default is 1 GiB, which a
/// node with a large agent fills; the OS page cache holds the rest of the
/// file. 32 MiB keeps a server with a 1 000 000-message agent under 200 MiB
/// (docs/benchmarks.md, long-lived agents).
pub const REDB_CACHE_SIZE_BYTES: usize = 32 * 1024 * 1024;

/// Rounds of "drain the queue, yield, look again" before a batch is closed.
const GROUP_COMMIT_GATHER_ROUNDS_COUNT_MAX: usize = 16;

fn io_error(operation: &'static str) -> impl Fn(redb::Error) -> Error {
    move |err| Error::StorageIo { operation, reason: err.to_string() }
}

/// Maps any redb error (they all convert into `redb::Error`) to `StorageIo`.
macro_rules! io {
    ($operation:literal, $result:expr) => {
        $result.map_err(|err| io_error($operation)(err.into()))
    };
}

fn actor_prefix(actor: &ActorId) -> Vec<u8> {
    let mut prefix = actor.to_string().into_bytes();
    prefix.push(0x00);
    prefix
}

fn row_key(actor: &ActorId, key: &[u8]) -> Vec<u8> {
    let mut composite = actor_prefix(actor);
    composite.extend_from_slice(key);
    composite
}

/// The composite-key bounds of `range` inside `actor`'s key space.
fn row_bounds(actor: &ActorId, range: &KeyRange) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let prefix = actor_prefix(actor);
    let start = match &range.start {
        Bound::Included(key) => Bound::Included(row_key(actor, key)),
        Bound::Excluded(key) => Bound::Excluded(row_key(actor, key)),
        Bound::Unbounded => Bound::Included(prefix.clone()),
    };
    let end = match &range.end {
        Bound::Included(key) => Bound::Included(row_key(actor, key)),
        Bound::Excluded(key) => Bound::Excluded(row_key(actor, key)),
        Bound::Unbounded => {
            let mut after = prefix;
            let separator = after.pop();
            assert_eq!(separator, Some(0x00));
            after.push(0x01);
            Bound::Excluded(after)
        }
    };
    (start, end)
}

fn encode_row(version: u64, value: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(VERSION_SIZE_BYTES + value.len());
    row.extend_from_slice(&version.to_be_bytes());
    row.extend_from_slice(value);
    row
}

fn decode_row(row: &[u8]) -> Result<Versioned> {
    let (version, value) = split_version(row, "redb kv row")?;
    Ok(Versioned { value: value.to_vec(), version })
}

fn split_version<'a>(bytes: &'a [u8], location: &str) -> Result<(u64, &'a [u8])> {
    let Some((version, rest)) = bytes.split_first_chunk::<VERSION_SIZE_BYTES>() else {
        return Err(Error::Corruption {
            location: location.to_string(),
            reason: "shorter than its header".into(),
        });
    };
    let version = u64::from_be_bytes(*version);
    if version == 0 {
        return Err(Error::Corruption {
            location: location.to_string(),
            reason: "zero version or epoch".into(),
        });
    }
    Ok((version, rest))
}

fn encode_placement(placement: &Placement) -> Vec<u8> {
    encode_row(placement.epoch, placement.node_id.as_str().as_bytes())
}

fn decode_placement(actor: &ActorId, bytes: &[u8]) -> Result<Placement> {
    let (epoch, node) = split_version(bytes, "redb placement")?;
    let node = String::from_utf8(node.to_vec()).map_err(|_| Error::Corruption {
        location: format!("placement of {actor}"),
        reason: "node id not UTF-8".into(),
    })?;
    let node_id = NodeId::new(node).map_err(|err| Error::Corruption {
        location: format!("placement of {actor}"),
        reason: err.to_string(),
    })?;
    Ok(Placement { actor_id: actor.clone(), node_id, epoch })
}

/// The rows of `page`, from any readable redb table of the `kv` layout.
fn scan_table(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    actor: &ActorId,
    page: &ScanPage,
) -> Result<StoredRows> {
    let (start, end) = row_bounds(actor, &page.range);
    if !bounds_nonempty(&start, &end) {
        return Ok(Vec::new());
    }
    let prefix_len = actor_prefix(actor).len();
    let bounds = (start.as_ref().map(Vec::as_slice), end.as_ref().map(Vec::as_slice));
    let inside = io!("scan", table.range::<&[u8]>(bounds))?;
    let entries: Box<dyn Iterator<Item = _>> = match page.order {
        ScanOrder::Ascending => Box::new(inside),
        ScanOrder::Descending => Box::new(inside.rev()),
    };
    let mut rows = Vec::new();
    for entry in entries.take(page.limit) {
        let (key, row) = io!("scan", entry)?;
        assert!(key.value().len() >= prefix_len, "range stays inside the actor prefix");
        rows.push((key.value()[prefix_len..].to_vec(), decode_row(row.value())?));
    }
    Ok(rows)
}

/// The page a commit validates a scanned range with: enough rows to see
/// any difference from what the transaction saw.
fn validation_page(range: &KeyRange) -> ScanPage {
    ScanPage::new(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX + 1)
}

/// redb panics on an inverted range; such a range holds no keys.
fn bounds_nonempty(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    match (start, end) {
        (Bound::Included(start), Bound::Included(end)) => start <= end,
        (Bound::Included(start) | Bound::Excluded(start), Bound::Included(end) | Bound::Excluded(end)) => {
            start < end
        }
        _ => true,
    }
}

/// A mutation handled by the group committer.
#[derive(Debug)]
pub(crate) enum Op {
    Commit(CommitRequest),
    PutPlacement(Placement),
    Claim { actor: ActorId, node: NodeId, expected_epoch: u64 },
}

/// What a successful [`Op`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpOutput {
    Committed(CommitInfo),
    PlacementStored,
    Claim(ClaimOutcome),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<OpOutput>>,
}

/// The validation view of one actor inside an open write transaction, so it
/// sees earlier commits of the same batch.
struct WriteView<'a> {
    kv: &'a redb::Table<'a, &'static [u8], &'static [u8]>,
    placements: &'a redb::Table<'a, &'static str, &'static [u8]>,
    actor: &'a ActorId,
}

impl CommitView for WriteView<'_> {
    fn version_of(&self, key: &[u8]) -> Result<Option<u64>> {
        let row = io!("commit read", self.kv.get(row_key(self.actor, key).as_slice()))?;
        row.map(|row| decode_row(row.value()).map(|stored| stored.version)).transpose()
    }

    fn scan_versions(&self, range: &KeyRange) -> Result<Vec<(Vec<u8>, u64)>> {
        let rows = scan_table(self.kv, self.actor, &validation_page(range))?;
        Ok(rows.into_iter().map(|(key, stored)| (key, stored.version)).collect())
    }

    fn placement(&self) -> Result<Option<Placement>> {
        read_placement(self.placements, self.actor)
    }
}

fn read_placement(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    actor: &ActorId,
) -> Result<Option<Placement>> {
    let stored = io!("placement read", table.get(actor.to_string().as_str()))?;
    stored.map(|bytes| decode_placement(actor, bytes.value())).transpose()
}

/// An op's outcome inside a batch: `Err(Fatal)` aborts the whole batch.
enum Applied {
    Done(Result<OpOutput>),
    Fatal(Error),
}

/// The tables of one batch's write transaction, opened once per batch.
struct BatchTables<'t> {
    kv: redb::Table<'t, &'static [u8], &'static [u8]>,
    placements: redb::Table<'t, &'static str, &'static [u8]>,
}

/// Applies one op inside the batch's write transaction. Validation errors
/// (conflict, fence, epoch) end only this op, and occur before it writes;
/// an I/O error after its first write poisons the transaction.
fn apply_op(
    tables: &mut BatchTables<'_>,
    op: Op,
    last_version: &mut u64,
    planted: Option<RedbDefect>,
) -> Result<Applied> {
    match op {
        Op::Commit(request) => {
            let view = WriteView { kv: &tables.kv, placements: &tables.placements, actor: &request.actor_id };
            let unfenced;
            let checked = if planted == Some(RedbDefect::CommitWithoutFence) {
                unfenced = CommitRequest { fence: None, ..request.clone() };
                &unfenced
            } else {
                &request
            };
            if let Err(err) =
                observe(checked, &view).and_then(|observation| check_commit(checked, &observation))
            {
                return Ok(Applied::Done(Err(err)));
            }
            if request.is_read_only() {
                return Ok(Applied::Done(Ok(OpOutput::Committed(CommitInfo { version: 0 }))));
            }
            *last_version += 1;
            for (key, value) in &request.writes {
                let composite = row_key(&request.actor_id, key);
                let written = match value {
                    Some(value) => tables
                        .kv
                        .insert(composite.as_slice(), encode_row(*last_version, value).as_slice())
                        .map(drop),
                    None => tables.kv.remove(composite.as_slice()).map(drop),
                };
                if let Err(err) = written {
                    return Ok(Applied::Fatal(io_error("commit write")(err.into())));
                }
            }
            Ok(Applied::Done(Ok(OpOutput::Committed(CommitInfo { version: *last_version }))))
        }
        Op::PutPlacement(placement) => {
            let current = read_placement(&tables.placements, &placement.actor_id)?;
            if let Err(err) = check_put(current.as_ref(), &placement) {
                return Ok(Applied::Done(Err(err)));
            }
            store_placement(&mut tables.placements, &placement)?;
            Ok(Applied::Done(Ok(OpOutput::PlacementStored)))
        }
        Op::Claim { actor, node, expected_epoch } => {
            let current = read_placement(&tables.placements, &actor)?;
            let outcome = decide_claim(current, actor, node, expected_epoch);
            if let ClaimOutcome::Claimed(placement) = &outcome {
                store_placement(&mut tables.placements, placement)?;
            }
            Ok(Applied::Done(Ok(OpOutput::Claim(outcome))))
        }
    }
}

fn store_placement(
    table: &mut redb::Table<'_, &'static str, &'static [u8]>,
    placement: &Placement,
) -> Result<()> {
    let key = placement.actor_id.to_string();
    io!("placement write", table.insert(key.as_str(), encode_placement(placement).as_slice())).map(drop)
}

/// Applies every op in order; `Err` means the transaction must be abandoned.
fn apply_ops(
    txn: &redb::WriteTransaction,
    ops: Vec<Op>,
    last_version: &mut u64,
    planted: Option<RedbDefect>,
) -> Result<Vec<Result<OpOutput>>> {
    let mut tables = BatchTables {
        kv: io!("open kv", txn.open_table(KV))?,
        placements: io!("open placements", txn.open_table(PLACEMENTS))?,
    };
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match apply_op(&mut tables, op, last_version, planted)? {
            Applied::Done(result) => results.push(result),
            Applied::Fatal(err) => return Err(err),
        }
    }
    Ok(results)
}

/// Defects the commit path can be told to have, so the redb DST
/// (`redb_dst_tests.rs`) shows that it finds each one. `RedbBackend` never
/// plants one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedbDefect {
    /// The batch commits without waiting for the disk (redb's
    /// `Durability::None`), so its results are acknowledged before fsync.
    AckBeforeFsync,
    /// A commit is checked as if it carried no fence: a zombie's commit
    /// under a stale epoch is accepted.
    CommitWithoutFence,
}

/// Runs one batch in one durable redb write transaction and returns each
/// op's result, in order. Nothing is durable (or acknowledged) before the
/// single commit at the end.
pub(crate) fn commit_batch(db: &Database, ops: Vec<Op>) -> Vec<Result<OpOutput>> {
    commit_batch_planted(db, ops, None)
}

/// [`commit_batch`] with `planted` in it (tests only).
pub(crate) fn commit_batch_planted(
    db: &Database,
    ops: Vec<Op>,
    planted: Option<RedbDefect>,
) -> Vec<Result<OpOutput>> {
    assert!(!ops.is_empty() && ops.len() <= GROUP_COMMIT_BATCH_COUNT_MAX, "batch of {} ops", ops.len());
    let count = ops.len();
    let outcome = (|| {
        let mut txn = io!("begin write", db.begin_write())?;
        if planted == Some(RedbDefect::AckBeforeFsync) {
            txn.set_durability(redb::Durability::None);
        }
        let mut last_version = read_last_version(&txn)?;
        let results = apply_ops(&txn, ops, &mut last_version, planted)?;
        write_last_version(&txn, last_version)?;
        io!("commit", txn.commit())?;
        Ok(results)
    })();
    match outcome {
        Ok(results) => {
            assert_eq!(results.len(), count);
            record_flush(&results);
            results
        }
        Err(err) => vec![Err(err); count],
    }
}

/// Counts one durable flush (a committed write transaction) and the
/// writes it made durable (`kelpie_core::metrics`); an op refused inside
/// the batch (a fenced or conflicting commit) wrote nothing.
fn record_flush(results: &[Result<OpOutput>]) {
    use kelpie_core::metrics::{increment, observe, STORAGE_BATCH_SIZE, STORAGE_FSYNCS, STORAGE_WRITES};
    let durable = results.iter().filter(|result| result.is_ok()).count();
    increment(&STORAGE_FSYNCS, &["redb"], 1);
    increment(&STORAGE_WRITES, &["redb"], durable as u64);
    observe(&STORAGE_BATCH_SIZE, &["redb"], durable as f64);
}

fn read_last_version(txn: &redb::WriteTransaction) -> Result<u64> {
    let meta = io!("open meta", txn.open_table(META))?;
    let last = io!("read meta", meta.get(META_LAST_VERSION))?.map_or(0, |version| version.value());
    Ok(last)
}

fn write_last_version(txn: &redb::WriteTransaction, version: u64) -> Result<()> {
    let mut meta = io!("open meta", txn.open_table(META))?;
    io!("write meta", meta.insert(META_LAST_VERSION, version)).map(drop)
}

/// Adds queued jobs to `batch` up to the batch limit. While jobs keep
/// arriving it yields the CPU and looks again, so writers woken by the last
/// acknowledgement can join this fsync instead of waiting for the next one.
fn gather(jobs: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    for _ in 0..GROUP_COMMIT_GATHER_ROUNDS_COUNT_MAX {
        let before = batch.len();
        while batch.len() < GROUP_COMMIT_BATCH_COUNT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if batch.len() == before || batch.len() == GROUP_COMMIT_BATCH_COUNT_MAX {
            return;
        }
        std::thread::yield_now();
    }
}

/// The committer loop: wait for one job, drain what else is queued up to the
/// batch limit, commit them together, answer each.
fn run_committer(db: Arc<Database>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        gather(&mut jobs, &mut batch);
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|job| (job.op, job.reply)).unzip();
        let results = commit_batch(&db, ops);
        assert_eq!(results.len(), replies.len());
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller that stopped waiting (dropped future) needs no answer.
            let _ = reply.send(result);
        }
    }
}

/// The redb backend handle; dropping it stops the committer and closes the file.
pub struct RedbBackend {
    db: Arc<Database>,
    jobs: Option<mpsc::Sender<Job>>,
    committer: Option<JoinHandle<()>>,
}

impl RedbBackend {
    /// Opens or creates the database file at `path` and starts its committer.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|err| Error::StorageIo { operation: "create data dir", reason: err.to_string() })?;
        }
        let db = io!("open", redb::Builder::new().set_cache_size(REDB_CACHE_SIZE_BYTES).create(path))?;
        Self::start(db)
    }

    /// Creates the tables and starts the committer over an opened database.
    pub(crate) fn start(db: Database) -> Result<Self> {
        create_tables(&db)?;
        let db = Arc::new(db);
        let (sender, receiver) = mpsc::channel(GROUP_COMMIT_QUEUE_DEPTH_MAX);
        let committer_db = Arc::clone(&db);
        // The committer is the I/O shell of this backend: it blocks in fsync,
        // so it gets its own OS thread rather than an async task. Protocol
        // code never sees it; it only talks to it through the channel.
        #[allow(clippy::disallowed_methods)]
        let committer = std::thread::Builder::new()
            .name("kelpie-redb-committer".into())
            .spawn(move || run_committer(committer_db, receiver))
            .map_err(|err| Error::StorageIo { operation: "start committer", reason: err.to_string() })?;
        Ok(RedbBackend { db, jobs: Some(sender), committer: Some(committer) })
    }

    async fn submit(&self, op: Op) -> Result<OpOutput> {
        let (reply, answer) = oneshot::channel();
        let shutting_down = || Error::ShuttingDown { component: "redb committer" };
        let jobs = self.jobs.as_ref().ok_or_else(shutting_down)?;
        jobs.send(Job { op, reply }).await.map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }
}

/// Committed rows of `page` from a fresh read snapshot.
pub(crate) fn read_rows(db: &Database, actor: &ActorId, page: &ScanPage) -> Result<StoredRows> {
    let txn = io!("begin read", db.begin_read())?;
    let table = io!("open kv", txn.open_table(KV))?;
    scan_table(&table, actor, page)
}

/// `actor`'s placement as the database holds it now.
pub(crate) fn read_placement_of(db: &Database, actor: &ActorId) -> Result<Option<Placement>> {
    let txn = io!("begin read", db.begin_read())?;
    let table = io!("open placements", txn.open_table(PLACEMENTS))?;
    read_placement(&table, actor)
}

pub(crate) fn create_tables(db: &Database) -> Result<()> {
    let txn = io!("begin write", db.begin_write())?;
    io!("create kv", txn.open_table(KV))?;
    io!("create placements", txn.open_table(PLACEMENTS))?;
    io!("create meta", txn.open_table(META))?;
    io!("commit", txn.commit())
}

impl Drop for RedbBackend {
    fn drop(&mut self) {
        // Closing the queue ends the committer after it finishes its batch;
        // joining it releases the database file before this returns.
        self.jobs.take();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

fn unexpected(output: OpOutput) -> Error {
    Error::Internal(format!("redb committer answered with the wrong kind of output: {output:?}"))
}

impl Backend for RedbBackend {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        let found = (|| {
            let txn = io!("begin read", self.db.begin_read())?;
            let table = io!("open kv", txn.open_table(KV))?;
            let row = io!("get", table.get(row_key(actor, key).as_slice()))?;
            row.map(|row| decode_row(row.value())).transpose()
        })();
        Box::pin(async move { found })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>> {
        let rows = read_rows(&self.db, actor, page);
        Box::pin(async move { rows })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>> {
        Box::pin(async move {
            match self.submit(Op::Commit(request)).await? {
                OpOutput::Committed(info) => Ok(info),
                other => Err(unexpected(other)),
            }
        })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>> {
        let found = read_placement_of(&self.db, actor);
        Box::pin(async move { found })
    }

    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            match self.submit(Op::PutPlacement(placement)).await? {
                OpOutput::PlacementStored => Ok(()),
                other => Err(unexpected(other)),
            }
        })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>> {
        Box::pin(async move {
            match self.submit(Op::Claim { actor, node, expected_epoch }).await? {
                OpOutput::Claim(outcome) => Ok(outcome),
                other => Err(unexpected(other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let actor_id = ActorId::new("agents", "a1").unwrap();
        let placement = Placement { actor_id, node_id: NodeId::new("n1").unwrap(), epoch: 1 };
        Job { op: Op::PutPlacement(placement), reply: oneshot::channel().0 }
    }

    #[test]
    fn gather_fills_a_batch_up_to_the_limit_and_leaves_the_rest_queued() {
        const EXTRA_JOBS_COUNT: usize = 5;
        let queued = GROUP_COMMIT_BATCH_COUNT_MAX + EXTRA_JOBS_COUNT;
        let (sender, mut jobs) = mpsc::channel(queued);
        for _ in 0..queued {
            sender.try_send(job()).unwrap();
        }
        let mut batch = vec![jobs.try_recv().unwrap()];
        gather(&mut jobs, &mut batch);
        assert_eq!(batch.len(), GROUP_COMMIT_BATCH_COUNT_MAX, "one batch takes all it may");
        let mut next = Vec::new();
        gather(&mut jobs, &mut next);
        assert_eq!(next.len(), EXTRA_JOBS_COUNT, "the rest waits for the next batch");
        assert!(jobs.try_recv().is_err());
    }
}
