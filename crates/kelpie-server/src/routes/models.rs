//! `GET /v1/models/` and `GET /v1/models/embedding`: the model catalog.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models/", get(llm_models))
        .route("/v1/models", get(llm_models))
        .route("/v1/models/embedding", get(embedding_models))
        .route("/v1/models/embedding/", get(embedding_models))
}

async fn llm_models(State(state): State<AppState>) -> Json<Vec<Value>> {
    Json(state.service.catalog.llm_models().await)
}

async fn embedding_models(State(state): State<AppState>) -> Json<Vec<Value>> {
    Json(state.service.catalog.embedding_models().await)
}
