//! Two server nodes in this process on one real PostgreSQL: the routes
//! that run an agent's turn without a `/v1/agents/{agent_id}` path run it on
//! the node that owns the agent when they are called through the other
//! node: conversations (create, a turn whole and streamed, `default` with
//! the agent in the body), chat completions (whole, streamed, a body past
//! the forwarding limit), group turns (round robin members, sleeptime
//! members, reset; with an API key both nodes require) and message batches
//! (their runs, cancel). Every message is stored once, read back through
//! the owner.

mod common;

use std::time::{Duration, Instant};

use common::Running;
use kelpie_cluster::rebalance::REBALANCE_INTERVAL_MS;
use kelpie_server::forward::{FORWARDED_BODY_BYTES_MAX, SERVED_BY_HEADER};
use kelpie_storage::test_support::PostgresServer;
use serde_json::{json, Value};

/// Generous bound on waiting for a run, a batch or the membership view;
/// never a timing assertion.
const WAIT_MS_MAX: u64 = 30_000;
const POLL_MS: u64 = 50;
const NAP: &str = "import time\ndef nap(seconds: int) -> str:\n    \"\"\"Sleep.\"\"\"\n    time.sleep(seconds)\n    return 'rested'\n";

/// Node `n1` (`a`), which the tests make own their agents, and node `n2`
/// (`b`), through which the routes are called.
struct Cluster {
    a: Running,
    b: Running,
    _fake: kelpie_llm::fake::FakeLlm,
    _dir: tempfile::TempDir,
    _postgres: PostgresServer,
}

impl Cluster {
    async fn start(database: &str) -> Option<Cluster> {
        Cluster::start_with(database, None).await
    }

    /// With `api_key`, both nodes require it and the test's clients send it.
    async fn start_with(database: &str, api_key: Option<&str>) -> Option<Cluster> {
        let postgres = PostgresServer::start_or_skip(database)?;
        let url = postgres.create_database(database).expect("create database");
        let fake = common::fake_llm().await;
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<(&str, &str)> = api_key.map(|key| ("api_key", key)).into_iter().collect();
        let mut a = common::start_cluster_node_with(dir.path(), &fake, &url, "n1", &extra).await;
        let mut b = common::start_cluster_node_with(dir.path(), &fake, &url, "n2", &extra).await;
        if let Some(key) = api_key {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
            let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
            (a.http, b.http) = (client.clone(), client);
        }
        // n1 sees n2 join while it owns no agent, so none of the agents the
        // test makes it own is moved to n2 by a rebalance: wait until it
        // sees n2, then for its rebalancing rounds to note it.
        let started = Instant::now();
        loop {
            let nodes = a.ok("GET", "/v1/cluster/nodes", None).await;
            let routable =
                nodes["nodes"].as_array().unwrap().iter().filter(|n| n["routable"] == true).count();
            if routable == 2 {
                break;
            }
            assert!(started.elapsed() < Duration::from_millis(WAIT_MS_MAX), "n1 never saw n2: {nodes}");
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        tokio::time::sleep(Duration::from_millis(3 * REBALANCE_INTERVAL_MS)).await;
        Some(Cluster { a, b, _fake: fake, _dir: dir, _postgres: postgres })
    }

    /// A new agent that `n1` owns (its first turn ran there), checked
    /// through `n2`.
    async fn agent_on_a(&self, name: &str) -> String {
        let agent = self.a.create_agent(name, &[]).await;
        self.a.say(&agent, &format!("{name} warm-up")).await;
        self.assert_owner(&agent, "n1").await;
        agent
    }

    /// Asks for `agent` through `n2` and checks which node served it.
    async fn assert_owner(&self, agent: &str, node: &str) {
        let response = self.b.http.get(format!("{}/v1/agents/{agent}", self.b.base)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[SERVED_BY_HEADER], node, "{agent} is owned by {node}");
    }

    async fn shutdown(self) {
        self.b.shutdown().await;
        self.a.shutdown().await;
    }
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// A request through `node`: its status, the node that served it and its
/// body (JSON, or the text).
async fn call(node: &Running, method: &str, path: &str, body: Value) -> (u16, Option<String>, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response =
        node.http.request(method, format!("{}{path}", node.base)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let served_by = response.headers().get(SERVED_BY_HEADER).map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    (status, served_by, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn texts_of(messages: &Value, kind: &str) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == kind)
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect()
}

/// The user messages of a history (a messages listing path), oldest first.
async fn user_texts(node: &Running, path: &str) -> Vec<String> {
    texts_of(&node.ok("GET", &format!("{path}?order=asc&limit=1000"), None).await, "user_message")
}

/// Reads `path` through `node` until `done` holds for it.
async fn eventually(node: &Running, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let value = node.ok("GET", path, None).await;
        if done(&value) {
            return value;
        }
        assert!(started.elapsed() < Duration::from_millis(WAIT_MS_MAX), "{path} never got there: {value}");
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_turns_through_another_node_run_on_the_owner() {
    let Some(cluster) = Cluster::start("turns_conversations").await else { return };
    let (a, b) = (&cluster.a, &cluster.b);
    let agent = cluster.agent_on_a("talker").await;

    // Created through n2 (the agent named in the query), by n1.
    let (status, served_by, conversation) =
        call(b, "POST", &format!("/v1/conversations/?agent_id={agent}"), json!({"summary": "chat"})).await;
    assert_eq!((status, served_by.as_deref()), (200, Some("n1")), "{conversation}");
    let id = conversation["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("conv-"), "{conversation}");
    assert_eq!(
        (conversation["agent_id"].as_str(), conversation["summary"].as_str()),
        (Some(&*agent), Some("chat"))
    );

    // A turn in it through n2, found by the conversation id alone.
    let path = format!("/v1/conversations/{id}/messages");
    let body = json!({"messages": [user("in the conversation")], "streaming": false});
    let (status, served_by, answer) = call(b, "POST", &path, body).await;
    assert_eq!((status, served_by.as_deref()), (200, Some("n1")), "{answer}");
    assert_eq!(texts_of(&answer["messages"], "assistant_message"), ["echo: in the conversation"]);
    assert_eq!(answer["stop_reason"]["stop_reason"], "end_turn");

    // A streamed turn through n2: the events come from n1 as they happen.
    let streamed = b
        .http
        .post(format!("{}{path}", b.base))
        .json(&json!({"messages": [user("streamed")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()[SERVED_BY_HEADER], "n1");
    assert!(streamed.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = streamed.text().await.unwrap();
    assert!(events.contains("\"echo: streamed\""), "{events}");
    assert!(events.trim_end().ends_with("data: [DONE]"), "{events}");

    // `default` with the agent named in the body: the agent's own history.
    let body = json!({"agent_id": agent, "messages": [user("own history")], "streaming": false});
    let (status, served_by, answer) = call(b, "POST", "/v1/conversations/default/messages", body).await;
    assert_eq!((status, served_by.as_deref()), (200, Some("n1")), "{answer}");
    assert_eq!(texts_of(&answer["messages"], "assistant_message"), ["echo: own history"]);

    // Read through n2 (served by n1) and back through n1: each message once.
    let (status, served_by, found) = call(b, "GET", &format!("/v1/conversations/{id}"), Value::Null).await;
    assert_eq!((status, served_by.as_deref(), found["id"].as_str()), (200, Some("n1"), Some(&*id)));
    assert_eq!(user_texts(a, &path).await, ["in the conversation", "streamed"]);
    let stored = a.ok("GET", &format!("{path}?order=asc&limit=1000"), None).await;
    assert_eq!(texts_of(&stored, "assistant_message"), ["echo: in the conversation", "echo: streamed"]);
    assert_eq!(
        user_texts(a, &format!("/v1/agents/{agent}/messages")).await,
        ["talker warm-up", "own history"]
    );
    cluster.assert_owner(&agent, "n1").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_through_another_node_run_on_the_owner() {
    let Some(cluster) = Cluster::start("turns_chat").await else { return };
    let (a, b) = (&cluster.a, &cluster.b);
    let agent = cluster.agent_on_a("chatter").await;

    let body = json!({"model": agent, "messages": [{"role": "system", "content": "x"}, user("whole")]});
    let (status, served_by, completion) = call(b, "POST", "/v1/chat/completions", body).await;
    assert_eq!((status, served_by.as_deref()), (200, Some("n1")), "{completion}");
    assert_eq!(completion["choices"][0]["message"]["content"], "echo: whole");

    let streamed = b
        .http
        .post(format!("{}/v1/chat/completions", b.base))
        .json(&json!({"model": agent, "stream": true, "messages": [user("in parts")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()[SERVED_BY_HEADER], "n1");
    let text = streamed.text().await.unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.trim_start_matches("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(content, "echo: in parts");

    // A body past what is read to find the agent is refused, nothing run.
    let padding = "x".repeat(FORWARDED_BODY_BYTES_MAX);
    let body = json!({"model": agent, "messages": [user("too big")], "padding": padding});
    let (status, served_by, answer) = call(b, "POST", "/v1/chat/completions", body).await;
    assert_eq!((status, served_by), (413, None), "{}", &answer.to_string()[..200]);
    assert!(answer["detail"].as_str().unwrap().contains("FORWARDED_BODY_BYTES_MAX"), "{answer}");

    let stored = format!("/v1/agents/{agent}/messages");
    assert_eq!(user_texts(a, &stored).await, ["chatter warm-up", "whole", "in parts"]);
    cluster.assert_owner(&agent, "n1").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_turns_through_another_node_run_each_member_on_its_owner() {
    // The member runs sent to n1 present the nodes' API key.
    let Some(cluster) = Cluster::start_with("turns_groups", Some("a key both nodes require")).await else {
        return;
    };
    let (status, _, listed) = call(&cluster.b, "GET", "/v1/groups/", Value::Null).await;
    assert_eq!(status, 200, "{listed}");
    let anonymous =
        reqwest::Client::new().get(format!("{}/v1/groups/", cluster.b.base)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the key is required");
    let (a, b) = (&cluster.a, &cluster.b);
    let ana = cluster.agent_on_a("ana").await;
    let bo = cluster.agent_on_a("bo").await;

    // A round robin turn asked of n2: each member's run runs on n1.
    let config = json!({"manager_type": "round_robin", "max_turns": 3});
    let body = json!({"agent_ids": [ana, bo], "description": "duo", "manager_config": config});
    let group_id = b.ok("POST", "/v1/groups/", Some(body)).await["id"].as_str().unwrap().to_string();
    let body = json!({"messages": [user("hello group")]});
    let answer = b.ok("POST", &format!("/v1/groups/{group_id}/messages"), Some(body)).await;
    assert_eq!(
        texts_of(&answer["messages"], "assistant_message"),
        ["echo: hello group", "echo: ana: echo: hello group", "echo: bo: echo: ana: echo: hello group"]
    );
    assert_eq!(answer["stop_reason"]["stop_reason"], "end_turn");
    let run_ids: Vec<String> =
        answer["usage"]["run_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().into()).collect();
    for (run_id, member) in run_ids.iter().zip([&ana, &bo, &ana]) {
        let run = b.ok("GET", &format!("/v1/runs/{run_id}"), None).await;
        assert_eq!((run["agent_id"].as_str(), run["status"].as_str()), (Some(&**member), Some("completed")));
    }
    let (ana_path, bo_path) = (format!("/v1/agents/{ana}/messages"), format!("/v1/agents/{bo}/messages"));
    assert_eq!(
        user_texts(a, &ana_path).await,
        ["ana warm-up", "hello group", "bo: echo: ana: echo: hello group"]
    );
    assert_eq!(user_texts(a, &bo_path).await, ["bo warm-up", "hello group", "ana: echo: hello group"]);
    cluster.assert_owner(&ana, "n1").await;
    cluster.assert_owner(&bo, "n1").await;

    // The group turn itself is served by n1, the owner of its first member,
    // so the group's turn lock is one for the cluster: two turns asked of
    // the two nodes at once run one after the other, never interleaved.
    let send = |node: &Running, text: &str| {
        let url = format!("{}/v1/groups/{group_id}/messages", node.base);
        node.http.post(url).json(&json!({"messages": [user(text)]})).send()
    };
    let (first, second) = tokio::join!(send(a, "from a"), send(b, "from b"));
    for response in [first.unwrap(), second.unwrap()] {
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[SERVED_BY_HEADER], "n1");
    }
    let seen = user_texts(a, &ana_path).await;
    let turn = |text: &str| vec![text.to_string(), format!("bo: echo: ana: echo: {text}")];
    let a_first = [turn("from a"), turn("from b")].concat();
    let b_first = [turn("from b"), turn("from a")].concat();
    assert!(seen[3..] == a_first[..] || seen[3..] == b_first[..], "interleaved group turns: {seen:?}");

    // A reset asked of n2 clears each member on its owner.
    b.ok("PATCH", &format!("/v1/groups/{group_id}/reset-messages"), None).await;
    assert_eq!(user_texts(a, &ana_path).await, Vec::<String>::new());
    assert_eq!(user_texts(a, &bo_path).await, Vec::<String>::new());

    // A sleeptime manager owned by n2 with a member owned by n1: after the
    // manager's turn on n2 the member's run runs on n1.
    let boss = b.create_agent("boss", &[]).await;
    b.say(&boss, "boss warm-up").await;
    let sleeper = cluster.agent_on_a("sleeper").await;
    let config = json!({"manager_type": "sleeptime", "manager_agent_id": boss});
    let body = json!({"agent_ids": [sleeper], "description": "", "manager_config": config});
    b.ok("POST", "/v1/groups/", Some(body)).await;
    b.ok("PATCH", &format!("/v1/agents/{boss}"), Some(json!({"enable_sleeptime": true}))).await;
    let response = a.http.get(format!("{}/v1/agents/{boss}", a.base)).send().await.unwrap();
    assert_eq!(response.headers()[SERVED_BY_HEADER], "n2", "the manager is owned by n2");
    let answer = b.say(&boss, "remember tea").await;
    let run_ids = answer["usage"]["run_ids"].as_array().unwrap().clone();
    assert_eq!(run_ids.len(), 2, "{answer}");
    let run_path = format!("/v1/runs/{}", run_ids[1].as_str().unwrap());
    let run = eventually(b, &run_path, |run| run["status"] != "running").await;
    assert_eq!(
        (run["agent_id"].as_str(), run["status"].as_str()),
        (Some(&*sleeper), Some("completed")),
        "{run}"
    );
    let prompts = user_texts(a, &format!("/v1/agents/{sleeper}/messages")).await;
    assert_eq!(prompts.len(), 2, "the warm-up and one sleeptime prompt: {prompts:?}");
    assert!(prompts[1].contains("user: remember tea"), "{prompts:?}");
    cluster.assert_owner(&sleeper, "n1").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_through_another_node_run_and_cancel_on_the_owner() {
    let Some(cluster) = Cluster::start("turns_batches").await else { return };
    let (a, b) = (&cluster.a, &cluster.b);
    let x = cluster.agent_on_a("x").await;
    let y = cluster.agent_on_a("y").await;

    let requests =
        json!([{"agent_id": x, "messages": [user("batch x")]}, {"agent_id": y, "input": "batch y"}]);
    let batch = b.ok("POST", "/v1/messages/batches", Some(json!({"requests": requests}))).await;
    let batch_path = format!("/v1/messages/batches/{}", batch["id"].as_str().unwrap());
    eventually(b, &batch_path, |batch| batch["status"] == "completed").await;
    for (agent, text) in [(&x, "batch x"), (&y, "batch y")] {
        let runs = b.ok("GET", &format!("/v1/runs/?agent_id={agent}"), None).await;
        let statuses: Vec<&str> =
            runs.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["completed", "completed"], "the warm-up and the batch's run: {runs}");
        let stored = a.ok("GET", &format!("/v1/agents/{agent}/messages?order=asc&limit=1000"), None).await;
        assert_eq!(texts_of(&stored, "user_message")[1..], [text.to_string()]);
        assert_eq!(texts_of(&stored, "assistant_message")[1..], [format!("echo: {text}")]);
        cluster.assert_owner(agent, "n1").await;
    }

    // A cancel asked of n2 stops the run on n1, where it runs.
    let tool = a.ok("PUT", "/v1/tools/", Some(json!({"source_code": NAP}))).await;
    let body = json!({"name": "sleepy", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]});
    let sleepy = a.ok("POST", "/v1/agents/", Some(body)).await["id"].as_str().unwrap().to_string();
    a.say(&sleepy, "sleepy warm-up").await;
    cluster.assert_owner(&sleepy, "n1").await;
    let requests = json!([{"agent_id": sleepy, "messages": [user("/call nap {\"seconds\": 60}")]}]);
    let batch = b.ok("POST", "/v1/messages/batches", Some(json!({"requests": requests}))).await;
    let runs_path = format!("/v1/runs/?agent_id={sleepy}");
    eventually(b, &runs_path, |runs| runs.as_array().unwrap().iter().any(|r| r["status"] == "running")).await;
    let cancelled =
        b.ok("PATCH", &format!("/v1/messages/batches/{}/cancel", batch["id"].as_str().unwrap()), None).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let runs = b.ok("GET", &runs_path, None).await;
    let mut statuses: Vec<&str> =
        runs.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["cancelled", "completed"], "the nap was stopped where it ran: {runs}");
    cluster.shutdown().await;
}
