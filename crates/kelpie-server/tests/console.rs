//! The web console over HTTP: `/` answers the page with a strict
//! Content-Security-Policy, `/console/{asset}` each file with its content
//! type and an ETag (304 when the browser has it), an unknown file 404 with
//! `{"detail"}`; with an API key set the page and its files answer without
//! the token while the API and every other path still refuse.

mod common;

use kelpie_server::routes::console::{etag, ASSETS, CONTENT_SECURITY_POLICY, PAGE};
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY as CSP, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::Value;

const KEY: &str = "console-test-key-0123456789";

async fn get(server: &common::Running, path: &str) -> reqwest::Response {
    server.http.get(format!("{}{path}", server.base)).send().await.unwrap()
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response.headers().get(name).map(|value| value.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test]
async fn the_page_and_its_files_answer_with_their_types_csp_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;

    let page = get(&server, "/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&page, CSP), CONTENT_SECURITY_POLICY);
    assert_eq!(header(&page, CACHE_CONTROL), "no-cache");
    assert_eq!(header(&page, ETAG), etag(&PAGE));
    let html = page.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#), "{html}");
    // The policy forbids inline code, so the page carries none.
    assert!(!html.contains("<script>") && !html.contains(" onclick=") && !html.contains("<style"), "{html}");
    for directive in ["default-src 'self'", "script-src 'self'", "frame-ancestors 'none'"] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
    }
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));

    let expected_types = [
        ("console.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ];
    for (name, content_type) in expected_types {
        let asset = ASSETS.iter().find(|asset| asset.name == name).unwrap();
        let response = get(&server, &format!("/console/{name}")).await;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(header(&response, CONTENT_TYPE), content_type, "{name}");
        assert_eq!(header(&response, CSP), CONTENT_SECURITY_POLICY, "{name}");
        assert_eq!(header(&response, "x-content-type-options".parse().unwrap()), "nosniff", "{name}");
        let tag = header(&response, ETAG);
        assert_eq!(tag, etag(asset), "{name}");
        assert_eq!(response.bytes().await.unwrap().as_ref(), asset.bytes, "{name}");

        let again = server
            .http
            .get(format!("{}/console/{name}", server.base))
            .header(IF_NONE_MATCH, &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{name}");
        assert_eq!(header(&again, ETAG), tag, "{name}");
        assert!(again.bytes().await.unwrap().is_empty(), "{name}: a 304 has no body");
        let stale =
            server.http.get(format!("{}/console/{name}", server.base)).header(IF_NONE_MATCH, "\"0\"").send();
        assert_eq!(stale.await.unwrap().status(), 200, "{name}: another tag gets the file");
    }
    // Every file the page and the scripts load is served.
    for asset in ASSETS {
        assert_eq!(get(&server, &format!("/console/{}", asset.name)).await.status(), 200, "{}", asset.name);
    }
    let tags: Vec<String> = ASSETS.iter().map(etag).collect();
    let mut distinct = tags.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), tags.len(), "files of different bytes have different tags: {tags:?}");

    for missing in ["/console/nope.js", "/console/index.htm", "/console/..%2fCargo.toml"] {
        let response = get(&server, missing).await;
        assert_eq!(response.status(), 404, "{missing}");
        assert_eq!(header(&response, CONTENT_TYPE), "application/json", "{missing}");
        let body: Value = response.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.starts_with("no console asset named") && detail.contains("app.js"), "{detail}");
    }
    let posted = server.http.post(format!("{}/", server.base)).send().await.unwrap();
    assert_eq!(posted.status(), 405, "the console is read only");
    server.shutdown().await;
}

#[tokio::test]
async fn with_an_api_key_the_console_answers_without_the_token_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[("api_key", KEY)]).await;

    let page = get(&server, "/").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("token-dialog"), "the page asks for the token itself");
    assert_eq!(get(&server, "/console/app.js").await.status(), 200);
    let missing = get(&server, "/console/nope.js").await;
    assert_eq!(missing.status(), 404, "an unknown file is not found, with or without a token");

    for closed in ["/v1/agents/", "/index.html", "/console", "/console/", "/console/app.js/x", "/favicon.ico"]
    {
        let response = get(&server, closed).await;
        assert_eq!(response.status(), 401, "{closed}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"], "missing bearer token: send Authorization: Bearer <key>", "{closed}");
    }
    let listed =
        server.http.get(format!("{}/v1/agents/", server.base)).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(listed.status(), 200, "the token the console sends opens the API");
    assert_eq!(listed.json::<Value>().await.unwrap(), serde_json::json!([]));
    server.shutdown().await;
}
