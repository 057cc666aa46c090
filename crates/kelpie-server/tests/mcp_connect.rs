//! `GET /v1/mcp-servers/connect/{id}`: Letta's connect stream over a fresh
//! connection — `connection_attempt`, then `success` with the tools of a
//! real server (`mcp-server-everything` over stdio, in the sandbox), or an
//! OAuth flow for a server that refuses with a challenge (a local fake on
//! 127.0.0.1, streamable HTTP and SSE): a PKCE authorization URL, then the
//! provider's refusal through the callback. The flow's success, with a
//! real MCP server and authorization server, is
//! tests/python/test_server_operations.py's. Needs bubblewrap, node and
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

/// An MCP server behind OAuth that never lets anyone in: every MCP request
/// is 401 with a challenge naming its resource metadata; it is its own
/// authorization server (metadata and client registration).
async fn oauth_protected_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (issuer, challenge_base) = (base.clone(), base.clone());
    let refuse = move || {
        let challenge =
            format!("Bearer resource_metadata=\"{challenge_base}/.well-known/oauth-protected-resource\"");
        async move {
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], "unauthorized")
                .into_response()
        }
    };
    let resource = {
        let issuer = issuer.clone();
        move || async move {
            axum::Json(json!({"resource": format!("{issuer}/mcp"), "authorization_servers": [issuer]}))
        }
    };
    let metadata = move || {
        let issuer = issuer.clone();
        async move {
            axum::Json(json!({"issuer": issuer, "authorization_endpoint": format!("{issuer}/authorize"),
                              "token_endpoint": format!("{issuer}/token"), "registration_endpoint": format!("{issuer}/register")}))
        }
    };
    let register = || async { (StatusCode::CREATED, axum::Json(json!({"client_id": "client-1"}))) };
    let app = axum::Router::new()
        .route("/.well-known/oauth-protected-resource", axum::routing::get(resource))
        .route("/.well-known/oauth-authorization-server", axum::routing::get(metadata))
        .route("/register", axum::routing::post(register))
        .fallback(refuse);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// Reads the connect stream's events until `last` arrives.
async fn events_until(response: &mut reqwest::Response, last: &str) -> Vec<Value> {
    let mut text = String::new();
    loop {
        let chunk = response.chunk().await.unwrap().unwrap_or_else(|| panic!("the stream ended: {text}"));
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        let events = events(&text);
        if events.last().is_some_and(|event| event["event"] == last) {
            return events;
        }
    }
}

#[tokio::test]
async fn an_oauth_flow_hands_out_a_pkce_url_and_ends_with_the_providers_refusal() {
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
        let path = format!("{}/v1/mcp-servers/connect/{}", server.base, created["id"].as_str().unwrap());
        let mut response = server.http.get(path).send().await.unwrap();
        let started = events_until(&mut response, "waiting_for_auth").await;
        let kinds: Vec<&str> = started.iter().map(|event| event["event"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["connection_attempt", "oauth_required", "authorization_url", "waiting_for_auth"],
            "{kind}"
        );
        let authorization = reqwest::Url::parse(started[2]["url"].as_str().unwrap()).unwrap();
        assert_eq!(authorization.path(), "/authorize");
        let query: std::collections::BTreeMap<String, String> =
            authorization.query_pairs().into_owned().collect();
        assert_eq!((query["response_type"].as_str(), query["client_id"].as_str()), ("code", "client-1"));
        assert_eq!((query["code_challenge_method"].as_str(), query["code_challenge"].len()), ("S256", 43));
        assert_eq!(query["redirect_uri"], format!("{}/v1/tools/mcp/oauth/callback", server.base));
        assert_eq!(query["resource"], url);
        assert_eq!(query["state"], started[2]["session_id"].as_str().unwrap());

        // The provider sends the user back with a refusal: the callback and the stream say so.
        let callback = format!(
            "/v1/tools/mcp/oauth/callback?state={}&error=access_denied&error_description=no%20thanks",
            query["state"]
        );
        let (status, body) = server.call("GET", &callback, None).await;
        assert_eq!((status, body["detail"].as_str()), (400, Some("OAuth error: access_denied - no thanks")));
        let rest = response.text().await.unwrap();
        let last = events(&rest).pop().unwrap();
        assert_eq!(last["event"], "error", "{rest}");
        assert_eq!(last["message"], "OAuth failed: OAuth error: access_denied - no thanks");
        let (status, body) = server.call("GET", &callback, None).await;
        assert_eq!(
            (status, body["detail"].as_str()),
            (400, Some("Invalid or expired state parameter")),
            "a state is used once"
        );
    }
    let (status, body) = server.call("GET", "/v1/tools/mcp/oauth/callback?code=abc", None).await;
    assert_eq!((status, body["detail"].as_str()), (400, Some("Missing state parameter")));
    server.shutdown().await;
}
