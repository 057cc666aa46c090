//! `POST /v1/chat/completions`: OpenAI's chat completions API in front of
//! an agent, so an OpenAI client talks to a Kelpie agent by naming its id
//! as the `model`. As Letta: only the last user message is sent (the agent
//! keeps the conversation itself), the turn is an ordinary run of the
//! agent, and only the agent's replies (its `send_message` text or its
//! answer) come back; reasoning and tool calls stay inside. With
//! `stream: true` the reply arrives as `chat.completion.chunk` events as it
//! is generated (Letta serves only this form); without, as one
//! `chat.completion` (which Letta refuses).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use kelpie_agent::service::runs::TurnInput;
use kelpie_agent::service::turn::token_stream::TurnEvents;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::extract::ApiJson;
use super::messages::{sse, sse_response};
use crate::api::Content;
use crate::error::ApiError;
use crate::state::AppState;

/// OpenAI's chat completion request; the sampling fields are accepted and
/// not used (the agent's own model settings apply).
#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    #[serde(default)]
    role: String,
    content: Option<Content>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/chat/completions", post(create))
}

fn bad_request(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, detail)
}

/// The text of the last user message.
fn last_user_text(messages: Vec<ChatMessage>) -> Result<String, ApiError> {
    let last = messages.into_iter().rev().find(|message| message.role == "user").ok_or_else(|| {
        bad_request(
            "No user message found in the request: include at least one message with role 'user'".into(),
        )
    })?;
    Ok(last.content.map(Content::into_text).unwrap_or_default())
}

/// The text of an agent reply among a turn's Letta messages.
fn reply_text(message: &Value) -> Option<&str> {
    (message["message_type"] == "assistant_message").then(|| message["content"].as_str()).flatten()
}

fn chunk(id: &str, (created_s, model): (u64, &str), delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created_s, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
    })
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let agent_id = request.model;
    if !agent_id.starts_with("agent-") {
        return Err(bad_request(format!(
            "the model field names an agent id here (agent-...), not {agent_id:?}"
        )));
    }
    let text = last_user_text(request.messages)?;
    if text.trim().is_empty() {
        // Refused before a stream starts, as the turn would refuse it.
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "the last user message is empty"));
    }
    let agent = state.service.agents.get(&agent_id).await?;
    let model = agent["llm_config"]["model"].as_str().unwrap_or("unknown").to_string();
    let created_s = state.service.env().clock.wall_ms() / 1_000;
    let turn = TurnInput::Texts(vec![text]);
    if !request.stream {
        let outcome = state.service.runs.run_turn(&agent_id, turn, None, None, None).await?;
        let content: Vec<&str> = outcome.messages.iter().filter_map(reply_text).collect();
        let usage = &outcome.usage;
        return Ok(Json(json!({
            "id": format!("chatcmpl-{}", outcome.run_id), "object": "chat.completion", "created": created_s,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content.join("\n"), "refusal": null},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens},
        }))
        .into_response());
    }
    let (chunks, body) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let (sender, mut events) = mpsc::unbounded_channel::<Value>();
        let turn_events = TurnEvents { sender, stream_tokens: true };
        let forward_chunks = chunks.clone();
        let forward_model = model.clone();
        // The reply's fragments as they come; the first names the role.
        let forward = tokio::spawn(async move {
            let mut id: Option<String> = None;
            while let Some(event) = events.recv().await {
                let Some(fragment) = reply_text(&event) else { continue };
                let run_id = event["run_id"].as_str().unwrap_or_default();
                let first = id.is_none();
                let id = id.get_or_insert_with(|| format!("chatcmpl-{run_id}"));
                let delta = match first {
                    true => json!({"role": "assistant", "content": fragment}),
                    false => json!({"content": fragment}),
                };
                let _ = forward_chunks.send(sse(&chunk(id, (created_s, &forward_model), delta, None)));
            }
        });
        let outcome = state.service.runs.run_turn(&agent_id, turn, None, Some(turn_events), None).await;
        let _ = forward.await;
        match outcome {
            Ok(outcome) => {
                let id = format!("chatcmpl-{}", outcome.run_id);
                let _ = chunks.send(sse(&chunk(&id, (created_s, &model), json!({}), Some("stop"))));
            }
            Err(err) => {
                let err = ApiError::from(err);
                let _ = chunks.send(sse(&json!({"error": {"message": err.detail, "type": "server_error"}})));
            }
        }
        let _ = chunks.send("data: [DONE]\n\n".to_string());
    });
    Ok(sse_response(body))
}
