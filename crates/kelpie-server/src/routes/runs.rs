//! `/v1/runs/`: every turn is a run (see `kelpie_agent::service::runs`):
//! list with Letta's filters, the runs in flight, one run, its messages,
//! usage and steps, and delete.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use kelpie_agent::actors::agent::RunFilter;
use kelpie_agent::model::RunStatus;
use kelpie_agent::service::runs::RunQuery;
use kelpie_agent::ServiceError;
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
        .route("/v1/runs/{run_id}/metrics", get(metrics))
        .route("/v1/runs/{run_id}/trace", get(trace))
        .route("/v1/runs/{run_id}/stream", post(stream))
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
    // A conversation's runs are its agent's: only that agent is read.
    if let Some(conversation_id) = &query.conversation_id {
        match state.service.conversations.locate(conversation_id).await {
            Ok(found) if agent_ids.is_empty() || agent_ids.contains(&found.agent_id) => {
                agent_ids = vec![found.agent_id]
            }
            Ok(_) | Err(ServiceError::ConversationNotFound(_)) => return Ok(Json(Vec::new())),
            Err(err) => return Err(err.into()),
        }
    }
    let filter = RunFilter {
        statuses: (!statuses.is_empty()).then_some(statuses),
        background: query.background,
        stop_reason: query.stop_reason,
        conversation_id: query.conversation_id,
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

async fn metrics(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.runs.metrics(&run_id).await?))
}

/// Letta serves a run's OpenTelemetry spans from ClickHouse and answers 501
/// without it; Kelpie keeps no spans, and answers so (after 404 for an
/// unknown run). Each step's timings are at `GET /v1/steps/{id}/metrics`.
async fn trace(State(state): State<AppState>, Path(run_id): Path<String>) -> Result<Json<Value>, ApiError> {
    state.service.runs.get(&run_id).await?;
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "Kelpie keeps no OpenTelemetry traces; each step's timings are at GET /v1/steps/{step_id}/metrics",
    ))
}

async fn steps(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, RUN_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.runs.steps(&run_id, &page).await?))
}

/// Letta's `RetrieveStreamRequest` (the body may be empty).
#[derive(Debug, Default, Deserialize)]
pub(super) struct RetrieveStream {
    #[serde(default)]
    pub starting_after: u64,
    #[serde(default)]
    pub include_pings: Option<bool>,
    /// Seconds between reads of a run still going (default 0.1).
    #[serde(default)]
    pub poll_interval: Option<f64>,
    /// `/v1/conversations/{id}/stream`: the run to follow, else the
    /// newest active run of the conversation.
    #[serde(default)]
    pub run_id: Option<String>,
    /// `/v1/conversations/default/stream`: the agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub otid: Option<String>,
}

/// Follows a run's events from `starting_after`: what is stored at once,
/// then each step as it commits, then the end (see `Runs::follow`).
async fn stream(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: RetrieveStream = match body.iter().all(u8::is_ascii_whitespace) {
        true => RetrieveStream::default(),
        false => serde_json::from_slice(&body).map_err(|e| unprocessable(e.to_string()))?,
    };
    let poll_seconds = request.poll_interval.unwrap_or(0.1);
    if !poll_seconds.is_finite() || poll_seconds < 0.0 {
        return Err(unprocessable(format!("poll_interval {poll_seconds} is not a number of seconds")));
    }
    // An unknown run is a plain 404 before the stream starts.
    state.service.runs.get(&run_id).await?;
    let poll_ms = (poll_seconds * 1_000.0) as u64;
    let pings = request.include_pings.unwrap_or(true);
    Ok(follow_run(state, run_id, (request.starting_after, poll_ms, pings)))
}

/// Run `run_id`'s events after `starting_after`, as Server-Sent Events,
/// read again every `poll_ms` until the run ends.
pub(super) fn follow_run(
    state: AppState,
    run_id: String,
    (starting_after, poll_ms, pings): (u64, u64, bool),
) -> Response {
    let (chunks, body) = tokio::sync::mpsc::unbounded_channel::<String>();
    if pings {
        let _ = chunks.send(super::messages::sse(&super::messages::ping(&state)));
    }
    tokio::spawn(async move {
        let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let forward_chunks = chunks.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                if forward_chunks.send(super::messages::sse(&event)).is_err() {
                    break;
                }
            }
        });
        let followed = state.service.runs.follow(&run_id, starting_after, poll_ms, &events).await;
        drop(events);
        let _ = forward.await;
        if let Err(err) = followed {
            let err = ApiError::from(err);
            let event = serde_json::json!({"message_type": "error", "error_type": "internal_error",
                                           "message": err.detail, "detail": err.detail});
            let _ = chunks.send(super::messages::sse(&event));
        }
        let _ = chunks.send("data: [DONE]\n\n".to_string());
    });
    super::messages::sse_response(body)
}
