//! Forwarding of client requests about an agent to the node that owns it,
//! the one path a client's agent request takes between nodes (the whole
//! story: docs/cluster.md, "Forwarding").
//!
//! Every request that names one agent (under `/v1/agents/{agent_id}`, a
//! conversation route naming a conversation or an agent, chat completions
//! naming it as the `model`: see `naming_of`) is sent whole, as HTTP, to
//! the agent's live owner ([`forward_agent_requests`]), so an agent's
//! turns, streams and turn-locked operations run where its activation and
//! turn lock live. The owner serves it with its own router
//! ([`HttpForwarder`]); a forwarded request carries [`FORWARDED_HEADER`]
//! and is never forwarded again; every response to such a request names
//! the node that served it in [`SERVED_BY_HEADER`]. The service's own
//! operations on several agents (groups, batches) reach each agent's owner
//! the same way through [`OwnerRouter`], the server's `TurnRouter`.
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
use kelpie_agent::service::turn_router::{OwnerOp, TurnRouter};
use kelpie_agent::{AgentService, ServiceError, ServiceResult};
use kelpie_cluster::forward::encode_request;
use kelpie_cluster::{HttpForwardHandler, RequestKind};
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, NodeId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::{Arc, Weak};
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

/// Where a request names the agent it is about.
#[derive(Debug, PartialEq, Eq)]
enum Naming {
    /// It is about no single agent, or its agent cannot be told from it.
    Nothing,
    Agent(String),
    /// A conversation (`conv-...`), whose id carries its agent's prefix.
    Conversation(String),
    /// A field of the JSON body (read, bounded, before routing).
    BodyField(&'static str),
    /// A group turn or reset: served by the owner of the group's home
    /// agent (its manager, else its first member), so that the group's
    /// turn lock, which lives on the node serving the turn, is one lock
    /// for the whole cluster.
    Group(String),
}

#[derive(Debug, Default, Deserialize)]
struct AgentQuery {
    agent_id: Option<String>,
}

/// What a request's method, path and query say about its agent (pure):
/// `/v1/agents/{agent_id}/...`; `/v1/conversations/{conversation_id}/...`
/// (a conversation id, an agent id, or `default` with `agent_id` in the
/// query or the body); `/v1/conversations/?agent_id=` (create, list);
/// `POST /v1/chat/completions` (the body's `model`); `POST
/// /v1/groups/{group_id}/messages` and `PATCH .../reset-messages` (the
/// group's home agent).
fn naming_of(method: &Method, uri: &axum::http::Uri) -> Naming {
    let path = uri.path();
    if let Some(agent_id) = agent_id_of(path) {
        return Naming::Agent(agent_id.to_string());
    }
    if let Some(rest) = path.strip_prefix("/v1/groups/") {
        return match rest.split('/').collect::<Vec<_>>().as_slice() {
            [group_id, "messages"] if *method == Method::POST && group_id.starts_with("group-") => {
                Naming::Group(group_id.to_string())
            }
            [group_id, "reset-messages"] if *method == Method::PATCH && group_id.starts_with("group-") => {
                Naming::Group(group_id.to_string())
            }
            _ => Naming::Nothing,
        };
    }
    if path == "/v1/chat/completions" {
        return match *method == Method::POST {
            true => Naming::BodyField("model"),
            false => Naming::Nothing,
        };
    }
    let Some(rest) = path.strip_prefix("/v1/conversations") else { return Naming::Nothing };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Naming::Nothing;
    }
    let query_agent = || {
        axum::extract::Query::<AgentQuery>::try_from_uri(uri)
            .ok()
            .and_then(|query| query.0.agent_id)
            .filter(|id| id.starts_with("agent-"))
    };
    match rest.trim_start_matches('/').split('/').next().unwrap_or_default() {
        "" => query_agent().map_or(Naming::Nothing, Naming::Agent),
        "default" => query_agent().map_or(Naming::BodyField("agent_id"), Naming::Agent),
        id if id.starts_with("agent-") => Naming::Agent(id.to_string()),
        id if id.starts_with("conv-") => Naming::Conversation(id.to_string()),
        _ => Naming::Nothing,
    }
}

/// The agent `request` is about, and the request whole again (its body
/// read, at most `FORWARDED_BODY_BYTES_MAX`, when the agent is named in
/// it); an error answer when the body is too large or the directory fails.
async fn named_agent(state: &AppState, request: Request) -> Result<(Option<String>, Request), Response> {
    match naming_of(request.method(), request.uri()) {
        Naming::Nothing => Ok((None, request)),
        Naming::Agent(agent_id) => Ok((Some(agent_id), request)),
        Naming::Conversation(id) => match state.service.conversations.agent_of(&id).await {
            Ok(agent_id) => Ok((agent_id, request)),
            Err(err) => Err(ApiError::from(err).into_response()),
        },
        // An unknown group is served here, which answers 404.
        Naming::Group(id) => match state.service.groups.get(&id).await {
            Ok(group) => {
                let home = group["manager_agent_id"].as_str().or(group["agent_ids"][0].as_str());
                Ok((home.filter(|id| id.starts_with("agent-")).map(str::to_string), request))
            }
            Err(_) => Ok((None, request)),
        },
        Naming::BodyField(field) => {
            let (parts, body) = request.into_parts();
            let bytes = to_bytes(body, FORWARDED_BODY_BYTES_MAX)
                .await
                .map_err(|e| crate::routes::extract::unread_body_error(too_large(e)))?;
            // A body that is not JSON or names no agent is served here,
            // which answers what is wrong with it.
            let agent_id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|body| body.get(field)?.as_str().map(str::to_string))
                .filter(|id| id.starts_with("agent-"));
            Ok((agent_id, Request::from_parts(parts, Body::from(bytes))))
        }
    }
}

/// Where a request or operation about an agent runs.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// This node holds the agent's lease (or has just claimed it).
    Here,
    /// Another live node does.
    Owner(NodeId),
}

/// Where requests about `actor_id` run: here when the agent is active here
/// (an activation that cannot prove its lease any more answers 503, and
/// the retry is routed afresh); at its live owner when another node holds
/// it; else it is claimed here before anything runs, unless another node
/// claimed it since the read: then the claim is refused having done
/// nothing, and the request goes to that node.
async fn place(
    service: &AgentService,
    cluster: &ClusterNode,
    actor_id: &ActorId,
) -> kelpie_core::Result<Place> {
    if service.is_agent_active(actor_id) {
        return Ok(Place::Here);
    }
    if let Some(owner) = cluster.directory.live_owner(actor_id).await? {
        if owner.node_id != cluster.node_id {
            return Ok(Place::Owner(owner.node_id));
        }
    }
    if service.activate_agent(actor_id).await.is_ok() {
        return Ok(Place::Here);
    }
    match cluster.directory.live_owner(actor_id).await {
        Ok(Some(owner)) if owner.node_id != cluster.node_id => {
            tracing::debug!(%actor_id, owner = %owner.node_id, "claimed elsewhere meanwhile; forwarding");
            Ok(Place::Owner(owner.node_id))
        }
        // The request meets the same refusal here, with its reason.
        _ => Ok(Place::Here),
    }
}

/// Middleware: sends a request about an agent (see [`naming_of`]) that
/// another live node owns to that node and returns its answer; everything
/// else, and every request for an agent active here, is served here.
pub async fn forward_agent_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else { return next.run(request).await };
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
    // Forwarded here because it names an agent: served, never forwarded again.
    if request.headers().contains_key(FORWARDED_HEADER) {
        return serve_here(next, request).await;
    }
    let (agent_id, request) = match named_agent(&state, request).await {
        Ok(named) => named,
        Err(response) => return response,
    };
    let Some(agent_id) = agent_id else { return next.run(request).await };
    let Ok(actor_id) = ActorId::new(AGENT_NAMESPACE, &agent_id) else { return next.run(request).await };
    match place(&state.service, &cluster, &actor_id).await {
        Ok(Place::Here) => serve_here(next, request).await,
        Ok(Place::Owner(owner)) => match forward(&cluster, owner, request).await {
            Ok(response) => response,
            Err(api_error) => api_error.into_response(),
        },
        Err(err) => ApiError::from(err).into_response(),
    }
}

fn too_large(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over FORWARDED_BODY_BYTES_MAX = {FORWARDED_BODY_BYTES_MAX} bytes: {err}"),
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

/// Runs the service's operations on agents other nodes own (group and
/// sleeptime member runs, group resets, batch runs and their cancel) on the
/// owner, as the HTTP request each stands for, through [`forward`]: the same
/// owner rule ([`place`]) and the same transport as a client's agent request.
pub struct OwnerRouter {
    cluster: Arc<ClusterNode>,
    service: Weak<AgentService>,
    /// Presented to the owner's bearer-token check (the nodes share it).
    api_key: Option<String>,
}

impl OwnerRouter {
    pub fn new(cluster: Arc<ClusterNode>, service: Weak<AgentService>, api_key: Option<String>) -> Self {
        OwnerRouter { cluster, service, api_key }
    }

    /// The HTTP request `op` of `agent_id` stands for.
    fn request_of(&self, agent_id: &str, op: &OwnerOp) -> ServiceResult<Request> {
        let (method, path, body, key) = match op {
            OwnerOp::StartRun { texts, max_steps, idempotency_key } => {
                let messages: Vec<serde_json::Value> =
                    texts.iter().map(|text| json!({"role": "user", "content": text})).collect();
                let body = json!({"messages": messages, "max_steps": max_steps});
                (
                    Method::POST,
                    format!("/v1/agents/{agent_id}/messages/async"),
                    body,
                    idempotency_key.as_deref(),
                )
            }
            OwnerOp::CancelRuns { run_ids } => (
                Method::POST,
                format!("/v1/agents/{agent_id}/messages/cancel"),
                json!({"run_ids": run_ids}),
                None,
            ),
            OwnerOp::ResetMessages => (
                Method::PATCH,
                format!("/v1/agents/{agent_id}/reset-messages"),
                serde_json::Value::Null,
                None,
            ),
        };
        let mut builder =
            Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(api_key) = &self.api_key {
            builder = builder.header("authorization", format!("Bearer {api_key}"));
        }
        if let Some(key) = key {
            let key = HeaderValue::try_from(key).map_err(|_| {
                ServiceError::Invalid("an idempotency key sent to another node must be visible ASCII".into())
            })?;
            builder = builder.header(crate::routes::extract::IDEMPOTENCY_KEY_HEADER, key);
        }
        let body = match body.is_null() {
            true => Body::empty(),
            false => Body::from(body.to_string()),
        };
        builder.body(body).map_err(|e| ServiceError::Core(kelpie_core::Error::Internal(e.to_string())))
    }
}

/// The service error an owner's error answer stands for, so the operation
/// fails as it would have here (the same status at the node the client
/// called).
fn owner_error(status: StatusCode, detail: String, (agent_id, owner): (&str, &NodeId)) -> ServiceError {
    match status {
        StatusCode::NOT_FOUND => ServiceError::AgentNotFound(agent_id.to_string()),
        StatusCode::BAD_REQUEST => ServiceError::Refused(detail),
        StatusCode::UNPROCESSABLE_ENTITY => ServiceError::Invalid(detail),
        StatusCode::PAYLOAD_TOO_LARGE => ServiceError::TooLarge(detail),
        StatusCode::CONFLICT => ServiceError::NoActiveRuns(detail),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
            ServiceError::Core(kelpie_core::Error::NodeUnavailable { node_id: owner.clone(), reason: detail })
        }
        other => ServiceError::Core(kelpie_core::Error::Internal(format!(
            "node {owner} answered {other} for agent {agent_id}: {detail}"
        ))),
    }
}

impl TurnRouter for OwnerRouter {
    fn on_owner<'a>(
        &'a self,
        agent_id: &'a str,
        op: &'a OwnerOp,
    ) -> futures::future::BoxFuture<'a, ServiceResult<Option<serde_json::Value>>> {
        Box::pin(async move {
            // The service is gone: it is shutting down, and runs nothing.
            let Some(service) = self.service.upgrade() else {
                return Err(ServiceError::Core(kelpie_core::Error::ShuttingDown {
                    component: "turn router",
                }));
            };
            let actor_id = ActorId::new(AGENT_NAMESPACE, agent_id)?;
            let owner = match place(&service, &self.cluster, &actor_id).await? {
                Place::Here => return Ok(None),
                Place::Owner(owner) => owner,
            };
            let request = self.request_of(agent_id, op)?;
            let unavailable = |reason: String| {
                ServiceError::Core(kelpie_core::Error::NodeUnavailable { node_id: owner.clone(), reason })
            };
            let response = forward(&self.cluster, owner.clone(), request)
                .await
                .map_err(|err| owner_error(err.status, err.detail, (agent_id, &owner)))?;
            let status = response.status();
            let body = to_bytes(response.into_body(), FORWARDED_BODY_BYTES_MAX)
                .await
                .map_err(|e| unavailable(format!("the owner's answer broke off: {e}")))?;
            let answer = serde_json::from_slice::<serde_json::Value>(&body);
            if !status.is_success() {
                let detail = answer.ok().and_then(|answer| answer["detail"].as_str().map(str::to_string));
                let detail = detail.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                return Err(owner_error(status, detail, (agent_id, &owner)));
            }
            let answer = answer.map_err(|e| unavailable(format!("the owner's answer is not JSON: {e}")))?;
            tracing::debug!(agent_id, %owner, ?op, "ran on the agent's owner");
            Ok(Some(answer))
        })
    }
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

    fn naming(method: Method, uri: &str) -> Naming {
        naming_of(&method, &uri.parse().unwrap())
    }

    #[test]
    fn requests_name_their_agent_by_path_query_conversation_or_body() {
        let agent = |id: &str| Naming::Agent(id.to_string());
        assert_eq!(naming(Method::POST, "/v1/agents/agent-1/messages"), agent("agent-1"));
        assert_eq!(naming(Method::POST, "/v1/chat/completions"), Naming::BodyField("model"));
        assert_eq!(naming(Method::GET, "/v1/chat/completions"), Naming::Nothing);
        assert_eq!(
            naming(Method::POST, "/v1/conversations/conv-0011/messages"),
            Naming::Conversation("conv-0011".into())
        );
        assert_eq!(
            naming(Method::GET, "/v1/conversations/conv-0011"),
            Naming::Conversation("conv-0011".into())
        );
        assert_eq!(naming(Method::POST, "/v1/conversations/agent-2/messages"), agent("agent-2"));
        assert_eq!(
            naming(Method::POST, "/v1/conversations/default/messages?agent_id=agent-3"),
            agent("agent-3")
        );
        assert_eq!(naming(Method::POST, "/v1/conversations/default/compact"), Naming::BodyField("agent_id"));
        assert_eq!(naming(Method::POST, "/v1/conversations/?agent_id=agent-4"), agent("agent-4"));
        assert_eq!(naming(Method::GET, "/v1/conversations?agent_id=agent-4&limit=2"), agent("agent-4"));
        // Spanning agents, or naming none: served where asked.
        assert_eq!(naming(Method::GET, "/v1/conversations/"), Naming::Nothing);
        assert_eq!(naming(Method::GET, "/v1/conversations?agent_id=block-1"), Naming::Nothing);
        assert_eq!(naming(Method::GET, "/v1/conversations/nonsense"), Naming::Nothing);
        assert_eq!(naming(Method::GET, "/v1/conversationsx/conv-1"), Naming::Nothing);
        // A group's turns and resets go to its home agent's owner; the rest is served where asked.
        assert_eq!(naming(Method::POST, "/v1/groups/group-1/messages"), Naming::Group("group-1".into()));
        assert_eq!(
            naming(Method::PATCH, "/v1/groups/group-1/reset-messages"),
            Naming::Group("group-1".into())
        );
        assert_eq!(naming(Method::GET, "/v1/groups/group-1/messages"), Naming::Nothing);
        assert_eq!(naming(Method::GET, "/v1/groups/group-1"), Naming::Nothing);
        assert_eq!(naming(Method::POST, "/v1/groups/nonsense/messages"), Naming::Nothing);
        assert_eq!(naming(Method::POST, "/v1/messages/batches"), Naming::Nothing);
    }

    #[test]
    fn an_owners_error_answer_fails_the_operation_with_the_same_status() {
        let owner = NodeId::new("n1").unwrap();
        let status_of = |status: StatusCode| {
            ApiError::from(owner_error(status, "why".into(), ("agent-1", &owner))).status
        };
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::CONFLICT,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            assert_eq!(status_of(status), status);
        }
        assert_eq!(status_of(StatusCode::BAD_GATEWAY), StatusCode::SERVICE_UNAVAILABLE, "retriable");
        let detail =
            ApiError::from(owner_error(StatusCode::UNPROCESSABLE_ENTITY, "why".into(), ("agent-1", &owner)));
        assert_eq!(detail.detail, "why");
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
