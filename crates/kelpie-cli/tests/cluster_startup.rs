//! Nodes started, stopped and restarted together, as an orchestrator does
//! (systemd, Compose, Kubernetes with parallel pod start): five real
//! `kelpie serve --cluster` processes launched at the same moment on a
//! fresh PostgreSQL database, 20 times; then, on the last database, all
//! five stopped at once and started again at once, and all five killed
//! with SIGKILL at once and started again at once.
//!
//! After every start each node must serve: each creates an agent, every
//! node reads every agent (most through forwarding to the owner) and lists
//! them all; after the restarts every agent created before is still there.

mod support;

use support::{create_agent, Harness, NodeProcess};

const NODES_COUNT: usize = 5;
const ROUNDS_COUNT: usize = 20;

/// Starts of one node whose port another socket took between the
/// harness picking it and the node binding it (a harness race, not the
/// node's): it is started again on new ports.
const PORT_TAKEN_RESTARTS_COUNT_MAX: usize = 3;

/// Starts every node at once and waits until each listens.
fn start_together(harness: &Harness, nodes: &mut [NodeProcess], database_url: &str, round: usize) {
    let dir = harness.dir.path().join(format!("round-{round}"));
    let starting: Vec<_> =
        nodes.iter_mut().map(|node| node.start(database_url, &harness.llm_url, &dir)).collect();
    let outcomes: Vec<Result<(), String>> =
        starting.into_iter().map(|readiness| readiness.outcome()).collect();
    for (node, outcome) in nodes.iter_mut().zip(outcomes) {
        let mut outcome = outcome;
        for _ in 0..PORT_TAKEN_RESTARTS_COUNT_MAX {
            match &outcome {
                Err(printed) if printed.contains("Address already in use") => {
                    node.reap();
                    node.move_ports();
                    outcome = node.start(database_url, &harness.llm_url, &dir).outcome();
                }
                _ => break,
            }
        }
        if let Err(printed) = outcome {
            panic!("round {round}: {} exited before listening:\n{printed}", node.name);
        }
    }
}

/// Each node creates an agent; every node reads each agent and lists all
/// of `expected` plus the new ones. Returns the new agents' ids.
fn check_all_serve(harness: &Harness, nodes: &[NodeProcess], expected: &[String], tag: &str) -> Vec<String> {
    let client = &harness.client;
    harness.runtime.block_on(async {
        let mut created = Vec::new();
        for node in nodes {
            created.push(create_agent(client, &node.url(), &format!("{tag}-{}", node.name)).await);
        }
        let all: Vec<&String> = expected.iter().chain(&created).collect();
        for node in nodes {
            for id in &all {
                let response = client.get(format!("{}/v1/agents/{id}", node.url())).send().await.unwrap();
                let status = response.status();
                let text = response.text().await.unwrap();
                assert_eq!(status, 200, "{tag}: {} reading {id}: {text}", node.name);
                let agent: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(agent["id"].as_str(), Some(id.as_str()));
            }
            let listed: Vec<serde_json::Value> = client
                .get(format!("{}/v1/agents/?limit=1000", node.url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let listed: Vec<&str> = listed.iter().map(|agent| agent["id"].as_str().unwrap()).collect();
            for id in &all {
                assert!(listed.contains(&id.as_str()), "{tag}: {} does not list {id}", node.name);
            }
        }
        created
    })
}

#[test]
fn nodes_started_stopped_and_killed_together_all_serve() {
    let Some(harness) = Harness::start("cluster_startup") else { return };
    let mut last = None;
    for round in 0..ROUNDS_COUNT {
        // The previous round's nodes are killed first (dropping a node kills it).
        drop(last.take());
        let database_url = harness.database(&format!("startup_{round}"));
        let mut nodes: Vec<NodeProcess> =
            (1..=NODES_COUNT).map(|i| NodeProcess::new(&format!("n{i}"))).collect();
        start_together(&harness, &mut nodes, &database_url, round);
        let created = check_all_serve(&harness, &nodes, &[], &format!("round {round}"));
        assert_eq!(created.len(), NODES_COUNT);
        last = Some((nodes, database_url, created));
    }
    let (mut nodes, database_url, mut agents) = last.expect("rounds ran");

    // All stopped at once (each drains and leaves), then all started at once.
    for node in &nodes {
        node.signal("-TERM");
    }
    for node in &mut nodes {
        let status = node.child.take().unwrap().wait().unwrap();
        assert!(status.success(), "{} left cleanly: {status:?}", node.name);
    }
    start_together(&harness, &mut nodes, &database_url, ROUNDS_COUNT);
    agents.extend(check_all_serve(&harness, &nodes, &agents, "after a stop of all"));

    // All killed at once, then all started at once.
    for node in &mut nodes {
        node.kill();
    }
    start_together(&harness, &mut nodes, &database_url, ROUNDS_COUNT + 1);
    agents.extend(check_all_serve(&harness, &nodes, &agents, "after a kill of all"));
    assert_eq!(agents.len(), 3 * NODES_COUNT);
}
