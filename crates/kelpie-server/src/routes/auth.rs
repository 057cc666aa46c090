//! `POST /v1/auth`: Letta's password login, on Kelpie's bearer token. The
//! password is the server's API key (`KELPIE_API_KEY`): the key answers
//! the default user's UUID as an admin, anything else 401. A server
//! without a key is open (every route answers without a token), so every
//! password is taken and answers the same admin. The route answers
//! without a bearer token (it is the login), at exactly [`LOGIN_PATH`];
//! the key is never sent back.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::state::AppState;

/// The login's path, answered without a bearer token (exactly this path).
pub const LOGIN_PATH: &str = "/v1/auth";
/// The UUID of the server's one user (Letta's default user,
/// `user-00000000-0000-4000-8000-000000000000`, without its prefix).
pub const DEFAULT_USER_UUID: &str = "00000000-0000-4000-8000-000000000000";

pub fn router() -> Router<AppState> {
    // The literal path (not LOGIN_PATH) so that tests/openapi.rs sees it;
    // tests/auth.rs proves the two agree (the login answers without a token).
    Router::new().route("/v1/auth", post(login))
}

#[derive(Debug, Deserialize)]
struct AuthRequest {
    #[serde(default)]
    password: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AuthRequest>,
) -> Result<Json<Value>, ApiError> {
    let accepted = match state.config.api_key.as_deref() {
        None => true,
        Some(key) => request.password.as_deref().is_some_and(|password| same_secret(password, key)),
    };
    if !accepted {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong password: give the server's API key (KELPIE_API_KEY)",
        ));
    }
    Ok(Json(json!({"uuid": DEFAULT_USER_UUID, "is_admin": true})))
}

/// Compares in time independent of where the texts differ (only their
/// lengths show), so the answer's timing does not spell the key out.
pub(crate) fn same_secret(given: &str, secret: &str) -> bool {
    let (given, secret) = (given.as_bytes(), secret.as_bytes());
    if given.len() != secret.len() {
        return false;
    }
    given.iter().zip(secret).fold(0u8, |differ, (a, b)| differ | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_matches() {
        assert!(same_secret("s3cret-key", "s3cret-key"));
        assert!(!same_secret("s3cret-kez", "s3cret-key"));
        assert!(!same_secret("s3cret", "s3cret-key"));
        assert!(!same_secret("", "s3cret-key"));
    }
}
