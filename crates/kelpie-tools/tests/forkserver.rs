//! Calls served one after another by the same fork server (process backend):
//! what one call leaves or attempts — files, a changed environment, a
//! daemon, System V IPC, keys in the user and persistent keyrings, ptrace, /proc/<server>
//! mem, fd and environ, signals, killing the server — never reaches the
//! next call, which still returns its value. (The probes name x86-64's
//! keyctl and add_key system calls.) Each test checks which
//! sandbox served each call (the runner's sandboxes dir holds one per
//! fork server). Run as root, as the server is. Needs bubblewrap; fails
//! (never skips) without it.

mod common;

use kelpie_sandbox::ExecLimits;
use kelpie_tools::{ToolError, ToolRun, ToolRunner};
use serde_json::{json, Value};

const WALL_MS: u64 = 3_000;

struct World {
    dir: tempfile::TempDir,
    runner: ToolRunner,
}

fn world() -> World {
    let (dir, runner) = common::runner_with(|settings| {
        settings.limits = ExecLimits { wall_ms: WALL_MS, ..settings.limits };
        assert!(settings.fork_server_calls_max > 0, "fork servers are on by default");
    });
    World { runner, dir }
}

impl World {
    async fn call(&self, source: &str, name: &str, args: Value) -> Result<ToolRun, ToolError> {
        common::call_given(&self.runner, source, name, args).await
    }

    async fn value(&self, source: &str, name: &str, args: Value) -> Value {
        common::value_given(&self.runner, source, name, args).await
    }

    /// The sandboxes alive now (one per fork server).
    fn sandboxes(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("run"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "etc")
            .collect();
        names.sort();
        names
    }

    async fn add(&self) -> Value {
        self.value(ADD, "add", json!({"a": 2, "b": 3})).await
    }
}

const ADD: &str = "def add(a: int, b: int) -> int:\n    return a + b\n";

const LEAVE: &str = r#"
import ctypes, json, os, subprocess, sys
def leave(marker: str) -> str:
    for place in ["/tmp", "/work", "/dev/shm"]:
        with open(f"{place}/{marker}", "w") as f:
            f.write("left")
    os.makedirs(f"/tmp/{marker}-dir/sub")
    os.environ["LEFT_BY_A"] = marker
    os.putenv("PUT_BY_A", marker)
    code = "import time; time.sleep(600)  # " + marker
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    libc = ctypes.CDLL(None, use_errno=True)
    shm = libc.shmget(0x4B4C5045, 4096, 0o1666)
    key = libc.syscall(248, b"user", marker.encode(), b"secret", 6, -4)
    persistent = libc.syscall(250, 22, -1, -2)
    kept = libc.syscall(248, b"user", marker.encode(), b"secret", 6, persistent)
    return json.dumps({"shm": shm, "key": key, "kept": kept, "given": os.environ.get("GIVEN")})
"#;

const LOOK: &str = r#"
import ctypes, json, os
def look(marker: str) -> str:
    cmdlines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdlines.append(open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"))
            except OSError:
                pass
    libc = ctypes.CDLL(None, use_errno=True)
    return json.dumps({
        "files": sorted(name for place in ["/tmp", "/work", "/dev/shm"] for name in os.listdir(place)),
        "env": [os.environ.get("LEFT_BY_A"), os.environ.get("PUT_BY_A"), os.environ.get("GIVEN")],
        "daemon": any(marker in cmdline for cmdline in cmdlines),
        "shm": open("/proc/sysvipc/shm").read().splitlines()[1:],
        "key": libc.syscall(250, 10, -4, b"user", marker.encode(), 0),
        "kept": libc.syscall(250, 10, libc.syscall(250, 22, -1, -2), b"user", marker.encode(), 0),
        "cwd": os.getcwd(),
    })
"#;

const ATTACK: &str = r#"
import ctypes, json, os, signal
def attack() -> str:
    out = {}
    server = 2
    out["server"] = open(f"/proc/{server}/cmdline", "rb").read().split(b"\0")[-2].decode()
    libc = ctypes.CDLL(None, use_errno=True)
    for name, pid in [("ptrace_server", server), ("ptrace_supervisor", os.getppid())]:
        status = libc.ptrace(16, pid, None, None)
        out[name] = "attached" if status == 0 else "blocked: " + os.strerror(ctypes.get_errno())
    for name, mode in [("mem", os.O_RDWR), ("environ", os.O_RDONLY)]:
        try:
            os.close(os.open(f"/proc/{server}/{name}", mode))
            out[name] = "opened"
        except OSError as err:
            out[name] = "blocked: " + type(err).__name__
    try:
        out["fd"] = str(os.listdir(f"/proc/{server}/fd"))
    except OSError as err:
        out["fd"] = "blocked: " + type(err).__name__
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
        os.kill(server, number)
    return json.dumps(out)
"#;

const KILL_SERVER: &str = r#"
import os, time
def kill_server() -> str:
    os.kill(2, 9)
    time.sleep(2)
    return "survived"
"#;

const STOP_SERVER: &str = r#"
import os, signal
def stop_server() -> str:
    os.kill(2, signal.SIGSTOP)
    return "stopped it"
"#;

#[tokio::test]
async fn a_call_leaves_nothing_for_the_next_call_on_the_same_fork_server() {
    let world = world();
    let marker = format!("kelpie-reuse-{}", std::process::id());
    let left = world.value(LEAVE, "leave", json!({"marker": marker})).await;
    assert_eq!(left["given"], "given-value");
    assert!(left["shm"].as_i64().unwrap() >= 0, "the first call made a shared memory segment: {left}");
    assert!(left["key"].as_i64().unwrap() > 0, "the first call added a key: {left}");
    assert!(left["kept"].as_i64().unwrap() > 0, "and a key to the persistent keyring: {left}");
    let served_a = world.sandboxes();
    assert_eq!(served_a.len(), 1, "one fork server: {served_a:?}");

    let seen = world.value(LOOK, "look", json!({"marker": marker})).await;
    assert_eq!(
        seen,
        json!({
            "files": [],
            "env": [null, null, "given-value"],
            "daemon": false,
            "shm": [],
            "key": -1,
            "kept": -1,
            "cwd": "/work",
        })
    );
    assert_eq!(world.sandboxes(), served_a, "the same fork server served both calls");
    assert_eq!(world.add().await, json!(5));
    assert_eq!(world.sandboxes(), served_a);
    world.runner.shutdown().await;
}

#[tokio::test]
async fn the_fork_server_cannot_be_traced_read_or_signalled_by_a_call() {
    let world = world();
    let probes = world.value(ATTACK, "attack", json!({})).await;
    assert_eq!(probes["server"], "serve", "pid 2 is the fork server: {probes}");
    for name in ["ptrace_server", "ptrace_supervisor", "mem", "environ", "fd"] {
        let outcome = probes[name].as_str().unwrap();
        assert!(outcome.starts_with("blocked"), "{name} was not blocked: {outcome}");
    }
    let served_a = world.sandboxes();
    assert_eq!(served_a.len(), 1, "{served_a:?}");
    assert_eq!(world.add().await, json!(5));
    assert_eq!(world.sandboxes(), served_a, "the signalled server still serves");
    world.runner.shutdown().await;
}

#[tokio::test]
async fn a_call_that_kills_its_fork_server_fails_and_a_fresh_one_serves_the_next() {
    let world = world();
    assert_eq!(world.add().await, json!(5));
    let served_a = world.sandboxes();
    match world.call(KILL_SERVER, "kill_server", json!({})).await {
        Err(ToolError::NoResult { name, stderr, .. }) => {
            assert_eq!(name, "kill_server");
            assert!(stderr.starts_with("the sandbox's fork server ended during the call"), "{stderr}");
        }
        other => panic!("killing the fork server: {other:?}"),
    }
    assert_eq!(world.add().await, json!(5));
    let served_b = world.sandboxes();
    assert_eq!(served_b.len(), 1, "{served_b:?}");
    assert_ne!(served_b, served_a, "a fresh sandbox serves the next call");
    world.runner.shutdown().await;
}

#[tokio::test]
async fn a_call_that_stops_its_fork_server_times_out_and_a_fresh_one_serves_the_next() {
    let world = world();
    assert_eq!(world.add().await, json!(5));
    let served_a = world.sandboxes();
    match world.call(STOP_SERVER, "stop_server", json!({})).await {
        Err(ToolError::Timeout { name, timeout_ms }) => {
            assert_eq!((name.as_str(), timeout_ms), ("stop_server", WALL_MS))
        }
        other => panic!("stopping the fork server: {other:?}"),
    }
    assert_eq!(world.add().await, json!(5));
    let served_b = world.sandboxes();
    assert_eq!(served_b.len(), 1, "{served_b:?}");
    assert_ne!(served_b, served_a, "a fresh sandbox serves the next call");
    world.runner.shutdown().await;
    assert!(!world.dir.path().join("run").exists(), "shutdown removes every sandbox");
}

/// Whether a process on this host has `marker` in its command line.
fn process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(marker))
    })
}

#[tokio::test]
async fn a_call_given_up_while_it_runs_ends_its_fork_server() {
    let world = world();
    assert_eq!(world.add().await, json!(5));
    let marker = format!("kelpie-fork-cancel-{}", std::process::id());
    let nap = format!(
        "import subprocess\ndef nap() -> str:\n    subprocess.run(['/bin/sh', '-c', 'sleep 60 # {marker}'])\n    return 'woke'\n"
    );
    let running = world.call(&nap, "nap", json!({}));
    assert!(tokio::time::timeout(std::time::Duration::from_millis(700), running).await.is_err());
    assert!(process_with(&marker), "the call was running when given up");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The call had taken the only fork server; it goes with its program.
    while !world.sandboxes().is_empty() || process_with(&marker) {
        assert!(
            std::time::Instant::now() < deadline,
            "a given-up call's sandbox stayed: {:?}",
            world.sandboxes()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(world.add().await, json!(5));
    world.runner.shutdown().await;
}
