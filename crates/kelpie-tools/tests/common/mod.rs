//! What the MCP tests share: the sandboxed tool runner and the reference
//! server `mcp-server-everything` started on a free port of 127.0.0.1.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::Backend;
use kelpie_tools::{RunnerSettings, ToolRunner};

pub const EVERYTHING: &str = "mcp-server-everything";

pub fn runner() -> (tempfile::TempDir, Arc<ToolRunner>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(ProcessBackend::open(dir.path().join("run")));
    if let Err(err) = backend.check_available() {
        panic!("this test needs the process sandbox backend: {err}");
    }
    let settings = RunnerSettings::new("/usr/bin/python3", dir.path().join("pip"));
    (dir, Arc::new(ToolRunner::new(backend, settings)))
}

pub fn everything_path() -> String {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(EVERYTHING))
        .find(|path| path.is_file());
    match found {
        Some(path) => path.display().to_string(),
        None => panic!(
            "this test needs {EVERYTHING} on the PATH: npm install -g @modelcontextprotocol/server-everything"
        ),
    }
}

/// `mcp-server-everything <transport>` on a free port of 127.0.0.1, killed on drop.
pub struct HttpServer {
    child: Child,
    pub port: u16,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_http(transport: &str) -> HttpServer {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(everything_path())
        .arg(transport)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{EVERYTHING} {transport} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    HttpServer { child, port }
}
