//! Forwarding of client requests about an agent to the node that owns it,
//! the one path a client's agent request takes between nodes (the whole
//! story: docs/cluster.md, "Forwarding").
//!
//! Every request under `/v1/agents/{agent_id}` is sent whole, as HTTP, to the
//! agent's live owner ([`forward_agent_requests`]), so an agent's turns,
//! streams and turn-locked operations run where its activation and turn lock
//! live. The owner serves it with its own router ([`HttpForwarder`]); a
//! forwarded request carries [`FORWARDED_HEADER`] and is never forwarded
//! again; every agent response names the node that served it in
//! [`SERVED_BY_HEADER`].
//!
//! The encoding is ours: a 4-byte big-endian length, a JSON head (method,
//! path, headers or status, headers), then the body bytes. A response
//! travels as parts: the head first, then the body as the owner produces it,
//! so a Server-Sent Events stream flows through event by event.

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use kelpie_agent::actors::agent::AGENT_NAMESPACE;
use kelpie_agent::cluster::ClusterNode;
use kelpie_cluster::forward::encode_request;
use kelpie_cluster::{HttpForwardHandler, RequestKind};
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, NodeId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::state::AppState;

/// Marks a request another node forwarded here: it is served, never
/// forwarded again.
pub const FORWARDED_HEADER: &str = "x-kelpie-forwarded-by";
/// Names the node that served an agent request (the owner, when it was
/// forwarded), on every agent response in a cluster.
pub const SERVED_BY_HEADER: &str = "x-kelpie-served-by";
/// Largest HTTP body (request or response) forwarded between nodes; the
/// transport's frame limit is 16 MiB.
pub const FORWARDED_BODY_BYTES_MAX: usize = 15 * 1024 * 1024;
/// Size of the length prefix of the JSON head.
const HEAD_LENGTH_SIZE_BYTES: usize = 4;

/// The agent id a path addresses (`/v1/agents/{agent_id}[/...]`), if any.
pub fn agent_id_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/agents/")?;
    let agent_id = rest.split('/').next()?;
    agent_id.starts_with("agent-").then_some(agent_id)
}

#[derive(Debug, Serialize, Deserialize)]
struct RequestHead {
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
}

fn encode<H: Serialize>(head: &H, body: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("a head always serializes");
    let length = u32::try_from(head.len()).expect("heads are far below 4 GiB");
    let mut bytes = Vec::with_capacity(HEAD_LENGTH_SIZE_BYTES + head.len() + body.len());
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(body);
    bytes
}

fn decode<H: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<(H, Vec<u8>), String> {
    let prefix: [u8; HEAD_LENGTH_SIZE_BYTES] = bytes
        .get(..HEAD_LENGTH_SIZE_BYTES)
        .and_then(|p| p.try_into().ok())
        .ok_or("forwarded HTTP too short")?;
    let end = HEAD_LENGTH_SIZE_BYTES + u32::from_be_bytes(prefix) as usize;
    let head = bytes.get(HEAD_LENGTH_SIZE_BYTES..end).ok_or("forwarded HTTP truncated in its head")?;
    let head = serde_json::from_slice(head).map_err(|e| format!("forwarded HTTP head: {e}"))?;
    Ok((head, bytes[end..].to_vec()))
}

fn header_pairs(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

/// Middleware: sends a request about an agent another live node owns to
/// that node and returns its answer; everything else, and every request
/// for an agent active here, is served here.
pub async fn forward_agent_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else { return next.run(request).await };
    let Some(agent_id) = agent_id_of(request.uri().path()).map(str::to_string) else {
        return next.run(request).await;
    };
    let agent_id = agent_id.as_str();
    let serve_here = |next: Next, request: Request| {
        let node_id = cluster.node_id.to_string();
        async move {
            let mut response = next.run(request).await;
            if let Ok(value) = HeaderValue::try_from(node_id) {
                response.headers_mut().insert(SERVED_BY_HEADER, value);
            }
            response
        }
    };
    if request.headers().contains_key(FORWARDED_HEADER) {
        return serve_here(next, request).await;
    }
    let Ok(actor_id) = ActorId::new(AGENT_NAMESPACE, agent_id) else { return next.run(request).await };
    // Active here: this node holds the lease (an activation that cannot
    // prove it any more answers 503, and the retry is routed afresh).
    if state.service.is_agent_active(&actor_id) {
        return serve_here(next, request).await;
    }
    let owner = match cluster.directory.live_owner(&actor_id).await {
        Ok(Some(owner)) if owner.node_id != cluster.node_id => (owner.node_id, request),
        Ok(_) => {
            // No live owner: the agent is activated here before the request
            // runs, unless another node claimed it since the read. Then the
            // activation is refused having done nothing, and the request
            // goes to that node.
            if state.service.activate_agent(&actor_id).await.is_ok() {
                return serve_here(next, request).await;
            }
            match cluster.directory.live_owner(&actor_id).await {
                Ok(Some(owner)) if owner.node_id != cluster.node_id => {
                    tracing::debug!(agent_id, owner = %owner.node_id, "claimed elsewhere meanwhile; forwarding");
                    (owner.node_id, request)
                }
                // The request meets the same refusal, with its reason.
                _ => return serve_here(next, request).await,
            }
        }
        Err(err) => return ApiError::from(err).into_response(),
    };
    let (owner, request) = owner;
    match forward(&cluster, owner, request).await {
        Ok(response) => response,
        Err(api_error) => api_error.into_response(),
    }
}

fn too_large(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {FORWARDED_BODY_BYTES_MAX} bytes: {err}"),
    )
}

async fn forward(cluster: &ClusterNode, owner: NodeId, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, FORWARDED_BODY_BYTES_MAX).await.map_err(too_large)?;
    let mut headers = header_pairs(&parts.headers);
    headers.push((FORWARDED_HEADER.to_string(), cluster.node_id.to_string()));
    let head = RequestHead {
        method: parts.method.to_string(),
        path_and_query: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers,
    };
    let request = encode_request(RequestKind::Http, &encode(&head, &body));
    let mut parts = cluster.remote.send_streaming(Some(owner), request).await.map_err(ApiError::from)?;
    let gateway = |reason: String| ApiError::new(StatusCode::BAD_GATEWAY, reason);
    let first = parts.recv().await.ok_or_else(|| gateway("the owner sent no answer".into()))?;
    let (head, body_start): (ResponseHead, Vec<u8>) =
        decode(&first.map_err(ApiError::from)?).map_err(gateway)?;
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for (name, value) in head.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response = response.header(name, value);
        }
    }
    // The body flows on as the owner produces it (an event stream arrives
    // event by event); a failure mid-body ends the response early.
    let start = futures::stream::iter((!body_start.is_empty()).then_some(Ok(Bytes::from(body_start))));
    let rest = futures::stream::unfold(parts, |mut parts| async move {
        let part = parts.recv().await?;
        Some((part.map(Bytes::from).map_err(|err| std::io::Error::other(err.to_string())), parts))
    });
    response.body(Body::from_stream(start.chain(rest))).map_err(|e| gateway(e.to_string()))
}

/// Largest body piece sent as one part; well below the frame limit.
const FORWARDED_PART_BYTES_MAX: usize = 1024 * 1024;

/// Serves HTTP requests other nodes forwarded here with this node's
/// router, sending the response head and then the body as it is produced.
pub struct HttpForwarder {
    router: Router,
}

impl HttpForwarder {
    pub fn new(router: Router) -> Self {
        HttpForwarder { router }
    }
}

impl HttpForwardHandler for HttpForwarder {
    fn handle(&self, request: Vec<u8>, parts: mpsc::Sender<Vec<u8>>) -> BoxFuture<Result<(), String>> {
        let router = self.router.clone();
        Box::pin(async move {
            let (head, body): (RequestHead, Vec<u8>) = decode(&request)?;
            let method = Method::from_bytes(head.method.as_bytes()).map_err(|e| e.to_string())?;
            let mut builder = Request::builder().method(method).uri(head.path_and_query);
            for (name, value) in head.headers {
                builder = builder.header(name, value);
            }
            let request = builder.body(Body::from(body)).map_err(|e| e.to_string())?;
            let response = router.oneshot(request).await.map_err(|e| e.to_string())?;
            let (head, body) = response.into_parts();
            let head = ResponseHead { status: head.status.as_u16(), headers: header_pairs(&head.headers) };
            let closed = |_| "the forwarding node stopped listening".to_string();
            parts.send(encode(&head, &[])).await.map_err(closed)?;
            let mut body = body.into_data_stream();
            let mut sent_bytes = 0usize;
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(|e| e.to_string())?;
                sent_bytes += piece.len();
                if sent_bytes > FORWARDED_BODY_BYTES_MAX {
                    return Err(format!("response body over {FORWARDED_BODY_BYTES_MAX} bytes"));
                }
                for part in piece.chunks(FORWARDED_PART_BYTES_MAX) {
                    parts.send(part.to_vec()).await.map_err(closed)?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_paths_are_recognised() {
        assert_eq!(agent_id_of("/v1/agents/agent-1"), Some("agent-1"));
        assert_eq!(agent_id_of("/v1/agents/agent-1/messages/stream"), Some("agent-1"));
        assert_eq!(agent_id_of("/v1/agents/"), None);
        assert_eq!(agent_id_of("/v1/agents/import"), None);
        assert_eq!(agent_id_of("/v1/blocks/block-1"), None);
    }

    #[tokio::test]
    async fn the_owner_serves_a_forwarded_request_under_the_same_request_id() {
        use crate::telemetry::{request_context, REQUEST_ID_HEADER};
        let router = Router::new()
            .route("/v1/agents/{agent_id}", axum::routing::get(|| async { "served" }))
            .layer(axum::middleware::from_fn(request_context));
        let head = RequestHead {
            method: "GET".into(),
            path_and_query: "/v1/agents/agent-1".into(),
            headers: vec![(REQUEST_ID_HEADER.into(), "entry-node-id-1".into())],
        };
        let (sender, mut parts) = mpsc::channel(4);
        HttpForwarder::new(router).handle(encode(&head, b""), sender).await.unwrap();
        let (head, _): (ResponseHead, Vec<u8>) = decode(&parts.recv().await.unwrap()).unwrap();
        let id =
            head.headers.iter().find(|(name, _)| name == REQUEST_ID_HEADER).map(|(_, value)| value.as_str());
        assert_eq!((head.status, id), (200, Some("entry-node-id-1")));
        assert_eq!(parts.recv().await.unwrap(), b"served");
    }

    #[test]
    fn heads_and_bodies_round_trip_and_garbage_is_refused() {
        let head =
            ResponseHead { status: 201, headers: vec![("content-type".into(), "text/event-stream".into())] };
        let bytes = encode(&head, b"data: [DONE]\n\n");
        let (back, body): (ResponseHead, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!((back.status, back.headers, body), (201, head.headers, b"data: [DONE]\n\n".to_vec()));
        assert_eq!(decode::<ResponseHead>(&[0, 0]).unwrap_err(), "forwarded HTTP too short");
        assert_eq!(
            decode::<ResponseHead>(&[0, 0, 0, 9, b'{']).unwrap_err(),
            "forwarded HTTP truncated in its head"
        );
    }
}
