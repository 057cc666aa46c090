//! Cluster benchmark: real `kelpie serve --cluster` processes on loopback,
//! a real PostgreSQL, the fake LLM (answering at once) in this process.
//!
//! 1. Message round trips per second, p50 and p99, for 1, 2 and 3 nodes:
//!    a fresh cluster each, `AGENTS_COUNT` agents, `CLIENTS_COUNT`
//!    concurrent clients each sending to a random agent, first through the
//!    node that owns it, then through a random node (so with n nodes about
//!    (n-1)/n of the requests are forwarded). Also the PostgreSQL
//!    statements (each one round trip: Kelpie does not pipeline) and
//!    transactions per message round trip, from `pg_stat_statements` and
//!    `pg_stat_database`; heartbeats and lease renewals of the period are
//!    included.
//! 2. Forwarding overhead per hop: agents owned by n1, one client sending
//!    alternately to n1 directly and to n2, which forwards to n1.
//! 3. Failover with the default timeouts: SIGKILL the owner of a freshly
//!    served agent, then time until a request for it through another node
//!    is acknowledged; repeated with the kill at different points of the
//!    lease-renewal cycle, the killed node restarted in between.
//!
//! Run: `cargo bench -p kelpie-cli --bench cluster`. Every process shares
//! this machine's cores, PostgreSQL included; the figures are for this
//! machine only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelpie_core::limits::{HEARTBEAT_TIMEOUT_MS, LEASE_DURATION_MS};
use support::{cluster_members, create_agent, send_message, Harness, Lcg, NodeProcess};

const NODES_COUNT_MAX: usize = 3;
const AGENTS_COUNT: usize = 300;
const CLIENTS_COUNT: usize = 16;
/// How long the clients send, per cluster size.
const MEASURE_MS: u64 = 8_000;
/// Round trips per path for the per-hop overhead.
const HOP_SAMPLES_COUNT: usize = 400;
const FAILOVER_REPEATS_COUNT: usize = 5;
/// Extra wait before each successive kill, so the kills land at different
/// points of the owner's lease-renewal cycle.
const FAILOVER_STAGGER_MS: u64 = 1_300;
/// Pause between requests while waiting for a failover or a rejoin.
const RETRY_PAUSE_MS: u64 = 20;
/// PostgreSQL publishes its statistics about once a second; waiting this
/// long before reading them sees every earlier transaction counted.
const STATS_FLUSH_WAIT_MS: u64 = 1_500;
/// Upper bound on one failover or rejoin, only to end a hung run.
const WAIT_TIMEOUT_MS: u64 = 60_000;

fn main() {
    let harness = Harness::start_with("cluster bench", &["shared_preload_libraries=pg_stat_statements"])
        .expect("the cluster bench needs PostgreSQL");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!(
        "cluster bench: {cores} cores shared by every node, PostgreSQL and this process (clients, fake LLM)"
    );
    println!("load average before: {}", load_average());

    let mut throughput = Vec::new();
    let mut three = None;
    for nodes_count in 1..=NODES_COUNT_MAX {
        let database = format!("bench_{nodes_count}_nodes");
        let database_url = harness.database(&database);
        let nodes = start_nodes(&harness, &database_url, nodes_count);
        let agents = create_agents(&harness, &nodes);
        for routing in [Routing::Owner, Routing::Random] {
            reset_statements(&harness, &database);
            let committed_before = committed_transactions(&harness, &database);
            let run = measure_round_trips(&harness, &nodes, &agents, routing);
            let committed =
                committed_before.zip(committed_transactions(&harness, &database)).map(|(b, a)| a - b);
            let statements = statements(&harness, &database);
            throughput.push(Throughput { nodes_count, routing, run, committed, statements });
        }
        if nodes_count == NODES_COUNT_MAX {
            three = Some((nodes, database_url));
        } else {
            stop(nodes);
        }
    }
    let (mut nodes, database_url) = three.expect("the largest cluster is kept");
    let hops = measure_hop(&harness, &nodes);
    let failovers = measure_failovers(&harness, &mut nodes, &database_url);
    stop(nodes);

    print_report(&throughput, &hops, &failovers);
    println!("load average after: {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// What `query` answers in database `name` (unaligned, tuples only);
/// `None` if `psql` cannot tell.
fn psql(harness: &Harness, name: &str, query: &str) -> Option<String> {
    let psql = kelpie_storage::test_support::find_postgres_bin_dir()?.join("psql");
    let port = harness.postgres.port().to_string();
    let output = Command::new(psql)
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", name, "-Atc", query])
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Transactions committed in database `name` so far (`pg_stat_database`,
/// read-only ones included), after waiting for the statistics to be
/// published.
fn committed_transactions(harness: &Harness, name: &str) -> Option<u64> {
    std::thread::sleep(Duration::from_millis(STATS_FLUSH_WAIT_MS));
    let query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
    psql(harness, name, query)?.parse().ok()
}

/// Starts counting statements in database `name` afresh.
fn reset_statements(harness: &Harness, name: &str) {
    let reset = "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()";
    psql(harness, name, reset).expect("pg_stat_statements (the bench starts PostgreSQL with it loaded)");
}

/// Statements run in database `name` since the reset: (all, commits).
/// Every statement is one client round trip.
fn statements(harness: &Harness, name: &str) -> Option<(u64, u64)> {
    let query = "SELECT coalesce(sum(s.calls), 0), coalesce(sum(s.calls) FILTER (WHERE s.query LIKE '%kelpie_commit(%'), 0)
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                 WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'";
    let answer = psql(harness, name, query)?;
    let (all, commits) = answer.split_once('|')?;
    Some((all.parse().ok()?, commits.parse().ok()?))
}

fn start_nodes(harness: &Harness, database_url: &str, nodes_count: usize) -> Vec<NodeProcess> {
    let mut nodes: Vec<NodeProcess> = (1..=nodes_count).map(|i| NodeProcess::new(&format!("n{i}"))).collect();
    for node in &mut nodes {
        harness.spawn(node, database_url);
    }
    wait_all_live(harness, &nodes);
    nodes
}

fn stop(nodes: Vec<NodeProcess>) {
    for mut node in nodes {
        node.stop_cleanly();
    }
}

/// Waits until every node lists every node as active and live.
fn wait_all_live(harness: &Harness, nodes: &[NodeProcess]) {
    let expected: Vec<(String, String, String)> =
        nodes.iter().map(|n| (n.name.clone(), "active".into(), "live".into())).collect();
    let started = Instant::now();
    harness.runtime.block_on(async {
        for node in nodes {
            while cluster_members(&harness.client, &node.url()).await != expected {
                assert!(
                    started.elapsed() < Duration::from_millis(WAIT_TIMEOUT_MS),
                    "{} never saw all",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
        }
    });
}

/// Creates the agents through the nodes in turn and sends each one message
/// through its creator, so every agent is active somewhere before timing.
/// Which node a client sends each request to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// The node the agent is active on (its creator).
    Owner,
    /// Any node, chosen at random.
    Random,
}

struct Throughput {
    nodes_count: usize,
    routing: Routing,
    run: RoundTrips,
    committed: Option<u64>,
    statements: Option<(u64, u64)>,
}

/// Each agent with the index of the node it was created through.
fn create_agents(harness: &Harness, nodes: &[NodeProcess]) -> Vec<(String, usize)> {
    harness.runtime.block_on(async {
        let mut agents = Vec::new();
        for i in 0..AGENTS_COUNT {
            let url = nodes[i % nodes.len()].url();
            let agent = create_agent(&harness.client, &url, &format!("bench-{i}")).await;
            let delivery = send_message(&harness.client, &url, &agent, "warm-up").await;
            assert!(delivery.acked, "warm-up of {agent}: {delivery:?}");
            agents.push((agent, i % nodes.len()));
        }
        agents
    })
}

struct RoundTrips {
    acked_count: usize,
    failed_count: usize,
    forwarded_count: usize,
    elapsed: Duration,
    /// Latencies of the acknowledged round trips, sorted.
    latencies: Vec<Duration>,
}

fn measure_round_trips(
    harness: &Harness,
    nodes: &[NodeProcess],
    agents: &[(String, usize)],
    routing: Routing,
) -> RoundTrips {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let (failed, forwarded) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let urls: Vec<(String, String)> = nodes.iter().map(|n| (n.name.clone(), n.url())).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(MEASURE_MS);
    let clients: Vec<_> = (0..CLIENTS_COUNT)
        .map(|client_index| {
            let (client, urls, agents) = (harness.client.clone(), urls.clone(), agents.to_vec());
            let (latencies, failed, forwarded) = (latencies.clone(), failed.clone(), forwarded.clone());
            harness.runtime.spawn(async move {
                let mut rng = Lcg(client_index as u64 + 1);
                let mut sequence = 0;
                while Instant::now() < deadline {
                    let (agent, owner) = &agents[rng.next(agents.len())];
                    let (name, url) = match routing {
                        Routing::Owner => &urls[*owner],
                        Routing::Random => &urls[rng.next(urls.len())],
                    };
                    let text = format!("c{client_index}-{sequence}");
                    sequence += 1;
                    let sent_at = Instant::now();
                    let delivery = send_message(&client, url, agent, &text).await;
                    if !delivery.acked {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    latencies.lock().unwrap().push(sent_at.elapsed());
                    if delivery.served_by.as_deref() != Some(name.as_str()) {
                        forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    harness.runtime.block_on(async {
        for client in clients {
            client.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap());
    latencies.sort();
    RoundTrips {
        acked_count: latencies.len(),
        failed_count: failed.load(Ordering::Relaxed),
        forwarded_count: forwarded.load(Ordering::Relaxed),
        elapsed,
        latencies,
    }
}

/// The value below which `fraction` of the sorted `samples` lie.
fn percentile(samples: &[Duration], fraction: f64) -> Duration {
    assert!(!samples.is_empty() && (0.0..=1.0).contains(&fraction));
    let index = ((samples.len() as f64 * fraction) as usize).min(samples.len() - 1);
    samples[index]
}

/// Sorted latencies of requests for agents owned by n1: sent to n1
/// directly, and sent to n2 (forwarded to n1), alternately.
struct Hop {
    direct: Vec<Duration>,
    forwarded: Vec<Duration>,
}

fn measure_hop(harness: &Harness, nodes: &[NodeProcess]) -> Hop {
    let (owner, other) = (&nodes[0], &nodes[1]);
    let client = &harness.client;
    harness.runtime.block_on(async {
        let mut owned = Vec::new();
        for i in 0..CLIENTS_COUNT {
            let agent = create_agent(client, &owner.url(), &format!("hop-{i}")).await;
            let delivery = send_message(client, &owner.url(), &agent, "claim").await;
            assert_eq!(delivery.served_by.as_deref(), Some(owner.name.as_str()), "{agent}: {delivery:?}");
            owned.push(agent);
        }
        let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
        for sample in 0..HOP_SAMPLES_COUNT {
            let agent = &owned[sample % owned.len()];
            for (via, latencies) in [(owner, &mut direct), (other, &mut forwarded)] {
                let sent_at = Instant::now();
                let delivery =
                    send_message(client, &via.url(), agent, &format!("hop-{}-{sample}", via.name)).await;
                latencies.push(sent_at.elapsed());
                assert!(delivery.acked, "{agent} through {}: {delivery:?}", via.name);
                assert_eq!(delivery.served_by.as_deref(), Some(owner.name.as_str()), "the owner served it");
            }
        }
        direct.sort();
        forwarded.sort();
        Hop { direct, forwarded }
    })
}

/// Failover times, one per repetition: SIGKILL of the owner → first
/// acknowledged request for its agent through another node.
fn measure_failovers(harness: &Harness, nodes: &mut [NodeProcess], database_url: &str) -> Vec<Duration> {
    let client = &harness.client;
    let mut times = Vec::new();
    for repeat in 0..FAILOVER_REPEATS_COUNT {
        let victim = repeat % nodes.len();
        let survivor_url = nodes[(victim + 1) % nodes.len()].url();
        let (victim_url, victim_name) = (nodes[victim].url(), nodes[victim].name.clone());
        let agent = harness.runtime.block_on(async {
            let agent = create_agent(client, &victim_url, &format!("failover-{repeat}")).await;
            let delivery = send_message(client, &victim_url, &agent, "claim").await;
            assert_eq!(delivery.served_by, Some(victim_name.clone()), "{agent}: {delivery:?}");
            agent
        });
        std::thread::sleep(Duration::from_millis(repeat as u64 * FAILOVER_STAGGER_MS));
        nodes[victim].kill();
        let killed_at = Instant::now();
        harness.runtime.block_on(async {
            let mut attempt = 0;
            while !send_message(client, &survivor_url, &agent, &format!("after-kill-{attempt}")).await.acked {
                assert!(
                    killed_at.elapsed() < Duration::from_millis(WAIT_TIMEOUT_MS),
                    "{agent} never failed over"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
        });
        times.push(killed_at.elapsed());
        eprintln!("failover {}: {} ms (killed {victim_name})", repeat + 1, killed_at.elapsed().as_millis());
        harness.spawn(&mut nodes[victim], database_url);
        wait_all_live(harness, nodes);
    }
    times.sort();
    times
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1_000.0)
}

fn print_report(throughput: &[Throughput], hop: &Hop, failovers: &[Duration]) {
    println!();
    println!("message round trips: {AGENTS_COUNT} agents, {CLIENTS_COUNT} clients, {MEASURE_MS} ms per run");
    println!("| nodes | sent to | round trips/s | p50 | p99 | forwarded | failed | PostgreSQL statements (= round trips) per message | of which commits | transactions per message |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for Throughput { nodes_count, routing, run, committed, statements } in throughput {
        let per = |count: u64| format!("{:.2}", count as f64 / run.acked_count.max(1) as f64);
        let (all, commits) = match statements {
            Some((all, commits)) => (per(*all), per(*commits)),
            None => ("?".into(), "?".into()),
        };
        let sent_to = match routing {
            Routing::Owner => "owner",
            Routing::Random => "random node",
        };
        println!(
            "| {nodes_count} | {sent_to} | {:.0} | {} | {} | {:.0} % | {} | {all} | {commits} | {} |",
            run.acked_count as f64 / run.elapsed.as_secs_f64(),
            ms(percentile(&run.latencies, 0.50)),
            ms(percentile(&run.latencies, 0.99)),
            100.0 * run.forwarded_count as f64 / run.acked_count.max(1) as f64,
            run.failed_count,
            committed.map(per).unwrap_or_else(|| "?".into())
        );
    }
    println!();
    println!("forwarding overhead: agents owned by n1, {HOP_SAMPLES_COUNT} round trips per path, one client, 3 nodes up");
    println!("| path | p50 | p99 |");
    println!("|---|---|---|");
    let (direct, forwarded) = (&hop.direct, &hop.forwarded);
    println!("| to n1, the owner | {} | {} |", ms(percentile(direct, 0.50)), ms(percentile(direct, 0.99)));
    println!(
        "| to n2, forwarded to n1 | {} | {} |",
        ms(percentile(forwarded, 0.50)),
        ms(percentile(forwarded, 0.99))
    );
    let difference = |fraction| {
        let (d, f) =
            (percentile(direct, fraction).as_secs_f64(), percentile(forwarded, fraction).as_secs_f64());
        format!("{:+.1} ms", (f - d) * 1_000.0)
    };
    println!("| overhead of one hop | {} | {} |", difference(0.50), difference(0.99));
    println!();
    println!(
        "failover (SIGKILL of the owner → first acknowledged request through another node), lease {LEASE_DURATION_MS} ms, heartbeat timeout {HEARTBEAT_TIMEOUT_MS} ms, {} runs",
        failovers.len()
    );
    println!(
        "| min | median | max |\n|---|---|---|\n| {} | {} | {} |",
        ms(failovers[0]),
        ms(failovers[failovers.len() / 2]),
        ms(failovers[failovers.len() - 1])
    );
}
