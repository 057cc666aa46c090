//! `/v1/agents/{agent_id}/messages`: send (runs the agent loop), stream
//! (the same, as Server-Sent Events; also `send` with `streaming: true`),
//! list.
//!
//! Stream event order, as Letta sends it: a `ping`, each step's messages as
//! they are committed, `stop_reason`, `usage_statistics`, `[DONE]`. With
//! `stream_tokens`, the LLM's answer also arrives as partial messages while
//! it is generated (see `agent::token_stream`). An error after the stream
//! started is sent as an `error` event before `[DONE]`.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{CancelRuns, PageQuery, SendMessages};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::ids::new_id;
use kelpie_agent::service::turn::token_stream::TurnEvents;

/// Messages per page when the client does not say.
const MESSAGE_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents/{agent_id}/messages", get(list).post(send))
        .route("/v1/agents/{agent_id}/messages/", get(list).post(send))
        .route("/v1/agents/{agent_id}/messages/stream", post(stream))
        .route("/v1/agents/{agent_id}/messages/async", post(send_async))
        .route("/v1/agents/{agent_id}/messages/cancel", post(cancel))
}

fn user_texts(request: SendMessages) -> Result<Vec<String>, ApiError> {
    let mut texts = Vec::new();
    for message in request.messages.unwrap_or_default() {
        if message.role != "user" && message.role != "system" {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("message role {:?} cannot be sent; use \"user\"", message.role),
            ));
        }
        texts.push(message.content.into_text());
    }
    if let Some(input) = request.input {
        texts.push(input.into_text());
    }
    Ok(texts)
}

async fn send(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Response, ApiError> {
    if request.streaming {
        return stream(State(state), Path(agent_id), ApiJson(request)).await;
    }
    let max_steps = request.max_steps;
    let outcome = state.service.turns.run(&agent_id, user_texts(request)?, max_steps, None).await?;
    Ok(Json(json!({
        "messages": outcome.messages,
        "stop_reason": outcome.stop_reason_json(),
        "usage": outcome.usage_json(),
        "logprobs": null,
        "turns": null,
    }))
    .into_response())
}

async fn send_async(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Json<Value>, ApiError> {
    let max_steps = request.max_steps;
    Ok(Json(state.service.runs.start(&agent_id, user_texts(request)?, max_steps).await?))
}

/// The body is optional (no body cancels every active run of the agent).
async fn cancel(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: CancelRuns = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRuns::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
    };
    Ok(Json(state.service.runs.cancel(&agent_id, request.run_ids).await?))
}

async fn list(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&query, MESSAGE_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.agents.list_messages(&agent_id, &page).await?))
}

fn sse(event: &Value) -> String {
    format!("data: {event}\n\n")
}

async fn stream(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Response, ApiError> {
    let max_steps = request.max_steps;
    let stream_tokens = request.stream_tokens;
    let texts = user_texts(request)?;
    // Unknown agents fail before the stream starts, with a plain 404.
    state.service.agents.get(&agent_id).await?;
    let (chunks, body) = mpsc::unbounded_channel::<String>();
    let ping = json!({"id": new_id("ping", state.service.rng()), "message_type": "ping"});
    let _ = chunks.send(sse(&ping));
    tokio::spawn(async move {
        let (sender, mut events_rx) = mpsc::unbounded_channel::<Value>();
        let events = TurnEvents { sender, stream_tokens };
        let forward_chunks = chunks.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let _ = forward_chunks.send(sse(&event));
            }
        });
        let outcome = state.service.turns.run(&agent_id, texts, max_steps, Some(&events)).await;
        drop(events);
        let _ = forward.await;
        match outcome {
            Ok(outcome) => {
                let _ = chunks.send(sse(&outcome.stop_reason_json()));
                let _ = chunks.send(sse(&outcome.usage_json()));
            }
            Err(err) => {
                let err = ApiError::from(err);
                let _ = chunks.send(sse(&json!({"message_type": "error", "error_type": "internal_error",
                                                "message": err.detail, "detail": err.detail})));
            }
        }
        let _ = chunks.send("data: [DONE]\n\n".to_string());
    });
    let stream = futures::stream::unfold(body, |mut body| async move {
        body.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), body))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response())
}
