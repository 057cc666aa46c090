//! A kelpie server on a real loopback socket, backed by redb in a temp dir
//! and the fake LLM, for the integration tests.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};

pub struct Running {
    pub base: String,
    pub http: reqwest::Client,
    pub service: std::sync::Arc<kelpie_agent::AgentService>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

pub async fn fake_llm() -> FakeLlm {
    FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap()
}

pub async fn start(data_dir: &Path, fake: &FakeLlm) -> Running {
    start_with(data_dir, fake, &[]).await
}

/// [`start`] with extra config fields, such as another provider's key.
pub async fn start_with(data_dir: &Path, fake: &FakeLlm, extra: &[(&str, &str)]) -> Running {
    start_with_base_url(data_dir, &fake.base_url(), extra).await
}

/// [`start_with`] against another OpenAI-compatible provider at `base_url`.
pub async fn start_with_base_url(data_dir: &Path, base_url: &str, extra: &[(&str, &str)]) -> Running {
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("test".into());
    for (field, value) in extra {
        layers.set(field, *value, flag.clone()).unwrap();
    }
    layers.set("bind", "127.0.0.1:0", flag.clone()).unwrap();
    layers.set("data_dir", data_dir.to_str().unwrap(), flag.clone()).unwrap();
    layers.set("llm.openai_base_url", base_url, flag.clone()).unwrap();
    layers.set("llm.default_model", "openai-proxy/fake-gpt", flag).unwrap();
    let server = kelpie_server::bind(layers.resolve().unwrap()).await.unwrap();
    // These tests send nothing while stopping: no drain time is needed.
    server.set_drain_least_ms(0);
    let base = format!("http://{}", server.local_addr());
    let service = server.service();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server.run(async { drop(stopped.await) }).await.unwrap();
    });
    Running { base, http: reqwest::Client::new(), service, stop: Some(stop), task }
}

fn free_addr() -> String {
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    addr.to_string()
}

/// A node `name` of a cluster on the PostgreSQL at `url`, its data in
/// `dir/name`.
pub async fn start_cluster_node(dir: &Path, fake: &FakeLlm, url: &str, name: &str) -> Running {
    start_cluster_node_with(dir, fake, url, name, &[]).await
}

/// [`start_cluster_node`] with extra config fields.
pub async fn start_cluster_node_with(
    dir: &Path,
    fake: &FakeLlm,
    url: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> Running {
    let advertise = free_addr();
    let mut fields = vec![
        ("node_id", name),
        ("storage.database_url", url),
        ("cluster.enabled", "true"),
        ("cluster.advertise", advertise.as_str()),
        ("cluster.secret", "a secret the two nodes share"),
    ];
    fields.extend_from_slice(extra);
    start_with(&dir.join(name), fake, &fields).await
}

impl Running {
    /// Every sample of a `/metrics` scrape, by series (`name{labels}`).
    pub async fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let response = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    pub async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap();
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }

    pub async fn create_agent(&self, name: &str, tags: &[&str]) -> String {
        let body = json!({
            "name": name, "model": "openai-proxy/fake-gpt", "tags": tags,
            "memory_blocks": [{"label": "human", "value": "Name: Ana.", "limit": 100},
                              {"label": "persona", "value": "A patient tutor."}],
        });
        let agent = self.ok("POST", "/v1/agents/", Some(body)).await;
        agent["id"].as_str().unwrap().to_string()
    }

    pub async fn say(&self, agent_id: &str, text: &str) -> Value {
        let body = json!({"messages": [{"role": "user", "content": text}]});
        self.ok("POST", &format!("/v1/agents/{agent_id}/messages"), Some(body)).await
    }
}
