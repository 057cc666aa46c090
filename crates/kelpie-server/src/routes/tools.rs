//! `/v1/tools/`: list and retrieve tools (the built-in tools for now).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kelpie_tools::builtin_tools;
use serde_json::Value;

use crate::agent::letta::builtin_tool_json;
use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tools/", get(list))
        .route("/v1/tools", get(list))
        .route("/v1/tools/{tool_id}", get(retrieve))
}

async fn list(State(_): State<AppState>) -> Json<Vec<Value>> {
    Json(builtin_tools().iter().map(builtin_tool_json).collect())
}

async fn retrieve(Path(tool_id): Path<String>) -> Result<Json<Value>, ApiError> {
    builtin_tools()
        .iter()
        .find(|tool| tool.id == tool_id)
        .map(|tool| Json(builtin_tool_json(tool)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("Tool with ID {tool_id} not found")))
}
