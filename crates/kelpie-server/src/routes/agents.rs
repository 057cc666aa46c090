//! `/v1/agents/`: create, list (pagination, name and tag filters),
//! retrieve, modify, delete; tool attach and detach; reset-messages.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use super::multipart;
use crate::api::{repeated_param, AgentListQuery, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::{CreateAgent, UpdateAgent};
use kelpie_agent::service::transfer::ImportOptions;

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Largest agent file an import accepts, in bytes.
const IMPORT_FILE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Agents per page when the client does not say.
const AGENT_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    // Only the import takes a body larger than axum's default limit.
    let import = Router::new()
        .route("/v1/agents/import", post(import))
        .layer(DefaultBodyLimit::max(IMPORT_FILE_BYTES_MAX));
    Router::new()
        .route("/v1/agents/", get(list).post(create))
        .route("/v1/agents", get(list).post(create))
        .route("/v1/agents/{agent_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/agents/{agent_id}/tools/attach/{tool_id}", patch(attach_tool))
        .route("/v1/agents/{agent_id}/tools/detach/{tool_id}", patch(detach_tool))
        .route("/v1/agents/{agent_id}/reset-messages", patch(reset_messages))
        .route("/v1/agents/{agent_id}/export", get(export))
        .merge(import)
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
    Ok(Json(state.service.agents.create(request, key).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AgentListQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, AGENT_PAGE_COUNT_DEFAULT, false)?;
    let tags = repeated_param(raw.as_deref(), "tags");
    let match_all = query.match_all_tags.unwrap_or(false);
    Ok(Json(state.service.agents.list(query.name.as_deref(), &tags, match_all, &page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.get(&agent_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiJson(request): ApiJson<UpdateAgent>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.update(&agent_id, request).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.delete(&agent_id).await?))
}

async fn attach_tool(
    State(state): State<AppState>,
    Path((agent_id, tool_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.set_tool(&agent_id, &tool_id, true).await?))
}

async fn detach_tool(
    State(state): State<AppState>,
    Path((agent_id, tool_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.set_tool(&agent_id, &tool_id, false).await?))
}

/// Letta can add default first messages (`add_default_initial_messages`);
/// this server has none, so the body is not read.
async fn reset_messages(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.reset_messages(&agent_id).await?))
}

/// The agent as one JSON file ([`kelpie_agent::service::transfer::AgentFile`]).
async fn export(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.transfer.export(&agent_id).await?))
}

fn form_flag(fields: &[multipart::FormField], name: &str, default: bool) -> Result<bool, ApiError> {
    match fields.iter().find(|field| field.name == name).map(|field| field.content.as_slice()) {
        None => Ok(default),
        Some(b"true") => Ok(true),
        Some(b"false") => Ok(false),
        Some(_) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{name} must be true or false")))
        }
    }
}

/// Letta's form: `file` (the agent file), `override_name`,
/// `append_copy_suffix` (default true), `strip_messages` (default false).
async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let unprocessable = |detail: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| unprocessable("expected a multipart/form-data body with a file field".into()))?;
    let fields = multipart::parse(&body, &boundary).map_err(unprocessable)?;
    let file = fields
        .iter()
        .find(|field| field.name == "file")
        .ok_or_else(|| unprocessable("the form has no file field".into()))?;
    let override_name = match fields.iter().find(|field| field.name == "override_name") {
        Some(field) => Some(
            String::from_utf8(field.content.clone())
                .map_err(|_| unprocessable("override_name must be UTF-8".into()))?,
        ),
        None => None,
    };
    let options = ImportOptions {
        override_name,
        append_copy_suffix: form_flag(&fields, "append_copy_suffix", true)?,
        strip_messages: form_flag(&fields, "strip_messages", false)?,
    };
    Ok(Json(state.service.transfer.import(&file.content, options).await?))
}
