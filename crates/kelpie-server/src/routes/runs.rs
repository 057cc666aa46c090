//! `/v1/runs/{run_id}`: a run started by `POST .../messages/async`;
//! `/v1/runs/active`: the runs in flight.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs/active", get(active))
        .route("/v1/runs/{run_id}", get(retrieve))
        .route("/v1/runs/{run_id}/", get(retrieve))
}

#[derive(Debug, Default, serde::Deserialize)]
struct ActiveQuery {
    agent_id: Option<String>,
}

async fn active(
    State(state): State<AppState>,
    super::extract::ApiQuery(query): super::extract::ApiQuery<ActiveQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.runs.active(query.agent_id.as_deref()).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.runs.get(&run_id).await?))
}
