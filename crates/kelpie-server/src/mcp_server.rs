//! Kelpie as an MCP server (beyond Letta): any MCP client can list Kelpie's
//! agents, create one, talk to one and read its core memory, as tools.
//!
//! [`KelpieMcp`] is the MCP side (on the official SDK's server); what it does
//! goes through Kelpie's own REST API by an [`ApiGateway`], so the same
//! checks, auth and cluster forwarding apply as for any client:
//! - on the server, `/mcp` (streamable HTTP, behind the bearer token like
//!   every route) uses [`RouterGateway`], the server's own router called in
//!   process;
//! - `kelpie mcp` (stdio, in kelpie-cli) uses an HTTP gateway to a running
//!   server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeResult,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

/// Largest API answer the gateway reads, in bytes.
pub const MCP_GATEWAY_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Agents listed when the caller does not say, and the most it may ask.
pub const MCP_LIST_AGENTS_COUNT_DEFAULT: u64 = 50;
pub const MCP_LIST_AGENTS_COUNT_MAX: u64 = 1_000;

/// A future of the gateway.
pub type GatewayFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;

/// Calls Kelpie's REST API: `method` `path` with a JSON `body`; the JSON
/// answer, or the status and `detail` of a refusal.
pub trait ApiGateway: Send + Sync + 'static {
    fn call<'a>(&'a self, method: Method, path: &'a str, body: Option<Value>) -> GatewayFuture<'a>;
}

/// The server's own router, called in process (no socket), with the
/// server's bearer token when it has one.
pub struct RouterGateway {
    router: Router,
    api_key: Option<String>,
}

impl RouterGateway {
    pub fn new(router: Router, api_key: Option<String>) -> Self {
        RouterGateway { router, api_key }
    }
}

impl ApiGateway for RouterGateway {
    fn call<'a>(&'a self, method: Method, path: &'a str, body: Option<Value>) -> GatewayFuture<'a> {
        Box::pin(async move {
            let mut request = Request::builder().method(method).uri(path);
            if let Some(key) = &self.api_key {
                request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
            }
            let request = match body {
                Some(body) => request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string())),
                None => request.body(Body::empty()),
            }
            .map_err(|e| e.to_string())?;
            let response = self.router.clone().oneshot(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), MCP_GATEWAY_BODY_BYTES_MAX)
                .await
                .map_err(|e| e.to_string())?;
            answer(status.as_u16(), &bytes)
        })
    }
}

/// An API answer as JSON, or its refusal as text.
pub fn answer(status: u16, bytes: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let detail = value["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
    Err(format!("{status}: {detail}"))
}

/// The MCP server: Kelpie's agents as tools.
#[derive(Clone)]
pub struct KelpieMcp {
    gateway: Arc<dyn ApiGateway>,
}

fn schema(properties: Value, required: &[&str]) -> Arc<Map<String, Value>> {
    let schema = json!({"type": "object", "properties": properties, "required": required});
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

/// The tools offered.
pub fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "list_agents",
            "List the agents on this Kelpie server (id, name, description, tags), oldest first.",
            schema(
                json!({"name": {"type": "string", "description": "Only agents with this exact name"},
                       "limit": {"type": "integer", "minimum": 1, "maximum": MCP_LIST_AGENTS_COUNT_MAX}}),
                &[],
            ),
        ),
        Tool::new(
            "create_agent",
            "Create an agent with a persona and what it knows about the human; answers its id.",
            schema(
                json!({"name": {"type": "string"}, "persona": {"type": "string"}, "human": {"type": "string"},
                       "model": {"type": "string", "description": "A model handle; the server's default when absent"}}),
                &["name"],
            ),
        ),
        Tool::new(
            "send_message",
            "Send a message to an agent and get its reply. The agent remembers the conversation.",
            schema(
                json!({"agent_id": {"type": "string"}, "message": {"type": "string"}}),
                &["agent_id", "message"],
            ),
        ),
        Tool::new(
            "read_memory",
            "Read an agent's core memory blocks (label, value, limit).",
            schema(json!({"agent_id": {"type": "string"}}), &["agent_id"]),
        ),
    ]
}

fn text_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    args.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{name} is required"))
}

/// An agent id safe to put in a path.
fn agent_id(args: &Map<String, Value>) -> Result<&str, String> {
    let id = text_arg(args, "agent_id")?;
    match id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        true => Ok(id),
        false => Err(format!("agent_id {id:?} is not an agent id")),
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl KelpieMcp {
    pub fn new(gateway: Arc<dyn ApiGateway>) -> Self {
        KelpieMcp { gateway }
    }

    /// Runs tool `name`: the text the caller sees, or why it failed.
    pub async fn run(&self, name: &str, args: &Map<String, Value>) -> Result<String, String> {
        match name {
            "list_agents" => {
                let limit =
                    args.get("limit").and_then(Value::as_u64).unwrap_or(MCP_LIST_AGENTS_COUNT_DEFAULT);
                if !(1..=MCP_LIST_AGENTS_COUNT_MAX).contains(&limit) {
                    return Err(format!("limit must be 1..={MCP_LIST_AGENTS_COUNT_MAX}"));
                }
                let mut path = format!("/v1/agents/?order=asc&limit={limit}");
                if let Some(name) = args.get("name").and_then(Value::as_str) {
                    path.push_str(&format!("&name={}", percent_encode(name)));
                }
                let agents = self.gateway.call(Method::GET, &path, None).await?;
                let listed: Vec<Value> = agents
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| json!({"id": a["id"], "name": a["name"], "description": a["description"], "tags": a["tags"]}))
                    .collect();
                Ok(Value::Array(listed).to_string())
            }
            "create_agent" => {
                let name = text_arg(args, "name")?;
                let block = |label: &str| {
                    args.get(label)
                        .and_then(Value::as_str)
                        .map(|value| json!({"label": label, "value": value}))
                };
                let blocks: Vec<Value> =
                    ["persona", "human"].iter().filter_map(|label| block(label)).collect();
                let mut body = json!({"name": name, "memory_blocks": blocks});
                if let Some(model) = args.get("model").and_then(Value::as_str) {
                    body["model"] = json!(model);
                }
                let agent = self.gateway.call(Method::POST, "/v1/agents/", Some(body)).await?;
                Ok(json!({"id": agent["id"], "name": agent["name"]}).to_string())
            }
            "send_message" => {
                let id = agent_id(args)?;
                let message = text_arg(args, "message")?;
                let body = json!({"messages": [{"role": "user", "content": message}]});
                let response =
                    self.gateway.call(Method::POST, &format!("/v1/agents/{id}/messages"), Some(body)).await?;
                let replies: Vec<&str> = response["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["message_type"] == "assistant_message")
                    .filter_map(|m| m["content"].as_str())
                    .collect();
                match replies.is_empty() {
                    false => Ok(replies.join("\n")),
                    true => Ok(format!(
                        "(the agent did not reply; stop reason: {})",
                        response["stop_reason"]["stop_reason"].as_str().unwrap_or("unknown")
                    )),
                }
            }
            "read_memory" => {
                let id = agent_id(args)?;
                let blocks = self
                    .gateway
                    .call(Method::GET, &format!("/v1/agents/{id}/core-memory/blocks?limit=1000"), None)
                    .await?;
                let listed: Vec<Value> = blocks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| json!({"label": b["label"], "value": b["value"], "limit": b["limit"]}))
                    .collect();
                Ok(Value::Array(listed).to_string())
            }
            other => Err(format!("no tool named {other}")),
        }
    }
}

impl ServerHandler for KelpieMcp {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder().enable_tools().build();
        let mut info = InitializeResult::new(capabilities)
            .with_server_info(Implementation::new("kelpie", env!("CARGO_PKG_VERSION")));
        info.instructions = Some(
            "Kelpie's stateful agents: list_agents, create_agent, send_message (the agent remembers), read_memory."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if !tools().iter().any(|tool| tool.name == request.name) {
            return Err(ErrorData::invalid_params(format!("no tool named {}", request.name), None));
        }
        let args = request.arguments.unwrap_or_default();
        let result = match self.run(&request.name, &args).await {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(reason) => CallToolResult::error(vec![ContentBlock::text(reason)]),
        };
        Ok(CallToolResponse::Complete(result))
    }
}

/// Serves MCP on this process's stdin and stdout until the client goes
/// away (`kelpie mcp`).
pub async fn serve_stdio(gateway: Arc<dyn ApiGateway>) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = KelpieMcp::new(gateway).serve(rmcp::transport::stdio()).await.map_err(|e| e.to_string())?;
    running.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// `/mcp`: the MCP server over streamable HTTP, one session per client.
/// `Host` must be one of `allowed_hosts` (DNS rebinding); open streams end
/// when `shutdown` is cancelled.
pub fn http_service(
    gateway: Arc<dyn ApiGateway>,
    allowed_hosts: Vec<String>,
    shutdown: tokio_util::sync::CancellationToken,
) -> StreamableHttpService<KelpieMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts);
    config.cancellation_token = shutdown;
    StreamableHttpService::new(
        move || Ok(KelpieMcp::new(Arc::clone(&gateway))),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_refusals_are_read() {
        assert_eq!(answer(200, br#"{"a": 1}"#), Ok(json!({"a": 1})));
        assert_eq!(
            answer(404, br#"{"detail": "Agent with ID a not found"}"#),
            Err("404: Agent with ID a not found".into())
        );
        assert_eq!(answer(502, b"bad gateway"), Err("502: bad gateway".into()));
    }

    #[test]
    fn agent_ids_must_be_safe_in_a_path() {
        let args = |id: &str| json!({"agent_id": id}).as_object().cloned().unwrap();
        assert_eq!(agent_id(&args("agent-1_a")), Ok("agent-1_a"));
        assert!(agent_id(&args("../v1/tools")).is_err());
        assert!(agent_id(&Map::new()).is_err());
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }
}
