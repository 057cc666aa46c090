//! [`McpClient`]: one server's client — connects on first use, keeps the
//! connection, restarts a broken one with backoff.

use kelpie_core::metrics::{self, MCP_REQUESTS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, JsonObject};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;
use serde_json::Value;

use crate::mcp::sse;
use crate::mcp::types::{
    backoff_ms, result_text, tool_from, McpCallResult, McpError, McpSettings, McpTool, McpTransport,
    MCP_CALL_TIMEOUT_MS, MCP_CONNECT_TIMEOUT_MS, MCP_LIST_TIMEOUT_MS, MCP_MESSAGE_BYTES_MAX,
    MCP_SESSION_RENEW_MARGIN_MS, MCP_TOOLS_COUNT_MAX, STDERR_QUOTED_CHARS_MAX,
};
use crate::mcp::url;
use crate::runner::{Session, ToolRunner};

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
                let transport = StreamableHttpClientTransport::with_client(http_client()?, config);
                let served = tokio::time::timeout(timeout, ().serve(transport)).await;
                match served {
                    Ok(Ok(service)) => Ok(Connection { service, session: None, started: Instant::now() }),
                    Ok(Err(error)) if error.auth_challenge().is_some() => Err(McpError::AuthRequired {
                        url: url.to_string(),
                        challenge: error.auth_challenge().unwrap_or_default().to_string(),
                    }),
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

    /// What a request on `connection` answered: a success resets the
    /// failure count; a broken transport drops the connection (a protocol
    /// error from a live server does not).
    async fn settle<T>(
        &self,
        connection: &Arc<Connection>,
        answer: Result<T, ServiceError>,
    ) -> Result<T, McpError> {
        match answer {
            Ok(value) => {
                let mut state = self.state.lock().await;
                state.failures = 0;
                state.retry_at = None;
                Ok(value)
            }
            Err(error) => {
                let error = service_error(error);
                if !matches!(error, McpError::Protocol(_)) {
                    self.broken(connection, &error).await;
                }
                Err(error)
            }
        }
    }

    /// Every tool the server offers (at most [`MCP_TOOLS_COUNT_MAX`]).
    pub async fn list_tools(&self) -> Result<Vec<McpTool>, McpError> {
        let listed = self.list_tools_unmetered().await;
        let outcome = match &listed {
            Ok(_) => "ok",
            Err(McpError::Timeout { .. }) => "timeout",
            Err(_) => "failed",
        };
        metrics::increment(&MCP_REQUESTS, &["list_tools", outcome], 1);
        listed
    }

    async fn list_tools_unmetered(&self) -> Result<Vec<McpTool>, McpError> {
        let connection = self.connection().await?;
        let listed = tokio::time::timeout(
            Duration::from_millis(MCP_LIST_TIMEOUT_MS),
            connection.service.list_all_tools(),
        )
        .await
        .map_err(|_| McpError::Timeout { what: "listing tools".into(), timeout_ms: MCP_LIST_TIMEOUT_MS })?;
        let tools = self.settle(&connection, listed).await?;
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
        let called = self.call_tool_unmetered(name, args).await;
        let outcome = match &called {
            Ok(result) if result.is_error => "tool_error",
            Ok(_) => "ok",
            Err(McpError::Timeout { .. }) => "timeout",
            Err(_) => "failed",
        };
        metrics::increment(&MCP_REQUESTS, &["call_tool", outcome], 1);
        called
    }

    async fn call_tool_unmetered(&self, name: &str, args: &Value) -> Result<McpCallResult, McpError> {
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
        let result = self.settle(&connection, called).await?;
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

/// The HTTP client of a streamable-HTTP connection: keeps its connections
/// (the SDK's default opens one per message), without Nagle's delay, and
/// follows no redirect (a redirect could lead a request to an address the
/// URL check did not see).
fn http_client() -> Result<reqwest_mcp::Client, McpError> {
    reqwest_mcp::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_millis(MCP_CONNECT_TIMEOUT_MS))
        .redirect(reqwest_mcp::redirect::Policy::none())
        .build()
        .map_err(|e| McpError::Connect(format!("cannot build the HTTP client: {e}")))
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
