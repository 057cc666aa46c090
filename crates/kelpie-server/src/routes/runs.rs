//! `/v1/runs/{run_id}`: a run started by `POST .../messages/async`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/runs/{run_id}", get(retrieve)).route("/v1/runs/{run_id}/", get(retrieve))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.runs.get(&run_id).await?))
}
