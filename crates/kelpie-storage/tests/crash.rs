//! Crash tests with a real process: the crash writer commits as fast as it
//! can, is killed with SIGKILL at a random moment, and the reopened store
//! must hold every acknowledged commit in full and no partial transaction.
//! Repeated `CRASH_ITERATIONS_COUNT` times per backend (redb, PostgreSQL).

// Tests sit outside the deterministic boundary: real time, threads, sleeps.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use kelpie_core::env::ChaChaRngSource;
use kelpie_core::{ActorId, RngSource};
use kelpie_storage::test_support::PostgresServer;
use kelpie_storage::{KeyRange, Storage};

const CRASH_ITERATIONS_COUNT: usize = 20;
const WRITERS_COUNT: usize = 4;
const KEYS_PER_COMMIT_COUNT: usize = 3;
/// Longest random delay between the first acknowledgement and the kill.
const KILL_DELAY_MS_MAX: u64 = 150;
/// Longest wait for the writer's first acknowledgement.
const FIRST_ACK_WAIT_MS_MAX: u64 = 20_000;
/// Attempts at reading a writer's rows and head without a commit landing between.
const SETTLE_ATTEMPTS_COUNT_MAX: usize = 200;
const SETTLE_PAUSE_MS: u64 = 10;

fn seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    std::env::var("KELPIE_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(now.as_nanos() as u64)
}

/// Runs the writer until a random moment after its first ack, kills it with
/// SIGKILL, and returns the highest acknowledged sequence per writer.
fn run_and_kill(args: &[&str], rng: &ChaChaRngSource) -> BTreeMap<usize, u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kelpie-storage-crash-writer"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (first_ack, first_ack_seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = BTreeMap::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
            if let [writer, seq] = fields[..] {
                let _ = first_ack.send(());
                let highest = acked.entry(writer as usize).or_insert(seq);
                *highest = (*highest).max(seq);
            }
        }
        acked
    });
    first_ack_seen
        .recv_timeout(Duration::from_millis(FIRST_ACK_WAIT_MS_MAX))
        .expect("writer never acknowledged");
    std::thread::sleep(Duration::from_millis(rng.gen_range(0, KILL_DELAY_MS_MAX)));
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().expect("reap the writer");
    assert!(!status.success(), "the writer was killed, not finished: {status}");
    reader.join().expect("stdout reader")
}

/// The writer's rows and head, read when no commit lands between the two
/// reads. A killed client's last COMMIT may still be running in the
/// PostgreSQL server (it completes whole), and each read of a transaction
/// is its own statement, so the head is read before and after the rows
/// until both agree.
async fn settled_rows_and_head(storage: &Storage, actor: ActorId) -> (Vec<(Vec<u8>, Vec<u8>)>, Option<u64>) {
    let head_of =
        |bytes: Option<Vec<u8>>| bytes.map(|head| String::from_utf8(head).unwrap().parse::<u64>().unwrap());
    for _ in 0..SETTLE_ATTEMPTS_COUNT_MAX {
        let mut txn = storage.begin(actor.clone());
        let before = head_of(txn.get(b"head").await.unwrap());
        let rows = txn.scan(KeyRange::prefix("t/")).await.unwrap();
        let after = head_of(txn.get(b"head").await.unwrap());
        if before == after {
            return (rows, after);
        }
        tokio::time::sleep(Duration::from_millis(SETTLE_PAUSE_MS)).await;
    }
    panic!("{actor}: the head kept changing after the writer was killed");
}

/// Every acknowledged commit is there in full; every present one is whole;
/// present commits form a gap-free sequence whose end `head` names.
async fn check_store(storage: &Storage, tag: &str, acked: &BTreeMap<usize, u64>) -> u64 {
    let mut commits_seen = 0;
    for writer in 0..WRITERS_COUNT {
        let actor = ActorId::new(format!("crash-{tag}"), format!("w{writer}")).unwrap();
        let (rows, head) = settled_rows_and_head(storage, actor).await;
        assert_eq!(
            rows.len() % KEYS_PER_COMMIT_COUNT,
            0,
            "a partial transaction is visible: {} rows",
            rows.len()
        );
        let present = (rows.len() / KEYS_PER_COMMIT_COUNT) as u64;
        for (index, (key, value)) in rows.iter().enumerate() {
            let (seq, part) = (index / KEYS_PER_COMMIT_COUNT, index % KEYS_PER_COMMIT_COUNT);
            assert_eq!(
                key,
                format!("t/{seq:010}/{part}").as_bytes(),
                "writer {writer}: gap or partial commit"
            );
            assert_eq!(value, format!("w{writer}-{seq}-{part}").as_bytes());
        }
        assert_eq!(head, present.checked_sub(1), "writer {writer}: head must name the last whole commit");
        if let Some(&highest_acked) = acked.get(&writer) {
            assert!(
                present > highest_acked,
                "writer {writer}: ack {highest_acked} lost, only {present} commits present"
            );
        }
        commits_seen += present;
    }
    commits_seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_keeps_every_acknowledged_commit_across_sigkill() {
    let seed = seed();
    println!("seed {seed} (replay with KELPIE_CRASH_SEED={seed})");
    let rng = ChaChaRngSource::from_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let path_text = path.display().to_string();
    let mut total = 0;
    for iteration in 0..CRASH_ITERATIONS_COUNT {
        let tag = format!("i{iteration}");
        let acked = run_and_kill(&["redb", &path_text, &tag], &rng);
        let storage = Storage::open_redb(&path).expect("reopen after SIGKILL");
        let present = check_store(&storage, &tag, &acked).await;
        assert!(present >= acked.len() as u64);
        total += present;
    }
    println!("redb: {CRASH_ITERATIONS_COUNT} kills, {total} commits verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_commit_across_sigkill() {
    let Some(server) = PostgresServer::start_or_skip("postgres_keeps_every_acknowledged_commit") else {
        return;
    };
    let seed = seed();
    println!("seed {seed} (replay with KELPIE_CRASH_SEED={seed})");
    let rng = ChaChaRngSource::from_seed(seed);
    let url = server.create_database("crash").unwrap();
    let mut total = 0;
    for iteration in 0..CRASH_ITERATIONS_COUNT {
        let tag = format!("i{iteration}");
        let acked = run_and_kill(&["postgres", &url, &tag], &rng);
        let storage = Storage::connect_postgres(&url).await.expect("reconnect after SIGKILL");
        let present = check_store(&storage, &tag, &acked).await;
        assert!(present >= acked.len() as u64);
        total += present;
    }
    println!("postgres: {CRASH_ITERATIONS_COUNT} kills, {total} commits verified");
}
