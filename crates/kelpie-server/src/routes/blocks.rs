//! `/v1/agents/{agent_id}/core-memory/blocks`: list, retrieve and modify an
//! agent's core memory blocks (limits enforced by kelpie-memory).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::UpdateBlock;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents/{agent_id}/core-memory", get(core_memory))
        .route("/v1/agents/{agent_id}/core-memory/blocks", get(list))
        .route("/v1/agents/{agent_id}/core-memory/blocks/", get(list))
        .route("/v1/agents/{agent_id}/core-memory/blocks/{label}", get(retrieve).patch(modify))
}

/// Blocks per page when the client does not say.
const BLOCK_PAGE_COUNT_DEFAULT: usize = 50;

async fn core_memory(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.core_memory(&agent_id).await?))
}

async fn list(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, BLOCK_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.agents.list_blocks(&agent_id, &page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path((agent_id, label)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.get_block(&agent_id, &label).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path((agent_id, label)): Path<(String, String)>,
    ApiJson(request): ApiJson<UpdateBlock>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.update_block(&agent_id, &label, request).await?))
}
