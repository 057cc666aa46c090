//! One router per resource, composed here, behind the optional bearer-token
//! check and a JSON 404 for unknown routes.

pub mod agents;
pub mod all_messages;
pub mod archival;
pub mod archives;
pub mod auth;
pub mod batches;
pub mod blocks;
pub mod chat_completions;
pub mod cluster;
pub mod conversations;
pub mod embeddings;
pub mod extract;
pub mod folders;
pub mod groups;
pub mod health;
pub mod identities;
pub mod jobs;
pub mod mcp;
pub mod mcp_legacy;
pub mod messages;
pub mod models;
pub mod multipart;
pub mod openapi;
pub mod passages;
pub mod providers;
pub mod runs;
pub mod sandbox_config;
pub mod shared_blocks;
pub mod steps;
pub mod tools;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// The API with the MCP endpoint (`/mcp`, behind the same bearer token).
pub fn router(state: AppState) -> Router {
    let api = api_router(state.clone());
    let gateway =
        std::sync::Arc::new(crate::mcp_server::RouterGateway::new(api.clone(), state.config.api_key.clone()));
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    if !state.config.bind.ip().is_unspecified() {
        hosts.push(state.config.bind.ip().to_string());
    }
    let mcp = crate::mcp_server::http_service(gateway, hosts, state.shutdown.clone());
    let endpoint =
        Router::new().nest_service("/mcp", mcp).layer(middleware::from_fn_with_state(state, require_api_key));
    api.merge(endpoint)
}

/// Every REST route, behind the bearer-token check and cluster forwarding.
fn api_router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(auth::router())
        .merge(embeddings::router())
        .merge(agents::router())
        .merge(blocks::router())
        .merge(shared_blocks::router())
        .merge(identities::router())
        .merge(conversations::router())
        .merge(groups::router())
        .merge(folders::router())
        .merge(jobs::router())
        .merge(messages::router())
        .merge(batches::router())
        .merge(all_messages::router())
        .merge(chat_completions::router())
        .merge(archival::router())
        .merge(archives::router())
        .merge(passages::router())
        .merge(models::router())
        .merge(providers::router())
        .merge(tools::router())
        .merge(mcp::router())
        .merge(mcp_legacy::router())
        .merge(openapi::router())
        .merge(runs::router())
        .merge(steps::router())
        .merge(sandbox_config::router())
        .merge(cluster::router())
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(state.clone(), crate::forward::forward_agent_requests))
        .layer(middleware::from_fn_with_state(state.clone(), require_api_key))
        .layer(middleware::from_fn_with_state(
            std::sync::Arc::clone(&state.drain),
            crate::drain::drain_requests,
        ))
        .with_state(state)
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// When `KELPIE_API_KEY` is set, every request but the health and
/// readiness checks, the login and the MCP OAuth callback (exactly their
/// paths) needs `Authorization: Bearer <key>`.
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_key.as_deref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if health::OPEN_PATHS.contains(&path) || path == auth::LOGIN_PATH || path == mcp::OAUTH_CALLBACK_PATH {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented == Some(expected) {
        next.run(request).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response()
    }
}
