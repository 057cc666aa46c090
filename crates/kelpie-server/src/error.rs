//! Mapping of domain errors to HTTP responses, in one place.
//!
//! Every error body is `{"detail": "...", "trace_id": "<request id>"}`:
//! handlers answer an [`ApiError`] (`{"detail"}`), and [`json_error_body`],
//! run on every response by `crate::telemetry::request_context`, adds the
//! request's id as `trace_id` (Letta's field) and gives the same shape to
//! the errors axum and its extractors answer in plain text or with no body
//! (a path that is not UTF-8, a method not allowed, a body too large).

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
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
    /// `{"detail"}`; [`json_error_body`] adds the `trace_id`.
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "detail": self.detail }))).into_response()
    }
}

/// Largest error body read to give it its shape; a longer one (no error of
/// ours is) is answered with a short detail instead.
pub const ERROR_BODY_BYTES_MAX: usize = 1024 * 1024;

/// `response` with, when it is an error, the body `{"detail", "trace_id"}`:
/// a JSON object with a `detail` gets `trace_id` set; any other body (text
/// from axum, or none) becomes the `detail` (the status's reason when
/// empty). Other JSON (an MCP JSON-RPC error) and HEAD answers are kept as
/// they are.
pub async fn json_error_body(response: Response, trace_id: &str, method: &Method) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || method == Method::HEAD {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, ERROR_BODY_BYTES_MAX).await;
    let object = match bytes.as_deref().map(serde_json::from_slice::<serde_json::Value>) {
        Ok(Ok(serde_json::Value::Object(object))) if object.contains_key("detail") => object,
        Ok(Ok(_)) => return Response::from_parts(parts, Body::from(bytes.unwrap_or_default())),
        Ok(Err(_)) | Err(_) => {
            let text = bytes.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let detail = match text.trim() {
                "" if bytes.is_err() => format!("error body over {ERROR_BODY_BYTES_MAX} bytes"),
                "" => status.canonical_reason().unwrap_or("error").to_string(),
                text => text.to_string(),
            };
            serde_json::Map::from_iter([("detail".to_string(), serde_json::Value::String(detail))])
        }
    };
    let mut object = object;
    object.insert("trace_id".to_string(), serde_json::Value::String(trace_id.to_string()));
    let body = serde_json::to_vec(&object).expect("a JSON object always serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelpie_core::ActorId;

    async fn shaped(response: Response, method: Method) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = json_error_body(response, "req-1", &method).await;
        let content_type =
            response.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1_024).await.unwrap();
        (status, content_type, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn every_error_body_gets_detail_and_the_request_id_as_trace_id() {
        let api = ApiError::new(StatusCode::NOT_FOUND, "bad").into_response();
        let (status, content_type, body) = shaped(api, Method::GET).await;
        assert_eq!((status, content_type.as_deref()), (StatusCode::NOT_FOUND, Some("application/json")));
        assert_eq!(body, serde_json::json!({"detail": "bad", "trace_id": "req-1"}));

        let text = (StatusCode::BAD_REQUEST, "Invalid URL: not UTF-8").into_response();
        let (status, content_type, body) = shaped(text, Method::GET).await;
        assert_eq!((status, content_type.as_deref()), (StatusCode::BAD_REQUEST, Some("application/json")));
        assert_eq!(body, serde_json::json!({"detail": "Invalid URL: not UTF-8", "trace_id": "req-1"}));

        let empty = StatusCode::METHOD_NOT_ALLOWED.into_response();
        let (_, _, body) = shaped(empty, Method::PUT).await;
        assert_eq!(body, serde_json::json!({"detail": "Method Not Allowed", "trace_id": "req-1"}));
    }

    #[tokio::test]
    async fn successes_other_json_and_head_answers_are_kept() {
        let ok = (StatusCode::OK, "fine").into_response();
        let kept = json_error_body(ok, "req-1", &Method::GET).await;
        assert_eq!(axum::body::to_bytes(kept.into_body(), 64).await.unwrap(), "fine");
        let rpc = (StatusCode::BAD_REQUEST, Json(serde_json::json!({"jsonrpc": "2.0"}))).into_response();
        let (_, _, body) = shaped(rpc, Method::POST).await;
        assert_eq!(body, serde_json::json!({"jsonrpc": "2.0"}));
        let head = json_error_body(StatusCode::NOT_FOUND.into_response(), "req-1", &Method::HEAD).await;
        assert_eq!(axum::body::to_bytes(head.into_body(), 64).await.unwrap(), "");
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
