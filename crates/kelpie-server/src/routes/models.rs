//! `GET /v1/models/` and `GET /v1/models/embedding`: the models of the
//! configured providers and of those created at `/v1/providers/`.

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use kelpie_agent::service::providers::ModelFilter;
use serde_json::Value;

use crate::api::repeated_param;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models/", get(llm_models))
        .route("/v1/models", get(llm_models))
        .route("/v1/models/embedding", get(embedding_models))
        .route("/v1/models/embedding/", get(embedding_models))
}

/// Letta's filters, each repeatable: `provider_category`, `provider_name`,
/// `provider_type`.
async fn llm_models(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    let filter = ModelFilter {
        provider_categories: repeated_param(raw.as_deref(), "provider_category"),
        provider_names: repeated_param(raw.as_deref(), "provider_name"),
        provider_types: repeated_param(raw.as_deref(), "provider_type"),
    };
    Ok(Json(state.service.providers.llm_models(&filter).await?))
}

async fn embedding_models(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(state.service.providers.embedding_models().await?))
}
