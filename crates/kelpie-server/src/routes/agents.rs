//! `/v1/agents/`: create, list (pagination, name and tag filters),
//! retrieve, modify, delete; tool attach and detach; reset-messages.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{repeated_param, AgentListQuery, CreateAgent, UpdateAgent};
use crate::error::ApiError;
use crate::AppState;

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Agents per page when the client does not say.
const AGENT_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents/", get(list).post(create))
        .route("/v1/agents", get(list).post(create))
        .route("/v1/agents/{agent_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/agents/{agent_id}/tools/attach/{tool_id}", patch(attach_tool))
        .route("/v1/agents/{agent_id}/tools/detach/{tool_id}", patch(detach_tool))
        .route("/v1/agents/{agent_id}/reset-messages", patch(reset_messages))
}

/// Letta has no idempotency key on create; we accept the usual
/// `Idempotency-Key` header.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateAgent>,
) -> Result<Json<Value>, ApiError> {
    let key = match headers.get(IDEMPOTENCY_KEY_HEADER).map(|value| value.to_str()) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key must be visible ASCII",
            ))
        }
    };
    Ok(Json(state.agents.create_agent(request, key).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AgentListQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&query.page_query(), AGENT_PAGE_COUNT_DEFAULT, false)?;
    let tags = repeated_param(raw.as_deref(), "tags");
    let match_all = query.match_all_tags.unwrap_or(false);
    Ok(Json(state.agents.list_agents(query.name.as_deref(), &tags, match_all, &page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agents.get_agent(&agent_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<UpdateAgent>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agents.update_agent(&agent_id, request).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agents.delete_agent(&agent_id).await?))
}

async fn attach_tool(
    State(state): State<AppState>,
    Path((agent_id, tool_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agents.set_tool(&agent_id, &tool_id, true).await?))
}

async fn detach_tool(
    State(state): State<AppState>,
    Path((agent_id, tool_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agents.set_tool(&agent_id, &tool_id, false).await?))
}

/// Letta can add default first messages (`add_default_initial_messages`);
/// this server has none, so the body is not read.
async fn reset_messages(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.agents.reset_messages(&agent_id).await?))
}
