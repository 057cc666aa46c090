//! JSON body and query extractors whose rejections are Letta-shaped:
//! `{"detail": ...}` with 422, as Letta answers a body of the wrong shape
//! or broken JSON; a body over the server's limit is 413 and a body that
//! does not say it is JSON (`Content-Type`) is 415, as HTTP means them.

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body a route reads (routes that stream their body, such
/// as `/v1/agents/import`, set their own); a larger one answers 413. The
/// router applies it to every route.
pub const REQUEST_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// The status and detail of a refused JSON body.
fn json_rejection(rejection: &axum::extract::rejection::JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over REQUEST_BODY_BYTES_MAX ({} bytes)", REQUEST_BODY_BYTES_MAX),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON, sent with Content-Type: application/json",
        ),
        _ => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.body_text()),
    }
}

pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.body_text())),
        }
    }
}

/// A page from a query, with the problem as a 422.
pub fn page_of(
    query: &crate::api::PageQuery,
    default_limit: usize,
    default_descending: bool,
) -> Result<kelpie_agent::page::Page, ApiError> {
    query
        .page(default_limit, default_descending)
        .map_err(|reason| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason))
}

/// The header of an idempotency key (agent creation, message turns).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The request's `Idempotency-Key`, if sent; a 422 when it is not visible ASCII.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY_HEADER).map(|value| value.to_str()) {
        None => Ok(None),
        Some(Ok(key)) => Ok(Some(key.to_string())),
        Some(Err(_)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key must be visible ASCII"))
        }
    }
}

/// An error answered before the request body was read to its end: the
/// connection is closed after it (`Connection: close`), so the client does
/// not send its next request on a connection whose unread body the server
/// drops.
pub fn unread_body_error(err: ApiError) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = err.into_response();
    response
        .headers_mut()
        .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}
