//! Background runs on three real `kelpie serve --cluster` processes sharing
//! one real PostgreSQL, with the fake LLM in this process. Each of 12
//! agents gets two background runs whose tool naps in its sandbox; the
//! node running a third of them is SIGKILLed mid-nap. Without any request
//! to their agents, the runs of the killed node leave the index of runs in
//! flight within a lease and five seconds (the other nodes' reminder), and
//! every one of them then reads `failed` with the reason; the runs of the
//! live nodes complete. Each completed run's message is stored once, an
//! interrupted one's at most once, and the killed node's agents answer new
//! messages on the live nodes.
//!
//! Needs PostgreSQL and bubblewrap; fails without them.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kelpie_core::limits::LEASE_DURATION_MS;
use serde_json::{json, Value};
use support::{call as ok, send_message, Harness, NodeProcess};

const NODES_COUNT: usize = 3;
const AGENTS_COUNT: usize = 12;
const RUNS_PER_AGENT_COUNT: usize = 2;
/// How long each run's tool naps: the kill lands inside the first nap.
const NAP_SECONDS: u64 = 6;
/// Most time after the kill until the killed node's runs are out of the
/// index of runs in flight: the bound.
const RECOVERY_MS_MAX: u64 = LEASE_DURATION_MS + 5_000;
/// Most time the live nodes' runs take to complete.
const COMPLETION_WAIT_MS_MAX: u64 = 60_000;
const POLL_MS: u64 = 100;
const NAP: &str = "def nap(seconds: int, tag: str) -> str:\n    \"\"\"Naps.\n\n    Args:\n        seconds (int): how long\n        tag (str): which call\n    \"\"\"\n    import time\n    time.sleep(seconds)\n    return \"rested \" + tag\n";

struct Started {
    agent: String,
    run_id: String,
    text: String,
    /// The node that runs it (`x-kelpie-served-by`).
    node: String,
}

async fn json_call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (reqwest::StatusCode, Option<String>, Value) {
    let mut request = client.request(method, &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|err| panic!("{url}: {err}"));
    let served_by =
        response.headers().get("x-kelpie-served-by").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = response.status();
    (status, served_by, response.json().await.unwrap_or(Value::Null))
}

/// The ids of the runs `GET /v1/runs/active` lists through `url`.
async fn active_runs(client: &reqwest::Client, url: &str) -> Option<Vec<String>> {
    let (status, _, value) =
        json_call(client, reqwest::Method::GET, format!("{url}/v1/runs/active"), None).await;
    let runs = value.as_array().filter(|_| status.is_success())?;
    Some(runs.iter().map(|run| run["id"].as_str().unwrap().to_string()).collect())
}

#[test]
fn runs_of_a_killed_node_end_failed_on_the_others_within_a_lease_and_five_seconds() {
    let Some(harness) = Harness::start("cluster_runs") else { return };
    let database_url = harness.database("cluster_runs");
    let (runtime, client) = (&harness.runtime, &harness.client);
    let mut nodes: Vec<NodeProcess> = (1..=NODES_COUNT).map(|i| NodeProcess::new(&format!("n{i}"))).collect();
    for node in &mut nodes {
        harness.spawn(node, &database_url);
    }
    let urls: Vec<String> = nodes.iter().map(NodeProcess::url).collect();

    let started: Vec<Started> = runtime.block_on(async {
        let post = reqwest::Method::POST;
        let tool =
            ok(client, post.clone(), format!("{}/v1/tools/", urls[0]), Some(json!({"source_code": NAP})))
                .await;
        let mut started = Vec::new();
        for agent in 0..AGENTS_COUNT {
            let body = json!({"name": format!("napper-{agent}"), "tool_ids": [tool["id"]]});
            let url = format!("{}/v1/agents/", urls[agent % NODES_COUNT]);
            let agent_id =
                ok(client, post.clone(), url, Some(body)).await["id"].as_str().unwrap().to_string();
            for n in 0..RUNS_PER_AGENT_COUNT {
                let text = format!("/call nap {{\"seconds\": {NAP_SECONDS}, \"tag\": \"{agent}-{n}\"}}");
                let body = json!({"messages": [{"role": "user", "content": text}]});
                let url = format!("{}/v1/agents/{agent_id}/messages/async", urls[(agent + n) % NODES_COUNT]);
                let (status, served_by, run) = json_call(client, post.clone(), url, Some(body)).await;
                assert!(status.is_success(), "{status} {run}");
                assert_eq!(run["status"], "running", "{run}");
                started.push(Started {
                    agent: agent_id.clone(),
                    run_id: run["id"].as_str().unwrap().to_string(),
                    text,
                    node: served_by.expect("the node that runs it says so"),
                });
            }
        }
        started
    });
    let on_node = |name: &str| started.iter().filter(|run| run.node == name).collect::<Vec<_>>();
    let doomed = on_node("n3");
    assert!(!doomed.is_empty(), "n3 runs some of the runs");
    assert!(doomed.len() < started.len(), "the other nodes run some too");
    let active = runtime.block_on(active_runs(client, &urls[0])).expect("the active runs are listed");
    assert_eq!(active.len(), started.len(), "every run is in flight before the kill");

    // Killed inside the first nap of each of its agents.
    std::thread::sleep(Duration::from_millis(1_000));
    nodes[2].kill();
    let killed_at = Instant::now();
    // No request names a run or agent of n3: only the index is read, from a
    // live node, until the reminder has taken n3's runs out of it.
    let doomed_ids: Vec<&str> = doomed.iter().map(|run| run.run_id.as_str()).collect();
    let recovered_ms = loop {
        let active = runtime.block_on(active_runs(client, &urls[0]));
        if active.is_some_and(|active| active.iter().all(|id| !doomed_ids.contains(&id.as_str()))) {
            break killed_at.elapsed().as_millis() as u64;
        }
        assert!(
            killed_at.elapsed() < Duration::from_millis(RECOVERY_MS_MAX),
            "the killed node's runs are still in flight {RECOVERY_MS_MAX} ms after the kill"
        );
        std::thread::sleep(Duration::from_millis(POLL_MS));
    };
    println!(
        "the killed node's {} runs ended {recovered_ms} ms after SIGKILL (lease {LEASE_DURATION_MS} ms)",
        doomed.len()
    );

    runtime.block_on(async {
        let get = reqwest::Method::GET;
        for run in &doomed {
            let read = ok(client, get.clone(), format!("{}/v1/runs/{}", urls[1], run.run_id), None).await;
            assert_eq!(read["status"], "failed", "{read}");
            let error = read["metadata"]["error"].as_str().unwrap_or_default();
            assert!(error.contains("the server stopped"), "{read}");
            assert!(read["completed_at"].is_string(), "{read}");
        }
        // The live nodes' runs complete.
        let deadline = Instant::now() + Duration::from_millis(COMPLETION_WAIT_MS_MAX);
        for run in started.iter().filter(|run| run.node != "n3") {
            loop {
                let read = ok(client, get.clone(), format!("{}/v1/runs/{}", urls[0], run.run_id), None).await;
                if read["status"] == "completed" {
                    break;
                }
                assert_eq!(read["status"], "running", "{read}");
                assert!(Instant::now() < deadline, "run {} of {} never completed", run.run_id, run.node);
                tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
            }
        }
        assert_eq!(active_runs(client, &urls[1]).await, Some(Vec::new()), "nothing is left in flight");
        // Each message stored once for a completed run, at most once else.
        let mut stored: BTreeMap<String, usize> = BTreeMap::new();
        for agent in started.iter().step_by(RUNS_PER_AGENT_COUNT).map(|run| &run.agent) {
            let url = format!("{}/v1/agents/{agent}/messages?limit=1000", urls[0]);
            for message in ok(client, get.clone(), url, None).await.as_array().unwrap() {
                if message["message_type"] == "user_message" {
                    *stored.entry(message["content"].as_str().unwrap().to_string()).or_default() += 1;
                }
            }
        }
        for run in &started {
            let count = stored.get(&run.text).copied().unwrap_or(0);
            match run.node.as_str() {
                "n3" => assert!(count <= 1, "{} stored {count} times", run.text),
                _ => assert_eq!(count, 1, "{} of a completed run stored {count} times", run.text),
            }
        }
        // The killed node's agents are served by the live nodes.
        for (index, run) in doomed.iter().enumerate() {
            let delivery =
                send_message(client, &urls[index % 2], &run.agent, &format!("after {index}")).await;
            assert!(delivery.acked, "{} answers after the kill: {}", run.agent, delivery.why);
            assert_ne!(delivery.served_by.as_deref(), Some("n3"));
        }
    });
    for node in nodes.iter_mut().take(2) {
        node.stop_cleanly();
    }
}
