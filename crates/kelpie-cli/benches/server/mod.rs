//! The server the kelpie-cli benches measure: a real `kelpie serve` process
//! on a free port of 127.0.0.1 over a temp dir, its log discarded, with the
//! process counters the benches report (CPU time, resident memory).
//! `KELPIE_BENCH_SERVER_BIN` runs another build of `kelpie` as the server.
//!
//! Benches include it with `mod server;`; each uses a part of it.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound on the server's start-up, only to end a hung run.
const HEALTH_WAIT_MS: u64 = 30_000;
const MIB_BYTES: f64 = 1024.0 * 1024.0;

pub struct Server {
    pub child: Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub async fn start(http: &reqwest::Client, llm_url: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        // `KELPIE_BENCH_SERVER_BIN`: another build of the server to measure
        // (before/after comparisons with the same client and fake LLM).
        let bin =
            std::env::var("KELPIE_BENCH_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kelpie").into());
        let child = Command::new(bin)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path())
            .env("OPENAI_BASE_URL", llm_url)
            .env("KELPIE_DEFAULT_MODEL", "openai-proxy/fake-gpt")
            .env("KELPIE_SANDBOX_WARM", "0")
            .env_remove("KELPIE_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kelpie serve");
        let server = Server { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
        let started = Instant::now();
        while http
            .get(format!("{}/v1/health/", server.base))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(started.elapsed() < Duration::from_millis(HEALTH_WAIT_MS), "server never became healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// CPU time the server process has used so far, in ms.
    pub fn cpu_ms(&self) -> f64 {
        process_cpu_ms(&self.child.id().to_string())
    }

    pub fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let line = status.lines().find(|line| line.starts_with(field)).expect("field");
        let kib: f64 = line.split_whitespace().nth(1).expect("value").parse().expect("number");
        kib * 1024.0 / MIB_BYTES
    }
}

/// CPU time (user + system) process `pid` ("self" for this one) has used,
/// in ms, from `/proc/<pid>/stat` in clock ticks of `getconf CLK_TCK`.
pub fn process_cpu_ms(pid: &str) -> f64 {
    static TICKS_PER_S: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks_per_s = *TICKS_PER_S.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK")
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command (which may hold spaces): state is field 3,
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("command").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks * 1e3 / ticks_per_s
}

/// `request`'s answer, failing the bench (with the body) on an error status.
pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = request.send().await.expect("request");
    if !response.status().is_success() {
        let status = response.status();
        panic!("{status}: {}", response.text().await.unwrap_or_default());
    }
    response
}
