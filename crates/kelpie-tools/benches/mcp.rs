//! What an MCP tool call costs through Kelpie's client: sequential calls of
//! the reference server's `echo` (`mcp-server-everything`, node) over stdio
//! in the process sandbox, streamable HTTP and legacy SSE on 127.0.0.1, p50
//! and p99 of the whole round trip (client, transport, the server's own
//! work), then 8 calls in flight at once on one connection. The server's
//! own work for `echo` is a few microseconds of JavaScript, so the round
//! trip is the overhead, bounded above. The first call (connection,
//! initialize, and for stdio the sandbox and node's start) is reported
//! apart.
//!
//! Run (as root, as the server runs): `cargo bench -p kelpie-tools --bench mcp`.
//! Needs bubblewrap and `npm install -g @modelcontextprotocol/server-everything`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::Backend;
use kelpie_tools::mcp::{McpClient, McpSettings, McpTransport};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::json;

const CALLS_COUNT: usize = 1_000;
const WARMUP_CALLS_COUNT: usize = 50;
const IN_FLIGHT_COUNT: usize = 8;

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_server(transport: &str) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("mcp-server-everything")
        .arg(transport)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mcp-server-everything (npm install -g @modelcontextprotocol/server-everything)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (Server(child), port)
}

async fn measure(name: &str, client: McpClient) {
    let started = Instant::now();
    client.call_tool("echo", &json!({"message": "first"})).await.expect("first call");
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    for i in 0..WARMUP_CALLS_COUNT {
        client.call_tool("echo", &json!({"message": i.to_string()})).await.unwrap();
    }
    let mut times = Vec::with_capacity(CALLS_COUNT);
    for i in 0..CALLS_COUNT {
        let started = Instant::now();
        let result = client.call_tool("echo", &json!({"message": i.to_string()})).await.unwrap();
        times.push(started.elapsed());
        assert_eq!(result.text, format!("Echo: {i}"));
    }
    times.sort();
    let client = Arc::new(client);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT_COUNT {
        let client = Arc::clone(&client);
        tasks.spawn(async move {
            for i in 0..CALLS_COUNT / IN_FLIGHT_COUNT {
                let message = format!("{worker}-{i}");
                let result = client.call_tool("echo", &json!({"message": message})).await.unwrap();
                assert_eq!(result.text, format!("Echo: {message}"));
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let rate = CALLS_COUNT as f64 / started.elapsed().as_secs_f64();
    println!(
        "{name:>16}: first call {first_ms:7.1} ms; round trip p50 {:.2} ms, p99 {:.2} ms; {IN_FLIGHT_COUNT} in flight: {rate:.0} calls/s",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    );
    client.close().await;
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(ProcessBackend::open(dir.path().join("run")));
    backend.check_available().expect("the process sandbox backend");
    let runner =
        Arc::new(ToolRunner::new(backend, RunnerSettings::new("/usr/bin/python3", dir.path().join("pip"))));
    let local = McpSettings { allow_internal_urls: true, stdio_network: false };
    println!("MCP echo through kelpie-tools' client ({CALLS_COUNT} sequential calls after {WARMUP_CALLS_COUNT} warm-up)");
    let stdio = McpTransport::Stdio {
        command: "mcp-server-everything".into(),
        args: vec!["stdio".into()],
        env: Vec::new(),
    };
    measure("stdio (sandbox)", McpClient::new(stdio, McpSettings::default(), Arc::clone(&runner))).await;
    let (_http, port) = http_server("streamableHttp");
    let http =
        McpTransport::StreamableHttp { url: format!("http://127.0.0.1:{port}/mcp"), headers: Vec::new() };
    measure("streamable HTTP", McpClient::new(http, local, Arc::clone(&runner))).await;
    let (_sse, port) = http_server("sse");
    let sse = McpTransport::Sse { url: format!("http://127.0.0.1:{port}/sse"), headers: Vec::new() };
    measure("SSE", McpClient::new(sse, local, Arc::clone(&runner))).await;
    runner.shutdown().await;
}
