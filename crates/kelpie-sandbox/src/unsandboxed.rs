//! The `none` backend: the program runs directly on the host, as the
//! server's user, with the server's view of files and network. Only wall
//! time, output size and the environment are controlled (the program gets
//! only the variables it is given) and its process group is killed when it
//! ends. Chosen only explicitly (`sandbox.backend = "none"`), with a
//! warning at start; for trusted tools, and to measure what isolation costs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kelpie_core::env::BoxFuture;

use crate::backend::{
    Backend, BackendKind, ExecOutput, ExecRequest, Instance, InstanceFuture, SandboxSpec, RESULT_SOCKET_ENV,
};
use crate::error::SandboxError;
use crate::host_exec::{self, Executions, HostProcess, Reaper};
use crate::process::{check_id, prepare_dir, remove_idle_dir, SandboxDir};
use crate::rootfs::SANDBOX_PATH;

pub struct UnsandboxedBackend {
    dir: PathBuf,
    available: Result<(), SandboxError>,
}

impl UnsandboxedBackend {
    /// Working directories go under `dir` (emptied first).
    pub fn open(dir: PathBuf) -> UnsandboxedBackend {
        let available = prepare_dir(&dir);
        UnsandboxedBackend { dir, available }
    }
}

impl Backend for UnsandboxedBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Unsandboxed
    }

    fn check_available(&self) -> Result<(), SandboxError> {
        self.available.clone()
    }

    fn writable_owner(&self) -> Option<(u32, u32)> {
        None
    }

    fn shutdown(&self) {
        remove_idle_dir(&self.dir);
    }

    fn create(&self, id: &str, spec: &SandboxSpec) -> BoxFuture<Result<Arc<dyn Instance>, SandboxError>> {
        let (dir, id, available) = (self.dir.clone(), id.to_string(), self.available.clone());
        let mounts = spec.mounts.clone();
        Box::pin(async move {
            available?;
            check_id(&id)?;
            let dir = SandboxDir::create(&dir, &id, None)?;
            let instance =
                HostInstance { dir, mounts, executions: Executions::new(), next_exec: AtomicU64::new(0) };
            Ok(Arc::new(instance) as Arc<dyn Instance>)
        })
    }
}

struct HostInstance {
    dir: SandboxDir,
    /// Directories other backends mount; here the program reaches them at
    /// their host paths, also given in `KELPIE_MOUNT_<n>` variables.
    mounts: Vec<crate::backend::Mount>,
    executions: Executions,
    next_exec: AtomicU64,
}

struct GroupReaper;

impl Reaper for GroupReaper {
    fn kill_all(&self, pid: Option<u32>) {
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn hit_memory_limit(&self) -> bool {
        false
    }
}

impl Instance for HostInstance {
    fn exec(&self, request: ExecRequest) -> InstanceFuture<'_, Result<ExecOutput, SandboxError>> {
        Box::pin(async move {
            request.check_no_control(BackendKind::Unsandboxed)?;
            let _running = self.executions.begin()?;
            let work = self.dir.work();
            let mut env = vec![
                ("PATH".to_string(), SANDBOX_PATH.to_string()),
                ("HOME".to_string(), work.display().to_string()),
                ("TMPDIR".to_string(), work.display().to_string()),
                ("LANG".to_string(), "C.UTF-8".to_string()),
            ];
            for (index, mount) in self.mounts.iter().enumerate() {
                env.push((format!("KELPIE_MOUNT_{index}"), mount.host.display().to_string()));
            }
            let (ipc, listener) = match request.result_channel {
                true => {
                    let n = self.next_exec.fetch_add(1, Ordering::SeqCst);
                    let (dir, listener) = self.dir.result_socket(n, None)?;
                    env.push((RESULT_SOCKET_ENV.to_string(), dir.join("result.sock").display().to_string()));
                    (Some(dir), Some(listener))
                }
                false => (None, None),
            };
            env.extend(request.env.iter().cloned());
            let process = HostProcess {
                program: PathBuf::from(&request.program),
                args: request.args.iter().map(Into::into).collect(),
                env,
                cwd: work,
                user: None,
            };
            let interrupts = self.executions.interrupts();
            let outcome =
                host_exec::run(process, request.stdin, &request.limits, listener, interrupts, &GroupReaper)
                    .await;
            if let Some(ipc) = ipc {
                let _ = std::fs::remove_dir_all(ipc);
            }
            outcome
        })
    }

    fn pause(&self) -> Result<(), SandboxError> {
        Err(SandboxError::Control { what: "pause", reason: "the none backend cannot pause".into() })
    }

    fn resume(&self) -> Result<(), SandboxError> {
        Ok(())
    }

    fn destroy(&self) -> InstanceFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move {
            self.executions.interrupt_and_wait().await;
            host_exec::remove_dir(&self.dir.path)
        })
    }
}
