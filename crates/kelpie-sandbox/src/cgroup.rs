//! Control groups for sandboxes: a memory, process-count and CPU limit for
//! every execution, a freezer for pause, and a way to kill every process
//! of an execution at once.
//!
//! Layout: `<parent>/kelpie-sandboxes/<sandbox id>-<exec n>`, one cgroup per
//! execution under this process's own cgroup; a sandbox's executions are
//! frozen together ([`ExecGroups`]). cgroup v2 (one hierarchy) is used where it offers
//! the `memory` and `pids` controllers; otherwise cgroup v1, one directory per
//! controller (`memory`, `pids`, `cpu`, `freezer`). Where neither can be
//! written (an unprivileged container, a read-only cgroupfs) [`detect`]
//! says why and the backends fall back to rlimits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::SandboxError;
use crate::limits::ExecLimits;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const SANDBOXES_DIR: &str = "kelpie-sandboxes";
const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];
/// CPU weight of a sandbox against the server's default (v1 `cpu.shares`
/// 1024, v2 `cpu.weight` 100): a busy tool gets a quarter of what the
/// server gets when both want the CPU, and everything when it is idle. A
/// weight, not a quota: a quota throttles even an idle machine.
const CPU_SHARES_V1: u64 = 256;
const CPU_WEIGHT_V2: u64 = 25;
/// How long removing a cgroup waits for its last processes to be reaped.
const REMOVE_WAIT_MS_MAX: u64 = 2_000;
const REMOVE_RETRY_MS: u64 = 1;

/// Which cgroup hierarchy sandboxes use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// One directory: `<v2 parent>/kelpie-sandboxes`.
    V2 { parent: PathBuf },
    /// `kelpie-sandboxes` under this process's cgroup of each controller.
    V1 { parents: Vec<(&'static str, PathBuf)> },
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value)
        .map_err(|e| SandboxError::Io(format!("write {value:?} to {}: {e}", path.display())))
}

fn own_path(controller: Option<&str>) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => names.is_empty(),
            Some(controller) => names.split(',').any(|name| name == controller),
        };
        matches.then(|| path.trim_start_matches('/').to_string())
    })
}

fn detect_v2() -> Result<CgroupMode, String> {
    let root = Path::new(CGROUP_ROOT);
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(|_| "no cgroup v2 hierarchy at /sys/fs/cgroup".to_string())?;
    if !["memory", "pids"].iter().all(|c| controllers.split_whitespace().any(|have| have == *c)) {
        return Err(format!("cgroup v2 offers only [{}], not memory and pids", controllers.trim()));
    }
    let own = root.join(own_path(None).unwrap_or_default());
    // A cgroup with processes cannot give its children controllers (v2's
    // no-internal-process rule), so sandboxes go beside this process's
    // cgroup when it is not the root.
    let base = if own == root { own } else { own.parent().map(Path::to_path_buf).unwrap_or(own) };
    let parent = base.join(SANDBOXES_DIR);
    std::fs::create_dir_all(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu").map_err(|e| e.to_string())?;
    Ok(CgroupMode::V2 { parent })
}

fn detect_v1() -> Result<CgroupMode, String> {
    let mut parents = Vec::new();
    for controller in V1_CONTROLLERS {
        let mount = Path::new(CGROUP_ROOT).join(controller);
        if !mount.join("cgroup.procs").exists() {
            return Err(format!("no cgroup v1 {controller} controller at {}", mount.display()));
        }
        let parent = mount.join(own_path(Some(controller)).unwrap_or_default()).join(SANDBOXES_DIR);
        std::fs::create_dir_all(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        parents.push((controller, parent));
    }
    Ok(CgroupMode::V1 { parents })
}

/// Probes made by this process so far: each probe gets its own name, so
/// backends opened at once (tests in parallel) never collide on one.
static PROBES_COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The cgroup hierarchy sandboxes can use here, proven by creating and
/// removing a probe cgroup; why none can, otherwise.
pub fn detect() -> Result<CgroupMode, String> {
    let mode = detect_v2().or_else(|v2| detect_v1().map_err(|v1| format!("{v2}; {v1}")))?;
    let n = PROBES_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = Cgroup::create(&mode, &format!("probe-{}-{n}", std::process::id()))
        .map_err(|e| format!("cannot create a cgroup: {e}"))?;
    probe.remove();
    Ok(mode)
}

/// One cgroup (one directory per controller in v1).
#[derive(Debug)]
pub struct Cgroup {
    v2: bool,
    /// `(controller, dir)`; the controller is empty in v2.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Cgroup {
    /// `<sandboxes dir>/<name>` in every hierarchy of `mode`.
    pub fn create(mode: &CgroupMode, name: &str) -> Result<Cgroup, SandboxError> {
        assert!(!name.is_empty() && !name.contains('/'), "a cgroup name is one path part");
        let (v2, dirs) = match mode {
            CgroupMode::V2 { parent } => (true, vec![("", parent.join(name))]),
            CgroupMode::V1 { parents } => (false, parents.iter().map(|(c, p)| (*c, p.join(name))).collect()),
        };
        let cgroup = Cgroup { v2, dirs: Vec::new() };
        cgroup.grow(dirs)
    }

    /// Creates `dirs` one by one; on failure removes those made.
    fn grow(mut self, dirs: Vec<(&'static str, PathBuf)>) -> Result<Cgroup, SandboxError> {
        for (controller, dir) in dirs {
            std::fs::create_dir(&dir)
                .map_err(|e| SandboxError::Create(format!("cgroup {}: {e}", dir.display())))?;
            self.dirs.push((controller, dir));
        }
        Ok(self)
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.iter().find(|(c, _)| self.v2 || *c == controller).map(|(_, dir)| dir.as_path())
    }

    /// Sets the memory and process limits and the CPU weight of an execution.
    pub fn limit(&self, limits: &ExecLimits) -> Result<(), SandboxError> {
        if self.v2 {
            let dir = &self.dirs[0].1;
            write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
            // Swap would let a process outgrow its memory limit.
            let _ = write(&dir.join("memory.swap.max"), "0");
            write(&dir.join("pids.max"), &limits.processes_count.to_string())?;
            write(&dir.join("cpu.weight"), &CPU_WEIGHT_V2.to_string())?;
            return Ok(());
        }
        let memory = self.dir("memory").expect("v1 has a memory cgroup");
        write(&memory.join("memory.limit_in_bytes"), &limits.memory_bytes.to_string())?;
        // Only where swap accounting exists; without swap nothing to bound.
        let _ = write(&memory.join("memory.memsw.limit_in_bytes"), &limits.memory_bytes.to_string());
        let pids = self.dir("pids").expect("v1 has a pids cgroup");
        write(&pids.join("pids.max"), &limits.processes_count.to_string())?;
        let cpu = self.dir("cpu").expect("v1 has a cpu cgroup");
        write(&cpu.join("cpu.shares"), &CPU_SHARES_V1.to_string())?;
        Ok(())
    }

    /// The files a process writes its pid into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, dir)| dir.join("cgroup.procs")).collect()
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for (_, dir) in &self.dirs {
            let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(text.lines().filter_map(|line| line.trim().parse::<i32>().ok()));
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    pub fn is_empty(&self) -> bool {
        self.pids().is_empty()
    }

    /// Kills every process in this cgroup and its children. In v1 the
    /// processes are frozen first, so none can fork past the kill.
    pub fn kill_all(&self) {
        if self.pids().is_empty() {
            return;
        }
        if self.v2 && write(&self.dirs[0].1.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let frozen = self.freeze().is_ok();
        for pid in self.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if frozen {
            let _ = self.thaw();
        }
    }

    pub fn freeze(&self) -> Result<(), SandboxError> {
        if self.v2 {
            return write(&self.dirs[0].1.join("cgroup.freeze"), "1");
        }
        let dir = self.dir("freezer").expect("v1 has a freezer cgroup");
        write(&dir.join("freezer.state"), "FROZEN")
    }

    pub fn thaw(&self) -> Result<(), SandboxError> {
        if self.v2 {
            return write(&self.dirs[0].1.join("cgroup.freeze"), "0");
        }
        let dir = self.dir("freezer").expect("v1 has a freezer cgroup");
        write(&dir.join("freezer.state"), "THAWED")
    }

    /// How many processes the memory limit has killed here so far.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = if self.v2 {
            (self.dirs[0].1.as_path(), "memory.events")
        } else {
            (self.dir("memory").expect("v1 has a memory cgroup"), "memory.oom_control")
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Kills what is left and removes the cgroup. Waits a little for the
    /// kernel to reap killed processes.
    pub fn remove(&self) {
        self.kill_all();
        let _ = self.thaw();
        let deadline = std::time::Instant::now() + Duration::from_millis(REMOVE_WAIT_MS_MAX);
        for (_, dir) in &self.dirs {
            remove_dir(dir, deadline);
        }
    }
}

/// Removes cgroup directory `dir` (rmdir only: a cgroup's files are not
/// removable), retrying while its processes are still exiting.
fn remove_dir(dir: &Path, deadline: std::time::Instant) {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(REMOVE_RETRY_MS))
            }
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a sandbox cgroup");
                return;
            }
        }
    }
}

/// The cgroups of one sandbox's running executions: one per execution, so
/// each has its own limits, all frozen together while the sandbox is paused
/// (an execution that starts meanwhile is frozen at once). Without cgroups
/// (`mode` is `None`) executions get rlimits and pausing is refused.
pub struct ExecGroups {
    mode: Option<CgroupMode>,
    sandbox: String,
    live: std::sync::Mutex<LiveGroups>,
}

#[derive(Default)]
struct LiveGroups {
    paused: bool,
    groups: Vec<(u64, std::sync::Arc<Cgroup>)>,
}

/// An execution's cgroup, removed (with whatever still runs in it) on drop.
pub struct ExecGroup<'a> {
    owner: &'a ExecGroups,
    n: u64,
    pub cgroup: std::sync::Arc<Cgroup>,
}

impl Drop for ExecGroup<'_> {
    fn drop(&mut self) {
        self.owner.lock().groups.retain(|(n, _)| *n != self.n);
        self.cgroup.remove();
    }
}

impl ExecGroups {
    pub fn new(mode: Option<CgroupMode>, sandbox: &str) -> Self {
        ExecGroups { mode, sandbox: sandbox.to_string(), live: std::sync::Mutex::new(LiveGroups::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveGroups> {
        self.live.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The cgroup of execution `n` with `limits`; `None` without cgroups.
    pub fn start(&self, n: u64, limits: &ExecLimits) -> Result<Option<ExecGroup<'_>>, SandboxError> {
        let Some(mode) = &self.mode else { return Ok(None) };
        let cgroup = Cgroup::create(mode, &format!("{}-{n}", self.sandbox))?;
        let group = ExecGroup { owner: self, n, cgroup: std::sync::Arc::new(cgroup) };
        group.cgroup.limit(limits)?;
        let mut live = self.lock();
        if live.paused {
            group.cgroup.freeze()?;
        }
        live.groups.push((n, std::sync::Arc::clone(&group.cgroup)));
        Ok(Some(group))
    }

    /// Freezes every execution of the sandbox, and those that start after.
    pub fn freeze(&self) -> Result<(), SandboxError> {
        if self.mode.is_none() {
            return Err(SandboxError::Control {
                what: "pause",
                reason: "pausing needs a cgroup freezer, and this machine gives none".into(),
            });
        }
        let mut live = self.lock();
        live.paused = true;
        live.groups.iter().try_for_each(|(_, cgroup)| cgroup.freeze())
    }

    /// Thaws what [`Self::freeze`] froze.
    pub fn thaw(&self) -> Result<(), SandboxError> {
        let mut live = self.lock();
        live.paused = false;
        live.groups.iter().try_for_each(|(_, cgroup)| cgroup.thaw())
    }

    /// Kills every process of every execution.
    pub fn kill_all(&self) {
        for (_, cgroup) in &self.lock().groups {
            cgroup.kill_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backends opened at once each probe the hierarchy; none may see
    /// another's probe and conclude there are no cgroups. Needs cgroups
    /// (as every sandbox test here does): fails without them.
    #[test]
    fn concurrent_detections_all_find_the_hierarchy() {
        const THREADS_COUNT: usize = 16;
        let expected = detect().expect("this machine has cgroups");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS_COUNT));
        let threads: Vec<_> = (0..THREADS_COUNT)
            .map(|_| {
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    detect()
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Ok(expected.clone()));
        }
    }
}
