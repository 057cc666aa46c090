//! `/v1/groups/` (see `kelpie_agent::service::groups`): create, list with
//! Letta's filters, count, retrieve, modify, delete; the group's messages
//! (list, edit, reset); sharing blocks with every agent of a group; an
//! agent's groups; and a round robin group's turn (`POST
//! /v1/groups/{id}/messages`, which Letta 0.16.8 no longer serves).

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, patch};
use axum::{Json, Router};
use kelpie_agent::requests::ModifyMessage;
use kelpie_agent::service::groups::{GroupCreate, GroupFilter, GroupUpdate};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use super::messages::user_texts;
use crate::api::{listed_param, PageQuery, SendMessages};
use crate::error::ApiError;
use crate::state::AppState;

/// Groups per page of `GET /v1/groups/` when the client does not say.
const GROUP_PAGE_COUNT_DEFAULT: usize = 50;
/// Groups per page of `GET /v1/agents/{id}/groups` when not said.
const AGENT_GROUP_PAGE_COUNT_DEFAULT: usize = 100;
/// Messages per page of a group's messages when not said.
const GROUP_MESSAGE_PAGE_COUNT_DEFAULT: usize = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/groups", get(list).post(create))
        .route("/v1/groups/", get(list).post(create))
        .route("/v1/groups/count", get(count))
        .route("/v1/groups/{group_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/groups/{group_id}/messages", get(messages).post(send))
        .route("/v1/groups/{group_id}/messages/{message_id}", patch(modify_message))
        .route("/v1/groups/{group_id}/reset-messages", patch(reset_messages))
        .route("/v1/groups/{group_id}/blocks/attach/{block_id}", patch(attach_block))
        .route("/v1/groups/{group_id}/blocks/detach/{block_id}", patch(detach_block))
        .route("/v1/agents/{agent_id}/groups", get(agent_groups))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(create): ApiJson<GroupCreate>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.groups.create(create).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<GroupFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, GROUP_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.groups.list(&filter, &page).await?))
}

async fn count(State(state): State<AppState>) -> Result<Json<usize>, ApiError> {
    Ok(Json(state.service.groups.count().await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.groups.get(&group_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(group_id): Path<String>,
    ApiJson(update): ApiJson<GroupUpdate>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.groups.modify(&group_id, update).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.groups.delete(&group_id).await?))
}

async fn messages(
    State(state): State<AppState>,
    Path(group_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, GROUP_MESSAGE_PAGE_COUNT_DEFAULT, true)?;
    let types = listed_param(raw.as_deref(), "include_return_message_types");
    let types = (!types.is_empty()).then_some(types);
    Ok(Json(state.service.groups.messages(&group_id, &page, types.as_deref()).await?))
}

async fn send(
    State(state): State<AppState>,
    Path(group_id): Path<String>,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Json<Value>, ApiError> {
    let max_steps = request.max_steps;
    let texts = user_texts(request)?;
    Ok(Json(state.service.groups.send(&group_id, texts, max_steps).await?))
}

async fn modify_message(
    State(state): State<AppState>,
    Path((group_id, message_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<ModifyMessage>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.groups.modify_message(&group_id, &message_id, request).await?))
}

async fn reset_messages(
    State(state): State<AppState>,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.service.groups.reset_messages(&group_id).await?;
    Ok(Json(Value::Null))
}

async fn attach_block(
    State(state): State<AppState>,
    Path((group_id, block_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.service.groups.set_block(&group_id, &block_id, true).await?;
    Ok(Json(Value::Null))
}

async fn detach_block(
    State(state): State<AppState>,
    Path((group_id, block_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.service.groups.set_block(&group_id, &block_id, false).await?;
    Ok(Json(Value::Null))
}

async fn agent_groups(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(filter): ApiQuery<GroupFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, AGENT_GROUP_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.groups.of_agent(&agent_id, &filter, &page).await?))
}
