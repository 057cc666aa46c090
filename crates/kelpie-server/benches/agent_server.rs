//! Agent server throughput over HTTP on loopback, redb in a temp dir, the
//! fake LLM answering at once: agent creates per second and message round
//! trips per second (one agent; 100 agents), 4 concurrent clients, with
//! p50/p99 latency. Run: `cargo bench -p kelpie-server --bench agent_server`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_server::llm::fake::FakeLlm;
use serde_json::{json, Value};

const CLIENTS_COUNT: usize = 4;
const CREATES_COUNT: usize = 400;
const MESSAGES_COUNT: usize = 400;
const AGENTS_MANY_COUNT: usize = 100;

struct Report {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn print(mut self, name: &str) {
        self.latencies.sort();
        let at = |q: f64| self.latencies[((self.latencies.len() as f64 - 1.0) * q) as usize];
        println!(
            "{name}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({} ops, {} clients)",
            self.ops as f64 / self.elapsed.as_secs_f64(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            self.ops,
            CLIENTS_COUNT
        );
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let response = http.post(url).json(&body).send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

/// Runs `ops` calls of `op(index)` from CLIENTS_COUNT concurrent clients.
async fn drive<F, Fut>(ops: usize, op: F) -> Report
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS_COUNT)
        .map(|client| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for index in (client..ops).step_by(CLIENTS_COUNT) {
                    let begun = Instant::now();
                    op(index).await;
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    Report { ops, elapsed: started.elapsed(), latencies }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("fake llm");
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("bench".into());
    layers.set("bind", "127.0.0.1:0", flag.clone()).expect("bind");
    layers.set("data_dir", dir.path().to_str().expect("utf-8 path"), flag.clone()).expect("data dir");
    layers.set("llm.openai_base_url", fake.base_url(), flag.clone()).expect("base url");
    layers.set("llm.default_model", "openai-proxy/fake-gpt", flag).expect("model");
    let server = kelpie_server::bind(layers.resolve().expect("config")).await.expect("server");
    let base = Arc::new(format!("http://{}", server.local_addr()));
    tokio::spawn(server.run(std::future::pending()));
    let http = reqwest::Client::new();

    let (h, b) = (http.clone(), Arc::clone(&base));
    drive(CREATES_COUNT, move |i| {
        let (h, b) = (h.clone(), Arc::clone(&b));
        async move {
            let body =
                json!({"name": format!("bench-{i}"), "memory_blocks": [{"label": "human", "value": "x"}]});
            post(&h, format!("{b}/v1/agents/"), body).await;
        }
    })
    .await
    .print("agent creates");

    let agents: Vec<Value> = http
        .get(format!("{base}/v1/agents/?limit={AGENTS_MANY_COUNT}"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let ids: Arc<Vec<String>> =
        Arc::new(agents.iter().map(|a| a["id"].as_str().expect("id").to_string()).collect());
    for (name, agent_count) in
        [("message round trips, 1 agent", 1), ("message round trips, 100 agents", AGENTS_MANY_COUNT)]
    {
        let (h, b, ids) = (http.clone(), Arc::clone(&base), Arc::clone(&ids));
        drive(MESSAGES_COUNT, move |i| {
            let (h, b) = (h.clone(), Arc::clone(&b));
            let id = ids[i % agent_count].clone();
            async move {
                let body = json!({"messages": [{"role": "user", "content": format!("hi {i}")}]});
                post(&h, format!("{b}/v1/agents/{id}/messages"), body).await;
            }
        })
        .await
        .print(name);
    }
}
