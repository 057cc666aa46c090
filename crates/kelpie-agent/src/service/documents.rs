//! Processing uploaded files, in the background, durably: each file goes
//! `pending` → `parsing` (its upload read back chunk by chunk and turned
//! into text, stored as pages of whole lines) → `embedding` (the text read
//! back, cut into chunks, embedded with the folder's embedding in batches
//! and stored as passages) → `completed`, or `error` with the reason. A
//! file is searched only once completed, so it is never half-indexed.
//!
//! Durability: a worker claims a file for `PROCESSING_LEASE_MS`, renewed by
//! every write; each claim is a new attempt whose output lives under its
//! own keys. A worker that dies (a crash, a lost node) leaves the file to
//! the next claim once its lease runs out, which starts the file again
//! from its stored upload; the dead attempt's keys are reclaimed. The
//! folder store lists the folders with work left, so a restarted server
//! resumes without reading every folder.

use std::sync::Arc;

use kelpie_core::Env;
use kelpie_llm::ChatModel;

use super::agent_files::AgentFiles;
use super::folders::Folders;
use super::worker::{Worker, WorkerSpec};
use crate::actors::folder::{
    passage_id, FilePassage, FileRecord, FileStatus, FolderCommand, FolderReply, Progress, TextPage,
    TEXT_PAGE_CHARS_MAX,
};
use crate::actors::folder_store::{FolderRecord, FolderStoreCommand, FolderStoreReply};
use crate::documents::chunk::{Chunk, Chunker};
use crate::documents::parse::{self, ParseError, TextExtractor};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::limits::RECLAIM_BATCH_KEYS_COUNT;

/// Chunks embedded per call to the embedding and stored per commit.
pub const EMBED_BATCH_CHUNKS_COUNT: usize = 32;
/// Pause of the worker when it found nothing to do, in milliseconds (an
/// upload wakes it at once).
pub const DOCUMENTS_IDLE_POLL_MS: u64 = 1_000;

/// Why processing a file stopped.
enum Stop {
    /// The file is bad (unparsable, empty, refused by the embedding): it
    /// ends in `error` with this reason.
    Bad(String),
    /// Storage or the claim failed: the file is left to the next claim.
    Lost(ServiceError),
}

impl From<ServiceError> for Stop {
    fn from(err: ServiceError) -> Self {
        Stop::Lost(err)
    }
}

impl From<ParseError> for Stop {
    fn from(err: ParseError) -> Self {
        Stop::Bad(err.to_string())
    }
}

/// Cuts text into pages of whole lines for storage; a line longer than a
/// page is broken into page-long lines.
struct PageWriter {
    page: u64,
    first_line: u64,
    buffer: String,
    buffer_chars: usize,
    /// Lines finished so far.
    lines: u64,
    chars: u64,
    /// Bytes of the current (unfinished) line.
    line_chars: usize,
}

impl PageWriter {
    fn new() -> Self {
        PageWriter {
            page: 0,
            first_line: 1,
            buffer: String::new(),
            buffer_chars: 0,
            lines: 0,
            chars: 0,
            line_chars: 0,
        }
    }

    /// Takes text; the pages it completed.
    fn push(&mut self, text: &str) -> Vec<(u64, TextPage)> {
        let mut pages = Vec::new();
        for c in text.chars() {
            if c != '\n' && self.line_chars == TEXT_PAGE_CHARS_MAX {
                // A line as long as a page: broken here.
                self.newline(&mut pages);
            }
            if c == '\n' {
                self.newline(&mut pages);
                continue;
            }
            self.buffer.push(c);
            self.buffer_chars += 1;
            self.line_chars += 1;
            self.chars += 1;
        }
        pages
    }

    fn newline(&mut self, pages: &mut Vec<(u64, TextPage)>) {
        self.lines += 1;
        self.line_chars = 0;
        if self.buffer_chars >= TEXT_PAGE_CHARS_MAX {
            pages.push(self.cut());
        } else {
            self.buffer.push('\n');
            self.buffer_chars += 1;
        }
    }

    /// The current page, ending at a finished line.
    fn cut(&mut self) -> (u64, TextPage) {
        let text = std::mem::take(&mut self.buffer);
        let page = (self.page, TextPage { first_line: self.first_line, text });
        self.page += 1;
        self.first_line = self.lines + 1;
        self.buffer_chars = 0;
        page
    }

    /// The last page, if it holds anything; `(pages, lines, chars)` in all.
    fn finish(mut self) -> (Option<(u64, TextPage)>, u64, u64, u64) {
        if self.line_chars > 0 {
            self.lines += 1;
        } else if self.buffer.ends_with('\n') {
            self.buffer.pop();
        }
        let last = (!self.buffer.is_empty()).then(|| self.cut());
        (last, self.page, self.lines, self.chars)
    }
}

/// Chunks `page` (the text of page number `page`) adds, fed to the
/// chunker as the embedding pass feeds the stored pages: joined by a line
/// break, so both passes cut the same chunks.
fn count_chunks(counter: &mut Chunker, page: u64, text: &str) -> u64 {
    let mut count = 0;
    if page > 0 {
        count += counter.push("\n").len() as u64;
    }
    count + counter.push(text).len() as u64
}

pub struct Documents {
    folders: Arc<Folders>,
    agent_files: Arc<AgentFiles>,
    llm: Arc<dyn ChatModel>,
    env: Env,
    /// This worker's name in its claims.
    worker: String,
    /// The background loop.
    runner: Worker,
}

impl Documents {
    pub(crate) fn new(
        folders: Arc<Folders>,
        agent_files: Arc<AgentFiles>,
        llm: Arc<dyn ChatModel>,
        env: Env,
    ) -> Self {
        let worker = crate::ids::new_id("worker", env.rng.as_ref());
        Documents { folders, agent_files, llm, env, worker, runner: Worker::default() }
    }

    async fn command(&self, folder_id: &str, command: FolderCommand) -> ServiceResult<FolderReply> {
        self.folders.folder(folder_id, command).await
    }

    /// One pass over the folders with work: every file processed or left
    /// to another worker, every deleted key reclaimed. How many files it
    /// finished.
    pub async fn run_once(&self) -> ServiceResult<usize> {
        let FolderStoreReply::Busy(busy) = self.folders.store(FolderStoreCommand::Busy).await? else {
            return Err(unexpected("busy folders"));
        };
        let mut finished = 0;
        for (folder_id, generation) in busy {
            let folder = match self.folders.record(&folder_id).await {
                Ok(folder) => Some(folder),
                Err(ServiceError::FolderNotFound(_)) => None,
                Err(err) => return Err(err),
            };
            if let Some(folder) = &folder {
                loop {
                    let claim = FolderCommand::ClaimNext {
                        worker: self.worker.clone(),
                        now_ms: self.env.clock.wall_ms(),
                    };
                    match self.command(&folder_id, claim).await? {
                        FolderReply::File(file) => {
                            self.process(folder, *file).await?;
                            finished += 1;
                        }
                        _ => break,
                    }
                }
            }
            loop {
                let reclaim = FolderCommand::Reclaim { keys_max: RECLAIM_BATCH_KEYS_COUNT };
                match self.command(&folder_id, reclaim).await? {
                    FolderReply::Reclaimed { done: true } => break,
                    FolderReply::Reclaimed { done: false } => continue,
                    _ => return Err(unexpected("folder reclaim")),
                }
            }
            let FolderReply::Work(left) = self.command(&folder_id, FolderCommand::HasWork).await? else {
                return Err(unexpected("folder work"));
            };
            // A deleted folder's actor stays "deleted"; once reclaimed it
            // has nothing left to do here.
            if !left || folder.is_none() {
                // Only the mark this pass saw: an upload begun since marked
                // it again and keeps it.
                let clear = FolderStoreCommand::ClearBusy { id: folder_id.clone(), generation };
                self.folders.store(clear).await?;
            }
        }
        Ok(finished)
    }

    /// Processes one claimed file to its end; an error here is a storage
    /// or claim failure (the file is left to the next claim).
    async fn process(&self, folder: &FolderRecord, file: FileRecord) -> ServiceResult<()> {
        let outcome = self.pipeline(folder, &file).await;
        let now_ms = self.env.clock.wall_ms();
        let (seq, attempt) = (file.seq, file.attempt);
        let progress = match outcome {
            Ok(progress) => progress,
            Err(Stop::Bad(reason)) => Progress {
                status: FileStatus::Error,
                error_message: Some(reason),
                total_chunks: None,
                chunks_embedded: None,
                lines_count: 0,
                text_chars: 0,
                pages_count: 0,
            },
            Err(Stop::Lost(err)) => {
                tracing::warn!(%err, file_id = file.id, "processing a file stopped; it is retried once its claim lapses");
                return Ok(());
            }
        };
        let FolderReply::File(done) =
            self.command(&folder.id, FolderCommand::SetProgress { seq, attempt, progress, now_ms }).await?
        else {
            return Err(unexpected("file progress"));
        };
        if done.status == FileStatus::Completed {
            if let Err(err) = self.agent_files.file_completed(&folder.id, &done).await {
                tracing::warn!(%err, file_id = done.id, "opening a new file in its folder's agents failed");
            }
        }
        Ok(())
    }

    async fn set_progress(&self, folder_id: &str, file: &FileRecord, progress: Progress) -> Result<(), Stop> {
        let now_ms = self.env.clock.wall_ms();
        let command = FolderCommand::SetProgress { seq: file.seq, attempt: file.attempt, progress, now_ms };
        self.command(folder_id, command).await?;
        Ok(())
    }

    async fn pipeline(&self, folder: &FolderRecord, file: &FileRecord) -> Result<Progress, Stop> {
        let seq = file.seq;
        // Parsing: the upload, chunk by chunk, into pages of text.
        let kind = parse::detect(&file.original_file_name, Some(&file.file_type))?;
        let mut extractor = TextExtractor::new(kind);
        let mut pages = PageWriter::new();
        let mut counter = Chunker::new();
        let mut total_chunks = 0u64;
        let mut chunk_no = 0u64;
        loop {
            let FolderReply::Bytes(bytes) =
                self.command(&folder.id, FolderCommand::ReadUpload { seq, chunk: chunk_no }).await?
            else {
                return Err(Stop::Lost(unexpected("read upload")));
            };
            let Some(bytes) = bytes else { break };
            chunk_no += 1;
            let text = extractor.push(&bytes)?;
            for (page, text) in pages.push(&text) {
                total_chunks += count_chunks(&mut counter, page, &text.text);
                self.write_page(&folder.id, file, page, text).await?;
            }
        }
        let rest = extractor.finish()?.text;
        for (page, text) in pages.push(&rest) {
            total_chunks += count_chunks(&mut counter, page, &text.text);
            self.write_page(&folder.id, file, page, text).await?;
        }
        let (last, pages_count, lines_count, text_chars) = pages.finish();
        if let Some((page, text)) = last {
            total_chunks += count_chunks(&mut counter, page, &text.text);
            self.write_page(&folder.id, file, page, text).await?;
        }
        total_chunks += counter.finish().len() as u64;
        if total_chunks == 0 {
            return Err(Stop::Bad(format!("No text found in {}: nothing to index", file.original_file_name)));
        }
        let mut progress = Progress {
            status: FileStatus::Embedding,
            error_message: None,
            total_chunks: Some(total_chunks),
            chunks_embedded: Some(0),
            lines_count,
            text_chars,
            pages_count,
        };
        self.set_progress(&folder.id, file, progress.clone()).await?;
        // Embedding: the stored text, page by page, chunked again (the
        // same chunks as counted) and embedded in batches.
        let mut chunker = Chunker::new();
        let mut batch: Vec<Chunk> = Vec::new();
        let mut embedded = 0u64;
        for page in 0..pages_count {
            let text = self.read_page(&folder.id, file, page).await?;
            if page > 0 {
                batch.extend(chunker.push("\n"));
            }
            batch.extend(chunker.push(&text));
            while batch.len() >= EMBED_BATCH_CHUNKS_COUNT {
                let rest = batch.split_off(EMBED_BATCH_CHUNKS_COUNT);
                embedded =
                    self.embed_batch(folder, file, embedded, std::mem::replace(&mut batch, rest)).await?;
            }
        }
        batch.extend(chunker.finish());
        if !batch.is_empty() {
            embedded = self.embed_batch(folder, file, embedded, batch).await?;
        }
        assert_eq!(embedded, total_chunks, "the stored text chunks as the parsed text did");
        progress.status = FileStatus::Completed;
        progress.chunks_embedded = Some(embedded);
        Ok(progress)
    }

    async fn write_page(
        &self,
        folder_id: &str,
        file: &FileRecord,
        page: u64,
        text: TextPage,
    ) -> Result<(), Stop> {
        let now_ms = self.env.clock.wall_ms();
        let command = FolderCommand::WriteText { seq: file.seq, attempt: file.attempt, page, text, now_ms };
        self.command(folder_id, command).await?;
        Ok(())
    }

    /// Page `page` of the file's text as stored by this attempt.
    async fn read_page(&self, folder_id: &str, file: &FileRecord, page: u64) -> Result<String, Stop> {
        let command = FolderCommand::ReadPage { seq: file.seq, attempt: file.attempt, page };
        match self.command(folder_id, command).await? {
            FolderReply::Page(Some(page)) => Ok(page.text),
            FolderReply::Page(None) => Err(Stop::Lost(ServiceError::Core(kelpie_core::Error::Corruption {
                location: format!("text of file {}", file.id),
                reason: format!("page {page} is missing"),
            }))),
            _ => Err(Stop::Lost(unexpected("read page"))),
        }
    }

    /// Embeds `chunks` (numbered from `first`) and stores them; the number
    /// of chunks stored after.
    async fn embed_batch(
        &self,
        folder: &FolderRecord,
        file: &FileRecord,
        first: u64,
        chunks: Vec<Chunk>,
    ) -> Result<u64, Stop> {
        let texts: Vec<String> = chunks.iter().map(|chunk| chunk.text.clone()).collect();
        let vectors = self
            .llm
            .embed(&folder.embedding, &texts)
            .await
            .map_err(|e| Stop::Bad(format!("embedding with {} failed: {e}", folder.embedding.handle)))?;
        if vectors.len() != texts.len() {
            return Err(Stop::Bad(format!(
                "the embedding answered {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        let now_ms = self.env.clock.wall_ms();
        let passages: Vec<FilePassage> = texts
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(offset, (text, embedding))| FilePassage {
                id: passage_id(&file.id, file.attempt, first + offset as u64),
                file_id: file.id.clone(),
                file_name: file.file_name.clone(),
                text,
                embedding,
                created_ms: now_ms,
            })
            .collect();
        let count = passages.len() as u64;
        let command = FolderCommand::WritePassages {
            seq: file.seq,
            attempt: file.attempt,
            first_chunk: first,
            passages,
            now_ms,
        };
        self.command(&folder.id, command).await?;
        Ok(first + count)
    }

    /// Starts the background worker: a pass whenever woken (an upload, a
    /// delete) and at least every `DOCUMENTS_IDLE_POLL_MS`.
    pub fn start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let spec = WorkerSpec {
            name: "documents",
            failure: "processing documents failed",
            idle_poll_ms: DOCUMENTS_IDLE_POLL_MS,
            wake: Some(Arc::clone(&self.folders.work)),
        };
        self.runner.start(&self.env, spec, move || {
            let this = Arc::clone(&this);
            async move { this.run_once().await }
        });
    }

    pub async fn shutdown(&self) {
        self.runner.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `text` pushed in pieces of `size` characters.
    fn pages_of(text: &str, size: usize) -> (Vec<TextPage>, u64, u64) {
        let mut writer = PageWriter::new();
        let mut pages = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(size) {
            pages.extend(writer.push(&piece.iter().collect::<String>()).into_iter().map(|(_, p)| p));
        }
        let (last, count, lines, _) = writer.finish();
        pages.extend(last.map(|(_, p)| p));
        assert_eq!(pages.len() as u64, count);
        (pages, lines, count)
    }

    #[test]
    fn pages_hold_whole_lines_and_number_them() {
        let line = "x".repeat(1_000);
        let text: String = (0..40).map(|n| format!("{n}{line}\n")).collect();
        for size in [1, 7, 4_096, text.len()] {
            let (pages, lines, count) = pages_of(&text, size);
            assert_eq!(lines, 40);
            assert!(count >= 2, "40 000 characters take more than one page");
            let mut next_line = 1;
            for page in &pages {
                assert_eq!(page.first_line, next_line);
                assert!(page.text.chars().count() <= TEXT_PAGE_CHARS_MAX + 1_002);
                next_line += page.text.split('\n').count() as u64;
            }
            assert_eq!(next_line, 41);
            let rebuilt: Vec<&str> = pages.iter().flat_map(|p| p.text.split('\n')).collect();
            assert_eq!(rebuilt.join("\n") + "\n", text);
        }
        // A line longer than a page is broken into page-long lines.
        let long = "y".repeat(TEXT_PAGE_CHARS_MAX * 2 + 5);
        let (pages, lines, _) = pages_of(&long, 999);
        assert_eq!(lines, 3);
        let rebuilt: String = pages.iter().flat_map(|p| p.text.split('\n')).collect();
        assert_eq!(rebuilt, long);
        let (pages, lines, _) = pages_of("", 1);
        assert!(pages.is_empty());
        assert_eq!(lines, 0);
    }
}
