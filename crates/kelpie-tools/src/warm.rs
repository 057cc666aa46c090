//! Sandboxes started ahead of the calls that will use them. A warm sandbox
//! runs the Python runner, which has started, imported what it needs and
//! connected its result socket, and waits on stdin for one call's payload:
//! a call then pays for none of the sandbox's set-up or the interpreter's
//! start, only for its own work. Each warm sandbox serves one call and is
//! destroyed after it, as a cold one is; a new one starts in its place.
//!
//! Only the common shape is kept warm: Python, no network, no packages, the
//! runner's own limits. Anything else starts cold.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kelpie_sandbox::limits::EXEC_STDIN_BYTES_MAX;
use kelpie_sandbox::{Backend, DeferredInput, ExecOutput, ExecRequest, Input, Sandbox, SandboxSpec};
use tokio::sync::oneshot;

use crate::error::ToolError;

/// One warm sandbox: the sender of its payload, the receiver of its output.
struct Warm {
    input: oneshot::Sender<Vec<u8>>,
    output: oneshot::Receiver<Result<ExecOutput, ToolError>>,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct WarmPool {
    backend: Arc<dyn Backend>,
    /// The runner's request, its stdin left to the call.
    template: ExecRequest,
    target_count: usize,
    ready: Mutex<VecDeque<Warm>>,
}

/// Creates `sandbox`, runs `request` in it, destroys it whatever happened
/// (a cancelled call drops the sandbox, which removes it too): how every
/// execution of the runner runs, cold or warm.
pub(crate) async fn run_once(sandbox: Sandbox, request: ExecRequest) -> Result<ExecOutput, ToolError> {
    sandbox.create().await?;
    let output = sandbox.exec(request).await;
    let destroyed = sandbox.destroy().await;
    let output = output?;
    destroyed?;
    Ok(output)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WarmPool {
    pub(crate) fn new(backend: Arc<dyn Backend>, template: ExecRequest, target_count: usize) -> Self {
        WarmPool { backend, template, target_count, ready: Mutex::new(VecDeque::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Warm>> {
        self.ready.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether `request` can be served by a warm sandbox of `spec`.
    pub(crate) fn fits(&self, spec: &SandboxSpec, request: &ExecRequest) -> bool {
        self.target_count > 0
            && spec == &SandboxSpec::default()
            && request.program == self.template.program
            && request.args == self.template.args
            && request.env == self.template.env
            && request.limits == self.template.limits
            && request.result_channel == self.template.result_channel
    }

    /// Starts warm sandboxes until `target_count` are ready or starting;
    /// `id` names each new one.
    pub(crate) fn fill(&self, mut id: impl FnMut() -> String) {
        let mut ready = self.lock();
        while ready.len() < self.target_count {
            let (deferred, input) = DeferredInput::channel();
            let (done, output) = oneshot::channel();
            let request = ExecRequest { stdin: Input::Later(deferred), ..self.template.clone() };
            let sandbox = Sandbox::new(id(), SandboxSpec::default(), Arc::clone(&self.backend));
            let task = tokio::spawn(async move {
                let _ = done.send(run_once(sandbox, request).await);
            });
            ready.push_back(Warm { input, output, task });
        }
    }

    /// Runs one call with `stdin` on the oldest warm sandbox; `None` when
    /// none is left (the call starts cold), the one taken failed before the
    /// call reached it (a sandbox that died idle), or the input is too
    /// large for any sandbox (the cold start reports it).
    pub(crate) async fn run(&self, stdin: Vec<u8>) -> Option<Result<ExecOutput, ToolError>> {
        if stdin.len() as u64 > EXEC_STDIN_BYTES_MAX {
            return None;
        }
        let warm = self.lock().pop_front()?;
        // A call cancelled while it runs ends its sandbox, as a cold call's
        // dropped sandbox does: aborting the task drops it.
        let task = AbortOnDrop(warm.task);
        if task.0.is_finished() || warm.input.send(stdin).is_err() {
            return None;
        }
        warm.output.await.ok()
    }

    /// Ends every warm sandbox and waits until each has removed what it made.
    pub(crate) async fn drain(&self) {
        let drained: Vec<Warm> = self.lock().drain(..).collect();
        for warm in drained {
            // Dropping the sender interrupts the waiting program.
            drop(warm.input);
            let _ = warm.task.await;
        }
    }
}
