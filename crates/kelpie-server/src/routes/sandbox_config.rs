//! `/v1/sandbox-config/`: Letta's 12 sandbox configuration operations over
//! Kelpie's own sandboxes (the `local` configuration and the environment
//! variables every tool call gets; `e2b` and `modal` are refused with 422).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiJson, ApiQuery};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Configurations and variables per page when the client does not say.
const SANDBOX_PAGE_COUNT_DEFAULT: usize = 1_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sandbox-config/", post(create).get(list))
        .route("/v1/sandbox-config", post(create).get(list))
        .route("/v1/sandbox-config/e2b/default", post(e2b_default))
        .route("/v1/sandbox-config/local/default", post(local_default))
        .route("/v1/sandbox-config/local", post(create_local))
        .route("/v1/sandbox-config/local/recreate-venv", post(recreate_venv))
        .route("/v1/sandbox-config/{sandbox_config_id}", patch(modify).delete(remove))
        .route("/v1/sandbox-config/{sandbox_config_id}/environment-variable", post(create_env).get(list_env))
        .route("/v1/sandbox-config/environment-variable/{env_var_id}", patch(modify_env).delete(remove_env))
}

/// `SandboxConfigCreate` and `SandboxConfigUpdate`: the `config` object,
/// whose shape says its type.
#[derive(Debug, Deserialize)]
struct ConfigBody {
    config: Value,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    sandbox_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CreateEnv {
    key: String,
    value: String,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UpdateEnv {
    key: Option<String>,
    value: Option<String>,
    description: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ConfigBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.upsert(&body.config).await?))
}

async fn create_local(
    State(state): State<AppState>,
    ApiJson(config): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.upsert(&config).await?))
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, SANDBOX_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.sandbox_configs.list(query.sandbox_type.as_deref(), &page).await?))
}

async fn e2b_default(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.e2b_default()?))
}

async fn local_default(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.local_default().await?))
}

async fn recreate_venv(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.recreate_local_environment().await?))
}

async fn modify(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    ApiJson(body): ApiJson<ConfigBody>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.update(&config_id, &body.config).await?))
}

/// 204 with no body, as Letta.
async fn remove(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.sandbox_configs.delete(&config_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_env(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    ApiJson(body): ApiJson<CreateEnv>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.service.sandbox_configs.add_env(&config_id, body.key, body.value, body.description).await?))
}

async fn list_env(
    State(state): State<AppState>,
    Path(config_id): Path<String>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let page = page_of(&page_query, SANDBOX_PAGE_COUNT_DEFAULT, false)?;
    Ok(Json(state.service.sandbox_configs.list_env(&config_id, &page).await?))
}

async fn modify_env(
    State(state): State<AppState>,
    Path(env_var_id): Path<String>,
    ApiJson(body): ApiJson<UpdateEnv>,
) -> Result<Json<Value>, ApiError> {
    let configs = &state.service.sandbox_configs;
    Ok(Json(configs.update_env(&env_var_id, body.key, body.value, body.description).await?))
}

/// 204 with no body, as Letta.
async fn remove_env(
    State(state): State<AppState>,
    Path(env_var_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.sandbox_configs.delete_env(&env_var_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
