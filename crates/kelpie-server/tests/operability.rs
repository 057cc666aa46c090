//! What an operator and a client see of every request, over HTTP: status
//! codes as HTTP means them, each error body `{"detail", "trace_id"}`,
//! request ids answered (their log lines: tests/log_lines.rs), the bearer
//! scheme in any case, and who may read `/metrics`.

mod common;

use kelpie_server::routes::extract::REQUEST_BODY_BYTES_MAX;
use kelpie_server::routes::URI_BYTES_MAX;
use serde_json::Value;

/// Status, `X-Request-Id` and the JSON error body of `response`, after
/// checking the body's shape: exactly `detail` and `trace_id`, the
/// trace id being the request id.
async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(content_type, "application/json", "status {status}");
    let body: Value = response.json().await.unwrap();
    let object = body.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), ["detail", "trace_id"], "{body}");
    assert_eq!(body["trace_id"], request_id.as_str(), "{body}");
    (status, body["detail"].as_str().unwrap().to_string(), request_id)
}

#[tokio::test]
async fn statuses_are_what_http_means_and_every_error_body_is_detail_and_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let url = format!("{}/v1/identities/", server.base);
    let json = |body: String| server.http.post(&url).header("content-type", "application/json").body(body);

    // One byte over the body limit: 413, naming the limit.
    let name = "x".repeat(REQUEST_BODY_BYTES_MAX - 11);
    let over = format!("{{\"name\": \"{name}\"}}");
    assert_eq!(over.len(), REQUEST_BODY_BYTES_MAX + 1);
    let (status, detail, _) = error_of(json(over).send().await.unwrap()).await;
    assert_eq!(
        (status, detail.as_str()),
        (413, "the request body is over REQUEST_BODY_BYTES_MAX (2097152 bytes)")
    );
    // At the limit the body is read, and judged by its content (a name that long is refused).
    let at = format!("{{\"name\": \"{}\"}}", &name[1..]);
    assert_eq!(at.len(), REQUEST_BODY_BYTES_MAX);
    let (status, detail, _) = error_of(json(at).send().await.unwrap()).await;
    assert!([400, 422].contains(&status) && !detail.contains("REQUEST_BODY_BYTES_MAX"), "{status} {detail}");

    // A JSON route sent something that does not say it is JSON: 415.
    for content_type in [Some("text/plain"), None] {
        let mut request = server.http.post(&url).body(r#"{"name": "a", "identifier_key": "k"}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, detail, _) = error_of(request.send().await.unwrap()).await;
        assert_eq!(
            (status, detail.as_str()),
            (415, "the request body must be JSON, sent with Content-Type: application/json"),
            "{content_type:?}"
        );
    }
    // Broken JSON said to be JSON stays Letta's 422.
    let (status, _, _) = error_of(json("{\"name\": ".into()).send().await.unwrap()).await;
    assert_eq!(status, 422);

    // A request target over URI_BYTES_MAX: 414 with JSON; at the limit it is served.
    let path = "/v1/agents/?name=";
    let long = format!("{}{path}{}", server.base, "n".repeat(URI_BYTES_MAX + 1 - path.len()));
    let (status, detail, _) = error_of(server.http.get(&long).send().await.unwrap()).await;
    assert_eq!(status, 414);
    assert_eq!(
        detail,
        format!("the request target is {} bytes, over URI_BYTES_MAX (16384 bytes)", URI_BYTES_MAX + 1)
    );
    let at_limit = format!("{}{path}{}", server.base, "n".repeat(URI_BYTES_MAX - path.len()));
    assert_eq!(server.http.get(&at_limit).send().await.unwrap().status(), 200);

    // A path parameter that is not UTF-8: axum's plain-text 400, answered as JSON.
    let bad_path = format!("{}/v1/identities/%FF%FE", server.base);
    let (status, detail, _) = error_of(server.http.get(&bad_path).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(detail.contains("UTF-8"), "{detail}");
    // A method a route does not serve: axum's empty 405, answered as JSON.
    let health = format!("{}/v1/health/", server.base);
    let (status, detail, _) = error_of(server.http.put(&health).send().await.unwrap()).await;
    assert_eq!((status, detail.as_str()), (405, "Method Not Allowed"));
    // Unknown ids and routes keep their 404 with the same shape.
    let (status, _, _) = error_of(server.http.get(format!("{url}identity-nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_made_when_not_and_are_the_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let health = format!("{}/v1/health/", server.base);
    let given = server.http.get(&health).header("x-request-id", "client-req.42").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-req.42");
    let missing = format!("{}/v1/agents/agent-00000000-0000-4000-8000-000000000000", server.base);
    let response = server.http.get(&missing).header("x-request-id", "client-req.43").send().await.unwrap();
    let (status, _, request_id) = error_of(response).await;
    assert_eq!((status, request_id.as_str()), (404, "client-req.43"));

    let mut made = Vec::new();
    for sent in [None, Some("has space"), Some(&*"a".repeat(129))] {
        let mut request = server.http.get(&health);
        if let Some(sent) = sent {
            request = request.header("x-request-id", sent);
        }
        let id = request.send().await.unwrap().headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{sent:?} gave {id}");
        made.push(id);
    }
    made.dedup();
    assert_eq!(made.len(), 3, "every made id is new");
    server.shutdown().await;
}

/// Log lines written into memory.
#[tokio::test]
async fn bearer_scheme_in_any_case_and_metrics_behind_the_token_unless_public() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[("api_key", "s3cret")]).await;
    let agents = format!("{}/v1/agents/", server.base);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = server
            .http
            .get(&agents)
            .header("authorization", format!("{scheme} s3cret"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    for (authorization, expected) in [
        (Some("Basic czNjcmV0"), "the Authorization scheme must be Bearer"),
        (Some("Bearer nope"), "wrong bearer token"),
        (Some("Bearer"), "missing bearer token: send Authorization: Bearer <key>"),
        (None, "missing bearer token: send Authorization: Bearer <key>"),
    ] {
        let mut request = server.http.get(&agents);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let (status, detail, _) = error_of(response).await;
        assert_eq!((status, detail.as_str()), (401, expected), "{authorization:?}");
    }
    let metrics = format!("{}/metrics", server.base);
    let (status, _, _) = error_of(server.http.get(&metrics).send().await.unwrap()).await;
    assert_eq!(status, 401, "/metrics needs the token by default");
    let scraped = server.http.get(&metrics).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert_eq!(scraped.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    assert!(scraped.text().await.unwrap().contains("# TYPE kelpie_http_requests_total counter\n"));
    server.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let server =
        common::start_with(dir.path(), &fake, &[("api_key", "s3cret"), ("metrics.public", "true")]).await;
    assert_eq!(server.http.get(format!("{}/metrics", server.base)).send().await.unwrap().status(), 200);
    for closed in ["/v1/agents/", "/metrics/", "/v1/healthz"] {
        let response = server.http.get(format!("{}{closed}", server.base)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{closed} is not open");
    }
    server.shutdown().await;
}
