//! Calls served by a long-lived program inside a sandbox (a fork server):
//! the host side of its protocol.
//!
//! An execution asks for a control channel ([`ExecRequest::control`]); the
//! program connects to the Unix socket named by [`CONTROL_SOCKET_ENV`]
//! before it runs anything else, and that first connection is handed to the
//! caller as a [`Control`]. Each call then sends, on the control socket, the
//! call's limits ([`CALL_HEADER_BYTES`]) with four fresh pipe ends of the
//! call (`SCM_RIGHTS`): its stdin's read end, its stdout's and stderr's
//! write ends and its result's write end. The host keeps the other ends, so
//! the call's output is captured (and cut at the limit) exactly as an
//! execution's is, and its result travels on a pipe made for this call
//! alone. When the call and everything it started are gone, the program
//! answers on the control socket ([`DONE_BYTES`]): how the call's process
//! ended and whether the sandbox is clean again (nothing left running, its
//! writable places wiped).
//!
//! The caller must not reuse a server whose call was not clean, timed out,
//! hit the memory limit, or broke the protocol ([`ServedOutput::reusable`]):
//! it destroys the sandbox instead.
//!
//! [`ExecRequest::control`]: crate::backend::ExecRequest::control

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

use crate::backend::{Captured, ExecOutput, KillReason};
pub use crate::control::{Control, ControlChannel};
use crate::error::SandboxError;
use crate::host_exec::{capture, DRAIN_AFTER_EXIT_MS_MAX};
use crate::limits::{ExecLimits, EXEC_RESULT_BYTES_MAX, EXEC_STDIN_BYTES_MAX};

/// The environment variable naming the control socket inside the sandbox.
pub const CONTROL_SOCKET_ENV: &str = "KELPIE_CONTROL_SOCKET";
/// Where the control socket is inside the process sandbox.
pub const CONTROL_SOCKET_PATH: &str = "/run/kelpie/control.sock";
/// A call's header: its CPU seconds and its largest file in bytes, each a
/// big-endian u64.
pub const CALL_HEADER_BYTES: usize = 16;
/// The pipe ends sent with each call: stdin, stdout, stderr, result.
pub const CALL_FDS_COUNT: usize = 4;
/// The answer to a call: its exit code and signal (0 for none), each a
/// big-endian i32, then 1 when the sandbox is clean again, else 0 (u32).
pub const DONE_BYTES: usize = 12;

/// How a served call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedOutput {
    pub output: ExecOutput,
    /// Whether the server may serve another call: the call ended within
    /// its limits and the server reported the sandbox clean.
    pub reusable: bool,
}

/// The host's ends of one call's pipes, and the ends sent into the sandbox.
struct CallPipes {
    stdin: std::io::PipeWriter,
    stdout: std::io::PipeReader,
    stderr: std::io::PipeReader,
    result: std::io::PipeReader,
    sent: [OwnedFd; CALL_FDS_COUNT],
}

fn call_pipes() -> Result<CallPipes, SandboxError> {
    let io = |e: std::io::Error| SandboxError::Io(format!("a call's pipe: {e}"));
    let (stdin_r, stdin) = std::io::pipe().map_err(io)?;
    let (stdout, stdout_w) = std::io::pipe().map_err(io)?;
    let (stderr, stderr_w) = std::io::pipe().map_err(io)?;
    let (result, result_w) = std::io::pipe().map_err(io)?;
    let sent = [stdin_r.into(), stdout_w.into(), stderr_w.into(), result_w.into()];
    Ok(CallPipes { stdin, stdout, stderr, result, sent })
}

fn receiver(end: std::io::PipeReader) -> Result<tokio::net::unix::pipe::Receiver, SandboxError> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(end.into())
        .map_err(|e| SandboxError::Io(format!("a call's pipe: {e}")))
}

/// The header of a call under `limits`.
fn header(limits: &ExecLimits) -> [u8; CALL_HEADER_BYTES] {
    let mut header = [0u8; CALL_HEADER_BYTES];
    header[..8].copy_from_slice(&limits.cpu_seconds().to_be_bytes());
    header[8..].copy_from_slice(&limits.file_size_bytes.to_be_bytes());
    header
}

/// What the server answered: exit code, signal, clean.
fn parse_done(done: &[u8; DONE_BYTES]) -> (i32, Option<i32>, bool) {
    let word = |at: usize| [done[at], done[at + 1], done[at + 2], done[at + 3]];
    let exit_code = i32::from_be_bytes(word(0));
    let signal = i32::from_be_bytes(word(4));
    let clean = u32::from_be_bytes(word(8)) == 1;
    (exit_code, (signal != 0).then_some(signal), clean)
}

impl Control {
    async fn send_call(
        &self,
        limits: &ExecLimits,
        fds: &[OwnedFd; CALL_FDS_COUNT],
    ) -> Result<(), SandboxError> {
        let header = header(limits);
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let socket = self.stream.as_raw_fd();
        let sent = self
            .stream
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(&header)];
                let rights = [nix::sys::socket::ControlMessage::ScmRights(&raw)];
                nix::sys::socket::sendmsg::<()>(
                    socket,
                    &iov,
                    &rights,
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            })
            .await
            .map_err(|e| SandboxError::Io(format!("sending a call to the fork server: {e}")))?;
        // A stream socket takes a message this small whole or not at all.
        assert_eq!(sent, CALL_HEADER_BYTES, "the call header went partly");
        Ok(())
    }

    /// Runs one call with `stdin` under `limits`: its output and whether the
    /// server may serve another. A call past its wall time is reported
    /// killed ([`KillReason::WallTimeout`]) and the server is not reusable.
    pub async fn call(&mut self, stdin: Vec<u8>, limits: &ExecLimits) -> Result<ServedOutput, SandboxError> {
        if stdin.len() as u64 > EXEC_STDIN_BYTES_MAX {
            return Err(SandboxError::InvalidRequest(format!(
                "stdin is {} bytes, over EXEC_STDIN_BYTES_MAX = {EXEC_STDIN_BYTES_MAX}",
                stdin.len()
            )));
        }
        let oom_before = self.cgroup.as_ref().map_or(0, |cgroup| cgroup.oom_kills());
        let pipes = call_pipes()?;
        self.send_call(limits, &pipes.sent).await?;
        // The sandbox holds its own copies now; ours would keep the pipes open.
        drop(pipes.sent);
        let stdout = Arc::new(Mutex::new(Captured::default()));
        let stderr = Arc::new(Mutex::new(Captured::default()));
        let result = Arc::new(Mutex::new(None));
        let mut readers = tokio::task::JoinSet::new();
        readers.spawn(capture(Some(receiver(pipes.stdout)?), limits.output_bytes, Arc::clone(&stdout)));
        readers.spawn(capture(Some(receiver(pipes.stderr)?), limits.output_bytes, Arc::clone(&stderr)));
        readers.spawn(read_result(receiver(pipes.result)?, Arc::clone(&result)));
        let mut stdin_pipe = tokio::net::unix::pipe::Sender::from_owned_fd(pipes.stdin.into())
            .map_err(|e| SandboxError::Io(format!("a call's pipe: {e}")))?;
        readers.spawn(async move {
            // A call that exits without reading its input is not our error.
            let _ = stdin_pipe.write_all(&stdin).await;
        });
        let started = Instant::now();
        let mut done = [0u8; DONE_BYTES];
        let answered =
            tokio::time::timeout(Duration::from_millis(limits.wall_ms), self.stream.read_exact(&mut done))
                .await;
        let (exit_code, signal, clean, killed) = match answered {
            Ok(Ok(_)) => {
                let (exit_code, signal, clean) = parse_done(&done);
                (exit_code, signal, clean, None)
            }
            // The server died or broke the protocol: the call has no end to report.
            Ok(Err(e)) => return Err(SandboxError::Io(format!("the fork server went away: {e}"))),
            Err(_) => (128 + 9, Some(9), false, Some(KillReason::WallTimeout)),
        };
        if killed.is_some() {
            readers.abort_all();
        } else {
            let drained = tokio::time::timeout(Duration::from_millis(DRAIN_AFTER_EXIT_MS_MAX), async {
                while readers.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                readers.abort_all();
            }
        }
        let oom = self.cgroup.as_ref().is_some_and(|cgroup| cgroup.oom_kills() > oom_before);
        let killed = killed.or(oom.then_some(KillReason::MemoryLimit));
        let take =
            |slot: &Mutex<Captured>| std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()));
        let output = ExecOutput {
            exit_code,
            signal,
            stdout: take(&stdout),
            stderr: take(&stderr),
            result: result.lock().unwrap_or_else(|p| p.into_inner()).take(),
            killed,
            wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        Ok(ServedOutput { reusable: clean && killed.is_none(), output })
    }
}

/// Reads a call's result pipe to its end (at most [`EXEC_RESULT_BYTES_MAX`]).
async fn read_result(mut pipe: tokio::net::unix::pipe::Receiver, into: Arc<Mutex<Option<Vec<u8>>>>) {
    let mut bytes = Vec::new();
    let mut limited = (&mut pipe).take(EXEC_RESULT_BYTES_MAX + 1);
    if limited.read_to_end(&mut bytes).await.is_err() || bytes.is_empty() {
        return;
    }
    if bytes.len() as u64 <= EXEC_RESULT_BYTES_MAX {
        *into.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_cpu_seconds_and_file_size_and_done_is_read_back() {
        let limits = ExecLimits { cpu_ms: 2_500, file_size_bytes: 4096, ..ExecLimits::default() };
        let header = header(&limits);
        assert_eq!(u64::from_be_bytes(header[..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_be_bytes(header[8..].try_into().unwrap()), 4096);
        let mut done = [0u8; DONE_BYTES];
        done[..4].copy_from_slice(&137i32.to_be_bytes());
        done[4..8].copy_from_slice(&9i32.to_be_bytes());
        done[8..].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(parse_done(&done), (137, Some(9), true));
        assert_eq!(parse_done(&[0u8; DONE_BYTES]), (0, None, false));
    }
}
