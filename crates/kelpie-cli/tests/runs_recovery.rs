//! Runs survive a kill -9 of the server: 50 background runs in flight (10
//! agents, each run calling a custom tool that naps in its sandbox) and a
//! synchronous turn waiting on the same nap, the server killed, started
//! again on the same data dir. Every run ends `completed` or `failed` (with
//! the reason), none stays `running`, the run index is empty, and no user
//! message is stored twice.
//!
//! Needs bubblewrap (the tool runs sandboxed); fails without it.

mod support;

use std::time::{Duration, Instant};

use kelpie_llm::fake::FakeLlm;
use serde_json::json;
use support::{call, serve};

const AGENTS_COUNT: usize = 10;
const RUNS_PER_AGENT_COUNT: usize = 5;
const NAP: &str = "def nap(seconds: int, tag: str) -> str:\n    \"\"\"Naps.\n\n    Args:\n        seconds (int): how long\n        tag (str): which call\n    \"\"\"\n    import time\n    time.sleep(seconds)\n    return \"rested \" + tag\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_in_flight_at_a_kill_end_failed_or_completed_after_the_restart() {
    let fake = FakeLlm::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http = reqwest::Client::new();
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let tool =
        call(&http, reqwest::Method::POST, format!("{base}/v1/tools/"), Some(json!({"source_code": NAP})))
            .await;
    let mut runs = Vec::new();
    let mut texts = Vec::new();
    for agent in 0..AGENTS_COUNT {
        let body = json!({"name": format!("napper-{agent}"), "tool_ids": [tool["id"]]});
        let created = call(&http, reqwest::Method::POST, format!("{base}/v1/agents/"), Some(body)).await;
        let agent_id = created["id"].as_str().unwrap().to_string();
        for n in 0..RUNS_PER_AGENT_COUNT {
            let text = format!("/call nap {{\"seconds\": 20, \"tag\": \"{agent}-{n}\"}}");
            let body = json!({"messages": [{"role": "user", "content": text}]});
            let url = format!("{base}/v1/agents/{agent_id}/messages/async");
            let run = call(&http, reqwest::Method::POST, url, Some(body)).await;
            assert_eq!(run["status"], "running");
            runs.push((agent_id.clone(), run["id"].as_str().unwrap().to_string()));
            texts.push(text);
        }
    }
    let active = call(&http, reqwest::Method::GET, format!("{base}/v1/runs/active"), None).await;
    assert_eq!(active.as_array().unwrap().len(), AGENTS_COUNT * RUNS_PER_AGENT_COUNT, "all in flight");
    // A synchronous turn in flight, its client waiting: its first step
    // (a memory insert) committed, its second napping. Every background
    // run already made its LLM call, so these two answers are the turn's.
    fake.push_reply(None, &[("archival_memory_insert", json!({"content": "before the kill"}))]);
    fake.push_reply(None, &[("nap", json!({"seconds": 20, "tag": "sync"}))]);
    let body = json!({"name": "waiter", "tool_ids": [tool["id"]]});
    let created = call(&http, reqwest::Method::POST, format!("{base}/v1/agents/"), Some(body)).await;
    let waiter = created["id"].as_str().unwrap().to_string();
    let body = json!({"messages": [{"role": "user", "content": "two steps"}]});
    let request = http.post(format!("{base}/v1/agents/{waiter}/messages")).json(&body).send();
    let waiting = tokio::spawn(request);
    let url = format!("{base}/v1/runs/?agent_id={waiter}&active=true");
    let waited = Instant::now();
    let sync_run = loop {
        let active = call(&http, reqwest::Method::GET, url.clone(), None).await;
        if let Some(run) = active.as_array().unwrap().first() {
            let run_id = run["id"].as_str().unwrap().to_string();
            let steps =
                call(&http, reqwest::Method::GET, format!("{base}/v1/runs/{run_id}/steps"), None).await;
            if steps.as_array().unwrap().len() == 1 {
                break run_id;
            }
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the synchronous run never committed its first step"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Killed while every run is in flight (each waits on its tool's nap or its agent's turn lock).
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(waiting.await.unwrap().is_err(), "the synchronous turn's connection died with the server");
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let started = Instant::now();
    // The synchronous run ends failed the moment its agent is next reached.
    let run = call(&http, reqwest::Method::GET, format!("{base}/v1/runs/{sync_run}"), None).await;
    assert_eq!((run["status"].as_str(), run["background"].as_bool()), (Some("failed"), Some(false)), "{run}");
    assert!(run["metadata"]["error"].as_str().unwrap().contains("the server stopped"), "{run}");
    let steps = call(&http, reqwest::Method::GET, format!("{base}/v1/runs/{sync_run}/steps"), None).await;
    assert_eq!(steps.as_array().unwrap().len(), 1, "its committed step is kept: {steps}");
    let mut failed = 0;
    for (_, run_id) in &runs {
        let run = call(&http, reqwest::Method::GET, format!("{base}/v1/runs/{run_id}"), None).await;
        match run["status"].as_str() {
            Some("failed") => {
                assert!(run["metadata"]["error"].as_str().unwrap().contains("the server stopped"), "{run}");
                assert!(run["completed_at"].is_string(), "{run}");
                failed += 1;
            }
            Some("completed") => {}
            other => panic!("run {run_id} is {other:?} after the restart: {run}"),
        }
    }
    assert!(failed > 0, "the kill interrupted runs");
    assert!(started.elapsed() < Duration::from_secs(10), "recovered at start, not after");
    let active = call(&http, reqwest::Method::GET, format!("{base}/v1/runs/active"), None).await;
    assert_eq!(active, json!([]), "no run is left in flight");
    let running = call(&http, reqwest::Method::GET, format!("{base}/v1/runs/?active=true"), None).await;
    assert_eq!(running, json!([]), "no run of any agent is running");
    // Each message stored at most once (an interrupted run may have stored none).
    for (agent_id, _) in runs.iter().step_by(RUNS_PER_AGENT_COUNT) {
        let url = format!("{base}/v1/agents/{agent_id}/messages?limit=1000");
        let messages = call(&http, reqwest::Method::GET, url, None).await;
        for text in &texts {
            let stored = messages
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| {
                    m["message_type"] == "user_message" && m["content"].as_str() == Some(text.as_str())
                })
                .count();
            assert!(stored <= 1, "{text} stored {stored} times");
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
