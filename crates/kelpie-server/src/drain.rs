//! Graceful shutdown under load. When the server is told to stop it first
//! *drains*: every request already in flight runs to its end (a turn
//! completes and answers), and every new request is answered `503` with
//! `Connection: close`, so a client learns of the shutdown from an answer
//! rather than from a connection reset, and a load balancer stops sending.
//! Readiness (`/v1/ready`) answers 503 too; liveness (`/v1/health`) stays
//! 200. Once nothing is in flight (after at least `SHUTDOWN_DRAIN_MS_MIN`,
//! at most `SHUTDOWN_DRAIN_MS_MAX`) the listener closes and the node stops.
//! A streamed answer counts as in flight until its body ends.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::error::ApiError;

/// Least time new requests are answered 503 before the listener closes:
/// clients on keep-alive connections learn of the shutdown by an answer.
pub const SHUTDOWN_DRAIN_MS_MIN: u64 = 500;
/// Longest wait for the requests in flight to end before the listener
/// closes anyway (the node's shutdown then stops the turns still going).
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 30_000;
/// How often the drain looks whether requests are still in flight.
const DRAIN_POLL_MS: u64 = 20;
/// The liveness paths, answered while draining.
const LIVENESS_PATHS: [&str; 2] = ["/v1/health/", "/v1/health"];

/// Whether the server drains, and how many requests are in flight.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Least time a drain lasts (`SHUTDOWN_DRAIN_MS_MIN` unless an embedder
    /// that has no clients on keep-alive connections says otherwise).
    least_ms: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            least_ms: AtomicU64::new(SHUTDOWN_DRAIN_MS_MIN),
        }
    }
}

/// One request in flight; counted until dropped.
struct InFlight(Arc<Drain>);

impl InFlight {
    fn enter(drain: &Arc<Drain>) -> InFlight {
        drain.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(drain))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "an in-flight request leaves once");
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Sets the least time a drain lasts, at most `SHUTDOWN_DRAIN_MS_MAX`.
    pub fn set_least_ms(&self, least_ms: u64) {
        assert!(least_ms <= SHUTDOWN_DRAIN_MS_MAX, "a drain lasts at most SHUTDOWN_DRAIN_MS_MAX");
        self.least_ms.store(least_ms, Ordering::SeqCst);
    }

    /// Starts draining, then returns once no request is in flight (and at
    /// least the least time passed), or after `SHUTDOWN_DRAIN_MS_MAX`.
    pub async fn drain(&self) {
        let least = Duration::from_millis(self.least_ms.load(Ordering::SeqCst));
        self.drain_within(least, Duration::from_millis(SHUTDOWN_DRAIN_MS_MAX)).await;
    }

    async fn drain_within(&self, least: Duration, most: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        loop {
            let waited = started.elapsed();
            if waited >= most {
                tracing::warn!(
                    in_flight = self.in_flight(),
                    "requests still in flight at the end of the drain"
                );
                return;
            }
            if waited >= least && self.in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
    }
}

/// Middleware: counts requests in flight; while draining answers new ones
/// 503 with `Connection: close` (liveness excepted).
pub async fn drain_requests(State(drain): State<Arc<Drain>>, request: Request, next: Next) -> Response {
    let drain = &drain;
    if drain.is_draining() && !LIVENESS_PATHS.contains(&request.uri().path()) {
        let mut response =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").into_response();
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let guard = InFlight::enter(drain);
    let response = next.run(request).await;
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return response;
    }
    // A stream is in flight until its last event.
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |piece| {
        let _held = &guard;
        piece
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_requests_in_flight_within_its_bounds() {
        let (least, most) = (Duration::from_millis(50), Duration::from_millis(400));
        let drain = Arc::new(Drain::default());
        let request = InFlight::enter(&drain);
        let waiting = tokio::spawn({
            let drain = Arc::clone(&drain);
            async move { drain.drain_within(least, most).await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(drain.is_draining());
        assert!(!waiting.is_finished(), "a request in flight holds the drain past its least time");
        drop(request);
        waiting.await.unwrap();
        assert_eq!(drain.in_flight(), 0);

        // A request that never ends holds it no longer than its most.
        let stuck = Arc::new(Drain::default());
        let _never = InFlight::enter(&stuck);
        let started = tokio::time::Instant::now();
        stuck.drain_within(least, most).await;
        assert!(started.elapsed() >= most);
        assert_eq!(stuck.in_flight(), 1);
    }
}
