//! A network partition of one node, through fault-injecting TCP proxies.
//!
//! Three real `kelpie serve --cluster` processes share one real PostgreSQL.
//! Node n3 is behind proxies on all the links others or the database see:
//! its database URL points at a proxy to PostgreSQL, and it advertises a
//! proxy address that forwards to its `--cluster-listen`, so every transport
//! connection from n1 and n2 to n3 passes the proxy. (n3's own outgoing
//! transport connections are direct; without the database it cannot learn
//! an owner to send them to.) Cutting both proxies leaves n3 alone on the
//! minority side, with its HTTP port still answering the test.
//!
//! The test proves: requests sent to n3 during the partition are never
//! acknowledged and never reach any history (the minority cannot commit);
//! the majority takes n3's agents over once their leases run out (the time
//! is printed); after the heal n3 is live again and forwards requests for
//! the agents the majority now owns to their new owners; and every
//! acknowledged message is in its agent's history exactly once, in the
//! order it was sent, each followed by its own reply.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kelpie_core::limits::{HEARTBEAT_TIMEOUT_MS, LEASE_DURATION_MS};
use support::proxy::FaultProxy;
use support::{
    cluster_members, create_agent, free_loopback_addr, history_turns, send_message, Delivery, Harness,
    NodeProcess,
};

const AGENTS_COUNT: usize = 12;
/// Messages per agent before the cut, each through another node.
const WARMUP_ROUNDS_COUNT: usize = 3;
/// Times a warm-up message answered 503 (retriable) is sent again.
const WARMUP_RETRIES_COUNT_MAX: usize = 5;
const WARMUP_RETRY_PAUSE_MS: u64 = 100;
/// Requests through n3 for each of its agents, right after the cut and again
/// after the majority took them over.
const MINORITY_ATTEMPTS_COUNT: usize = 2;
/// Pause between rounds of retries while waiting for a takeover or rejoin.
const RETRY_PAUSE_MS: u64 = 100;
/// Upper bound on the takeover, only to end a hung run: the lease plus
/// the failure verdict, three times over.
const TAKEOVER_TIMEOUT_MS: u64 = 3 * (LEASE_DURATION_MS + HEARTBEAT_TIMEOUT_MS);
/// Upper bound on n3's rejoin after the heal, only to end a hung run.
const REJOIN_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// All links up, before the cut.
    Warmup,
    /// Through n3 while it is cut off.
    Minority,
    /// Through n1 and n2 while n3 is cut off.
    Majority,
    /// After the heal.
    Healed,
}

struct Attempt {
    phase: Phase,
    agent: String,
    text: String,
    via: &'static str,
    delivery: Delivery,
}

/// The nodes' URLs and every message the test sent, in sending order.
struct Run<'a> {
    client: &'a reqwest::Client,
    urls: BTreeMap<&'static str, String>,
    attempts: Vec<Attempt>,
}

impl Run<'_> {
    /// Sends a message with a text never used before to `agent` through
    /// node `via` and records the outcome.
    async fn send(&mut self, phase: Phase, via: &'static str, agent: &str) -> Delivery {
        let text = format!("{phase:?}-{}", self.attempts.len());
        let delivery = send_message(self.client, &self.urls[via], agent, &text).await;
        let attempt = Attempt { phase, agent: agent.to_string(), text, via, delivery: delivery.clone() };
        self.attempts.push(attempt);
        delivery
    }

    fn owners_after(&self, phase: Phase) -> BTreeMap<String, String> {
        self.attempts
            .iter()
            .filter(|a| a.phase == phase && a.delivery.acked)
            .map(|a| {
                (a.agent.clone(), a.delivery.served_by.clone().expect("acknowledged answers name a node"))
            })
            .collect()
    }
}

#[test]
fn minority_node_commits_nothing_and_majority_takes_over_then_it_rejoins_and_forwards() {
    let Some(harness) = Harness::start("cluster_partition") else { return };
    let database_url = harness.database("cluster_partition");
    let (runtime, client) = (&harness.runtime, &harness.client);

    let postgres_addr = SocketAddr::from(([127, 0, 0, 1], harness.postgres.port()));
    let database_proxy = runtime.block_on(FaultProxy::start(postgres_addr));
    let n3_database_url =
        database_url.replace(&postgres_addr.to_string(), &database_proxy.listen().to_string());
    assert_ne!(n3_database_url, database_url, "n3 reaches PostgreSQL through the proxy");
    let mut nodes = [NodeProcess::new("n1"), NodeProcess::new("n2"), NodeProcess::new("n3")];
    nodes[2].listen = Some(free_loopback_addr());
    let transport_proxy = runtime.block_on(FaultProxy::start(nodes[2].listen.unwrap()));
    nodes[2].advertise = transport_proxy.listen();
    for node in &mut nodes[..2] {
        harness.spawn(node, &database_url);
    }
    harness.spawn(&mut nodes[2], &n3_database_url);
    let names: [&'static str; 3] = ["n1", "n2", "n3"];
    let all_live: Vec<(String, String, String)> =
        names.iter().map(|n| (n.to_string(), "active".into(), "live".into())).collect();
    assert_eq!(runtime.block_on(cluster_members(client, &nodes[0].url())), all_live);

    let mut run = Run {
        client,
        urls: names.iter().copied().zip(nodes.iter().map(NodeProcess::url)).collect(),
        attempts: vec![],
    };
    let agents: Vec<String> = runtime.block_on(async {
        let mut agents = Vec::new();
        for i in 0..AGENTS_COUNT {
            agents.push(create_agent(client, &run.urls[names[i % 3]], &format!("agent-{i}")).await);
        }
        agents
    });

    // Warm-up: every agent gets messages through every node in turn.
    runtime.block_on(async {
        for round in 0..WARMUP_ROUNDS_COUNT {
            for (i, agent) in agents.iter().enumerate() {
                // A 503 says "send again": a node that had the agent active
                // can meet it moved away by the rebalancer as the request
                // arrives; nothing was stored, and the retry is routed afresh.
                let mut delivery = run.send(Phase::Warmup, names[(i + round) % 3], agent).await;
                for _ in 0..WARMUP_RETRIES_COUNT_MAX {
                    if delivery.acked || !delivery.why.starts_with("503") {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(WARMUP_RETRY_PAUSE_MS)).await;
                    delivery = run.send(Phase::Warmup, names[(i + round) % 3], agent).await;
                }
                assert!(delivery.acked, "warm-up message to {agent}: {delivery:?}");
            }
        }
    });
    let owners = run.owners_after(Phase::Warmup);
    let n3_agents: Vec<String> =
        owners.iter().filter(|(_, owner)| *owner == "n3").map(|(agent, _)| agent.clone()).collect();
    let majority_agents: Vec<String> =
        owners.iter().filter(|(_, owner)| *owner != "n3").map(|(agent, _)| agent.clone()).collect();
    assert!(!n3_agents.is_empty() && !majority_agents.is_empty(), "owners before the cut: {owners:?}");
    assert!(
        run.attempts.iter().any(|a| a.via != "n3" && a.delivery.served_by.as_deref() == Some("n3")),
        "some requests reached n3 forwarded through its transport proxy"
    );

    // The partition.
    runtime.block_on(async {
        database_proxy.cut().await;
        transport_proxy.cut().await;
    });
    let cut_at = Instant::now();

    // (a) The minority serves no read of the agents it held once a lease
    // has passed since the cut: its activations cannot prove their leases
    // (their memory may be stale by then: the majority may have taken the
    // agents over). The blocks route reads the agent actor alone, and
    // nothing else was sent to n3 since the cut.
    let lease = Duration::from_millis(LEASE_DURATION_MS);
    std::thread::sleep(lease.saturating_sub(cut_at.elapsed()));
    runtime.block_on(async {
        for agent in &n3_agents {
            let blocks = format!("{}/v1/agents/{agent}/core-memory/blocks", nodes[2].url());
            let response = client.get(blocks).send().await;
            let status = response.map(|r| r.status().as_u16()).unwrap_or(0);
            assert_eq!(status, 503, "a read of {agent} through the cut-off n3, a lease after the cut");
        }
    });

    // (a') The minority answers nothing as committed.
    runtime.block_on(send_through_cut_off_n3(&mut run, &n3_agents));

    // (b) The majority keeps serving its own agents at once and takes over
    // n3's agents when their leases have run out.
    runtime.block_on(async {
        for (i, agent) in majority_agents.iter().enumerate() {
            let delivery = run.send(Phase::Majority, names[i % 2], agent).await;
            assert!(delivery.acked, "majority agent {agent} served during the partition: {delivery:?}");
        }
    });
    let mut taken_over: BTreeMap<String, Duration> = BTreeMap::new();
    runtime.block_on(async {
        let mut round = 0;
        while taken_over.len() < n3_agents.len() {
            assert!(
                cut_at.elapsed() < Duration::from_millis(TAKEOVER_TIMEOUT_MS),
                "the majority took over only {taken_over:?} of {n3_agents:?}"
            );
            for agent in &n3_agents {
                if taken_over.contains_key(agent) {
                    continue;
                }
                let delivery = run.send(Phase::Majority, names[round % 2], agent).await;
                if delivery.acked {
                    taken_over.insert(agent.clone(), cut_at.elapsed());
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
    });
    let first = taken_over.values().min().unwrap();
    let last = taken_over.values().max().unwrap();
    println!(
        "takeover after the cut: first agent {} ms, all {} agents {} ms (lease {} ms, heartbeat timeout {} ms)",
        first.as_millis(),
        n3_agents.len(),
        last.as_millis(),
        LEASE_DURATION_MS,
        HEARTBEAT_TIMEOUT_MS
    );
    let majority_owners = run.owners_after(Phase::Majority);
    assert!(majority_owners.values().all(|owner| owner == "n1" || owner == "n2"), "{majority_owners:?}");
    // n3 may still hold its stale activations; it still cannot commit.
    runtime.block_on(send_through_cut_off_n3(&mut run, &n3_agents));

    // (c) Heal: n3 is live again in every view and forwards to the new owners.
    transport_proxy.heal();
    database_proxy.heal();
    let healed_at = Instant::now();
    runtime.block_on(async {
        for node in &nodes {
            while cluster_members(client, &node.url()).await != all_live {
                assert!(
                    healed_at.elapsed() < Duration::from_millis(REJOIN_TIMEOUT_MS),
                    "{} never saw n3 live again",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
        }
    });
    println!("rejoin: every node sees n3 live {} ms after the heal", healed_at.elapsed().as_millis());
    runtime.block_on(async {
        for agent in &n3_agents {
            while !run.send(Phase::Healed, "n3", agent).await.acked {
                assert!(
                    healed_at.elapsed() < Duration::from_millis(REJOIN_TIMEOUT_MS),
                    "n3 never served {agent} again"
                );
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
            }
        }
    });
    let healed_owners = run.owners_after(Phase::Healed);
    assert_eq!(
        healed_owners,
        n3_agents.iter().map(|a| (a.clone(), majority_owners[a].clone())).collect::<BTreeMap<_, _>>(),
        "through n3, its former agents are served by the majority nodes that took them over"
    );

    check_histories(&run, &agents, runtime);
    let minority_count = run.attempts.iter().filter(|a| a.phase == Phase::Minority).count();
    let acked_count = run.attempts.iter().filter(|a| a.delivery.acked).count();
    println!(
        "{} attempts: {acked_count} acknowledged, {minority_count} through the cut-off n3 (none committed)",
        run.attempts.len()
    );

    for node in &mut nodes {
        node.stop_cleanly();
    }
}

/// Sends messages to n3's agents through n3, cut off: none is acknowledged.
async fn send_through_cut_off_n3(run: &mut Run<'_>, n3_agents: &[String]) {
    for agent in n3_agents {
        for _ in 0..MINORITY_ATTEMPTS_COUNT {
            let delivery = run.send(Phase::Minority, "n3", agent).await;
            assert!(!delivery.acked, "n3 acknowledged a message to {agent} while cut off");
        }
    }
}

/// Every agent's history holds exactly the acknowledged messages (plus at
/// most once any unacknowledged one outside the minority), in sending order,
/// each followed by its own reply; nothing sent through the cut-off n3.
fn check_histories(run: &Run, agents: &[String], runtime: &tokio::runtime::Runtime) {
    let mut in_histories = BTreeSet::new();
    for agent in agents {
        let turns = runtime.block_on(history_turns(run.client, &run.urls["n1"], agent));
        let sent: Vec<&Attempt> = run.attempts.iter().filter(|a| &a.agent == agent).collect();
        let mut next_index = 0;
        for (index, (kind, text)) in turns.iter().enumerate() {
            if kind != "user_message" {
                continue;
            }
            assert!(in_histories.insert(text.clone()), "{text} appears twice");
            let position = sent.iter().position(|a| &a.text == text);
            let position = position.unwrap_or_else(|| panic!("{agent} holds {text}, never sent to it"));
            assert!(position >= next_index, "{agent}: {text} is out of sending order");
            next_index = position + 1;
            assert_eq!(
                turns.get(index + 1),
                Some(&("assistant_message".to_string(), format!("echo: {text}"))),
                "{agent}: the turn of {text} is followed by its own reply"
            );
        }
        for attempt in &sent {
            let present = in_histories.contains(&attempt.text);
            if attempt.delivery.acked {
                assert!(present, "acknowledged {} is in {agent}'s history", attempt.text);
            }
            if attempt.phase == Phase::Minority {
                assert!(!present, "{} sent through the cut-off n3 was committed", attempt.text);
            }
        }
    }
}
