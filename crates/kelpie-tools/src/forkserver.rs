//! Python calls served by fork servers: long-lived `process` sandboxes whose
//! interpreter has started and done its imports once, and forks a fresh
//! child per call (`python/forkserver.py`; the host side of the protocol is
//! [`kelpie_sandbox::served`]). A call then pays for neither bubblewrap nor
//! an interpreter's start, only a fork and its own work.
//!
//! What may share a fork server: only calls of the same shape — the same
//! sandbox spec (network, mounted packages) and exactly the same environment
//! variables (so the same secrets). The environment travels in the call's
//! payload to its child only; the server itself never holds it. Between two
//! calls the server kills everything the first started and wipes what it
//! wrote (see the script); a call that was not clean, ran out of time, hit
//! the memory limit or lost its server ends that sandbox, and a fresh one
//! serves the next call. A server serves at most
//! [`FORK_SERVER_CALLS_MAX_DEFAULT`] calls and lives at most
//! [`FORK_SERVER_WALL_MS`]; at most [`FORK_SERVERS_IDLE_COUNT_MAX`] wait idle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kelpie_sandbox::limits::{EXEC_CPU_MS_MAX, EXEC_WALL_MS_MAX};
use kelpie_sandbox::served::{Control, ControlChannel};
use kelpie_sandbox::{Backend, ExecLimits, ExecOutput, ExecRequest, Sandbox, SandboxSpec};

use crate::error::ToolError;
use crate::python::FORK_SERVER_SCRIPT;
use crate::warm::run_once;

/// Calls one fork server serves before it is replaced.
pub const FORK_SERVER_CALLS_MAX_DEFAULT: u64 = 1_000;
/// Longest a fork server lives (its execution's wall time).
pub const FORK_SERVER_WALL_MS: u64 = EXEC_WALL_MS_MAX;
/// Longest a fork server may take to start and connect, in milliseconds.
pub const FORK_SERVER_START_MS_MAX: u64 = 10_000;
/// Most idle fork servers kept, over all shapes.
pub const FORK_SERVERS_IDLE_COUNT_MAX: usize = 4;

/// What calls must share to share a fork server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub spec: SandboxSpec,
    pub env: Vec<(String, String)>,
}

/// One running fork server: its control channel and the task running it.
/// Dropped (a call given up, an anomaly), it ends at once: the task is
/// aborted and its sandbox dropped, which kills everything in it and
/// removes what it made.
struct ForkServer {
    /// `None` only once [`Self::retire`] closed it.
    control: Option<Control>,
    /// `None` only once [`Self::retire`] took it to await it.
    task: Option<tokio::task::JoinHandle<Result<ExecOutput, ToolError>>>,
    calls_count: u64,
    started: Instant,
}

impl Drop for ForkServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl ForkServer {
    fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
    }

    /// Ends the server in order: it exits when its channel closes, and its
    /// sandbox is destroyed.
    async fn retire(mut self) {
        self.control = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

pub(crate) struct ForkServers {
    backend: Arc<dyn Backend>,
    python: String,
    limits: ExecLimits,
    calls_max: u64,
    idle: Mutex<VecDeque<(Shape, ForkServer)>>,
    /// Servers retired in order, still shutting down; awaited by a drain.
    retiring: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ForkServers {
    pub(crate) fn new(backend: Arc<dyn Backend>, python: String, limits: ExecLimits, calls_max: u64) -> Self {
        assert!(calls_max > 0, "a fork server serves at least one call");
        ForkServers {
            backend,
            python,
            limits,
            calls_max,
            idle: Mutex::new(VecDeque::new()),
            retiring: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<(Shape, ForkServer)>> {
        self.idle.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// An idle server of `shape` still able to serve a call, if one waits.
    fn take(&self, shape: &Shape) -> Option<ForkServer> {
        let mut idle = self.idle();
        while let Some(at) = idle.iter().position(|(waiting, _)| waiting == shape) {
            let (_, server) = idle.remove(at).expect("the position is in the queue");
            if !server.is_finished() && self.has_time_for_a_call(&server) {
                return Some(server);
            }
            self.retire_later(server);
        }
        None
    }

    fn has_time_for_a_call(&self, server: &ForkServer) -> bool {
        let age_ms = u64::try_from(server.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        age_ms.saturating_add(self.limits.wall_ms) < FORK_SERVER_WALL_MS
    }

    fn retire_later(&self, server: ForkServer) {
        let retiring = tokio::spawn(server.retire());
        let mut all = self.retiring.lock().unwrap_or_else(|poison| poison.into_inner());
        all.retain(|task| !task.is_finished());
        all.push(retiring);
    }

    /// Keeps `server` for the next call of `shape`, or retires it when it
    /// has served its calls or too many wait already (the oldest goes).
    fn give_back(&self, shape: Shape, server: ForkServer) {
        if server.calls_count >= self.calls_max || !self.has_time_for_a_call(&server) {
            return self.retire_later(server);
        }
        let evicted = {
            let mut idle = self.idle();
            idle.push_back((shape, server));
            (idle.len() > FORK_SERVERS_IDLE_COUNT_MAX).then(|| idle.pop_front()).flatten()
        };
        if let Some((_, oldest)) = evicted {
            self.retire_later(oldest);
        }
    }

    /// Starts a fork server for `shape` in a new sandbox named `id`.
    async fn start(&self, shape: &Shape, id: String) -> Result<ForkServer, ToolError> {
        let (channel, connected) = ControlChannel::new();
        let args = ["-I", "-c", FORK_SERVER_SCRIPT, "serve"].map(String::from).to_vec();
        let mut request = ExecRequest::new(&self.python, args);
        request.limits = ExecLimits { wall_ms: FORK_SERVER_WALL_MS, cpu_ms: EXEC_CPU_MS_MAX, ..self.limits };
        request.control = Some(channel);
        let sandbox = Sandbox::new(id, shape.spec.clone(), Arc::clone(&self.backend));
        let mut task = tokio::spawn(run_once(sandbox, request));
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_millis(FORK_SERVER_START_MS_MAX), connected).await {
            Ok(Ok(control)) => {
                Ok(ForkServer { control: Some(control), task: Some(task), calls_count: 0, started })
            }
            Ok(Err(_)) => {
                // The execution ended without connecting: say why.
                let ended = (&mut task).await;
                Err(start_failure(
                    ended.map_err(|e| e.to_string()).and_then(|run| run.map_err(|e| e.to_string())),
                ))
            }
            Err(_) => {
                task.abort();
                Err(start_failure(Err(format!("no connection within {FORK_SERVER_START_MS_MAX} ms"))))
            }
        }
    }

    /// Runs one call of tool `name` (its payload on `stdin`) of `shape` on
    /// a fork server: an idle one of the shape, or a new one named by `id`.
    pub(crate) async fn run(
        &self,
        name: &str,
        shape: Shape,
        stdin: Vec<u8>,
        id: impl FnOnce() -> String,
    ) -> Result<ExecOutput, ToolError> {
        let mut server = match self.take(&shape) {
            Some(server) => server,
            None => self.start(&shape, id()).await?,
        };
        assert!(server.calls_count < self.calls_max, "a server past its calls is never handed out");
        let control = server.control.as_mut().expect("a server handed out has its channel");
        let served = control.call(stdin, &self.limits).await;
        server.calls_count += 1;
        match served {
            Ok(served) if served.reusable => {
                self.give_back(shape, server);
                Ok(served.output)
            }
            Ok(served) => {
                drop(server);
                Ok(served.output)
            }
            Err(err) => {
                drop(server);
                Err(ToolError::NoResult {
                    name: name.to_string(),
                    exit_code: -1,
                    stderr: format!("the sandbox's fork server ended during the call ({err})"),
                })
            }
        }
    }

    /// Ends every fork server, idle or retiring, and waits until each has
    /// removed its sandbox.
    pub(crate) async fn drain(&self) {
        let idle: Vec<(Shape, ForkServer)> = self.idle().drain(..).collect();
        for (_, server) in idle {
            server.retire().await;
        }
        let retiring: Vec<_> = self.retiring.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for task in retiring {
            let _ = task.await;
        }
    }
}

fn start_failure(ended: Result<ExecOutput, String>) -> ToolError {
    let reason = match ended {
        Ok(output) => format!("exited with code {}: {}", output.exit_code, output.stderr.text().trim()),
        Err(reason) => reason,
    };
    ToolError::Sandbox(kelpie_sandbox::SandboxError::Spawn { program: "the fork server".to_string(), reason })
}
