//! `/v1/mcp-servers/`: register MCP servers (stdio, SSE, streamable HTTP),
//! list, retrieve, modify and delete them, list and run their tools, and
//! refresh their tool lists. Secrets come back masked. `connect` tries a
//! fresh connection and streams Letta's OAuth stream events (SSE).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::state::AppState;
use kelpie_agent::requests::{CreateMcpServer, UpdateMcpServer};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/mcp-servers/", get(list).post(create))
        .route("/v1/mcp-servers", get(list).post(create))
        .route("/v1/mcp-servers/{server_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/mcp-servers/{server_id}/tools", get(tools))
        .route("/v1/mcp-servers/{server_id}/tools/{tool_id}", get(tool))
        .route("/v1/mcp-servers/{server_id}/tools/{tool_id}/run", post(run))
        .route("/v1/mcp-servers/{server_id}/refresh", patch(refresh))
        .route("/v1/mcp-servers/connect/{server_id}", get(connect))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateMcpServer>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.create(request).await?))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.mcp_servers.list().await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.get(&server_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    ApiJson(request): ApiJson<UpdateMcpServer>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.update(&server_id, request).await?))
}

/// 204 with no body, as Letta.
async fn remove(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.mcp_servers.delete(&server_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tools(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.mcp_servers.tools(&server_id).await?))
}

async fn tool(
    State(state): State<AppState>,
    Path((server_id, tool_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.get_tool(&server_id, &tool_id).await?))
}

#[derive(Debug, Default, Deserialize)]
struct RunTool {
    #[serde(default)]
    args: Value,
}

/// The body is optional: none runs the tool without arguments.
async fn run(
    State(state): State<AppState>,
    Path((server_id, tool_id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let args = match body.is_empty() {
        true => Value::Null,
        false => {
            serde_json::from_slice::<RunTool>(&body)
                .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
                .args
        }
    };
    Ok(Json(state.service.mcp_servers.run_tool(&server_id, &tool_id, args).await?))
}

async fn refresh(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.refresh(&server_id).await?))
}

/// Letta's connect stream: `connection_attempt`, then `success` with the
/// server's tools or `error` with the reason, with the OAuth flow's events
/// between for a server that asks for authorization. An unknown server is
/// a plain 404 before the stream starts.
async fn connect(
    State(state): State<AppState>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let attempt = state.service.mcp_servers.connect_attempt(&server_id).await?;
    let redirect_uri = callback_url(&state, &headers);
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    // The receiver is only dropped when the client leaves: nothing to tell.
    let _ = sender.send(super::messages::sse(&attempt));
    tokio::spawn(async move {
        let emit = move |event: Value| drop(sender.send(super::messages::sse(&event)));
        state.service.mcp_servers.connect(&server_id, &redirect_uri, &emit).await;
    });
    Ok(super::messages::sse_response(receiver))
}

/// Where the OAuth provider sends the user back: this server as the
/// client reached it (its `Host`, `https` behind a proxy that says so).
fn callback_url(state: &AppState, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map_or_else(|| state.config.bind.to_string(), str::to_string);
    let forwarded_https =
        headers.get("x-forwarded-proto").and_then(|proto| proto.to_str().ok()) == Some("https");
    let scheme = if forwarded_https { "https" } else { "http" };
    format!("{scheme}://{host}{OAUTH_CALLBACK_PATH}")
}

/// The OAuth callback's path, answered without a bearer token (the
/// provider's redirect carries none; only a pending state is accepted).
pub const OAUTH_CALLBACK_PATH: &str = "/v1/tools/mcp/oauth/callback";
