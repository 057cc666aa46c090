//! `POST /v1/auth`: the server's API key as password logs in as the admin
//! without a bearer token; anything else is 401 and never echoes the key;
//! only that exact path is open (and the MCP OAuth callback's). A server without a key takes any password.

mod common;

use serde_json::{json, Value};

const KEY: &str = "kelpie-test-key-0123456789";

async fn post(server: &common::Running, path: &str, body: Value) -> (u16, Value) {
    let response = server.http.post(format!("{}{path}", server.base)).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_api_key_as_password_logs_in_as_admin_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[("api_key", KEY)]).await;

    let (status, body) = post(&server, "/v1/auth", json!({"password": KEY})).await;
    assert_eq!(
        (status, body),
        (200, json!({"uuid": "00000000-0000-4000-8000-000000000000", "is_admin": true}))
    );

    for wrong in [json!({"password": "guess"}), json!({"password": ""}), json!({})] {
        let (status, body) = post(&server, "/v1/auth", wrong.clone()).await;
        assert_eq!(status, 401, "{wrong}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("wrong password") && !detail.contains(KEY), "{detail}");
    }
    let (status, body) = post(&server, "/v1/auth", json!({"password": 7})).await;
    assert_eq!(status, 422, "a password that is not text: {body}");

    // Only the login's exact path answers without the token.
    for (path, body) in [("/v1/auth/", json!({"password": KEY})), ("/v1/auth/x", json!({}))] {
        let (status, answer) = post(&server, path, body).await;
        assert_eq!(status, 401, "{path}: {answer}");
        assert_eq!(answer["detail"], "missing bearer token: send Authorization: Bearer <key>");
    }
    let listed = server.http.get(format!("{}/v1/agents/", server.base)).send().await.unwrap();
    assert_eq!(listed.status().as_u16(), 401, "the login opens nothing else");
    // The MCP OAuth callback is open too (a provider's redirect carries no token).
    let (status, body) = server.call("GET", "/v1/tools/mcp/oauth/callback?code=c&state=s", None).await;
    assert_eq!((status, body["detail"].as_str()), (400, Some("Invalid or expired state parameter")));
    server.shutdown().await;
}

#[tokio::test]
async fn without_an_api_key_every_password_logs_in_as_admin() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    for body in [json!({"password": "anything"}), json!({})] {
        let (status, answer) = post(&server, "/v1/auth", body).await;
        assert_eq!((status, answer["is_admin"].clone()), (200, json!(true)));
        assert_eq!(answer["uuid"], "00000000-0000-4000-8000-000000000000");
    }
    server.shutdown().await;
}
