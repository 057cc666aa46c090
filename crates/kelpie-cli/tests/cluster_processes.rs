//! Three real `kelpie serve --cluster` processes on loopback sharing one
//! real PostgreSQL (initdb'd by the harness), with the fake LLM in this
//! process. Clients send messages to 200 agents through random nodes while
//! the test SIGKILLs one node and later restarts it, and SIGSTOPs another
//! for longer than a lease, then SIGCONTs it (a zombie that must be fenced).
//!
//! Afterwards, for every agent: each acknowledged message is in its history
//! exactly once, an unacknowledged one at most once, and every user message
//! is followed directly by its own reply (no interleaving of turns from two
//! owners). The failover time (kill → first acknowledged answer to a
//! request sent after the kill for an agent the dead node served) is
//! measured and printed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelpie_core::limits::LEASE_DURATION_MS;
use support::{cluster_members, create_agent, history_turns, send_message, Harness, Lcg, NodeProcess};

const NODES_COUNT: usize = 3;
const AGENTS_COUNT: usize = 200;
const CLIENTS_COUNT: usize = 6;
/// Workload before the first fault.
const WARMUP_MS: u64 = 4_000;
/// How long the killed node stays down.
const DOWN_MS: u64 = 12_000;
/// How long the stopped node stays frozen: past its leases.
const FROZEN_MS: u64 = LEASE_DURATION_MS + 4_000;
/// Workload after the last fault.
const COOLDOWN_MS: u64 = 6_000;
<<<<<<< HEAD
const REQUEST_TIMEOUT_MS: u64 = 30_000;
const STARTUP_TIMEOUT_MS: u64 = 60_000;
/// Reads of one agent's history before giving up (a retriable error can
/// meet an agent that is moving).
const HISTORY_READ_ATTEMPTS_COUNT_MAX: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct NodeProcess {
    name: String,
    http: SocketAddr,
    advertise: SocketAddr,
    child: Option<Child>,
}

impl NodeProcess {
    fn spawn(&mut self, database_url: &str, llm_url: &str, data_dir: &std::path::Path) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelpie"));
        for (name, _) in std::env::vars() {
            if name.starts_with("KELPIE_") || name.starts_with("OPENAI_") || name.starts_with("ANTHROPIC_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .args(["serve", "--cluster", "--database-url", database_url, "--node-id", &self.name])
            .args(["--advertise", &self.advertise.to_string(), "--bind", &self.http.to_string()])
            .args(["--data-dir", data_dir.join(&self.name).to_str().unwrap()])
            .env("OPENAI_BASE_URL", llm_url)
            .env("KELPIE_DEFAULT_MODEL", "openai-proxy/fake-gpt")
            .env("KELPIE_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kelpie");
        self.child = Some(child);
        let stderr = self.child.as_mut().unwrap().stderr.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on http://") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                if line.contains("ERROR") || line.contains("panicked") {
                    eprintln!("[{name}] {line}");
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_millis(STARTUP_TIMEOUT_MS)).expect("node never listened");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success(), "kill {signal}");
    }

    fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.take().unwrap().wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
=======
/// A client's pause after a failed request.
const RETRY_PAUSE_MS: u64 = 50;
>>>>>>> i7-partition-bench

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    /// text -> (agent, acknowledged)
    sent: BTreeMap<String, (String, bool)>,
    /// (sent at, answered at, agent, node that served it) of every
    /// acknowledged message.
    served: Vec<(Instant, Instant, String, String)>,
    errors: u64,
}

#[test]
fn three_processes_survive_kill_and_freeze_without_losing_or_doubling_a_message() {
    let Some(harness) = Harness::start() else { return };
    let database_url = harness.database("cluster_processes");
    let (runtime, client) = (&harness.runtime, &harness.client);

    let mut nodes: Vec<NodeProcess> = (1..=NODES_COUNT).map(|i| NodeProcess::new(&format!("n{i}"))).collect();
    for node in &mut nodes {
        harness.spawn(node, &database_url);
    }
    let urls: Vec<String> = nodes.iter().map(NodeProcess::url).collect();

    // Every node sees all three, active and live.
    let members = runtime.block_on(cluster_members(client, &urls[0]));
    let expected: Vec<(String, String, String)> =
        ["n1", "n2", "n3"].iter().map(|n| (n.to_string(), "active".into(), "live".into())).collect();
    assert_eq!(members, expected);
    let status = Command::new(env!("CARGO_BIN_EXE_kelpie"))
        .args(["cluster", "status", "--url", &urls[1]])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "kelpie cluster status failed: {table}");
    for name in ["n1", "n2", "n3"] {
        assert!(table.contains(name), "status table lists {name}:\n{table}");
    }

    // 200 agents, created through the nodes in turn.
    let agents: Vec<String> = runtime.block_on(async {
        let mut agents = Vec::new();
        for i in 0..AGENTS_COUNT {
            agents.push(create_agent(client, &urls[i % NODES_COUNT], &format!("agent-{i}")).await);
        }
        agents
    });
    assert_eq!(agents.len(), AGENTS_COUNT);

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sequence = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CLIENTS_COUNT)
        .map(|worker| {
            let (client, urls, agents) = (client.clone(), urls.clone(), agents.clone());
            let (ledger, stop, sequence) = (ledger.clone(), stop.clone(), sequence.clone());
            runtime.spawn(async move {
                let mut rng = Lcg(worker as u64 + 1);
                while !stop.load(Ordering::SeqCst) {
                    let agent = &agents[rng.next(agents.len())];
                    let url = &urls[rng.next(urls.len())];
                    let text = format!("m{}", sequence.fetch_add(1, Ordering::SeqCst));
                    ledger.lock().unwrap().sent.insert(text.clone(), (agent.clone(), false));
<<<<<<< HEAD
                    let body = json!({"messages": [{"role": "user", "content": text}]});
                    let sent_at = Instant::now();
                    let sent =
                        client.post(format!("{url}/v1/agents/{agent}/messages")).json(&body).send().await;
                    match sent {
                        Ok(response) if response.status().is_success() => {
                            let by = response
                                .headers()
                                .get("x-kelpie-served-by")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_string();
                            let reply: Value = response.json().await.unwrap_or(Value::Null);
                            let echoed = reply["messages"].as_array().into_iter().flatten().any(|m| {
                                m["message_type"] == "assistant_message"
                                    && m["content"] == format!("echo: {text}")
                            });
                            let mut ledger = ledger.lock().unwrap();
                            if echoed {
                                ledger.sent.insert(text, (agent.clone(), true));
                                ledger.served.push((sent_at, Instant::now(), agent.clone(), by));
                            } else {
                                ledger.errors += 1;
                            }
                        }
                        _ => {
                            ledger.lock().unwrap().errors += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
=======
                    let delivery = send_message(&client, url, agent, &text).await;
                    if delivery.acked {
                        let by = delivery.served_by.unwrap_or_else(|| "?".to_string());
                        let mut ledger = ledger.lock().unwrap();
                        ledger.sent.insert(text, (agent.clone(), true));
                        ledger.served.push((Instant::now(), agent.clone(), by));
                    } else {
                        ledger.lock().unwrap().errors += 1;
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
>>>>>>> i7-partition-bench
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(WARMUP_MS));
    // SIGKILL n3; remember which agents it was serving.
    let killed_at = Instant::now();
    let dead_agents: BTreeSet<String> = {
        let ledger = ledger.lock().unwrap();
        let mut last_server = BTreeMap::new();
        for (_, _, agent, by) in &ledger.served {
            last_server.insert(agent.clone(), by.clone());
        }
        last_server.into_iter().filter(|(_, by)| by == "n3").map(|(agent, _)| agent).collect()
    };
    assert!(!dead_agents.is_empty(), "n3 served some agents before the kill");
    nodes[2].kill();
    std::thread::sleep(Duration::from_millis(DOWN_MS));
    harness.spawn(&mut nodes[2], &database_url);

    // SIGSTOP n2 past its leases, then let it run again as a zombie.
    std::thread::sleep(Duration::from_millis(WARMUP_MS));
    nodes[1].signal("-STOP");
    std::thread::sleep(Duration::from_millis(FROZEN_MS));
    nodes[1].signal("-CONT");
    std::thread::sleep(Duration::from_millis(COOLDOWN_MS));
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for worker in workers {
            worker.await.unwrap();
        }
    });

    let ledger = ledger.lock().unwrap();
    let failover = ledger
        .served
        .iter()
        .filter(|(sent_at, _, agent, _)| *sent_at > killed_at && dead_agents.contains(agent))
        .map(|(_, answered_at, _, _)| answered_at.duration_since(killed_at))
        .min()
        .expect("an agent of the killed node was served again");
    let acked = ledger.sent.values().filter(|(_, acked)| *acked).count();
    println!(
        "failover: {} ms after SIGKILL (lease {} ms); {} acknowledged, {} unacknowledged attempts, {} agents on the killed node",
        failover.as_millis(),
        LEASE_DURATION_MS,
        acked,
        ledger.errors,
        dead_agents.len()
    );
    assert!(acked > 100, "the workload made progress: {acked}");

    // Every agent's history, read through the nodes in turn.
    let histories: BTreeMap<String, Vec<(String, String)>> = runtime.block_on(async {
        let mut histories = BTreeMap::new();
        for (i, agent) in agents.iter().enumerate() {
<<<<<<< HEAD
            let mut last = None;
            for attempt in 0..HISTORY_READ_ATTEMPTS_COUNT_MAX {
                let url = &urls[(i + attempt) % NODES_COUNT];
                let response = client
                    .get(format!("{url}/v1/agents/{agent}/messages?limit=1000&order=asc"))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if let (true, Some(messages)) = (status.is_success(), body.as_array()) {
                    histories.insert(agent.clone(), messages.clone());
                    break;
                }
                last = Some((status, body));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert!(histories.contains_key(agent), "history of {agent} unreadable: {last:?}");
=======
            histories.insert(agent.clone(), history_turns(client, &urls[i % NODES_COUNT], agent).await);
>>>>>>> i7-partition-bench
        }
        histories
    });
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (agent, turns) in &histories {
        for (index, (kind, text)) in turns.iter().enumerate() {
            if kind != "user_message" || !text.starts_with('m') {
                continue;
            }
            *seen.entry(text.clone()).or_default() += 1;
            assert_eq!(
                ledger.sent.get(text).map(|(a, _)| a.as_str()),
                Some(agent.as_str()),
                "{text} in {agent}"
            );
            assert_eq!(
                turns.get(index + 1),
                Some(&("assistant_message".to_string(), format!("echo: {text}"))),
                "{agent}: the turn of {text} is followed by its own reply, not another turn"
            );
        }
    }
    for (text, (agent, acked)) in &ledger.sent {
        let count = seen.get(text).copied().unwrap_or(0);
        if *acked {
            assert_eq!(count, 1, "acknowledged {text} to {agent} is in its history exactly once");
        } else {
            assert!(count <= 1, "unacknowledged {text} applied at most once, got {count}");
        }
    }

    for node in &mut nodes {
        node.stop_cleanly();
    }
}
