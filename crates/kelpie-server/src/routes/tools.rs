//! `/v1/tools/`: list (filtered, paged), count, search, retrieve, create and
//! upsert (custom Python tools from `source_code`), modify and delete; and
//! `GET /v1/agents/{agent_id}/tools`. Built-in tools are listed first and
//! cannot be changed. `POST /v1/tools/generate-tool` has the model write a
//! tool (not stored); the MCP OAuth callback hands a code to the connect
//! stream awaiting it.

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::{listed_param, PageQuery};
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::{CodeInput, CreateTool, GenerateTool, RunToolFromSource, UpdateTool};
use kelpie_agent::service::mcp::OAuthCallback;
use kelpie_agent::service::tools::ToolFilter;

/// Tools per page when the client does not say.
const TOOL_PAGE_COUNT_DEFAULT: usize = 50;
/// Search results when the client does not say, and the most it may ask.
const TOOL_SEARCH_COUNT_DEFAULT: usize = 10;
const TOOL_SEARCH_COUNT_MAX: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tools/", get(list).post(create).put(upsert))
        .route("/v1/tools", get(list).post(create).put(upsert))
        .route("/v1/tools/count", get(count))
        .route("/v1/tools/search", post(search))
        .route("/v1/tools/run", post(run_from_source))
        .route("/v1/tools/generate-schema", post(generate_schema))
        .route("/v1/tools/generate-tool", post(generate_tool))
        .route("/v1/tools/mcp/oauth/callback", get(oauth_callback))
        .route("/v1/tools/add-base-tools", post(add_base_tools))
        .route("/v1/tools/{tool_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/agents/{agent_id}/tools", get(agent_tools))
        .route("/v1/agents/{agent_id}/tools/", get(agent_tools))
}

/// The single-valued filters; the list ones may repeat or hold commas and
/// are read from the raw query.
#[derive(Debug, Default, Deserialize)]
struct ToolListQuery {
    name: Option<String>,
    search: Option<String>,
    return_only_letta_tools: Option<bool>,
}

fn filter_of(query: ToolListQuery, raw: Option<&str>) -> ToolFilter {
    ToolFilter {
        name: query.name,
        names: listed_param(raw, "names"),
        ids: listed_param(raw, "tool_ids"),
        search: query.search,
        tool_types: listed_param(raw, "tool_types"),
        exclude_tool_types: listed_param(raw, "exclude_tool_types"),
        only_letta_tools: query.return_only_letta_tools.unwrap_or(false),
    }
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ToolListQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, TOOL_PAGE_COUNT_DEFAULT, false)?;
    let filter = filter_of(query, raw.as_deref());
    Ok(Json(state.service.tools.list_page(&filter, &page).await?))
}

async fn count(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ToolListQuery>,
    RawQuery(raw): RawQuery,
) -> Result<Json<usize>, ApiError> {
    let filter = filter_of(query, raw.as_deref());
    Ok(Json(state.service.tools.list_filtered(&filter).await?.len()))
}

#[derive(Debug, Default, Deserialize)]
struct SearchTools {
    query: Option<String>,
    limit: Option<usize>,
    tool_types: Option<Vec<String>>,
    tags: Option<Vec<String>>,
}

async fn search(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SearchTools>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let limit = request.limit.unwrap_or(TOOL_SEARCH_COUNT_DEFAULT);
    if limit == 0 || limit > TOOL_SEARCH_COUNT_MAX {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("limit {limit} is outside 1..={TOOL_SEARCH_COUNT_MAX}"),
        ));
    }
    let filter = ToolFilter { tool_types: request.tool_types.unwrap_or_default(), ..ToolFilter::default() };
    let tags = request.tags.unwrap_or_default();
    Ok(Json(state.service.tools.search(request.query.as_deref(), &filter, &tags, limit).await?))
}

async fn run_from_source(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RunToolFromSource>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.run_from_source(request).await?))
}

async fn generate_schema(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CodeInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.generate_schema(request).await?))
}

/// A tool the configured model writes from a prompt: parsed, not stored.
async fn generate_tool(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<GenerateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tool_generator.generate(request).await?))
}

/// Where the OAuth provider sends the user back to: the code goes to the
/// connect stream awaiting its state (`GET /v1/mcp-servers/connect/{id}`).
async fn oauth_callback(
    State(state): State<AppState>,
    ApiQuery(callback): ApiQuery<OAuthCallback>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.oauth_callback(callback)?))
}

async fn add_base_tools(State(state): State<AppState>) -> Json<Vec<Value>> {
    Json(state.service.tools.base_tools())
}

async fn agent_tools(
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, TOOL_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.agents.list_tools(&agent_id, &page).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(tool_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.get(&tool_id).await?))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.create(request, false).await?))
}

async fn upsert(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.create(request, true).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(tool_id): Path<String>,
    ApiJson(request): ApiJson<UpdateTool>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.modify(&tool_id, request).await?))
}

async fn remove(State(state): State<AppState>, Path(tool_id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.tools.delete(&tool_id).await?))
}
