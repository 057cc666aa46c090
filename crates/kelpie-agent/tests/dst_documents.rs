//! Documents DST: uploaded files processed in the background by the real
//! folders and documents worker of the agent service, on one simulated node
//! whose storage is the simulated disk, through disk read and write faults
//! (a failed write crashes the process, as a failed fsync does), crashes at
//! random moments, crashes at the writes of processing output (so attempts
//! are interrupted; in one seed in `STUBBORN_SEED_ONE_IN`, every attempt at
//! one file, until processing gives it up) and restarts. Every boot opens the disk, builds the
//! service and starts what `kelpie serve` starts (`node.rs`, `listen`): the
//! legacy directory's migration, the reclaimer, the documents worker and the
//! recovery of runs. Folders get the server's default embedding,
//! `kelpie/local-hash-256`, computed in-process.
//!
//! A client creates a folder and uploads seeded text files (300 bytes to
//! about three pages; now and then one longer than a stored page of text
//! and an embedding batch; most carry a marker word no other file holds),
//! one that is not UTF-8 and sometimes one of blank lines. An upload that
//! fails is uploaded again; some are cut off by a crash half-way, some
//! cancelled. Between uploads it searches, reads what is done, runs the
//! worker, waits or crashes the node. Then the faults stop and the worker
//! is left to finish. These hold (a read that fails is tried again; a check
//! a crash interrupts is made at the next look):
//! - UploadsAreAccepted: each file is acknowledged (`pending`, a file id)
//!   within `UPLOAD_ATTEMPTS_COUNT_MAX` uploads;
//! - FileReachesAFinalStatus: every acknowledged upload is listed; every
//!   listed file is `completed` or `error` within `FINAL_WAIT_MS_MAX` of the
//!   faults stopping, and a final file never changes again;
//! - CompletedFilesAreWhole: a completed file has `chunks_embedded ==
//!   total_chunks > 0`, its passages are exactly the chunks of its text, in
//!   order, of its current attempt, its lines are counted, its content
//!   (`get_file(.., include_content = true)`) is the uploaded text, and the
//!   folder lists passages of completed files only;
//! - GoodFilesComplete: a text file ends `completed`, or in `error` only
//!   when processing was interrupted `FILE_ATTEMPTS_COUNT_MAX` times;
//! - BadFilesEndInError: the non-UTF-8 file ends in `error` naming the
//!   byte offset, the blank one in `error` saying there is no text;
//! - NoHalfIndexedSearch: a search of the folder (its actor's `Search`)
//!   answers passages of completed files' current attempts only;
//! - CompletedFilesAreFound: at the end, a search for a completed file's
//!   marker answers a passage of it first;
//! - NamesResolve: every listed file is found by its name;
//! - WorkDrains: the folder has no work left within `WORK_DRAIN_MS_MAX` of
//!   the faults stopping (abandoned uploads dropped, lapsed attempts
//!   reclaimed), and then holds no upload, no unfinished or reclaim mark,
//!   and no processing output but its completed files' current attempts
//!   (and the text a file in error parsed before its error).
//!
//! The planted bug `SearchSkipsFileStatus` (a search that ranks every
//! passage it has a code for) must be caught by NoHalfIndexedSearch.
//!
//! Found while it was written: an upload cut off by a crash and tried again
//! under the same name left the new file nameless once the abandoned one
//! was dropped (NamesResolve, seed 0; dropping a file now deletes its name
//! only while the name is still its own), and a file given up after
//! `FILE_ATTEMPTS_COUNT_MAX` interrupted attempts kept its upload for good
//! (WorkDrains, seed 1; giving up now reclaims the upload and the last
//! attempt's output).
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-agent --test dst_documents`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_agent::actors::folder::{
    passage_id, DuplicateHandling, FilePassage, FileRecord, FileStatus, FolderActor, FolderCommand,
    FolderReply, FILE_ATTEMPTS_COUNT_MAX, FOLDER_NAMESPACE, PROCESSING_LEASE_MS, UPLOAD_IDLE_MS,
};
use kelpie_agent::documents::chunk::Chunker;
use kelpie_agent::limits::STORE_PAGE_COUNT_MAX;
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_agent::page::Page;
use kelpie_agent::planted::PlantedBug;
use kelpie_agent::service::documents::DOCUMENTS_IDLE_POLL_MS;
use kelpie_agent::service::folders::{FolderInput, UploadStart};
use kelpie_agent::{AgentService, ServiceError};
use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_core::{ActorId, NodeId, Result as CoreResult};
use kelpie_dst::{
    replay_command, seeds_to_run, DeterministicRng, Fault, FaultKind, FaultRule, LlmResponse, SimHandle,
    SimLlmClient, SimNode, Simulation,
};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::sim::SimChatModel;
use kelpie_llm::LlmClients;
use kelpie_memory::embed_local;
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_sandbox::sim::SimBackend;
use kelpie_storage::limits::SCAN_ROWS_COUNT_MAX;
use kelpie_storage::sim_disk::SimDiskBackend;
use kelpie_storage::types::{CommitRequest, StoredRows};
use kelpie_storage::{
    Backend, BoxFut, ClaimOutcome, CommitInfo, KeyRange, Placement as StoredPlacement, ScanOrder, ScanPage,
    Storage, Versioned,
};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::Value;

/// Seeds of the sweep.
const SEEDS_COUNT: u64 = 150;
/// Text files per seed (besides the bad ones).
const TEXT_FILES_COUNT_MIN: u64 = 3;
const TEXT_FILES_COUNT_MAX: u64 = 6;
/// Size of a text file: 300 bytes to about three pages.
const TEXT_BYTES_MIN: u64 = 300;
const TEXT_BYTES_MAX: u64 = 9_000;
/// Size of the occasional long file: over a stored page of text
/// (`TEXT_PAGE_CHARS_MAX`) and over one embedding batch of chunks.
const LONG_TEXT_BYTES_MIN: u64 = 20_000;
const LONG_TEXT_BYTES_MAX: u64 = 60_000;
const LINE_WORDS_COUNT_MAX: u64 = 14;
/// Tries of one file's upload before the client gives up on it.
const UPLOAD_ATTEMPTS_COUNT_MAX: usize = 40;
/// Pieces an upload is fed in, at most.
const UPLOAD_PIECES_COUNT_MAX: u64 = 4;
/// Chance that a worker pass is run by hand as an upload begins, in percent.
const CONCURRENT_PASS_PERCENT: usize = 30;
/// Operations after each upload, at most.
const OPERATIONS_COUNT_MAX: usize = 3;
/// Attempts of a check's read before the check reports it failing.
const CHECK_ATTEMPTS_COUNT_MAX: usize = 50;
/// Passages one search asks for.
const SEARCH_RESULTS_COUNT: usize = 10;
/// Candidate markers tried per seed (a marker needs an embedding bucket of its own).
const MARKER_CANDIDATES_COUNT_MAX: u64 = 1_000;
/// Longest pause of the client, letting the worker run.
const PAUSE_MS_MAX: u64 = 300;
/// Longest gap between two crashes of the chaos task while faults run.
const CRASH_GAP_MS_MAX: u64 = 400;
const RESTART_MS: u64 = 50;
/// Chance that a write of processing output crashes the node, in percent.
const PROCESSING_CRASH_PERCENT: usize = 10;
/// One seed in this many is stubborn (see [`ProcessingCrashes`]).
const STUBBORN_SEED_ONE_IN: usize = 8;
/// How long a stubborn seed waits, under faults, for its files to be
/// final: every attempt at its victim waits out the lease of the last.
const STUBBORN_WAIT_MS_MAX: u64 =
    (FILE_ATTEMPTS_COUNT_MAX as u64 + 1) * (PROCESSING_LEASE_MS + 2 * DOCUMENTS_IDLE_POLL_MS);
const STUBBORN_POLL_MS: u64 = 2_000;
/// After the faults stop, every file is final within this: a dead worker's
/// lease runs out, then the worker's next pass takes the file.
const FINAL_WAIT_MS_MAX: u64 = PROCESSING_LEASE_MS + 5 * DOCUMENTS_IDLE_POLL_MS;
/// After the faults stop, the folder has no work left within this: an
/// upload cut off is dropped once idle for `UPLOAD_IDLE_MS`.
const WORK_DRAIN_MS_MAX: u64 = UPLOAD_IDLE_MS + PROCESSING_LEASE_MS + 5 * DOCUMENTS_IDLE_POLL_MS;
/// Pause between two looks while waiting for the end.
const QUIET_POLL_MS: u64 = 250;
const POLL_MS: u64 = 10;
/// Longest the client waits for the node to boot again.
const BOOT_WAIT_MS_MAX: u64 = 600_000;
/// Simulated time the test driver runs between two looks at the client.
const SLICE_MS: u64 = 100;
const SIM_LIMIT_MS: u64 = 3_600_000;
const FOLDER_NAME: &str = "docs";
/// Where the runtime keeps an actor's own keys (beside its state).
const ACTOR_KEYS_PREFIX: &[u8] = b"u/";
/// Bytes of a `t/<seq>.<attempt>/` prefix of the folder actor's keys.
const ATTEMPT_PREFIX_BYTES: usize = 22;
/// The storage faults, cleared for the quiet end.
const FAULT_KINDS: [FaultKind; 3] =
    [FaultKind::StorageWriteFail, FaultKind::StorageReadFail, FaultKind::CrashAfterWrite];
/// Words of the text files (some of more than one byte per character).
const VOCABULARY: [&str; 24] = [
    "the", "river", "stone", "lamp", "orchard", "ledger", "quiet", "harbour", "copper", "seven", "window",
    "garden", "north", "kelp", "tide", "paper", "café", "naïve", "日本", "signal", "meadow", "engine",
    "winter", "letter",
];

/// A broken invariant: which, and what was seen.
#[derive(Debug)]
struct Violation {
    invariant: &'static str,
    detail: String,
}

fn violation<T>(invariant: &'static str, detail: String) -> Result<T, Violation> {
    Err(Violation { invariant, detail })
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// What a planned file is, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// UTF-8 text: it ends `completed`, whole.
    Text,
    /// Not UTF-8 from this byte on: it ends in `error` naming the offset.
    NotUtf8 { offset_bytes: usize },
    /// Blank lines only: it ends in `error`, with nothing to index.
    Blank,
}

struct PlannedFile {
    name: String,
    bytes: Vec<u8>,
    kind: Kind,
    /// A word no other file holds, when it has one.
    marker: Option<String>,
}

impl PlannedFile {
    /// The text as stored: a last line break ends the last line.
    fn stored_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.strip_suffix('\n').unwrap_or(&text).to_string()
    }

    /// The passages the text cuts into, in order.
    fn chunks(&self) -> Vec<String> {
        let mut chunker = Chunker::new();
        let mut chunks = chunker.push(&self.stored_text());
        chunks.extend(chunker.finish());
        chunks.into_iter().map(|chunk| chunk.text).collect()
    }
}

/// The embedding bucket of a single word (the local embedding hashes
/// each word to one).
fn bucket(word: &str) -> Option<usize> {
    embed_local(word).iter().position(|x| *x != 0.0)
}

/// `count` marker words of `seed`, each in a bucket no other marker and no
/// word of the vocabulary has, so a search for one scores only its passages.
fn markers(seed: u64, count: usize) -> Vec<String> {
    let mut taken: BTreeSet<usize> = VOCABULARY.iter().filter_map(|word| bucket(word)).collect();
    let mut found = Vec::new();
    for n in 0..MARKER_CANDIDATES_COUNT_MAX {
        if found.len() == count {
            break;
        }
        let word = format!("zq{seed:x}m{n}");
        if bucket(&word).is_some_and(|b| taken.insert(b)) {
            found.push(word);
        }
    }
    assert_eq!(
        found.len(),
        count,
        "{count} markers of their own in {MARKER_CANDIDATES_COUNT_MAX} candidates"
    );
    found
}

/// Lines of vocabulary words, about `bytes` long, `marker` in one of them;
/// ending with a line break or not.
fn text_of(rng: &DeterministicRng, bytes: u64, marker: Option<&str>) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut length = 0;
    while length < bytes as usize {
        let words = rng.between_inclusive(3, LINE_WORDS_COUNT_MAX);
        let line: Vec<&str> = (0..words).map(|_| VOCABULARY[rng.index_below(VOCABULARY.len())]).collect();
        let line = line.join(" ");
        length += line.len() + 1;
        lines.push(line);
        if rng.index_below(10) == 0 {
            lines.push(String::new());
        }
    }
    if let Some(marker) = marker {
        let at = rng.index_below(lines.len());
        lines[at] = format!("{} {marker}", lines[at]).trim_start().to_string();
    }
    let mut text = lines.join("\n");
    if rng.index_below(2) == 0 {
        text.push('\n');
    }
    text
}

/// The files of one seed, in upload order.
fn plan(seed: u64) -> Vec<PlannedFile> {
    let rng = DeterministicRng::new(seed).fork("plan");
    let count = rng.between_inclusive(TEXT_FILES_COUNT_MIN, TEXT_FILES_COUNT_MAX) as usize;
    let markers = markers(seed, count);
    let long = (rng.index_below(3) == 0).then(|| rng.index_below(count));
    let mut files = Vec::new();
    for (n, marker) in markers.into_iter().enumerate() {
        let bytes = match long == Some(n) {
            true => rng.between_inclusive(LONG_TEXT_BYTES_MIN, LONG_TEXT_BYTES_MAX),
            false => rng.between_inclusive(TEXT_BYTES_MIN, TEXT_BYTES_MAX),
        };
        let marker = (rng.index_below(4) != 0).then_some(marker);
        let text = text_of(&rng, bytes, marker.as_deref());
        files.push(PlannedFile {
            name: format!("doc{n}.txt"),
            bytes: text.into_bytes(),
            kind: Kind::Text,
            marker,
        });
    }
    let mut bad = text_of(&rng, rng.between_inclusive(50, 2_000), None).into_bytes();
    let offset_bytes = bad.len();
    bad.push(0xFF);
    bad.extend_from_slice(b" the rest\n");
    files.push(PlannedFile {
        name: "bad.txt".into(),
        bytes: bad,
        kind: Kind::NotUtf8 { offset_bytes },
        marker: None,
    });
    if rng.index_below(2) == 0 {
        files.push(PlannedFile {
            name: "blank.txt".into(),
            bytes: b"\n \n\n".to_vec(),
            kind: Kind::Blank,
            marker: None,
        });
    }
    for n in (1..files.len()).rev() {
        files.swap(n, rng.index_below(n + 1));
    }
    files
}

/// One boot's process: alive from its boot until its boot task is dropped,
/// which a crash of the node does at once (the boot task never ends).
struct Process {
    alive: Arc<AtomicBool>,
}

impl Process {
    fn start() -> Self {
        Process { alive: Arc::new(AtomicBool::new(true)) }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
    }
}

/// The simulated disk, serving only the process that opened it: once that
/// process is gone, a call from its code (which the simulator may still run
/// on a client's task) fails, as a dead process writes nothing. (Unlike
/// `dst_service.rs`, which compares boot numbers, this also holds between a
/// restart and the new boot's first step, when the boot number is not yet
/// counted: while this test was written, a request sent then reached the
/// gone process's service, whose commit record the new boot overwrote.)
struct BootDisk {
    inner: SimDiskBackend,
    alive: Arc<AtomicBool>,
    crashes: Arc<ProcessingCrashes>,
}

impl BootDisk {
    fn alive(&self) -> CoreResult<()> {
        match self.alive.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(kelpie_core::Error::StorageIo {
                operation: "dst disk",
                reason: "the process that opened it is gone".into(),
            }),
        }
    }
}

impl Backend for BootDisk {
    fn name(&self) -> &'static str {
        "dst-boot-disk"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, CoreResult<Option<Versioned>>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.get(actor, key).await
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, CoreResult<StoredRows>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.scan(actor, page).await
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, CoreResult<CommitInfo>> {
        Box::pin(async move {
            self.alive()?;
            if self.crashes.strikes(&request) {
                return Err(kelpie_core::Error::StorageIo {
                    operation: "dst disk",
                    reason: "the process crashed at a processing write".into(),
                });
            }
            self.inner.commit(request).await
        })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, CoreResult<Option<StoredPlacement>>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.get_placement(actor).await
        })
    }

    fn put_placement(&self, placement: StoredPlacement) -> BoxFut<'_, CoreResult<()>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.put_placement(placement).await
        })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, CoreResult<ClaimOutcome>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.claim_placement(actor, node, expected_epoch).await
        })
    }
}

/// The agent service of one boot, and its folder actors' runtime (for what
/// no route asks: a search of the folder, a file by name).
fn build_service(
    node: &SimNode,
    storage: &Storage,
    bug: Option<PlantedBug>,
) -> CoreResult<(AgentService, Runtime<FolderActor>)> {
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("dst".into());
    layers.set("llm.openai_base_url", "http://127.0.0.1:9/v1", flag.clone()).expect("a valid URL");
    layers.set("llm.default_model", "openai-proxy/sim-gpt", flag).expect("a valid model");
    let llm_config = layers.resolve().expect("a valid configuration").llm;
    let clients =
        LlmClients::from_config(&llm_config).map_err(|e| kelpie_core::Error::Internal(e.to_string()))?;
    let catalog = ModelCatalog::new(llm_config, clients);
    // Processing never asks the chat model: the local embedding is computed in-process.
    let model = SimChatModel::new(SimLlmClient::with_responder(node, |_| LlmResponse::default()));
    let mut settings = RunnerSettings::new("/usr/bin/python3", "/nonexistent/pip".into());
    settings.warm_sandboxes_count = 0;
    let runner = Arc::new(ToolRunner::new(Arc::new(SimBackend::new(node)), settings));
    let env = node.env();
    let runtimes = agent_runtimes(storage, &Placement::Local, &env, &RuntimeConfig::new(node.id().clone()))?;
    if let Some(bug) = bug {
        runtimes.planted.plant(bug);
    }
    let folders = runtimes.folders.clone();
    Ok((AgentService::new(runtimes, env, Arc::new(model), catalog, runner), folders))
}

/// What a client reaches of the current boot.
#[derive(Clone)]
struct Live {
    service: Arc<AgentService>,
    folders: Runtime<FolderActor>,
    storage: Storage,
}

struct Boot {
    live: Live,
    number: u64,
    /// Whether its process lives (see [`Process`]).
    alive: Arc<AtomicBool>,
}

type Slot = Arc<Mutex<Option<Boot>>>;

/// The phases of a seed: uploads under faults and crashes, (in a stubborn
/// seed) a wait under faults, then quiet.
#[derive(Default)]
struct Phase {
    /// Every file is uploaded: the chaos task's crashes stop.
    uploads_over: AtomicBool,
    /// The client is done with the faulty part: crashes at processing
    /// writes stop, and the storage faults are cleared next.
    faults_over: AtomicBool,
    /// The storage faults are cleared.
    quiet: AtomicBool,
}

/// Crashes at the writes of processing output (a page of text, a batch of
/// passages), the moments a crash interrupts an attempt; on while faults
/// run. In a stubborn seed the first file written crashes at every one of
/// its writes, so every attempt at it is interrupted until processing gives
/// it up.
struct ProcessingCrashes {
    handle: SimHandle,
    phase: Arc<Phase>,
    rng: DeterministicRng,
    stubborn: bool,
    /// The stubborn seed's file (its seq as its keys spell it).
    victim: Mutex<Option<String>>,
    fired: AtomicU64,
}

impl ProcessingCrashes {
    /// The seq of the file whose processing output `key` (a folder actor's
    /// stored key) holds: `u/t/<seq>.<attempt>/..` or `u/p/..`.
    fn output_seq(key: &[u8]) -> Option<String> {
        let rest = key.strip_prefix(b"u/t/").or_else(|| key.strip_prefix(b"u/p/"))?;
        let seq = rest.get(..16)?;
        Some(String::from_utf8_lossy(seq).into_owned())
    }

    /// Whether the node crashes instead of committing `request`.
    fn strikes(&self, request: &CommitRequest) -> bool {
        if self.phase.faults_over.load(Ordering::SeqCst) || request.actor_id.namespace() != FOLDER_NAMESPACE {
            return false;
        }
        let Some(seq) = request.writes.keys().find_map(|key| Self::output_seq(key)) else { return false };
        let stubborn =
            self.stubborn && *self.victim.lock().unwrap().get_or_insert_with(|| seq.clone()) == seq;
        let strikes = stubborn || self.rng.index_below(100) < PROCESSING_CRASH_PERCENT;
        if strikes {
            self.fired.fetch_add(1, Ordering::SeqCst);
            self.handle.crash_node(0);
        }
        strikes
    }
}

/// What the client was told and saw.
#[derive(Default)]
struct Ledger {
    boot: u64,
    folder: Option<String>,
    /// File id -> plan index of every acknowledged upload.
    acked: BTreeMap<String, usize>,
    /// Every file seen final, as first seen.
    finals: BTreeMap<String, FileRecord>,
    /// Files checked whole since they were final.
    verified: BTreeSet<String>,
}

/// What one seed exercised.
#[derive(Default, Debug, Clone)]
struct Seen {
    boots: u64,
    chaos_crashes: u64,
    /// Crashes at writes of processing output.
    processing_crashes: u64,
    stubborn_seeds: usize,
    write_faults: u64,
    crashes_after_write: u64,
    uploads_acked: usize,
    uploads_failed: usize,
    uploads_cut: usize,
    uploads_cancelled: usize,
    /// Files listed that no acknowledged upload named (stored, answer lost).
    files_unacknowledged: usize,
    completed: usize,
    bad_errors: usize,
    /// Files given up after `FILE_ATTEMPTS_COUNT_MAX` interrupted attempts.
    gave_up: usize,
    searches: usize,
    /// Searches made while a listed file was still being processed.
    searches_while_processing: usize,
    hits_checked: usize,
    markers_found: usize,
    /// Longest wait, after the faults stopped, until every file was final.
    final_wait_ms_max: u64,
}

impl Seen {
    fn add(&mut self, other: &Seen) {
        self.boots += other.boots;
        self.chaos_crashes += other.chaos_crashes;
        self.processing_crashes += other.processing_crashes;
        self.stubborn_seeds += other.stubborn_seeds;
        self.crashes_after_write += other.crashes_after_write;
        self.write_faults += other.write_faults;
        self.uploads_acked += other.uploads_acked;
        self.uploads_failed += other.uploads_failed;
        self.uploads_cut += other.uploads_cut;
        self.uploads_cancelled += other.uploads_cancelled;
        self.files_unacknowledged += other.files_unacknowledged;
        self.completed += other.completed;
        self.bad_errors += other.bad_errors;
        self.gave_up += other.gave_up;
        self.searches += other.searches;
        self.searches_while_processing += other.searches_while_processing;
        self.hits_checked += other.hits_checked;
        self.markers_found += other.markers_found;
        self.final_wait_ms_max = self.final_wait_ms_max.max(other.final_wait_ms_max);
    }
}

/// What a read found, when the node stayed up.
enum Read<T> {
    Done(T),
    /// The node went down or booted again.
    Interrupted,
}

/// How one upload goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Whole,
    /// Half fed, then the node crashes.
    CutOff,
    Cancelled,
}

/// What an upload request answered.
enum Uploaded {
    Acked(Value),
    CutOff,
    Cancelled,
    Skipped,
}

/// A passage as the folder lists it.
struct Listed {
    id: String,
    file_id: String,
    text: String,
}

async fn folder_command(
    folders: Runtime<FolderActor>,
    folder_id: String,
    command: FolderCommand,
) -> Result<FolderReply, String> {
    let actor = ActorId::new(FOLDER_NAMESPACE, &folder_id).map_err(|e| e.to_string())?;
    folders.invoke(&actor, command).await.map_err(|e| e.to_string())
}

async fn search(
    folders: Runtime<FolderActor>,
    folder_id: String,
    query: String,
) -> Result<Vec<(FilePassage, f32)>, String> {
    let command = FolderCommand::Search { query: embed_local(&query), top_k: SEARCH_RESULTS_COUNT };
    match folder_command(folders, folder_id, command).await? {
        FolderReply::Passages(hits) => Ok(hits),
        other => Err(format!("a search answered {other:?}")),
    }
}

/// Every listed file, oldest first, page by page.
async fn all_files(folders: Runtime<FolderActor>, folder_id: String) -> Result<Vec<FileRecord>, String> {
    let mut files: Vec<FileRecord> = Vec::new();
    loop {
        let after = files.last().map(|file| file.id.clone());
        let command =
            FolderCommand::ListFiles { after, before: None, limit: STORE_PAGE_COUNT_MAX, descending: false };
        let FolderReply::Files(page) = folder_command(folders.clone(), folder_id.clone(), command).await?
        else {
            return Err("listing files answered another reply".into());
        };
        let full = page.len() == STORE_PAGE_COUNT_MAX;
        files.extend(page);
        if !full {
            return Ok(files);
        }
    }
}

/// Every passage the folder lists (`GET /v1/folders/{id}/passages`), page by page.
async fn all_passages(service: Arc<AgentService>, folder_id: String) -> Result<Vec<Listed>, String> {
    let mut passages: Vec<Listed> = Vec::new();
    loop {
        let after = passages.last().map(|passage| passage.id.clone());
        let page = Page { before: None, after, limit: STORE_PAGE_COUNT_MAX, descending: false };
        let listed = service.folders.passages(&folder_id, &page).await.map_err(|e| e.to_string())?;
        let full = listed.len() == STORE_PAGE_COUNT_MAX;
        let text = |value: &Value, field: &str| value[field].as_str().unwrap_or_default().to_string();
        passages.extend(listed.iter().map(|passage| Listed {
            id: text(passage, "id"),
            file_id: text(passage, "file_id"),
            text: text(passage, "text"),
        }));
        if !full {
            return Ok(passages);
        }
    }
}

/// The folder actor's own keys as stored (without the runtime's prefix).
async fn stored_keys(storage: Storage, folder_id: String) -> Result<Vec<String>, String> {
    let actor = ActorId::new(FOLDER_NAMESPACE, &folder_id).map_err(|e| e.to_string())?;
    let mut txn = storage.begin(actor);
    let mut range = KeyRange::prefix(ACTOR_KEYS_PREFIX.to_vec());
    let mut keys = Vec::new();
    loop {
        let rows = txn
            .scan_page(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX)
            .await
            .map_err(|e| e.to_string())?;
        keys.extend(
            rows.iter().map(|(key, _)| String::from_utf8_lossy(&key[ACTOR_KEYS_PREFIX.len()..]).into_owned()),
        );
        match rows.last() {
            Some((key, _)) if rows.len() == SCAN_ROWS_COUNT_MAX => {
                range.start = std::ops::Bound::Excluded(key.clone())
            }
            _ => return Ok(keys),
        }
    }
}

/// The keys a drained folder must not hold: uploads, unfinished and reclaim
/// marks, records, ids and names of no listed file, and processing output
/// other than a completed file's current attempt (its text, passages and
/// codes) or the text a file in error parsed before its error. A file
/// given up keeps no output.
fn stray_keys(keys: &[String], files: &[FileRecord]) -> Vec<String> {
    let mut kept: BTreeSet<String> = BTreeSet::new();
    let mut outputs: BTreeSet<String> = BTreeSet::new();
    for file in files {
        kept.insert(format!("f/{:016x}", file.seq));
        kept.insert(format!("fi/{}", file.id));
        kept.insert(format!("fn/{}", file.file_name));
        let kinds: &[char] = match file.status {
            FileStatus::Completed => &['t', 'p', 'q'],
            FileStatus::Error if !gave_up(file) => &['t'],
            _ => &[],
        };
        for kind in kinds {
            outputs.insert(format!("{kind}/{:016x}.{:02x}/", file.seq, file.attempt));
        }
    }
    keys.iter()
        .filter(|key| {
            let output = key.get(..ATTEMPT_PREFIX_BYTES).is_some_and(|prefix| outputs.contains(prefix));
            !kept.contains(key.as_str()) && !output
        })
        .cloned()
        .collect()
}

fn describe(file: &FileRecord) -> String {
    format!(
        "{} ({}, {}, attempt {}, lease {:?}, {:?}/{:?} chunks, {:?})",
        file.id,
        file.file_name,
        file.status.as_str(),
        file.attempt,
        file.lease,
        file.chunks_embedded,
        file.total_chunks,
        file.error_message
    )
}

/// The error of a file processing gave up on.
fn gave_up(file: &FileRecord) -> bool {
    let interrupted = format!("processing was interrupted {FILE_ATTEMPTS_COUNT_MAX} times; giving up");
    file.status == FileStatus::Error
        && file.attempt == FILE_ATTEMPTS_COUNT_MAX
        && file.error_message.as_deref() == Some(interrupted.as_str())
}

/// NoHalfIndexedSearch: every hit is a passage of its file's current,
/// completed attempt, judged by `files` (read after the search: a completed
/// file stays so, with its attempt).
fn check_hits(hits: &[(FilePassage, f32)], files: &[FileRecord]) -> Result<(), Violation> {
    for (passage, _) in hits {
        let Some(file) = files.iter().find(|file| file.id == passage.file_id) else {
            return violation(
                "NoHalfIndexedSearch",
                format!(
                    "a search answered passage {} of file {}, which is not listed",
                    passage.id, passage.file_id
                ),
            );
        };
        let chunks = file.total_chunks.unwrap_or(0);
        let current = (0..chunks).any(|chunk| passage_id(&file.id, file.attempt, chunk) == passage.id);
        if file.status != FileStatus::Completed || !current {
            return violation(
                "NoHalfIndexedSearch",
                format!("a search answered passage {} of file {}", passage.id, describe(file)),
            );
        }
    }
    Ok(())
}

struct Client {
    node: SimNode,
    handle: SimHandle,
    slot: Slot,
    rng: DeterministicRng,
    plan: Vec<PlannedFile>,
    /// The seed is stubborn: the client waits under faults for the files
    /// to be final.
    stubborn: bool,
    ledger: Ledger,
    seen: Seen,
}

impl Client {
    /// Whether boot `number`'s process still lives.
    fn boot_lives(&self, number: u64) -> bool {
        let slot = self.slot.lock().unwrap();
        slot.as_ref().is_some_and(|boot| boot.number == number && boot.alive.load(Ordering::SeqCst))
    }

    /// The current boot, once the node is up and has booted.
    async fn live(&mut self) -> Result<Live, Violation> {
        let mut waited_ms = 0;
        loop {
            if self.node.is_up() {
                let slot = self.slot.lock().unwrap();
                if let Some(boot) = slot.as_ref().filter(|boot| boot.alive.load(Ordering::SeqCst)) {
                    self.ledger.boot = boot.number;
                    return Ok(boot.live.clone());
                }
            }
            if waited_ms > BOOT_WAIT_MS_MAX {
                return violation(
                    "FileReachesAFinalStatus",
                    format!("the node did not boot in {BOOT_WAIT_MS_MAX} ms"),
                );
            }
            self.handle.sleep(ms(POLL_MS)).await;
            waited_ms += POLL_MS;
        }
    }

    fn interrupted(&self, boot: u64) -> bool {
        !self.node.is_up() || !self.boot_lives(boot)
    }

    /// Runs `request` as a task of the node, as the server runs a client's
    /// request: a crash ends it and the client sees no answer (`None`). A
    /// request for the service of an earlier boot is not sent.
    async fn on_node<T: Send + 'static>(
        &self,
        request: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        if self.interrupted(self.ledger.boot) {
            return None;
        }
        let (answer, answered) = futures::channel::oneshot::channel();
        let spawned = self.node.spawn("request", async move {
            let _ = answer.send(request.await);
        });
        match spawned {
            true => answered.await.ok(),
            false => None,
        }
    }

    /// `read` tried until it answers, while the node stays up; a read that
    /// keeps failing is a violation of `invariant`.
    async fn read<T, F, Fut>(&self, invariant: &'static str, read: F) -> Result<Read<T>, Violation>
    where
        T: Send + 'static,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, String>> + Send + 'static,
    {
        let boot = self.ledger.boot;
        let mut last = None;
        for _ in 0..CHECK_ATTEMPTS_COUNT_MAX {
            if self.interrupted(boot) {
                return Ok(Read::Interrupted);
            }
            match self.on_node(read()).await {
                Some(Ok(value)) => return Ok(Read::Done(value)),
                Some(Err(err)) => last = Some(err),
                None => return Ok(Read::Interrupted),
            }
            self.handle.sleep(ms(POLL_MS)).await;
        }
        if self.interrupted(boot) {
            return Ok(Read::Interrupted);
        }
        violation(invariant, format!("a read failed {CHECK_ATTEMPTS_COUNT_MAX} times: {last:?}"))
    }

    /// The folder's id: created, or found by its name when a create whose
    /// answer was lost made it.
    async fn folder(&mut self, live: &Live) -> Option<String> {
        if let Some(id) = &self.ledger.folder {
            return Some(id.clone());
        }
        let service = Arc::clone(&live.service);
        let created = self
            .on_node(async move {
                let input = FolderInput { name: Some(FOLDER_NAME.into()), ..FolderInput::default() };
                match service.folders.create(input, false).await {
                    Ok(folder) => Ok(folder["id"].as_str().unwrap_or_default().to_string()),
                    Err(ServiceError::FolderNameTaken(_)) => service.folders.id_by_name(FOLDER_NAME).await,
                    Err(err) => Err(err),
                }
            })
            .await;
        let id = created?.ok()?;
        self.ledger.folder = Some(id.clone());
        Some(id)
    }

    /// Uploads planned file `index` until an upload of it is acknowledged.
    async fn upload(&mut self, index: usize) -> Result<(), Violation> {
        for _ in 0..UPLOAD_ATTEMPTS_COUNT_MAX {
            let live = self.live().await?;
            let Some(folder) = self.folder(&live).await else {
                self.seen.uploads_failed += 1;
                continue;
            };
            let way = match self.rng.index_below(100) {
                0..=9 => Way::CutOff,
                10..=14 => Way::Cancelled,
                _ => Way::Whole,
            };
            let (name, bytes) = (self.plan[index].name.clone(), self.plan[index].bytes.clone());
            let pieces = self.rng.between_inclusive(1, UPLOAD_PIECES_COUNT_MAX) as usize;
            if self.rng.index_below(100) < CONCURRENT_PASS_PERCENT && !self.interrupted(self.ledger.boot) {
                // A worker pass run by hand while the upload begins.
                let service = Arc::clone(&live.service);
                self.node.spawn("worker pass", async move {
                    let _ = service.documents.run_once().await;
                });
            }
            let service = Arc::clone(&live.service);
            let answer = self.on_node(send_upload(service, folder, name, bytes, pieces, way)).await;
            match answer {
                Some(Ok(Uploaded::Acked(file))) => {
                    let id = file["id"].as_str().unwrap_or_default().to_string();
                    if file["processing_status"] != "pending" || !id.starts_with("file-") {
                        return violation("UploadsAreAccepted", format!("an upload answered {file}"));
                    }
                    self.ledger.acked.insert(id, index);
                    self.seen.uploads_acked += 1;
                    return Ok(());
                }
                Some(Ok(Uploaded::CutOff)) => {
                    self.seen.uploads_cut += 1;
                    self.handle.crash_node(0);
                }
                Some(Ok(Uploaded::Cancelled)) => self.seen.uploads_cancelled += 1,
                Some(Ok(Uploaded::Skipped)) => {
                    return violation("UploadsAreAccepted", "an upload with `suffix` was skipped".into())
                }
                Some(Err(_)) | None => self.seen.uploads_failed += 1,
            }
        }
        violation(
            "UploadsAreAccepted",
            format!("{} was not accepted in {UPLOAD_ATTEMPTS_COUNT_MAX} uploads", self.plan[index].name),
        )
    }

    /// A query for a search: a marker (the passages of one file) or a word
    /// of every file.
    fn query(&self) -> String {
        let markers: Vec<&String> = self.plan.iter().filter_map(|file| file.marker.as_ref()).collect();
        match (self.rng.index_below(10), markers.is_empty()) {
            (0..=6, false) => markers[self.rng.index_below(markers.len())].clone(),
            _ => VOCABULARY[self.rng.index_below(VOCABULARY.len())].to_string(),
        }
    }

    async fn operation(&mut self) -> Result<(), Violation> {
        match self.rng.index_below(100) {
            0..=39 => {
                self.look(false).await?;
            }
            40..=64 => self.handle.sleep(ms(self.rng.between_inclusive(1, PAUSE_MS_MAX))).await,
            65..=84 => {
                // The worker run by hand, beside the background loop.
                let service = self.live().await?.service;
                let _ = self.on_node(async move { service.documents.run_once().await }).await;
            }
            _ => self.handle.crash_node(0),
        }
        Ok(())
    }

    /// One look at the folder, every invariant checked on what it shows: a
    /// search, then the files, the passages listed and the files again, so
    /// a hit is judged by a state no older than it, a listed passage by one
    /// read after it, and a file completed before the listing by its
    /// listing. `thorough` checks every final file whole again. The files
    /// as read last; `None` when a crash interrupted the look.
    async fn look(&mut self, thorough: bool) -> Result<Option<Vec<FileRecord>>, Violation> {
        let live = self.live().await?;
        let Some(folder) = self.ledger.folder.clone() else { return Ok(Some(Vec::new())) };
        let query = self.query();
        let folders = || (live.folders.clone(), folder.clone());
        let Read::Done(hits) = self
            .read("NoHalfIndexedSearch", || {
                let (folders, folder) = folders();
                search(folders, folder, query.clone())
            })
            .await?
        else {
            return Ok(None);
        };
        let Read::Done(before) = self
            .read("FileReachesAFinalStatus", || {
                let (folders, folder) = folders();
                all_files(folders, folder)
            })
            .await?
        else {
            return Ok(None);
        };
        let Read::Done(passages) = self
            .read("CompletedFilesAreWhole", || all_passages(Arc::clone(&live.service), folder.clone()))
            .await?
        else {
            return Ok(None);
        };
        let Read::Done(after) = self
            .read("FileReachesAFinalStatus", || {
                let (folders, folder) = folders();
                all_files(folders, folder)
            })
            .await?
        else {
            return Ok(None);
        };
        self.seen.searches += 1;
        self.seen.hits_checked += hits.len();
        if before.iter().any(|file| !file.status.is_final()) {
            self.seen.searches_while_processing += 1;
        }
        check_hits(&hits, &before)?;
        self.check_listed(&before)?;
        self.check_listed(&after)?;
        for passage in &passages {
            let file = after.iter().find(|file| file.id == passage.file_id);
            if file.is_none_or(|file| file.status != FileStatus::Completed) {
                return violation(
                    "CompletedFilesAreWhole",
                    format!("the folder lists passage {} of {:?}", passage.id, file.map(describe)),
                );
            }
        }
        for file in before.iter().filter(|file| file.status.is_final()) {
            if !thorough && self.ledger.verified.contains(&file.id) {
                continue;
            }
            if !self.check_final(&live, &folder, file, &passages).await? {
                return Ok(None);
            }
            self.ledger.verified.insert(file.id.clone());
        }
        if !self.check_names(&live, &folder, &after).await? {
            return Ok(None);
        }
        Ok(Some(after))
    }

    /// FileReachesAFinalStatus as far as one listing shows: every
    /// acknowledged upload is listed, and a file once final stays as it was.
    fn check_listed(&mut self, files: &[FileRecord]) -> Result<(), Violation> {
        if let Some(lost) = self.ledger.acked.keys().find(|id| !files.iter().any(|file| &file.id == *id)) {
            return violation("FileReachesAFinalStatus", format!("acknowledged file {lost} is not listed"));
        }
        for file in files {
            match self.ledger.finals.get(&file.id) {
                Some(earlier) => {
                    let same =
                        (earlier.status, earlier.attempt, earlier.total_chunks, &earlier.error_message)
                            == (file.status, file.attempt, file.total_chunks, &file.error_message);
                    if !same {
                        return violation(
                            "FileReachesAFinalStatus",
                            format!("file {} was final and is now {}", describe(earlier), describe(file)),
                        );
                    }
                }
                None if file.status.is_final() => {
                    self.ledger.finals.insert(file.id.clone(), file.clone());
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A final file ended as its kind must; false when a crash interrupted
    /// the check.
    async fn check_final(
        &self,
        live: &Live,
        folder: &str,
        file: &FileRecord,
        passages: &[Listed],
    ) -> Result<bool, Violation> {
        let Some(planned) = self.plan.iter().find(|planned| planned.name == file.original_file_name) else {
            return violation(
                "FileReachesAFinalStatus",
                format!("file {} was never uploaded", describe(file)),
            );
        };
        let message = file.error_message.as_deref();
        let failed = |expected: &str| file.status == FileStatus::Error && message == Some(expected);
        match planned.kind {
            Kind::NotUtf8 { offset_bytes } => {
                let expected = format!("not UTF-8 text at byte {offset_bytes}");
                if !gave_up(file) && !failed(&expected) {
                    return violation(
                        "BadFilesEndInError",
                        format!("{} ended, not in {expected:?}", describe(file)),
                    );
                }
                Ok(true)
            }
            Kind::Blank => {
                let expected = format!("No text found in {}: nothing to index", file.original_file_name);
                if !gave_up(file) && !failed(&expected) {
                    return violation(
                        "BadFilesEndInError",
                        format!("{} ended, not in {expected:?}", describe(file)),
                    );
                }
                Ok(true)
            }
            Kind::Text if gave_up(file) => Ok(true),
            Kind::Text if file.status != FileStatus::Completed => {
                violation("GoodFilesComplete", format!("text file {} did not complete", describe(file)))
            }
            Kind::Text => self.check_whole(live, folder, file, planned, passages).await,
        }
    }

    /// CompletedFilesAreWhole for completed file `file` of `planned`.
    async fn check_whole(
        &self,
        live: &Live,
        folder: &str,
        file: &FileRecord,
        planned: &PlannedFile,
        passages: &[Listed],
    ) -> Result<bool, Violation> {
        let chunks = planned.chunks();
        let count = chunks.len() as u64;
        if count == 0 || file.total_chunks != Some(count) || file.chunks_embedded != Some(count) {
            return violation(
                "CompletedFilesAreWhole",
                format!("{} is completed; its text cuts into {count} chunks", describe(file)),
            );
        }
        let mine: Vec<&Listed> = passages.iter().filter(|passage| passage.file_id == file.id).collect();
        let ids: Vec<String> = (0..count).map(|chunk| passage_id(&file.id, file.attempt, chunk)).collect();
        if !mine.iter().map(|passage| &passage.id).eq(ids.iter()) {
            let listed: Vec<&str> = mine.iter().map(|passage| passage.id.as_str()).collect();
            return violation(
                "CompletedFilesAreWhole",
                format!("{} lists passages {listed:?}, not {ids:?}", describe(file)),
            );
        }
        if let Some(at) = (0..chunks.len()).find(|&at| mine[at].text != chunks[at]) {
            return violation(
                "CompletedFilesAreWhole",
                format!("passage {at} of {} is {:?}, not {:?}", describe(file), mine[at].text, chunks[at]),
            );
        }
        let stored = planned.stored_text();
        let lines = stored.split('\n').count() as u64;
        if file.lines_count != lines {
            return violation(
                "CompletedFilesAreWhole",
                format!("{} counts {} lines, not {lines}", describe(file), file.lines_count),
            );
        }
        let read = self
            .read("CompletedFilesAreWhole", || {
                let (service, folder, id) = (Arc::clone(&live.service), folder.to_string(), file.id.clone());
                async move {
                    let file =
                        service.folders.get_file(&folder, &id, true).await.map_err(|e| e.to_string())?;
                    Ok(file["content"].as_str().map(str::to_string))
                }
            })
            .await?;
        let Read::Done(content) = read else { return Ok(false) };
        if content.as_deref() != Some(stored.as_str()) {
            let differs = content
                .as_deref()
                .map(|content| content.chars().zip(stored.chars()).take_while(|(a, b)| a == b).count());
            return violation(
                "CompletedFilesAreWhole",
                format!(
                    "the content of {} ({:?} chars) differs from its upload ({} chars) at char {differs:?}",
                    describe(file),
                    content.as_ref().map(|content| content.chars().count()),
                    stored.chars().count()
                ),
            );
        }
        Ok(true)
    }

    /// NamesResolve: every listed file is the file of its name.
    async fn check_names(&self, live: &Live, folder: &str, files: &[FileRecord]) -> Result<bool, Violation> {
        for file in files {
            let read = self
                .read("NamesResolve", || {
                    let command = FolderCommand::FileByName { name: file.file_name.clone() };
                    let command = folder_command(live.folders.clone(), folder.to_string(), command);
                    async move {
                        match command.await? {
                            FolderReply::File(found) => Ok(Some(found.id)),
                            FolderReply::NoFile => Ok(None),
                            other => Err(format!("a file by name answered {other:?}")),
                        }
                    }
                })
                .await?;
            let Read::Done(found) = read else { return Ok(false) };
            if found.as_deref() != Some(file.id.as_str()) {
                return violation(
                    "NamesResolve",
                    format!("the name {:?} of {} finds {found:?}", file.file_name, describe(file)),
                );
            }
        }
        Ok(true)
    }

    /// CompletedFilesAreFound: a search for a marker answers first a
    /// passage holding it, of a completed file uploaded with it.
    async fn check_markers(&mut self, files: &[FileRecord]) -> Result<(), Violation> {
        let live = self.live().await?;
        let Some(folder) = self.ledger.folder.clone() else { return Ok(()) };
        for planned in &self.plan {
            let Some(marker) = &planned.marker else { continue };
            let holders: Vec<&FileRecord> = files
                .iter()
                .filter(|file| {
                    file.original_file_name == planned.name && file.status == FileStatus::Completed
                })
                .collect();
            if holders.is_empty() {
                continue;
            }
            let read = self
                .read("CompletedFilesAreFound", || {
                    search(live.folders.clone(), folder.clone(), marker.clone())
                })
                .await?;
            let Read::Done(hits) = read else {
                return violation("CompletedFilesAreFound", "the node went down in the quiet phase".into());
            };
            check_hits(&hits, files)?;
            let first = hits.first().map(|(passage, _)| passage);
            let found = first.is_some_and(|passage| {
                passage.text.contains(marker.as_str())
                    && holders.iter().any(|file| file.id == passage.file_id)
            });
            if !found {
                return violation(
                    "CompletedFilesAreFound",
                    format!(
                        "a search for {marker:?} of {} answered first {:?}",
                        planned.name,
                        first.map(|p| (&p.file_id, &p.text))
                    ),
                );
            }
            self.seen.markers_found += 1;
        }
        Ok(())
    }

    /// The faulty part: every planned file uploaded, with operations between.
    async fn faulty_phase(&mut self, phase: &Phase) -> Result<(), Violation> {
        for index in 0..self.plan.len() {
            self.upload(index).await?;
            for _ in 0..self.rng.index_below(OPERATIONS_COUNT_MAX + 1) {
                self.operation().await?;
            }
        }
        phase.uploads_over.store(true, Ordering::SeqCst);
        if self.stubborn {
            // Processing crashes go on: the victim's attempts run out.
            let from = self.handle.now();
            while (self.handle.now() - from).as_millis() < u128::from(STUBBORN_WAIT_MS_MAX) {
                let files = self.look(false).await?.unwrap_or_default();
                if !files.is_empty() && files.iter().all(|file| file.status.is_final()) {
                    break;
                }
                self.handle.sleep(ms(STUBBORN_POLL_MS)).await;
            }
        }
        Ok(())
    }

    /// The quiet end, from `quiet_from`: every file final in time and
    /// checked whole, the markers found, the work drained, nothing left.
    async fn quiet_phase(&mut self, quiet_from: Duration) -> Result<(), Violation> {
        loop {
            let files = self.look(false).await?.unwrap_or_default();
            let waited_ms = (self.handle.now() - quiet_from).as_millis() as u64;
            let open: Vec<String> =
                files.iter().filter(|file| !file.status.is_final()).map(describe).collect();
            if !files.is_empty() && open.is_empty() {
                self.seen.final_wait_ms_max = waited_ms;
                break;
            }
            if waited_ms > FINAL_WAIT_MS_MAX {
                return violation(
                    "FileReachesAFinalStatus",
                    format!("{waited_ms} ms after the faults stopped, these are not final: {open:?}"),
                );
            }
            self.handle.sleep(ms(QUIET_POLL_MS)).await;
        }
        let Some(files) = self.look(true).await? else {
            return violation("FileReachesAFinalStatus", "the node went down in the quiet phase".into());
        };
        self.check_markers(&files).await?;
        self.drain(quiet_from).await?;
        let Some(files) = self.look(true).await? else {
            return violation("WorkDrains", "the node went down in the quiet phase".into());
        };
        let live = self.live().await?;
        let folder = self.ledger.folder.clone().unwrap_or_default();
        let read = self.read("WorkDrains", || stored_keys(live.storage.clone(), folder.clone())).await?;
        let Read::Done(keys) = read else {
            return violation("WorkDrains", "the node went down in the quiet phase".into());
        };
        let stray = stray_keys(&keys, &files);
        if !stray.is_empty() {
            return violation(
                "WorkDrains",
                format!(
                    "the drained folder holds {stray:?}; its files: {:?}",
                    files.iter().map(describe).collect::<Vec<_>>()
                ),
            );
        }
        self.seen.files_unacknowledged = files.len() - self.ledger.acked.len();
        self.seen.completed = files.iter().filter(|file| file.status == FileStatus::Completed).count();
        self.seen.gave_up = files.iter().filter(|file| gave_up(file)).count();
        self.seen.bad_errors =
            files.iter().filter(|file| !gave_up(file) && file.status == FileStatus::Error).count();
        Ok(())
    }

    /// WorkDrains: the folder has nothing left to do within the bound.
    async fn drain(&mut self, quiet_from: Duration) -> Result<(), Violation> {
        loop {
            let live = self.live().await?;
            let folder = self.ledger.folder.clone().unwrap_or_default();
            let read = self
                .read("WorkDrains", || {
                    let (service, folder) = (Arc::clone(&live.service), folder.clone());
                    async move { service.folders.has_work(&folder).await.map_err(|e| e.to_string()) }
                })
                .await?;
            if let Read::Done(false) = read {
                return Ok(());
            }
            let waited_ms = (self.handle.now() - quiet_from).as_millis() as u64;
            if waited_ms > WORK_DRAIN_MS_MAX {
                return violation(
                    "WorkDrains",
                    format!("{waited_ms} ms after the faults stopped, work is left"),
                );
            }
            self.handle.sleep(ms(DOCUMENTS_IDLE_POLL_MS)).await;
        }
    }
}

/// One upload of `bytes` as `name` into `folder`, fed in `pieces` pieces,
/// going `way`.
async fn send_upload(
    service: Arc<AgentService>,
    folder: String,
    name: String,
    bytes: Vec<u8>,
    pieces: usize,
    way: Way,
) -> Result<Uploaded, ServiceError> {
    let start =
        service.folders.begin_upload(&folder, (&name, Some("text/plain")), DuplicateHandling::Suffix).await?;
    let UploadStart::Upload(mut upload) = start else { return Ok(Uploaded::Skipped) };
    let piece_bytes = bytes.len().div_ceil(pieces).max(1);
    for (n, piece) in bytes.chunks(piece_bytes).enumerate() {
        if way == Way::CutOff && n * 2 >= pieces {
            return Ok(Uploaded::CutOff);
        }
        upload.feed(piece).await?;
    }
    match way {
        Way::Cancelled => {
            upload.cancel().await;
            Ok(Uploaded::Cancelled)
        }
        Way::CutOff => Ok(Uploaded::CutOff),
        Way::Whole => Ok(Uploaded::Acked(upload.finish().await?)),
    }
}

fn run_seed(seed: u64, bug: Option<PlantedBug>) -> Result<Seen, Violation> {
    let mut builder = Simulation::builder().seed(seed).nodes(1).restart_crashed_nodes_after(ms(RESTART_MS));
    for rule in [
        FaultRule::new(Fault::StorageWriteFail, 0.004),
        FaultRule::new(Fault::StorageReadFail, 0.01),
        FaultRule::new(Fault::CrashAfterWrite, 0.01),
    ] {
        builder = builder.fault(rule);
    }
    let mut sim = builder.build().expect("a valid simulation");
    let slot: Slot = Arc::default();
    let boots = Arc::new(AtomicU64::new(0));
    let phase = Arc::new(Phase::default());
    let stubborn = DeterministicRng::new(seed).fork("stubborn").index_below(STUBBORN_SEED_ONE_IN) == 0;
    let crashes = Arc::new(ProcessingCrashes {
        handle: sim.handle(),
        phase: Arc::clone(&phase),
        rng: DeterministicRng::new(seed).fork("processing crashes"),
        stubborn,
        victim: Mutex::new(None),
        fired: AtomicU64::new(0),
    });
    {
        let (handle, slot, boots) = (sim.handle(), Arc::clone(&slot), Arc::clone(&boots));
        let crashes = Arc::clone(&crashes);
        sim.on_boot(0, move |node| {
            let (handle, slot, boots) = (handle.clone(), Arc::clone(&slot), Arc::clone(&boots));
            let crashes = Arc::clone(&crashes);
            async move {
                // This boot's number; a later boot's makes this one's disk refuse.
                let process = Process::start();
                let boot = boots.fetch_add(1, Ordering::SeqCst) + 1;
                let fatal_handle = handle.clone();
                let fatal = Box::new(move || fatal_handle.crash_node(0));
                let Ok(inner) = SimDiskBackend::open(node.storage().clone(), fatal).await else {
                    // The disk could not be read back: nothing starts; the node restarts.
                    handle.crash_node(0);
                    return;
                };
                let disk =
                    BootDisk { inner, alive: Arc::clone(&process.alive), crashes: Arc::clone(&crashes) };
                let storage = Storage::from_backend(Arc::new(disk));
                let Ok((service, folders)) = build_service(&node, &storage, bug) else {
                    handle.crash_node(0);
                    return;
                };
                let service = Arc::new(service);
                // As `kelpie serve` starts (`AgentNode::listen`); a failed
                // migration ends the process.
                if service.migrate_legacy_directory().await.is_err() {
                    handle.crash_node(0);
                    return;
                }
                service.reclaimer.start();
                service.documents.start();
                let _ = service.runs.recover().await;
                let alive = Arc::clone(&process.alive);
                *slot.lock().unwrap() =
                    Some(Boot { live: Live { service, folders, storage }, number: boot, alive });
                // The process runs until the node crashes.
                futures::future::pending::<()>().await;
                drop(process);
            }
        });
    }
    let chaos_crashes = Arc::new(AtomicU64::new(0));
    {
        let (handle, phase, crashes) = (sim.handle(), Arc::clone(&phase), Arc::clone(&chaos_crashes));
        let (node, rng) = (sim.node(0).clone(), DeterministicRng::new(seed).fork("chaos"));
        sim.spawn_control("chaos", async move {
            loop {
                handle.sleep(ms(rng.between_inclusive(1, CRASH_GAP_MS_MAX))).await;
                if phase.uploads_over.load(Ordering::SeqCst) {
                    return;
                }
                if node.is_up() {
                    handle.crash_node(0);
                    crashes.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let outcome: Arc<Mutex<Option<Result<Seen, Violation>>>> = Arc::default();
    let mut client = Client {
        node: sim.node(0).clone(),
        handle: sim.handle(),
        slot: Arc::clone(&slot),
        rng: DeterministicRng::new(seed).fork("client"),
        plan: plan(seed),
        stubborn,
        ledger: Ledger::default(),
        seen: Seen::default(),
    };
    {
        let (phase, result) = (Arc::clone(&phase), Arc::clone(&outcome));
        sim.spawn_control("client", async move {
            let ran = async {
                client.faulty_phase(&phase).await?;
                phase.faults_over.store(true, Ordering::SeqCst);
                while !phase.quiet.load(Ordering::SeqCst) {
                    client.handle.sleep(ms(POLL_MS)).await;
                }
                let quiet_from = client.handle.now();
                client.quiet_phase(quiet_from).await
            }
            .await;
            // The last boot stops cleanly.
            let last = client.slot.lock().unwrap().as_ref().map(|boot| Arc::clone(&boot.live.service));
            if let Some(service) = last {
                client.on_node(async move { service.shutdown().await }).await;
            }
            *result.lock().unwrap() = Some(ran.map(|()| client.seen.clone()));
        });
    }
    loop {
        if let Err(failure) = sim.run_for(ms(SLICE_MS)) {
            return violation("Simulation", format!("{failure}"));
        }
        if let Some(result) = outcome.lock().unwrap().take() {
            return result.map(|mut seen| {
                seen.boots = boots.load(Ordering::SeqCst);
                seen.chaos_crashes = chaos_crashes.load(Ordering::SeqCst);
                seen.processing_crashes = crashes.fired.load(Ordering::SeqCst);
                seen.stubborn_seeds = usize::from(stubborn);
                seen.crashes_after_write = sim.fault_count(FaultKind::CrashAfterWrite);
                seen.write_faults = sim.fault_count(FaultKind::StorageWriteFail);
                seen
            });
        }
        if phase.faults_over.load(Ordering::SeqCst) && !phase.quiet.load(Ordering::SeqCst) {
            for kind in FAULT_KINDS {
                sim.clear_faults(kind);
            }
            phase.quiet.store(true, Ordering::SeqCst);
        }
        if sim.now() > ms(SIM_LIMIT_MS) {
            return violation("Simulation", format!("the client did not finish in {SIM_LIMIT_MS} ms"));
        }
    }
}

#[test]
fn uploaded_files_end_whole_or_in_error_through_faults_and_crashes() {
    let mut totals = Seen::default();
    for seed in seeds_to_run(0..SEEDS_COUNT).unwrap() {
        match run_seed(seed, None) {
            Ok(seen) => totals.add(&seen),
            Err(broken) => panic!(
                "seed {seed}: {} violated: {}\nreplay: {}",
                broken.invariant,
                broken.detail,
                replay_command(seed)
            ),
        }
    }
    println!("over the sweep: {totals:?}");
    if std::env::var(kelpie_dst::DST_SEED_ENV).is_err() {
        let seeds = SEEDS_COUNT as usize;
        assert!(totals.boots > 3 * SEEDS_COUNT, "restarts were exercised: {totals:?}");
        assert!(totals.write_faults > SEEDS_COUNT / 2, "writes failed: {totals:?}");
        assert!(totals.uploads_acked >= 4 * seeds, "every planned file was uploaded: {totals:?}");
        assert!(totals.completed >= 3 * seeds && totals.bad_errors >= seeds, "{totals:?}");
        assert!(totals.uploads_cut > seeds / 4 && totals.uploads_failed > seeds / 4, "{totals:?}");
        assert!(totals.uploads_cancelled > seeds / 10, "{totals:?}");
        assert!(
            totals.searches_while_processing > seeds / 2 && totals.hits_checked > 10 * seeds,
            "{totals:?}"
        );
        assert!(totals.markers_found > seeds, "{totals:?}");
    }
}

/// The first seed of the sweep whose run breaks an invariant with `bug`
/// planted, and the invariant it broke.
fn first_catch(bug: PlantedBug) -> (u64, Violation) {
    for seed in 0..SEEDS_COUNT {
        if let Err(broken) = run_seed(seed, Some(bug)) {
            return (seed, broken);
        }
    }
    panic!("{bug:?} was not caught in {SEEDS_COUNT} seeds");
}

#[test]
fn a_search_that_skips_the_file_status_is_caught_as_half_indexed() {
    let (seed, broken) = first_catch(PlantedBug::SearchSkipsFileStatus);
    println!("caught at seed {seed}: {}: {}", broken.invariant, broken.detail);
    assert_eq!(broken.invariant, "NoHalfIndexedSearch", "seed {seed}: {}", broken.detail);
}
