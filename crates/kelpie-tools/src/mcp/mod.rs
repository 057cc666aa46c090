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

pub mod client;
pub mod sse;
pub mod types;
pub mod url;

pub use client::McpClient;
pub use types::*;
