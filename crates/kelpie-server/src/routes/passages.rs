//! `POST /v1/passages/search`: search one agent's archival passages.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::extract::ApiJson;
use crate::api::PassageSearch;
use crate::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/passages/search", post(search))
}

async fn search(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PassageSearch>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.agents.search_agent_passages(request).await?))
}
