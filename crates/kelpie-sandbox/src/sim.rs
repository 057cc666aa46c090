//! A simulated backend for deterministic tests (feature `sim`): each
//! sandbox is a kelpie-dst `SimSandbox`, booted on create, with seeded
//! latencies and the sandbox faults (boot failure, crash, exec failure,
//! exec timeout). An execution carrying a tool runner payload on stdin is
//! answered as if the tool had echoed its arguments: the sandbox runs
//! `echo <args>` and the outcome comes back on the result channel, as the
//! real runner's would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kelpie_core::env::BoxFuture;
use kelpie_dst::{SandboxError as SimError, SimNode, SimSandbox};
use serde_json::{json, Value};

use crate::backend::{
    Backend, BackendKind, Captured, ExecOutput, ExecRequest, Input, Instance, InstanceFuture, KillReason,
    SandboxSpec,
};
use crate::error::SandboxError;

/// The signal a crashed sandbox's program reports (SIGKILL).
const CRASH_SIGNAL: i32 = 9;

pub struct SimBackend {
    node: SimNode,
    live: Arc<AtomicUsize>,
}

impl SimBackend {
    pub fn new(node: &SimNode) -> Self {
        SimBackend { node: node.clone(), live: Arc::new(AtomicUsize::new(0)) }
    }

    /// Sandboxes created and not yet dropped: 0 once every call cleaned up.
    pub fn live_sandboxes(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Backend for SimBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Simulated
    }

    fn check_available(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    fn writable_owner(&self) -> Option<(u32, u32)> {
        None
    }

    fn shutdown(&self) {}

    fn create(&self, _id: &str, _spec: &SandboxSpec) -> BoxFuture<Result<Arc<dyn Instance>, SandboxError>> {
        let (node, live) = (self.node.clone(), Arc::clone(&self.live));
        Box::pin(async move {
            let mut sandbox = SimSandbox::new(&node);
            sandbox.boot().await.map_err(|e| SandboxError::Create(e.to_string()))?;
            live.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(SimInstance { sandbox: tokio::sync::Mutex::new(sandbox), live }) as Arc<dyn Instance>)
        })
    }
}

struct SimInstance {
    sandbox: tokio::sync::Mutex<SimSandbox>,
    live: Arc<AtomicUsize>,
}

impl Drop for SimInstance {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn ended(
    exit_code: i32,
    signal: Option<i32>,
    result: Option<Vec<u8>>,
    killed: Option<KillReason>,
) -> ExecOutput {
    ExecOutput {
        exit_code,
        signal,
        stdout: Captured::default(),
        stderr: Captured::default(),
        result,
        killed,
        wall_ms: 0,
    }
}

impl Instance for SimInstance {
    fn exec(&self, request: ExecRequest) -> InstanceFuture<'_, Result<ExecOutput, SandboxError>> {
        Box::pin(async move {
            request.check_no_control(BackendKind::Simulated)?;
            let payload: Value = match &request.stdin {
                Input::Now(bytes) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
                Input::Later(_) | Input::Session(_) => Value::Null,
            };
            let command = format!("echo {}", payload["args"]);
            let mut sandbox = self.sandbox.lock().await;
            sandbox.set_exec_timeout_ms(request.limits.wall_ms);
            match sandbox.exec(&command).await {
                Ok(output) => {
                    let outcome = json!({"ok": true, "result": output}).to_string().into_bytes();
                    Ok(ended(0, None, request.result_channel.then_some(outcome), None))
                }
                Err(SimError::TimedOut { .. }) => {
                    Ok(ended(128 + CRASH_SIGNAL, Some(CRASH_SIGNAL), None, Some(KillReason::WallTimeout)))
                }
                Err(SimError::Crashed { .. }) => {
                    Ok(ended(128 + CRASH_SIGNAL, Some(CRASH_SIGNAL), None, None))
                }
                Err(other) => {
                    Err(SandboxError::Spawn { program: request.program, reason: other.to_string() })
                }
            }
        })
    }

    fn pause(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    fn resume(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    fn destroy(&self) -> InstanceFuture<'_, Result<(), SandboxError>> {
        Box::pin(async { Ok(()) })
    }
}
