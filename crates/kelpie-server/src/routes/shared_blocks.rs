//! `/v1/blocks/`: standalone blocks (create, list, retrieve, modify,
//! delete), and attaching them to agents under
//! `/v1/agents/{agent_id}/core-memory/blocks/attach|detach/{block_id}`.

use axum::extract::{Path, State};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{BlockListQuery, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::{CreateBlock, UpdateBlock};

/// Blocks per page when the client does not say.
const BLOCK_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/blocks/", get(list).post(create))
        .route("/v1/blocks", get(list).post(create))
        .route("/v1/blocks/count", get(count))
        .route("/v1/blocks/{block_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/blocks/{block_id}/agents", get(agents))
        .route("/v1/agents/{agent_id}/core-memory/blocks/attach/{block_id}", patch(attach))
        .route("/v1/agents/{agent_id}/core-memory/blocks/detach/{block_id}", patch(detach))
}

async fn count(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<BlockListQuery>,
) -> Result<Json<usize>, ApiError> {
    Ok(Json(state.service.blocks.count(query.label.as_deref()).await?))
}

async fn agents(
    State(state): State<AppState>,
    Path(block_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, BLOCK_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.blocks.agents(&block_id, &page).await?))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateBlock>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.blocks.create(request).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<BlockListQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, BLOCK_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.blocks.list(query.label.as_deref(), &page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(block_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.blocks.get(&block_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(block_id): Path<String>,
    ApiJson(request): ApiJson<UpdateBlock>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.blocks.update(&block_id, request).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(block_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.delete_block(&block_id).await?))
}

async fn attach(
    State(state): State<AppState>,
    Path((agent_id, block_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.blocks.attach(&agent_id, &block_id).await?))
}

async fn detach(
    State(state): State<AppState>,
    Path((agent_id, block_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.blocks.detach(&agent_id, &block_id).await?))
}
