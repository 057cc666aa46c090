//! `GET /v1/embeddings/total_storage_size`: the estimated size of the
//! stored embeddings (`kelpie_agent::service::embeddings`), in the unit of
//! the `storage-unit` header (Letta's alias `storage_unit` is read too;
//! `GB` when absent). An unknown unit is 400, as in Letta.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use kelpie_agent::service::embeddings::STORAGE_UNIT_DEFAULT;

use crate::error::ApiError;
use crate::state::AppState;

/// The header names the unit is read from, in order.
const STORAGE_UNIT_HEADERS: [&str; 2] = ["storage-unit", "storage_unit"];

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/embeddings/total_storage_size", get(total_storage_size))
}

async fn total_storage_size(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<f64>, ApiError> {
    let given = STORAGE_UNIT_HEADERS.iter().find_map(|name| headers.get(*name));
    let unit = match given {
        None => STORAGE_UNIT_DEFAULT,
        Some(value) => value
            .to_str()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the storage-unit header is not text"))?,
    };
    Ok(Json(state.service.embedding_storage.total_size(unit).await?))
}
