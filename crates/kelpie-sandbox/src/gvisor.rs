//! The `gvisor` backend: each execution is one container run by gVisor's
//! `runsc` (Debian package `runsc`), so the program talks to gVisor's
//! user-space kernel, never to the host's: a kernel boundary on top of the
//! same contract as the process backend (the root of [`crate::rootfs`], no
//! network unless allowed, the result socket, the limits).
//!
//! The launcher joins the execution's cgroup before it starts `runsc`, so
//! the whole gVisor sandbox (its kernel and the program) is bounded there;
//! inside, gVisor enforces the rlimits. `runsc run` is attached: killing it kills its sandbox. Needs
//! root (runsc's rootless mode cannot bind host directories).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kelpie_core::env::BoxFuture;
use serde_json::{json, Value};

use crate::backend::{
    Backend, BackendKind, ExecOutput, ExecRequest, Instance, InstanceFuture, SandboxSpec, RESULT_SOCKET_ENV,
    RESULT_SOCKET_PATH, SANDBOX_WORK_DIR,
};
use crate::cgroup::{self, Cgroup, CgroupMode, ExecGroups};
use crate::error::SandboxError;
use crate::host_exec::{self, Executions, HostProcess, Reaper};
use crate::limits::SANDBOX_TMP_SIZE_BYTES;
use crate::process::{check_id, find_program, is_root, prepare_dir, remove_idle_dir, SandboxDir};
use crate::rootfs::{self, RootEntry, SANDBOX_GID, SANDBOX_HOSTNAME, SANDBOX_PATH, SANDBOX_UID};

/// Host threads and processes gVisor needs for each process of the program:
/// on the ptrace platform a guest process costs about 11 host tasks (its
/// stub, the kernel's tracer threads); measured 729 host tasks for 64 guest
/// processes.
pub const GVISOR_HOST_TASKS_PER_PROCESS_COUNT: u64 = 16;
/// Host threads and processes gVisor itself needs (its kernel's Go threads,
/// the gofer).
pub const GVISOR_HOST_TASKS_BASE_COUNT: u64 = 256;
/// Memory gVisor's own kernel needs besides the program's.
pub const GVISOR_OVERHEAD_BYTES: u64 = 256 * crate::limits::MIB_BYTES;
const ETC_DIR: &str = "etc";
const LAUNCH_SCRIPT: &str = r#"for f in $KELPIE_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done
exec "$@""#;

struct Shared {
    runsc: PathBuf,
    dir: PathBuf,
    cgroups: Result<CgroupMode, String>,
    available: Result<(), SandboxError>,
}

pub struct GvisorBackend {
    shared: Arc<Shared>,
}

fn unavailable(reason: String) -> SandboxError {
    SandboxError::Unavailable { backend: BackendKind::Gvisor.name(), reason }
}

impl GvisorBackend {
    /// The backend with sandboxes under `dir` (emptied first).
    pub fn open(dir: PathBuf) -> GvisorBackend {
        let runsc = find_program("runsc");
        let available = match (&runsc, is_root()) {
            (None, _) => Err(unavailable("gVisor (`runsc`) is not installed: apt-get install runsc".into())),
            (Some(_), false) => Err(unavailable("runsc needs the server to run as root".into())),
            (Some(_), true) => prepare_dir(&dir).and_then(|()| rootfs::write_etc(&dir.join(ETC_DIR))),
        };
        let cgroups = cgroup::detect();
        let shared = Shared { runsc: runsc.unwrap_or_default(), dir, cgroups, available };
        GvisorBackend { shared: Arc::new(shared) }
    }
}

impl Backend for GvisorBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Gvisor
    }

    fn check_available(&self) -> Result<(), SandboxError> {
        self.shared.available.clone()
    }

    fn writable_owner(&self) -> Option<(u32, u32)> {
        Some((SANDBOX_UID, SANDBOX_GID))
    }

    fn shutdown(&self) {
        remove_idle_dir(&self.shared.dir);
    }

    fn create(&self, id: &str, spec: &SandboxSpec) -> BoxFuture<Result<Arc<dyn Instance>, SandboxError>> {
        let (shared, id, spec) = (Arc::clone(&self.shared), id.to_string(), spec.clone());
        Box::pin(async move {
            shared.available.clone()?;
            check_id(&id)?;
            let dir = SandboxDir::create(&shared.dir, &id, Some((SANDBOX_UID, SANDBOX_GID)))?;
            let groups = ExecGroups::new(shared.cgroups.clone().ok(), &format!("gvisor-{id}"));
            let instance = GvisorInstance {
                shared,
                id,
                spec,
                groups,
                dir,
                next_exec: AtomicU64::new(0),
                executions: Executions::new(),
            };
            Ok(Arc::new(instance) as Arc<dyn Instance>)
        })
    }
}

struct GvisorInstance {
    shared: Arc<Shared>,
    id: String,
    spec: SandboxSpec,
    groups: ExecGroups,
    dir: SandboxDir,
    next_exec: AtomicU64,
    executions: Executions,
}

impl Drop for GvisorInstance {
    fn drop(&mut self) {
        self.executions.interrupt();
        self.groups.kill_all();
    }
}

fn mount(destination: &str, source: &Path, writable: bool) -> Value {
    let mode = if writable { "rw" } else { "ro" };
    json!({"destination": destination, "type": "bind", "source": source, "options": ["rbind", mode]})
}

/// The OCI bundle's `config.json` of one execution.
fn oci_config(
    etc: &Path,
    work: &Path,
    spec: &SandboxSpec,
    request: &ExecRequest,
    ipc: Option<&Path>,
    cgroup_limits: bool,
) -> Value {
    let mut env = vec![
        format!("PATH={SANDBOX_PATH}"),
        format!("HOME={SANDBOX_WORK_DIR}"),
        "TMPDIR=/tmp".to_string(),
        "LANG=C.UTF-8".to_string(),
    ];
    if ipc.is_some() {
        env.push(format!("{RESULT_SOCKET_ENV}={RESULT_SOCKET_PATH}"));
    }
    env.extend(request.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut args = vec![request.program.clone()];
    args.extend(request.args.iter().cloned());
    let tmp_size = format!("size={SANDBOX_TMP_SIZE_BYTES}");
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", tmp_size]}),
        mount("/etc", etc, false),
        mount(SANDBOX_WORK_DIR, work, true),
    ];
    let mut entries = rootfs::system_entries();
    if spec.network {
        entries.extend(rootfs::network_entries());
    }
    for entry in &entries {
        if let RootEntry::ReadOnly { host, at } = entry {
            mounts.push(mount(at, host, false));
        }
    }
    for extra in &spec.mounts {
        mounts.push(mount(&extra.sandbox, &extra.host, extra.writable));
    }
    if let Some(ipc) = ipc {
        mounts.push(mount("/run/kelpie", ipc, false));
    }
    let limits = &request.limits;
    let rlimit = |kind: &str, value: u64| json!({"type": kind, "hard": value, "soft": value});
    let mut rlimits = vec![
        rlimit("RLIMIT_CPU", limits.cpu_seconds()),
        rlimit("RLIMIT_FSIZE", limits.file_size_bytes),
        rlimit("RLIMIT_CORE", 0),
        rlimit("RLIMIT_NPROC", limits.processes_count),
    ];
    if !cgroup_limits {
        // Without a cgroup around the sandbox, each process's address space is bounded instead.
        rlimits.push(rlimit("RLIMIT_AS", limits.memory_bytes));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if !spec.network {
        namespaces.push(json!({"type": "network"}));
    }
    json!({
        "ociVersion": "1.0.2",
        "hostname": SANDBOX_HOSTNAME,
        "root": {"path": "rootfs", "readonly": true},
        "process": {
            "terminal": false,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_GID},
            "args": args,
            "env": env,
            "cwd": SANDBOX_WORK_DIR,
            "noNewPrivileges": true,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "rlimits": rlimits,
        },
        "mounts": mounts,
        "linux": {"namespaces": namespaces},
    })
}

/// Writes the bundle of execution `n`: `config.json` and an empty root
/// holding only the mount points and the system's links.
fn write_bundle(dir: &Path, config: &Value) -> Result<(), SandboxError> {
    let io = |e: std::io::Error| SandboxError::Create(format!("bundle {}: {e}", dir.display()));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io)?;
    for entry in rootfs::system_entries() {
        if let RootEntry::Link { target, at } = entry {
            std::os::unix::fs::symlink(target, rootfs.join(at.trim_start_matches('/'))).map_err(io)?;
        }
    }
    let text = serde_json::to_vec_pretty(config).expect("a JSON value serializes");
    std::fs::write(dir.join("config.json"), text).map_err(io)
}

struct RunscReaper<'a> {
    cgroup: Option<&'a Cgroup>,
    oom_before: u64,
}

impl Reaper for RunscReaper<'_> {
    fn kill_all(&self, pid: Option<u32>) {
        // `runsc run` is attached: its sandbox dies with it.
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(cgroup) = self.cgroup {
            cgroup.kill_all();
        }
    }

    fn hit_memory_limit(&self) -> bool {
        self.cgroup.is_some_and(|cgroup| cgroup.oom_kills() > self.oom_before)
    }
}

impl GvisorInstance {
    fn runsc_args(&self, bundle: &Path, container: &str) -> Vec<OsString> {
        let network = if self.spec.network { "--network=host" } else { "--network=none" };
        let root = self.dir.path.join("runsc-state");
        let mut args: Vec<OsString> = vec!["-c".into(), LAUNCH_SCRIPT.into(), "kelpie-launch".into()];
        args.push(self.shared.runsc.clone().into());
        args.extend(["--ignore-cgroups", network, "--host-uds=open"].map(OsString::from));
        args.push(OsString::from("--root"));
        args.push(root.into());
        args.extend(["run", "--bundle"].map(OsString::from));
        args.push(bundle.into());
        args.push(container.into());
        args
    }

    async fn run(&self, request: ExecRequest) -> Result<ExecOutput, SandboxError> {
        let n = self.next_exec.fetch_add(1, Ordering::SeqCst);
        let mut host_limits = request.limits;
        host_limits.memory_bytes += GVISOR_OVERHEAD_BYTES;
        host_limits.processes_count = request.limits.processes_count * GVISOR_HOST_TASKS_PER_PROCESS_COUNT
            + GVISOR_HOST_TASKS_BASE_COUNT;
        let group = self.groups.start(n, &host_limits)?;
        let cgroup = group.as_ref().map(|group| group.cgroup.as_ref());
        let (ipc, listener) = match request.result_channel {
            true => {
                let (dir, listener) = self.dir.result_socket(n, Some((SANDBOX_UID, SANDBOX_GID)))?;
                (Some(dir), Some(listener))
            }
            false => (None, None),
        };
        let bundle = self.dir.path.join(format!("bundle-{n}"));
        let etc = self.shared.dir.join(ETC_DIR);
        let config =
            oci_config(&etc, &self.dir.work(), &self.spec, &request, ipc.as_deref(), cgroup.is_some());
        write_bundle(&bundle, &config)?;
        let container = format!("{}-{n}", self.id);
        let procs: Vec<String> =
            cgroup.iter().flat_map(|c| c.procs_files()).map(|p| p.display().to_string()).collect();
        let process = HostProcess {
            program: PathBuf::from("/bin/sh"),
            args: self.runsc_args(&bundle, &container),
            env: vec![
                ("PATH".to_string(), "/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
                ("KELPIE_CGROUP_PROCS".to_string(), procs.join(" ")),
            ],
            cwd: self.dir.path.clone(),
            user: None,
        };
        let reaper = RunscReaper { cgroup, oom_before: cgroup.map_or(0, Cgroup::oom_kills) };
        let interrupts = self.executions.interrupts();
        let outcome =
            host_exec::run(process, request.stdin, &request.limits, listener, interrupts, &reaper).await;
        // A container runsc could not delete itself (killed mid-run) is
        // deleted here, so no state or process is left.
        let _ = tokio::process::Command::new(&self.shared.runsc)
            .arg("--root")
            .arg(self.dir.path.join("runsc-state"))
            .args(["delete", "--force", &container])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        drop(group);
        let _ = std::fs::remove_dir_all(&bundle);
        if let Some(ipc) = ipc {
            let _ = std::fs::remove_dir_all(ipc);
        }
        outcome
    }
}

impl Instance for GvisorInstance {
    fn exec(&self, request: ExecRequest) -> InstanceFuture<'_, Result<ExecOutput, SandboxError>> {
        Box::pin(async move {
            request.check_no_control(BackendKind::Gvisor)?;
            let _running = self.executions.begin()?;
            self.run(request).await
        })
    }

    fn pause(&self) -> Result<(), SandboxError> {
        self.groups.freeze()
    }

    fn resume(&self) -> Result<(), SandboxError> {
        self.groups.thaw()
    }

    fn destroy(&self) -> InstanceFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move {
            let _ = self.groups.thaw();
            self.groups.kill_all();
            // Running executions see the interrupt, kill their process and end.
            self.executions.interrupt_and_wait().await;
            host_exec::remove_dir(&self.dir.path)
        })
    }
}
