//! `/v1/archives` (see `kelpie_agent::service::archives`): create, list
//! with Letta's filters, retrieve, modify and delete archives; an
//! archive's agents; adding passages (one or a batch) and deleting one;
//! attaching archives to agents and detaching them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use kelpie_agent::requests::{CreateArchive, CreateArchivePassage, CreateArchivePassages, ModifyArchive};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Archives, and an archive's agents, per page when the client does not
/// say (Letta's default); newest first, as Letta's default order.
const ARCHIVE_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/archives", get(list).post(create))
        .route("/v1/archives/", get(list).post(create))
        .route("/v1/archives/{archive_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/archives/{archive_id}/agents", get(agents))
        .route("/v1/archives/{archive_id}/passages", post(add_passage))
        .route("/v1/archives/{archive_id}/passages/batch", post(add_passages))
        .route("/v1/archives/{archive_id}/passages/{passage_id}", delete(remove_passage))
        .route("/v1/agents/{agent_id}/archives/attach/{archive_id}", patch(attach))
        .route("/v1/agents/{agent_id}/archives/detach/{archive_id}", patch(detach))
}

#[derive(Debug, Default, Deserialize)]
struct ArchiveFilter {
    name: Option<String>,
    agent_id: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateArchive>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.archives.create(request).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<ArchiveFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, ARCHIVE_PAGE_COUNT_DEFAULT, true)?;
    let archives = &state.service.archives;
    Ok(Json(archives.list(filter.name.as_deref(), filter.agent_id.as_deref(), &page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(archive_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.archives.get(&archive_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(archive_id): Path<String>,
    ApiJson(request): ApiJson<ModifyArchive>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.archives.modify(&archive_id, request).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(archive_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.archives.delete(&archive_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn agents(
    State(state): State<AppState>,
    Path(archive_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, ARCHIVE_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.archives.agents(&archive_id, &page).await?))
}

async fn add_passage(
    State(state): State<AppState>,
    Path(archive_id): Path<String>,
    ApiJson(request): ApiJson<CreateArchivePassage>,
) -> Result<Json<Value>, ApiError> {
    let mut created = state.service.archives.insert(&archive_id, vec![request]).await?;
    assert_eq!(created.len(), 1, "one passage given, one stored");
    Ok(Json(created.remove(0)))
}

async fn add_passages(
    State(state): State<AppState>,
    Path(archive_id): Path<String>,
    ApiJson(request): ApiJson<CreateArchivePassages>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.archives.insert(&archive_id, request.passages).await?))
}

async fn remove_passage(
    State(state): State<AppState>,
    Path((archive_id, passage_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.service.archives.delete_passage(&archive_id, &passage_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attach(
    State(state): State<AppState>,
    Path((agent_id, archive_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.service.archives.attach(&agent_id, &archive_id, true).await?;
    Ok(Json(Value::Null))
}

async fn detach(
    State(state): State<AppState>,
    Path((agent_id, archive_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.service.archives.attach(&agent_id, &archive_id, false).await?;
    Ok(Json(Value::Null))
}
