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
/// A client's pause after a failed request.
const RETRY_PAUSE_MS: u64 = 50;

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
    let Some(harness) = Harness::start("cluster_processes") else { return };
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
                    let sent_at = Instant::now();
                    let delivery = send_message(&client, url, agent, &text).await;
                    if delivery.acked {
                        let by = delivery.served_by.unwrap_or_else(|| "?".to_string());
                        let mut ledger = ledger.lock().unwrap();
                        ledger.sent.insert(text, (agent.clone(), true));
                        ledger.served.push((sent_at, Instant::now(), agent.clone(), by));
                    } else {
                        ledger.lock().unwrap().errors += 1;
                        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
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
            histories.insert(agent.clone(), history_turns(client, &urls[i % NODES_COUNT], agent).await);
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
