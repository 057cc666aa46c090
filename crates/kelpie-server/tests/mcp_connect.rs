//! `GET /v1/mcp-servers/connect/{id}`: Letta's connect stream over a fresh
//! connection — `connection_attempt`, then `success` with the tools of a
//! real server (`mcp-server-everything` over stdio, in the sandbox), or an
//! `error` saying OAuth-protected servers are not supported for a server
//! that answers 401 (a local fake on 127.0.0.1, streamable HTTP and SSE);
//! the OAuth callback answers 501. Needs bubblewrap, node and
//! `mcp-server-everything` on the PATH.

mod common;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

async fn connect(server: &common::Running, id: &str) -> (u16, String, String) {
    let response =
        server.http.get(format!("{}/v1/mcp-servers/connect/{id}", server.base)).send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_string();
    (status, kind, response.text().await.unwrap())
}

fn events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[tokio::test]
async fn connect_streams_the_attempt_then_the_servers_tools() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let config = json!({"mcp_server_type": "stdio", "command": "mcp-server-everything", "args": ["stdio"]});
    let created = server
        .ok("POST", "/v1/mcp-servers/", Some(json!({"server_name": "everything", "config": config})))
        .await;
    let id = created["id"].as_str().unwrap();

    let (status, kind, text) = connect(&server, id).await;
    assert_eq!((status, kind.as_str()), (200, "text/event-stream"), "{text}");
    let events = events(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0], json!({"event": "connection_attempt", "server_name": "everything"}));
    assert_eq!(events[1]["event"], "success", "{text}");
    let tools = events[1]["tools"].as_array().unwrap();
    let echo = tools.iter().find(|tool| tool["name"] == "echo").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(echo["inputSchema"]["properties"]["message"]["type"], "string");

    let (status, body) = server.call("GET", "/v1/mcp-servers/connect/mcp_server-unknown", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("mcp_server-unknown"), "{body}");
    server.shutdown().await;
}

/// Answers 401 with a bearer challenge to everything, as an MCP server
/// behind OAuth does before it is authorized.
async fn oauth_protected_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let refuse = || async {
        let challenge = "Bearer resource_metadata=\"http://127.0.0.1/.well-known/oauth-protected-resource\"";
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], "unauthorized").into_response()
    };
    let app = axum::Router::new().fallback(refuse);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

#[tokio::test]
async fn an_oauth_protected_server_is_an_error_event_and_the_callback_is_501() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[("mcp.allow_internal_urls", "true")]).await;
    let base = oauth_protected_server().await;
    for (name, kind, url) in [
        ("guarded-http", "streamable_http", format!("{base}/mcp")),
        ("guarded-sse", "sse", format!("{base}/sse")),
    ] {
        let config = json!({"mcp_server_type": kind, "server_url": url});
        let created =
            server.ok("POST", "/v1/mcp-servers/", Some(json!({"server_name": name, "config": config}))).await;
        let (status, _, text) = connect(&server, created["id"].as_str().unwrap()).await;
        assert_eq!(status, 200, "{text}");
        let events = events(&text);
        assert_eq!(events[0], json!({"event": "connection_attempt", "server_name": name}));
        assert_eq!(events[1]["event"], "error", "{kind}: {text}");
        let message = events[1]["message"].as_str().unwrap();
        assert!(message.contains("asks for an authorization"), "{kind}: {message}");
        assert!(message.contains("OAuth-protected MCP servers are not supported yet"), "{kind}: {message}");
    }

    let (status, body) = server.call("GET", "/v1/tools/mcp/oauth/callback?code=abc&state=xyz", None).await;
    assert_eq!(status, 501, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("not supported yet"), "{body}");
    server.shutdown().await;
}
