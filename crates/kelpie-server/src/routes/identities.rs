//! `/v1/identities/` (see `kelpie_agent::service::identities`): create,
//! upsert by identifier key, list with Letta's filters, count, retrieve,
//! modify, delete, properties, an identity's agents and blocks, and linking
//! agents and blocks to identities.

use axum::extract::{Path, State};
use axum::routing::{get, patch, put};
use axum::{Json, Router};
use kelpie_agent::actors::identity_store::IdentityProperty;
use kelpie_agent::service::identities::{IdentityFilter, IdentityInput};
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Identities, agents and blocks per page when the client does not say.
const IDENTITY_PAGE_COUNT_DEFAULT: usize = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/identities", get(list).post(create).put(upsert))
        .route("/v1/identities/", get(list).post(create).put(upsert))
        .route("/v1/identities/count", get(count))
        .route("/v1/identities/{identity_id}", get(retrieve).patch(modify).delete(remove))
        .route("/v1/identities/{identity_id}/properties", put(properties))
        .route("/v1/identities/{identity_id}/agents", get(agents))
        .route("/v1/identities/{identity_id}/blocks", get(blocks))
        .route("/v1/agents/{agent_id}/identities/attach/{identity_id}", patch(attach_agent))
        .route("/v1/agents/{agent_id}/identities/detach/{identity_id}", patch(detach_agent))
        .route("/v1/blocks/{block_id}/identities/attach/{identity_id}", patch(attach_block))
        .route("/v1/blocks/{block_id}/identities/detach/{identity_id}", patch(detach_block))
}

async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<IdentityInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.create(input).await?))
}

async fn upsert(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<IdentityInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.upsert(input).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(filter): ApiQuery<IdentityFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, IDENTITY_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.identities.list(&filter, &page).await?))
}

async fn count(State(state): State<AppState>) -> Result<Json<usize>, ApiError> {
    Ok(Json(state.service.identities.count().await?))
}

async fn retrieve(
    State(state): State<AppState>,
    Path(identity_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.get(&identity_id).await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(identity_id): Path<String>,
    ApiJson(input): ApiJson<IdentityInput>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.modify(&identity_id, input).await?))
}

async fn remove(
    State(state): State<AppState>,
    Path(identity_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.service.identities.delete(&identity_id).await?;
    Ok(Json(Value::Null))
}

async fn properties(
    State(state): State<AppState>,
    Path(identity_id): Path<String>,
    ApiJson(properties): ApiJson<Vec<IdentityProperty>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.set_properties(&identity_id, properties).await?))
}

async fn agents(
    State(state): State<AppState>,
    Path(identity_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, IDENTITY_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.identities.agents(&identity_id, &page).await?))
}

async fn blocks(
    State(state): State<AppState>,
    Path(identity_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, IDENTITY_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.identities.blocks(&identity_id, &page).await?))
}

async fn attach_agent(
    State(state): State<AppState>,
    Path((agent_id, identity_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.link_agent(&agent_id, &identity_id, true).await?))
}

async fn detach_agent(
    State(state): State<AppState>,
    Path((agent_id, identity_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.link_agent(&agent_id, &identity_id, false).await?))
}

async fn attach_block(
    State(state): State<AppState>,
    Path((block_id, identity_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.link_block(&block_id, &identity_id, true).await?))
}

async fn detach_block(
    State(state): State<AppState>,
    Path((block_id, identity_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.identities.link_block(&block_id, &identity_id, false).await?))
}
