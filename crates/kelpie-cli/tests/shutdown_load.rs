//! Graceful shutdown under load, over HTTP against a real `kelpie serve`:
//! 16 clients send messages to 8 agents (every other one a turn whose tool
//! naps a second in its sandbox) when the server gets SIGTERM. Every
//! request is answered in full (200 with its reply) or refused with 503
//! while the server drains, or, once the listener closed, refused at
//! connect; none is cut mid-way. Turns in flight at the signal complete.
//! The server exits 0. After a restart every answered message is stored
//! exactly once and no refused one is stored.
//!
//! Needs bubblewrap (the tool runs sandboxed); fails without it.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use support::{call, serve};

const CLIENTS_COUNT: usize = 16;
const AGENTS_COUNT: usize = 8;
/// Load before the signal.
const LOAD_BEFORE_TERM_MS: u64 = 1_500;
/// Longest the server may take to exit after SIGTERM.
const EXIT_WAIT_MS_MAX: u64 = 60_000;
const NAP: &str = "def nap(seconds: int, tag: str) -> str:\n    \"\"\"Naps.\n\n    Args:\n        seconds (int): how long\n        tag (str): which call\n    \"\"\"\n    import time\n    time.sleep(seconds)\n    return \"rested \" + tag\n";

/// How one request ended, as its client saw it.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 200 with the turn's messages, answered at this instant.
    Answered(Instant),
    /// 503: the server was draining.
    Refused,
    /// The connection was refused: the listener had closed.
    NotConnected,
    /// Anything else: a status, a body that is not the answer, or a
    /// connection cut after the request was sent.
    Broken(String),
}

async fn send(http: &reqwest::Client, base: &str, agent: &str, text: &str) -> Outcome {
    let body = json!({"messages": [{"role": "user", "content": text}]});
    let response = match http.post(format!("{base}/v1/agents/{agent}/messages")).json(&body).send().await {
        Ok(response) => response,
        Err(err) if err.is_connect() => return Outcome::NotConnected,
        Err(err) => return Outcome::Broken(format!("transport: {err:?}")),
    };
    let status = response.status();
    let answer = response.json::<Value>().await;
    match (status.as_u16(), answer) {
        (200, Ok(reply)) if reply["messages"].as_array().is_some_and(|m| !m.is_empty()) => {
            Outcome::Answered(Instant::now())
        }
        (503, Ok(reply)) if reply["detail"].is_string() => Outcome::Refused,
        (status, answer) => Outcome::Broken(format!("{status}: {answer:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_sigterm_every_request_is_answered_in_full_or_refused_with_503() {
    let fake = FakeLlm::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let http = reqwest::Client::new();
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let post = reqwest::Method::POST;
    let tool =
        call(&http, post.clone(), format!("{base}/v1/tools/"), Some(json!({"source_code": NAP}))).await;
    let mut agents = Vec::new();
    for n in 0..AGENTS_COUNT {
        let body = json!({"name": format!("busy-{n}"), "tool_ids": [tool["id"]]});
        let agent = call(&http, post.clone(), format!("{base}/v1/agents/"), Some(body)).await;
        agents.push(agent["id"].as_str().unwrap().to_string());
    }

    let outcomes: Arc<Mutex<Vec<(String, String, Outcome)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS_COUNT)
        .map(|client| {
            let (http, base, agents, outcomes) =
                (http.clone(), base.clone(), agents.clone(), Arc::clone(&outcomes));
            tokio::spawn(async move {
                for n in 0.. {
                    let agent = &agents[(client + n) % AGENTS_COUNT];
                    let tag = format!("c{client}-{n}");
                    let text = match n % 2 {
                        0 => format!("/call nap {{\"seconds\": 1, \"tag\": \"{tag}\"}}"),
                        _ => format!("hello {tag}"),
                    };
                    let outcome = send(&http, &base, agent, &text).await;
                    let last = !matches!(outcome, Outcome::Answered(_));
                    outcomes.lock().unwrap().push((agent.clone(), text, outcome));
                    // A client told the server is going (or gone) stops, as a
                    // load balancer stops routing to a draining node.
                    if last {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(LOAD_BEFORE_TERM_MS)).await;
    let pid = server.id().to_string();
    let termed_at = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || server.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_millis(EXIT_WAIT_MS_MAX), exited)
        .await
        .expect("the server exits after draining")
        .unwrap();
    assert!(status.success(), "a drained server exits 0: {status:?}");
    for client in clients {
        client.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap().clone();
    let broken: Vec<_> = outcomes.iter().filter(|(_, _, o)| matches!(o, Outcome::Broken(_))).collect();
    assert!(broken.is_empty(), "requests cut or answered wrongly: {broken:?}");
    let after_term =
        outcomes.iter().filter(|(_, _, o)| matches!(o, Outcome::Answered(at) if *at > termed_at)).count();
    let refused = outcomes.iter().filter(|(_, _, o)| *o == Outcome::Refused).count();
    let answered = outcomes.iter().filter(|(_, _, o)| matches!(o, Outcome::Answered(_))).count();
    println!(
        "{answered} answered ({after_term} after SIGTERM), {refused} refused with 503, {} in all",
        outcomes.len()
    );
    assert!(after_term > 0, "turns in flight at the signal completed");
    assert!(refused > 0, "requests during the drain were refused with 503");

    // Every answered message is stored once; no refused one is stored.
    let (mut server, base) = serve(&data_dir, &fake.base_url());
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for agent in &agents {
        let url = format!("{base}/v1/agents/{agent}/messages?limit=1000");
        for message in call(&http, reqwest::Method::GET, url, None).await.as_array().unwrap() {
            if message["message_type"] == "user_message" {
                *stored.entry(message["content"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
    }
    for (agent, text, outcome) in &outcomes {
        let count = stored.get(text).copied().unwrap_or(0);
        match outcome {
            Outcome::Answered(_) => assert_eq!(count, 1, "answered {text:?} to {agent} is stored once"),
            _ => assert_eq!(count, 0, "refused {text:?} to {agent} ({outcome:?}) is not stored"),
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
