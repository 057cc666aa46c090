//! `/v1/conversations` (see `kelpie_agent::service::conversations`):
//! create, list, retrieve, modify, delete, fork, the messages of a
//! conversation (list, send synchronously or as a stream, preview the
//! provider payload), resuming a background run's stream, cancel,
//! recompile and compact. `default` with an agent id, or an agent id,
//! names the agent's own history (Letta's agent-direct mode).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kelpie_agent::requests::SummarizeRequest;
use kelpie_agent::service::conversations::{ConversationInput, ConversationOrder, ConversationQuery, Target};
use kelpie_agent::service::runs::TurnInput;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{page_of, ApiJson, ApiQuery};
use super::messages::{stream_turn, turn_key, turn_request};
use super::runs::{follow_run, RetrieveStream};
use crate::api::{Content, MessageCreate, PageQuery, SendMessages};
use crate::error::ApiError;
use crate::state::AppState;

/// Conversations per page when the client does not say (Letta's 50).
const CONVERSATION_PAGE_COUNT_DEFAULT: usize = 50;
/// Messages per page when the client does not say (Letta's 100).
const CONVERSATION_MESSAGE_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/conversations", get(list).post(create))
        .route("/v1/conversations/", get(list).post(create))
        .route("/v1/conversations/{conversation_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/conversations/{conversation_id}/fork", post(fork))
        .route("/v1/conversations/{conversation_id}/messages", get(messages).post(send))
        .route("/v1/conversations/{conversation_id}/messages/preview-raw-payload", post(preview))
        .route("/v1/conversations/{conversation_id}/stream", post(resume_stream))
        .route("/v1/conversations/{conversation_id}/cancel", post(cancel))
        .route("/v1/conversations/{conversation_id}/recompile", post(recompile))
        .route("/v1/conversations/{conversation_id}/compact", post(compact))
}

fn unprocessable(reason: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
}

/// A body that may be absent or empty, else JSON of `T`.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, ApiError> {
    match body.iter().all(u8::is_ascii_whitespace) {
        true => Ok(T::default()),
        false => serde_json::from_slice::<Option<T>>(body)
            .map_err(|e| unprocessable(format!("invalid body: {e}")))
            .map(Option::unwrap_or_default),
    }
}

#[derive(Debug, Default, Deserialize)]
struct AgentQuery {
    agent_id: Option<String>,
}

/// Letta's `CreateConversation` and `UpdateConversation`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationBody {
    summary: Option<String>,
    model: Option<String>,
    model_settings: Option<Value>,
    isolated_block_labels: Option<Vec<String>>,
    /// `UpdateConversation` only: an RFC 3339 time.
    last_message_at: Option<String>,
}

impl ConversationBody {
    fn input(self) -> Result<ConversationInput, ApiError> {
        if self.isolated_block_labels.is_some_and(|labels| !labels.is_empty()) {
            return Err(unprocessable(
                "isolated_block_labels is not supported: a conversation shares all of its agent's blocks"
                    .into(),
            ));
        }
        let last_message_ms = match self.last_message_at.as_deref() {
            Some(text) => Some(kelpie_agent::ids::parse_iso_ms(text).ok_or_else(|| {
                unprocessable(format!("last_message_at {text:?} is not an RFC 3339 date-time"))
            })?),
            None => None,
        };
        Ok(ConversationInput {
            summary: self.summary,
            model: self.model,
            model_settings: self.model_settings.filter(|settings| !settings.is_null()),
            last_message_ms,
        })
    }
}

#[derive(Debug, Deserialize)]
struct CreateQuery {
    agent_id: String,
}

async fn create(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CreateQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: ConversationBody = optional_body(&body)?;
    if body.last_message_at.is_some() {
        return Err(unprocessable(
            "last_message_at is set by the conversation's turns, not at create".into(),
        ));
    }
    Ok(Json(state.service.conversations.create(&query.agent_id, body.input()?).await?))
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    agent_id: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    summary_search: Option<String>,
    order: Option<String>,
    order_by: Option<String>,
    /// The SDK's `archive_status`: Kelpie archives nothing, so only
    /// `unarchived` and `all` (everything) are served.
    archive_status: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let descending = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => return Err(unprocessable(format!("order {other:?} is neither \"asc\" nor \"desc\""))),
    };
    if let Some(status) = query.archive_status.as_deref().filter(|s| *s != "unarchived" && *s != "all") {
        return Err(unprocessable(format!(
            "archive_status {status:?}: Kelpie does not archive conversations (unarchived or all)"
        )));
    }
    let query = ConversationQuery {
        agent_id: query.agent_id,
        after: query.after,
        limit: query.limit.unwrap_or(CONVERSATION_PAGE_COUNT_DEFAULT),
        summary_search: query.summary_search,
        descending,
        order_by: ConversationOrder::parse(query.order_by.as_deref().unwrap_or("created_at"))?,
    };
    Ok(Json(state.service.conversations.list(query).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.conversations.get(&conversation_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    ApiJson(body): ApiJson<ConversationBody>,
) -> Result<Json<Value>, ApiError> {
    if body.isolated_block_labels.is_some() {
        return Err(unprocessable("isolated_block_labels is set only at create".into()));
    }
    Ok(Json(state.service.conversations.update(&conversation_id, body.input()?).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.service.conversations.delete(&conversation_id).await?;
    Ok(Json(Value::Null))
}

async fn fork(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    ApiQuery(query): ApiQuery<AgentQuery>,
) -> Result<Json<Value>, ApiError> {
    let target = Target::parse(&conversation_id, query.agent_id.as_deref())?;
    Ok(Json(state.service.conversations.fork(&target).await?))
}

async fn messages(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    ApiQuery(query): ApiQuery<AgentQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let target = Target::parse(&conversation_id, query.agent_id.as_deref())?;
    let page = page_of(&page_query, CONVERSATION_MESSAGE_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.conversations.messages(&target, &page).await?))
}

fn streaming_default() -> bool {
    true
}

/// Letta's `ConversationMessageRequest`: streams unless `streaming` is
/// false; `background` runs the turn as a background run whose stream
/// `/stream` resumes.
#[derive(Debug, Deserialize)]
struct ConversationSend {
    messages: Option<Vec<MessageCreate>>,
    input: Option<Content>,
    max_steps: Option<u32>,
    #[serde(default = "streaming_default")]
    streaming: bool,
    #[serde(default)]
    stream_tokens: bool,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    include_pings: Option<bool>,
    #[serde(default)]
    agent_id: Option<String>,
}

impl ConversationSend {
    /// The target, and the request as an agent's send.
    fn split(self, conversation_id: &str) -> Result<(Target, SendMessages, bool), ApiError> {
        let target = Target::parse(conversation_id, self.agent_id.as_deref())?;
        if self.messages.as_ref().is_none_or(Vec::is_empty) && self.input.is_none() {
            return Err(unprocessable("Messages must not be empty".into()));
        }
        let send = SendMessages {
            messages: self.messages,
            input: self.input,
            max_steps: self.max_steps,
            streaming: self.streaming,
            stream_tokens: self.stream_tokens,
        };
        Ok((target, send, self.background))
    }
}

async fn send(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ConversationSend>,
) -> Result<Response, ApiError> {
    let pings = request.include_pings.unwrap_or(true);
    let (target, send, background) = request.split(&conversation_id)?;
    let (agent_id, conversation) = state.service.conversations.resolve(&target).await?;
    let (max_steps, key, streaming) = (send.max_steps, turn_key(&headers, &send)?, send.streaming);
    let stream_tokens = send.stream_tokens;
    let turn = turn_request(send)?;
    if background {
        let TurnInput::Texts(texts) = turn else {
            return Err(unprocessable("an approval is answered without background".into()));
        };
        let run = state.service.runs.start_in((&agent_id, conversation), texts, max_steps, key).await?;
        return Ok(match streaming {
            true => follow_run(state, run.id, (0, DEFAULT_POLL_MS, pings)),
            false => Json(kelpie_agent::actors::run_store::run_json(&run)).into_response(),
        });
    }
    if streaming {
        return Ok(stream_turn(state, (agent_id, conversation), turn, (max_steps, key, stream_tokens)));
    }
    let target = (agent_id.as_str(), conversation);
    let outcome = state.service.runs.run_turn_in(target, turn, max_steps, None, key).await?;
    Ok(Json(json!({
        "messages": outcome.messages,
        "stop_reason": outcome.stop_reason_json(),
        "usage": outcome.usage_json(),
        "logprobs": null,
        "turns": null,
    }))
    .into_response())
}

/// Letta's default `poll_interval` (0.1 s), in milliseconds.
const DEFAULT_POLL_MS: u64 = 100;

async fn preview(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    ApiJson(request): ApiJson<ConversationSend>,
) -> Result<Json<Value>, ApiError> {
    let (target, send, _) = request.split(&conversation_id)?;
    let texts = super::messages::user_texts(send)?;
    Ok(Json(state.service.conversations.preview_payload(&target, &texts).await?))
}

/// Follows `run_id`, else the newest active background run of the history.
async fn resume_stream(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: RetrieveStream = optional_body(&body)?;
    let poll_seconds = request.poll_interval.unwrap_or(0.1);
    if !poll_seconds.is_finite() || poll_seconds < 0.0 {
        return Err(unprocessable(format!("poll_interval {poll_seconds} is not a number of seconds")));
    }
    let run_id = match (request.run_id, request.otid) {
        (Some(run_id), _) => {
            state.service.runs.get(&run_id).await?;
            run_id
        }
        (None, Some(_)) => {
            return Err(unprocessable("finding a run by otid is not supported: give run_id".into()));
        }
        (None, None) => {
            let target = Target::parse(&conversation_id, request.agent_id.as_deref())?;
            state.service.conversations.active_run(&target).await?.id
        }
    };
    let poll_ms = (poll_seconds * 1_000.0) as u64;
    let pings = request.include_pings.unwrap_or(true);
    Ok(follow_run(state, run_id, (request.starting_after, poll_ms, pings)))
}

async fn cancel(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    ApiQuery(query): ApiQuery<AgentQuery>,
) -> Result<Json<Value>, ApiError> {
    let target = Target::parse(&conversation_id, query.agent_id.as_deref())?;
    Ok(Json(state.service.conversations.cancel(&target).await?))
}

/// Letta's `CompactionRequest` (the body may be empty).
#[derive(Debug, Default, Deserialize)]
struct CompactionBody {
    agent_id: Option<String>,
    compaction_settings: Option<Value>,
}

/// Letta's `dry_run` changes nothing here: the prompt is built at every
/// step and never stored.
async fn recompile(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    body: Bytes,
) -> Result<Json<String>, ApiError> {
    let request: CompactionBody = optional_body(&body)?;
    let target = Target::parse(&conversation_id, request.agent_id.as_deref())?;
    Ok(Json(state.service.conversations.recompile(&target).await?))
}

async fn compact(
    State(state): State<AppState>,
    Path(conversation_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: CompactionBody = optional_body(&body)?;
    let target = Target::parse(&conversation_id, request.agent_id.as_deref())?;
    let request = SummarizeRequest { compaction_settings: request.compaction_settings };
    Ok(Json(state.service.conversations.compact(&target, request).await?))
}
