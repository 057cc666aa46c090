//! DST of the redb backend's commit path under storage faults.
//!
//! The real group-commit code ([`commit_batch`]) runs on redb over a seeded,
//! fault-injecting in-memory disk ([`FaultyDisk`]): written bytes sit in a
//! volatile layer until `sync_data` makes them durable; writes and syncs
//! fail at random; a crash keeps the durable image plus a random subset of
//! unsynced writes, some of them torn (only a prefix lands). Batches run on
//! one thread in a seeded order, so one seed replays one run. Crashes come
//! both before a batch's results are acknowledged and after.
//!
//! Invariants checked after every crash and restart, and at the end:
//! - Durability: every acknowledged commit survives.
//! - AtomicVisibility: an actor's keys all carry the same commit (never a
//!   partial transaction).
//!
//! Replay one seed: `KELPIE_DST_SEED=<seed> cargo test -p kelpie-storage redb_dst`.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use kelpie_core::env::ChaChaRngSource;
use kelpie_core::{ActorId, RngSource};
use redb::{Database, StorageBackend};

use crate::limits::SCAN_ROWS_COUNT_MAX;
use crate::redb_store::{commit_batch, create_tables, read_rows, Op, OpOutput};
use crate::types::{CommitInfo, CommitRequest, KeyRange, ScanOrder, ScanPage};

const SEEDS_COUNT: u64 = 500;
const STEPS_PER_SEED_COUNT: usize = 40;
const ACTORS_COUNT: usize = 4;
const KEYS_PER_COMMIT_COUNT: usize = 3;
const BATCH_OPS_COUNT_MAX: u64 = 6;
const WRITE_FAIL_PROBABILITY: f64 = 0.01;
const SYNC_FAIL_PROBABILITY: f64 = 0.03;
const CRASH_PROBABILITY: f64 = 0.08;

struct DiskState {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync, in order: `(offset, bytes)`.
    unsynced: Vec<(u64, Vec<u8>)>,
    faults_enabled: bool,
    crashed: bool,
    rng: Arc<ChaChaRngSource>,
    faults_fired_count: u64,
}

/// The redb storage backend under test: a shared handle to [`DiskState`].
#[derive(Clone)]
struct FaultyDisk(Arc<Mutex<DiskState>>);

impl std::fmt::Debug for FaultyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyDisk")
    }
}

impl FaultyDisk {
    fn new(image: Vec<u8>, rng: Arc<ChaChaRngSource>) -> Self {
        FaultyDisk(Arc::new(Mutex::new(DiskState {
            volatile: image.clone(),
            durable: image,
            unsynced: Vec::new(),
            faults_enabled: false,
            crashed: false,
            rng,
            faults_fired_count: 0,
        })))
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stops the disk and returns what a reboot finds: the durable image plus
    /// a random subset of unsynced writes, each whole or torn.
    fn crash(&self) -> Vec<u8> {
        let mut state = self.state();
        state.crashed = true;
        let mut image = state.durable.clone();
        for (offset, bytes) in std::mem::take(&mut state.unsynced) {
            let landed = match state.rng.gen_range(0, 3) {
                0 => 0,
                1 => bytes.len(),
                _ => state.rng.gen_range(0, bytes.len() as u64 + 1) as usize,
            };
            write_at(&mut image, offset, &bytes[..landed]);
        }
        image
    }

    fn set_faults(&self, enabled: bool) {
        self.state().faults_enabled = enabled;
    }
}

fn write_at(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(bytes);
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} fault"))
}

impl DiskState {
    fn fault(&mut self, probability: f64) -> bool {
        let fired = self.faults_enabled && self.rng.gen_bool(probability);
        self.faults_fired_count += u64::from(fired);
        fired
    }
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state().volatile.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let state = self.state();
        let end = offset as usize + len;
        if end > state.volatile.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"));
        }
        Ok(state.volatile[offset as usize..end].to_vec())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state();
        if state.crashed {
            return Err(injected("crashed disk"));
        }
        // File length changes are metadata: durable at once, as on a
        // journaling file system.
        state.volatile.resize(len as usize, 0);
        state.durable.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        let mut state = self.state();
        if state.crashed || state.fault(SYNC_FAIL_PROBABILITY) {
            return Err(injected("sync"));
        }
        for (offset, bytes) in std::mem::take(&mut state.unsynced) {
            write_at(&mut state.durable, offset, &bytes);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        if state.crashed || state.fault(WRITE_FAIL_PROBABILITY) {
            return Err(injected("write"));
        }
        write_at(&mut state.volatile, offset, data);
        state.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
}

/// What the test knows of one actor: the last acknowledged and the last
/// attempted commit sequence.
#[derive(Debug, Default, Clone, Copy)]
struct ActorModel {
    acked: Option<u64>,
    attempted: Option<u64>,
}

fn actor(index: usize) -> ActorId {
    ActorId::new("dst", format!("a{index}")).expect("valid actor id")
}

fn open(image: Vec<u8>, rng: &Arc<ChaChaRngSource>) -> (FaultyDisk, Database) {
    let disk = FaultyDisk::new(image, Arc::clone(rng));
    let db = Database::builder().create_with_backend(disk.clone()).expect("redb recovers after any crash");
    create_tables(&db).expect("create tables without faults");
    disk.set_faults(true);
    (disk, db)
}

fn commit_of(actor_index: usize, seq: u64) -> Op {
    let writes = (0..KEYS_PER_COMMIT_COUNT)
        .map(|part| (format!("k{part}").into_bytes(), Some(seq.to_string().into_bytes())))
        .collect();
    Op::Commit(CommitRequest {
        actor_id: actor(actor_index),
        reads: BTreeMap::new(),
        scans: Vec::new(),
        writes,
        fence: None,
    })
}

/// Durability and AtomicVisibility for every actor.
fn check_invariants(db: &Database, models: &[ActorModel], seed: u64) {
    for (index, model) in models.iter().enumerate() {
        let rows = read_rows(
            db,
            &actor(index),
            &ScanPage::new(KeyRange::prefix(Vec::new()), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX + 1),
        )
        .expect("read after restart");
        let seqs: Vec<u64> = rows
            .iter()
            .map(|(_, stored)| String::from_utf8_lossy(&stored.value).parse().expect("value is a sequence"))
            .collect();
        let replay = format!("replay: KELPIE_DST_SEED={seed} cargo test -p kelpie-storage redb_dst");
        assert!(
            seqs.is_empty() || (seqs.len() == KEYS_PER_COMMIT_COUNT && seqs.iter().all(|s| *s == seqs[0])),
            "AtomicVisibility violated for actor {index}: {seqs:?}; {replay}"
        );
        let present = seqs.first().copied();
        assert!(
            present >= model.acked,
            "Durability violated for actor {index}: {present:?} < {:?}; {replay}",
            model.acked
        );
        assert!(present <= model.attempted, "actor {index} shows a commit never attempted; {replay}");
    }
}

/// One seeded run; returns (acknowledged commits, crashes, faults fired).
fn run_seed(seed: u64) -> (u64, u64, u64) {
    let rng = Arc::new(ChaChaRngSource::from_seed(seed));
    let (mut disk, mut db) = open(Vec::new(), &rng);
    let mut models = [ActorModel::default(); ACTORS_COUNT];
    let mut next_seq = 1u64;
    let (mut acked_count, mut crashes, mut faults) = (0, 0, 0);
    for _ in 0..STEPS_PER_SEED_COUNT {
        let batch_len = rng.gen_range(1, BATCH_OPS_COUNT_MAX + 1);
        let mut batch = Vec::new();
        for _ in 0..batch_len {
            let index = rng.gen_range(0, ACTORS_COUNT as u64) as usize;
            models[index].attempted = Some(next_seq);
            batch.push((index, next_seq));
            next_seq += 1;
        }
        let results = commit_batch(&db, batch.iter().map(|&(index, seq)| commit_of(index, seq)).collect());
        let poisoned = results.iter().any(Result::is_err);
        let crash_before_ack = rng.gen_bool(CRASH_PROBABILITY / 2.0);
        if !crash_before_ack {
            for (&(index, seq), result) in batch.iter().zip(&results) {
                if let Ok(OpOutput::Committed(CommitInfo { version })) = result {
                    assert!(*version > 0);
                    models[index].acked = Some(seq);
                    acked_count += 1;
                }
            }
        }
        // A failed commit may leave redb refusing writes until reopened, as
        // after a real I/O error: treat it as a crash too.
        if crash_before_ack || poisoned || rng.gen_bool(CRASH_PROBABILITY / 2.0) {
            faults += disk.state().faults_fired_count;
            let image = disk.crash();
            drop(db);
            (disk, db) = open(image, &rng);
            crashes += 1;
            check_invariants(&db, &models, seed);
        }
    }
    check_invariants(&db, &models, seed);
    let fired = disk.state().faults_fired_count;
    (acked_count, crashes, faults + fired)
}

#[test]
fn redb_dst_keeps_durability_and_atomic_visibility_under_storage_faults() {
    let seeds: Vec<u64> = match std::env::var("KELPIE_DST_SEED").ok().and_then(|seed| seed.parse().ok()) {
        Some(seed) => vec![seed],
        None => (0..SEEDS_COUNT).collect(),
    };
    let (mut acked, mut crashes, mut faults) = (0, 0, 0);
    for &seed in &seeds {
        let (a, c, f) = run_seed(seed);
        (acked, crashes, faults) = (acked + a, crashes + c, faults + f);
    }
    println!(
        "redb DST: {} seeds, {acked} acknowledged commits, {crashes} crashes, {faults} injected I/O faults",
        seeds.len()
    );
    assert!(acked > seeds.len() as u64 * 10, "the workload must make progress: {acked}");
    assert!(crashes > seeds.len() as u64, "every seed should crash at least about once: {crashes}");
    assert!(faults > seeds.len() as u64 / 2, "faults must fire: {faults}");
}

#[test]
fn redb_dst_replays_identically_for_one_seed() {
    assert_eq!(run_seed(42), run_seed(42));
}
