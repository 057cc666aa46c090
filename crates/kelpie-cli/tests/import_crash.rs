//! A multi-agent import survives a kill -9 of the server: a Letta agent
//! file of 20 agents with their messages, sharing a block, in a round robin
//! and a supervisor group, is imported; the server is killed while its
//! agents appear (or earlier), and started again on the same data dir.
//! Every agent of the file is then listed exactly once with its groups, or
//! none is: never a part of the file.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kelpie_llm::fake::FakeLlm;
use serde_json::{json, Value};
use support::{call, serve};

/// Agents of the file, and messages of each.
const AGENTS_COUNT: usize = 20;
const MESSAGES_PER_AGENT_COUNT: usize = 400;
/// How long the agents may take to appear after the restart.
const SETTLE_TIMEOUT_MS: u64 = 30_000;
/// How long nothing must appear for "none of the file" to hold.
const NOTHING_QUIET_MS: u64 = 5_000;
const BOUNDARY: &str = "kelpie-import-crash-boundary";

fn text(content: &str) -> Value {
    json!([{"type": "text", "text": content}])
}

fn team_file() -> Vec<u8> {
    let agents: Vec<Value> = (0..AGENTS_COUNT)
        .map(|n| {
            let messages: Vec<Value> = (0..MESSAGES_PER_AGENT_COUNT)
                .map(|m| {
                    let role = if m % 2 == 0 { "user" } else { "assistant" };
                    json!({"id": format!("message-{}", n * MESSAGES_PER_AGENT_COUNT + m), "role": role,
                           "content": text(&format!("crash-team-{n} line {m}: the tide comes in and goes out"))})
                })
                .collect();
            json!({
                "id": format!("agent-{n}"), "name": format!("crash-team-{n:02}"), "system": "You row.",
                "block_ids": ["block-0", format!("block-{}", n + 1)], "tool_ids": [], "tool_rules": [],
                "llm_config": {"handle": "openai-proxy/fake-gpt", "context_window": 16000},
                "messages": messages,
            })
        })
        .collect();
    let mut blocks =
        vec![json!({"id": "block-0", "label": "human", "value": "The crew's captain.", "limit": 2000})];
    blocks.extend((0..AGENTS_COUNT).map(|n| {
        json!({"id": format!("block-{}", n + 1), "label": "persona", "value": format!("Rower {n}."), "limit": 2000})
    }));
    let everyone: Vec<String> = (0..AGENTS_COUNT).map(|n| format!("agent-{n}")).collect();
    let file = json!({
        "agents": agents,
        "groups": [
            {"id": "group-0", "agent_ids": everyone, "description": "crash crew",
             "manager_config": {"manager_type": "round_robin"}},
            {"id": "group-1", "agent_ids": everyone[1..], "description": "crash cox",
             "manager_config": {"manager_type": "supervisor", "manager_agent_id": "agent-0"}},
        ],
        "blocks": blocks, "tools": [], "files": [], "sources": [], "mcp_servers": [],
    });
    serde_json::to_vec(&file).unwrap()
}

fn form(file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"crew.af\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(
        format!(
            "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"append_copy_suffix\"\r\n\r\nfalse\r\n--{BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    body
}

/// The file's agents listed, by name → ids.
async fn crew(http: &reqwest::Client, base: &str) -> BTreeMap<String, Vec<String>> {
    let listed = call(http, reqwest::Method::GET, format!("{base}/v1/agents/?limit=1000"), None).await;
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for agent in listed.as_array().unwrap() {
        let name = agent["name"].as_str().unwrap();
        if name.starts_with("crash-team-") {
            by_name.entry(name.to_string()).or_default().push(agent["id"].as_str().unwrap().to_string());
        }
    }
    by_name
}

/// Whole: every agent once, each with its messages and the shared block,
/// in the two groups. Or nothing of the file at all.
async fn assert_whole_or_nothing(http: &reqwest::Client, base: &str, must_be_whole: bool) -> bool {
    let started = Instant::now();
    let crew = loop {
        let crew = crew(http, base).await;
        let waited = started.elapsed().as_millis() as u64;
        if crew.len() == AGENTS_COUNT || (crew.is_empty() && !must_be_whole && waited > NOTHING_QUIET_MS) {
            break crew;
        }
        assert!(waited < SETTLE_TIMEOUT_MS, "{} of {AGENTS_COUNT} agents after the restart", crew.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let groups = call(http, reqwest::Method::GET, format!("{base}/v1/groups/?limit=1000"), None).await;
    let groups: Vec<&Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["description"].as_str().unwrap().starts_with("crash "))
        .collect();
    if crew.is_empty() {
        assert_eq!(groups, Vec::<&Value>::new(), "no agent, no group");
        return false;
    }
    assert!(crew.values().all(|ids| ids.len() == 1), "each agent once: {crew:?}");
    let ids: Vec<String> = crew.values().map(|ids| ids[0].clone()).collect();
    assert_eq!(groups.len(), 2, "each group once: {groups:?}");
    let round_robin = groups.iter().find(|g| g["manager_type"] == "round_robin").unwrap();
    assert_eq!(round_robin["agent_ids"], json!(ids));
    let supervisor = groups.iter().find(|g| g["manager_type"] == "supervisor").unwrap();
    assert_eq!(supervisor["manager_agent_id"], json!(ids[0]));
    assert_eq!(supervisor["agent_ids"], json!(ids[1..]));
    let mut human_ids = Vec::new();
    for id in ids.iter().step_by(7) {
        let agent = call(http, reqwest::Method::GET, format!("{base}/v1/agents/{id}"), None).await;
        human_ids.push(agent["blocks"][0]["id"].clone());
        let messages =
            call(http, reqwest::Method::GET, format!("{base}/v1/agents/{id}/messages?limit=1000"), None)
                .await;
        assert_eq!(messages.as_array().unwrap().len(), MESSAGES_PER_AGENT_COUNT, "{id}");
    }
    assert!(human_ids.iter().all(|id| *id == human_ids[0]), "one shared block: {human_ids:?}");
    let block = human_ids[0].as_str().unwrap();
    let holders =
        call(http, reqwest::Method::GET, format!("{base}/v1/blocks/{block}/agents?limit=1000"), None).await;
    assert_eq!(holders.as_array().unwrap().len(), AGENTS_COUNT);
    true
}

/// Imports the file and kills the server once `kill_when` says so, given
/// the file's agents listed and the time since the upload began; how many
/// were listed at the kill.
async fn import_and_kill(
    fake: &FakeLlm,
    data_dir: &std::path::Path,
    kill_when: impl Fn(usize, Duration) -> bool,
) -> usize {
    let http = reqwest::Client::new();
    let (mut server, base) = serve(data_dir, &fake.base_url());
    let upload = {
        let (http, base, body) = (http.clone(), base.clone(), form(&team_file()));
        tokio::spawn(async move {
            http.post(format!("{base}/v1/agents/import"))
                .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
                .body(body)
                .send()
                .await
        })
    };
    let started = Instant::now();
    let seen = loop {
        let seen = crew(&http, &base).await.len();
        if kill_when(seen, started.elapsed()) {
            break seen;
        }
        assert!(started.elapsed() < Duration::from_millis(SETTLE_TIMEOUT_MS), "the import never got there");
    };
    server.kill().unwrap();
    server.wait().unwrap();
    drop(upload.await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_agent_import_killed_while_its_agents_appear_is_whole_after_the_restart() {
    let fake = FakeLlm::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = reqwest::Client::new();

    // Killed as soon as the first agent is listed: past the decision.
    let dir = tempfile::tempdir().unwrap();
    let seen = import_and_kill(&fake, dir.path(), |seen, _| seen > 0).await;
    let (mut server, base) = serve(dir.path(), &fake.base_url());
    assert!(assert_whole_or_nothing(&http, &base, true).await, "killed with {seen} listed: all appear");
    eprintln!("killed with {seen} of {AGENTS_COUNT} agents listed; all {AGENTS_COUNT} after the restart");
    server.kill().unwrap();
    server.wait().unwrap();

    // Killed a moment into the upload: before the decision, or after it.
    for delay_ms in [30, 300] {
        let dir = tempfile::tempdir().unwrap();
        let seen = import_and_kill(&fake, dir.path(), |seen, waited| {
            seen > 0 || waited >= Duration::from_millis(delay_ms)
        })
        .await;
        let (mut server, base) = serve(dir.path(), &fake.base_url());
        let whole = assert_whole_or_nothing(&http, &base, seen > 0).await;
        eprintln!("killed {delay_ms} ms in with {seen} listed: {}", if whole { "all" } else { "none" });
        server.kill().unwrap();
        server.wait().unwrap();
    }
}
