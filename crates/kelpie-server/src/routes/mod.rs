//! One router per resource, composed here, behind the optional bearer-token
//! check and a JSON 404 for unknown routes. Every request passes, outermost
//! first: its id, span and metrics (`crate::telemetry::request_context`,
//! which also gives every error body its shape), the URI length limit
//! ([`URI_BYTES_MAX`], 414), the body size limit
//! ([`extract::REQUEST_BODY_BYTES_MAX`], 413), the drain at shutdown, the
//! bearer token, forwarding to an agent's owner node.

pub mod agents;
pub mod all_messages;
pub mod archival;
pub mod archives;
pub mod auth;
pub mod batches;
pub mod blocks;
pub mod chat_completions;
pub mod cluster;
pub mod console;
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

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

/// Longest request target (path and query) served; a longer one answers 414
/// with a JSON body. (One over hyper's own limit, 64 KiB, is refused by
/// hyper with a bare 414 before it reaches the router.)
pub const URI_BYTES_MAX: usize = 16 * 1024;

/// The API with the MCP endpoint (`/mcp`, behind the same bearer token)
/// and the web console (`console`: its page and files only, outside the
/// bearer-token check, since the page holds no data and asks for the token).
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
        .merge(console::router())
        .layer(DefaultBodyLimit::max(extract::REQUEST_BODY_BYTES_MAX))
        .layer(middleware::from_fn(read_ignored_body))
        .layer(middleware::from_fn(limit_uri))
        .layer(middleware::from_fn(crate::telemetry::request_context))
}

/// Reads the body of a GET, HEAD or DELETE request (at most
/// [`extract::REQUEST_BODY_BYTES_MAX`], else 413) before its handler runs,
/// and hands the handler the bytes. Those handlers read no body, and a body
/// left unread makes the connection close with bytes still to read: a TCP
/// reset, which can cut a streamed answer short (schemathesis saw an export
/// sent with a JSON body cut so).
async fn read_ignored_body(request: Request, next: Next) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD | Method::DELETE) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, extract::REQUEST_BODY_BYTES_MAX).await {
        Ok(bytes) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over REQUEST_BODY_BYTES_MAX ({} bytes)",
                extract::REQUEST_BODY_BYTES_MAX
            ),
        )
        .into_response(),
    }
}

/// Refuses a request target over [`URI_BYTES_MAX`] with 414.
async fn limit_uri(request: Request, next: Next) -> Response {
    let length = request.uri().path_and_query().map_or(0, |target| target.as_str().len());
    if length > URI_BYTES_MAX {
        let detail =
            format!("the request target is {length} bytes, over URI_BYTES_MAX ({URI_BYTES_MAX} bytes)");
        return ApiError::new(StatusCode::URI_TOO_LONG, detail).into_response();
    }
    next.run(request).await
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
        .merge(crate::telemetry::router())
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
/// paths) and, when `metrics.public` is set, `GET /metrics`, needs
/// `Authorization: Bearer <key>` (the scheme in any case, as HTTP has it).
/// A refusal is 401 with `WWW-Authenticate`. (The web console's page and
/// files never pass here: `router` mounts them beside the API.)
async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_key.as_deref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let open = health::OPEN_PATHS.contains(&path)
        || path == auth::LOGIN_PATH
        || path == mcp::OAUTH_CALLBACK_PATH
        || (state.config.observability.metrics_public && path == crate::telemetry::METRICS_PATH);
    if open {
        return next.run(request).await;
    }
    match bearer_token(request.headers().get(header::AUTHORIZATION)) {
        Ok(presented) if auth::same_secret(presented, expected) => next.run(request).await,
        Ok(_) => unauthorized("wrong bearer token"),
        Err(reason) => unauthorized(reason),
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched
/// in any case), or why there is none.
fn bearer_token(value: Option<&axum::http::HeaderValue>) -> Result<&str, &'static str> {
    let value = value.ok_or("missing bearer token: send Authorization: Bearer <key>")?;
    let value = value.to_str().map_err(|_| "the Authorization header is not visible ASCII")?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization scheme must be Bearer");
    }
    match token.trim() {
        "" => Err("missing bearer token: send Authorization: Bearer <key>"),
        token => Ok(token),
    }
}

fn unauthorized(detail: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, detail).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_matched_in_any_case() {
        let token =
            |value: &str| bearer_token(Some(&HeaderValue::from_str(value).unwrap())).map(str::to_string);
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "  bEaReR   k1 "] {
            assert_eq!(token(value), Ok("k1".to_string()), "{value:?}");
        }
        assert_eq!(token("Basic k1"), Err("the Authorization scheme must be Bearer"));
        assert_eq!(token("Bearerk1"), Err("the Authorization scheme must be Bearer"));
        assert_eq!(token("Bearer "), Err("missing bearer token: send Authorization: Bearer <key>"));
        assert_eq!(bearer_token(None), Err("missing bearer token: send Authorization: Bearer <key>"));
    }
}
