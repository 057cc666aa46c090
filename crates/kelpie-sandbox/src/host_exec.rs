//! Running one host process for an execution, shared by every backend that
//! starts one (bubblewrap, runsc, or the program itself): its stdin written
//! and closed, stdout and stderr captured up to a limit (the rest read and
//! dropped, so a flood neither blocks the program nor fills memory), the
//! result socket's first connection read, the wall time enforced, and an
//! interrupt (stop, destroy) honoured. Whatever ends the process, it is
//! waited for, so no zombie stays behind.

use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::process::Command;
use tokio::sync::{watch, Notify};

use crate::backend::{exit_code_of, Captured, ExecOutput, Input, KillReason};
use crate::error::SandboxError;
use crate::limits::{ExecLimits, EXEC_RESULT_BYTES_MAX, EXEC_STDIN_BYTES_MAX};

/// How long, once the process is gone, its output pipes and result socket
/// may take to drain before what arrived is taken as all there is.
pub const DRAIN_AFTER_EXIT_MS_MAX: u64 = 2_000;
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One host process to run.
#[derive(Debug, Clone)]
pub(crate) struct HostProcess {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The process's whole environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Run as this user and group (the server must be root to ask).
    pub user: Option<(u32, u32)>,
}

/// What ends an execution early besides its own exit.
pub(crate) struct Interrupts {
    /// Turns true when the sandbox is stopped or destroyed.
    pub interrupted: watch::Receiver<bool>,
}

/// The executions running in one sandbox: counted, so a destroy can wait
/// for them, and interruptible all at once.
pub(crate) struct Executions {
    interrupt: watch::Sender<bool>,
    running: AtomicUsize,
    idle: Notify,
}

/// Counts an execution as running until dropped.
pub(crate) struct ExecutionGuard<'a> {
    executions: &'a Executions,
}

impl Drop for ExecutionGuard<'_> {
    fn drop(&mut self) {
        if self.executions.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.executions.idle.notify_waiters();
        }
    }
}

impl Executions {
    pub(crate) fn new() -> Self {
        Executions { interrupt: watch::channel(false).0, running: AtomicUsize::new(0), idle: Notify::new() }
    }

    /// Counts a new execution; refused once the sandbox is interrupted.
    pub(crate) fn begin(&self) -> Result<ExecutionGuard<'_>, SandboxError> {
        self.running.fetch_add(1, Ordering::SeqCst);
        let guard = ExecutionGuard { executions: self };
        if *self.interrupt.borrow() {
            return Err(SandboxError::Interrupted("destroyed"));
        }
        Ok(guard)
    }

    pub(crate) fn interrupts(&self) -> Interrupts {
        Interrupts { interrupted: self.interrupt.subscribe() }
    }

    /// Interrupts every execution, running or to come.
    pub(crate) fn interrupt(&self) {
        self.interrupt.send_replace(true);
    }

    /// [`Self::interrupt`], then waits until every execution has ended.
    pub(crate) async fn interrupt_and_wait(&self) {
        self.interrupt();
        loop {
            let idle = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Removes a sandbox's directory; one already gone is not an error.
pub(crate) fn remove_dir(path: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SandboxError::Io(format!("remove {}: {e}", path.display()))),
    }
}

/// Kills whatever the process left (its cgroup, its process group) once the
/// main process is gone or must go.
pub(crate) trait Reaper: Send + Sync {
    fn kill_all(&self, pid: Option<u32>);
    /// Whether the memory limit killed something during the execution.
    fn hit_memory_limit(&self) -> bool;
}

pub(crate) async fn capture(
    stream: Option<impl AsyncRead + Unpin>,
    limit_bytes: u64,
    into: Arc<Mutex<Captured>>,
) {
    let Some(mut stream) = stream else { return };
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let read = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let mut captured = into.lock().unwrap_or_else(|p| p.into_inner());
        let room = usize::try_from(limit_bytes).unwrap_or(usize::MAX).saturating_sub(captured.bytes.len());
        let kept = read.min(room);
        captured.bytes.extend_from_slice(&chunk[..kept]);
        captured.dropped_bytes += (read - kept) as u64;
    }
}

/// Reads the first connection to `listener` to its end (at most
/// [`EXEC_RESULT_BYTES_MAX`]); later connections are never accepted.
async fn first_result(listener: UnixListener, into: Arc<Mutex<Option<Vec<u8>>>>) {
    let Ok((mut stream, _)) = listener.accept().await else { return };
    drop(listener);
    let mut bytes = Vec::new();
    let mut limited = (&mut stream).take(EXEC_RESULT_BYTES_MAX + 1);
    if limited.read_to_end(&mut bytes).await.is_err() || bytes.len() as u64 > EXEC_RESULT_BYTES_MAX {
        return;
    }
    *into.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
}

fn take<T: Default>(slot: &Mutex<T>) -> T {
    std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()))
}

fn check_stdin(stdin: &[u8]) -> Result<(), SandboxError> {
    if stdin.len() as u64 > EXEC_STDIN_BYTES_MAX {
        return Err(SandboxError::InvalidRequest(format!(
            "stdin is {} bytes, over EXEC_STDIN_BYTES_MAX = {EXEC_STDIN_BYTES_MAX}",
            stdin.len()
        )));
    }
    Ok(())
}

/// Waits for a deferred input; `None` when it will never come (its sender
/// dropped) or the sandbox was interrupted first.
async fn arrival(input: Input, interrupts: &mut Interrupts) -> Option<Vec<u8>> {
    let receiver = match input {
        Input::Now(bytes) => return Some(bytes),
        Input::Later(deferred) => deferred.take()?,
        // A session's input is copied as it flows, never awaited whole.
        Input::Session(_) => return Some(Vec::new()),
    };
    tokio::select! {
        bytes = receiver => bytes.ok(),
        () = interrupted(&mut interrupts.interrupted) => None,
    }
}

/// Runs `process` with `input` on stdin under `limits` until it exits, its
/// wall time runs out or the sandbox is interrupted. The wall time counts
/// from the input's arrival (from the start for a session, whose stdout
/// goes to the session instead of being captured).
pub(crate) async fn run(
    process: HostProcess,
    input: Input,
    limits: &ExecLimits,
    result: Option<UnixListener>,
    mut interrupts: Interrupts,
    reaper: &dyn Reaper,
) -> Result<ExecOutput, SandboxError> {
    if let Input::Now(bytes) = &input {
        check_stdin(bytes)?;
    }
    let mut command = Command::new(&process.program);
    command
        .args(&process.args)
        .env_clear()
        .envs(process.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&process.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = process.user {
        command.uid(uid).gid(gid);
    }
    let spawn_error = |e: std::io::Error| SandboxError::Spawn {
        program: process.program.display().to_string(),
        reason: e.to_string(),
    };
    let session = match &input {
        Input::Session(pipes) => Some(pipes.take().ok_or_else(|| {
            SandboxError::InvalidRequest("a session's pipes serve one execution only".into())
        })?),
        _ => None,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child.id();
    let stdout = Arc::new(Mutex::new(Captured::default()));
    let stderr = Arc::new(Mutex::new(Captured::default()));
    let answer = Arc::new(Mutex::new(None));
    let mut readers = tokio::task::JoinSet::new();
    // Feeds a session's stdin; never awaited (the other side may never end).
    let mut feeder = tokio::task::JoinSet::new();
    let (session_reader, session_writer) = match session {
        Some((reader, writer)) => (Some(reader), Some(writer)),
        None => (None, None),
    };
    match (session_writer, child.stdout.take()) {
        (Some(mut writer), Some(mut out)) => {
            readers.spawn(async move {
                let _ = tokio::io::copy(&mut out, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
        (_, out) => {
            readers.spawn(capture(out, limits.output_bytes, Arc::clone(&stdout)));
        }
    }
    readers.spawn(capture(child.stderr.take(), limits.output_bytes, Arc::clone(&stderr)));
    if let Some(listener) = result {
        readers.spawn(first_result(listener, Arc::clone(&answer)));
    }
    let stdin = child.stdin.take();
    let mut killed = None;
    let arrived = match session_reader {
        Some(mut reader) => {
            if let Some(mut pipe) = stdin {
                feeder.spawn(async move {
                    let _ = tokio::io::copy(&mut reader, &mut pipe).await;
                });
            }
            None
        }
        None => {
            let arrived = arrival(input, &mut interrupts).await.filter(|bytes| check_stdin(bytes).is_ok());
            match (stdin, arrived) {
                (Some(pipe), Some(bytes)) => Some((pipe, bytes)),
                // Never delivered: the program is not wanted any more.
                (_, None) => {
                    killed = Some(KillReason::Interrupted);
                    reaper.kill_all(pid);
                    let _ = child.start_kill();
                    None
                }
                (None, Some(_)) => None,
            }
        }
    };
    let started = Instant::now();
    if let Some((mut pipe, bytes)) = arrived {
        readers.spawn(async move {
            // A program that exits without reading its input is not our error.
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let wall = Duration::from_millis(limits.wall_ms);
    let status = tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep(wall) => {
            killed = Some(KillReason::WallTimeout);
            reaper.kill_all(pid);
            let _ = child.start_kill();
            child.wait().await
        }
        () = interrupted(&mut interrupts.interrupted) => {
            killed = Some(KillReason::Interrupted);
            reaper.kill_all(pid);
            let _ = child.start_kill();
            child.wait().await
        }
    }
    .map_err(|e| SandboxError::Io(format!("waiting for {}: {e}", process.program.display())))?;
    // The main process is gone: nothing it started may outlive it.
    reaper.kill_all(None);
    feeder.abort_all();
    let drained = tokio::time::timeout(Duration::from_millis(DRAIN_AFTER_EXIT_MS_MAX), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        readers.abort_all();
    }
    if killed.is_none() && reaper.hit_memory_limit() {
        killed = Some(KillReason::MemoryLimit);
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecOutput {
        exit_code: exit_code_of(status.code(), status.signal()),
        signal: status.signal(),
        stdout: take(&stdout),
        stderr: take(&stderr),
        result: take(&answer),
        killed,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Completes once the flag turns true (never if its sender is gone while false).
async fn interrupted(flag: &mut watch::Receiver<bool>) {
    loop {
        if *flag.borrow_and_update() {
            return;
        }
        if flag.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
