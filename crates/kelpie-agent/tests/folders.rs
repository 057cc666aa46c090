//! The folder actor's protocol against a real redb file, its clock given
//! by the test: a worker's claim and its lease (a second worker waits, then
//! takes the file over as a new attempt, and the first one's writes are
//! refused and never searched), an upload abandoned mid-way, a folder
//! deleted with more keys than one reclaim batch, listing more files than
//! one store page, both ways, by cursor, a file interrupted more often than
//! `FILE_ATTEMPTS_COUNT_MAX`, a grep past `GREP_MATCHES_COUNT_MAX` and a
//! folder past `FOLDER_FILES_COUNT_MAX`.

use std::ops::Bound;

use kelpie_agent::actors::folder::{
    DuplicateHandling, FilePassage, FileRecord, FileStatus, FolderActor, FolderCommand, FolderReply,
    Progress, TextPage, FILE_ATTEMPTS_COUNT_MAX, FOLDER_FILES_COUNT_MAX, FOLDER_NAMESPACE,
    GREP_MATCHES_COUNT_MAX, PROCESSING_LEASE_MS, UPLOAD_IDLE_MS,
};
use kelpie_agent::limits::{RECLAIM_BATCH_KEYS_COUNT, STORE_PAGE_COUNT_MAX};
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_core::{ActorId, Env, NodeId};
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_storage::limits::SCAN_ROWS_COUNT_MAX;
use kelpie_storage::{KeyRange, ScanOrder, Storage};

const FOLDER: &str = "source-00000000-0000-4000-8000-000000000001";
const T0_MS: u64 = 1_000_000;
/// Where the runtime keeps an actor's extra keys (beside its state).
const EXTRA_KEYS_PREFIX: &str = "u/";

fn folders(storage: &Storage) -> Runtime<FolderActor> {
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    agent_runtimes(storage, &Placement::Local, &Env::production(), &config).unwrap().folders
}

fn folder_id() -> ActorId {
    ActorId::new(FOLDER_NAMESPACE, FOLDER).unwrap()
}

async fn send(runtime: &Runtime<FolderActor>, command: FolderCommand) -> kelpie_core::Result<FolderReply> {
    runtime.invoke(&folder_id(), command).await
}

fn record(n: usize) -> FileRecord {
    FileRecord {
        id: format!("file-00000000-0000-4000-8000-{n:012}"),
        seq: 0,
        folder_id: FOLDER.into(),
        file_name: String::new(),
        original_file_name: format!("f{n}.txt"),
        file_type: "text/plain".into(),
        size_bytes: 0,
        status: FileStatus::Receiving,
        error_message: None,
        total_chunks: None,
        chunks_embedded: None,
        lines_count: 0,
        text_chars: 0,
        pages_count: 0,
        attempt: 0,
        lease: None,
        created_ms: T0_MS,
        updated_ms: T0_MS,
    }
}

/// A file received whole (`pending`); its seq.
async fn received(runtime: &Runtime<FolderActor>, n: usize, bytes: &[u8]) -> u64 {
    let begin =
        FolderCommand::BeginFile { record: Box::new(record(n)), duplicate: DuplicateHandling::Suffix };
    let FolderReply::Began { record, .. } = send(runtime, begin).await.unwrap() else { panic!("began") };
    let write =
        FolderCommand::WriteUpload { seq: record.seq, chunk: 0, bytes: bytes.to_vec(), now_ms: T0_MS };
    send(runtime, write).await.unwrap();
    let end = FolderCommand::EndUpload { seq: record.seq, size_bytes: bytes.len() as u64, now_ms: T0_MS };
    send(runtime, end).await.unwrap();
    record.seq
}

fn passage(file: &FileRecord, text: &str, embedding: Vec<f32>) -> FilePassage {
    FilePassage {
        id: format!("passage-{text}"),
        file_id: file.id.clone(),
        file_name: file.file_name.clone(),
        text: text.into(),
        embedding,
        created_ms: T0_MS,
    }
}

fn done(status: FileStatus) -> Progress {
    Progress {
        status,
        error_message: None,
        total_chunks: Some(1),
        chunks_embedded: Some(1),
        lines_count: 1,
        text_chars: 5,
        pages_count: 1,
    }
}

/// Every extra key the folder's actor holds (its state key aside), as the
/// actor names them.
async fn stored_keys(storage: &Storage) -> Vec<String> {
    let mut txn = storage.begin(folder_id());
    let mut range = KeyRange::prefix(Vec::new());
    let mut keys = Vec::new();
    loop {
        let rows = txn.scan_page(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX).await.unwrap();
        keys.extend(rows.iter().filter_map(|(key, _)| {
            String::from_utf8_lossy(key).strip_prefix(EXTRA_KEYS_PREFIX).map(str::to_string)
        }));
        match rows.last() {
            Some((key, _)) if rows.len() == SCAN_ROWS_COUNT_MAX => range.start = Bound::Excluded(key.clone()),
            _ => return keys,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_is_taken_over_and_the_old_attempt_is_never_searched() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let runtime = folders(&storage);
    let seq = received(&runtime, 1, b"hello").await;
    let claim = |worker: &str, now_ms| FolderCommand::ClaimNext { worker: worker.into(), now_ms };
    let FolderReply::File(first) = send(&runtime, claim("w1", T0_MS)).await.unwrap() else {
        panic!("claimed")
    };
    assert_eq!((first.seq, first.attempt, first.status), (seq, 1, FileStatus::Parsing));
    // Held: another worker finds nothing while the lease runs.
    assert!(matches!(
        send(&runtime, claim("w2", T0_MS + PROCESSING_LEASE_MS - 1)).await.unwrap(),
        FolderReply::NoFile
    ));
    let stale = passage(&first, "stale", vec![1.0, 0.0]);
    let write = FolderCommand::WritePassages {
        seq,
        attempt: 1,
        first_chunk: 0,
        passages: vec![stale],
        now_ms: T0_MS,
    };
    send(&runtime, write).await.unwrap();
    // The first worker stops renewing; after its lease the file is taken over.
    let FolderReply::File(second) =
        send(&runtime, claim("w2", T0_MS + 2 * PROCESSING_LEASE_MS)).await.unwrap()
    else {
        panic!("taken over")
    };
    assert_eq!((second.attempt, second.chunks_embedded), (2, None));
    let late = FolderCommand::WriteText {
        seq,
        attempt: 1,
        page: 0,
        text: TextPage { first_line: 1, text: "late".into() },
        now_ms: T0_MS,
    };
    let refused = send(&runtime, late).await.unwrap_err();
    assert!(refused.to_string().contains("no longer current"), "{refused}");
    let fresh = passage(&second, "fresh", vec![0.9, 0.1]);
    let write = FolderCommand::WritePassages {
        seq,
        attempt: 2,
        first_chunk: 0,
        passages: vec![fresh],
        now_ms: T0_MS,
    };
    send(&runtime, write).await.unwrap();
    let page = FolderCommand::WriteText {
        seq,
        attempt: 2,
        page: 0,
        text: TextPage { first_line: 1, text: "hello".into() },
        now_ms: T0_MS,
    };
    send(&runtime, page).await.unwrap();
    // Not searched before it completes.
    let search = FolderCommand::Search { query: vec![1.0, 0.0], top_k: 5 };
    let FolderReply::Passages(found) = send(&runtime, search.clone()).await.unwrap() else {
        panic!("passages")
    };
    assert!(found.is_empty(), "a file still processing is not searched: {found:?}");
    let finish =
        FolderCommand::SetProgress { seq, attempt: 2, progress: done(FileStatus::Completed), now_ms: T0_MS };
    send(&runtime, finish).await.unwrap();
    let FolderReply::Passages(found) = send(&runtime, search).await.unwrap() else { panic!("passages") };
    let texts: Vec<&str> = found.iter().map(|(p, _)| p.text.as_str()).collect();
    assert_eq!(texts, ["fresh"], "the first attempt's passage, nearer the query, is never answered");
    // Nothing is left to claim, and the stale attempt's keys are reclaimed.
    assert!(matches!(
        send(&runtime, claim("w3", T0_MS + 10 * PROCESSING_LEASE_MS)).await.unwrap(),
        FolderReply::NoFile
    ));
    while !matches!(
        send(&runtime, FolderCommand::Reclaim { keys_max: 2 }).await.unwrap(),
        FolderReply::Reclaimed { done: true }
    ) {}
    let keys = stored_keys(&storage).await;
    assert!(!keys.iter().any(|key| key.contains(".01/")), "attempt 1 left {keys:?}");
    assert!(!keys.iter().any(|key| key.contains("u/")), "the processed upload is dropped: {keys:?}");
    let read =
        FolderCommand::ReadLines { id: second.id.clone(), first_line: 1, last_line: 9, chars_max: 100 };
    let FolderReply::Lines(lines) = send(&runtime, read).await.unwrap() else { panic!("lines") };
    assert_eq!(lines, vec![(1, "hello".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_is_dropped_and_a_deleted_folder_reclaimed_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let runtime = folders(&storage);
    let begin =
        FolderCommand::BeginFile { record: Box::new(record(7)), duplicate: DuplicateHandling::Suffix };
    let FolderReply::Began { record: cut, .. } = send(&runtime, begin).await.unwrap() else {
        panic!("began")
    };
    let write = FolderCommand::WriteUpload { seq: cut.seq, chunk: 0, bytes: b"half".to_vec(), now_ms: T0_MS };
    send(&runtime, write).await.unwrap();
    let get = FolderCommand::GetFile { id: cut.id.clone() };
    assert!(send(&runtime, get.clone()).await.is_err(), "a file still receiving is not listed");
    let claim = FolderCommand::ClaimNext { worker: "w".into(), now_ms: T0_MS + UPLOAD_IDLE_MS - 1 };
    assert!(matches!(send(&runtime, claim).await.unwrap(), FolderReply::NoFile));
    assert!(stored_keys(&storage).await.iter().any(|key| key.starts_with("u/")), "kept while it may go on");
    let claim = FolderCommand::ClaimNext { worker: "w".into(), now_ms: T0_MS + UPLOAD_IDLE_MS + 1 };
    assert!(matches!(send(&runtime, claim).await.unwrap(), FolderReply::NoFile));
    while !matches!(
        send(&runtime, FolderCommand::Reclaim { keys_max: 100 }).await.unwrap(),
        FolderReply::Reclaimed { done: true }
    ) {}
    let keys = stored_keys(&storage).await;
    assert!(!keys.iter().any(|key| key.starts_with("u/") || key.contains(&cut.id)), "{keys:?}");
    let write = FolderCommand::WriteUpload { seq: cut.seq, chunk: 1, bytes: b"late".to_vec(), now_ms: T0_MS };
    assert!(send(&runtime, write).await.is_err(), "a dropped upload takes no more chunks");

    // More keys than one reclaim batch, then the folder is deleted.
    let seq = received(&runtime, 8, b"x").await;
    let FolderReply::File(file) =
        send(&runtime, FolderCommand::ClaimNext { worker: "w".into(), now_ms: T0_MS }).await.unwrap()
    else {
        panic!("claimed")
    };
    let passages: Vec<FilePassage> = (0..RECLAIM_BATCH_KEYS_COUNT)
        .map(|n| passage(&file, &format!("p{n}"), vec![1.0, n as f32]))
        .collect();
    let write = FolderCommand::WritePassages { seq, attempt: 1, first_chunk: 0, passages, now_ms: T0_MS };
    send(&runtime, write).await.unwrap();
    assert!(stored_keys(&storage).await.len() > 2 * RECLAIM_BATCH_KEYS_COUNT);
    send(&runtime, FolderCommand::DeleteAll).await.unwrap();
    assert!(
        send(&runtime, FolderCommand::Stats).await.is_err(),
        "a deleted folder answers not found at once"
    );
    let mut batches = 0;
    loop {
        batches += 1;
        let reply =
            send(&runtime, FolderCommand::Reclaim { keys_max: RECLAIM_BATCH_KEYS_COUNT }).await.unwrap();
        if matches!(reply, FolderReply::Reclaimed { done: true }) {
            break;
        }
    }
    assert!(batches >= 3, "{batches} batches");
    assert_eq!(stored_keys(&storage).await, Vec::<String>::new(), "nothing of the folder is left");
    assert!(matches!(send(&runtime, FolderCommand::HasWork).await.unwrap(), FolderReply::Work(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_past_one_store_page_are_listed_by_cursor_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let runtime = folders(&storage);
    let count = STORE_PAGE_COUNT_MAX + 150;
    let mut ids = Vec::new();
    for n in 0..count {
        received(&runtime, n, b"x").await;
        ids.push(record(n).id);
    }
    // Names are unique in the folder: a second f3.txt is suffixed.
    let begin =
        FolderCommand::BeginFile { record: Box::new(record(3)), duplicate: DuplicateHandling::Suffix };
    let FolderReply::Began { record: copy, .. } = send(&runtime, begin).await.unwrap() else {
        panic!("began")
    };
    assert_eq!(copy.file_name, "f3_(1).txt");
    let begin = FolderCommand::BeginFile { record: Box::new(record(4)), duplicate: DuplicateHandling::Skip };
    let FolderReply::Skipped(skipped) = send(&runtime, begin).await.unwrap() else { panic!("skipped") };
    assert_eq!(skipped.id, ids[4]);
    for descending in [false, true] {
        let mut listed: Vec<String> = Vec::new();
        loop {
            let list = FolderCommand::ListFiles {
                after: listed.last().cloned(),
                before: None,
                limit: 400,
                descending,
            };
            let FolderReply::Files(files) = send(&runtime, list).await.unwrap() else { panic!("files") };
            let full = files.len() == 400;
            listed.extend(files.into_iter().map(|f| f.id));
            if !full {
                break;
            }
        }
        let mut expected = ids.clone();
        if descending {
            expected.reverse();
        }
        assert_eq!(listed, expected, "descending {descending}");
    }
    let list = FolderCommand::ListFiles { after: None, before: None, limit: 10_000, descending: false };
    let FolderReply::Files(files) = send(&runtime, list).await.unwrap() else { panic!("files") };
    assert_eq!(files.len(), STORE_PAGE_COUNT_MAX, "a page is at most STORE_PAGE_COUNT_MAX");
    let FolderReply::Stats { files_count, files_bytes } = send(&runtime, FolderCommand::Stats).await.unwrap()
    else {
        panic!("stats")
    };
    assert_eq!((files_count, files_bytes), (count as u64, count as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_interrupted_too_often_ends_in_error_and_greps_stop_at_their_cap() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let runtime = folders(&storage);
    let seq = received(&runtime, 1, b"x").await;
    for attempt in 1..=FILE_ATTEMPTS_COUNT_MAX {
        let now_ms = T0_MS + u64::from(attempt) * 2 * PROCESSING_LEASE_MS;
        let claim = FolderCommand::ClaimNext { worker: format!("w{attempt}"), now_ms };
        let FolderReply::File(file) = send(&runtime, claim).await.unwrap() else { panic!("claim {attempt}") };
        assert_eq!(file.attempt, attempt);
    }
    let now_ms = T0_MS + 100 * PROCESSING_LEASE_MS;
    let claim = FolderCommand::ClaimNext { worker: "last".into(), now_ms };
    assert!(matches!(send(&runtime, claim).await.unwrap(), FolderReply::NoFile));
    let FolderReply::Files(files) =
        send(&runtime, FolderCommand::ListFiles { after: None, before: None, limit: 5, descending: false })
            .await
            .unwrap()
    else {
        panic!("files")
    };
    assert_eq!((files[0].seq, files[0].status), (seq, FileStatus::Error));
    assert!(files[0].error_message.as_deref().unwrap().contains("interrupted 5 times"), "{:?}", files[0]);
    assert!(
        matches!(send(&runtime, FolderCommand::HasWork).await.unwrap(), FolderReply::Work(true)),
        "to reclaim"
    );

    // A file with more matching lines than one grep collects.
    let seq = received(&runtime, 2, b"x").await;
    let claim = FolderCommand::ClaimNext { worker: "w".into(), now_ms };
    let FolderReply::File(file) = send(&runtime, claim).await.unwrap() else { panic!("claimed") };
    assert_eq!(file.seq, seq);
    let lines = GREP_MATCHES_COUNT_MAX + 200;
    let text: Vec<String> = (0..lines).map(|n| format!("match {n}")).collect();
    let page = TextPage { first_line: 1, text: text.join("\n") };
    let write = FolderCommand::WriteText { seq, attempt: 1, page: 0, text: page, now_ms };
    send(&runtime, write).await.unwrap();
    let mut progress = done(FileStatus::Completed);
    progress.lines_count = lines as u64;
    send(&runtime, FolderCommand::SetProgress { seq, attempt: 1, progress, now_ms }).await.unwrap();
    let grep = FolderCommand::Grep {
        pattern: "MATCH \\d+".into(),
        include: Some("f2".into()),
        context_lines: 1,
        matches_max: usize::MAX,
    };
    let FolderReply::Matches { matches, files_searched, more } = send(&runtime, grep).await.unwrap() else {
        panic!("matches")
    };
    assert_eq!((matches.len(), files_searched, more), (GREP_MATCHES_COUNT_MAX, 1, true));
    assert_eq!(matches[1].context, vec![(1, "match 0".into()), (2, "match 1".into()), (3, "match 2".into())]);
    let bad = FolderCommand::Grep { pattern: "(".into(), include: None, context_lines: 0, matches_max: 1 };
    assert!(send(&runtime, bad).await.unwrap_err().to_string().contains("Invalid regex pattern"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_takes_files_up_to_its_limit() {
    let runtime = folders(&Storage::memory());
    for n in 0..FOLDER_FILES_COUNT_MAX as usize {
        let begin =
            FolderCommand::BeginFile { record: Box::new(record(n)), duplicate: DuplicateHandling::Error };
        let FolderReply::Began { record, .. } = send(&runtime, begin).await.unwrap() else { panic!("began") };
        let end = FolderCommand::EndUpload { seq: record.seq, size_bytes: 1, now_ms: T0_MS };
        send(&runtime, end).await.unwrap();
    }
    let one_more = FolderCommand::BeginFile {
        record: Box::new(record(FOLDER_FILES_COUNT_MAX as usize)),
        duplicate: DuplicateHandling::Error,
    };
    let refused = send(&runtime, one_more).await.unwrap_err().to_string();
    assert!(refused.contains("FOLDER_FILES_COUNT_MAX"), "{refused}");
    let FolderReply::Stats { files_count, .. } = send(&runtime, FolderCommand::Stats).await.unwrap() else {
        panic!("stats")
    };
    assert_eq!(files_count, FOLDER_FILES_COUNT_MAX);
}
