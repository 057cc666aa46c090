//! What the tool tests share: a temp dir whose sandboxes the backend under
//! test makes, the sandboxed tool runner over it, a call with a given
//! environment, and the MCP reference server `mcp-server-everything`
//! started on a free port of 127.0.0.1.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::Backend;
use kelpie_tools::{RunnerSettings, ToolCall, ToolError, ToolRun, ToolRunner};
use serde_json::Value;

pub const EVERYTHING: &str = "mcp-server-everything";

/// A temp dir (readable by the sandbox's user) and the backend `open`
/// makes over its `run` subdir, checked available: a test that needs the
/// backend fails here, naming it, rather than skip.
pub fn sandbox_dir(
    open: fn(std::path::PathBuf) -> Arc<dyn Backend>,
) -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = open(dir.path().join("run"));
    if let Err(err) = backend.check_available() {
        panic!("this test needs the {} sandbox backend: {err}", backend.kind().name());
    }
    (dir, backend)
}

/// The process backend over `run`.
pub fn process_backend(run: std::path::PathBuf) -> Arc<dyn Backend> {
    Arc::new(ProcessBackend::open(run))
}

/// A runner on the process backend with the default settings but what
/// `edit` changes (pip's cache is in the temp dir).
pub fn runner_with(edit: impl FnOnce(&mut RunnerSettings)) -> (tempfile::TempDir, ToolRunner) {
    let (dir, backend) = sandbox_dir(process_backend);
    let mut settings = RunnerSettings::new("/usr/bin/python3", dir.path().join("pip"));
    edit(&mut settings);
    (dir, ToolRunner::new(backend, settings))
}

pub fn runner() -> (tempfile::TempDir, Arc<ToolRunner>) {
    let (dir, runner) = runner_with(|_| {});
    (dir, Arc::new(runner))
}

/// The environment [`call_given`] gives a call.
pub const GIVEN_ENV: (&str, &str) = ("GIVEN", "given-value");

/// A call of `name` defined in `source` with `args`, no network, its
/// environment [`GIVEN_ENV`].
pub async fn call_given(
    runner: &ToolRunner,
    source: &str,
    name: &str,
    args: Value,
) -> Result<ToolRun, ToolError> {
    let env = [(GIVEN_ENV.0.to_string(), GIVEN_ENV.1.to_string())];
    let call = ToolCall { source, name, args: &args, env: &env, network: false, requirements: &[] };
    runner.run_tool(call).await
}

/// What [`call_given`] returned (as JSON when it parses, else the text),
/// failing the test if the call failed or the tool raised.
pub async fn value_given(runner: &ToolRunner, source: &str, name: &str, args: Value) -> Value {
    let run = call_given(runner, source, name, args).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(run.ok, "{name} raised: {} / {}", run.result, run.stderr);
    serde_json::from_str(&run.result).unwrap_or(Value::String(run.result))
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
