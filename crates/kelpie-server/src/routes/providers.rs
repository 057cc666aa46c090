//! `/v1/providers/` (see `kelpie_agent::service::providers`): list (base
//! and created providers, filtered by name and type, paged), create,
//! retrieve, modify, delete, check a key (given or stored) and refresh a
//! provider's models. Keys are never answered.

use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use kelpie_agent::service::providers::{ProviderFilter, ProviderInput};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Providers per page when the client does not say (Letta's default).
const PROVIDER_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/providers", get(list).post(create))
        .route("/v1/providers/", get(list).post(create))
        .route("/v1/providers/check", post(check))
        .route("/v1/providers/{provider_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/providers/{provider_id}/check", post(check_existing))
        .route("/v1/providers/{provider_id}/refresh", patch(refresh))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<ProviderFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    // Letta lists newest first unless told `order=asc`.
    let page = page_of(&page_query, PROVIDER_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(state.service.providers.list(&filter, &page).await?))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<ProviderInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.create(input).await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.get(&provider_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    ApiJson(input): ApiJson<ProviderInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.modify(&provider_id, input).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.delete(&provider_id).await?))
}

async fn check(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<ProviderInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.check(input).await?))
}

async fn check_existing(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.check_existing(&provider_id).await?))
}

async fn refresh(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.providers.refresh(&provider_id).await?))
}
