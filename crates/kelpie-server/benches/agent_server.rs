//! Agent server throughput over HTTP on loopback, redb in a temp dir, the
//! fake LLM answering at once: agent creates per second and message round
//! trips per second (one agent; 100 agents), 4 concurrent clients, with
//! p50/p99 latency. Run: `cargo bench -p kelpie-server --bench agent_server`.
//!
//! With `-- --rss` it instead creates 10 000 agents on a fresh server and
//! reports the process's resident memory (VmRSS before and after, VmHWM)
//! from `/proc/self/status`. The server runs in this process, so the figure
//! also holds the HTTP clients and the fake LLM, both small and fixed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{percentiles_ms, start_server, Bench};

const CLIENTS_COUNT: usize = 4;
const CREATES_COUNT: usize = 400;
const MESSAGES_COUNT: usize = 400;
const AGENTS_MANY_COUNT: usize = 100;
/// Agents created by the `--rss` mode before memory is read.
const AGENTS_RSS_COUNT: usize = 10_000;
/// Argument that selects the resident memory mode.
const RSS_MODE_ARG: &str = "--rss";
const KIB_BYTES: u64 = 1024;
const MIB_BYTES: f64 = 1024.0 * 1024.0;

struct Report {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn print(mut self, name: &str) {
        let (p50, p99) = percentiles_ms(&mut self.latencies);
        println!(
            "{name}: {:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms ({} ops, {} clients)",
            self.ops as f64 / self.elapsed.as_secs_f64(),
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

/// Creates `count` agents named `bench-{i}`, one memory block each.
async fn create_agents(bench: &Bench, count: usize) -> Report {
    let (h, b) = (bench.http.clone(), Arc::clone(&bench.base));
    drive(count, move |i| {
        let (h, b) = (h.clone(), Arc::clone(&b));
        async move {
            let body =
                json!({"name": format!("bench-{i}"), "memory_blocks": [{"label": "human", "value": "x"}]});
            post(&h, format!("{b}/v1/agents/"), body).await;
        }
    })
    .await
}

/// One `kB` field of `/proc/self/status` in bytes, or None when the file or
/// field is missing (not Linux) or malformed.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 =
        line.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * KIB_BYTES)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unavailable".to_string(), |bytes| format!("{:.1} MiB", bytes as f64 / MIB_BYTES))
}

async fn run_rss() {
    let bench = start_server().await;
    let rss_before = proc_status_bytes("VmRSS");
    create_agents(&bench, AGENTS_RSS_COUNT).await.print("agent creates (rss run)");
    let rss_after = proc_status_bytes("VmRSS");
    println!(
        "pid {}: VmRSS before {}, after {} agents {}, VmHWM {}",
        std::process::id(),
        mib(rss_before),
        AGENTS_RSS_COUNT,
        mib(rss_after),
        mib(proc_status_bytes("VmHWM"))
    );
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per_agent = after.saturating_sub(before) / AGENTS_RSS_COUNT as u64;
        println!("resident growth per agent: {per_agent} bytes");
    }
}

async fn run_throughput() {
    let bench = start_server().await;
    create_agents(&bench, CREATES_COUNT).await.print("agent creates");
    let (http, base) = (&bench.http, &bench.base);
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
        let (h, b, ids) = (http.clone(), Arc::clone(base), Arc::clone(&ids));
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

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == RSS_MODE_ARG) {
        run_rss().await;
    } else {
        run_throughput().await;
    }
}
