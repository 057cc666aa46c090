//! The harness shared by the multi-process tests and the cluster
//! benchmark: a real PostgreSQL, the fake LLM in this process, real
//! `kelpie serve --cluster` processes on loopback (spawned, signalled,
//! killed), a fault-injecting TCP proxy, and the client calls the tests make
//! (create an agent, send a message and see who served it, read a history);
//! and one `kelpie serve` on the embedded store ([`serve`]).
//!
//! Tests include it with `mod support;`, benches with
//! `#[path = "../tests/support/mod.rs"] mod support;`. Each includer uses a
//! part of it, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kelpie_llm::fake::FakeLlm;
use kelpie_storage::test_support::PostgresServer;
use serde_json::{json, Value};

/// What every node the harness starts shares to authenticate its transport.
pub const CLUSTER_SECRET: &str = "the test cluster's shared secret";
/// Upper bound on one HTTP request of a client; only to avoid hangs.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Upper bound on a node's start-up (until it listens for HTTP).
pub const STARTUP_TIMEOUT_MS: u64 = 60_000;
/// Largest history the tests read back in one request.
pub const HISTORY_MESSAGES_COUNT_MAX: usize = 1_000;
/// Reads of one agent's history before giving up.
pub const HISTORY_READ_ATTEMPTS_COUNT_MAX: usize = 20;
/// Pause before reading a history again after a retriable error.
const HISTORY_RETRY_PAUSE_MS: u64 = 200;
/// Worker threads of the in-process runtime (fake LLM, proxies, clients).
const RUNTIME_WORKER_THREADS_COUNT: usize = 2;

/// A free TCP port on 127.0.0.1 (free when asked), never one this process
/// handed out before: two nodes of a test never get the same port, even
/// after the first released it (a restarted node's old address must not
/// become another node's).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// 127.0.0.1 on a free port.
pub fn free_loopback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// What every cluster run needs besides its nodes: PostgreSQL, the fake
/// LLM, a tokio runtime for clients and proxies, a data directory and an
/// HTTP client.
pub struct Harness {
    pub postgres: PostgresServer,
    pub runtime: tokio::runtime::Runtime,
    /// Kept alive for the nodes; they reach it at `llm_url`.
    pub fake: FakeLlm,
    pub llm_url: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Harness {
    /// Fails when this machine has no PostgreSQL binaries, unless
    /// `KELPIE_SKIP_POSTGRES=1` asks to skip (`None`).
    pub fn start(test: &str) -> Option<Harness> {
        Self::start_with(test, &[])
    }

    /// [`Self::start`] with extra PostgreSQL settings (`name=value`).
    pub fn start_with(test: &str, postgres_settings: &[&str]) -> Option<Harness> {
        let postgres = PostgresServer::start_with_or_skip(test, postgres_settings)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKER_THREADS_COUNT)
            .enable_all()
            .build()
            .unwrap();
        let fake = runtime.block_on(FakeLlm::start("127.0.0.1:0".parse().unwrap())).expect("fake LLM");
        let llm_url = fake.base_url();
        let client =
            reqwest::Client::builder().timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)).build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        Some(Harness { postgres, runtime, fake, llm_url, dir, client })
    }

    /// A fresh database; returns its URL.
    pub fn database(&self, name: &str) -> String {
        self.postgres.create_database(name).expect("create database")
    }

    /// Starts `node` against `database_url` and waits until it serves HTTP.
    pub fn spawn(&self, node: &mut NodeProcess, database_url: &str) {
        node.spawn(database_url, &self.llm_url, self.dir.path());
    }
}

/// One `kelpie serve --cluster` process.
pub struct NodeProcess {
    pub name: String,
    pub http: SocketAddr,
    /// The transport address other nodes are told (in the node table).
    pub advertise: SocketAddr,
    /// Where the transport listens, when not on `advertise` (a proxy sits
    /// in between).
    pub listen: Option<SocketAddr>,
    /// Extra environment of the process (cluster TLS files, say).
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl NodeProcess {
    /// A node named `name` on free loopback ports, not started.
    pub fn new(name: &str) -> NodeProcess {
        NodeProcess {
            name: name.to_string(),
            http: free_loopback_addr(),
            advertise: free_loopback_addr(),
            listen: None,
            env: Vec::new(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Starts the process and waits until it listens for HTTP.
    pub fn spawn(&mut self, database_url: &str, llm_url: &str, data_dir: &Path) {
        self.start(database_url, llm_url, data_dir).wait();
    }

    /// Starts the process; the answer says when it listens for HTTP (or
    /// that it exited first, with what it printed).
    pub fn start(&mut self, database_url: &str, llm_url: &str, data_dir: &Path) -> Readiness {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelpie"));
        for (name, _) in std::env::vars() {
            if name.starts_with("KELPIE_") || name.starts_with("OPENAI_") || name.starts_with("ANTHROPIC_") {
                cmd.env_remove(name);
            }
        }
        cmd.args(["serve", "--cluster", "--database-url", database_url, "--node-id", &self.name])
            .args(["--advertise", &self.advertise.to_string(), "--bind", &self.http.to_string()])
            .args(["--data-dir", data_dir.join(&self.name).to_str().unwrap()]);
        if let Some(listen) = self.listen {
            cmd.args(["--cluster-listen", &listen.to_string()]);
        }
        let mut child = cmd
            .env("OPENAI_BASE_URL", llm_url)
            .env("KELPIE_DEFAULT_MODEL", "openai-proxy/fake-gpt")
            .env("KELPIE_LOG", "warn")
            .env("KELPIE_CLUSTER_SECRET", CLUSTER_SECRET)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kelpie");
        let stderr = child.stderr.take().unwrap();
        self.child = Some(child);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = self.name.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            let mut printed = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on http://") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                if line.contains("ERROR") || line.contains("panicked") {
                    eprintln!("[{name}] {line}");
                }
                if ready.is_some() {
                    printed.push(line);
                }
            }
            if let Some(tx) = ready {
                let _ = tx.send(Err(printed.join("\n")));
            }
        });
        Readiness { name: self.name.clone(), ready: ready_rx }
    }

    /// Sends `signal` (as `kill` spells it: `-STOP`, `-CONT`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success(), "kill {signal}");
    }

    /// Picks new free ports (after a port it was given was taken in the
    /// meantime by another socket of this machine).
    pub fn move_ports(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.http = free_loopback_addr();
        self.advertise = free_loopback_addr();
    }

    /// Reaps a process that exited by itself.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.take().unwrap().wait();
    }

    /// SIGTERM (leave the cluster, drain), then asserts a clean exit.
    pub fn stop_cleanly(&mut self) {
        self.signal("-TERM");
        let status = self.child.take().unwrap().wait().unwrap();
        assert!(status.success(), "{} left cleanly: {status:?}", self.name);
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

/// Whether a started node came to listen for HTTP.
pub struct Readiness {
    name: String,
    ready: std::sync::mpsc::Receiver<Result<(), String>>,
}

impl Readiness {
    /// Waits until the node listens; panics with what it printed when it
    /// exited first, or after `STARTUP_TIMEOUT_MS`.
    pub fn wait(self) {
        let name = self.name.clone();
        if let Err(printed) = self.outcome() {
            panic!("{name} exited before listening:\n{printed}");
        }
    }

    /// Waits until the node listens (`Ok`) or exits first (`Err` with what
    /// it printed); panics after `STARTUP_TIMEOUT_MS`.
    pub fn outcome(self) -> Result<(), String> {
        match self.ready.recv_timeout(Duration::from_millis(STARTUP_TIMEOUT_MS)) {
            Ok(outcome) => outcome,
            Err(_) => panic!("{} never listened", self.name),
        }
    }
}

/// The answer to one `POST /v1/agents/{id}/messages`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// A success status whose reply echoes the text: the message is committed.
    pub acked: bool,
    /// `x-kelpie-served-by`, when the node answered at all.
    pub served_by: Option<String>,
    /// Why it was not acknowledged: the transport error, or the status and
    /// the start of the body (empty when acknowledged).
    pub why: String,
}

/// Creates an agent with one `human` block through `url`; returns its id.
pub async fn create_agent(client: &reqwest::Client, url: &str, name: &str) -> String {
    let body = json!({"name": name, "memory_blocks": [{"label": "human", "value": "tester"}]});
    let response = client.post(format!("{url}/v1/agents/")).json(&body).send().await.expect("create agent");
    let status = response.status();
    let text = response.text().await.expect("answer body");
    assert!(status.is_success(), "create {name} through {url}: {status} {text}");
    let created: Value = serde_json::from_str(&text).expect("agent JSON");
    created["id"].as_str().expect("agent id").to_string()
}

/// Characters of an unacknowledged answer's body kept in [`Delivery::why`].
const DELIVERY_WHY_CHARS_MAX: usize = 400;

/// Sends `text` to `agent` through `url`. Transport errors and error
/// statuses are unacknowledged deliveries, not panics: they are what the
/// fault tests provoke.
pub async fn send_message(client: &reqwest::Client, url: &str, agent: &str, text: &str) -> Delivery {
    let body = json!({"messages": [{"role": "user", "content": text}]});
    let response = match client.post(format!("{url}/v1/agents/{agent}/messages")).json(&body).send().await {
        Ok(response) => response,
        Err(err) => return Delivery { acked: false, served_by: None, why: format!("transport: {err}") },
    };
    let served_by =
        response.headers().get("x-kelpie-served-by").and_then(|v| v.to_str().ok()).map(str::to_string);
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let start: String = body.chars().take(DELIVERY_WHY_CHARS_MAX).collect();
    if !status.is_success() {
        return Delivery { acked: false, served_by, why: format!("{status}: {start}") };
    }
    let reply: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let acked = reply["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["message_type"] == "assistant_message" && m["content"] == format!("echo: {text}"));
    let why = if acked { String::new() } else { format!("{status} without the echo: {start}") };
    Delivery { acked, served_by, why }
}

/// The user and assistant messages of `agent`'s history, oldest first, as
/// `(message_type, content)`. A read that meets the agent mid-move (a
/// retriable error) is tried again, at most [`HISTORY_READ_ATTEMPTS_COUNT_MAX`] times.
pub async fn history_turns(client: &reqwest::Client, url: &str, agent: &str) -> Vec<(String, String)> {
    let mut last = None;
    for _ in 0..HISTORY_READ_ATTEMPTS_COUNT_MAX {
        let response = client
            .get(format!("{url}/v1/agents/{agent}/messages?limit={HISTORY_MESSAGES_COUNT_MAX}&order=asc"))
            .send()
            .await
            .expect("read history");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let Some(messages) = body.as_array().filter(|_| status.is_success()) else {
            last = Some((status, body));
            tokio::time::sleep(Duration::from_millis(HISTORY_RETRY_PAUSE_MS)).await;
            continue;
        };
        assert!(messages.len() < HISTORY_MESSAGES_COUNT_MAX, "{agent}: history longer than one page");
        return messages
            .iter()
            .filter_map(|m| {
                let kind = m["message_type"].as_str()?;
                let text = m["content"].as_str()?.to_string();
                matches!(kind, "user_message" | "assistant_message").then(|| (kind.to_string(), text))
            })
            .collect();
    }
    panic!("history of {agent} unreadable: {last:?}");
}

/// `GET /v1/cluster/nodes` through `url`: `(node_id, status, liveness)`
/// of every member, in the order the node lists them.
pub async fn cluster_members(client: &reqwest::Client, url: &str) -> Vec<(String, String, String)> {
    let view: Value = client
        .get(format!("{url}/v1/cluster/nodes"))
        .send()
        .await
        .expect("cluster view")
        .json()
        .await
        .expect("cluster view JSON");
    let field = |node: &Value, name: &str| node[name].as_str().unwrap_or("?").to_string();
    view["nodes"]
        .as_array()
        .expect("node list")
        .iter()
        .map(|node| (field(node, "node_id"), field(node, "status"), field(node, "liveness")))
        .collect()
}

/// A small deterministic generator so a run's choices are reproducible.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: usize) -> usize {
        assert!(below > 0);
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % below as u64) as usize
    }
}

/// `kelpie serve` on a free port of 127.0.0.1 over `data_dir`; its base URL.
pub fn serve(data_dir: &std::path::Path, llm: &str) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kelpie"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KELPIE_") || name.starts_with("OPENAI_") || name.starts_with("ANTHROPIC_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()])
        .env("OPENAI_BASE_URL", llm)
        .env("KELPIE_DEFAULT_MODEL", "openai-proxy/fake-gpt")
        .env("KELPIE_LOG", "warn,kelpie=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the server exited before listening");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while stderr.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    (child, format!("http://{addr}"))
}

/// `method url` with a JSON `body`; the answer's JSON, asserting a success status.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Value {
    let mut request = http.request(method, &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|err| panic!("{url}: {err}"));
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {value}");
    value
}
