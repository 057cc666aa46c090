//! The contract every backend implements, and what goes in and out of one
//! execution. A [`Backend`] creates [`Instance`]s; an instance runs programs
//! ([`Instance::exec`]), pauses and resumes them, and is destroyed. The
//! lifecycle around them (who may do what when) is [`crate::Sandbox`]'s.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use kelpie_core::env::BoxFuture;

use crate::error::SandboxError;
use crate::limits::ExecLimits;

/// Which isolation a backend gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// bubblewrap namespaces, cgroup limits.
    Process,
    /// gVisor's `runsc`: a user-space kernel between the tool and the host.
    Gvisor,
    /// No isolation: the program runs as the server's user. Only when chosen.
    Unsandboxed,
    /// A simulated backend for deterministic tests.
    Simulated,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Gvisor => "gvisor",
            BackendKind::Unsandboxed => "none",
            BackendKind::Simulated => "simulated",
        }
    }
}

/// A directory of the host made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub sandbox: String,
    /// Read-only unless set (a package install writes its target).
    pub writable: bool,
}

/// What a sandbox is created with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Whether programs may reach the network. Without it they have no
    /// network interface but their own loopback.
    pub network: bool,
    /// Extra directories (a tool's installed packages, read-only).
    pub mounts: Vec<Mount>,
}

/// One program to run in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Absolute path of the program inside the sandbox.
    pub program: String,
    pub args: Vec<String>,
    /// The program's whole environment besides `PATH`, `HOME`, `TMPDIR`,
    /// `LANG` (and [`RESULT_SOCKET_ENV`] with a result channel): nothing of
    /// the server's own environment is passed on.
    pub env: Vec<(String, String)>,
    pub stdin: Input,
    pub limits: ExecLimits,
    /// Opens the result channel: a Unix socket at the path in
    /// [`RESULT_SOCKET_ENV`] whose first connection is read as the result.
    pub result_channel: bool,
    /// Opens a control channel for a program that serves calls (a fork
    /// server, see `served`): a Unix socket at the path in
    /// `served::CONTROL_SOCKET_ENV` whose first connection is
    /// handed to the channel's receiver. Only the `process` backend has it.
    pub control: Option<crate::control::ControlChannel>,
}

impl ExecRequest {
    /// Refuses a control channel on a backend without one.
    pub fn check_no_control(&self, backend: BackendKind) -> Result<(), SandboxError> {
        match self.control {
            Some(_) => Err(SandboxError::InvalidRequest(format!(
                "the {} backend cannot serve calls through a control channel; only process can",
                backend.name()
            ))),
            None => Ok(()),
        }
    }

    pub fn new(program: impl Into<String>, args: Vec<String>) -> Self {
        ExecRequest {
            program: program.into(),
            args,
            env: Vec::new(),
            stdin: Input::Now(Vec::new()),
            limits: ExecLimits::default(),
            result_channel: false,
            control: None,
        }
    }
}

/// What an execution reads on stdin.
#[derive(Debug, Clone)]
pub enum Input {
    /// These bytes, written as it starts.
    Now(Vec<u8>),
    /// Bytes that arrive later: the program starts at once and waits for
    /// them (a pre-started program), and its wall time counts from their
    /// arrival. Sending nothing (dropping the sender) interrupts it.
    Later(DeferredInput),
    /// A conversation with a long-lived program (an MCP server on stdio):
    /// its stdin is copied from the session's reader as bytes arrive, and
    /// its stdout to the session's writer instead of being captured. The
    /// program's stdin closes when the reader ends.
    Session(SessionPipes),
}

impl PartialEq for Input {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Input::Now(a), Input::Now(b)) => a == b,
            (Input::Later(a), Input::Later(b)) => Arc::ptr_eq(&a.0, &b.0),
            (Input::Session(a), Input::Session(b)) => Arc::ptr_eq(&a.0, &b.0),
            _ => false,
        }
    }
}

impl Eq for Input {}

/// The receiving end of an [`Input::Later`], taken once by the execution.
#[derive(Debug, Clone)]
pub struct DeferredInput(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<Vec<u8>>>>>);

impl DeferredInput {
    /// The input and the sender that delivers it.
    pub fn channel() -> (DeferredInput, tokio::sync::oneshot::Sender<Vec<u8>>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (DeferredInput(Arc::new(std::sync::Mutex::new(Some(receiver)))), sender)
    }

    /// The receiver, the first time only.
    pub fn take(&self) -> Option<tokio::sync::oneshot::Receiver<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The byte streams of an [`Input::Session`]: what the program reads, and
/// where what it writes goes.
pub type SessionReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
pub type SessionWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The pipes of an [`Input::Session`], taken once by the execution.
#[derive(Clone)]
pub struct SessionPipes(Arc<std::sync::Mutex<Option<(SessionReader, SessionWriter)>>>);

impl std::fmt::Debug for SessionPipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionPipes")
    }
}

impl SessionPipes {
    /// A session reading the program's stdin from `input` and writing its
    /// stdout to `output`.
    pub fn new(input: SessionReader, output: SessionWriter) -> Self {
        SessionPipes(Arc::new(std::sync::Mutex::new(Some((input, output)))))
    }

    /// The pipes, the first time only.
    pub fn take(&self) -> Option<(SessionReader, SessionWriter)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The environment variable naming the result socket inside the sandbox.
pub const RESULT_SOCKET_ENV: &str = "KELPIE_RESULT_SOCKET";
/// Where the result socket is inside the process and gVisor sandboxes.
pub const RESULT_SOCKET_PATH: &str = "/run/kelpie/result.sock";
/// The working directory of programs inside the process and gVisor sandboxes.
pub const SANDBOX_WORK_DIR: &str = "/work";

/// A captured output stream, cut at the execution's `output_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Bytes read past the limit and dropped.
    pub dropped_bytes: u64,
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Why the sandbox ended an execution early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    WallTimeout,
    MemoryLimit,
    /// The sandbox was stopped or destroyed.
    Interrupted,
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code; `128 + n` when killed by signal `n`.
    pub exit_code: i32,
    /// The signal that killed the program, if one did.
    pub signal: Option<i32>,
    pub stdout: Captured,
    pub stderr: Captured,
    /// What the first connection to the result socket sent, when a result
    /// channel was asked for and the program connected.
    pub result: Option<Vec<u8>>,
    pub killed: Option<KillReason>,
    pub wall_ms: u64,
}

impl ExecOutput {
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0 && self.killed.is_none()
    }
}

/// The exit code of a process that `code` or signal `signal` ended.
pub fn exit_code_of(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// A kind of isolation that creates sandboxes.
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Whether this machine can run this backend; why not, if it cannot.
    fn check_available(&self) -> Result<(), SandboxError>;

    /// The host user and group a writable [`Mount`] must belong to for the
    /// sandboxed program to write it; `None` when it runs as the server's user.
    fn writable_owner(&self) -> Option<(u32, u32)>;

    /// Removes what the backend keeps on disk (its sandboxes directory),
    /// when the server stops. Sandboxes still alive are not touched.
    fn shutdown(&self);

    /// Builds a sandbox named `id` (its directories, cgroup, runtime
    /// state). Dropping the future at any await point leaves nothing behind.
    fn create(&self, id: &str, spec: &SandboxSpec) -> BoxFuture<Result<Arc<dyn Instance>, SandboxError>>;
}

/// A future borrowing the instance it runs in.
pub type InstanceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A created sandbox. Dropping the last reference to it kills whatever
/// still runs in it and removes what it made.
pub trait Instance: Send + Sync + 'static {
    /// Runs `request` to its end (or its wall time); several may run at once.
    fn exec(&self, request: ExecRequest) -> InstanceFuture<'_, Result<ExecOutput, SandboxError>>;

    /// Freezes every process of the sandbox.
    fn pause(&self) -> Result<(), SandboxError>;

    /// Thaws what [`Self::pause`] froze.
    fn resume(&self) -> Result<(), SandboxError>;

    /// Kills every process and removes everything the sandbox made; execs
    /// still running end with [`KillReason::Interrupted`].
    fn destroy(&self) -> InstanceFuture<'_, Result<(), SandboxError>>;
}
