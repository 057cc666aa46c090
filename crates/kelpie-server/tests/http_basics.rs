//! The server's HTTP surface on a real socket: health, unknown routes, auth.

use kelpie_core::config::{ConfigLayers, Origin};
use serde_json::Value;

struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(api_key: Option<&str>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("test".into());
    layers.set("bind", "127.0.0.1:0", flag.clone()).unwrap();
    layers.set("data_dir", dir.path().join("data").to_str().unwrap(), flag.clone()).unwrap();
    if let Some(key) = api_key {
        layers.set("api_key", key, flag).unwrap();
    }
    let server = kelpie_server::bind(layers.resolve().unwrap()).await.unwrap();
    assert!(dir.path().join("data").is_dir(), "bind creates the data dir");
    let base = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server.run(async { drop(stopped.await) }).await.unwrap();
    });
    Running { base, stop: Some(stop), task, _dir: dir }
}

impl Running {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn health_reports_version_and_ok() {
    let server = start(None).await;
    for path in ["/v1/health/", "/v1/health"] {
        let response = reqwest::get(format!("{}{path}", server.base)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "status": "ok"}));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_route_is_json_404_with_detail() {
    let server = start(None).await;
    let response = reqwest::get(format!("{}/v1/nothing-here", server.base)).await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"], "no route for GET /v1/nothing-here");
    server.shutdown().await;
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let server = start(Some("s3cret")).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/agents/", server.base);

    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["detail"], "missing bearer token: send Authorization: Bearer <key>");

    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);

    // With the right key the request passes auth and lists (no) agents.
    let right = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(right.status(), 200);
    let body: Value = right.json().await.unwrap();
    assert_eq!(body, serde_json::json!([]));

    for open in ["/v1/health/", "/v1/health", "/v1/ready/", "/v1/ready"] {
        let answer = client.get(format!("{}{open}", server.base)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{open} needs no key");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["status"], "ok", "{open}");
    }
    // Only those exact paths: a path that merely starts like one needs the key.
    let near = client.get(format!("{}/v1/healthz", server.base)).send().await.unwrap();
    assert_eq!(near.status(), 401, "/v1/healthz is not the health check");
    server.shutdown().await;
}

#[tokio::test]
async fn embedded_store_is_opened_and_locked_against_a_second_server() {
    let server = start(None).await;
    let data_dir = server._dir.path().join("data");
    assert!(data_dir.join("kelpie.redb").is_file(), "the default redb store is created under the data dir");
    let mut layers = ConfigLayers::new();
    layers.set("bind", "127.0.0.1:0", Origin::Flag("test".into())).unwrap();
    layers.set("data_dir", data_dir.to_str().unwrap(), Origin::Flag("test".into())).unwrap();
    let err = kelpie_server::bind(layers.resolve().unwrap()).await.err().unwrap();
    assert!(err.to_string().starts_with("cannot open redb storage: "), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    let first = start(None).await;
    let taken = first.base.trim_start_matches("http://").to_string();
    let mut layers = ConfigLayers::new();
    layers.set("bind", taken.clone(), Origin::Flag("test".into())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    layers.set("data_dir", dir.path().to_str().unwrap(), Origin::Flag("test".into())).unwrap();
    let err = kelpie_server::bind(layers.resolve().unwrap()).await.err().unwrap();
    assert!(err.to_string().starts_with(&format!("cannot listen on {taken}: ")), "{err}");
    first.shutdown().await;
}

#[tokio::test]
async fn while_draining_readiness_and_requests_answer_503_and_liveness_200() {
    let mut server = start(None).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{}/v1/ready/", server.base)).send().await.unwrap().status(), 200);
    // The default drain lasts SHUTDOWN_DRAIN_MS_MIN with nothing in flight.
    server.stop.take().unwrap().send(()).unwrap();
    let mut seen_draining = false;
    for _ in 0..100 {
        let ready = http.get(format!("{}/v1/ready/", server.base)).send().await.unwrap();
        if ready.status() == 503 {
            let connection = ready.headers().get("connection").map(|v| v.to_str().unwrap().to_string());
            assert_eq!(connection.as_deref(), Some("close"));
            let body: Value = ready.json().await.unwrap();
            assert_eq!(body["detail"], "the server is shutting down");
            let health = http.get(format!("{}/v1/health/", server.base)).send().await.unwrap();
            assert_eq!(health.status(), 200, "liveness answers while draining");
            let agents = http.get(format!("{}/v1/agents/", server.base)).send().await.unwrap();
            assert_eq!(agents.status(), 503);
            seen_draining = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(seen_draining, "the server drained before closing");
    server.task.await.unwrap();
    assert!(http.get(format!("{}/v1/health/", server.base)).send().await.unwrap_err().is_connect());
}
