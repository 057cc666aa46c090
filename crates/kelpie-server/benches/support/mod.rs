//! What the benches share: a server in this process on loopback (redb in a
//! temp dir, the fake LLM answering at once) and latency reports.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_llm::fake::FakeLlm;

/// The server under test with what must outlive it: its data dir and the fake LLM.
pub struct Bench {
    pub base: Arc<String>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    _fake: FakeLlm,
}

pub async fn start_server() -> Bench {
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("fake llm");
    fake.stop_recording();
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("bench".into());
    layers.set("bind", "127.0.0.1:0", flag.clone()).expect("bind");
    layers.set("data_dir", dir.path().to_str().expect("utf-8 path"), flag.clone()).expect("data dir");
    layers.set("llm.openai_base_url", fake.base_url(), flag.clone()).expect("base url");
    layers.set("llm.default_model", "openai-proxy/fake-gpt", flag).expect("model");
    let server = kelpie_server::bind(layers.resolve().expect("config")).await.expect("server");
    let base = Arc::new(format!("http://{}", server.local_addr()));
    tokio::spawn(server.run(std::future::pending()));
    Bench { base, http: reqwest::Client::new(), _dir: dir, _fake: fake }
}

/// `(p50, p99)` of `latencies`, in milliseconds.
pub fn percentiles_ms(latencies: &mut [Duration]) -> (f64, f64) {
    assert!(!latencies.is_empty(), "latencies to report");
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}
