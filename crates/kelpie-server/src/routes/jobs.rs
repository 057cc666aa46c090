//! `/v1/jobs/`: Letta's jobs of type `job`. Letta 0.16.8 creates none (an
//! upload's processing is followed on the file itself, and runs and batches
//! are jobs of other types, under `/v1/runs`), and neither does Kelpie: the
//! lists are empty and every job id is not found, as on Letta, so a client
//! that reads its jobs gets Letta's answers rather than a missing route.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{page_of, ApiQuery};
use crate::api::PageQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Jobs per page when the client does not say (Letta's default).
const JOB_PAGE_COUNT_DEFAULT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", get(list))
        .route("/v1/jobs/", get(list))
        .route("/v1/jobs/active", get(list))
        .route("/v1/jobs/{job_id}", get(not_found).delete(not_found))
        .route("/v1/jobs/{job_id}/cancel", patch(not_found))
}

#[derive(Debug, Default, Deserialize)]
struct JobFilter {
    #[serde(rename = "source_id")]
    _source_id: Option<String>,
    #[serde(rename = "active")]
    _active: Option<bool>,
}

/// The page the query asks for (checked as any list's), of no jobs.
async fn list(
    ApiQuery(_filter): ApiQuery<JobFilter>,
    ApiQuery(page_query): ApiQuery<PageQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    page_of(&page_query, JOB_PAGE_COUNT_DEFAULT, true)?;
    Ok(Json(Vec::new()))
}

async fn not_found(Path(job_id): Path<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("Job with ID {job_id} not found"))
}
