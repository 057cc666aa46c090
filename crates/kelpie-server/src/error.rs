//! Mapping of domain errors to HTTP responses, in one place.
//!
//! Every error body is Letta's shape: `{"detail": "..."}` (a 422 also has
//! Letta's `trace_id`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kelpie_core::Error;
use kelpie_memory::MemoryError;
use kelpie_sandbox::SandboxError;
use kelpie_tools::ToolError;

use kelpie_agent::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into() }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = match &err {
            Error::InvalidId { .. } | Error::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::LimitExceeded { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::TransactionConflict { .. } => StatusCode::CONFLICT,
            Error::MailboxFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            // Fenced: this node's activation lost the actor to another node;
            // the request may be sent again and reaches the new owner.
            Error::NodeUnavailable { .. }
            | Error::ShuttingDown { .. }
            | Error::StorageIo { .. }
            | Error::Fenced { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::InvocationTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Corruption { .. } | Error::ActorFailed { .. } | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, err.to_string())
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let status = match &err {
            ServiceError::AgentNotFound(_)
            | ServiceError::BlockNotFound(_)
            | ServiceError::ToolNotFound(_)
            | ServiceError::RunNotFound(_)
            | ServiceError::StepNotFound(_)
            | ServiceError::IdentityNotFound(_)
            | ServiceError::BatchNotFound(_)
            | ServiceError::GroupNotFound(_)
            | ServiceError::SandboxConfigNotFound(_)
            | ServiceError::SandboxEnvNotFound(_)
            | ServiceError::FolderNotFound(_)
            | ServiceError::MessageNotFound(_)
            | ServiceError::FileNotFound(_)
            | ServiceError::ArchiveNotFound(_)
            | ServiceError::ConversationNotFound(_)
            | ServiceError::McpServerNotFound(_)
            | ServiceError::ProviderNotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::ToolNameTaken(_)
            | ServiceError::McpServerNameTaken(_)
            | ServiceError::FolderNameTaken(_)
            | ServiceError::ProviderNameTaken(_)
            | ServiceError::NoActiveRuns(_) => StatusCode::CONFLICT,
            ServiceError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ServiceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Mcp(mcp) if mcp.is_bad_input() => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::Mcp(_) => StatusCode::BAD_GATEWAY,
            ServiceError::Tool(ToolError::Sandbox(SandboxError::Unavailable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServiceError::Tool(tool) if tool.is_bad_input() => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::Tool(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServiceError::Invalid(_) | ServiceError::Model(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServiceError::Refused(_) => StatusCode::BAD_REQUEST,
            ServiceError::Memory(MemoryError::BlockNotFound { .. }) => StatusCode::NOT_FOUND,
            ServiceError::Memory(_) => StatusCode::UNPROCESSABLE_ENTITY,
            // A provider refusing the key is the client's to fix, as in Letta.
            ServiceError::ProviderCheck(_) => match err.key_refusal_status() {
                Some(403) => StatusCode::FORBIDDEN,
                Some(_) => StatusCode::UNAUTHORIZED,
                None => StatusCode::BAD_REQUEST,
            },
            // A created provider deleted, or its URL no longer allowed.
            ServiceError::Llm(_) if err.is_provider_unavailable() => StatusCode::BAD_REQUEST,
            ServiceError::Llm(_) => StatusCode::BAD_GATEWAY,
            ServiceError::Core(core) => return ApiError::from(core.clone()),
        };
        ApiError::new(status, err.to_string())
    }
}

impl IntoResponse for ApiError {
    /// `{"detail"}`; a 422 also carries Letta's `trace_id` (empty: Kelpie
    /// keeps no traces), as Letta's validation errors do.
    fn into_response(self) -> Response {
        let body = match self.status {
            StatusCode::UNPROCESSABLE_ENTITY => serde_json::json!({ "trace_id": "", "detail": self.detail }),
            _ => serde_json::json!({ "detail": self.detail }),
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelpie_core::ActorId;

    #[tokio::test]
    async fn a_422_carries_letta_trace_id_and_others_only_detail() {
        for (status, body) in [
            (StatusCode::UNPROCESSABLE_ENTITY, serde_json::json!({"trace_id": "", "detail": "bad"})),
            (StatusCode::NOT_FOUND, serde_json::json!({"detail": "bad"})),
        ] {
            let response = ApiError::new(status, "bad").into_response();
            assert_eq!(response.status(), status);
            let bytes = axum::body::to_bytes(response.into_body(), 1_024).await.unwrap();
            assert_eq!(serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(), body);
        }
    }

    #[test]
    fn domain_errors_map_to_letta_status_codes() {
        let actor = ActorId::new("agents", "a").unwrap();
        let cases = [
            (Error::NotFound { kind: "agent", id: "x".into() }, 404),
            (Error::validation("name", "empty"), 422),
            (Error::LimitExceeded { what: "v".into(), actual: 2, limit_name: "L", limit: 1 }, 400),
            (Error::TransactionConflict { actor_id: actor.clone(), key: "k".into() }, 409),
            (Error::MailboxFull { actor_id: actor.clone(), depth: 1 }, 429),
            (Error::ShuttingDown { component: "server" }, 503),
            (Error::InvocationTimeout { actor_id: actor, timeout_ms: 5 }, 504),
            (Error::Internal("bug".into()), 500),
        ];
        for (err, status) in cases {
            let message = err.to_string();
            let api = ApiError::from(err);
            assert_eq!(api.status.as_u16(), status, "{message}");
            assert_eq!(api.detail, message);
        }
    }
}
