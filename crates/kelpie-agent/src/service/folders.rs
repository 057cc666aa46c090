//! Folders (Letta's `/v1/folders`, and `/v1/sources`, their older name)
//! and their files: create, list, modify and delete folders; upload files
//! into them (streamed to storage in `UPLOAD_CHUNK_BYTES` pieces, so no
//! upload sits in memory whole), list, read and delete files; the
//! passages their processing made. Processing itself is
//! [`super::documents`]; what an agent sees of its folders is
//! [`super::agent_files`].
//!
//! The folder store holds each folder's record and the agents it is
//! attached to; each folder's actor holds its files. A file is listed once
//! its upload has ended (`pending`), and searched once `completed`.

use std::sync::Arc;

use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;
use serde_json::{json, Value};

use crate::actors::folder::{
    DuplicateHandling, FilePassage, FileRecord, FileStatus, FolderActor, FolderCommand, FolderReply,
    FILE_BYTES_MAX, FOLDER_NAMESPACE, UPLOAD_CHUNK_BYTES,
};
use crate::actors::folder_store::{
    FolderRecord, FolderStoreActor, FolderStoreCommand, FolderStoreReply, FOLDER_STORE_ACTOR,
};
use crate::documents::parse;
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::files::{AgentFolder, PROMPT_FOLDER_FILES_COUNT_MAX};
use crate::ids::{new_id, rfc3339_micros};
use crate::letta::embedding_settings_json;
use crate::page::{json_id, paginate, Page};

/// Most characters of a file's text `include_content` answers.
pub const FILE_CONTENT_CHARS_MAX: usize = 10 * 1024 * 1024;

/// What a create or modify sets; `None` keeps (modify) or leaves empty.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FolderInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub instructions: Option<String>,
    #[serde(default, deserialize_with = "crate::requests::metadata_object")]
    pub metadata: Option<Value>,
    pub embedding: Option<String>,
    pub embedding_config: Option<crate::requests::EmbeddingConfigIn>,
    pub embedding_chunk_size: Option<u64>,
}

/// Letta's `Folder` (`legacy`: its older `Source`, with `vector_db_provider`).
pub fn folder_json(folder: &FolderRecord, legacy: bool) -> Value {
    let mut value = json!({
        "id": folder.id, "name": folder.name, "description": folder.description,
        "instructions": folder.instructions, "metadata": folder.metadata,
        "embedding_config": embedding_settings_json(&folder.embedding),
        "organization_id": null, "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(folder.created_ms), "updated_at": rfc3339_micros(folder.updated_ms),
    });
    if legacy {
        value["vector_db_provider"] = json!("native");
    }
    value
}

/// Letta's `FileMetadata`; `folder_name` prefixes the name (as the upload
/// answer and agents show it) when given.
pub fn file_json(file: &FileRecord, folder_name: Option<&str>, content: Option<String>) -> Value {
    let file_name = match folder_name {
        Some(folder) => format!("{folder}/{}", file.file_name),
        None => file.file_name.clone(),
    };
    json!({
        "id": file.id, "source_id": file.folder_id, "file_name": file_name,
        "original_file_name": file.original_file_name, "file_path": null, "file_type": file.file_type,
        "file_size": file.size_bytes, "file_creation_date": null, "file_last_modified_date": null,
        "processing_status": file.status.as_str(), "error_message": file.error_message,
        "total_chunks": file.total_chunks, "chunks_embedded": file.chunks_embedded, "content": content,
        "organization_id": null,
        "created_at": rfc3339_micros(file.created_ms), "updated_at": rfc3339_micros(file.updated_ms),
    })
}

/// Letta's `Passage` of a folder's file.
fn passage_json(passage: &FilePassage, folder: &FolderRecord) -> Value {
    json!({
        "id": passage.id, "text": passage.text, "embedding": passage.embedding,
        "embedding_config": embedding_settings_json(&folder.embedding),
        "file_id": passage.file_id, "file_name": format!("{}/{}", folder.name, passage.file_name),
        "source_id": folder.id, "archive_id": null, "metadata": {}, "tags": null, "is_deleted": false,
        "organization_id": null, "created_by_id": null, "last_updated_by_id": null,
        "created_at": rfc3339_micros(passage.created_ms), "updated_at": rfc3339_micros(passage.created_ms),
    })
}

/// A file name as given by a client: its last path segment, which must not
/// be empty or hidden.
fn clean_file_name(name: &str) -> ServiceResult<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if base.is_empty() || base.starts_with('.') {
        return Err(ServiceError::Refused(format!("file name {name:?} is empty or starts with a dot")));
    }
    Ok(base.to_string())
}

pub struct Folders {
    store: Runtime<FolderStoreActor>,
    folders: Runtime<FolderActor>,
    providers: Arc<super::providers::Providers>,
    env: Env,
    /// Woken when a file is ready to process (see [`super::documents`]).
    pub(crate) work: Arc<tokio::sync::Notify>,
}

/// An upload in progress: feed it the file's bytes, then finish or cancel.
pub struct FileUpload<'a> {
    folders: &'a Folders,
    folder: FolderRecord,
    record: FileRecord,
    buffer: Vec<u8>,
    chunk: u64,
    size_bytes: u64,
}

/// What beginning an upload gave.
pub enum UploadStart<'a> {
    Upload(Box<FileUpload<'a>>),
    /// `skip` found a file of that name: it, as Letta answers it.
    Skipped(Value),
}

impl FileUpload<'_> {
    async fn flush(&mut self) -> ServiceResult<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.buffer);
        let now_ms = self.folders.env.clock.wall_ms();
        let command = FolderCommand::WriteUpload { seq: self.record.seq, chunk: self.chunk, bytes, now_ms };
        self.folders.folder(&self.folder.id, command).await?;
        self.chunk += 1;
        Ok(())
    }

    /// Takes the next bytes of the file; refused past `FILE_BYTES_MAX`.
    pub async fn feed(&mut self, mut bytes: &[u8]) -> ServiceResult<()> {
        self.size_bytes += bytes.len() as u64;
        if self.size_bytes > FILE_BYTES_MAX {
            return Err(ServiceError::TooLarge(format!(
                "file {} is over FILE_BYTES_MAX = {FILE_BYTES_MAX} bytes",
                self.record.original_file_name
            )));
        }
        while !bytes.is_empty() {
            let room = UPLOAD_CHUNK_BYTES - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == UPLOAD_CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// The upload is whole: the file is listed as `pending` and its
    /// processing begins; Letta's `FileMetadata` of it.
    pub async fn finish(mut self) -> ServiceResult<Value> {
        self.flush().await?;
        let now_ms = self.folders.env.clock.wall_ms();
        let command = FolderCommand::EndUpload { seq: self.record.seq, size_bytes: self.size_bytes, now_ms };
        let FolderReply::File(record) = self.folders.folder(&self.folder.id, command).await? else {
            return Err(unexpected("end upload"));
        };
        // The folder is busy since the upload began.
        self.folders.work.notify_one();
        Ok(file_json(&record, Some(&self.folder.name), None))
    }

    /// Drops what was received (the worker reclaims its chunks).
    pub async fn cancel(self) {
        let command = FolderCommand::AbortFile { seq: self.record.seq };
        if let Err(err) = self.folders.folder(&self.folder.id, command).await {
            // Left receiving: the worker drops it after UPLOAD_IDLE_MS.
            tracing::warn!(%err, "dropping a cancelled upload failed");
        }
        self.folders.work.notify_one();
    }
}

impl Folders {
    pub(crate) fn new(
        store: Runtime<FolderStoreActor>,
        folders: Runtime<FolderActor>,
        providers: Arc<super::providers::Providers>,
        env: Env,
    ) -> Self {
        Folders { store, folders, providers, env, work: Arc::new(tokio::sync::Notify::new()) }
    }

    fn store_id() -> ActorId {
        ActorId::new(FOLDER_STORE_ACTOR.0, FOLDER_STORE_ACTOR.1).expect("a valid actor id")
    }

    pub(crate) async fn store(&self, command: FolderStoreCommand) -> ServiceResult<FolderStoreReply> {
        match self.store.invoke(&Self::store_id(), command).await? {
            FolderStoreReply::NameTaken(name) => Err(ServiceError::FolderNameTaken(name)),
            reply => Ok(reply),
        }
    }

    /// Sends `command` to folder `folder_id`'s actor.
    pub(crate) async fn folder(&self, folder_id: &str, command: FolderCommand) -> ServiceResult<FolderReply> {
        if !folder_id.starts_with("source-") {
            return Err(ServiceError::FolderNotFound(folder_id.to_string()));
        }
        let actor_id = ActorId::new(FOLDER_NAMESPACE, folder_id)
            .map_err(|_| ServiceError::FolderNotFound(folder_id.to_string()))?;
        Ok(self.folders.invoke(&actor_id, command).await?)
    }

    /// Marks folder `folder_id` as having work for the worker.
    pub(crate) async fn mark_busy(&self, folder_id: &str) -> ServiceResult<()> {
        self.store(FolderStoreCommand::MarkBusy { id: folder_id.to_string() }).await?;
        Ok(())
    }

    /// Whether folder `folder_id` has work left: files to process or keys
    /// to reclaim (a deleted folder until it is reclaimed and forgotten).
    pub async fn has_work(&self, folder_id: &str) -> ServiceResult<bool> {
        match self.folder(folder_id, FolderCommand::HasWork).await? {
            FolderReply::Work(work) => Ok(work),
            _ => Err(unexpected("folder work")),
        }
    }

    /// Folder `id`'s record.
    pub async fn record(&self, id: &str) -> ServiceResult<FolderRecord> {
        match self.store(FolderStoreCommand::Get { id: id.to_string() }).await? {
            FolderStoreReply::Folder(folder) => Ok(*folder),
            _ => Err(unexpected("folder get")),
        }
    }

    /// Every folder, oldest first.
    pub async fn records(&self) -> ServiceResult<Vec<FolderRecord>> {
        match self.store(FolderStoreCommand::List).await? {
            FolderStoreReply::Folders(folders) => Ok(folders),
            _ => Err(unexpected("folder list")),
        }
    }

    pub async fn create(&self, input: FolderInput, legacy: bool) -> ServiceResult<Value> {
        self.create_as(self.new_folder_id(), input, legacy).await
    }

    /// A new folder's id, for [`Self::create_as`].
    pub(crate) fn new_folder_id(&self) -> String {
        new_id("source", self.env.rng.as_ref())
    }

    /// Creates the folder under `id` (drawn by [`Self::new_folder_id`]).
    pub(crate) async fn create_as(
        &self,
        id: String,
        input: FolderInput,
        legacy: bool,
    ) -> ServiceResult<Value> {
        assert!(id.starts_with("source-"), "a folder's id: {id}");
        let name = input.name.clone().ok_or_else(|| ServiceError::Invalid("name is required".into()))?;
        let from_config = input.embedding_config.as_ref().and_then(|config| config.handle());
        let embedding =
            self.providers.resolve_embedding(input.embedding.as_deref().or(from_config.as_deref())).await?;
        let now = self.env.clock.wall_ms();
        let record = FolderRecord {
            id,
            name,
            description: input.description,
            instructions: input.instructions,
            metadata: input.metadata,
            embedding,
            agent_ids: Vec::new(),
            created_ms: now,
            updated_ms: now,
        };
        match self.store(FolderStoreCommand::Create(Box::new(record))).await? {
            FolderStoreReply::Folder(folder) => Ok(folder_json(&folder, legacy)),
            _ => Err(unexpected("folder create")),
        }
    }

    /// `GET /v1/folders/`: a page of folders, of one name when given.
    pub async fn list(&self, name: Option<&str>, page: &Page, legacy: bool) -> ServiceResult<Vec<Value>> {
        let folders: Vec<Value> = self
            .records()
            .await?
            .iter()
            .filter(|folder| name.is_none_or(|name| folder.name == name))
            .map(|folder| folder_json(folder, legacy))
            .collect();
        Ok(paginate(folders, json_id, page))
    }

    pub async fn count(&self) -> ServiceResult<usize> {
        Ok(self.records().await?.len())
    }

    pub async fn get(&self, id: &str, legacy: bool) -> ServiceResult<Value> {
        Ok(folder_json(&self.record(id).await?, legacy))
    }

    /// The id of the folder named `name`.
    pub async fn id_by_name(&self, name: &str) -> ServiceResult<String> {
        self.records()
            .await?
            .into_iter()
            .find(|folder| folder.name == name)
            .map(|folder| folder.id)
            .ok_or_else(|| ServiceError::FolderNotFound(name.to_string()))
    }

    /// Sets what `input` gives; the folder after (its agents see the new
    /// name, description and instructions: see [`super::agent_files`]).
    pub async fn modify(&self, id: &str, input: FolderInput) -> ServiceResult<FolderRecord> {
        let mut record = self.record(id).await?;
        if let Some(name) = input.name {
            record.name = name;
        }
        if input.description.is_some() {
            record.description = input.description;
        }
        if input.instructions.is_some() {
            record.instructions = input.instructions;
        }
        if input.metadata.is_some() {
            record.metadata = input.metadata;
        }
        if input.embedding.is_some() || input.embedding_config.is_some() {
            return Err(ServiceError::Refused(
                "a folder's embedding cannot change: its files are indexed with it".into(),
            ));
        }
        record.updated_ms = self.env.clock.wall_ms();
        match self.store(FolderStoreCommand::Replace(Box::new(record))).await? {
            FolderStoreReply::Folder(folder) => Ok(*folder),
            _ => Err(unexpected("folder modify")),
        }
    }

    /// Gone at once (not listed, its name free); its files are reclaimed in
    /// the background. The folder as it was (its agents to detach).
    pub async fn delete(&self, id: &str) -> ServiceResult<FolderRecord> {
        let FolderStoreReply::Folder(folder) =
            self.store(FolderStoreCommand::Delete { id: id.to_string() }).await?
        else {
            return Err(unexpected("folder delete"));
        };
        self.folder(id, FolderCommand::DeleteAll).await?;
        self.work.notify_one();
        Ok(*folder)
    }

    /// `GET /v1/folders/metadata`: totals, and per folder when `detailed`.
    pub async fn metadata(&self, detailed: bool) -> ServiceResult<Value> {
        let mut folders = self.records().await?;
        folders.sort_by(|a, b| a.name.cmp(&b.name));
        let (mut total_files, mut total_size) = (0u64, 0u64);
        let mut sources = Vec::new();
        for folder in &folders {
            let FolderReply::Stats { files_count, files_bytes } =
                self.folder(&folder.id, FolderCommand::Stats).await?
            else {
                return Err(unexpected("folder stats"));
            };
            total_files += files_count;
            total_size += files_bytes;
            if detailed {
                let files = self.all_files(&folder.id).await?;
                let files: Vec<Value> = files
                    .iter()
                    .map(|file| json!({"file_id": file.id, "file_name": format!("{}/{}", folder.name, file.file_name), "file_size": file.size_bytes}))
                    .collect();
                sources.push(json!({
                    "source_id": folder.id, "source_name": folder.name, "file_count": files_count,
                    "total_size": files_bytes, "files": files,
                }));
            }
        }
        Ok(json!({
            "total_sources": folders.len(), "total_files": total_files, "total_size": total_size, "sources": sources,
        }))
    }

    /// Every listed file of a folder, page by page.
    pub(crate) async fn all_files(&self, folder_id: &str) -> ServiceResult<Vec<FileRecord>> {
        let mut files: Vec<FileRecord> = Vec::new();
        loop {
            let after = files.last().map(|file| file.id.clone());
            let page =
                self.file_page(folder_id, after, None, crate::limits::STORE_PAGE_COUNT_MAX, false).await?;
            let full = page.len() == crate::limits::STORE_PAGE_COUNT_MAX;
            files.extend(page);
            if !full {
                return Ok(files);
            }
        }
    }

    pub(crate) async fn file_page(
        &self,
        folder_id: &str,
        after: Option<String>,
        before: Option<String>,
        limit: usize,
        descending: bool,
    ) -> ServiceResult<Vec<FileRecord>> {
        match self.folder(folder_id, FolderCommand::ListFiles { after, before, limit, descending }).await? {
            FolderReply::Files(files) => Ok(files),
            _ => Err(unexpected("folder files")),
        }
    }

    /// Begins an upload of `file_name` (typed `content_type` by the
    /// client) into folder `folder_id`: refused at once (415) when no
    /// parser reads its type.
    pub async fn begin_upload(
        &self,
        folder_id: &str,
        (file_name, content_type): (&str, Option<&str>),
        duplicate: DuplicateHandling,
    ) -> ServiceResult<UploadStart<'_>> {
        let kind = parse::detect(file_name, content_type)
            .map_err(|e| ServiceError::UnsupportedType(e.to_string()))?;
        let folder = self.record(folder_id).await?;
        let original = clean_file_name(file_name)?;
        let now = self.env.clock.wall_ms();
        let record = FileRecord {
            id: new_id("file", self.env.rng.as_ref()),
            seq: 0,
            folder_id: folder.id.clone(),
            file_name: original.clone(),
            file_type: parse::file_mime_type(kind, &original).to_string(),
            original_file_name: original,
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
            created_ms: now,
            updated_ms: now,
        };
        // Busy before the first byte is stored: an upload cut off by a crash
        // is found and dropped by the worker after the restart.
        self.mark_busy(folder_id).await?;
        let command = FolderCommand::BeginFile { record: Box::new(record), duplicate };
        match self.folder(folder_id, command).await? {
            FolderReply::Began { record, .. } => Ok(UploadStart::Upload(Box::new(FileUpload {
                folders: self,
                folder,
                record: *record,
                buffer: Vec::with_capacity(UPLOAD_CHUNK_BYTES),
                chunk: 0,
                size_bytes: 0,
            }))),
            FolderReply::Skipped(record) => {
                Ok(UploadStart::Skipped(file_json(&record, Some(&folder.name), None)))
            }
            _ => Err(unexpected("begin upload")),
        }
    }

    /// The text of a completed file, at most `FILE_CONTENT_CHARS_MAX`
    /// characters; `None` before it is completed.
    async fn content(&self, file: &FileRecord) -> ServiceResult<Option<String>> {
        if file.status != FileStatus::Completed {
            return Ok(None);
        }
        let lines = self.read_lines(&file.folder_id, &file.id, (1, u64::MAX), FILE_CONTENT_CHARS_MAX).await?;
        Ok(Some(lines.into_iter().map(|(_, line)| line).collect::<Vec<_>>().join("\n")))
    }

    /// Lines `first..=last` of a completed file, at most `chars_max` characters.
    pub(crate) async fn read_lines(
        &self,
        folder_id: &str,
        file_id: &str,
        (first_line, last_line): (u64, u64),
        chars_max: usize,
    ) -> ServiceResult<Vec<(u64, String)>> {
        let command = FolderCommand::ReadLines { id: file_id.to_string(), first_line, last_line, chars_max };
        match self.folder(folder_id, command).await? {
            FolderReply::Lines(lines) => Ok(lines),
            _ => Err(unexpected("read lines")),
        }
    }

    /// `GET /v1/folders/{id}/files`.
    pub async fn list_files(
        &self,
        folder_id: &str,
        page: &Page,
        include_content: bool,
    ) -> ServiceResult<Vec<Value>> {
        self.record(folder_id).await?;
        let files = self
            .file_page(folder_id, page.after.clone(), page.before.clone(), page.limit, page.descending)
            .await?;
        let mut out = Vec::with_capacity(files.len());
        for file in &files {
            let content = if include_content { self.content(file).await? } else { None };
            out.push(file_json(file, None, content));
        }
        Ok(out)
    }

    /// File `file_id` of folder `folder_id`.
    pub async fn file(&self, folder_id: &str, file_id: &str) -> ServiceResult<FileRecord> {
        self.record(folder_id).await?;
        match self.folder(folder_id, FolderCommand::GetFile { id: file_id.to_string() }).await? {
            FolderReply::File(file) => Ok(*file),
            _ => Err(unexpected("folder file")),
        }
    }

    pub async fn get_file(
        &self,
        folder_id: &str,
        file_id: &str,
        include_content: bool,
    ) -> ServiceResult<Value> {
        let file = self.file(folder_id, file_id).await?;
        let content = if include_content { self.content(&file).await? } else { None };
        Ok(file_json(&file, None, content))
    }

    /// Deletes a file (its agents close it: see [`super::agent_files`]).
    pub async fn delete_file(&self, folder_id: &str, file_id: &str) -> ServiceResult<FileRecord> {
        self.record(folder_id).await?;
        let FolderReply::File(file) =
            self.folder(folder_id, FolderCommand::DeleteFile { id: file_id.to_string() }).await?
        else {
            return Err(unexpected("delete file"));
        };
        self.mark_busy(folder_id).await?;
        self.work.notify_one();
        Ok(*file)
    }

    /// `GET /v1/folders/{id}/passages`.
    pub async fn passages(&self, folder_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let folder = self.record(folder_id).await?;
        let command = FolderCommand::ListPassages {
            after: page.after.clone(),
            before: page.before.clone(),
            limit: page.limit,
            descending: page.descending,
        };
        let FolderReply::Passages(passages) = self.folder(folder_id, command).await? else {
            return Err(unexpected("folder passages"));
        };
        Ok(passages.iter().map(|(passage, _)| passage_json(passage, &folder)).collect())
    }

    /// `GET /v1/folders/{id}/agents`: the ids of the attached agents.
    pub async fn agents(&self, folder_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let folder = self.record(folder_id).await?;
        let ids: Vec<Value> = folder.agent_ids.iter().map(|id| json!({"id": id})).collect();
        Ok(paginate(ids, json_id, page).into_iter().map(|item| item["id"].clone()).collect())
    }

    /// What an agent holds of folder `folder`: its record and first files.
    pub(crate) async fn snapshot(&self, folder: &FolderRecord) -> ServiceResult<AgentFolder> {
        let FolderReply::Stats { files_count, .. } = self.folder(&folder.id, FolderCommand::Stats).await?
        else {
            return Err(unexpected("folder stats"));
        };
        let files = self.file_page(&folder.id, None, None, PROMPT_FOLDER_FILES_COUNT_MAX, false).await?;
        Ok(AgentFolder {
            id: folder.id.clone(),
            name: folder.name.clone(),
            description: folder.description.clone(),
            instructions: folder.instructions.clone(),
            metadata: folder.metadata.clone(),
            embedding: folder.embedding.clone(),
            created_ms: folder.created_ms,
            updated_ms: folder.updated_ms,
            files_count,
            files: files.into_iter().map(|file| (file.id, file.file_name)).collect(),
        })
    }

    pub async fn shutdown(&self) {
        self.folders.shutdown().await;
        self.store.shutdown().await;
    }
}
