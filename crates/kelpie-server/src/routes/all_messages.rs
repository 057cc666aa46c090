//! Messages across agents (see `kelpie_agent::service::messages`):
//! `GET /v1/messages/` (every agent's, in time order),
//! `GET /v1/messages/{message_id}`, `POST /v1/messages/search` and
//! `POST /v1/agents/messages/search`.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kelpie_agent::service::conversations::Target;
use kelpie_agent::service::messages::{list_results_json, search_results_json, MessageSearch};
use kelpie_agent::ServiceError;
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{listed_param, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", get(list))
        .route("/v1/messages/", get(list))
        .route("/v1/messages/search", post(search_all))
        .route("/v1/messages/{message_id}", get(retrieve))
        .route("/v1/agents/messages/search", post(search))
}

/// Messages per page when the client does not say (Letta's).
const MESSAGE_PAGE_COUNT_DEFAULT: usize = 100;

/// `GET /v1/messages/`: `include_return_message_types` repeated or
/// comma-separated; `conversation_id` lists that conversation's messages
/// (a conversation id, or an agent id for the agent's own history).
async fn list(
    State(state): State<AppState>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, MESSAGE_PAGE_COUNT_DEFAULT, true)?;
    let types = listed_param(raw.as_deref(), "include_return_message_types");
    let types = (!types.is_empty()).then_some(types);
    match listed_param(raw.as_deref(), "conversation_id").as_slice() {
        [] => Ok(Json(state.service.messages.list(&page, types.as_deref()).await?)),
        [conversation_id] => {
            let target = Target::parse(conversation_id, None)?;
            // As Letta's filter: a conversation that is not there holds no messages.
            let mut messages = match state.service.conversations.messages(&target, &page).await {
                Err(ServiceError::ConversationNotFound(_) | ServiceError::AgentNotFound(_)) => Vec::new(),
                other => other?,
            };
            if let Some(types) = &types {
                messages.retain(|m| types.iter().any(|kind| m["message_type"] == kind.as_str()));
            }
            Ok(Json(messages))
        }
        _ => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "give at most one conversation_id")),
    }
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
