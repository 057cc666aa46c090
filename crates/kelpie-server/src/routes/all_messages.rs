//! Messages across agents (see `kelpie_agent::service::messages`):
//! `GET /v1/messages/{message_id}`, `POST /v1/messages/search` and
//! `POST /v1/agents/messages/search`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kelpie_agent::service::messages::{list_results_json, search_results_json, MessageSearch};
use serde_json::Value;

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages/search", post(search_all))
        .route("/v1/messages/{message_id}", get(retrieve))
        .route("/v1/agents/messages/search", post(search))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(message_id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.messages.get(&message_id).await?))
}

/// Letta's `SearchAllMessagesRequest` (`query` required).
async fn search_all(
    State(state): State<AppState>,
    ApiJson(search): ApiJson<MessageSearch>,
) -> Result<Json<Vec<Value>>, ApiError> {
    if search.query.is_none() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "query is required"));
    }
    Ok(Json(list_results_json(&state.service.messages.search(&search).await?)))
}

async fn search(
    State(state): State<AppState>,
    ApiJson(search): ApiJson<MessageSearch>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(search_results_json(&state.service.messages.search(&search).await?)))
}
