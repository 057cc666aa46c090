//! `/v1/tools/mcp/servers/*`: Letta's older MCP routes, by server name, for
//! clients written before `/v1/mcp-servers`. The same servers and tools.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tools/mcp/servers", get(list).put(add))
        .route("/v1/tools/mcp/servers/", get(list).put(add))
        .route("/v1/tools/mcp/servers/test", post(test))
        .route("/v1/tools/mcp/servers/connect", post(test))
        .route("/v1/tools/mcp/servers/{server_name}", axum::routing::patch(update).delete(remove))
        .route("/v1/tools/mcp/servers/{server_name}/tools", get(tools))
        .route("/v1/tools/mcp/servers/{server_name}/resync", post(resync))
        .route("/v1/tools/mcp/servers/{server_name}/{tool_name}", post(add_tool))
        .route("/v1/tools/mcp/servers/{server_name}/tools/{tool_name}/execute", post(execute))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_list().await?))
}

async fn add(State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_add(body).await?))
}

async fn test(State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_test(body).await?))
}

async fn update(
    State(state): State<AppState>,
    Path(server_name): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_update(&server_name, body).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(server_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_delete(&server_name).await?))
}

async fn tools(
    State(state): State<AppState>,
    Path(server_name): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_tools(&server_name).await?))
}

async fn resync(
    State(state): State<AppState>,
    Path(server_name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_resync(&server_name).await?))
}

async fn add_tool(
    State(state): State<AppState>,
    Path((server_name, tool_name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.mcp_servers.legacy_add_tool(&server_name, &tool_name).await?))
}

/// The body (`{"args": {...}}`) is optional.
async fn execute(
    State(state): State<AppState>,
    Path((server_name, tool_name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let args = match body.is_empty() {
        true => Value::Null,
        false => serde_json::from_slice::<Value>(&body)
            .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?["args"]
            .clone(),
    };
    Ok(Json(state.service.mcp_servers.legacy_execute(&server_name, &tool_name, args).await?))
}
