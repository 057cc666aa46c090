//! `/v1/folders` and `/v1/sources` (their older name; `LEGACY` renders
//! Letta's `Source`), uploads into them, and an agent's folders and open
//! files (see `kelpie_agent::service::{folders, agent_files}`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use futures::StreamExt;
use kelpie_agent::actors::folder::DuplicateHandling;
use kelpie_agent::service::folders::{FolderInput, UploadStart};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, unread_body_error, ApiJson, ApiQuery};
use super::multipart::{self, FormEvent, FormReader};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Folders per page when the client does not say (Letta's default).
const FOLDER_PAGE_COUNT_DEFAULT: usize = 50;
/// Files per page when the client does not say (Letta's default).
const FILE_PAGE_COUNT_DEFAULT: usize = 1_000;
/// Passages per page when the client does not say (Letta's default).
const PASSAGE_PAGE_COUNT_DEFAULT: usize = 100;
/// An agent's folders and files per page when the client does not say.
const AGENT_FILES_PAGE_COUNT_DEFAULT: usize = 100;
/// Longest form field other than the file, in bytes.
const UPLOAD_FIELD_BYTES_MAX: usize = 4 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/folders", get(list::<false>).post(create::<false>))
        .route("/v1/folders/", get(list::<false>).post(create::<false>))
        .route("/v1/folders/count", get(count))
        .route("/v1/folders/metadata", get(metadata))
        .route("/v1/folders/name/{folder_name}", get(id_by_name))
        .route("/v1/folders/{folder_id}", get(retrieve::<false>).patch(modify::<false>).delete(remove))
        .route("/v1/folders/{folder_id}/upload", post(upload))
        .route("/v1/folders/{folder_id}/agents", get(agents))
        .route("/v1/folders/{folder_id}/passages", get(passages))
        .route("/v1/folders/{folder_id}/files", get(files))
        .route("/v1/folders/{folder_id}/files/{file_id}", get(file))
        .route("/v1/folders/{folder_id}/{file_id}", delete(remove_file))
        .route("/v1/sources", get(list::<true>).post(create::<true>))
        .route("/v1/sources/", get(list::<true>).post(create::<true>))
        .route("/v1/sources/count", get(count))
        .route("/v1/sources/metadata", get(metadata))
        .route("/v1/sources/name/{folder_name}", get(id_by_name))
        .route("/v1/sources/{folder_id}", get(retrieve::<true>).patch(modify::<true>).delete(remove))
        .route("/v1/sources/{folder_id}/upload", post(upload))
        .route("/v1/sources/{folder_id}/agents", get(agents))
        .route("/v1/sources/{folder_id}/passages", get(passages))
        .route("/v1/sources/{folder_id}/files", get(files))
        .route("/v1/sources/{folder_id}/files/{file_id}", get(file))
        .route("/v1/sources/{folder_id}/{file_id}", delete(remove_file))
        .route("/v1/agents/{agent_id}/folders", get(agent_folders))
        .route("/v1/agents/{agent_id}/sources", get(agent_folders))
        .route("/v1/agents/{agent_id}/folders/attach/{folder_id}", patch(attach))
        .route("/v1/agents/{agent_id}/sources/attach/{folder_id}", patch(attach))
        .route("/v1/agents/{agent_id}/folders/detach/{folder_id}", patch(detach))
        .route("/v1/agents/{agent_id}/sources/detach/{folder_id}", patch(detach))
        .route("/v1/agents/{agent_id}/files", get(agent_files))
        .route("/v1/agents/{agent_id}/files/close-all", patch(close_all))
        .route("/v1/agents/{agent_id}/files/{file_id}/open", patch(open))
        .route("/v1/agents/{agent_id}/files/{file_id}/close", patch(close))
}

#[derive(Debug, Default, Deserialize)]
struct NameFilter {
    name: Option<String>,
}

async fn create<const LEGACY: bool>(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<FolderInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.folders.create(input, LEGACY).await?))
}

async fn list<const LEGACY: bool>(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<NameFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    // Letta lists folders oldest first unless asked otherwise.
    let page = page_of(&page_query, FOLDER_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.folders.list(filter.name.as_deref(), &page, LEGACY).await?))
}

async fn count(State(state): State<AppState>) -> Result<Json<usize>, ApiError> {
    Ok(Json(state.service.folders.count().await?))
}

#[derive(Debug, Default, Deserialize)]
struct MetadataQuery {
    include_detailed_per_source_metadata: Option<bool>,
}

async fn metadata(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<MetadataQuery>,
) -> Result<Json<Value>, ApiError> {
    let detailed = query.include_detailed_per_source_metadata.unwrap_or(false);
    Ok(Json(state.service.folders.metadata(detailed).await?))
}

async fn id_by_name(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<String>, ApiError> {
    Ok(Json(state.service.folders.id_by_name(&name).await?))
}

async fn retrieve<const LEGACY: bool>(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.folders.get(&folder_id, LEGACY).await?))
}

async fn modify<const LEGACY: bool>(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
    ApiJson(input): ApiJson<FolderInput>,
) -> Result<Json<Value>, ApiError> {
    let folder = state.service.folders.modify(&folder_id, input).await?;
    state.service.agent_files.folder_changed(&folder_id, None).await?;
    Ok(Json(kelpie_agent::service::folders::folder_json(&folder, LEGACY)))
}

async fn remove(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.service.agent_files.delete_folder(&folder_id).await?;
    Ok(Json(Value::Null))
}

async fn agents(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, FOLDER_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.folders.agents(&folder_id, &page).await?))
}

async fn passages(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, PASSAGE_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.folders.passages(&folder_id, &page).await?))
}

#[derive(Debug, Default, Deserialize)]
struct ContentQuery {
    include_content: Option<bool>,
}

async fn files(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
    ApiQuery(content): ApiQuery<ContentQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, FILE_PAGE_COUNT_DEFAULT, true)?;
    let include = content.include_content.unwrap_or(false);
    Ok(Json(state.service.folders.list_files(&folder_id, &page, include).await?))
}

async fn file(
    State(state): State<AppState>,
    Path((folder_id, file_id)): Path<(String, String)>,
    ApiQuery(content): ApiQuery<ContentQuery>,
) -> Result<Json<Value>, ApiError> {
    let include = content.include_content.unwrap_or(false);
    Ok(Json(state.service.folders.get_file(&folder_id, &file_id, include).await?))
}

async fn remove_file(
    State(state): State<AppState>,
    Path((folder_id, file_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.service.folders.delete_file(&folder_id, &file_id).await?;
    state.service.agent_files.folder_changed(&folder_id, Some(&file_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct UploadQuery {
    duplicate_handling: Option<DuplicateHandling>,
    name: Option<String>,
}

/// `POST .../upload`: a multipart form whose `file` part streams into
/// storage as it arrives; the file's `FileMetadata` once it is whole (its
/// processing then runs in the background).
async fn upload(
    State(state): State<AppState>,
    Path(folder_id): Path<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let unprocessable = |detail: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| unprocessable("expected a multipart/form-data body with a file field".into()))?;
    let duplicate = query.duplicate_handling.unwrap_or(DuplicateHandling::Suffix);
    let mut form = FormReader::new(&boundary);
    let mut upload = None;
    let mut in_file = false;
    let mut other_field_bytes = 0usize;
    let mut body = body.into_data_stream();
    let outcome: Result<Option<Value>, ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
            for event in form.feed(&chunk).map_err(unprocessable)? {
                match event {
                    FormEvent::Part { name, file_name, content_type } if name == "file" => {
                        if upload.is_some() {
                            return Err(unprocessable("the form has two file fields".into()));
                        }
                        let name = query.name.clone().or(file_name).unwrap_or_default();
                        let start = state
                            .service
                            .folders
                            .begin_upload(&folder_id, (&name, content_type.as_deref()), duplicate)
                            .await?;
                        match start {
                            UploadStart::Upload(started) => upload = Some(started),
                            UploadStart::Skipped(existing) => return Ok(Some(existing)),
                        }
                        in_file = true;
                    }
                    FormEvent::Part { .. } => in_file = false,
                    FormEvent::Data(bytes) if in_file => {
                        upload.as_mut().expect("a file part is open").feed(&bytes).await?;
                    }
                    FormEvent::Data(bytes) => {
                        other_field_bytes += bytes.len();
                        if other_field_bytes > UPLOAD_FIELD_BYTES_MAX {
                            return Err(unprocessable(format!(
                                "form fields besides the file are over {UPLOAD_FIELD_BYTES_MAX} bytes"
                            )));
                        }
                    }
                    FormEvent::PartEnd => in_file = false,
                }
            }
        }
        form.finish().map_err(unprocessable)?;
        Ok(None)
    }
    .await;
    match (outcome, upload) {
        (Ok(Some(existing)), _) => {
            let mut response = Json(existing).into_response();
            response.headers_mut().insert("x-upload-result", HeaderValue::from_static("skipped"));
            Ok(response)
        }
        (Ok(None), Some(upload)) => Ok(Json(upload.finish().await?).into_response()),
        (Ok(None), None) => Err(unprocessable("the form has no file field".into())),
        (Err(err), Some(upload)) => {
            upload.cancel().await;
            Ok(unread_body_error(err))
        }
        (Err(err), None) => Ok(unread_body_error(err)),
    }
}

async fn agent_folders(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, AGENT_FILES_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.agent_files.agent_folders(&agent_id, &page).await?))
}

async fn attach(
    State(state): State<AppState>,
    Path((agent_id, folder_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agent_files.attach(&agent_id, &folder_id).await?))
}

async fn detach(
    State(state): State<AppState>,
    Path((agent_id, folder_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agent_files.detach(&agent_id, &folder_id).await?))
}

#[derive(Debug, Default, Deserialize)]
struct AgentFilesQuery {
    is_open: Option<bool>,
    /// Letta's older name of `after`.
    cursor: Option<String>,
}

async fn agent_files(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(filter): ApiQuery<AgentFilesQuery>,
    ApiQuery(mut page_query): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    if page_query.after.is_none() {
        page_query.after = filter.cursor;
    }
    let page = page_of(&page_query, AGENT_FILES_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.agent_files.agent_file_list(&agent_id, &page, filter.is_open).await?))
}

async fn open(
    State(state): State<AppState>,
    Path((agent_id, file_id)): Path<(String, String)>,
) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(state.service.agent_files.open(&agent_id, &file_id).await?))
}

async fn close(
    State(state): State<AppState>,
    Path((agent_id, file_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agent_files.close(&agent_id, &file_id).await?))
}

async fn close_all(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Vec<String>>, ApiError> {
    Ok(Json(state.service.agent_files.close_all(&agent_id).await?))
}
