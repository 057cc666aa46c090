//! Load generator: drives a real `kelpie serve` process (redb in a temp
//! dir) over HTTP from many connections of this process and reports what
//! the server takes, and what each operation costs it.
//!
//! The fake LLM answers at once, in this process. Around each phase the
//! CPU time of the server and of this process (clients and fake LLM) is
//! read from `/proc/<pid>/stat`, and the server's storage writes and fsyncs
//! from its `/metrics`; each is reported per operation, so the server's
//! cost is known apart from the load's even though all share the cores.
//! Latencies go to an HDR histogram (1 µs to 60 s, 3 significant digits).
//!
//! Phases:
//! 1. Agent creates, closed loop: `KELPIE_LOAD_CREATE_CLIENTS` clients
//!    (default 4), `KELPIE_LOAD_CREATES` creates (default 4 000).
//! 2. Messages over `KELPIE_LOAD_AGENTS` agents (default 1 000, the first
//!    ones created), each request to a random one, for each client count of
//!    `KELPIE_LOAD_CLIENTS` (default `4,16,64`), `KELPIE_LOAD_SECONDS`
//!    (default 10) each. Closed loop (a client sends when its last answer
//!    is in), unless `KELPIE_LOAD_RATE` is set: then open loop, requests
//!    start at that many per second whatever the answers (the client count
//!    bounding those in flight), and each latency counts from its planned
//!    start, so a stalled server shows in the percentiles instead of
//!    slowing the load.
//! 3. One agent, one client, `KELPIE_LOAD_SEQUENTIAL` messages (default
//!    500): a turn's latency with nothing else running.
//!
//! Run: `cargo bench -p kelpie-cli --bench load`.
//! `KELPIE_BENCH_SERVER_BIN` measures another build of `kelpie`.

mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use server::{process_cpu_ms, send, Server};

const CREATE_CLIENTS_COUNT_DEFAULT: usize = 4;
const CREATES_COUNT_DEFAULT: usize = 4_000;
const AGENTS_COUNT_DEFAULT: usize = 1_000;
const CLIENTS_COUNTS_DEFAULT: &str = "4,16,64";
const MEASURE_S_DEFAULT: u64 = 10;
const SEQUENTIAL_COUNT_DEFAULT: usize = 500;
/// Messages sent to every agent before the measured phases, so that each
/// is active and its first turn (which builds its context) is not timed.
const WARM_MESSAGES_PER_AGENT_COUNT: usize = 1;
/// Range of the latency histogram, in microseconds.
const LATENCY_US_MIN: u64 = 1;
const LATENCY_US_MAX: u64 = 60_000_000;
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Upper bound on one request, only to end a hung run.
const REQUEST_TIMEOUT_MS: u64 = 60_000;
/// Worker threads of this process's runtime (clients and fake LLM).
const LOAD_WORKER_THREADS_COUNT: usize = 2;

fn count_from_env(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("{name}={value} is not a count")),
        Err(_) => default,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LATENCY_US_MIN, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS).expect("histogram")
}

fn record(histogram: &Mutex<Histogram<u64>>, latency: Duration) {
    let us = (latency.as_micros() as u64).clamp(LATENCY_US_MIN, LATENCY_US_MAX);
    histogram.lock().unwrap().record(us).expect("latency in range");
}

/// The server's counters a phase reports per operation: its CPU time, this
/// process's, and its storage writes and fsyncs.
#[derive(Clone, Copy)]
struct Counters {
    at: Instant,
    server_cpu_ms: f64,
    load_cpu_ms: f64,
    writes: f64,
    fsyncs: f64,
}

/// The sum of every sample of metric `name` in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| {
            line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn counters(http: &reqwest::Client, server: &Server) -> Counters {
    let page = send(http.get(format!("{}/metrics", server.base))).await.text().await.expect("metrics");
    Counters {
        at: Instant::now(),
        server_cpu_ms: server.cpu_ms(),
        load_cpu_ms: process_cpu_ms("self"),
        writes: metric_sum(&page, "kelpie_storage_writes_total"),
        fsyncs: metric_sum(&page, "kelpie_storage_fsyncs_total"),
    }
}

fn report(name: &str, ops: u64, histogram: &Histogram<u64>, before: Counters, after: Counters) {
    assert!(ops > 0, "{name}: no operation completed");
    let elapsed_s = after.at.duration_since(before.at).as_secs_f64();
    let per_op = |after: f64, before: f64| (after - before) / ops as f64;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{name}: {:.0}/s ({ops} in {elapsed_s:.1} s); latency ms p50 {:.2}, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, \
         max {:.2}; CPU ms/op server {:.3}, load {:.3}; storage writes/op {:.2}, fsyncs/op {:.3}",
        ops as f64 / elapsed_s,
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1e3,
        per_op(after.server_cpu_ms, before.server_cpu_ms),
        per_op(after.load_cpu_ms, before.load_cpu_ms),
        per_op(after.writes, before.writes),
        per_op(after.fsyncs, before.fsyncs),
    );
}

/// POSTs `body` to `url`; the answer's bytes (checked for success, not parsed).
async fn post(http: &reqwest::Client, url: &str, body: &Value) {
    send(http.post(url).json(body)).await.bytes().await.expect("answer");
}

fn message(i: u64) -> Value {
    json!({"messages": [{"role": "user", "content": format!("hello number {i}")}]})
}

/// A deterministic pick in `0..below` for request `i` (splitmix64).
fn pick(i: u64, below: usize) -> usize {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) % below as u64) as usize
}

/// Creates `count` agents from `clients` concurrent clients; their ids.
async fn creates(http: &reqwest::Client, server: &Server, clients: usize, count: usize) -> Vec<String> {
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let next = Arc::new(AtomicU64::new(0));
    let url = Arc::new(format!("{}/v1/agents/", server.base));
    let before = counters(http, server).await;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, histogram, next, url) =
                (http.clone(), Arc::clone(&histogram), Arc::clone(&next), Arc::clone(&url));
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count as u64 {
                        return ids;
                    }
                    let body = json!({"name": format!("load-{i}"),
                                      "memory_blocks": [{"label": "human", "value": "A load-test user."}]});
                    let begun = Instant::now();
                    let agent: Value = send(http.post(url.as_str()).json(&body)).await.json().await.unwrap();
                    record(&histogram, begun.elapsed());
                    ids.push((i, agent["id"].as_str().expect("agent id").to_string()));
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("client"));
    }
    let after = counters(http, server).await;
    let histogram = histogram.lock().unwrap();
    report(&format!("agent creates, {clients} clients"), count as u64, &histogram, before, after);
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// Messages to random agents of `agents` for `measure`: closed loop from
/// `clients` clients, or open loop at `rate` per second with at most
/// `clients` in flight.
async fn messages(
    http: &reqwest::Client,
    server: &Server,
    agents: &Arc<Vec<String>>,
    clients: usize,
    measure: Duration,
    rate: Option<u64>,
) {
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let done = Arc::new(AtomicU64::new(0));
    let before = counters(http, server).await;
    let urls: Arc<Vec<String>> =
        Arc::new(agents.iter().map(|id| format!("{}/v1/agents/{id}/messages", server.base)).collect());
    let name = match rate {
        None => format!("messages, {clients} clients over {} agents", agents.len()),
        Some(rate) => {
            format!("messages at {rate}/s (at most {clients} in flight) over {} agents", agents.len())
        }
    };
    match rate {
        None => {
            let next = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + measure;
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (http, histogram, done, next, urls) = (
                        http.clone(),
                        Arc::clone(&histogram),
                        Arc::clone(&done),
                        Arc::clone(&next),
                        Arc::clone(&urls),
                    );
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let begun = Instant::now();
                            post(&http, &urls[pick(i, urls.len())], &message(i)).await;
                            record(&histogram, begun.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("client");
            }
        }
        Some(rate) => {
            assert!(rate > 0, "KELPIE_LOAD_RATE is at least 1 per second");
            let in_flight = Arc::new(tokio::sync::Semaphore::new(clients));
            let started = Instant::now();
            let total = (rate as f64 * measure.as_secs_f64()) as u64;
            let mut tasks = Vec::new();
            for i in 0..total {
                let planned = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(planned.into()).await;
                let permit = Arc::clone(&in_flight).acquire_owned().await.expect("semaphore");
                let (http, histogram, done, urls) =
                    (http.clone(), Arc::clone(&histogram), Arc::clone(&done), Arc::clone(&urls));
                tasks.push(tokio::spawn(async move {
                    post(&http, &urls[pick(i, urls.len())], &message(i)).await;
                    // From the planned start: waiting for a slot is latency too.
                    record(&histogram, planned.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                }));
            }
            for task in tasks {
                task.await.expect("request");
            }
        }
    }
    let after = counters(http, server).await;
    let histogram = histogram.lock().unwrap();
    report(&name, done.load(Ordering::Relaxed), &histogram, before, after);
}

/// `count` messages to one agent, one at a time.
async fn sequential(http: &reqwest::Client, server: &Server, agent: &str, count: usize) {
    let mut histogram = new_histogram();
    let url = format!("{}/v1/agents/{agent}/messages", server.base);
    let before = counters(http, server).await;
    for i in 0..count as u64 {
        let begun = Instant::now();
        post(http, &url, &message(i)).await;
        let us = (begun.elapsed().as_micros() as u64).clamp(LATENCY_US_MIN, LATENCY_US_MAX);
        histogram.record(us).expect("latency in range");
    }
    let after = counters(http, server).await;
    report("messages, 1 client to 1 agent", count as u64, &histogram, before, after);
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map_or("unknown CPU", |rest| rest.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(LOAD_WORKER_THREADS_COUNT)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let create_clients = count_from_env("KELPIE_LOAD_CREATE_CLIENTS", CREATE_CLIENTS_COUNT_DEFAULT);
    let creates_count = count_from_env("KELPIE_LOAD_CREATES", CREATES_COUNT_DEFAULT);
    let agents_count = count_from_env("KELPIE_LOAD_AGENTS", AGENTS_COUNT_DEFAULT);
    let measure =
        Duration::from_secs(count_from_env("KELPIE_LOAD_SECONDS", MEASURE_S_DEFAULT as usize) as u64);
    let sequential_count = count_from_env("KELPIE_LOAD_SEQUENTIAL", SEQUENTIAL_COUNT_DEFAULT);
    let rate =
        std::env::var("KELPIE_LOAD_RATE").ok().map(|rate| rate.parse::<u64>().expect("KELPIE_LOAD_RATE"));
    let clients_counts: Vec<usize> = std::env::var("KELPIE_LOAD_CLIENTS")
        .unwrap_or_else(|_| CLIENTS_COUNTS_DEFAULT.to_string())
        .split(',')
        .map(|count| count.trim().parse().expect("KELPIE_LOAD_CLIENTS: counts separated by commas"))
        .collect();
    assert!(
        agents_count > 0 && agents_count <= creates_count,
        "KELPIE_LOAD_AGENTS is in 1..=KELPIE_LOAD_CREATES"
    );

    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("fake llm");
    fake.stop_recording();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
        .build()
        .expect("http client");
    let server = Server::start(&http, &fake.base_url()).await;
    println!("load bench: {}; the server, the clients and the fake LLM share them", machine());

    let ids = creates(&http, &server, create_clients, creates_count).await;
    let agents = Arc::new(ids[..agents_count].to_vec());
    // Every agent once, unmeasured: active, its context built.
    let warm_clients = *clients_counts.iter().max().unwrap_or(&1);
    let next = Arc::new(AtomicU64::new(0));
    let warm: Vec<_> = (0..warm_clients)
        .map(|_| {
            let (http, next, agents, base) =
                (http.clone(), Arc::clone(&next), Arc::clone(&agents), server.base.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= agents.len() * WARM_MESSAGES_PER_AGENT_COUNT {
                        return;
                    }
                    let url = format!("{base}/v1/agents/{}/messages", agents[i % agents.len()]);
                    post(&http, &url, &message(i as u64)).await;
                }
            })
        })
        .collect();
    for task in warm {
        task.await.expect("warm-up client");
    }
    for clients in clients_counts {
        messages(&http, &server, &agents, clients, measure, rate).await;
    }
    sequential(&http, &server, &agents[0], sequential_count).await;
    println!("server RSS {:.1} MiB (peak {:.1} MiB)", server.status_mib("VmRSS"), server.status_mib("VmHWM"));
}
