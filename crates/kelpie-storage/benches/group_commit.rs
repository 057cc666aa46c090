//! Durable commits per second on redb with 1, 16 and 64 concurrent writers,
//! beside the fsync rate of the same disk measured in the same run.
//!
//! Run: `cargo bench -p kelpie-storage` (set `KELPIE_BENCH_DIR` to measure
//! another disk; the default is the current directory).

// A benchmark, outside the deterministic boundary: real time and tasks.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::time::{Duration, Instant};

use kelpie_core::ActorId;
use kelpie_storage::Storage;

const MEASURE_DURATION_MS: u64 = 3_000;
const WRITERS_COUNTS: [usize; 3] = [1, 16, 64];
/// Size of each write in the fsync baseline and of each committed value.
const PAYLOAD_SIZE_BYTES: usize = 256;

/// Write + fdatasync loop on a file in `dir`: the disk's durable-write rate.
fn fsync_rate(dir: &std::path::Path) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).expect("create probe file");
    let payload = vec![7u8; PAYLOAD_SIZE_BYTES];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_millis(MEASURE_DURATION_MS) {
        file.write_all(&payload).expect("write");
        file.sync_data().expect("fdatasync");
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// Which keys each commit writes.
#[derive(Clone, Copy, Debug)]
enum Workload {
    /// Every commit rewrites the actor's one state key (how the runtime
    /// persists an actor's state after each invocation).
    ActorState,
    /// Commits rotate over `SPREAD_KEYS_COUNT` keys of the actor, so each
    /// writer dirties its own B-tree pages.
    SpreadKeys,
}

const SPREAD_KEYS_COUNT: u64 = 64;

/// `writers` tasks, each on its own actor, commit one key per transaction
/// for the measuring window; returns durable commits per second.
async fn commit_rate(dir: &std::path::Path, writers: usize, workload: Workload) -> f64 {
    let storage =
        Storage::open_redb(dir.join(format!("bench-{workload:?}-{writers}.redb"))).expect("open redb");
    let deadline = Instant::now() + Duration::from_millis(MEASURE_DURATION_MS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let actor = ActorId::new("bench", format!("w{writer}")).expect("valid id");
            let mut count = 0u64;
            while Instant::now() < deadline {
                let mut txn = storage.begin(actor.clone());
                let key = match workload {
                    Workload::ActorState => "state".to_string(),
                    Workload::SpreadKeys => format!("k{}", count % SPREAD_KEYS_COUNT),
                };
                txn.put(key, vec![1u8; PAYLOAD_SIZE_BYTES]).expect("put");
                txn.commit(None).await.expect("commit");
                count += 1;
            }
            count
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("writer task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let base = std::env::var("KELPIE_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    println!(
        "kelpie-storage group commit bench: dir {}, {MEASURE_DURATION_MS} ms per measurement",
        dir.path().display()
    );
    let fsyncs = fsync_rate(dir.path());
    println!("disk fsync rate (write {PAYLOAD_SIZE_BYTES} B + fdatasync): {fsyncs:.0}/s");
    for workload in [Workload::ActorState, Workload::SpreadKeys] {
        let mut single = None;
        for writers in WRITERS_COUNTS {
            let rate = runtime.block_on(commit_rate(dir.path(), writers, workload));
            let single_rate = *single.get_or_insert(rate);
            println!(
                "redb {workload:?}: {writers:>2} writers: {rate:>8.0} durable commits/s ({:.1}x single writer, {:.2} per disk fsync)",
                rate / single_rate,
                rate / fsyncs
            );
        }
    }
}
