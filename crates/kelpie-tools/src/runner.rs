//! [`ToolRunner`]: everything that runs code a user or a model wrote — the
//! schema derivation of a custom tool, its calls, the code interpreter, the
//! install of its packages — each in a sandbox of its own, created for the
//! call and destroyed after it, on the backend the server was configured
//! with. A tool sees only the environment variables it is given.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kelpie_sandbox::{
    Backend, BackendKind, ExecLimits, ExecOutput, ExecRequest, Input, KillReason, Mount, Sandbox,
    SandboxSpec, SessionPipes,
};
use serde_json::{json, Value};

use crate::error::ToolError;
use crate::forkserver::{ForkServers, Shape, FORK_SERVER_CALLS_MAX_DEFAULT};
use crate::pip::{self, PipCache, PipRequirement, PIP_INSTALL_WALL_MS_MAX, SITE_PACKAGES_SANDBOX_PATH};
use crate::python::{self, SourceInfo, CODE_BYTES_MAX, INTROSPECT_SCRIPT, RUN_SCRIPT, TOOL_SOURCE_BYTES_MAX};
use crate::warm::{run_once, WarmPool};

/// Longest a tool call may run before it is killed, in milliseconds.
pub const TOOL_EXECUTION_TIMEOUT_MS: u64 = 30_000;
/// Sandboxes kept started ahead of calls ([`crate::warm`]) by default.
pub const WARM_SANDBOXES_COUNT_DEFAULT: usize = 2;
/// Longest the schema derivation of a source may take, in milliseconds.
pub const SCHEMA_DERIVATION_TIMEOUT_MS: u64 = 10_000;
/// Most environment variables a tool call is given.
pub const TOOL_ENV_COUNT_MAX: usize = 64;
/// Longest environment variable name and value, in bytes.
pub const TOOL_ENV_KEY_BYTES_MAX: usize = 128;
pub const TOOL_ENV_VALUE_BYTES_MAX: usize = 32 * 1024;
/// Names a tool's environment may not set: the sandbox sets them.
const RESERVED_ENV: [&str; 4] = ["PATH", "HOME", "TMPDIR", "LANG"];
const RESERVED_ENV_PREFIX: &str = "KELPIE_";

/// A long-lived program in a sandbox of its own (a stdio MCP server),
/// spoken to over its stdin and stdout (handed out beside it). Dropping it
/// kills the program and removes its sandbox.
pub struct Session {
    /// The execution: ends when the program does, with its captured stderr.
    pub ended: tokio::task::JoinHandle<Result<ExecOutput, ToolError>>,
    /// Longest the program may run, in milliseconds (its wall time).
    pub wall_ms: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ended.abort();
    }
}

/// Bytes buffered in each direction between a session and its program.
pub const SESSION_PIPE_BYTES: usize = 256 * 1024;

/// How the runner runs things.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// The Python interpreter, as a path inside the sandbox.
    pub python: String,
    /// Node.js for the code interpreter's `js`, when installed.
    pub node: Option<String>,
    /// Limits of a tool call.
    pub limits: ExecLimits,
    /// Where installed pip requirement sets are kept.
    pub pip_dir: PathBuf,
    /// The package index pip installs from (`None`: pip's default, PyPI).
    pub pip_index_url: Option<String>,
    /// Sandboxes kept started ahead of calls; 0 starts every call cold
    /// (and spawns no task, as a simulation needs).
    pub warm_sandboxes_count: usize,
    /// What MCP servers may reach.
    pub mcp: crate::mcp::types::McpSettings,
    /// Calls one fork server serves ([`crate::forkserver`]); 0 serves every
    /// Python call from a sandbox of its own. Only the `process` backend
    /// has fork servers; other backends ignore it.
    pub fork_server_calls_max: u64,
}

impl RunnerSettings {
    pub fn new(python: impl Into<String>, pip_dir: PathBuf) -> Self {
        let node = ["/usr/bin/node", "/usr/local/bin/node"]
            .iter()
            .find(|path| std::path::Path::new(path).is_file())
            .map(|path| path.to_string());
        RunnerSettings {
            python: python.into(),
            node,
            limits: ExecLimits { wall_ms: TOOL_EXECUTION_TIMEOUT_MS, ..ExecLimits::default() },
            pip_dir,
            pip_index_url: None,
            warm_sandboxes_count: WARM_SANDBOXES_COUNT_DEFAULT,
            mcp: crate::mcp::types::McpSettings::default(),
            fork_server_calls_max: FORK_SERVER_CALLS_MAX_DEFAULT,
        }
    }
}

/// One call of a custom tool.
#[derive(Debug, Clone)]
pub struct ToolCall<'a> {
    pub source: &'a str,
    pub name: &'a str,
    pub args: &'a Value,
    /// The only environment variables the tool sees.
    pub env: &'a [(String, String)],
    pub network: bool,
    pub requirements: &'a [PipRequirement],
}

/// What a call produced: the returned value (`ok`) or the raised error,
/// and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRun {
    pub ok: bool,
    pub result: String,
    pub stdout: String,
    pub stderr: String,
}

pub struct ToolRunner {
    backend: Arc<dyn Backend>,
    settings: RunnerSettings,
    pip: PipCache,
    prefix: String,
    next: AtomicU64,
    /// Serializes installs of one set, so concurrent creates install it once.
    installs: tokio::sync::Mutex<()>,
    warm: WarmPool,
    /// Fork servers, on the process backend when enabled.
    forks: Option<ForkServers>,
}

static RUNNERS_COUNT: AtomicU64 = AtomicU64::new(0);

/// Checks a call's environment: valid names, none the sandbox sets, bounded sizes.
pub fn check_env(env: &[(String, String)]) -> Result<(), ToolError> {
    if env.len() > TOOL_ENV_COUNT_MAX {
        return Err(ToolError::BadEnvironment(format!(
            "list has {} entries; the limit is TOOL_ENV_COUNT_MAX = {TOOL_ENV_COUNT_MAX}",
            env.len()
        )));
    }
    for (key, value) in env {
        let key_ok = !key.is_empty()
            && key.len() <= TOOL_ENV_KEY_BYTES_MAX
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(ToolError::BadEnvironment(format!(
                "name {key:?} must be 1..={TOOL_ENV_KEY_BYTES_MAX} letters, digits or '_', not starting with a digit"
            )));
        }
        if RESERVED_ENV.contains(&key.as_str()) || key.starts_with(RESERVED_ENV_PREFIX) {
            return Err(ToolError::BadEnvironment(format!(
                "{key} is set by the sandbox and cannot be given"
            )));
        }
        if value.len() > TOOL_ENV_VALUE_BYTES_MAX || value.contains('\0') {
            return Err(ToolError::BadEnvironment(format!(
                "{key}: a value is at most {TOOL_ENV_VALUE_BYTES_MAX} bytes without NUL"
            )));
        }
    }
    Ok(())
}

impl ToolRunner {
    pub fn new(backend: Arc<dyn Backend>, settings: RunnerSettings) -> Self {
        let pip = PipCache { dir: settings.pip_dir.clone() };
        let prefix = format!("k{}r{}", std::process::id(), RUNNERS_COUNT.fetch_add(1, Ordering::SeqCst));
        let warm =
            WarmPool::new(Arc::clone(&backend), python_request(&settings), settings.warm_sandboxes_count);
        let forks =
            (backend.kind() == BackendKind::Process && settings.fork_server_calls_max > 0).then(|| {
                ForkServers::new(
                    Arc::clone(&backend),
                    settings.python.clone(),
                    settings.limits,
                    settings.fork_server_calls_max,
                )
            });
        ToolRunner {
            backend,
            settings,
            pip,
            prefix,
            next: AtomicU64::new(0),
            installs: tokio::sync::Mutex::new(()),
            warm,
            forks,
        }
    }

    fn next_id(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::SeqCst))
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    pub fn settings(&self) -> &RunnerSettings {
        &self.settings
    }

    /// Whether tools can run here; why not, if not.
    pub fn check_available(&self) -> Result<(), ToolError> {
        Ok(self.backend.check_available()?)
    }

    /// The prefix of every sandbox id this runner makes.
    pub fn sandbox_prefix(&self) -> &str {
        &self.prefix
    }

    /// Ends the warm sandboxes and removes what the runner keeps on disk but
    /// its installed packages (the sandboxes dir; the packages dir when
    /// nothing is installed).
    pub async fn shutdown(&self) {
        self.warm.drain().await;
        if let Some(forks) = &self.forks {
            forks.drain().await;
        }
        self.backend.shutdown();
        let _ = std::fs::remove_dir(&self.settings.pip_dir);
    }

    /// Runs `request` in a sandbox made for it and destroyed after, whatever
    /// happens (a cancelled call drops the sandbox, which removes it too);
    /// a warm one when one fits.
    async fn execute(&self, spec: SandboxSpec, request: ExecRequest) -> Result<ExecOutput, ToolError> {
        self.backend.check_available()?;
        if let (true, Input::Now(stdin)) = (self.warm.fits(&spec, &request), &request.stdin) {
            self.warm.fill(|| self.next_id());
            let warm = self.warm.run(stdin.clone()).await;
            self.warm.fill(|| self.next_id());
            if let Some(output) = warm {
                return output;
            }
        }
        run_once(Sandbox::new(self.next_id(), spec, Arc::clone(&self.backend)), request).await
    }

    /// Parses `source` in a sandbox (nothing in it is executed).
    pub async fn inspect_source(&self, source: &str) -> Result<SourceInfo, ToolError> {
        if source.len() > TOOL_SOURCE_BYTES_MAX {
            return Err(ToolError::SourceTooLarge { bytes: source.len(), limit: TOOL_SOURCE_BYTES_MAX });
        }
        let mut request =
            ExecRequest::new(&self.settings.python, vec!["-I".into(), "-c".into(), INTROSPECT_SCRIPT.into()]);
        request.stdin = Input::Now(source.as_bytes().to_vec());
        request.limits = ExecLimits { wall_ms: SCHEMA_DERIVATION_TIMEOUT_MS, ..self.settings.limits };
        let output = self.execute(SandboxSpec::default(), request).await?;
        let name = "schema derivation";
        check_killed(name, &output, &self.settings.limits)?;
        let out = python::last_json_line(&output.stdout.text()).ok_or_else(|| ToolError::NoResult {
            name: name.to_string(),
            exit_code: output.exit_code,
            stderr: output.stderr.text().trim().to_string(),
        })?;
        python::source_info(&out)
    }

    /// The schema a tool is stored with (see [`python::choose_schema`]).
    pub async fn tool_schema(&self, source: &str, given: Option<Value>) -> Result<Value, ToolError> {
        python::choose_schema(self.inspect_source(source).await?, given)
    }

    fn site_path(&self, installed: &std::path::Path) -> String {
        match self.backend.kind() {
            BackendKind::Unsandboxed => installed.display().to_string(),
            _ => SITE_PACKAGES_SANDBOX_PATH.to_string(),
        }
    }

    /// Calls function `call.name` of `call.source` with `call.args`.
    /// `Ok` when the call ran to its end (returned or raised); `Err` when
    /// it could not run or the sandbox ended it.
    pub async fn run_tool(&self, call: ToolCall<'_>) -> Result<ToolRun, ToolError> {
        let run = self.run_tool_unmetered(call).await;
        let outcome = match &run {
            Ok(ToolRun { ok: true, .. }) => "returned",
            Ok(ToolRun { ok: false, .. }) => "raised",
            Err(_) => "failed",
        };
        kelpie_core::metrics::increment(&kelpie_core::metrics::SANDBOX_TOOL_RUNS, &[outcome], 1);
        run
    }

    async fn run_tool_unmetered(&self, call: ToolCall<'_>) -> Result<ToolRun, ToolError> {
        check_env(call.env)?;
        let mut spec = SandboxSpec { network: call.network, mounts: Vec::new() };
        let mut paths = Vec::new();
        if let Some(installed) = self.ensure_requirements(call.requirements).await? {
            paths.push(self.site_path(&installed));
            spec.mounts.push(Mount {
                host: installed,
                sandbox: SITE_PACKAGES_SANDBOX_PATH.into(),
                writable: false,
            });
        }
        let env: serde_json::Map<String, Value> =
            call.env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let payload =
            json!({"source": call.source, "name": call.name, "args": call.args, "paths": paths, "env": env});
        self.run_python(call.name, spec, call.env, payload).await
    }

    /// Runs `run.py` with `payload` (whose `env` the tool gets, and which
    /// holds `env`): on a fork server of the same spec and environment
    /// when there are fork servers, else in a sandbox of its own.
    async fn run_python(
        &self,
        name: &str,
        spec: SandboxSpec,
        env: &[(String, String)],
        payload: Value,
    ) -> Result<ToolRun, ToolError> {
        let stdin = payload.to_string().into_bytes();
        let output = match &self.forks {
            Some(forks) => {
                let shape = Shape { spec, env: env.to_vec() };
                forks.run(name, shape, stdin, || self.next_id()).await?
            }
            None => {
                let mut request = python_request(&self.settings);
                request.stdin = Input::Now(stdin);
                self.execute(spec, request).await?
            }
        };
        check_killed(name, &output, &self.settings.limits)?;
        let (stdout, stderr) = (output.stdout.text(), output.stderr.text());
        match output.result.as_deref().and_then(python::outcome) {
            Some(Ok(result)) => Ok(ToolRun { ok: true, result, stdout, stderr }),
            Some(Err(error)) => Ok(ToolRun { ok: false, result: error, stdout, stderr }),
            None => Err(ToolError::NoResult {
                name: name.to_string(),
                exit_code: output.exit_code,
                stderr: stderr.trim().to_string(),
            }),
        }
    }

    /// Starts `program` (a path in the sandbox, or a name found on the
    /// sandbox's `PATH`) with `args` and only `env` for a conversation over
    /// its stdin and stdout; it runs until the [`Session`] is dropped, it
    /// exits, or its wall time (the longest a sandbox allows) ends. Returns
    /// the session, a writer to the program's stdin and a reader of its stdout.
    pub fn start_session(
        &self,
        program: &str,
        args: Vec<String>,
        env: &[(String, String)],
        network: bool,
    ) -> Result<(Session, tokio::io::DuplexStream, tokio::io::DuplexStream), ToolError> {
        check_env(env)?;
        self.backend.check_available()?;
        let program = resolve_program(program)?;
        let (stdin, program_stdin) = tokio::io::duplex(SESSION_PIPE_BYTES);
        let (program_stdout, stdout) = tokio::io::duplex(SESSION_PIPE_BYTES);
        let mut request = ExecRequest::new(program, args);
        request.env = env.to_vec();
        request.stdin = Input::Session(SessionPipes::new(Box::new(program_stdin), Box::new(program_stdout)));
        let wall_ms = kelpie_sandbox::limits::EXEC_WALL_MS_MAX;
        request.limits =
            ExecLimits { wall_ms, cpu_ms: kelpie_sandbox::limits::EXEC_CPU_MS_MAX, ..self.settings.limits };
        let spec = SandboxSpec { network, mounts: Vec::new() };
        let sandbox = Sandbox::new(self.next_id(), spec, Arc::clone(&self.backend));
        let ended = tokio::spawn(run_once(sandbox, request));
        Ok((Session { ended, wall_ms }, stdin, stdout))
    }

    /// The code interpreter: `code` in `language` (python, or js where node
    /// is installed), without network.
    pub async fn run_code(
        &self,
        language: &str,
        code: &str,
        env: &[(String, String)],
    ) -> Result<ToolRun, ToolError> {
        check_env(env)?;
        if code.len() > CODE_BYTES_MAX {
            return Err(ToolError::SourceTooLarge { bytes: code.len(), limit: CODE_BYTES_MAX });
        }
        match language {
            "python" => {
                let env_map: serde_json::Map<String, Value> =
                    env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                let payload = json!({"code": code, "env": env_map});
                self.run_python("run_code", SandboxSpec::default(), env, payload).await
            }
            "js" | "javascript" => {
                let node =
                    self.settings.node.clone().ok_or_else(|| ToolError::Language(language.to_string()))?;
                let mut request = ExecRequest::new(node, vec!["-e".into(), code.into()]);
                request.env = env.to_vec();
                request.limits = self.settings.limits;
                let output = self.execute(SandboxSpec::default(), request).await?;
                check_killed("run_code", &output, &self.settings.limits)?;
                let ok = output.exit_code == 0;
                let result =
                    if ok { String::new() } else { format!("node exited with code {}", output.exit_code) };
                Ok(ToolRun { ok, result, stdout: output.stdout.text(), stderr: output.stderr.text() })
            }
            other => Err(ToolError::Language(other.to_string())),
        }
    }

    /// Installs `requirements` once (in a sandbox with network, wheels
    /// only) and returns where they are; `None` for no requirements.
    pub async fn ensure_requirements(
        &self,
        requirements: &[PipRequirement],
    ) -> Result<Option<PathBuf>, ToolError> {
        let requirements = pip::normalize(requirements)?;
        if requirements.is_empty() {
            return Ok(None);
        }
        let name = pip::set_name(&requirements);
        if let Some(installed) = self.pip.installed(&name) {
            return Ok(Some(installed));
        }
        let _one_at_a_time = self.installs.lock().await;
        if let Some(installed) = self.pip.installed(&name) {
            return Ok(Some(installed));
        }
        let build = self.pip.build_dir(&name, self.next.fetch_add(1, Ordering::SeqCst));
        let io = |e: std::io::Error| ToolError::PipInstall { package: name.clone(), reason: e.to_string() };
        std::fs::create_dir_all(&build).map_err(io)?;
        if let Some((uid, gid)) = self.backend.writable_owner() {
            std::os::unix::fs::chown(&build, Some(uid), Some(gid)).map_err(io)?;
        }
        let outcome = self.pip_install(&requirements, &build).await;
        match outcome {
            Ok(()) => Ok(Some(self.pip.publish(&build, &name)?)),
            Err(err) => {
                let _ = std::fs::remove_dir_all(&build);
                Err(err)
            }
        }
    }

    /// Removes the installed copy of `requirements`, so the next
    /// [`Self::ensure_requirements`] installs them afresh.
    pub fn forget_requirements(&self, requirements: &[PipRequirement]) -> Result<(), ToolError> {
        let requirements = pip::normalize(requirements)?;
        if let Some(installed) = self.pip.installed(&pip::set_name(&requirements)) {
            std::fs::remove_dir_all(&installed).map_err(|e| ToolError::PipInstall {
                package: pip::set_name(&requirements),
                reason: format!("cannot remove {}: {e}", installed.display()),
            })?;
        }
        Ok(())
    }

    async fn pip_install(
        &self,
        requirements: &[PipRequirement],
        build: &std::path::Path,
    ) -> Result<(), ToolError> {
        let target = match self.backend.kind() {
            BackendKind::Unsandboxed => build.display().to_string(),
            _ => "/opt/kelpie/build".to_string(),
        };
        let mut args: Vec<String> =
            ["-I", "-m", "pip", "install", "--no-input", "--disable-pip-version-check"]
                .into_iter()
                .map(String::from)
                .collect();
        args.extend(["--no-cache-dir", "--only-binary=:all:", "--target"].map(String::from));
        args.push(target.clone());
        if let Some(index) = &self.settings.pip_index_url {
            args.extend(["--index-url".to_string(), index.clone()]);
        }
        args.extend(requirements.iter().map(PipRequirement::spec));
        let mut request = ExecRequest::new(&self.settings.python, args);
        request.limits = ExecLimits { wall_ms: PIP_INSTALL_WALL_MS_MAX, ..self.settings.limits };
        // Unpacking wheels may need more room than the sandbox's /tmp.
        request.env = vec![("TMPDIR".to_string(), kelpie_sandbox::backend::SANDBOX_WORK_DIR.to_string())];
        let spec = SandboxSpec {
            network: true,
            mounts: vec![Mount { host: build.to_path_buf(), sandbox: target, writable: true }],
        };
        let output = self.execute(spec, request).await?;
        let stderr = output.stderr.text();
        if output.succeeded() {
            return Ok(());
        }
        let reason = match output.killed {
            Some(KillReason::WallTimeout) => format!("pip ran over {PIP_INSTALL_WALL_MS_MAX} ms"),
            _ => pip::pip_reason(&stderr),
        };
        Err(ToolError::PipInstall { package: pip::failed_package(&stderr, requirements), reason })
    }
}

/// `program` as a path inside the sandbox: kept when absolute, else looked
/// up on the sandbox's `PATH` (whose directories are the host's, read-only).
pub fn resolve_program(program: &str) -> Result<String, ToolError> {
    if program.is_empty() || program.contains('\0') {
        return Err(ToolError::Program(format!("{program:?} is not a command")));
    }
    if program.starts_with('/') {
        return Ok(program.to_string());
    }
    if program.contains('/') {
        return Err(ToolError::Program(format!("{program:?}: give a command name or an absolute path")));
    }
    kelpie_sandbox::rootfs::SANDBOX_PATH
        .split(':')
        .map(|dir| format!("{dir}/{program}"))
        .find(|candidate| std::path::Path::new(candidate).is_file())
        .ok_or_else(|| {
            ToolError::Program(format!(
                "{program:?} is not found on the sandbox's PATH ({})",
                kelpie_sandbox::rootfs::SANDBOX_PATH
            ))
        })
}

/// The request that runs `run.py` (its payload on stdin, the tool's
/// environment in the payload): the same for every call, so it can start
/// before the call it serves.
fn python_request(settings: &RunnerSettings) -> ExecRequest {
    let mut request = ExecRequest::new(&settings.python, vec!["-I".into(), "-c".into(), RUN_SCRIPT.into()]);
    request.limits = settings.limits;
    request.result_channel = true;
    request
}

/// The error of an execution the sandbox ended early, if it did.
fn check_killed(name: &str, output: &ExecOutput, limits: &ExecLimits) -> Result<(), ToolError> {
    match output.killed {
        Some(KillReason::WallTimeout) => {
            Err(ToolError::Timeout { name: name.to_string(), timeout_ms: limits.wall_ms })
        }
        Some(KillReason::MemoryLimit) => {
            Err(ToolError::MemoryLimit { name: name.to_string(), limit_bytes: limits.memory_bytes })
        }
        Some(KillReason::Interrupted) => {
            Err(ToolError::Sandbox(kelpie_sandbox::SandboxError::Interrupted("destroyed")))
        }
        None => Ok(()),
    }
}
