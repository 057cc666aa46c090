//! `/v1/tools/`: list, retrieve, create and upsert (custom Python tools from
//! `source_code`), modify and delete. Built-in tools are listed first and
//! cannot be changed.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::{CreateTool, UpdateTool};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tools/", get(list).post(create).put(upsert))
        .route("/v1/tools", get(list).post(create).put(upsert))
        .route("/v1/tools/{tool_id}", get(retrieve).patch(modify).delete(remove))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.tools.list().await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(tool_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.get(&tool_id).await?))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.create(request, false).await?))
}

async fn upsert(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.create(request, true).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(tool_id): Path<String>,
    ApiJson(request): ApiJson<UpdateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.modify(&tool_id, request).await?))
}

async fn remove(State(state): State<AppState>, Path(tool_id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.delete(&tool_id).await?))
}
