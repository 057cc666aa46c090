//! The MCP client against a server nobody on the team wrote: the reference
//! server `@modelcontextprotocol/server-everything` (npm) over stdio in the
//! process sandbox, over streamable HTTP and over legacy SSE on 127.0.0.1;
//! and a crashing stdio server (a few lines of Python) restarted with
//! backoff.
//!
//! Needs bubblewrap, node and `mcp-server-everything` on the PATH
//! (`npm install -g @modelcontextprotocol/server-everything`); fails, never
//! skips, without them.

use std::sync::Arc;

use kelpie_tools::mcp::{McpClient, McpError, McpSettings, McpTransport};
use serde_json::{json, Value};

mod common;

use common::{runner, start_http, EVERYTHING};

const INTERNAL_OK: McpSettings = McpSettings { allow_internal_urls: true, stdio_network: false };

/// What every transport must do with the reference server.
async fn exercise(client: &McpClient) {
    let tools = client.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
    for expected in ["echo", "get-sum", "get-tiny-image", "get-env"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    let sum = tools.iter().find(|tool| tool.name == "get-sum").unwrap();
    assert_eq!(sum.json_schema()["parameters"]["properties"]["a"]["type"], "number");
    let echoed = client.call_tool("echo", &json!({"message": "kelp forest"})).await.unwrap();
    assert_eq!((echoed.is_error, echoed.text.as_str()), (false, "Echo: kelp forest"));
    let summed = client.call_tool("get-sum", &json!({"a": 2, "b": 3.5})).await.unwrap();
    assert!(summed.text.contains("5.5"), "{summed:?}");
    let image = client.call_tool("get-tiny-image", &json!({})).await.unwrap();
    assert!(image.text.contains("[image image/png, about"), "{image:?}");
    // Bad arguments come back as an error result or a protocol error, never a panic.
    match client.call_tool("get-sum", &json!({"a": "x"})).await {
        Ok(result) => assert!(result.is_error, "{result:?}"),
        Err(error) => assert!(matches!(error, McpError::Protocol(_)), "{error:?}"),
    }
    let calls: Vec<_> = (0..8)
        .map(|i| async move { client.call_tool("echo", &json!({"message": format!("m{i}")})).await })
        .collect();
    let answers = futures::future::join_all(calls).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap().text, format!("Echo: m{i}"));
    }
}

#[tokio::test]
async fn the_reference_server_runs_over_stdio_in_a_sandbox_seeing_only_its_own_environment() {
    let (_dir, runner) = runner();
    let transport = McpTransport::Stdio {
        command: EVERYTHING.into(),
        args: vec!["stdio".into()],
        env: vec![("MCP_GREETING".into(), "hello from the config".into())],
    };
    let client = McpClient::new(transport, McpSettings::default(), runner);
    exercise(&client).await;
    let env: Value =
        serde_json::from_str(&client.call_tool("get-env", &json!({})).await.unwrap().text).unwrap();
    assert_eq!(env["MCP_GREETING"], "hello from the config");
    assert_eq!(env["HOME"], "/work");
    // The test process's environment (cargo sets CARGO_* for it) stays out.
    let leaked: Vec<&String> =
        env.as_object().unwrap().keys().filter(|key| key.starts_with("CARGO")).collect();
    assert!(leaked.is_empty(), "the server saw {leaked:?}");
    client.close().await;
}

#[tokio::test]
async fn the_reference_server_runs_over_streamable_http_and_legacy_sse() {
    let (_dir, runner) = runner();
    let http = start_http("streamableHttp");
    let url = format!("http://127.0.0.1:{}/mcp", http.port);
    let client = McpClient::new(
        McpTransport::StreamableHttp { url: url.clone(), headers: vec![("X-Trace".into(), "t1".into())] },
        INTERNAL_OK,
        Arc::clone(&runner),
    );
    exercise(&client).await;
    // Loopback is refused unless the configuration allows it.
    let guarded = McpClient::new(
        McpTransport::StreamableHttp { url, headers: Vec::new() },
        McpSettings::default(),
        Arc::clone(&runner),
    );
    let refused = guarded.list_tools().await.unwrap_err();
    assert!(matches!(refused, McpError::InternalAddress { .. }), "{refused:?}");

    let sse = start_http("sse");
    let client = McpClient::new(
        McpTransport::Sse { url: format!("http://127.0.0.1:{}/sse", sse.port), headers: Vec::new() },
        INTERNAL_OK,
        runner,
    );
    exercise(&client).await;
}

/// A stdio MCP server in a few lines: one tool that echoes, one that makes
/// the process exit.
const CRASHY: &str = r#"
import json, os, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    method, rid = msg.get("method"), msg["id"]
    if method == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}}, "serverInfo": {"name": "crashy", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "ping", "inputSchema": {"type": "object"}}, {"name": "crash", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call" and msg["params"]["name"] == "crash":
        os._exit(3)
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "pong %d" % os.getpid()}]}
    else:
        result = {}
    print(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}), flush=True)
"#;

#[tokio::test]
async fn a_crashed_stdio_server_is_restarted_and_repeated_failures_back_off() {
    let (_dir, runner) = runner();
    let transport = McpTransport::Stdio {
        command: "/usr/bin/python3".into(),
        args: vec!["-c".into(), CRASHY.into()],
        env: Vec::new(),
    };
    let client = McpClient::new(transport, McpSettings::default(), Arc::clone(&runner));
    let first = client.call_tool("ping", &json!({})).await.unwrap().text;
    assert!(first.starts_with("pong "), "{first}");
    let crashed = client.call_tool("crash", &json!({})).await.unwrap_err();
    assert!(matches!(crashed, McpError::Connect(_)), "{crashed:?}");
    // The next call starts the server again, at once after one crash.
    let second = client.call_tool("ping", &json!({})).await.unwrap().text;
    assert!(second.starts_with("pong "), "{second}");
    // A healthy call reset the count; two crashes in a row make the next start wait.
    client.call_tool("crash", &json!({})).await.unwrap_err();
    client.call_tool("ping", &json!({})).await.unwrap();
    client.call_tool("crash", &json!({})).await.unwrap_err();

    // A server that cannot start: the error quotes its stderr, then backs off.
    let broken = McpClient::new(
        McpTransport::Stdio {
            command: "/usr/bin/python3".into(),
            args: vec!["-c".into(), "import sys; sys.exit('no such module: kelp')".into()],
            env: Vec::new(),
        },
        McpSettings::default(),
        Arc::clone(&runner),
    );
    let first = broken.list_tools().await.unwrap_err();
    assert!(
        matches!(&first, McpError::Connect(reason) if reason.contains("no such module: kelp")),
        "{first:?}"
    );
    let second = broken.list_tools().await.unwrap_err();
    assert!(matches!(second, McpError::Connect(_)), "the first restart is immediate: {second:?}");
    let third = broken.list_tools().await.unwrap_err();
    assert!(
        matches!(third, McpError::Backoff { failures: 2, retry_in_ms, .. } if retry_in_ms <= 250),
        "{third:?}"
    );

    // A command that is not there is the caller's mistake.
    let missing = McpClient::new(
        McpTransport::Stdio { command: "no-such-mcp-server".into(), args: Vec::new(), env: Vec::new() },
        McpSettings::default(),
        runner,
    );
    let error = missing.list_tools().await.unwrap_err();
    assert!(
        error.is_bad_input() && error.to_string().contains("not found on the sandbox's PATH"),
        "{error:?}"
    );
}
