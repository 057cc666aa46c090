//! The `process` backend, the default: each execution runs under
//! bubblewrap (`bwrap`) in new user, pid, ipc, uts, cgroup, mount and (unless
//! the sandbox has network) net namespaces, with no capabilities, on the
//! root described in [`crate::rootfs`], in a cgroup with the execution's
//! memory, process and CPU limits (rlimits where no cgroup can be had).
//!
//! When the server runs as root, sandboxes run as the host's `nobody`
//! (uid/gid 65534), so even a way out of the namespaces lands without
//! privileges (and must be able to traverse to the sandboxes dir, which
//! [`ProcessBackend::open`] checks). The launch goes: `sh` (joins the
//! execution's cgroup, sets the rlimits) → `setpriv` (drops to `nobody`) →
//! `bwrap` → the program. bwrap
//! stays the namespace's init and is killed with its parent: when the
//! program exits, or the call is killed, every process it started dies with
//! the pid namespace, so nothing outlives the call.
//!
//! The root bwrap builds is remounted read-only: a program writes only
//! `/work`, `/tmp` and `/dev`. An execution may also ask for a control
//! channel ([`crate::served`]): a long-lived fork server in the sandbox
//! then serves many calls, and kills and wipes what each left itself.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kelpie_core::env::BoxFuture;
use tokio::net::UnixListener;

use crate::backend::{
    Backend, BackendKind, ExecOutput, ExecRequest, Instance, InstanceFuture, Mount, SandboxSpec,
    RESULT_SOCKET_ENV, RESULT_SOCKET_PATH, SANDBOX_WORK_DIR,
};
use crate::cgroup::{self, Cgroup, CgroupMode, ExecGroups};
use crate::error::SandboxError;
use crate::host_exec::{self, Executions, HostProcess, Reaper};
use crate::limits::{ExecLimits, SANDBOX_TMP_SIZE_BYTES};
use crate::rootfs::{self, RootEntry, SANDBOX_GID, SANDBOX_HOSTNAME, SANDBOX_PATH, SANDBOX_UID};
use crate::served::{Control, ControlChannel, CONTROL_SOCKET_ENV, CONTROL_SOCKET_PATH};

/// The host user and group sandboxes run as when the server is root.
pub const SANDBOX_HOST_UID: u32 = 65_534;
pub const SANDBOX_HOST_GID: u32 = 65_534;
/// Longest sandbox id, in bytes (it names a directory and a cgroup).
pub const SANDBOX_ID_BYTES_MAX: usize = 64;
/// The launcher's exit code when it could not set the execution up.
pub const LAUNCH_FAILED_EXIT_CODE: i32 = 125;
/// Where the sandbox's `/etc` is written, under the sandboxes dir.
const ETC_DIR: &str = "etc";
const LAUNCH_SCRIPT: &str = r#"for f in $KELPIE_CGROUP_PROCS; do echo $$ > "$f" || exit 125; done
ulimit -c 0 && ulimit -f "$KELPIE_FSIZE_BLOCKS" && ulimit -t "$KELPIE_CPU_SECONDS" || exit 125
if [ -n "$KELPIE_AS_KIB" ]; then ulimit -v "$KELPIE_AS_KIB" || exit 125; fi
if [ -n "$KELPIE_NPROC" ]; then ulimit -p "$KELPIE_NPROC" || exit 125; fi
unset KELPIE_CGROUP_PROCS KELPIE_FSIZE_BLOCKS KELPIE_CPU_SECONDS KELPIE_AS_KIB KELPIE_NPROC PATH
exec "$@""#;
/// Bytes per block of `ulimit -f`.
const ULIMIT_BLOCK_BYTES: u64 = 512;
/// The sandbox's own directories bound into it: its `/etc`, its `/work`,
/// the result socket's directory, the spec's mounts.
fn sandbox_binds(etc: &Path, work: &Path, ipc: Option<&Path>, spec: &SandboxSpec) -> Vec<Mount> {
    let bind = |host: &Path, at: &str, writable| Mount {
        host: host.to_path_buf(),
        sandbox: at.to_string(),
        writable,
    };
    let mut binds = vec![bind(etc, "/etc", false), bind(work, SANDBOX_WORK_DIR, true)];
    if let Some(ipc) = ipc {
        binds.push(bind(ipc, "/run/kelpie", false));
    }
    binds.extend(spec.mounts.iter().cloned());
    binds
}

/// Checks a sandbox id is one safe path component.
pub(crate) fn check_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= SANDBOX_ID_BYTES_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidRequest(format!(
            "sandbox id {id:?} must be 1..={SANDBOX_ID_BYTES_MAX} bytes of [A-Za-z0-9_-]"
        )))
    }
}

/// Finds `name` on the server's `PATH`.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Removes what a server that died left in `dir` (each sandbox is a
/// directory there) and returns it ready for new sandboxes.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), SandboxError> {
    let io = |e: std::io::Error| SandboxError::Create(format!("sandboxes dir {}: {e}", dir.display()));
    if dir.exists() {
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    set_mode(dir, 0o711)
}

/// Removes a backend's sandboxes dir at shutdown: its shared `/etc`, and the
/// directory itself once no sandbox is left in it.
pub(crate) fn remove_idle_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join(ETC_DIR));
    let _ = std::fs::remove_dir(dir);
}

/// Checks every directory above `dir` lets other users through: a sandbox
/// runs as another user, which must reach its own directories.
pub(crate) fn check_traversable(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let absolute = std::path::absolute(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
    for ancestor in absolute.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o001 == 0 {
            return Err(unavailable(format!(
                "the sandbox user (uid {SANDBOX_HOST_UID}) cannot reach {}: {} is mode {:o}; give it o+x or set sandbox.dir elsewhere",
                dir.display(),
                ancestor.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| SandboxError::Create(format!("chmod {}: {e}", path.display())))
}

fn give_to(path: &Path, user: Option<(u32, u32)>) -> Result<(), SandboxError> {
    let Some((uid, gid)) = user else { return Ok(()) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| SandboxError::Create(format!("chown {}: {e}", path.display())))
}

struct Shared {
    bwrap: PathBuf,
    /// `setpriv`, when the server is root and sandboxes drop to `nobody`.
    setpriv: Option<PathBuf>,
    user: Option<(u32, u32)>,
    dir: PathBuf,
    cgroups: Result<CgroupMode, String>,
    available: Result<(), SandboxError>,
}

pub struct ProcessBackend {
    shared: Arc<Shared>,
}

fn unavailable(reason: String) -> SandboxError {
    SandboxError::Unavailable { backend: BackendKind::Process.name(), reason }
}

/// Runs bwrap once with every namespace, proving this kernel lets it.
fn probe_bwrap(bwrap: &Path, setpriv: Option<&Path>) -> Result<(), SandboxError> {
    let mut command = match setpriv {
        Some(setpriv) => {
            let mut command = std::process::Command::new(setpriv);
            command.args(setpriv_args()).arg(bwrap);
            command
        }
        None => std::process::Command::new(bwrap),
    };
    command.args(["--unshare-all", "--die-with-parent"]);
    for entry in rootfs::system_entries() {
        match entry {
            RootEntry::ReadOnly { host, at } => command.arg("--ro-bind").arg(host).arg(at),
            RootEntry::Link { target, at } => command.arg("--symlink").arg(target).arg(at),
        };
    }
    command.arg("/usr/bin/true");
    let output = command
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| unavailable(format!("cannot run {}: {e}", bwrap.display())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(unavailable(format!(
        "bwrap cannot create namespaces here ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

fn setpriv_args() -> Vec<String> {
    vec![
        format!("--reuid={SANDBOX_HOST_UID}"),
        format!("--regid={SANDBOX_HOST_GID}"),
        "--clear-groups".into(),
        "--inh-caps=-all".into(),
        "--bounding-set=-all".into(),
        "--".into(),
    ]
}

impl ProcessBackend {
    /// The backend with sandboxes under `dir` (emptied of what a previous
    /// server left). Never fails: what is missing is reported by
    /// [`Backend::check_available`] and by every create.
    pub fn open(dir: PathBuf) -> ProcessBackend {
        let root = is_root();
        let user = root.then_some((SANDBOX_HOST_UID, SANDBOX_HOST_GID));
        let bwrap = find_program("bwrap");
        let setpriv = if root { find_program("setpriv") } else { None };
        let available = match (&bwrap, root, &setpriv) {
            (None, _, _) => {
                Err(unavailable("bubblewrap (`bwrap`) is not installed: apt-get install bubblewrap".into()))
            }
            (Some(_), true, None) => Err(unavailable("`setpriv` (util-linux) is not installed".into())),
            (Some(bwrap), _, setpriv) => prepare_dir(&dir)
                .and_then(|()| if root { check_traversable(&dir) } else { Ok(()) })
                .and_then(|()| rootfs::write_etc(&dir.join(ETC_DIR)))
                .and_then(|()| probe_bwrap(bwrap, setpriv.as_deref())),
        };
        let cgroups = cgroup::detect();
        if let Err(reason) = &cgroups {
            tracing::warn!(%reason, "sandboxes get rlimits instead of cgroup limits");
        }
        let shared = Shared { bwrap: bwrap.unwrap_or_default(), setpriv, user, dir, cgroups, available };
        ProcessBackend { shared: Arc::new(shared) }
    }

    /// Whether executions get cgroup limits (else rlimits), and why not.
    pub fn cgroups(&self) -> Result<&CgroupMode, &str> {
        self.shared.cgroups.as_ref().map_err(String::as_str)
    }
}

impl Backend for ProcessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Process
    }

    fn check_available(&self) -> Result<(), SandboxError> {
        self.shared.available.clone()
    }

    fn writable_owner(&self) -> Option<(u32, u32)> {
        self.shared.user
    }

    fn shutdown(&self) {
        remove_idle_dir(&self.shared.dir);
    }

    fn create(&self, id: &str, spec: &SandboxSpec) -> BoxFuture<Result<Arc<dyn Instance>, SandboxError>> {
        let (shared, id, spec) = (Arc::clone(&self.shared), id.to_string(), spec.clone());
        Box::pin(async move {
            shared.available.clone()?;
            check_id(&id)?;
            let instance = ProcessInstance::create(shared, &id, spec)?;
            Ok(Arc::new(instance) as Arc<dyn Instance>)
        })
    }
}

/// A sandbox's directory; removed when dropped.
pub(crate) struct SandboxDir {
    pub path: PathBuf,
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a sandbox directory");
            }
        }
    }
}

impl SandboxDir {
    /// `<dir>/<id>` with `work/` for the program and `ipc/` for result sockets.
    pub(crate) fn create(dir: &Path, id: &str, user: Option<(u32, u32)>) -> Result<SandboxDir, SandboxError> {
        let path = dir.join(id);
        std::fs::create_dir(&path).map_err(|e| SandboxError::Create(format!("{}: {e}", path.display())))?;
        let made = SandboxDir { path };
        set_mode(&made.path, 0o711)?;
        for sub in ["work", "ipc"] {
            let sub = made.path.join(sub);
            std::fs::create_dir(&sub).map_err(|e| SandboxError::Create(format!("{}: {e}", sub.display())))?;
            give_to(&sub, user)?;
        }
        set_mode(&made.path.join("work"), 0o700)?;
        Ok(made)
    }

    pub(crate) fn work(&self) -> PathBuf {
        self.path.join("work")
    }

    /// A fresh directory for execution `n`'s result socket, and the socket
    /// listening in it (reachable by the sandbox's user only).
    pub(crate) fn result_socket(
        &self,
        n: u64,
        user: Option<(u32, u32)>,
    ) -> Result<(PathBuf, UnixListener), SandboxError> {
        let dir = self.ipc_dir(n, user)?;
        let listener = listen(&dir, "result.sock", user)?;
        Ok((dir, listener))
    }

    /// A fresh directory for execution `n`'s sockets.
    pub(crate) fn ipc_dir(&self, n: u64, user: Option<(u32, u32)>) -> Result<PathBuf, SandboxError> {
        let dir = self.path.join("ipc").join(n.to_string());
        std::fs::create_dir(&dir).map_err(|e| SandboxError::Create(format!("{}: {e}", dir.display())))?;
        give_to(&dir, user)?;
        Ok(dir)
    }
}

/// A Unix socket `name` in `dir`, listening, reachable by `user` only.
pub(crate) fn listen(dir: &Path, name: &str, user: Option<(u32, u32)>) -> Result<UnixListener, SandboxError> {
    let socket = dir.join(name);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| SandboxError::Create(format!("socket {}: {e}", socket.display())))?;
    give_to(&socket, user)?;
    set_mode(&socket, 0o600)?;
    Ok(listener)
}

struct ProcessInstance {
    shared: Arc<Shared>,
    spec: SandboxSpec,
    /// Field order matters: the cgroups (killing what runs) go before the directory.
    groups: ExecGroups,
    dir: SandboxDir,
    next_exec: AtomicU64,
    executions: Executions,
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        self.executions.interrupt();
        self.groups.kill_all();
    }
}

impl ProcessInstance {
    fn create(shared: Arc<Shared>, id: &str, spec: SandboxSpec) -> Result<ProcessInstance, SandboxError> {
        for mount in &spec.mounts {
            if !mount.sandbox.starts_with('/') || !mount.host.is_dir() {
                return Err(SandboxError::InvalidRequest(format!(
                    "mount {} at {:?}: the host side must be a directory, the sandbox side absolute",
                    mount.host.display(),
                    mount.sandbox
                )));
            }
        }
        let dir = SandboxDir::create(&shared.dir, id, shared.user)?;
        let groups = ExecGroups::new(shared.cgroups.clone().ok(), id);
        Ok(ProcessInstance {
            shared,
            spec,
            groups,
            dir,
            next_exec: AtomicU64::new(0),
            executions: Executions::new(),
        })
    }

    fn launch_env(&self, limits: &ExecLimits, cgroup: Option<&Cgroup>) -> Vec<(String, String)> {
        let procs = cgroup.map(|c| c.procs_files()).unwrap_or_default();
        let procs: Vec<String> = procs.iter().map(|p| p.display().to_string()).collect();
        let mut env = vec![
            ("PATH".to_string(), "/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
            ("KELPIE_CGROUP_PROCS".to_string(), procs.join(" ")),
            (
                "KELPIE_FSIZE_BLOCKS".to_string(),
                limits.file_size_bytes.div_ceil(ULIMIT_BLOCK_BYTES).to_string(),
            ),
            ("KELPIE_CPU_SECONDS".to_string(), limits.cpu_seconds().to_string()),
        ];
        if cgroup.is_none() {
            // Without cgroups, per-process rlimits bound memory and processes.
            env.push(("KELPIE_AS_KIB".to_string(), (limits.memory_bytes / 1024).to_string()));
            env.push(("KELPIE_NPROC".to_string(), limits.processes_count.to_string()));
        }
        env
    }

    fn command(&self, request: &ExecRequest, binds: &[Mount]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-c".into(), LAUNCH_SCRIPT.into(), "kelpie-launch".into()];
        if let Some(setpriv) = &self.shared.setpriv {
            args.push(setpriv.into());
            args.extend(setpriv_args().into_iter().map(OsString::from));
        }
        args.push(self.shared.bwrap.clone().into());
        args.extend(bwrap_args(binds, &self.spec, request));
        args
    }

    async fn run(&self, request: ExecRequest) -> Result<ExecOutput, SandboxError> {
        let n = self.next_exec.fetch_add(1, Ordering::SeqCst);
        let group = self.groups.start(n, &request.limits)?;
        let cgroup = group.as_ref().map(|group| group.cgroup.as_ref());
        let wants_ipc = request.result_channel || request.control.is_some();
        let ipc = if wants_ipc { Some(self.dir.ipc_dir(n, self.shared.user)?) } else { None };
        let listener = match (&ipc, request.result_channel) {
            (Some(dir), true) => Some(listen(dir, "result.sock", self.shared.user)?),
            _ => None,
        };
        let control = match (&ipc, &request.control) {
            (Some(dir), Some(channel)) => {
                let listener = listen(dir, "control.sock", self.shared.user)?;
                let cgroup = group.as_ref().map(|group| Arc::clone(&group.cgroup));
                Some(hand_over_control(listener, channel.clone(), cgroup))
            }
            _ => None,
        };
        let binds =
            sandbox_binds(&self.shared.dir.join(ETC_DIR), &self.dir.work(), ipc.as_deref(), &self.spec);
        let process = HostProcess {
            program: PathBuf::from("/bin/sh"),
            args: self.command(&request, &binds),
            env: self.launch_env(&request.limits, cgroup),
            cwd: self.dir.path.clone(),
            user: None,
        };
        let reaper = ExecReaper { cgroup, oom_before: cgroup.map_or(0, Cgroup::oom_kills) };
        let interrupts = self.executions.interrupts();
        let outcome =
            host_exec::run(process, request.stdin, &request.limits, listener, interrupts, &reaper).await;
        drop(control);
        if let Some(cgroup) = &cgroup {
            cgroup.remove();
        }
        if let Some(ipc) = ipc {
            let _ = std::fs::remove_dir_all(ipc);
        }
        outcome
    }
}

/// The bubblewrap arguments of one execution: namespaces, the root, the
/// limits on `/tmp`, the environment, then the program.
fn bwrap_args(binds: &[Mount], spec: &SandboxSpec, request: &ExecRequest) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&dyn AsRef<std::ffi::OsStr>]| {
        args.extend(parts.iter().map(|part| part.as_ref().to_os_string()));
    };
    push(&[&"--unshare-user", &"--unshare-pid", &"--unshare-ipc", &"--unshare-uts", &"--unshare-cgroup-try"]);
    if !spec.network {
        push(&[&"--unshare-net"]);
    }
    push(&[&"--die-with-parent", &"--new-session", &"--cap-drop", &"ALL", &"--clearenv"]);
    let (uid, gid) = (SANDBOX_UID.to_string(), SANDBOX_GID.to_string());
    push(&[&"--uid", &uid, &"--gid", &gid, &"--hostname", &SANDBOX_HOSTNAME]);
    let mut entries = rootfs::system_entries();
    if spec.network {
        entries.extend(rootfs::network_entries());
    }
    for entry in &entries {
        match entry {
            RootEntry::ReadOnly { host, at } => push(&[&"--ro-bind", host, at]),
            RootEntry::Link { target, at } => push(&[&"--symlink", target, at]),
        }
    }
    let tmp_size = SANDBOX_TMP_SIZE_BYTES.to_string();
    push(&[&"--proc", &"/proc", &"--dev", &"/dev", &"--size", &tmp_size, &"--tmpfs", &"/tmp"]);
    for bind in binds {
        let kind = if bind.writable { "--bind" } else { "--ro-bind" };
        push(&[&kind, &bind.host, &bind.sandbox]);
    }
    // The root itself (a tmpfs bwrap made) is read-only: a program may
    // write only /work, /tmp and /dev, which a fork server wipes between calls.
    push(&[&"--remount-ro", &"/", &"--chdir", &SANDBOX_WORK_DIR]);
    let mut env = vec![
        ("PATH", SANDBOX_PATH.to_string()),
        ("HOME", SANDBOX_WORK_DIR.to_string()),
        ("TMPDIR", "/tmp".to_string()),
        ("LANG", "C.UTF-8".to_string()),
    ];
    if request.result_channel {
        env.push((RESULT_SOCKET_ENV, RESULT_SOCKET_PATH.to_string()));
    }
    if request.control.is_some() {
        env.push((CONTROL_SOCKET_ENV, CONTROL_SOCKET_PATH.to_string()));
    }
    for (key, value) in env
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(request.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        push(&[&"--setenv", &key, &value]);
    }
    push(&[&"--", &request.program]);
    args.extend(request.args.iter().map(OsString::from));
    args
}

/// Accepts the first connection to `listener` and hands it to `channel`;
/// the task ends (and the listener closes) when the returned guard drops.
fn hand_over_control(
    listener: UnixListener,
    channel: ControlChannel,
    cgroup: Option<Arc<Cgroup>>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        if let Ok((stream, _)) = listener.accept().await {
            channel.deliver(Control::new(stream, cgroup));
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct ExecReaper<'a> {
    cgroup: Option<&'a Cgroup>,
    oom_before: u64,
}

impl Reaper for ExecReaper<'_> {
    fn kill_all(&self, pid: Option<u32>) {
        if let Some(cgroup) = self.cgroup {
            cgroup.kill_all();
        }
        // Without a cgroup, the launcher's process group holds bwrap, whose
        // death ends the pid namespace and everything in it.
        if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn hit_memory_limit(&self) -> bool {
        self.cgroup.is_some_and(|cgroup| cgroup.oom_kills() > self.oom_before)
    }
}

impl Instance for ProcessInstance {
    fn exec(&self, request: ExecRequest) -> InstanceFuture<'_, Result<ExecOutput, SandboxError>> {
        Box::pin(async move {
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
