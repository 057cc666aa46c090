//! The MCP client of each registered server in use ([`McpClients`]), made
//! from the server's config and made anew when the config changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use kelpie_tools::mcp::{McpClient, McpTransport};
use kelpie_tools::ToolRunner;

use crate::actors::tool_store::{McpHttpConfig, McpServerConfig, McpServerRecord};

/// The client of each server in use, keyed by server id.
#[derive(Default)]
pub struct McpClients {
    clients: tokio::sync::Mutex<BTreeMap<String, (McpServerConfig, Arc<McpClient>)>>,
}

impl McpClients {
    /// The client of `server`, made anew when its config changed.
    pub async fn client(&self, server: &McpServerRecord, runner: &Arc<ToolRunner>) -> Arc<McpClient> {
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
