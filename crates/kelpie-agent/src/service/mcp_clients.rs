//! What reaches MCP servers ([`McpConnector`]): in production the MCP
//! client of each registered server in use ([`McpClients`]), made from the
//! server's config and made anew when the config changes; in the
//! deterministic simulation, a simulated server with injected faults.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kelpie_tools::mcp::{McpCallResult, McpClient, McpError, McpTool, McpTransport};
use kelpie_tools::ToolRunner;
use serde_json::Value;

use crate::actors::tool_store::{McpHttpConfig, McpServerConfig, McpServerRecord};

/// A future borrowing what it was called with.
pub type McpFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Lists and calls the tools of registered MCP servers.
pub trait McpConnector: Send + Sync + 'static {
    fn list_tools<'a>(&'a self, server: &'a McpServerRecord)
        -> McpFuture<'a, Result<Vec<McpTool>, McpError>>;
    fn call_tool<'a>(
        &'a self,
        server: &'a McpServerRecord,
        tool: &'a str,
        args: &'a Value,
    ) -> McpFuture<'a, Result<McpCallResult, McpError>>;
    /// Ends what is kept for server `server_id` (it was deleted).
    fn forget<'a>(&'a self, server_id: &'a str) -> McpFuture<'a, ()>;
    fn shutdown(&self) -> McpFuture<'_, ()>;
}

/// The client of each server in use, keyed by server id.
pub struct McpClients {
    runner: Arc<ToolRunner>,
    clients: tokio::sync::Mutex<BTreeMap<String, (McpServerConfig, Arc<McpClient>)>>,
}

impl McpConnector for McpClients {
    fn list_tools<'a>(
        &'a self,
        server: &'a McpServerRecord,
    ) -> McpFuture<'a, Result<Vec<McpTool>, McpError>> {
        Box::pin(async move { self.client(server).await.list_tools().await })
    }

    fn call_tool<'a>(
        &'a self,
        server: &'a McpServerRecord,
        tool: &'a str,
        args: &'a Value,
    ) -> McpFuture<'a, Result<McpCallResult, McpError>> {
        Box::pin(async move { self.client(server).await.call_tool(tool, args).await })
    }

    fn forget<'a>(&'a self, server_id: &'a str) -> McpFuture<'a, ()> {
        Box::pin(McpClients::forget(self, server_id))
    }

    fn shutdown(&self) -> McpFuture<'_, ()> {
        Box::pin(McpClients::shutdown(self))
    }
}

impl McpClients {
    pub fn new(runner: Arc<ToolRunner>) -> Self {
        McpClients { runner, clients: tokio::sync::Mutex::new(BTreeMap::new()) }
    }

    /// The client of `server`, made anew when its config changed.
    pub async fn client(&self, server: &McpServerRecord) -> Arc<McpClient> {
        let runner = &self.runner;
        let mut clients = self.clients.lock().await;
        if let Some((config, client)) = clients.get(&server.id) {
            if *config == server.config {
                return Arc::clone(client);
            }
        }
        let settings = runner.settings().mcp;
        let client = Arc::new(McpClient::new(transport(&server.config), settings, Arc::clone(runner)));
        if let Some((_, old)) =
            clients.insert(server.id.clone(), (server.config.clone(), Arc::clone(&client)))
        {
            old.close().await;
        }
        client
    }

    /// Ends and forgets the client of server `id`.
    pub async fn forget(&self, id: &str) {
        let removed = self.clients.lock().await.remove(id);
        if let Some((_, client)) = removed {
            client.close().await;
        }
    }

    pub async fn shutdown(&self) {
        let clients = std::mem::take(&mut *self.clients.lock().await);
        for (_, client) in clients.into_values() {
            client.close().await;
        }
    }
}

/// The headers an HTTP server is sent: the auth token under its header
/// (`Authorization: Bearer <token>` when no header is named), then the
/// custom ones.
pub(crate) fn http_headers(config: &McpHttpConfig) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if let Some(token) = &config.auth_token {
        let header = config.auth_header.clone().unwrap_or_else(|| "Authorization".into());
        let value = match header.eq_ignore_ascii_case("authorization") && !token.contains(' ') {
            true => format!("Bearer {token}"),
            false => token.clone(),
        };
        headers.push((header, value));
    }
    headers.extend(config.custom_headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    headers
}

pub fn transport(config: &McpServerConfig) -> McpTransport {
    match config {
        McpServerConfig::Stdio { command, args, env } => McpTransport::Stdio {
            command: command.clone(),
            args: args.clone(),
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        },
        McpServerConfig::StreamableHttp(http) => {
            McpTransport::StreamableHttp { url: http.server_url.clone(), headers: http_headers(http) }
        }
        McpServerConfig::Sse(http) => {
            McpTransport::Sse { url: http.server_url.clone(), headers: http_headers(http) }
        }
    }
}
