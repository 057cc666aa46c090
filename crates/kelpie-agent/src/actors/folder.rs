//! The folder actor: one per folder (`folder/<folder id>`), holding its
//! files: each file's record, its upload as received, its text as parsed
//! and its passages with their embeddings. The folder's own record (name,
//! description, embedding) lives in the folder store; this actor holds what
//! grows without bound, as ordered keys read by range with a limit.
//!
//! | key | value |
//! |---|---|
//! | `f/<seq>` | a file's record ([`FileRecord`]) |
//! | `fi/<file id>` | the file's seq |
//! | `fn/<file name>` | the seq of the file of that name |
//! | `u/<seq>/<chunk>` | the upload, `UPLOAD_CHUNK_BYTES` per key |
//! | `t/<seq>.<attempt>/<page>` | the parsed text, a page of whole lines per key ([`TextPage`]) |
//! | `p/<seq>.<attempt>/<chunk>` | a passage ([`FilePassage`]) |
//! | `q/<seq>.<attempt>/<chunk>` | the passage's search code |
//! | `w/<seq>` | nothing: the file is not processed to its end yet |
//! | `r/<n>` | a key prefix to delete (the `n`-th queued) |
//!
//! `<seq>` and `<chunk>` are 16 hex digits, `<attempt>` 2. Each processing
//! attempt of a file writes under its own prefix, so a crashed attempt's
//! output is never read as the next one's: it is reclaimed in bounded
//! batches, as are deleted files and, once the folder is deleted, every
//! key. A file's passages are searched only once it is `completed` with the
//! attempt that wrote them.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use kelpie_core::{ActorId, Error, Result};
use kelpie_memory::{cosine, Code, PassageIndex};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_storage::{KeyRange, ScanOrder};
use serde::{Deserialize, Serialize};

use crate::actors::agent::store::{decode, encode};
use crate::limits::{RECLAIM_BATCH_KEYS_COUNT, STORE_PAGE_COUNT_MAX};
use crate::planted::{Planted, PlantedBug};

/// Namespace of the folder actors (`folder/<folder id>`).
pub const FOLDER_NAMESPACE: &str = "folder";
/// Most files one folder holds.
pub const FOLDER_FILES_COUNT_MAX: u64 = 50_000;
/// Largest file accepted, in bytes.
pub const FILE_BYTES_MAX: u64 = 128 * 1024 * 1024;
/// Bytes of an upload stored per key (and per commit while receiving).
pub const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;
/// Most characters of one stored page of a file's text (whole lines; a
/// longer line is split across pages).
pub const TEXT_PAGE_CHARS_MAX: usize = 16 * 1024;
/// Most processing attempts of one file (a file whose processing keeps
/// crashing the server ends in `error`).
pub const FILE_ATTEMPTS_COUNT_MAX: u8 = 5;
/// How long a worker's claim on a file lasts without progress, in
/// milliseconds; a worker that stops (crash, lost node) loses the file to
/// the next one after this.
pub const PROCESSING_LEASE_MS: u64 = 10_000;
/// How long an upload may go without a chunk arriving before the file is
/// taken as abandoned (its client gone, or the server that received it
/// crashed), in milliseconds.
pub const UPLOAD_IDLE_MS: u64 = 60_000;
/// Longest file name, in bytes.
pub const FILE_NAME_BYTES_MAX: usize = 255;
/// Most grep matches one file search collects.
pub const GREP_MATCHES_COUNT_MAX: usize = 1_000;
/// Most characters of file text one grep reads (across its files).
pub const GREP_TEXT_CHARS_MAX: u64 = 200 * 1024 * 1024;
/// Candidates a semantic search ranks by their codes, per result.
const SEARCH_RERANK_FACTOR: usize = 4;
/// Unfinished files one claim reads per page while looking for one to take.
const CLAIM_SCAN_COUNT: usize = 64;
/// Bits of a passage's index key given to its chunk number.
const CHUNK_BITS: u32 = 24;

/// Letta's `FileProcessingStatus`, and `receiving` while the upload is
/// still arriving (never shown: such a file is not listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Receiving,
    Pending,
    Parsing,
    Embedding,
    Completed,
    Error,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Receiving => "receiving",
            FileStatus::Pending => "pending",
            FileStatus::Parsing => "parsing",
            FileStatus::Embedding => "embedding",
            FileStatus::Completed => "completed",
            FileStatus::Error => "error",
        }
    }

    /// Processing is over (or never begins).
    pub fn is_final(self) -> bool {
        matches!(self, FileStatus::Completed | FileStatus::Error)
    }
}

/// What a duplicate file name does (Letta's `DuplicateFileHandling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateHandling {
    Skip,
    Error,
    Suffix,
    Replace,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub seq: u64,
    pub folder_id: String,
    /// The name in the folder (after duplicate handling).
    pub file_name: String,
    pub original_file_name: String,
    /// The MIME type the file was parsed as.
    pub file_type: String,
    pub size_bytes: u64,
    pub status: FileStatus,
    pub error_message: Option<String>,
    pub total_chunks: Option<u64>,
    pub chunks_embedded: Option<u64>,
    /// Lines of its parsed text (once parsed).
    pub lines_count: u64,
    /// Characters of its parsed text (once parsed).
    pub text_chars: u64,
    /// Pages of its parsed text as stored.
    pub pages_count: u64,
    /// Processing attempts begun (the current one's keys carry it).
    pub attempt: u8,
    /// The worker holding the file and until when (wall ms).
    pub lease: Option<(String, u64)>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// A page of a file's parsed text: whole lines from `first_line` (1-based).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextPage {
    pub first_line: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilePassage {
    pub id: String,
    pub file_id: String,
    pub file_name: String,
    pub text: String,
    pub embedding: Vec<f32>,
    pub created_ms: u64,
}

/// One grep hit: the file, the matching line and its neighbours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrepMatch {
    pub file_name: String,
    pub line: u64,
    /// `(line number, text)` from `line - context` to `line + context`.
    pub context: Vec<(u64, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FolderState {
    /// Next file seq.
    pub next_seq: u64,
    /// Files listed (not receiving, not deleted).
    pub files_count: u64,
    /// Bytes of the listed files.
    pub files_bytes: u64,
    /// Files received and not processed to the end (each a `w/<seq>` key).
    pub unfinished_count: u64,
    /// Key prefixes still to delete (each an `r/<n>` key), and the next `n`.
    pub reclaim_count: u64,
    pub next_reclaim: u64,
    /// The folder is deleted: everything it holds is to reclaim.
    pub deleted: bool,
    /// Changes with every write of codes (see `actors::agent::archive`):
    /// a cached index built for another token is rebuilt.
    pub passage_token: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FolderCommand {
    /// Takes a new file (its record as the service made it; the seq and the
    /// name are given here) in `receiving`.
    BeginFile {
        record: Box<FileRecord>,
        duplicate: DuplicateHandling,
    },
    /// Stores chunk `chunk` of a receiving file's upload.
    WriteUpload {
        seq: u64,
        chunk: u64,
        bytes: Vec<u8>,
        now_ms: u64,
    },
    /// The upload is complete: the file is listed, `pending`.
    EndUpload {
        seq: u64,
        size_bytes: u64,
        now_ms: u64,
    },
    /// Drops a file whose upload failed.
    AbortFile {
        seq: u64,
    },
    ReadUpload {
        seq: u64,
        chunk: u64,
    },
    /// Claims the next unfinished file for `worker` until `now_ms +
    /// PROCESSING_LEASE_MS`, starting a new attempt; `None` when every one
    /// is finished or held.
    ClaimNext {
        worker: String,
        now_ms: u64,
    },
    /// Stores a page of text of `attempt`; refused when the attempt is not
    /// current (the claim was lost). Renews the lease.
    WriteText {
        seq: u64,
        attempt: u8,
        page: u64,
        text: TextPage,
        now_ms: u64,
    },
    /// Stores passages `first_chunk..` of `attempt`. Renews the lease.
    WritePassages {
        seq: u64,
        attempt: u8,
        first_chunk: u64,
        passages: Vec<FilePassage>,
        now_ms: u64,
    },
    /// Sets the status and counts of `attempt`; a final status releases the
    /// file.
    SetProgress {
        seq: u64,
        attempt: u8,
        progress: Progress,
        now_ms: u64,
    },
    /// Page `page` of the text `attempt` stored.
    ReadPage {
        seq: u64,
        attempt: u8,
        page: u64,
    },
    ListFiles {
        after: Option<String>,
        before: Option<String>,
        limit: usize,
        descending: bool,
    },
    GetFile {
        id: String,
    },
    FileByName {
        name: String,
    },
    /// Lines `first_line..=last_line` (1-based) of a completed file's text,
    /// at most `chars_max` characters of them.
    ReadLines {
        id: String,
        first_line: u64,
        last_line: u64,
        chars_max: usize,
    },
    /// Lines of the completed files whose names `include` accepts that
    /// `pattern` (a regex, case-insensitive) matches.
    Grep {
        pattern: String,
        include: Option<String>,
        context_lines: u64,
        matches_max: usize,
    },
    /// The `top_k` passages of completed files nearest `query`.
    Search {
        query: Vec<f32>,
        top_k: usize,
    },
    /// Passages of completed files, paged by passage id.
    ListPassages {
        after: Option<String>,
        before: Option<String>,
        limit: usize,
        descending: bool,
    },
    DeleteFile {
        id: String,
    },
    /// Deletes the folder: nothing is listed any more, everything reclaimed.
    DeleteAll,
    /// Deletes up to `keys_max` keys of what is to reclaim.
    Reclaim {
        keys_max: usize,
    },
    /// Totals: files listed and their bytes.
    Stats,
    /// Whether work is left: unfinished files or keys to reclaim.
    HasWork,
}

/// Where a file's processing is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub status: FileStatus,
    pub error_message: Option<String>,
    pub total_chunks: Option<u64>,
    pub chunks_embedded: Option<u64>,
    pub lines_count: u64,
    pub text_chars: u64,
    pub pages_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FolderReply {
    File(Box<FileRecord>),
    /// A file of that name existed and `skip` was asked: that file.
    Skipped(Box<FileRecord>),
    /// The replaced file, if any, and the new one.
    Began {
        record: Box<FileRecord>,
        replaced: Option<Box<FileRecord>>,
    },
    Files(Vec<FileRecord>),
    NoFile,
    Bytes(Option<Vec<u8>>),
    Lines(Vec<(u64, String)>),
    Page(Option<TextPage>),
    Matches {
        matches: Vec<GrepMatch>,
        files_searched: u64,
        more: bool,
    },
    Passages(Vec<(FilePassage, f32)>),
    Reclaimed {
        done: bool,
    },
    Stats {
        files_count: u64,
        files_bytes: u64,
    },
    Work(bool),
    Done,
}

/// A cached index of one folder's codes and the token it was built for.
struct CachedIndex {
    token: u64,
    index: PassageIndex,
}

/// The folder actor, with the search indexes of the folders active here.
pub struct FolderActor {
    indexes: Mutex<BTreeMap<ActorId, CachedIndex>>,
    /// The defect a test planted, if any (see [`crate::planted`]).
    planted: Planted,
}

type Ctx<'a> = ActorContext<'a, FolderState>;

fn file_key(seq: u64) -> Vec<u8> {
    format!("f/{seq:016x}").into_bytes()
}

fn id_key(id: &str) -> Vec<u8> {
    format!("fi/{id}").into_bytes()
}

fn name_key(name: &str) -> Vec<u8> {
    format!("fn/{name}").into_bytes()
}

fn upload_key(seq: u64, chunk: u64) -> Vec<u8> {
    format!("u/{seq:016x}/{chunk:016x}").into_bytes()
}

fn attempt_prefix(kind: char, seq: u64, attempt: u8) -> String {
    format!("{kind}/{seq:016x}.{attempt:02x}/")
}

fn page_key(seq: u64, attempt: u8, page: u64) -> Vec<u8> {
    format!("{}{page:016x}", attempt_prefix('t', seq, attempt)).into_bytes()
}

fn passage_key(seq: u64, attempt: u8, chunk: u64) -> Vec<u8> {
    format!("{}{chunk:016x}", attempt_prefix('p', seq, attempt)).into_bytes()
}

fn code_key(seq: u64, attempt: u8, chunk: u64) -> Vec<u8> {
    format!("{}{chunk:016x}", attempt_prefix('q', seq, attempt)).into_bytes()
}

/// The index key of a passage: its file's seq, attempt and chunk in one u64.
fn index_key(seq: u64, attempt: u8, chunk: u64) -> u64 {
    assert!(seq < 1 << 32 && chunk < 1 << CHUNK_BITS, "seq {seq} and chunk {chunk} fit the index key");
    (seq << 32) | (u64::from(attempt) << CHUNK_BITS) | chunk
}

fn index_parts(key: u64) -> (u64, u8, u64) {
    (key >> 32, ((key >> CHUNK_BITS) & 0xff) as u8, key & ((1 << CHUNK_BITS) - 1))
}

/// `(seq, attempt, chunk)` of a `q/<seq>.<attempt>/<chunk>` key.
fn parse_code_key(key: &[u8]) -> Result<(u64, u8, u64)> {
    let corrupt = || Error::Corruption { location: "folder code key".into(), reason: "malformed".into() };
    let text = std::str::from_utf8(key).map_err(|_| corrupt())?;
    let rest = text.strip_prefix("q/").ok_or_else(corrupt)?;
    let (seq, rest) = rest.split_once('.').ok_or_else(corrupt)?;
    let (attempt, chunk) = rest.split_once('/').ok_or_else(corrupt)?;
    let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| corrupt());
    Ok((hex(seq)?, hex(attempt)? as u8, hex(chunk)?))
}

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "file", id: id.to_string() }
}

fn seq_of(bytes: &[u8]) -> Result<u64> {
    decode(bytes, "folder file seq")
}

async fn record_at(ctx: &mut Ctx<'_>, seq: u64) -> Result<Option<FileRecord>> {
    match ctx.kv_get(&file_key(seq)).await? {
        Some(bytes) => Ok(Some(decode(&bytes, "folder file")?)),
        None => Ok(None),
    }
}

/// The listed file `id` (not one still receiving).
async fn record_by_id(ctx: &mut Ctx<'_>, id: &str) -> Result<FileRecord> {
    let Some(bytes) = ctx.kv_get(&id_key(id)).await? else { return Err(not_found(id)) };
    let seq = seq_of(&bytes)?;
    match record_at(ctx, seq).await? {
        Some(record) if record.status != FileStatus::Receiving => Ok(record),
        _ => Err(not_found(id)),
    }
}

fn put_record(ctx: &mut Ctx<'_>, record: &FileRecord) -> Result<()> {
    ctx.kv_put(&file_key(record.seq), encode(record)?)
}

/// A file whose seq is `seq` and whose current attempt is `attempt`; a lost
/// claim (another attempt began, or the file is gone) is refused.
async fn current(ctx: &mut Ctx<'_>, seq: u64, attempt: u8) -> Result<FileRecord> {
    match record_at(ctx, seq).await? {
        Some(record) if record.attempt == attempt && !record.status.is_final() => Ok(record),
        _ => Err(Error::validation(
            "file",
            format!("processing attempt {attempt} of file {seq} is no longer current"),
        )),
    }
}

fn renew(record: &mut FileRecord, now_ms: u64) {
    if let Some((_, until)) = record.lease.as_mut() {
        *until = now_ms + PROCESSING_LEASE_MS;
    }
    record.updated_ms = now_ms;
}

/// `name` with ` _(n)` before its extension.
fn suffixed(name: &str, n: u64) -> String {
    match name.rsplit_once('.') {
        Some((base, ext)) if !base.is_empty() => format!("{base}_({n}).{ext}"),
        _ => format!("{name}_({n})"),
    }
}

fn unfinished_key(seq: u64) -> Vec<u8> {
    format!("w/{seq:016x}").into_bytes()
}

fn mark_unfinished(ctx: &mut Ctx<'_>, seq: u64) -> Result<()> {
    ctx.kv_put(&unfinished_key(seq), Vec::new())?;
    ctx.state.unfinished_count += 1;
    Ok(())
}

async fn unmark_unfinished(ctx: &mut Ctx<'_>, seq: u64) -> Result<()> {
    if ctx.kv_get(&unfinished_key(seq)).await?.is_some() {
        ctx.kv_delete(&unfinished_key(seq))?;
        ctx.state.unfinished_count -= 1;
    }
    Ok(())
}

/// Queues the keys under `prefix` for deletion.
fn queue_reclaim(ctx: &mut Ctx<'_>, prefix: String) -> Result<()> {
    let key = format!("r/{:016x}", ctx.state.next_reclaim).into_bytes();
    ctx.kv_put(&key, prefix.into_bytes())?;
    ctx.state.next_reclaim += 1;
    ctx.state.reclaim_count += 1;
    Ok(())
}

/// Unlists a file and queues everything it holds for reclaiming.
async fn remove_file(ctx: &mut Ctx<'_>, record: &FileRecord) -> Result<()> {
    ctx.kv_delete(&file_key(record.seq))?;
    ctx.kv_delete(&id_key(&record.id))?;
    // The name passes to a file begun while this one was still receiving
    // (an upload tried again after a crash): it is that file's then.
    if let Some(bytes) = ctx.kv_get(&name_key(&record.file_name)).await? {
        if seq_of(&bytes)? == record.seq {
            ctx.kv_delete(&name_key(&record.file_name))?;
        }
    }
    unmark_unfinished(ctx, record.seq).await?;
    if record.status != FileStatus::Receiving {
        ctx.state.files_count -= 1;
        ctx.state.files_bytes = ctx.state.files_bytes.saturating_sub(record.size_bytes);
    }
    queue_reclaim(ctx, format!("u/{:016x}/", record.seq))?;
    for attempt in 1..=record.attempt {
        for kind in ['t', 'p', 'q'] {
            queue_reclaim(ctx, attempt_prefix(kind, record.seq, attempt))?;
        }
    }
    ctx.state.passage_token = ctx.env.rng.next_u64();
    Ok(())
}

async fn begin_file(
    ctx: &mut Ctx<'_>,
    mut record: FileRecord,
    duplicate: DuplicateHandling,
) -> Result<FolderReply> {
    if ctx.state.deleted {
        return Err(Error::NotFound { kind: "folder", id: record.folder_id.clone() });
    }
    if record.original_file_name.is_empty() || record.original_file_name.len() > FILE_NAME_BYTES_MAX {
        return Err(Error::validation("file_name", format!("must be 1..={FILE_NAME_BYTES_MAX} bytes")));
    }
    if ctx.state.files_count >= FOLDER_FILES_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "files in the folder".into(),
            actual: ctx.state.files_count + 1,
            limit_name: "FOLDER_FILES_COUNT_MAX",
            limit: FOLDER_FILES_COUNT_MAX,
        });
    }
    let wanted = record.original_file_name.clone();
    let mut replaced = None;
    let mut name = wanted.clone();
    if let Some(bytes) = ctx.kv_get(&name_key(&wanted)).await? {
        let existing = record_at(ctx, seq_of(&bytes)?).await?;
        if let Some(existing) = existing.filter(|r| r.status != FileStatus::Receiving) {
            match duplicate {
                DuplicateHandling::Skip => return Ok(FolderReply::Skipped(Box::new(existing))),
                DuplicateHandling::Error => {
                    return Err(Error::validation(
                        "file",
                        format!("file {wanted:?} already exists in folder {}", record.folder_id),
                    ))
                }
                DuplicateHandling::Replace => {
                    remove_file(ctx, &existing).await?;
                    replaced = Some(Box::new(existing));
                }
                DuplicateHandling::Suffix => {
                    let mut n = 1;
                    loop {
                        name = suffixed(&wanted, n);
                        if ctx.kv_get(&name_key(&name)).await?.is_none() {
                            break;
                        }
                        n += 1;
                    }
                }
            }
        }
    }
    record.seq = ctx.state.next_seq;
    ctx.state.next_seq += 1;
    record.file_name = name;
    record.status = FileStatus::Receiving;
    put_record(ctx, &record)?;
    ctx.kv_put(&id_key(&record.id), encode(&record.seq)?)?;
    ctx.kv_put(&name_key(&record.file_name), encode(&record.seq)?)?;
    // A receiving file is unfinished: a crash before its end reclaims it.
    mark_unfinished(ctx, record.seq)?;
    Ok(FolderReply::Began { record: Box::new(record), replaced })
}

async fn claim_next(ctx: &mut Ctx<'_>, worker: String, now_ms: u64) -> Result<FolderReply> {
    let mut range = KeyRange::prefix("w/".to_string());
    loop {
        let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, CLAIM_SCAN_COUNT).await?;
        for (key, _) in &rows {
            let seq = crate::actors::agent::store::seq_of_key(key)?;
            if let Some(record) = claim(ctx, seq, &worker, now_ms).await? {
                return Ok(FolderReply::File(Box::new(record)));
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == CLAIM_SCAN_COUNT => range.start = Bound::Excluded(key.clone()),
            _ => return Ok(FolderReply::NoFile),
        }
    }
}

/// Claims unfinished file `seq` for `worker` when no live claim holds it
/// (a new attempt); drops an abandoned upload and gives up a file
/// interrupted too often.
async fn claim(ctx: &mut Ctx<'_>, seq: u64, worker: &str, now_ms: u64) -> Result<Option<FileRecord>> {
    let Some(mut record) = record_at(ctx, seq).await? else {
        unmark_unfinished(ctx, seq).await?;
        return Ok(None);
    };
    if record.status == FileStatus::Receiving {
        // Its upload has not ended: dropped once no chunk has arrived
        // for UPLOAD_IDLE_MS (a live upload writes a chunk far sooner).
        if record.updated_ms + UPLOAD_IDLE_MS < now_ms {
            remove_file(ctx, &record).await?;
        }
        return Ok(None);
    }
    if record.lease.as_ref().is_some_and(|(_, until)| *until > now_ms) {
        return Ok(None);
    }
    if record.attempt >= FILE_ATTEMPTS_COUNT_MAX {
        record.status = FileStatus::Error;
        record.error_message =
            Some(format!("processing was interrupted {FILE_ATTEMPTS_COUNT_MAX} times; giving up"));
        record.lease = None;
        record.updated_ms = now_ms;
        put_record(ctx, &record)?;
        unmark_unfinished(ctx, seq).await?;
        // Final, as after the worker's last write: neither the upload nor
        // the last interrupted attempt's output is read again.
        queue_reclaim(ctx, format!("u/{seq:016x}/"))?;
        for kind in ['t', 'p', 'q'] {
            queue_reclaim(ctx, attempt_prefix(kind, seq, record.attempt))?;
        }
        ctx.state.passage_token = ctx.env.rng.next_u64();
        return Ok(None);
    }
    // The previous attempt's output, if any, is never read again.
    if record.attempt > 0 {
        for kind in ['t', 'p', 'q'] {
            queue_reclaim(ctx, attempt_prefix(kind, seq, record.attempt))?;
        }
        ctx.state.passage_token = ctx.env.rng.next_u64();
    }
    record.attempt += 1;
    record.status = FileStatus::Parsing;
    record.lease = Some((worker.to_string(), now_ms + PROCESSING_LEASE_MS));
    record.total_chunks = None;
    record.chunks_embedded = None;
    record.updated_ms = now_ms;
    put_record(ctx, &record)?;
    Ok(Some(record))
}

fn bounded_limit(limit: usize) -> usize {
    limit.clamp(1, STORE_PAGE_COUNT_MAX)
}

/// The key range under `prefix` between the cursors (exclusive).
fn cursor_range(prefix: &str, low: Option<Vec<u8>>, high: Option<Vec<u8>>) -> KeyRange {
    let mut range = KeyRange::prefix(prefix.to_string());
    if let Some(low) = low {
        range.start = Bound::Excluded(low);
    }
    if let Some(high) = high {
        range.end = Bound::Excluded(high);
    }
    range
}

async fn cursor_key(ctx: &mut Ctx<'_>, id: Option<&String>) -> Result<Option<Option<Vec<u8>>>> {
    // Some(None): no cursor; None: an unknown cursor (an empty page).
    let Some(id) = id else { return Ok(Some(None)) };
    match ctx.kv_get(&id_key(id)).await? {
        Some(bytes) => Ok(Some(Some(file_key(seq_of(&bytes)?)))),
        None => Ok(None),
    }
}

async fn list_files(
    ctx: &mut Ctx<'_>,
    (after, before): (Option<String>, Option<String>),
    limit: usize,
    descending: bool,
) -> Result<Vec<FileRecord>> {
    let (Some(after), Some(before)) =
        (cursor_key(ctx, after.as_ref()).await?, cursor_key(ctx, before.as_ref()).await?)
    else {
        return Ok(Vec::new());
    };
    // In descending order `after` is the newer end.
    let (low, high) = if descending { (before, after) } else { (after, before) };
    let mut range = cursor_range("f/", low, high);
    let order = if descending { ScanOrder::Descending } else { ScanOrder::Ascending };
    let limit = bounded_limit(limit);
    let mut files = Vec::new();
    loop {
        let rows = ctx.kv_scan_page(&range, order, limit).await?;
        let full = rows.len() == limit;
        for (_, value) in &rows {
            let record: FileRecord = decode(value, "folder file")?;
            if record.status != FileStatus::Receiving && files.len() < limit {
                files.push(record);
            }
        }
        match (rows.last(), full && files.len() < limit) {
            (Some((key, _)), true) => match order {
                ScanOrder::Ascending => range.start = Bound::Excluded(key.clone()),
                ScanOrder::Descending => range.end = Bound::Excluded(key.clone()),
            },
            _ => return Ok(files),
        }
    }
}

/// Lines `first..=last` of a file's text, at most `chars_max` characters.
async fn read_lines(
    ctx: &mut Ctx<'_>,
    record: &FileRecord,
    (first, last): (u64, u64),
    chars_max: usize,
) -> Result<Vec<(u64, String)>> {
    let mut lines = Vec::new();
    let mut chars = 0usize;
    let prefix = attempt_prefix('t', record.seq, record.attempt);
    let mut range = KeyRange::prefix(prefix);
    loop {
        let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, 16).await?;
        for (_, value) in &rows {
            let page: TextPage = decode(value, "folder text page")?;
            for (offset, line) in page.text.split('\n').enumerate() {
                let number = page.first_line + offset as u64;
                if number < first {
                    continue;
                }
                if number > last || chars >= chars_max {
                    return Ok(lines);
                }
                chars += line.chars().count() + 1;
                lines.push((number, line.to_string()));
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == 16 => range.start = Bound::Excluded(key.clone()),
            _ => return Ok(lines),
        }
    }
}

/// Every listed, completed file, in seq order, visited page by page.
async fn completed_files(ctx: &mut Ctx<'_>) -> Result<Vec<FileRecord>> {
    let mut files = Vec::new();
    let mut range = KeyRange::prefix("f/".to_string());
    loop {
        let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, STORE_PAGE_COUNT_MAX).await?;
        for (_, value) in &rows {
            let record: FileRecord = decode(value, "folder file")?;
            if record.status == FileStatus::Completed {
                files.push(record);
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => {
                range.start = Bound::Excluded(key.clone())
            }
            _ => return Ok(files),
        }
    }
}

async fn grep(
    ctx: &mut Ctx<'_>,
    (pattern, include): (&str, Option<&str>),
    context_lines: u64,
    matches_max: usize,
) -> Result<FolderReply> {
    let regex = regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| Error::validation("pattern", format!("Invalid regex pattern: {e}")))?;
    let include = match include {
        Some(include) => Some(
            regex::RegexBuilder::new(include)
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| Error::validation("include", format!("Invalid include pattern: {e}")))?,
        ),
        None => None,
    };
    let matches_max = matches_max.min(GREP_MATCHES_COUNT_MAX);
    let mut matches = Vec::new();
    let mut files_searched = 0;
    let mut chars_read = 0u64;
    for record in completed_files(ctx).await? {
        if include.as_ref().is_some_and(|include| !include.is_match(&record.file_name)) {
            continue;
        }
        files_searched += 1;
        chars_read += record.text_chars;
        if chars_read > GREP_TEXT_CHARS_MAX {
            return Ok(FolderReply::Matches { matches, files_searched, more: true });
        }
        let mut hits: Vec<u64> = Vec::new();
        let mut prefix_range = KeyRange::prefix(attempt_prefix('t', record.seq, record.attempt));
        loop {
            let rows = ctx.kv_scan_page(&prefix_range, ScanOrder::Ascending, 16).await?;
            for (_, value) in &rows {
                let page: TextPage = decode(value, "folder text page")?;
                for (offset, line) in page.text.split('\n').enumerate() {
                    if regex.is_match(line) {
                        hits.push(page.first_line + offset as u64);
                    }
                }
            }
            match rows.last() {
                Some((key, _)) if rows.len() == 16 => prefix_range.start = Bound::Excluded(key.clone()),
                _ => break,
            }
        }
        for line in hits {
            if matches.len() == matches_max {
                return Ok(FolderReply::Matches { matches, files_searched, more: true });
            }
            let first = line.saturating_sub(context_lines).max(1);
            let context = read_lines(ctx, &record, (first, line + context_lines), usize::MAX).await?;
            matches.push(GrepMatch { file_name: record.file_name.clone(), line, context });
        }
    }
    Ok(FolderReply::Matches { matches, files_searched, more: false })
}

impl FolderActor {
    pub fn new(planted: Planted) -> Self {
        FolderActor { indexes: Mutex::default(), planted }
    }

    /// The index of the folder's codes, cached while its token holds.
    async fn candidates(&self, ctx: &mut Ctx<'_>, query: &Code, count: usize) -> Result<Vec<u64>> {
        let token = ctx.state.passage_token;
        {
            let cached = self.indexes.lock().expect("folder index lock");
            if let Some(entry) = cached.get(ctx.actor_id).filter(|entry| entry.token == token) {
                return Ok(entry.index.search(query, count).into_iter().map(|(key, _)| key).collect());
            }
        }
        let mut index = PassageIndex::new();
        let mut range = KeyRange::prefix("q/".to_string());
        loop {
            let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, STORE_PAGE_COUNT_MAX).await?;
            for (key, value) in &rows {
                let (seq, attempt, chunk) = parse_code_key(key)?;
                if let Some(code) = Code::from_bytes(value) {
                    index.insert(index_key(seq, attempt, chunk), &code);
                }
            }
            match rows.last() {
                Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => {
                    range.start = Bound::Excluded(key.clone())
                }
                _ => break,
            }
        }
        let found = index.search(query, count).into_iter().map(|(key, _)| key).collect();
        self.indexes
            .lock()
            .expect("folder index lock")
            .insert(ctx.actor_id.clone(), CachedIndex { token, index });
        Ok(found)
    }

    async fn search(&self, ctx: &mut Ctx<'_>, query: &[f32], top_k: usize) -> Result<FolderReply> {
        let top_k = top_k.min(kelpie_memory::ARCHIVAL_SEARCH_RESULTS_COUNT_MAX);
        let Some(code) = Code::of(query).filter(|_| top_k > 0) else {
            return Ok(FolderReply::Passages(Vec::new()));
        };
        let mut records: BTreeMap<u64, Option<FileRecord>> = BTreeMap::new();
        let mut ranked = Vec::new();
        for key in self.candidates(ctx, &code, top_k * SEARCH_RERANK_FACTOR).await? {
            let (seq, attempt, chunk) = index_parts(key);
            if let std::collections::btree_map::Entry::Vacant(entry) = records.entry(seq) {
                entry.insert(record_at(ctx, seq).await?);
            }
            let live = self.planted.has(PlantedBug::SearchSkipsFileStatus)
                || records[&seq]
                    .as_ref()
                    .is_some_and(|r| r.attempt == attempt && r.status == FileStatus::Completed);
            if !live {
                continue;
            }
            if let Some(bytes) = ctx.kv_get(&passage_key(seq, attempt, chunk)).await? {
                let passage: FilePassage = decode(&bytes, "folder passage")?;
                let score = cosine(&passage.embedding, query);
                ranked.push((key, passage, score));
            }
        }
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k);
        Ok(FolderReply::Passages(ranked.into_iter().map(|(_, passage, score)| (passage, score)).collect()))
    }
}

/// The passage id of chunk `chunk` of file `file_id`'s attempt: the file's
/// uuid with its last group replaced, so the id leads back to the file.
pub fn passage_id(file_id: &str, attempt: u8, chunk: u64) -> String {
    let uuid = file_id.strip_prefix("file-").unwrap_or(file_id);
    let head = uuid.get(..24).unwrap_or(uuid);
    format!("passage-{head}{attempt:02x}{chunk:010x}")
}

async fn list_passages(
    ctx: &mut Ctx<'_>,
    (after, before): (Option<String>, Option<String>),
    limit: usize,
    descending: bool,
) -> Result<Vec<(FilePassage, f32)>> {
    // Passages in file order then chunk order; the cursors are passage ids.
    let limit = bounded_limit(limit);
    let mut files = completed_files(ctx).await?;
    if descending {
        files.reverse();
    }
    let mut out = Vec::new();
    let mut started = after.is_none();
    for record in files {
        let mut range = KeyRange::prefix(attempt_prefix('p', record.seq, record.attempt));
        let order = if descending { ScanOrder::Descending } else { ScanOrder::Ascending };
        loop {
            let rows = ctx.kv_scan_page(&range, order, STORE_PAGE_COUNT_MAX).await?;
            for (_, value) in &rows {
                let passage: FilePassage = decode(value, "folder passage")?;
                if !started {
                    started = after.as_deref() == Some(passage.id.as_str());
                    continue;
                }
                if before.as_deref() == Some(passage.id.as_str()) || out.len() == limit {
                    return Ok(out);
                }
                out.push((passage, 0.0));
            }
            match rows.last() {
                Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => match order {
                    ScanOrder::Ascending => range.start = Bound::Excluded(key.clone()),
                    ScanOrder::Descending => range.end = Bound::Excluded(key.clone()),
                },
                _ => break,
            }
        }
    }
    Ok(out)
}

async fn reclaim(ctx: &mut Ctx<'_>, keys_max: usize) -> Result<bool> {
    let keys_max = keys_max.clamp(1, RECLAIM_BATCH_KEYS_COUNT);
    if ctx.state.deleted {
        let rows = ctx.kv_scan_page(&KeyRange::prefix(String::new()), ScanOrder::Ascending, keys_max).await?;
        for (key, _) in &rows {
            ctx.kv_delete(key)?;
        }
        return Ok(rows.len() < keys_max);
    }
    let mut deleted = 0;
    loop {
        let queued = ctx.kv_scan_page(&KeyRange::prefix("r/".to_string()), ScanOrder::Ascending, 1).await?;
        let Some((queue_key, prefix)) = queued.into_iter().next() else { return Ok(true) };
        let prefix = String::from_utf8(prefix).map_err(|_| Error::Corruption {
            location: "folder reclaim queue".into(),
            reason: "a prefix that is not UTF-8".into(),
        })?;
        let rows =
            ctx.kv_scan_page(&KeyRange::prefix(prefix), ScanOrder::Ascending, keys_max - deleted).await?;
        for (key, _) in &rows {
            ctx.kv_delete(key)?;
        }
        deleted += rows.len();
        if deleted == keys_max {
            return Ok(false);
        }
        ctx.kv_delete(&queue_key)?;
        ctx.state.reclaim_count -= 1;
    }
}

impl Actor for FolderActor {
    type State = FolderState;
    type Message = FolderCommand;
    type Reply = FolderReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: FolderCommand) -> Result<FolderReply> {
        let deleted = ctx.state.deleted;
        let folder_id = ctx.actor_id.id().to_string();
        match command {
            FolderCommand::Reclaim { keys_max } => {
                let done = reclaim(ctx, keys_max).await?;
                if !ctx.state.deleted {
                    self.indexes.lock().expect("folder index lock").remove(ctx.actor_id);
                }
                Ok(FolderReply::Reclaimed { done })
            }
            FolderCommand::HasWork => Ok(FolderReply::Work(
                deleted || ctx.state.unfinished_count > 0 || ctx.state.reclaim_count > 0,
            )),
            _ if deleted => Err(Error::NotFound { kind: "folder", id: folder_id }),
            FolderCommand::BeginFile { record, duplicate } => begin_file(ctx, *record, duplicate).await,
            FolderCommand::WriteUpload { seq, chunk, bytes, now_ms } => {
                assert!(bytes.len() <= UPLOAD_CHUNK_BYTES, "an upload chunk fits UPLOAD_CHUNK_BYTES");
                let mut record = match record_at(ctx, seq).await? {
                    Some(record) if record.status == FileStatus::Receiving => record,
                    _ => return Err(Error::validation("file", format!("file {seq} is not receiving"))),
                };
                record.updated_ms = now_ms;
                put_record(ctx, &record)?;
                ctx.kv_put(&upload_key(seq, chunk), bytes)?;
                Ok(FolderReply::Done)
            }
            FolderCommand::EndUpload { seq, size_bytes, now_ms } => {
                let Some(mut record) = record_at(ctx, seq).await? else {
                    return Err(Error::validation("file", format!("file {seq} is gone")));
                };
                assert_eq!(record.status, FileStatus::Receiving, "an upload ends once");
                record.status = FileStatus::Pending;
                record.size_bytes = size_bytes;
                record.updated_ms = now_ms;
                put_record(ctx, &record)?;
                ctx.state.files_count += 1;
                ctx.state.files_bytes += size_bytes;
                Ok(FolderReply::File(Box::new(record)))
            }
            FolderCommand::AbortFile { seq } => {
                if let Some(record) = record_at(ctx, seq).await? {
                    remove_file(ctx, &record).await?;
                }
                Ok(FolderReply::Done)
            }
            FolderCommand::ReadUpload { seq, chunk } => {
                Ok(FolderReply::Bytes(ctx.kv_get(&upload_key(seq, chunk)).await?))
            }
            FolderCommand::ClaimNext { worker, now_ms } => claim_next(ctx, worker, now_ms).await,
            FolderCommand::WriteText { seq, attempt, page, text, now_ms } => {
                let mut record = current(ctx, seq, attempt).await?;
                ctx.kv_put(&page_key(seq, attempt, page), encode(&text)?)?;
                renew(&mut record, now_ms);
                put_record(ctx, &record)?;
                Ok(FolderReply::Done)
            }
            FolderCommand::WritePassages { seq, attempt, first_chunk, passages, now_ms } => {
                let mut record = current(ctx, seq, attempt).await?;
                for (offset, passage) in passages.iter().enumerate() {
                    let chunk = first_chunk + offset as u64;
                    ctx.kv_put(&passage_key(seq, attempt, chunk), encode(passage)?)?;
                    let code = Code::of(&passage.embedding).map(|code| code.to_bytes()).unwrap_or_default();
                    ctx.kv_put(&code_key(seq, attempt, chunk), code)?;
                }
                record.chunks_embedded = Some(first_chunk + passages.len() as u64);
                renew(&mut record, now_ms);
                put_record(ctx, &record)?;
                ctx.state.passage_token = ctx.env.rng.next_u64();
                Ok(FolderReply::Done)
            }
            FolderCommand::SetProgress { seq, attempt, progress, now_ms } => {
                let mut record = current(ctx, seq, attempt).await?;
                record.status = progress.status;
                record.error_message = progress.error_message;
                record.total_chunks = progress.total_chunks;
                record.chunks_embedded = progress.chunks_embedded;
                record.lines_count = progress.lines_count;
                record.text_chars = progress.text_chars;
                record.pages_count = progress.pages_count;
                renew(&mut record, now_ms);
                if record.status.is_final() {
                    record.lease = None;
                    unmark_unfinished(ctx, seq).await?;
                    // The upload is no longer needed once processed.
                    queue_reclaim(ctx, format!("u/{seq:016x}/"))?;
                    ctx.state.passage_token = ctx.env.rng.next_u64();
                }
                put_record(ctx, &record)?;
                Ok(FolderReply::File(Box::new(record)))
            }
            FolderCommand::ReadPage { seq, attempt, page } => {
                match ctx.kv_get(&page_key(seq, attempt, page)).await? {
                    Some(bytes) => Ok(FolderReply::Page(Some(decode(&bytes, "folder text page")?))),
                    None => Ok(FolderReply::Page(None)),
                }
            }
            FolderCommand::ListFiles { after, before, limit, descending } => {
                Ok(FolderReply::Files(list_files(ctx, (after, before), limit, descending).await?))
            }
            FolderCommand::GetFile { id } => Ok(FolderReply::File(Box::new(record_by_id(ctx, &id).await?))),
            FolderCommand::FileByName { name } => match ctx.kv_get(&name_key(&name)).await? {
                Some(bytes) => match record_at(ctx, seq_of(&bytes)?).await? {
                    Some(record) if record.status != FileStatus::Receiving => {
                        Ok(FolderReply::File(Box::new(record)))
                    }
                    _ => Ok(FolderReply::NoFile),
                },
                None => Ok(FolderReply::NoFile),
            },
            FolderCommand::ReadLines { id, first_line, last_line, chars_max } => {
                let record = record_by_id(ctx, &id).await?;
                if record.status != FileStatus::Completed {
                    return Err(Error::validation(
                        "file",
                        format!("file {} is {}, not completed", record.file_name, record.status.as_str()),
                    ));
                }
                Ok(FolderReply::Lines(read_lines(ctx, &record, (first_line, last_line), chars_max).await?))
            }
            FolderCommand::Grep { pattern, include, context_lines, matches_max } => {
                grep(ctx, (&pattern, include.as_deref()), context_lines, matches_max).await
            }
            FolderCommand::Search { query, top_k } => self.search(ctx, &query, top_k).await,
            FolderCommand::ListPassages { after, before, limit, descending } => {
                Ok(FolderReply::Passages(list_passages(ctx, (after, before), limit, descending).await?))
            }
            FolderCommand::DeleteFile { id } => {
                let record = record_by_id(ctx, &id).await?;
                remove_file(ctx, &record).await?;
                Ok(FolderReply::File(Box::new(record)))
            }
            FolderCommand::DeleteAll => {
                ctx.state.deleted = true;
                ctx.state.unfinished_count = 0;
                ctx.state.reclaim_count = 0;
                self.indexes.lock().expect("folder index lock").remove(ctx.actor_id);
                Ok(FolderReply::Done)
            }
            FolderCommand::Stats => Ok(FolderReply::Stats {
                files_count: ctx.state.files_count,
                files_bytes: ctx.state.files_bytes,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ids_round_trip() {
        let key = index_key(7, 3, 12);
        assert_eq!(index_parts(key), (7, 3, 12));
        assert_eq!(parse_code_key(&code_key(7, 3, 12)).unwrap(), (7, 3, 12));
        assert_eq!(suffixed("notes.txt", 2), "notes_(2).txt");
        assert_eq!(suffixed("README", 1), "README_(1)");
        assert_eq!(suffixed(".env", 1), ".env_(1)");
        let id = passage_id("file-0123abcd-0000-4000-8000-0123456789ab", 1, 5);
        assert_eq!(id, "passage-0123abcd-0000-4000-8000-010000000005");
        assert_eq!(id.len(), "passage-".len() + 36);
    }
}
