//! `/v1/agents/`: create, list (pagination, name and tag filters),
//! retrieve, modify, delete; tool attach and detach; reset-messages.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::Value;

use super::extract::{page_of, unread_body_error, ApiJson, ApiQuery};
use super::multipart::{self, FormEvent, FormReader};
use crate::api::{repeated_param, AgentListQuery, ApprovalSetting, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::{CreateAgent, SummarizeRequest, UpdateAgent};
use kelpie_agent::service::transfer::{AgentExport, AgentImport, ImportOptions};

/// Largest import body (the agent file and the form around it), in bytes.
/// The file streams through in bounded memory; this only bounds the work
/// one request may ask for.
const IMPORT_BODY_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// Largest form field other than the file, in bytes.
const FORM_FIELD_BYTES_MAX: usize = 64 * 1024;
/// Agents per page when the client does not say.
const AGENT_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    // Only the import takes a body larger than axum's default limit; it
    // streams, and counts its own bytes against IMPORT_BODY_BYTES_MAX.
    let import = Router::new().route("/v1/agents/import", post(import)).layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/v1/agents/", get(list).post(create))
        .route("/v1/agents", get(list).post(create))
        .route("/v1/agents/count", get(count))
        .route("/v1/tags", get(tags))
        .route("/v1/tags/", get(tags))
        .route("/v1/agents/{agent_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/agents/{agent_id}/tools/attach/{tool_id}", patch(attach_tool))
        .route("/v1/agents/{agent_id}/tools/detach/{tool_id}", patch(detach_tool))
        .route("/v1/agents/{agent_id}/tools/approval/{tool_name}", patch(set_approval))
        .route("/v1/agents/{agent_id}/tools/{tool_name}/run", post(run_tool))
        .route("/v1/agents/{agent_id}/reset-messages", patch(reset_messages))
        .route("/v1/agents/{agent_id}/export", get(export).post(export))
        .route("/v1/agents/{agent_id}/summarize", post(summarize))
        .route("/v1/agents/{agent_id}/context", get(context_window))
        .route("/v1/agents/{agent_id}/recompile", post(recompile))
        .route("/v1/agents/{agent_id}/system-prompt/recompile", post(recompile))
        .merge(import)
}

#[derive(Debug, Default, serde::Deserialize)]
struct TagQuery {
    query_text: Option<String>,
    /// Only this tag (Letta's `name`).
    name: Option<String>,
    order_by: Option<String>,
}

/// Tags per page when the client does not say.
const TAG_PAGE_COUNT_DEFAULT: usize = 50;

async fn tags(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TagQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    let page = page_of(&page_query, TAG_PAGE_COUNT_DEFAULT, false)?;
    if let Some(order_by) = query.order_by.as_deref().filter(|by| *by != "name") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("order_by {order_by:?} is not \"name\""),
        ));
    }
    let filters = (query.query_text.as_deref(), query.name.as_deref());
    Ok(Json(state.service.agents.tags(filters, &page).await?))
}

/// Letta's `update_timestamp` and `dry_run` change nothing here: the
/// prompt is built at every step and never stored.
async fn recompile(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<String>, ApiError> {
    Ok(Json(state.service.turns.system_prompt(&agent_id).await?))
}

/// Letta has no idempotency key on create; we accept the usual
/// `Idempotency-Key` header.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateAgent>,
) -> Result<Json<Value>, ApiError> {
    let key = super::extract::idempotency_key(&headers)?;
    Ok(Json(state.service.create_agent(request, key.as_deref()).await?))
}

async fn count(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AgentListQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<usize>, ApiError> {
    let tags = repeated_param(raw.as_deref(), "tags");
    let match_all = query.match_all_tags.unwrap_or(false);
    Ok(Json(state.service.agents.count(query.name.as_deref(), &tags, match_all).await?))
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
    let filters = (query.name.as_deref(), tags.as_slice(), match_all);
    Ok(Json(state.service.list_agents(filters, query.identity_id.as_deref(), &page).await?))
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
    Ok(Json(state.service.update_agent(&agent_id, request).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.delete_agent(&agent_id).await?))
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

/// The setting is read from the body (Letta's preferred place) or the query.
async fn set_approval(
    State(state): State<AppState>,
    Path((agent_id, tool_name)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<ApprovalSetting>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let from_body = match body.iter().all(u8::is_ascii_whitespace) {
        true => None,
        false => {
            serde_json::from_slice::<ApprovalSetting>(&body)
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
                .requires_approval
        }
    };
    let required = from_body.or(query.requires_approval).ok_or_else(|| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "requires_approval (true or false) is required")
    })?;
    Ok(Json(state.service.agents.set_approval(&agent_id, &tool_name, required).await?))
}

/// The body (`{"args": {...}}`) is optional.
async fn run_tool(
    State(state): State<AppState>,
    Path((agent_id, tool_name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let args = match body.iter().all(u8::is_ascii_whitespace) {
        true => Value::Null,
        false => serde_json::from_slice::<Value>(&body)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?["args"]
            .clone(),
    };
    Ok(Json(state.service.turns.run_tool(&agent_id, &tool_name, args).await?))
}

/// Letta can add default first messages (`add_default_initial_messages`);
/// this server has none, so the body is not read.
async fn reset_messages(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.agents.reset_messages(&agent_id).await?))
}

/// Letta's optional `CompactionRequest`: an empty body, `null` or
/// `{"compaction_settings": {...}}`.
async fn summarize(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: SummarizeRequest = match body.iter().all(u8::is_ascii_whitespace) {
        true => SummarizeRequest::default(),
        false => serde_json::from_slice::<Option<SummarizeRequest>>(&body)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("invalid body: {e}")))?
            .unwrap_or_default(),
    };
    Ok(Json(state.service.turns.summarize(&agent_id, request).await?))
}

async fn context_window(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.turns.context_window(&agent_id).await?))
}

/// The agent as one JSON file ([`kelpie_agent::agent_file`]), streamed a
/// page of messages or passages at a time. An error after the first bytes
/// cuts the body short (the file is then invalid, never silently partial).
///
/// Letta's POST variant takes a body (`spec`) that Kelpie does not use; it is
/// read (`_body`) so that it is not left unread on the connection (see
/// `read_ignored_body` in `routes/mod.rs`, which does so for GET).
async fn export(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    _body: Bytes,
) -> Result<Response, ApiError> {
    let export = state.service.transfer.export(&agent_id).await?;
    let chunks = futures::stream::unfold(Some(export), |export: Option<AgentExport>| async move {
        let mut export = export?;
        match export.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(Bytes::from(chunk)), Some(export))),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%err, "export cut short");
                Some((Err(std::io::Error::other(err.to_string())), None))
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(chunks)).into_response())
}

fn form_flag(fields: &[(String, Vec<u8>)], name: &str, default: bool) -> Result<bool, ApiError> {
    match fields.iter().find(|(field, _)| field == name).map(|(_, content)| content.as_slice()) {
        None => Ok(default),
        Some(b"true") => Ok(true),
        Some(b"false") => Ok(false),
        Some(_) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{name} must be true or false")))
        }
    }
}

/// The text of form field `name` (the first of `names` present), if sent.
fn form_text(fields: &[(String, Vec<u8>)], names: &[&str]) -> Result<Option<String>, ApiError> {
    let Some((name, content)) = fields.iter().find(|(field, _)| names.contains(&field.as_str())) else {
        return Ok(None);
    };
    let text = String::from_utf8(content.clone())
        .map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{name} must be UTF-8")))?;
    Ok(Some(text).filter(|text| !text.is_empty()))
}

fn form_options(fields: &[(String, Vec<u8>)]) -> Result<ImportOptions, ApiError> {
    Ok(ImportOptions {
        override_name: form_text(fields, &["override_name", "name"])?,
        append_copy_suffix: form_flag(fields, "append_copy_suffix", true)?,
        strip_messages: form_flag(fields, "strip_messages", false)?,
        model: form_text(fields, &["override_model_handle", "model"])?,
        embedding: form_text(fields, &["override_embedding_handle", "embedding"])?,
    })
}

/// Letta's form: `file` (the agent file), `override_name`,
/// `append_copy_suffix` (default true), `strip_messages` (default false),
/// in any order. The file streams into the import as it arrives.
async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    let unprocessable = |detail: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, detail);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| unprocessable("expected a multipart/form-data body with a file field".into()))?;
    let mut form = FormReader::new(&boundary);
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    let mut import: Option<AgentImport> = None;
    let mut in_file = false;
    let mut received: u64 = 0;
    let mut body = body.into_data_stream();
    let outcome: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
            received += chunk.len() as u64;
            if received > IMPORT_BODY_BYTES_MAX {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("an import body is at most {IMPORT_BODY_BYTES_MAX} bytes"),
                ));
            }
            for event in form.feed(&chunk).map_err(unprocessable)? {
                match event {
                    FormEvent::Part { name, .. } if name == "file" => {
                        if import.is_some() {
                            return Err(unprocessable("the form has two file fields".into()));
                        }
                        import = Some(state.service.transfer.import(form_options(&fields)?));
                        in_file = true;
                    }
                    FormEvent::Part { name, .. } => fields.push((name, Vec::new())),
                    FormEvent::Data(bytes) if in_file => {
                        import.as_mut().expect("a file part is open").feed(&bytes).await?;
                    }
                    FormEvent::Data(bytes) => {
                        let (name, content) = fields.last_mut().expect("a part is open");
                        content.extend_from_slice(&bytes);
                        if content.len() > FORM_FIELD_BYTES_MAX {
                            return Err(unprocessable(format!(
                                "form field {name} is over {FORM_FIELD_BYTES_MAX} bytes"
                            )));
                        }
                    }
                    FormEvent::PartEnd => in_file = false,
                }
            }
        }
        form.finish().map_err(unprocessable)
    }
    .await;
    let Some(mut import) = import else {
        if let Err(err) = outcome {
            return Ok(unread_body_error(err));
        }
        return Err(unprocessable("the form has no file field".into()));
    };
    if let Err(err) = outcome {
        import.cancel().await;
        return Ok(unread_body_error(err));
    }
    match form_options(&fields) {
        Ok(options) => import.set_options(options),
        Err(err) => {
            import.cancel().await;
            return Err(err);
        }
    }
    Ok(Json(import.finish().await?).into_response())
}
