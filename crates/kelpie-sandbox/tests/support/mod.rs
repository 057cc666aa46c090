//! Shared by the sandbox tests: a real backend in a temp dir, and checks
//! that a sandbox left no directory, cgroup, mount, process or zombie.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_sandbox::cgroup::{self, CgroupMode};
use kelpie_sandbox::gvisor::GvisorBackend;
use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::Backend;

/// Longest a test waits for a condition it expects to become true.
const WAIT_MS_MAX: u64 = 20_000;
const POLL_MS: u64 = 10;

/// A temp dir the sandbox user can traverse (a plain temp dir is 0700).
pub fn traversable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn checked(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    if let Err(err) = backend.check_available() {
        panic!("this test needs the {} sandbox backend: {err}", backend.kind().name());
    }
    backend
}

/// The process backend with its sandboxes under `<temp dir>/run`.
pub fn process_backend() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = traversable_dir();
    let backend = checked(Arc::new(ProcessBackend::open(dir.path().join("run"))));
    (dir, backend)
}

/// The gVisor backend with its sandboxes under `<temp dir>/run`.
pub fn gvisor_backend() -> (tempfile::TempDir, Arc<dyn Backend>) {
    let dir = traversable_dir();
    let backend = checked(Arc::new(GvisorBackend::open(dir.path().join("run"))));
    (dir, backend)
}

pub fn sandbox_dir(root: &Path, id: &str) -> PathBuf {
    root.join("run").join(id)
}

/// Polls `condition` until it holds; fails the test after [`WAIT_MS_MAX`].
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within {WAIT_MS_MAX} ms");
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Whether a process on this host has `marker` in its command line.
pub fn process_with(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|entry| {
        let is_pid = entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit());
        is_pid
            && std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(marker))
    })
}

/// No child of this process is left a zombie: each one that exited is
/// reaped within `WAIT_MS_MAX` (the runtime reaps a killed child on the
/// next SIGCHLD, not at the instant it dies; on a loaded machine that takes
/// a moment).
pub async fn assert_no_zombies() {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        let zombies = zombie_children();
        if zombies.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "zombie children after {WAIT_MS_MAX} ms: {zombies:?}");
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// The `/proc/<pid>/stat` lines of this process's children that are zombies.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(after_name) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = after_name.1.split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) && fields[0] == "Z" {
            zombies.push(stat);
        }
    }
    zombies
}

/// The sandbox `id` left no directory, cgroup or mount behind.
pub fn assert_nothing_left(root: &Path, id: &str) {
    let dir = sandbox_dir(root, id);
    assert!(!dir.exists(), "{} was left", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&*root.to_string_lossy()), "a mount under {} was left", root.display());
    for prefix in [format!("{id}-"), format!("gvisor-{id}-")] {
        let left = cgroups_starting(&prefix);
        assert!(left.is_empty(), "cgroups were left: {left:?}");
    }
}

/// The sandbox cgroups whose names start with `prefix`.
pub fn cgroups_starting(prefix: &str) -> Vec<PathBuf> {
    let parents = match cgroup::detect() {
        Ok(CgroupMode::V2 { parent }) => vec![parent],
        Ok(CgroupMode::V1 { parents }) => parents.into_iter().map(|(_, parent)| parent).collect(),
        Err(_) => Vec::new(),
    };
    parents
        .iter()
        .flat_map(|parent| std::fs::read_dir(parent).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(prefix)))
        .collect()
}
