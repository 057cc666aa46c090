//! The MCP client, on the official Rust SDK (`rmcp`): one [`McpClient`]
//! per registered server, over one of three transports —
//!
//! - `stdio`: the server's command runs in a sandbox of its own
//!   ([`crate::runner::ToolRunner::start_session`]), seeing only the
//!   environment its config gives, no network unless configured;
//! - `streamable_http`: the current HTTP transport;
//! - `sse`: the legacy HTTP+SSE transport ([`sse`]).
//!
//! A client connects on first use (initialize, bounded by
//! [`MCP_CONNECT_TIMEOUT_MS`]) and keeps the connection for later calls,
//! which may run at once. A connection that breaks (the server crashed, the
//! stream closed) is dropped and the next call starts a new one; when
//! starts keep failing, each waits longer ([`backoff_ms`]) and calls in
//! between fail at once with the reason. URLs are checked against internal
//! addresses at every connection ([`url`]).

pub mod sse;
pub mod url;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, JsonObject};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};

use crate::runner::{Session, ToolRunner};

/// Longest a connection (start, initialize) may take, in milliseconds.
pub const MCP_CONNECT_TIMEOUT_MS: u64 = 20_000;
/// Longest one tool call may take, in milliseconds.
pub const MCP_CALL_TIMEOUT_MS: u64 = 60_000;
/// Longest listing a server's tools may take, in milliseconds.
pub const MCP_LIST_TIMEOUT_MS: u64 = 20_000;
/// Most tools taken from one server.
pub const MCP_TOOLS_COUNT_MAX: usize = 500;
/// Largest message accepted from a server, in bytes.
pub const MCP_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Wait before the second restart of a failing server; doubles after each
/// further failure up to [`MCP_RESTART_BACKOFF_MS_MAX`]. The first restart
/// after a crash is immediate.
pub const MCP_RESTART_BACKOFF_MS_BASE: u64 = 250;
pub const MCP_RESTART_BACKOFF_MS_MAX: u64 = 30_000;
/// A stdio session this close to its wall time is replaced before a call
/// rather than risk being ended during it, in milliseconds.
pub const MCP_SESSION_RENEW_MARGIN_MS: u64 = 60_000;
/// Characters of a failed server's stderr quoted in the error.
const STDERR_QUOTED_CHARS_MAX: usize = 1_000;

/// Why an MCP operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// The server's configuration is wrong (answered 4xx).
    #[error("MCP server config: {0}")]
    BadConfig(String),
    /// The URL resolves to an address the configuration does not allow.
    #[error("MCP server URL {url} resolves to {address}, an internal address; set mcp.allow_internal_urls to allow it")]
    InternalAddress { url: String, address: std::net::IpAddr },
    #[error("cannot connect to the MCP server: {0}")]
    Connect(String),
    #[error("the MCP server did not finish {what} within {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    /// Starting the server failed recently; it is tried again after a wait.
    #[error("the MCP server failed to start {failures} times in a row (last: {last_error}); next try in {retry_in_ms} ms")]
    Backoff { failures: u32, last_error: String, retry_in_ms: u64 },
    /// The server answered with an error or broke the protocol.
    #[error("MCP protocol error: {0}")]
    Protocol(String),
    /// The server has no tool of this name.
    #[error("the MCP server has no tool named {0}")]
    NoSuchTool(String),
}

impl McpError {
    /// Whether the caller's input is at fault (a 4xx), not the server.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, McpError::BadConfig(_) | McpError::InternalAddress { .. } | McpError::NoSuchTool(_))
    }
}

/// How to reach a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    Stdio { command: String, args: Vec<String>, env: Vec<(String, String)> },
    StreamableHttp { url: String, headers: Vec<(String, String)> },
    Sse { url: String, headers: Vec<(String, String)> },
}

/// Server-wide MCP settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct McpSettings {
    /// Lets server URLs resolve to loopback, private and link-local addresses.
    pub allow_internal_urls: bool,
    /// Gives stdio servers' sandboxes the network.
    pub stdio_network: bool,
}

/// A tool as a server describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct McpTool {
    pub name: String,
    pub description: Option<String>,
    /// The JSON schema of its arguments.
    pub input_schema: Value,
    /// Hints (read-only, destructive...), as the server sent them.
    pub annotations: Option<Value>,
}

impl McpTool {
    /// The tool in the OpenAI function shape the model is given.
    pub fn json_schema(&self) -> Value {
        let mut parameters = self.input_schema.clone();
        if !parameters.is_object() {
            parameters = json!({"type": "object", "properties": {}});
        }
        json!({"name": self.name, "description": self.description.clone().unwrap_or_default(), "parameters": parameters})
    }
}

/// What a call returned: its content as text, and whether the server
/// marked it an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpCallResult {
    pub is_error: bool,
    pub text: String,
}

/// The wait before start number `failures + 1` after `failures` failures.
pub fn backoff_ms(failures: u32) -> u64 {
    match failures {
        0 | 1 => 0,
        n => MCP_RESTART_BACKOFF_MS_BASE
            .saturating_mul(1u64 << (n - 2).min(20))
            .min(MCP_RESTART_BACKOFF_MS_MAX),
    }
}

/// The content of a call result as one text: text parts as they are, other
/// parts as placeholders naming what they were; structured content when the
/// server sent nothing else.
pub fn result_text(result: &Value) -> String {
    let mut parts = Vec::new();
    for block in result["content"].as_array().into_iter().flatten() {
        let part = match block["type"].as_str().unwrap_or_default() {
            "text" => block["text"].as_str().unwrap_or_default().to_string(),
            kind @ ("image" | "audio") => {
                let bytes = block["data"].as_str().map_or(0, |data| data.len() * 3 / 4);
                format!(
                    "[{kind} {}, about {bytes} bytes, not shown]",
                    block["mimeType"].as_str().unwrap_or("?")
                )
            }
            "resource" => match block["resource"]["text"].as_str() {
                Some(text) => text.to_string(),
                None => format!("[resource {}]", block["resource"]["uri"].as_str().unwrap_or("?")),
            },
            "resource_link" => format!("[resource link {}]", block["uri"].as_str().unwrap_or("?")),
            other => format!("[{other} content]"),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        if let Some(structured) = result.get("structuredContent").filter(|v| !v.is_null()) {
            return structured.to_string();
        }
    }
    parts.join("\n")
}

fn tool_from(value: Value) -> Option<McpTool> {
    Some(McpTool {
        name: value["name"].as_str()?.to_string(),
        description: value["description"].as_str().map(str::to_string),
        input_schema: value.get("inputSchema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        annotations: value.get("annotations").cloned(),
    })
}

struct Connection {
    service: RunningService<RoleClient, ()>,
    /// The stdio server's sandbox, alive as long as the connection.
    session: Option<Session>,
    started: Instant,
}

impl Connection {
    /// Whether it should be replaced before the next call.
    fn is_stale(&self) -> bool {
        let session_over = self.session.as_ref().is_some_and(|session| {
            session.ended.is_finished()
                || self.started.elapsed().as_millis() as u64 + MCP_SESSION_RENEW_MARGIN_MS >= session.wall_ms
        });
        session_over || self.service.is_closed()
    }
}

#[derive(Default)]
struct ClientState {
    connection: Option<Arc<Connection>>,
    failures: u32,
    last_error: String,
    retry_at: Option<Instant>,
}

/// One server's client.
pub struct McpClient {
    transport: McpTransport,
    settings: McpSettings,
    runner: Arc<ToolRunner>,
    state: tokio::sync::Mutex<ClientState>,
}

fn install_crypto_provider() {
    // reqwest 0.13 (the SDK's HTTP client) is built without a provider;
    // a second install (another client got there first) is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn quoted_stderr(session: &mut Session) -> String {
    let ended = tokio::time::timeout(Duration::from_millis(1_000), &mut session.ended).await;
    match ended {
        Ok(Ok(Ok(output))) => {
            let stderr = output.stderr.text();
            let stderr = stderr.trim();
            let start = stderr.char_indices().rev().nth(STDERR_QUOTED_CHARS_MAX).map_or(0, |(i, _)| i);
            format!(" (exit code {}; stderr: {})", output.exit_code, &stderr[start..])
        }
        Ok(Ok(Err(error))) => format!(" ({error})"),
        _ => String::new(),
    }
}

fn service_error(error: ServiceError) -> McpError {
    match error {
        ServiceError::McpError(data) => McpError::Protocol(data.message.to_string()),
        other => McpError::Connect(other.to_string()),
    }
}

impl McpClient {
    pub fn new(transport: McpTransport, settings: McpSettings, runner: Arc<ToolRunner>) -> Self {
        McpClient { transport, settings, runner, state: tokio::sync::Mutex::new(ClientState::default()) }
    }

    pub fn transport(&self) -> &McpTransport {
        &self.transport
    }

    async fn connect(&self) -> Result<Connection, McpError> {
        let timeout = Duration::from_millis(MCP_CONNECT_TIMEOUT_MS);
        let timed_out =
            || McpError::Timeout { what: "connecting".into(), timeout_ms: MCP_CONNECT_TIMEOUT_MS };
        match &self.transport {
            McpTransport::Stdio { command, args, env } => {
                let (mut session, stdin, stdout) = self
                    .runner
                    .start_session(command, args.clone(), env, self.settings.stdio_network)
                    .map_err(|e| McpError::BadConfig(e.to_string()))?;
                let served = tokio::time::timeout(timeout, ().serve((stdout, stdin))).await;
                match served {
                    Ok(Ok(service)) => {
                        Ok(Connection { service, session: Some(session), started: Instant::now() })
                    }
                    Ok(Err(error)) => {
                        let stderr = quoted_stderr(&mut session).await;
                        Err(McpError::Connect(format!("{command}: {error}{stderr}")))
                    }
                    Err(_) => Err(timed_out()),
                }
            }
            McpTransport::StreamableHttp { url, headers } => {
                url::check(url, self.settings.allow_internal_urls).await?;
                install_crypto_provider();
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                config.custom_headers = header_map(headers)?;
                config.max_sse_event_size = MCP_MESSAGE_BYTES_MAX;
                config.max_json_response_size = MCP_MESSAGE_BYTES_MAX;
                let transport = StreamableHttpClientTransport::from_config(config);
                let served = tokio::time::timeout(timeout, ().serve(transport)).await;
                match served {
                    Ok(Ok(service)) => Ok(Connection { service, session: None, started: Instant::now() }),
                    Ok(Err(error)) => Err(McpError::Connect(format!("{url}: {error}"))),
                    Err(_) => Err(timed_out()),
                }
            }
            McpTransport::Sse { url, headers } => {
                url::check(url, self.settings.allow_internal_urls).await?;
                let pipe = sse::connect(url, headers, timeout).await?;
                let served = tokio::time::timeout(timeout, ().serve(pipe)).await;
                match served {
                    Ok(Ok(service)) => Ok(Connection { service, session: None, started: Instant::now() }),
                    Ok(Err(error)) => Err(McpError::Connect(format!("{url}: {error}"))),
                    Err(_) => Err(timed_out()),
                }
            }
        }
    }

    /// The live connection, started when there is none (or it is stale).
    async fn connection(&self) -> Result<Arc<Connection>, McpError> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection {
            if !connection.is_stale() {
                return Ok(Arc::clone(connection));
            }
            state.connection = None;
        }
        if let Some(retry_at) = state.retry_at {
            let now = Instant::now();
            if retry_at > now {
                return Err(McpError::Backoff {
                    failures: state.failures,
                    last_error: state.last_error.clone(),
                    retry_in_ms: (retry_at - now).as_millis() as u64,
                });
            }
        }
        match self.connect().await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                state.connection = Some(Arc::clone(&connection));
                state.retry_at = None;
                Ok(connection)
            }
            Err(error) => {
                if !error.is_bad_input() {
                    self.failed(&mut state, &error);
                }
                Err(error)
            }
        }
    }

    fn failed(&self, state: &mut ClientState, error: &McpError) {
        state.failures = state.failures.saturating_add(1);
        state.last_error = error.to_string();
        let wait_ms = backoff_ms(state.failures);
        state.retry_at = (wait_ms > 0).then(|| Instant::now() + Duration::from_millis(wait_ms));
        tracing::warn!(failures = state.failures, wait_ms, %error, "MCP server connection failed");
    }

    /// Forgets `connection` after it broke, so the next call starts anew.
    async fn broken(&self, connection: &Arc<Connection>, error: &McpError) {
        let mut state = self.state.lock().await;
        if state.connection.as_ref().is_some_and(|current| Arc::ptr_eq(current, connection)) {
            state.connection = None;
            self.failed(&mut state, error);
        }
    }

    async fn healthy(&self) {
        let mut state = self.state.lock().await;
        state.failures = 0;
        state.retry_at = None;
    }

    /// Every tool the server offers (at most [`MCP_TOOLS_COUNT_MAX`]).
    pub async fn list_tools(&self) -> Result<Vec<McpTool>, McpError> {
        let connection = self.connection().await?;
        let listed = tokio::time::timeout(
            Duration::from_millis(MCP_LIST_TIMEOUT_MS),
            connection.service.list_all_tools(),
        )
        .await
        .map_err(|_| McpError::Timeout { what: "listing tools".into(), timeout_ms: MCP_LIST_TIMEOUT_MS })?;
        let tools = match listed {
            Ok(tools) => tools,
            Err(error) => {
                let error = service_error(error);
                if !matches!(error, McpError::Protocol(_)) {
                    self.broken(&connection, &error).await;
                }
                return Err(error);
            }
        };
        self.healthy().await;
        if tools.len() > MCP_TOOLS_COUNT_MAX {
            return Err(McpError::Protocol(format!(
                "the server offers {} tools, over MCP_TOOLS_COUNT_MAX = {MCP_TOOLS_COUNT_MAX}",
                tools.len()
            )));
        }
        Ok(tools.into_iter().filter_map(|tool| serde_json::to_value(tool).ok().and_then(tool_from)).collect())
    }

    /// Calls tool `name` with `args` (a JSON object).
    pub async fn call_tool(&self, name: &str, args: &Value) -> Result<McpCallResult, McpError> {
        let arguments: Option<JsonObject> = match args {
            Value::Object(map) => Some(map.clone()),
            Value::Null => None,
            other => {
                return Err(McpError::BadConfig(format!("tool arguments must be an object, not {other}")))
            }
        };
        let connection = self.connection().await?;
        let mut params = CallToolRequestParams::new(name.to_string());
        params.arguments = arguments;
        let called = tokio::time::timeout(
            Duration::from_millis(MCP_CALL_TIMEOUT_MS),
            connection.service.call_tool(params),
        )
        .await
        .map_err(|_| McpError::Timeout { what: format!("tool {name}"), timeout_ms: MCP_CALL_TIMEOUT_MS })?;
        let result = match called {
            Ok(result) => result,
            Err(error) => {
                let error = service_error(error);
                if !matches!(error, McpError::Protocol(_)) {
                    self.broken(&connection, &error).await;
                }
                return Err(error);
            }
        };
        self.healthy().await;
        let value = serde_json::to_value(&result).map_err(|e| McpError::Protocol(e.to_string()))?;
        Ok(McpCallResult { is_error: result.is_error == Some(true), text: result_text(&value) })
    }

    /// Ends the connection (and a stdio server's sandbox).
    pub async fn close(&self) {
        let connection = self.state.lock().await.connection.take();
        if let Some(connection) = connection.and_then(|c| Arc::try_unwrap(c).ok()) {
            let mut service = connection.service;
            let _ = service.close_with_timeout(Duration::from_millis(1_000)).await;
        }
    }
}

fn header_map(
    headers: &[(String, String)],
) -> Result<HashMap<http::HeaderName, http::HeaderValue>, McpError> {
    let mut map = HashMap::new();
    for (name, value) in headers {
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| McpError::BadConfig(format!("{name:?} is not a header name")))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| McpError::BadConfig(format!("the value of header {name} is not valid")))?;
        map.insert(header, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_once_then_doubles_to_its_cap() {
        assert_eq!([backoff_ms(0), backoff_ms(1), backoff_ms(2), backoff_ms(3)], [0, 0, 250, 500]);
        assert_eq!(backoff_ms(40), MCP_RESTART_BACKOFF_MS_MAX);
    }

    #[test]
    fn results_become_text_with_placeholders() {
        let result = json!({"content": [
            {"type": "text", "text": "The sum is 5"},
            {"type": "image", "data": "aGVsbG8h", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///a", "text": "inline"}},
            {"type": "resource_link", "uri": "test://static/1", "name": "r"},
        ]});
        assert_eq!(
            result_text(&result),
            "The sum is 5\n[image image/png, about 6 bytes, not shown]\ninline\n[resource link test://static/1]"
        );
        assert_eq!(result_text(&json!({"content": [], "structuredContent": {"t": 22}})), "{\"t\":22}");
    }

    #[test]
    fn a_tool_schema_is_the_function_shape() {
        let tool = tool_from(json!({"name": "echo", "description": "Echoes", "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}}})).unwrap();
        assert_eq!(
            tool.json_schema(),
            json!({"name": "echo", "description": "Echoes", "parameters": {"type": "object", "properties": {"message": {"type": "string"}}}})
        );
    }
}
