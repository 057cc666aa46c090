//! The MCP client's vocabulary: limits, errors, settings, transports, and
//! what a server's tools and results become.

use serde_json::{json, Value};

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
pub(crate) const STDERR_QUOTED_CHARS_MAX: usize = 1_000;

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
    /// The server refused with a `WWW-Authenticate` challenge (401, or 403
    /// for a scope): it wants an authorization, as an OAuth-protected
    /// server does, that the configuration does not carry.
    #[error("the MCP server at {url} asks for an authorization the configuration does not carry (it answered with a WWW-Authenticate challenge)")]
    AuthRequired { url: String, challenge: String },
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

pub(crate) fn tool_from(value: Value) -> Option<McpTool> {
    Some(McpTool {
        name: value["name"].as_str()?.to_string(),
        description: value["description"].as_str().map(str::to_string),
        input_schema: value.get("inputSchema").cloned().unwrap_or_else(|| json!({"type": "object"})),
        annotations: value.get("annotations").cloned(),
    })
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
