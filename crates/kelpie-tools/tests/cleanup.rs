//! 1 000 consecutive tool calls on the process backend (served by fork
//! servers, the default: each call leaves a `sleep` that the server's sweep
//! must kill) leave nothing behind but the sandboxes waiting for the next
//! calls, and the runner's shutdown ends those: no process, no mount, no sandbox directory, no
//! cgroup. The only test in its binary, so no other sandbox runs meanwhile.
//!
//! Needs bubblewrap; fails (never skips) without it.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use kelpie_sandbox::cgroup::{self, CgroupMode};
use kelpie_sandbox::process::{ProcessBackend, SANDBOX_HOST_UID};
use kelpie_sandbox::Backend;
use kelpie_tools::runner::WARM_SANDBOXES_COUNT_DEFAULT;
use kelpie_tools::{RunnerSettings, ToolCall, ToolRunner};
use serde_json::json;

const CALLS_COUNT: usize = 1_000;

/// Longest the processes of the last calls may take to finish dying.
const SETTLE_MS_MAX: u64 = 10_000;

/// Live processes (zombies awaiting the host's init are dead) on this host
/// owned by the sandbox's host user.
fn sandbox_processes() -> Vec<String> {
    let uid = format!("Uid:\t{SANDBOX_HOST_UID}\t");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("status"))
                .is_ok_and(|status| status.contains(&uid) && !status.contains("State:\tZ"))
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn cgroups_named(prefix: &str) -> Vec<String> {
    let parents = match cgroup::detect() {
        Ok(CgroupMode::V2 { parent }) => vec![parent],
        Ok(CgroupMode::V1 { parents }) => parents.into_iter().map(|(_, parent)| parent).collect(),
        Err(reason) => panic!("this test expects cgroups: {reason}"),
    };
    parents
        .iter()
        .flat_map(|parent| std::fs::read_dir(parent).unwrap().flatten())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[tokio::test]
async fn a_thousand_calls_leave_no_process_mount_directory_or_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(ProcessBackend::open(dir.path().join("run")));
    if let Err(err) = backend.check_available() {
        panic!("this test needs the process sandbox backend: {err}");
    }
    let runner = ToolRunner::new(backend, RunnerSettings::new("/usr/bin/python3", dir.path().join("pip")));
    let before = sandbox_processes();
    let source = "import subprocess\ndef square(n: int) -> int:\n    subprocess.Popen(['sleep', '600'])\n    return n * n\n";
    for n in 0..CALLS_COUNT {
        let args = json!({"n": n});
        let call =
            ToolCall { source, name: "square", args: &args, env: &[], network: false, requirements: &[] };
        let run = runner.run_tool(call).await.unwrap();
        assert_eq!(run.result, (n * n).to_string(), "call {n}");
        if (n + 1) % 250 == 0 {
            println!("{} calls", n + 1);
        }
    }
    // Between calls: the shared /etc and the warm sandboxes, nothing else.
    let waiting: Vec<String> = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "etc")
        .collect();
    assert!(waiting.len() <= WARM_SANDBOXES_COUNT_DEFAULT, "more sandboxes than warm ones: {waiting:?}");
    assert!(waiting.iter().all(|name| name.starts_with(runner.sandbox_prefix())), "{waiting:?}");
    // One cgroup per execution, under each hierarchy on cgroup v1.
    let cgroups: std::collections::BTreeSet<String> =
        cgroups_named(runner.sandbox_prefix()).into_iter().collect();
    assert!(cgroups.len() <= WARM_SANDBOXES_COUNT_DEFAULT, "more cgroups than warm sandboxes: {cgroups:?}");
    runner.shutdown().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(SETTLE_MS_MAX);
    // Processes of other tests running beside this one may come and go;
    // none of this test's may stay.
    let ours = || sandbox_processes().into_iter().filter(|pid| !before.contains(pid)).collect::<Vec<_>>();
    while !ours().is_empty() {
        assert!(std::time::Instant::now() < deadline, "a process outlived its call: {:?}", ours());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&*dir.path().to_string_lossy()), "a mount was left");
    assert_eq!(cgroups_named(runner.sandbox_prefix()), Vec::<String>::new(), "a cgroup was left");
    assert!(!dir.path().join("run").exists(), "shutdown removes the sandboxes dir");
}
