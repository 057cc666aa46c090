//! `GET /v1/health/`: liveness, in Letta's shape.

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::state::{AppState, SERVER_VERSION};

#[derive(Debug, Serialize, PartialEq)]
pub struct Health {
    pub version: &'static str,
    pub status: &'static str,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/health/", get(health)).route("/v1/health", get(health))
}

async fn health() -> Json<Health> {
    Json(Health { version: SERVER_VERSION, status: "ok" })
}
