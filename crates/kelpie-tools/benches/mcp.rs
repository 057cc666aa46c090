//! What an MCP tool call costs through Kelpie's client: sequential calls of
//! the reference server's `echo` (`mcp-server-everything`, node) over stdio
//! in the process sandbox, streamable HTTP and legacy SSE on 127.0.0.1, p50
//! and p99 of the whole round trip (client, transport, the server's own
//! work), then 8 calls in flight at once on one connection. The server's
//! own work for `echo` is a few microseconds of JavaScript, so the round
//! trip bounds the overhead above; a bare client of the same server (JSON
//! lines on the pipes of an unsandboxed process; one kept-alive HTTP
//! connection) gives the server's own time, and the difference is what
//! Kelpie's client and sandbox add. The first call (connection,
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

fn p50_p99(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn call_line(id: usize) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": id.to_string()}}})
    .to_string()
}

fn initialize_line() -> String {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
    .to_string()
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The server alone over stdio: JSON lines on the pipes of an unsandboxed process.
fn bare_stdio() -> (f64, f64) {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new("mcp-server-everything")
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(stdin, "{}", initialize_line()).unwrap();
    stdout.read_line(&mut line).unwrap();
    writeln!(stdin, "{INITIALIZED}").unwrap();
    let mut times = Vec::new();
    for id in 1..=WARMUP_CALLS_COUNT + CALLS_COUNT {
        let started = Instant::now();
        writeln!(stdin, "{}", call_line(id)).unwrap();
        loop {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            if line.contains(&format!("\"id\":{id}")) {
                break;
            }
        }
        if id > WARMUP_CALLS_COUNT {
            times.push(started.elapsed());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    p50_p99(times)
}

/// The server alone over streamable HTTP: one kept-alive connection.
async fn bare_http(url: &str) -> (f64, f64) {
    let http = reqwest::Client::builder().tcp_nodelay(true).build().unwrap();
    let post = |body: String, session: Option<&str>| {
        let mut request = http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json, text/event-stream")
            .body(body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session).header("mcp-protocol-version", "2025-06-18");
        }
        request.send()
    };
    let response = post(initialize_line(), None).await.unwrap();
    let session = response.headers()["mcp-session-id"].to_str().unwrap().to_string();
    response.text().await.unwrap();
    post(INITIALIZED.to_string(), Some(&session)).await.unwrap().text().await.unwrap();
    let mut times = Vec::new();
    for id in 1..=WARMUP_CALLS_COUNT + CALLS_COUNT {
        let started = Instant::now();
        let text = post(call_line(id), Some(&session)).await.unwrap().text().await.unwrap();
        assert!(text.contains(&format!("Echo: {id}")), "{text}");
        if id > WARMUP_CALLS_COUNT {
            times.push(started.elapsed());
        }
    }
    p50_p99(times)
}

async fn measure(name: &str, client: McpClient, bare: Option<(f64, f64)>) {
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
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "{name:>16}: first call {first_ms:7.1} ms; round trip p50 {p50:.2} ms, p99 {p99:.2} ms; {IN_FLIGHT_COUNT} in flight: {rate:.0} calls/s"
    );
    if let Some((bare_p50, bare_p99)) = bare {
        println!(
            "{:>16}  the server alone p50 {bare_p50:.2} ms, p99 {bare_p99:.2} ms: Kelpie adds p50 {:.2} ms",
            "",
            p50 - bare_p50
        );
    }
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
    let bare = bare_stdio();
    let client = McpClient::new(stdio, McpSettings::default(), Arc::clone(&runner));
    measure("stdio (sandbox)", client, Some(bare)).await;
    let (_http, port) = http_server("streamableHttp");
    let url = format!("http://127.0.0.1:{port}/mcp");
    let bare = bare_http(&url).await;
    let http = McpTransport::StreamableHttp { url, headers: Vec::new() };
    measure("streamable HTTP", McpClient::new(http, local, Arc::clone(&runner)), Some(bare)).await;
    let (_sse, port) = http_server("sse");
    let sse = McpTransport::Sse { url: format!("http://127.0.0.1:{port}/sse"), headers: Vec::new() };
    measure("SSE", McpClient::new(sse, local, Arc::clone(&runner)), None).await;
    runner.shutdown().await;
}
