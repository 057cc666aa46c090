//! `/v1/steps/`: the steps of runs (see `kelpie_agent::service::steps`):
//! list with Letta's filters, one step, its metrics, trace and messages,
//! and the feedback and transaction id a client sets on it.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use kelpie_agent::ids::parse_iso_ms;
use kelpie_agent::model::{StepFeedback, StepPatch};
use kelpie_agent::service::steps::StepQuery;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{listed_param, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;

/// Steps per page of `GET /v1/steps/` when the client does not say
/// (Letta's default).
const STEP_PAGE_COUNT_DEFAULT: usize = 50;
/// Messages per page of a step's messages when the client does not say.
const STEP_MESSAGES_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/steps", get(list))
        .route("/v1/steps/", get(list))
        .route("/v1/steps/{step_id}", get(retrieve))
        .route("/v1/steps/{step_id}/", get(retrieve))
        .route("/v1/steps/{step_id}/metrics", get(metrics))
        .route("/v1/steps/{step_id}/trace", get(trace))
        .route("/v1/steps/{step_id}/messages", get(messages))
        .route("/v1/steps/{step_id}/feedback", patch(feedback))
        .route("/v1/steps/{step_id}/transaction/{transaction_id}", patch(transaction))
        // Letta's deprecated name of a step's trace.
        .route("/v1/telemetry/{step_id}", get(trace))
}

fn unprocessable(reason: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
}

/// The filters of `GET /v1/steps/`; `tags` and `trace_ids` (repeated or
/// comma-separated) are read from the raw query.
#[derive(Debug, Default, Deserialize)]
struct StepListQuery {
    agent_id: Option<String>,
    model: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    feedback: Option<String>,
    has_feedback: Option<bool>,
    order_by: Option<String>,
}

fn feedback_of(name: &str) -> Result<StepFeedback, ApiError> {
    StepFeedback::parse(name)
        .ok_or_else(|| unprocessable(format!("feedback {name:?} is neither \"positive\" nor \"negative\"")))
}

fn date_of(name: &str, text: Option<&str>) -> Result<Option<u64>, ApiError> {
    text.map(|text| {
        parse_iso_ms(text)
            .ok_or_else(|| unprocessable(format!("{name} {text:?} is not an ISO 8601 date or date-time")))
    })
    .transpose()
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<StepListQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, STEP_PAGE_COUNT_DEFAULT, true)?;
    if let Some(order_by) = query.order_by.as_deref().filter(|by| *by != "created_at") {
        return Err(unprocessable(format!("order_by {order_by:?} is not \"created_at\"")));
    }
    let query = StepQuery {
        agent_id: query.agent_id,
        model: query.model,
        start_ms: date_of("start_date", query.start_date.as_deref())?,
        end_ms: date_of("end_date", query.end_date.as_deref())?,
        feedback: query.feedback.as_deref().map(feedback_of).transpose()?,
        has_feedback: query.has_feedback,
        tags: listed_param(raw.as_deref(), "tags"),
        trace_ids: listed_param(raw.as_deref(), "trace_ids"),
        page,
    };
    Ok(Json(state.service.steps().list(&query).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(step_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.steps().get(&step_id).await?))
}

async fn metrics(
    State(state): State<AppState>,
    Path(step_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.steps().metrics(&step_id).await?))
}

async fn trace(State(state): State<AppState>, Path(step_id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.steps().trace(&step_id).await?))
}

async fn messages(
    State(state): State<AppState>,
    Path(step_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, STEP_MESSAGES_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.steps().messages(&step_id, &page).await?))
}

/// Letta's `ModifyFeedbackRequest`: `feedback` null clears it; `tags`
/// replace the step's tags when given and not empty (as Letta does).
#[derive(Debug, Deserialize)]
struct ModifyFeedback {
    #[serde(default)]
    feedback: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

async fn feedback(
    State(state): State<AppState>,
    Path(step_id): Path<String>,
    ApiJson(body): ApiJson<ModifyFeedback>,
) -> Result<Json<Value>, ApiError> {
    let patch = StepPatch {
        feedback: Some(body.feedback.as_deref().map(feedback_of).transpose()?),
        tags: body.tags.filter(|tags| !tags.is_empty()),
        tid: None,
    };
    Ok(Json(state.service.steps().update(&step_id, patch).await?))
}

async fn transaction(
    State(state): State<AppState>,
    Path((step_id, transaction_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let patch = StepPatch { feedback: None, tags: None, tid: Some(transaction_id) };
    Ok(Json(state.service.steps().update(&step_id, patch).await?))
}
