//! What an agent sees of its folders: attaching and detaching folders
//! (the file tools come with the first and go with the last), the files it
//! holds open (routes and its own `open_files` calls), its file tools
//! (`open_files`, `grep_files`, `semantic_search_files`, run by the
//! service before the step commits, their changes to the open files
//! committed with it), and keeping every attached agent's copy of a
//! folder current as files arrive, go, or the folder changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use kelpie_core::Env;
use kelpie_llm::{ChatModel, ToolCall};
use kelpie_tools::builtin::{GREP_FILES, OPEN_FILES, SEMANTIC_SEARCH_FILES};
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::folders::Folders;
use crate::actors::agent::{AgentCommand, AgentReply, ExternalResult};
use crate::actors::folder::{FileRecord, FolderCommand, FolderReply, GrepMatch, GREP_MATCHES_COUNT_MAX};
use crate::actors::folder_store::{FolderRecord, FolderStoreCommand};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::files::{apply, render_window, truncate_visible, AgentFolder, FileOp, OpenFile};
use crate::letta::agent_folder_json;
use crate::limits::TOOL_RETURN_CHARS_MAX;
use crate::model::AgentRecord;
use crate::page::{paginate, Page};

/// Grep matches one `grep_files` answer shows.
const GREP_PAGE_COUNT: usize = 20;
/// Results of `semantic_search_files` when the agent does not say, and most.
const SEMANTIC_RESULTS_COUNT_DEFAULT: usize = 5;
const SEMANTIC_RESULTS_COUNT_MAX: usize = 50;
/// Lines of one passage `semantic_search_files` shows.
const SEMANTIC_PASSAGE_LINES_MAX: usize = 20;
/// Longest grep pattern, in bytes.
const GREP_PATTERN_BYTES_MAX: usize = 1_000;

pub struct AgentFiles {
    folders: Arc<Folders>,
    actors: Arc<AgentActors>,
    llm: Arc<dyn ChatModel>,
    env: Env,
}

/// Letta's `AgentFileAttachment` of a file.
fn attachment_json(agent: &AgentRecord, folder: &AgentFolder, file: &FileRecord) -> Value {
    let open = agent.open_files.iter().find(|open| open.file_id == file.id);
    json!({
        "id": file.id, "file_id": file.id, "file_name": format!("{}/{}", folder.name, file.file_name),
        "folder_id": folder.id, "folder_name": folder.name, "is_open": open.is_some(),
        "last_accessed_at": open.map(|open| crate::ids::rfc3339_micros(open.accessed_ms)),
        "visible_content": open.map(|open| open.visible.clone()),
        "start_line": open.and_then(|open| open.start_line), "end_line": open.and_then(|open| open.end_line),
    })
}

/// A glob such as `*.md` as an anchored regex; anything else as given.
fn include_regex(include: &str) -> String {
    let glob_only = include.chars().all(|c| c.is_alphanumeric() || "*._-/ ".contains(c));
    if glob_only && include.contains('*') {
        format!("{}$", regex::escape(include).replace("\\*", ".*"))
    } else {
        include.to_string()
    }
}

impl AgentFiles {
    pub(crate) fn new(
        folders: Arc<Folders>,
        actors: Arc<AgentActors>,
        llm: Arc<dyn ChatModel>,
        env: Env,
    ) -> Self {
        AgentFiles { folders, actors, llm, env }
    }

    async fn set_folder(
        &self,
        agent_id: &str,
        folder_id: &str,
        folder: Option<AgentFolder>,
    ) -> ServiceResult<AgentRecord> {
        let command =
            AgentCommand::SetFolder { folder_id: folder_id.to_string(), folder: folder.map(Box::new) };
        self.actors.invoke_for_agent(agent_id, command).await
    }

    async fn file_ops(&self, agent_id: &str, ops: Vec<FileOp>) -> ServiceResult<Vec<String>> {
        match self.actors.invoke(agent_id, AgentCommand::FileOps(ops)).await? {
            AgentReply::FilesClosed { closed, .. } => Ok(closed),
            _ => Err(unexpected("file ops")),
        }
    }

    /// File `file` of folder `folder` opened for `agent` from line `start`
    /// to `end` (1-based, inclusive; `None`: the whole file).
    async fn open_view(
        &self,
        agent: &AgentRecord,
        folder: &AgentFolder,
        file: &FileRecord,
        (start, end): (Option<u64>, Option<u64>),
    ) -> ServiceResult<OpenFile> {
        let (_, chars_limit) = agent.file_limits();
        let chars_read = (chars_limit as usize).saturating_add(1);
        let lines = self
            .folders
            .read_lines(&folder.id, &file.id, (start.unwrap_or(1), end.unwrap_or(u64::MAX)), chars_read)
            .await?;
        let visible = truncate_visible(&render_window(&lines, file.lines_count, (start, end)), chars_limit);
        Ok(OpenFile {
            file_id: file.id.clone(),
            folder_id: folder.id.clone(),
            file_name: format!("{}/{}", folder.name, file.file_name),
            start_line: start,
            end_line: end,
            visible,
            accessed_ms: self.env.clock.wall_ms(),
        })
    }

    /// Attaches folder `folder_id` to agent `agent_id` and opens its first
    /// files (up to the agent's limit); the agent after, as Letta's `AgentState`.
    pub async fn attach(&self, agent_id: &str, folder_id: &str) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        let folder = self.folders.record(folder_id).await?;
        let snapshot = self.folders.snapshot(&folder).await?;
        self.folders
            .store(FolderStoreCommand::Attach {
                id: folder.id.clone(),
                agent_id: agent.id.clone(),
                attached: true,
            })
            .await?;
        let agent = self.set_folder(agent_id, folder_id, Some(snapshot.clone())).await?;
        let (max_open, _) = agent.file_limits();
        let mut ops = Vec::new();
        for file in self.folders.file_page(folder_id, None, None, max_open as usize, false).await? {
            if file.status == crate::actors::folder::FileStatus::Completed {
                ops.push(FileOp::Open(self.open_view(&agent, &snapshot, &file, (None, None)).await?));
            }
        }
        if !ops.is_empty() {
            self.file_ops(agent_id, ops).await?;
        }
        self.actors.render(&self.actors.record(agent_id).await?).await
    }

    /// Detaches the folder (its files close; the file tools go with the
    /// last folder); the agent after. Detaching a folder the agent does not
    /// hold changes nothing.
    pub async fn detach(&self, agent_id: &str, folder_id: &str) -> ServiceResult<Value> {
        self.actors.record(agent_id).await?;
        let agent = self.set_folder(agent_id, folder_id, None).await?;
        let detach = FolderStoreCommand::Attach {
            id: folder_id.to_string(),
            agent_id: agent_id.to_string(),
            attached: false,
        };
        match self.folders.store(detach).await {
            Ok(_) | Err(ServiceError::FolderNotFound(_)) => self.actors.render(&agent).await,
            Err(err) => Err(err),
        }
    }

    /// Every attached agent's copy of `folder` made current.
    pub(crate) async fn refresh(&self, folder: &FolderRecord) -> ServiceResult<()> {
        let snapshot = self.folders.snapshot(folder).await?;
        for agent_id in &folder.agent_ids {
            match self.set_folder(agent_id, &folder.id, Some(snapshot.clone())).await {
                Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// A file finished processing: every attached agent's copy is made
    /// current and the file opens in each (as Letta does).
    pub(crate) async fn file_completed(&self, folder_id: &str, file: &FileRecord) -> ServiceResult<()> {
        let folder = self.folders.record(folder_id).await?;
        if folder.agent_ids.is_empty() {
            return Ok(());
        }
        let snapshot = self.folders.snapshot(&folder).await?;
        for agent_id in &folder.agent_ids {
            let agent = match self.set_folder(agent_id, folder_id, Some(snapshot.clone())).await {
                Ok(agent) => agent,
                Err(ServiceError::AgentNotFound(_)) => continue,
                Err(err) => return Err(err),
            };
            let view = self.open_view(&agent, &snapshot, file, (None, None)).await?;
            self.file_ops(agent_id, vec![FileOp::Open(view)]).await?;
        }
        Ok(())
    }

    /// Folder `folder_id` changed (modified or lost a file): its agents'
    /// copies made current, `closed` closed in each.
    pub async fn folder_changed(&self, folder_id: &str, closed: Option<&str>) -> ServiceResult<()> {
        let folder = self.folders.record(folder_id).await?;
        self.refresh(&folder).await?;
        if let Some(file_id) = closed {
            for agent_id in &folder.agent_ids {
                match self.file_ops(agent_id, vec![FileOp::Close { file_id: file_id.to_string() }]).await {
                    Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// Deletes a folder and detaches it from its agents.
    pub async fn delete_folder(&self, folder_id: &str) -> ServiceResult<()> {
        let folder = self.folders.delete(folder_id).await?;
        for agent_id in &folder.agent_ids {
            match self.set_folder(agent_id, folder_id, None).await {
                Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// An agent is deleted: its folders forget it.
    pub async fn forget_agent(&self, agent_id: &str) -> ServiceResult<()> {
        self.folders.store(FolderStoreCommand::ForgetAgent { agent_id: agent_id.to_string() }).await?;
        Ok(())
    }

    /// `GET /v1/agents/{id}/folders`.
    pub async fn agent_folders(&self, agent_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let agent = self.actors.record(agent_id).await?;
        let folders: Vec<Value> = agent.folders.iter().map(agent_folder_json).collect();
        Ok(paginate(folders, crate::page::json_id, page))
    }

    /// `GET /v1/agents/{id}/files`: Letta's `PaginatedAgentFiles`.
    pub async fn agent_file_list(
        &self,
        agent_id: &str,
        page: &Page,
        is_open: Option<bool>,
    ) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        let mut all = Vec::new();
        for folder in &agent.folders {
            for file in self.folders.all_files(&folder.id).await? {
                let item = attachment_json(&agent, folder, &file);
                if is_open.is_none_or(|open| item["is_open"] == open) {
                    all.push(item);
                }
            }
        }
        let wider = Page { limit: page.limit + 1, ..page.clone() };
        let mut files = paginate(all, crate::page::json_id, &wider);
        let has_more = files.len() > page.limit;
        files.truncate(page.limit);
        let next_cursor = files.last().map(|file| file["id"].clone());
        Ok(
            json!({"files": files, "next_cursor": if has_more { next_cursor } else { None }, "has_more": has_more}),
        )
    }

    /// The attached folder holding file `file_id`, and the file.
    async fn find_file(
        &self,
        agent: &AgentRecord,
        file_id: &str,
    ) -> ServiceResult<(AgentFolder, FileRecord)> {
        for folder in &agent.folders {
            match self.folders.folder(&folder.id, FolderCommand::GetFile { id: file_id.to_string() }).await {
                Ok(FolderReply::File(file)) => return Ok((folder.clone(), *file)),
                Ok(_) => return Err(unexpected("folder file")),
                Err(ServiceError::FileNotFound(_) | ServiceError::FolderNotFound(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(ServiceError::FileNotFound(file_id.to_string()))
    }

    /// Opens a whole file; the names of the files closed to make room.
    pub async fn open(&self, agent_id: &str, file_id: &str) -> ServiceResult<Vec<String>> {
        let agent = self.actors.record(agent_id).await?;
        let (folder, file) = self.find_file(&agent, file_id).await?;
        let view = self.open_view(&agent, &folder, &file, (None, None)).await?;
        self.file_ops(agent_id, vec![FileOp::Open(view)]).await
    }

    pub async fn close(&self, agent_id: &str, file_id: &str) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        self.find_file(&agent, file_id).await?;
        self.file_ops(agent_id, vec![FileOp::Close { file_id: file_id.to_string() }]).await?;
        Ok(json!({"message": format!("File id={file_id} successfully closed")}))
    }

    pub async fn close_all(&self, agent_id: &str) -> ServiceResult<Vec<String>> {
        self.file_ops(agent_id, vec![FileOp::CloseAll]).await
    }

    /// Runs the file tool calls among `calls`; their results and the
    /// changes to the open files to commit with the step.
    pub(crate) async fn run_calls(
        &self,
        agent: &AgentRecord,
        calls: &[ToolCall],
    ) -> (Vec<ExternalResult>, Vec<FileOp>) {
        let mut results = Vec::new();
        let mut ops = Vec::new();
        let mut open = agent.open_files.clone();
        for call in calls {
            let args = match serde_json::from_str::<Value>(&call.arguments) {
                Ok(args @ Value::Object(_)) => args,
                _ => Value::Null,
            };
            let outcome = match call.name.as_str() {
                _ if args.is_null()
                    && [OPEN_FILES, GREP_FILES, SEMANTIC_SEARCH_FILES].contains(&call.name.as_str()) =>
                {
                    Err(format!("arguments of {} are not a JSON object", call.name))
                }
                OPEN_FILES => self.open_files(agent, &mut open, &args, &mut ops).await,
                GREP_FILES => self.grep_files(agent, &args).await,
                SEMANTIC_SEARCH_FILES => self.semantic_search(agent, &args).await,
                _ => continue,
            };
            let (result, ok) = match outcome {
                Ok(text) => (text, true),
                Err(text) => (text, false),
            };
            let result: String = result.chars().take(TOOL_RETURN_CHARS_MAX).collect();
            results.push(ExternalResult {
                tool_call_id: call.id.clone(),
                result,
                ok,
                stdout: None,
                stderr: None,
            });
        }
        (results, ops)
    }

    /// Runs one file tool call outside a turn (`POST
    /// /v1/agents/{id}/tools/{name}/run`), applying what it opens or closes
    /// at once.
    pub(crate) async fn run_tool(
        &self,
        agent: &AgentRecord,
        call: &ToolCall,
    ) -> ServiceResult<ExternalResult> {
        let (mut results, ops) = self.run_calls(agent, std::slice::from_ref(call)).await;
        if !ops.is_empty() {
            self.file_ops(&agent.id, ops).await?;
        }
        results.pop().ok_or_else(|| unexpected("a file tool run"))
    }

    /// The attached file the agent calls `name` (`folder/file`).
    async fn file_named(&self, agent: &AgentRecord, name: &str) -> Result<(AgentFolder, FileRecord), String> {
        let attached = || {
            let names: Vec<String> = agent
                .folders
                .iter()
                .flat_map(|folder| {
                    folder.files.iter().map(move |(_, file)| format!("'{}/{file}'", folder.name))
                })
                .collect();
            format!(
                "`{name}` not attached - did you get the filename correct? Currently you have the following files attached: [{}]",
                names.join(", ")
            )
        };
        let Some((folder_name, file_name)) = name.split_once('/') else { return Err(attached()) };
        let Some(folder) = agent.folders.iter().find(|folder| folder.name == folder_name) else {
            return Err(attached());
        };
        match self.folders.folder(&folder.id, FolderCommand::FileByName { name: file_name.to_string() }).await
        {
            Ok(FolderReply::File(file)) => Ok((folder.clone(), *file)),
            Ok(_) => Err(attached()),
            Err(err) => Err(err.to_string()),
        }
    }

    async fn open_files(
        &self,
        agent: &AgentRecord,
        open: &mut Vec<OpenFile>,
        args: &Value,
        ops: &mut Vec<FileOp>,
    ) -> Result<String, String> {
        let requests = args["file_requests"].as_array().cloned().unwrap_or_default();
        let (max_open, _) = agent.file_limits();
        if requests.is_empty() {
            return Err("No file requests provided".into());
        }
        if requests.len() > max_open as usize {
            return Err(format!(
                "Cannot open {} files: exceeds configured maximum limit of {max_open} files",
                requests.len()
            ));
        }
        let mut views = Vec::new();
        let mut summaries = Vec::new();
        for request in &requests {
            let name = request["file_name"].as_str().ok_or("each file request needs a file_name")?;
            let offset = request["offset"].as_i64();
            let length = request["length"].as_i64();
            if let Some(offset) = offset.filter(|offset| *offset < 0) {
                return Err(format!("Offset for file {name} must be >= 0 (0-indexed), got {offset}"));
            }
            if let Some(length) = length.filter(|length| *length < 1) {
                return Err(format!("Length for file {name} must be >= 1, got {length}"));
            }
            let (folder, file) = self.file_named(agent, name).await?;
            if file.status != crate::actors::folder::FileStatus::Completed {
                return Err(format!(
                    "File {name} is still {}; try again once it is completed",
                    file.status.as_str()
                ));
            }
            let start = offset.map(|offset| offset as u64 + 1);
            if let Some(start) = start.filter(|start| *start > file.lines_count.max(1)) {
                return Err(format!(
                    "File {name} has only {} lines, but requested offset {start} is out of range",
                    file.lines_count
                ));
            }
            let end = length.map(|length| (start.unwrap_or(1) + length as u64 - 1).min(file.lines_count));
            let view =
                self.open_view(agent, &folder, &file, (start, end)).await.map_err(|e| e.to_string())?;
            let lines = match (start, end) {
                (None, None) => String::new(),
                (start, Some(end)) => format!(" (lines {}-{end})", start.unwrap_or(1)),
                (Some(start), None) => format!(" (lines {start}-end)"),
            };
            let previously = match open.iter().find(|held| held.file_id == file.id) {
                Some(held) if (held.start_line, held.end_line) != (start, end) => {
                    match (held.start_line, held.end_line) {
                        (None, None) => " (previously full file)".to_string(),
                        (a, Some(b)) => format!(" (previously lines {}-{b})", a.unwrap_or(1)),
                        (Some(a), None) => format!(" (previously lines {a}-end)"),
                    }
                }
                _ => String::new(),
            };
            summaries.push(format!("{}{lines}{previously}", view.file_name));
            views.push(view);
        }
        let mut text = match summaries.len() {
            1 => format!("* Opened {}", summaries[0]),
            n => format!("* Opened {n} files: {}", summaries.join(", ")),
        };
        if args["close_all_others"].as_bool() == Some(true) {
            let keep: Vec<String> = views.iter().map(|view| view.file_id.clone()).collect();
            let op = FileOp::CloseOthers { keep };
            let closed = apply(open, op.clone(), max_open);
            ops.push(op);
            if !closed.is_empty() {
                text.push_str(&format!(
                    "\nNote: Closed {} file(s) due to close_all_others=True: {}",
                    closed.len(),
                    closed.join(", ")
                ));
            }
        }
        let mut evicted = Vec::new();
        for view in views {
            let op = FileOp::Open(view);
            evicted.extend(apply(open, op.clone(), max_open));
            ops.push(op);
        }
        if !evicted.is_empty() {
            text.push_str(&format!(
                "\nNote: Closed {} least recently used file(s) due to open file limit: {}",
                evicted.len(),
                evicted.join(", ")
            ));
        }
        Ok(text)
    }

    async fn grep_files(&self, agent: &AgentRecord, args: &Value) -> Result<String, String> {
        let pattern = args["pattern"].as_str().unwrap_or_default();
        if pattern.trim().is_empty() {
            return Err("Empty search pattern provided".into());
        }
        if pattern.len() > GREP_PATTERN_BYTES_MAX {
            return Err(format!("the pattern is over {GREP_PATTERN_BYTES_MAX} bytes"));
        }
        if agent.folders.is_empty() {
            return Ok("No files are currently attached to search".into());
        }
        let include = args["include"].as_str().filter(|include| !include.is_empty());
        let context_lines = args["context_lines"].as_u64().unwrap_or(1).min(10);
        let offset = args["offset"].as_u64().unwrap_or(0) as usize;
        let mut matches: Vec<GrepMatch> = Vec::new();
        let mut more = false;
        let mut searched = 0u64;
        for folder in &agent.folders {
            // `include` names files as the agent does: folder/file.
            let include = include.map(|include| {
                let regex = include_regex(include);
                match regex.strip_prefix(&regex::escape(&format!("{}/", folder.name))) {
                    Some(rest) => rest.to_string(),
                    None => regex,
                }
            });
            let command = FolderCommand::Grep {
                pattern: pattern.to_string(),
                include,
                context_lines,
                matches_max: GREP_MATCHES_COUNT_MAX - matches.len(),
            };
            match self.folders.folder(&folder.id, command).await {
                Ok(FolderReply::Matches { matches: found, files_searched, more: cut }) => {
                    searched += files_searched;
                    more |= cut;
                    matches.extend(found.into_iter().map(|mut hit| {
                        hit.file_name = format!("{}/{}", folder.name, hit.file_name);
                        hit
                    }));
                }
                Ok(_) => return Err("grep answered the wrong reply".into()),
                Err(err) => return Err(err.to_string()),
            }
            if matches.len() >= GREP_MATCHES_COUNT_MAX {
                more = true;
                break;
            }
        }
        if let (Some(include), 0) = (include, searched) {
            return Ok(format!("No files match the filename pattern '{include}'"));
        }
        if matches.is_empty() {
            let scope = include.map(|include| format!(" in files matching '{include}'")).unwrap_or_default();
            return Ok(format!("No matches found for pattern: '{pattern}'{scope}"));
        }
        Ok(grep_text(pattern, &matches, offset, more))
    }

    async fn semantic_search(&self, agent: &AgentRecord, args: &Value) -> Result<String, String> {
        let query = args["query"].as_str().unwrap_or_default();
        if query.trim().is_empty() {
            return Err("Empty search query provided".into());
        }
        let limit = args["limit"]
            .as_u64()
            .map_or(SEMANTIC_RESULTS_COUNT_DEFAULT, |limit| limit as usize)
            .clamp(1, SEMANTIC_RESULTS_COUNT_MAX);
        // Each folder's passages were embedded with its own embedding, and
        // the query is too.
        let mut queries: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut found = Vec::new();
        for folder in &agent.folders {
            if !queries.contains_key(&folder.embedding.handle) {
                let mut vectors = self
                    .llm
                    .embed(&folder.embedding, &[query.to_string()])
                    .await
                    .map_err(|e| e.to_string())?;
                queries.insert(folder.embedding.handle.clone(), vectors.pop().unwrap_or_default());
            }
            let query_vector = queries[&folder.embedding.handle].clone();
            match self
                .folders
                .folder(&folder.id, FolderCommand::Search { query: query_vector, top_k: limit })
                .await
            {
                Ok(FolderReply::Passages(passages)) => {
                    found.extend(passages.into_iter().map(|(passage, score)| {
                        (format!("{}/{}", folder.name, passage.file_name), passage.text, score)
                    }))
                }
                Ok(_) => return Err("search answered the wrong reply".into()),
                Err(err) => return Err(err.to_string()),
            }
        }
        found.sort_by(|a, b| b.2.total_cmp(&a.2));
        found.truncate(limit);
        if found.is_empty() {
            return Ok(format!("No semantic matches found for query: '{query}'"));
        }
        let files: std::collections::BTreeSet<&str> =
            found.iter().map(|(name, _, _)| name.as_str()).collect();
        let summary =
            format!("Found {} semantic matches in {} file(s) for query: '{query}'", found.len(), files.len());
        let mut text = format!("{summary}\n{}", "=".repeat(summary.chars().count()));
        let mut passage_numbers: BTreeMap<&str, usize> = BTreeMap::new();
        for (name, passage, _) in &found {
            let number = passage_numbers.entry(name.as_str()).or_insert(0);
            *number += 1;
            text.push_str(&format!("\n\n=== {name} (passage #{number}) ==="));
            let lines: Vec<&str> = passage.lines().collect();
            for line in lines.iter().take(SEMANTIC_PASSAGE_LINES_MAX) {
                text.push_str(&format!("\n  {line}"));
            }
            if lines.len() > SEMANTIC_PASSAGE_LINES_MAX {
                text.push_str(&format!(
                    "\n  ... [truncated {} more lines]",
                    lines.len() - SEMANTIC_PASSAGE_LINES_MAX
                ));
            }
        }
        Ok(text)
    }
}

/// Letta's rendering of grep matches: a summary, the files with their
/// counts, then `GREP_PAGE_COUNT` matches from `offset` with their context.
fn grep_text(pattern: &str, matches: &[GrepMatch], offset: usize, more: bool) -> String {
    let total = matches.len();
    let shown_to = (offset + GREP_PAGE_COUNT).min(total);
    let plus = if more { "+" } else { "" };
    let mut per_file: BTreeMap<&str, usize> = BTreeMap::new();
    for hit in matches {
        *per_file.entry(hit.file_name.as_str()).or_insert(0) += 1;
    }
    let mut files: Vec<(&str, usize)> = per_file.into_iter().collect();
    files.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut text = format!(
        "Found {total}{plus} total matches across {} files (showing matches {}-{shown_to} of {total}{plus})\n{}\n\nFiles with matches:",
        files.len(),
        (offset + 1).min(total),
        "=".repeat(80)
    );
    for (file, count) in &files {
        text.push_str(&format!("\n  - {file}: {count} matches"));
    }
    text.push('\n');
    for hit in matches.iter().skip(offset).take(GREP_PAGE_COUNT) {
        text.push_str(&format!("\n=== {}:{} ===", hit.file_name, hit.line));
        for (number, line) in &hit.context {
            let mark = if *number == hit.line { ">" } else { " " };
            text.push_str(&format!("\n{mark} {number}: {line}"));
        }
        text.push('\n');
    }
    if shown_to < total || more {
        text.push_str(&format!(
            "\nTo see more matches, call: grep_files(pattern=\"{pattern}\", offset={shown_to})"
        ));
    } else {
        text.push_str("\nNo more matches to show.");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_anchored_regexes_and_regexes_stay() {
        assert_eq!(include_regex("*.md"), ".*\\.md$");
        assert_eq!(include_regex("notes.*txt$"), "notes.*txt$");
        assert_eq!(include_regex("report"), "report");
    }

    #[test]
    fn grep_text_pages_and_counts() {
        let hit = |file: &str, line: u64| GrepMatch {
            file_name: file.into(),
            line,
            context: vec![(line, format!("line {line}"))],
        };
        let matches: Vec<GrepMatch> =
            (1..=25).map(|n| hit(if n % 2 == 0 { "d/a.txt" } else { "d/b.txt" }, n)).collect();
        let text = grep_text("line", &matches, 0, false);
        assert!(text.starts_with("Found 25 total matches across 2 files (showing matches 1-20 of 25)"));
        assert!(text.contains("  - d/b.txt: 13 matches\n  - d/a.txt: 12 matches"));
        assert!(text.contains("=== d/b.txt:1 ===\n> 1: line 1"));
        assert!(text.ends_with("To see more matches, call: grep_files(pattern=\"line\", offset=20)"));
        let last = grep_text("line", &matches, 20, false);
        assert!(last.contains("showing matches 21-25 of 25"));
        assert!(last.ends_with("No more matches to show."));
    }
}
