//! `/v1/messages/batches` (see `kelpie_agent::service::batches`): create a
//! batch of background runs over many agents, list the running batches,
//! retrieve one, list the messages its runs stored, cancel it.

use axum::extract::{Path, State};
use axum::routing::{get, patch};
use axum::{Json, Router};
use kelpie_agent::service::batches::BatchRequest;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use super::messages::user_texts;
use crate::api::{PageQuery, SendMessages};
use crate::error::ApiError;
use crate::state::AppState;

/// Batches and messages per page when the client does not say (Letta's).
const BATCH_PAGE_COUNT_DEFAULT: usize = 100;

/// Letta's `CreateBatch`.
#[derive(Debug, Deserialize)]
struct CreateBatch {
    requests: Vec<BatchRequestBody>,
    callback_url: Option<String>,
}

/// Letta's `LettaBatchRequest`: a send to one agent.
#[derive(Debug, Deserialize)]
struct BatchRequestBody {
    agent_id: String,
    #[serde(flatten)]
    send: SendMessages,
}

#[derive(Debug, Default, Deserialize)]
struct BatchMessagesFilter {
    agent_id: Option<String>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages/batches", get(list).post(create))
        .route("/v1/messages/batches/", get(list).post(create))
        .route("/v1/messages/batches/{batch_id}", get(retrieve))
        .route("/v1/messages/batches/{batch_id}/messages", get(messages))
        .route("/v1/messages/batches/{batch_id}/cancel", patch(cancel))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateBatch>,
) -> Result<Json<Value>, ApiError> {
    let mut requests = Vec::with_capacity(body.requests.len());
    for request in body.requests {
        let max_steps = request.send.max_steps;
        requests.push(BatchRequest {
            agent_id: request.agent_id,
            texts: user_texts(request.send)?,
            max_steps,
        });
    }
    Ok(Json(state.service.batches.create(requests, body.callback_url).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, BATCH_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.batches.list(&page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.batches.get(&batch_id).await?))
}

async fn messages(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    ApiQuery(filter): ApiQuery<BatchMessagesFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = page_of(&page_query, BATCH_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.batches.messages(&batch_id, filter.agent_id.as_deref(), &page).await?))
}

async fn cancel(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.batches.cancel(&batch_id).await?))
}
