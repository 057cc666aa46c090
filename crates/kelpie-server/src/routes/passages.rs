//! `POST /v1/passages/search`: search one agent's archival passages.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::PassageSearch;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/passages/search", post(search))
}

async fn search(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PassageSearch>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.archival.search_passages(request).await?))
}
