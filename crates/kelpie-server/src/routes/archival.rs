//! `/v1/agents/{agent_id}/archival-memory`: insert, list, search, delete.

use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{ArchivalSearchQuery, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::CreatePassage;

/// Passages per page when the client does not say.
const PASSAGE_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents/{agent_id}/archival-memory", get(list).post(insert))
        .route("/v1/agents/{agent_id}/archival-memory/", get(list).post(insert))
        .route("/v1/agents/{agent_id}/archival-memory/search", get(search))
        .route("/v1/agents/{agent_id}/archival-memory/{memory_id}", delete(remove))
}

async fn insert(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<CreatePassage>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.archival.insert(&agent_id, request).await?))
}

async fn list(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&query, PASSAGE_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.archival.list(&agent_id, &page).await?))
}

async fn search(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(query): ApiQuery<ArchivalSearchQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.archival.search(&agent_id, query.query, query.top_k).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path((agent_id, memory_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.service.archival.delete(&agent_id, &memory_id).await?;
    Ok(Json(serde_json::json!({"message": format!("Memory id={memory_id} successfully deleted")})))
}
