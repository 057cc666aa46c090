//! `/v1/runs/`: every turn is a run (see `kelpie_agent::service::runs`):
//! list with Letta's filters, the runs in flight, one run, its messages,
//! usage and steps, and delete.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use kelpie_agent::actors::agent::RunFilter;
use kelpie_agent::model::RunStatus;
use kelpie_agent::service::runs::RunQuery;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiQuery};
use crate::api::{listed_param, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;

/// Runs, messages and steps per page when the client does not say.
const RUN_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", get(list))
        .route("/v1/runs/", get(list))
        .route("/v1/runs/active", get(active))
        .route("/v1/runs/{run_id}", get(retrieve).delete(delete))
        .route("/v1/runs/{run_id}/", get(retrieve).delete(delete))
        .route("/v1/runs/{run_id}/messages", get(messages))
        .route("/v1/runs/{run_id}/usage", get(usage))
        .route("/v1/runs/{run_id}/steps", get(steps))
}

fn unprocessable(reason: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
}

/// The filters of `GET /v1/runs/`; `agent_ids` and `statuses` (repeated or
/// comma-separated) are read from the raw query.
#[derive(Debug, Default, Deserialize)]
struct RunListQuery {
    agent_id: Option<String>,
    background: Option<bool>,
    stop_reason: Option<String>,
    conversation_id: Option<String>,
    order_by: Option<String>,
    #[serde(default)]
    active: bool,
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunListQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, RUN_PAGE_COUNT_DEFAULT, true)?;
    if let Some(order_by) = query.order_by.as_deref().filter(|by| *by != "created_at") {
        return Err(unprocessable(format!("order_by {order_by:?} is not \"created_at\"")));
    }
    // Kelpie has no conversations yet: no run belongs to one.
    if query.conversation_id.is_some() {
        return Ok(Json(Vec::new()));
    }
    let mut statuses = Vec::new();
    for name in listed_param(raw.as_deref(), "statuses") {
        statuses.push(RunStatus::parse(&name).ok_or_else(|| {
            unprocessable(format!(
                "status {name:?} is none of created, running, completed, failed, cancelled"
            ))
        })?);
    }
    let mut agent_ids: Vec<String> = query.agent_id.into_iter().collect();
    agent_ids.extend(listed_param(raw.as_deref(), "agent_ids"));
    agent_ids.dedup();
    let filter = RunFilter {
        statuses: (!statuses.is_empty()).then_some(statuses),
        background: query.background,
        stop_reason: query.stop_reason,
    };
    let query = RunQuery { agent_ids, filter, active: query.active, page };
    Ok(Json(state.service.runs.list(query).await?))
}

#[derive(Debug, Default, Deserialize)]
struct ActiveQuery {
    agent_id: Option<String>,
}

async fn active(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ActiveQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.runs.active(query.agent_id.as_deref()).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.runs.get(&run_id).await?))
}

async fn delete(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Json<Value>, ApiError> {
    state.service.runs.delete(&run_id).await?;
    Ok(Json(Value::Null))
}

async fn messages(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, RUN_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.runs.messages(&run_id, &page).await?))
}

async fn usage(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.runs.usage(&run_id).await?))
}

async fn steps(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, RUN_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.runs.steps(&run_id, &page).await?))
}
