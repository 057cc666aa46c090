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
use axum::http::StatusCode;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::extract::{idempotency_key, page_of, ApiJson, ApiQuery};
use crate::api::{ApprovalItem, CancelRuns, MessageCreate, PageQuery, SendMessages};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::ids::new_id;
use kelpie_agent::model::{ApprovalDecision, ApprovalVerdict};
use kelpie_agent::service::runs::TurnInput;
use kelpie_agent::service::turn::token_stream::TurnEvents;
use kelpie_agent::service::turn::ApprovalAnswer;

/// Messages per page when the client does not say.
const MESSAGE_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents/{agent_id}/messages", get(list).post(send))
        .route("/v1/agents/{agent_id}/messages/", get(list).post(send))
        .route("/v1/agents/{agent_id}/messages/{message_id}", patch(modify))
        .route("/v1/agents/{agent_id}/messages/stream", post(stream))
        .route("/v1/agents/{agent_id}/messages/async", post(send_async))
        .route("/v1/agents/{agent_id}/messages/cancel", post(cancel))
        .route("/v1/agents/{agent_id}/messages/preview-raw-payload", post(preview_payload))
        .route("/v1/agents/{agent_id}/generate", post(generate))
}

/// The body the agent's next step would send its provider with these
/// user messages (nothing is sent or stored).
async fn preview_payload(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Json<Value>, ApiError> {
    let texts = user_texts(request)?;
    Ok(Json(state.service.turns.preview_payload(&agent_id, &texts).await?))
}

/// Letta's `GenerateRequest`.
#[derive(Debug, serde::Deserialize)]
struct GenerateRequest {
    prompt: String,
    #[serde(default)]
    system_prompt: Option<String>,
    #[serde(default)]
    override_model: Option<String>,
    #[serde(default)]
    response_schema: Option<Value>,
}

/// One completion from the agent's model: no memory, tools or storage.
async fn generate(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<GenerateRequest>,
) -> Result<Json<Value>, ApiError> {
    if request.response_schema.is_some() {
        return Err(unprocessable("response_schema (structured output) is not supported yet".into()));
    }
    let options = (request.system_prompt.as_deref(), request.override_model.as_deref());
    Ok(Json(state.service.turns.generate(&agent_id, &request.prompt, options).await?))
}

fn unprocessable(reason: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
}

fn decision_of(item: ApprovalItem) -> Result<ApprovalDecision, ApiError> {
    let verdict = match item.kind.as_deref().unwrap_or("approval") {
        "approval" => match item.approve {
            Some(true) => ApprovalVerdict::Approve { reason: item.reason },
            Some(false) => ApprovalVerdict::Deny { reason: item.reason },
            None => return Err(unprocessable(format!("approval of {} needs approve", item.tool_call_id))),
        },
        "tool" => {
            let tool_return = match item.tool_return {
                Some(Value::String(text)) => text,
                Some(other) => other.to_string(),
                None => {
                    return Err(unprocessable(format!(
                        "tool return of {} needs tool_return",
                        item.tool_call_id
                    )))
                }
            };
            let ok = match item.status.as_deref().unwrap_or("success") {
                "success" => true,
                "error" => false,
                other => {
                    return Err(unprocessable(format!(
                        "status {other:?} is neither \"success\" nor \"error\""
                    )))
                }
            };
            ApprovalVerdict::ClientReturn { tool_return, ok }
        }
        other => {
            return Err(unprocessable(format!(
                "approval type {other:?} is neither \"approval\" nor \"tool\""
            )))
        }
    };
    Ok(ApprovalDecision { tool_call_id: item.tool_call_id, verdict })
}

/// The turn's idempotency key: the `Idempotency-Key` header, else the
/// `otid` of its first message.
pub(super) fn turn_key(headers: &HeaderMap, request: &SendMessages) -> Result<Option<String>, ApiError> {
    match idempotency_key(headers)? {
        Some(key) => Ok(Some(key)),
        None => {
            Ok(request.messages.as_ref().and_then(|messages| messages.first()).and_then(|m| m.otid.clone()))
        }
    }
}

pub(super) fn turn_request(request: SendMessages) -> Result<TurnInput, ApiError> {
    let messages = request.messages.unwrap_or_default();
    if messages.iter().any(|message| message.kind.as_deref() == Some("approval")) {
        let [message] = <[MessageCreate; 1]>::try_from(messages)
            .map_err(|_| unprocessable("an approval message must be the only message sent".into()))?;
        if request.input.is_some() {
            return Err(unprocessable("an approval message must be the only message sent".into()));
        }
        let answer = match (message.approvals, message.approve) {
            (Some(items), _) => {
                ApprovalAnswer::Each(items.into_iter().map(decision_of).collect::<Result<_, _>>()?)
            }
            (None, Some(approve)) => ApprovalAnswer::All { approve, reason: message.reason },
            (None, None) => {
                return Err(unprocessable("an approval message needs approvals or approve".into()))
            }
        };
        return Ok(TurnInput::Approval(answer));
    }
    let mut texts = Vec::new();
    for message in messages {
        let role = message.role.unwrap_or_default();
        if role != "user" && role != "system" {
            return Err(unprocessable(format!("message role {role:?} cannot be sent; use \"user\"")));
        }
        let content = message.content.ok_or_else(|| unprocessable("a user message needs content".into()))?;
        texts.push(content.into_text());
    }
    if let Some(input) = request.input {
        texts.push(input.into_text());
    }
    Ok(TurnInput::Texts(texts))
}

/// Only user messages start a background run.
pub(crate) fn user_texts(request: SendMessages) -> Result<Vec<String>, ApiError> {
    match turn_request(request)? {
        TurnInput::Texts(texts) => Ok(texts),
        TurnInput::Approval(_) => Err(unprocessable(
            "an approval is answered with /messages or /messages/stream, not as a background run".into(),
        )),
    }
}

async fn send(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Response, ApiError> {
    if request.streaming {
        return stream(State(state), Path(agent_id), headers, ApiJson(request)).await;
    }
    let max_steps = request.max_steps;
    let key = turn_key(&headers, &request)?;
    let outcome =
        state.service.runs.run_turn(&agent_id, turn_request(request)?, max_steps, None, key).await?;
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
    headers: HeaderMap,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Json<Value>, ApiError> {
    let max_steps = request.max_steps;
    let key = turn_key(&headers, &request)?;
    Ok(Json(state.service.runs.start(&agent_id, user_texts(request)?, max_steps, key).await?))
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

/// Letta's `LettaPing`, the first event of a stream.
pub(super) fn ping(state: &AppState) -> Value {
    let date = kelpie_agent::ids::rfc3339_micros(state.service.env().clock.wall_ms());
    json!({"id": new_id("ping", state.service.rng()), "date": date, "name": null, "message_type": "ping",
           "otid": null, "sender_id": null, "step_id": null, "is_err": null, "seq_id": null, "run_id": null})
}

pub(super) fn sse(event: &Value) -> String {
    format!("data: {event}\n\n")
}

/// A `text/event-stream` response of the chunks `body` receives, ended
/// when every sender is gone.
pub(super) fn sse_response(body: mpsc::UnboundedReceiver<String>) -> Response {
    let stream = futures::stream::unfold(body, |mut body| async move {
        body.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), body))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn stream(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SendMessages>,
) -> Result<Response, ApiError> {
    let max_steps = request.max_steps;
    let key = turn_key(&headers, &request)?;
    let stream_tokens = request.stream_tokens;
    let turn = turn_request(request)?;
    // Unknown agents fail before the stream starts, with a plain 404.
    state.service.agents.get(&agent_id).await?;
    Ok(stream_turn(state, (agent_id, None), turn, (max_steps, key, stream_tokens)))
}

/// Runs a turn in the agent's own history (`None`) or in one of its
/// conversations, answering it as Server-Sent Events.
pub(super) fn stream_turn(
    state: AppState,
    (agent_id, conversation): (String, Option<String>),
    turn: TurnInput,
    (max_steps, key, stream_tokens): (Option<u32>, Option<String>, bool),
) -> Response {
    let (chunks, body) = mpsc::unbounded_channel::<String>();
    let _ = chunks.send(sse(&ping(&state)));
    tokio::spawn(async move {
        let (sender, mut events_rx) = mpsc::unbounded_channel::<Value>();
        let events = TurnEvents { sender, stream_tokens };
        let forward_chunks = chunks.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let _ = forward_chunks.send(sse(&event));
            }
        });
        let target = (agent_id.as_str(), conversation);
        let outcome = state.service.runs.run_turn_in(target, turn, max_steps, Some(events), key).await;
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
    sse_response(body)
}

/// `PATCH /v1/agents/{id}/messages/{message_id}`: Letta's modify message.
async fn modify(
    State(state): State<AppState>,
    Path((agent_id, message_id)): Path<(String, String)>,
    ApiJson(request): ApiJson<kelpie_agent::requests::ModifyMessage>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.modify_message(&agent_id, &message_id, request).await?))
}
