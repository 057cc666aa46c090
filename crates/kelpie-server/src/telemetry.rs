//! What an operator sees of the requests: a request id on every request,
//! a tracing span around it, HTTP metrics, `GET /metrics`, and the log
//! subscriber of `kelpie serve` (text or JSON lines).
//!
//! The request id is the client's `X-Request-Id` when it sends a sane one
//! (visible ASCII letters, digits and `-_.:`, at most
//! [`REQUEST_ID_BYTES_MAX`]), else a new one of 32 hex digits. It is put
//! back on the request's headers, so a request forwarded to the agent's
//! owner node (`crate::forward`, which copies the headers) is served there
//! under the same id; it is answered in `X-Request-Id` and as the
//! `trace_id` of every error body (`crate::error::json_error_body`).
//! Every log line written while the request is handled is inside the span
//! `request{request_id, method, route}`; work a request starts and leaves
//! running (a turn continued by a background task) logs under its own
//! spans.
//!
//! HTTP metrics are labelled by the route *template* axum matched
//! (`/v1/agents/{agent_id}`), never the raw path, and by a method from a
//! closed list, so their cardinality is bounded by the router.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use kelpie_core::config::LogFormat;
use kelpie_core::env::ChaChaRngSource;
use kelpie_core::metrics::{self, HTTP_REQUESTS, HTTP_REQUEST_DURATION};
use kelpie_core::RngSource;
use tracing::Instrument;

use crate::error::ApiError;
use crate::state::AppState;

/// The header carrying a request's id, both ways and between nodes.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest request id taken from a client; a longer one is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// The route label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The path of the Prometheus exposition.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of Prometheus's text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The id of the request being served (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn is_sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_BYTES_MAX
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte))
}

/// A fresh id: 128 random bits as 32 hex digits (the shape of a W3C trace id).
fn new_request_id() -> String {
    static RNG: OnceLock<ChaChaRngSource> = OnceLock::new();
    let rng = RNG.get_or_init(ChaChaRngSource::from_os_entropy);
    let id = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
    assert!(is_sane(&id), "a generated request id is one a client could send");
    id
}

/// The request's id: the client's when sane, else a new one.
pub fn request_id_of(request: &Request) -> String {
    let given = request.headers().get(REQUEST_ID_HEADER).and_then(|value| value.to_str().ok());
    match given {
        Some(id) if is_sane(id) => id.to_string(),
        _ => new_request_id(),
    }
}

/// The method label: one of the standard methods, else `other`.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 7] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
    ];
    KNOWN.iter().find(|known| *known == method).map_or("other", |known| known.as_str())
}

/// Middleware (outermost): gives the request its id, runs it inside its
/// span, records its metrics and answers the id in `X-Request-Id`.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    let id = request_id_of(&request);
    let header_value = HeaderValue::from_str(&id).expect("a sane request id is a valid header value");
    request.headers_mut().insert(REQUEST_ID_HEADER, header_value.clone());
    request.extensions_mut().insert(RequestId(id.clone()));
    let request_method = request.method().clone();
    let method = method_label(&request_method);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE.to_string(), |matched| matched.as_str().to_string());
    let span = tracing::info_span!("request", request_id = %id, method, route = %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let mut response = crate::error::json_error_body(response, &id, &request_method).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::increment(&HTTP_REQUESTS, &[method, &route, &status.to_string()], 1);
    metrics::observe(&HTTP_REQUEST_DURATION, &[method, &route], elapsed.as_secs_f64());
    span.in_scope(|| {
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(status, elapsed_ms, "answered");
    });
    response.headers_mut().insert(REQUEST_ID_HEADER, header_value);
    response
}

/// `GET /metrics`: every family of `kelpie_core::metrics`, and the gauges
/// read now.
pub fn router() -> Router<AppState> {
    Router::new().route(METRICS_PATH, get(exposition))
}

async fn exposition(State(state): State<AppState>) -> Result<Response, ApiError> {
    let registered = state.service.agents.count(None, &[], false).await?;
    let mut out = String::new();
    metrics::render(&mut out);
    let gauges = [
        (
            "kelpie_agents_active",
            "Agents (actors) active on this node now.",
            state.service.active_agents().len(),
        ),
        ("kelpie_agents_registered", "Agents that exist (the agent directory, all nodes).", registered),
        (
            "kelpie_http_requests_in_flight",
            "HTTP requests being served by this node now.",
            state.drain.in_flight(),
        ),
    ];
    for (name, help, value) in gauges {
        metrics::render_gauge(&mut out, name, help, value as u64);
    }
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], out).into_response())
}

/// The log subscriber of `kelpie serve`: lines on `writer` filtered by
/// `filter`, as text or as one JSON object a line (with the fields of the
/// current span, such as `request_id`, under `span`, and of every
/// enclosing span under `spans`).
pub fn log_subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => {
            Box::new(builder.json().with_ansi(false).with_current_span(true).with_span_list(true).finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        let with = |value: &str| {
            let request = Request::builder().header(REQUEST_ID_HEADER, value).body(axum::body::Body::empty());
            request_id_of(&request.unwrap())
        };
        assert_eq!(with("abc-123_x.y:z"), "abc-123_x.y:z");
        let at_limit = "a".repeat(REQUEST_ID_BYTES_MAX);
        assert_eq!(with(&at_limit), at_limit);
        for bad in ["a".repeat(REQUEST_ID_BYTES_MAX + 1), "has space".into(), "quote\"".into(), String::new()]
        {
            let id = with(&bad);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(new_request_id(), new_request_id());
    }

    /// Log lines written into memory.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// A router whose handler logs and answers the request's own
    /// `X-Request-Id` header (what forwarding would copy to the owner).
    fn echoing() -> Router {
        let echo = |request: Request| async move {
            tracing::info!(step = 1, "inside the handler");
            request.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_string()
        };
        Router::new().route("/work/{item}", get(echo)).layer(axum::middleware::from_fn(request_context))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_handlers_log_lines_carry_the_request_id_in_its_span() {
        use tower::ServiceExt;
        let captured = Captured::default();
        let filter = tracing_subscriber::EnvFilter::new("info");
        let _logging =
            tracing::subscriber::set_default(log_subscriber(LogFormat::Json, filter, captured.clone()));
        let request = Request::builder().uri("/work/7").header(REQUEST_ID_HEADER, "log-id-1");
        let response = echoing().oneshot(request.body(axum::body::Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "log-id-1");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> =
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["fields"], serde_json::json!({"message": "inside the handler", "step": 1}));
        assert_eq!(lines[1]["fields"]["message"], "answered");
        for line in &lines {
            assert_eq!(
                line["span"],
                serde_json::json!({"name": "request", "request_id": "log-id-1", "method": "GET", "route": "/work/{item}"})
            );
        }
    }

    #[tokio::test]
    async fn a_made_id_is_put_on_the_request_so_forwarding_carries_it() {
        use tower::ServiceExt;
        let request = Request::builder().uri("/work/1").body(axum::body::Body::empty()).unwrap();
        let response = echoing().oneshot(request).await.unwrap();
        let answered = response.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_string();
        let seen = axum::body::to_bytes(response.into_body(), 1_024).await.unwrap();
        assert_eq!(seen, answered.as_bytes());
        assert_eq!(answered.len(), 32);
    }

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
