//! Two server nodes in this process on one real PostgreSQL: forwarding of
//! agent requests (JSON and SSE) to the owner, rebalancing when a node
//! joins, and drain when it leaves, with every message kept exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Running;
use kelpie_cluster::rebalance::REBALANCE_INTERVAL_MS;
use kelpie_server::forward::SERVED_BY_HEADER;
use kelpie_storage::test_support::PostgresServer;
use serde_json::{json, Value};

const AGENTS_COUNT: usize = 12;
/// Generous bound on waiting for a rebalance to show; never a timing assertion.
const REBALANCE_WAIT_MS_MAX: u64 = 30_000;

/// Sends `text` to `agent` through `node`; returns the node that served it.
async fn send(node: &Running, agent: &str, text: &str) -> String {
    let response = node
        .http
        .post(format!("{}/v1/agents/{agent}/messages", node.base))
        .json(&json!({"messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{text} to {agent}");
    let served_by = response.headers()[SERVED_BY_HEADER].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let replies: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "assistant_message")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(replies, [format!("echo: {text}")], "{agent}");
    served_by
}

async fn owners(node: &Running, agents: &[String]) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for agent in agents {
        let response = node.http.get(format!("{}/v1/agents/{agent}", node.base)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        owners.insert(agent.clone(), response.headers()[SERVED_BY_HEADER].to_str().unwrap().to_string());
    }
    owners
}

async fn user_texts(node: &Running, agent: &str) -> Vec<String> {
    let messages = node.ok("GET", &format!("/v1/agents/{agent}/messages?limit=1000&order=asc"), None).await;
    messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "user_message")
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_forwarded_rebalanced_on_join_and_drained_on_leave() {
    let Some(postgres) = PostgresServer::start_or_skip("server cluster") else { return };
    let url = postgres.create_database("server_cluster").expect("create database");
    let fake = common::fake_llm().await;
    let dir = tempfile::tempdir().unwrap();

    let n1 = common::start_cluster_node(dir.path(), &fake, &url, "n1").await;
    let mut agents = Vec::new();
    for i in 0..AGENTS_COUNT {
        agents.push(n1.create_agent(&format!("a{i}"), &[]).await);
    }
    for agent in &agents {
        assert_eq!(send(&n1, agent, &format!("{agent} first")).await, "n1");
    }

    // n2 joins: a share of n1's agents moves to it, and requests through
    // either node reach whichever owns the agent.
    let n2 = common::start_cluster_node(dir.path(), &fake, &url, "n2").await;
    let nodes = n2.ok("GET", "/v1/cluster/nodes", None).await;
    let names: Vec<&str> =
        nodes["nodes"].as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(
        (nodes["node_id"].as_str(), nodes["cluster"].as_bool(), names),
        (Some("n2"), Some(true), vec!["n1", "n2"])
    );
    let started = Instant::now();
    let moved = loop {
        let owners = owners(&n1, &agents).await;
        let on_n2 = owners.values().filter(|node| *node == "n2").count();
        if on_n2 > 0 {
            break owners;
        }
        assert!(started.elapsed() < Duration::from_millis(REBALANCE_WAIT_MS_MAX), "no agent ever moved");
        tokio::time::sleep(Duration::from_millis(REBALANCE_INTERVAL_MS)).await;
    };
    let on_n2 = moved.values().filter(|node| *node == "n2").count();
    assert_eq!(on_n2, AGENTS_COUNT / 2, "n1 hands the newcomer half of its agents: {moved:?}");
    for (i, agent) in agents.iter().enumerate() {
        let via = if i % 2 == 0 { &n1 } else { &n2 };
        let served_by = send(via, agent, &format!("{agent} second")).await;
        assert_eq!(served_by, moved[agent], "{agent} is served by its owner whichever node is asked");
    }

    // A stream through the node that does not own the agent.
    let (agent, owner) = moved.iter().find(|(_, owner)| *owner == "n2").unwrap();
    assert_eq!(owner, "n2");
    let streamed = n1
        .http
        .post(format!("{}/v1/agents/{agent}/messages/stream", n1.base))
        .json(&json!({"messages": [{"role": "user", "content": format!("{agent} streamed")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()[SERVED_BY_HEADER], "n2");
    assert!(streamed.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = streamed.text().await.unwrap();
    assert!(events.contains(&format!("echo: {agent} streamed")), "{events}");
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");

    // n2 leaves: its agents are handed to n1 before it goes, so the next
    // request is served at once, without waiting for a lease to run out.
    n2.shutdown().await;
    let after_leave = owners(&n1, &agents).await;
    assert!(after_leave.values().all(|node| node == "n1"), "{after_leave:?}");
    let nodes = n1.ok("GET", "/v1/cluster/nodes", None).await;
    let n2_row = nodes["nodes"].as_array().unwrap().iter().find(|n| n["node_id"] == "n2").unwrap().clone();
    assert_eq!((n2_row["status"].as_str(), n2_row["routable"].as_bool()), (Some("left"), Some(false)));

    for agent in &agents {
        assert_eq!(send(&n1, agent, &format!("{agent} third")).await, "n1");
        let mut expected = vec![format!("{agent} first"), format!("{agent} second")];
        if agent == &moved.iter().find(|(_, o)| *o == "n2").unwrap().0.clone() {
            expected.push(format!("{agent} streamed"));
        }
        expected.push(format!("{agent} third"));
        assert_eq!(user_texts(&n1, agent).await, expected, "{agent}: every message once, in order");
    }
    n1.shutdown().await;
}
