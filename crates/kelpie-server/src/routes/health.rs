//! `GET /v1/health/`: liveness, and `GET /v1/ready/`: readiness, in
//! Letta's shape. The server answers once its node has started (storage
//! open, runs recovered); while it drains at shutdown readiness answers
//! 503 and liveness 200 (`crate::drain`).

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::state::{AppState, SERVER_VERSION};

#[derive(Debug, Serialize, PartialEq)]
pub struct Health {
    pub version: &'static str,
    pub status: &'static str,
}

/// The paths answered without the bearer token (exactly these).
pub const OPEN_PATHS: [&str; 4] = ["/v1/health/", "/v1/health", "/v1/ready/", "/v1/ready"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/health/", get(health))
        .route("/v1/health", get(health))
        .route("/v1/ready/", get(health))
        .route("/v1/ready", get(health))
}

async fn health() -> Json<Health> {
    Json(Health { version: SERVER_VERSION, status: "ok" })
}
