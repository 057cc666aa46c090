//! `kelpie_mcp_requests_total` over a known workload against the reference
//! server (streamable HTTP on 127.0.0.1): the counters move by exactly the
//! requests made, by outcome.
//!
//! The metrics registry is process-wide, so this file holds one test.
//! Needs node and `mcp-server-everything` on the PATH; fails without them.

mod common;

use std::sync::Arc;

use common::{runner, start_http};
use kelpie_core::metrics::{counter_total, MCP_REQUESTS};
use kelpie_tools::mcp::{McpClient, McpSettings, McpTransport};
use serde_json::json;

fn totals() -> [u64; 6] {
    let at = |operation, outcome| counter_total(&MCP_REQUESTS, &[operation, outcome]);
    [
        at("list_tools", "ok"),
        at("list_tools", "failed"),
        at("call_tool", "ok"),
        at("call_tool", "tool_error"),
        at("call_tool", "failed"),
        at("call_tool", "timeout"),
    ]
}

#[tokio::test]
async fn a_known_workload_moves_the_mcp_counters_by_known_amounts() {
    let (_dir, runner) = runner();
    let http = start_http("streamableHttp");
    let url = format!("http://127.0.0.1:{}/mcp", http.port);
    assert_eq!(totals(), [0; 6]);
    let settings = McpSettings { allow_internal_urls: true, stdio_network: false };
    let client = McpClient::new(
        McpTransport::StreamableHttp { url: url.clone(), headers: Vec::new() },
        settings,
        Arc::clone(&runner),
    );
    assert!(client.list_tools().await.unwrap().len() > 4);
    for message in ["one", "two"] {
        let echoed = client.call_tool("echo", &json!({ "message": message })).await.unwrap();
        assert_eq!(echoed.text, format!("Echo: {message}"));
    }
    // A tool the server does not have: an error result or a protocol error.
    let unknown = client.call_tool("no-such-tool", &json!({})).await;
    // Loopback refused by the default settings: a failed listing.
    let guarded = McpClient::new(
        McpTransport::StreamableHttp { url, headers: Vec::new() },
        McpSettings::default(),
        runner,
    );
    assert!(guarded.list_tools().await.is_err());

    let [listed, list_failed, called, tool_errors, call_failed, timeouts] = totals();
    assert_eq!((listed, list_failed, called, timeouts), (1, 1, 2, 0));
    match unknown {
        Ok(result) => {
            assert!(result.is_error, "{result:?}");
            assert_eq!((tool_errors, call_failed), (1, 0));
        }
        Err(_) => assert_eq!((tool_errors, call_failed), (0, 1)),
    }
}
