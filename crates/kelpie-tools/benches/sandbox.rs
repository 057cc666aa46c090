//! What sandboxing costs a tool call. One trivial Python tool called through
//! the tool runner on each backend (`none`, `process`, `gvisor`), each with
//! every call starting its sandbox (cold), with warm sandboxes, and (process
//! only) with fork servers serving many calls per sandbox (the default):
//! latency of sequential calls with a pause between them, as the
//! model's turn gives a real agent (p50, p99), throughput with 4 calls in
//! flight back to back with the machine's CPU time per call, and the
//! overhead of each over the unsandboxed call of the same shape. Then where the
//! process backend's time goes: the bare interpreter start, bubblewrap
//! starting a trivial program, and the cgroup made and removed per call.
//!
//! Run (as root, as the server runs): `cargo bench -p kelpie-tools --bench sandbox`;
//! `KELPIE_BENCH_BACKENDS=none,process` measures only those backends.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelpie_sandbox::cgroup::{self, Cgroup};
use kelpie_sandbox::gvisor::GvisorBackend;
use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::unsandboxed::UnsandboxedBackend;
use kelpie_sandbox::{Backend, ExecLimits};
use kelpie_tools::{RunnerSettings, ToolCall, ToolRunner};
use serde_json::json;

const SEQUENTIAL_CALLS_COUNT: usize = 200;
const CONCURRENT_CALLS_COUNT: usize = 200;
const IN_FLIGHT_COUNT: usize = 4;
const WARMUP_CALLS_COUNT: usize = 5;
/// The pause between sequential calls: the model's turn between tool calls.
const PAUSE_BETWEEN_CALLS_MS: u64 = 20;
/// Warm sandboxes in the warm configuration (the runner's default).
const WARM_COUNT: usize = kelpie_tools::runner::WARM_SANDBOXES_COUNT_DEFAULT;
const TOOL: &str = "def add(a: int, b: int) -> int:\n    return a + b\n";

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3
}

async fn call(runner: &ToolRunner, n: usize) {
    let args = json!({"a": n, "b": 1});
    let call =
        ToolCall { source: TOOL, name: "add", args: &args, env: &[], network: false, requirements: &[] };
    let run = runner.run_tool(call).await.expect("tool call");
    assert_eq!(run.result, (n + 1).to_string());
}

struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    calls_per_s: f64,
    /// Machine-wide CPU time (all processes and the kernel) per call while
    /// calls run back to back: what bounds throughput on 2 cores.
    cpu_ms_per_call: f64,
    /// CPU time of this process and of everything it started (sandboxes,
    /// their launchers, the calls; runsc's daemons too): the same figure on
    /// a machine shared with other work. `None` without cgroup v1 cpuacct.
    tree_cpu_ms_per_call: Option<f64>,
    /// The part of it spent in this process (the runner, tokio, the pipes).
    own_cpu_ms_per_call: f64,
}

/// A cgroup v1 `cpuacct` group holding this process and so everything it
/// starts: the sandboxes' cgroups are in other hierarchies (memory, pids,
/// cpu, freezer), so sandboxed processes stay in it. Left when dropped.
struct TreeCpu {
    dir: std::path::PathBuf,
}

const CPUACCT_ROOT: &str = "/sys/fs/cgroup/cpuacct";

impl TreeCpu {
    fn join() -> Option<TreeCpu> {
        let root = Path::new(CPUACCT_ROOT);
        if !root.join("cpuacct.usage").is_file() {
            return None;
        }
        let dir = root.join(format!("kelpie-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let tree = TreeCpu { dir };
        std::fs::write(tree.dir.join("cgroup.procs"), std::process::id().to_string()).ok()?;
        Some(tree)
    }

    /// CPU time used in the group so far, in milliseconds.
    fn ms(&self) -> f64 {
        let text = std::fs::read_to_string(self.dir.join("cpuacct.usage")).expect("cpuacct.usage");
        text.trim().parse::<f64>().expect("nanoseconds") / 1e6
    }
}

impl Drop for TreeCpu {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(CPUACCT_ROOT).join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// CPU time of this process alone (`/proc/self/stat` utime + stime), in ms.
fn own_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = stat.rsplit_once(") ").expect("stat has a name").1;
    // Fields from the third (state) on: utime is the 14th field, at 11 here;
    // ticks of 10 ms (USER_HZ = 100).
    let ticks: f64 = after_name.split_whitespace().skip(11).take(2).map(|v| v.parse::<f64>().unwrap()).sum();
    ticks * 10.0
}

/// Busy CPU time of the whole machine so far (`/proc/stat`), in milliseconds.
fn machine_busy_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal ...; ticks of 10 ms (USER_HZ = 100).
    let busy: f64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    busy * 10.0
}

/// Latency on one runner, then throughput on a fresh one (so that every
/// sandbox it starts, and nothing earlier, is reaped by the end and counted
/// in the tree's CPU, including starting its sandboxes or fork servers).
async fn measure(make: impl Fn() -> Arc<ToolRunner>, tree: Option<&TreeCpu>) -> Figures {
    let runner = make();
    for n in 0..WARMUP_CALLS_COUNT {
        call(&runner, n).await;
    }
    let mut latencies = Vec::with_capacity(SEQUENTIAL_CALLS_COUNT);
    for n in 0..SEQUENTIAL_CALLS_COUNT {
        tokio::time::sleep(Duration::from_millis(PAUSE_BETWEEN_CALLS_MS)).await;
        let started = Instant::now();
        call(&runner, n).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    runner.shutdown().await;
    drop(runner);
    let runner = make();
    let started = Instant::now();
    let busy_before_ms = machine_busy_ms();
    let own_before_ms = own_cpu_ms();
    let tree_before_ms = tree.map(TreeCpu::ms);
    let workers: Vec<_> = (0..IN_FLIGHT_COUNT)
        .map(|worker| {
            let runner = Arc::clone(&runner);
            tokio::spawn(async move {
                for n in (worker..CONCURRENT_CALLS_COUNT).step_by(IN_FLIGHT_COUNT) {
                    call(&runner, n).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let calls_per_s = CONCURRENT_CALLS_COUNT as f64 / started.elapsed().as_secs_f64();
    let cpu_ms_per_call = (machine_busy_ms() - busy_before_ms) / CONCURRENT_CALLS_COUNT as f64;
    runner.shutdown().await;
    let per_call = |ms: f64| ms / CONCURRENT_CALLS_COUNT as f64;
    let own_cpu_ms_per_call = per_call(own_cpu_ms() - own_before_ms);
    let tree_cpu_ms_per_call = tree.zip(tree_before_ms).map(|(tree, before)| per_call(tree.ms() - before));
    Figures {
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        calls_per_s,
        cpu_ms_per_call,
        tree_cpu_ms_per_call,
        own_cpu_ms_per_call,
    }
}

fn runner(backend: Arc<dyn Backend>, dir: &Path, shape: Shape) -> Arc<ToolRunner> {
    if let Err(err) = backend.check_available() {
        panic!("the {} backend is unavailable: {err}", backend.kind().name());
    }
    let mut settings = RunnerSettings::new("/usr/bin/python3", dir.join("pip"));
    settings.warm_sandboxes_count = shape.warm_count;
    if !shape.fork_server {
        settings.fork_server_calls_max = 0;
    }
    Arc::new(ToolRunner::new(backend, settings))
}

/// Median wall time of `runs` runs of a command, in milliseconds.
fn command_ms(program: &str, args: &[&str], runs: usize) -> f64 {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = std::process::Command::new(program).args(args).status().expect(program);
            assert!(status.success(), "{program} {args:?}");
            started.elapsed()
        })
        .collect();
    times.sort();
    percentile(&times, 0.5)
}

fn cgroup_ms(runs: usize) -> Option<f64> {
    let mode = cgroup::detect().ok()?;
    let mut times: Vec<Duration> = (0..runs)
        .map(|n| {
            let started = Instant::now();
            let group = Cgroup::create(&mode, &format!("bench-{}-{n}", std::process::id())).expect("cgroup");
            group.limit(&ExecLimits::default()).expect("limits");
            group.remove();
            started.elapsed()
        })
        .collect();
    times.sort();
    Some(percentile(&times, 0.5))
}

/// How a configuration starts its sandboxes.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    warm_count: usize,
    fork_server: bool,
}

const SHAPES: [Shape; 3] = [
    Shape { name: "cold", warm_count: 0, fork_server: false },
    Shape { name: "warm", warm_count: WARM_COUNT, fork_server: false },
    Shape { name: "fork server", warm_count: WARM_COUNT, fork_server: true },
];

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    type Open = fn(std::path::PathBuf) -> Arc<dyn Backend>;
    let backends: [(&str, Open); 3] = [
        ("none", |dir| Arc::new(UnsandboxedBackend::open(dir))),
        ("process", |dir| Arc::new(ProcessBackend::open(dir))),
        ("gvisor", |dir| Arc::new(GvisorBackend::open(dir))),
    ];
    // The unsandboxed call's p50 and p99 for each shape, cold and warm:
    // each sandboxed shape is compared with the same shape unsandboxed (a
    // fork server with the warm one: both find the interpreter started).
    let mut baselines: [Option<(f64, f64)>; 2] = [None, None];
    let tree = TreeCpu::join();
    println!(
        "backend | sandboxes | p50 | p99 | overhead p50 | overhead p99 | calls/s ({IN_FLIGHT_COUNT} in flight) | CPU per call (machine) | CPU per call (this process and all it started)"
    );
    let chosen = std::env::var("KELPIE_BENCH_BACKENDS").ok();
    let chosen = |name: &str| chosen.as_deref().is_none_or(|list| list.split(',').any(|n| n == name));
    for (name, open) in backends.into_iter().filter(|(name, _)| chosen(name)) {
        for shape in SHAPES {
            // Only the process backend has fork servers.
            if shape.fork_server && name != "process" {
                continue;
            }
            let dir = dir.path().join(format!("{name}-{}", shape.name.replace(' ', "-")));
            let figures = measure(|| runner(open(dir.join("run")), &dir, shape), tree.as_ref()).await;
            let baseline = &mut baselines[usize::from(shape.warm_count > 0)];
            let (base50, base99) = *baseline.get_or_insert((figures.p50_ms, figures.p99_ms));
            println!(
                "{name} | {} | {:.1} ms | {:.1} ms | {:+.1} ms | {:+.1} ms | {:.0} | {:.1} ms | {} ({:.1} ms here)",
                shape.name,
                figures.p50_ms,
                figures.p99_ms,
                figures.p50_ms - base50,
                figures.p99_ms - base99,
                figures.calls_per_s,
                figures.cpu_ms_per_call,
                figures.tree_cpu_ms_per_call.map_or("—".to_string(), |ms| format!("{ms:.1} ms")),
                figures.own_cpu_ms_per_call,
            );
        }
    }
    let runs = 50;
    println!("\nwhere a process-backend call's time goes (median of {runs}):");
    println!("python3 -I -c pass: {:.1} ms", command_ms("/usr/bin/python3", &["-I", "-c", "pass"], runs));
    let bwrap = [
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/bin",
        "/bin",
        "/usr/bin/true",
    ];
    println!("bwrap, all namespaces, /usr/bin/true: {:.1} ms", command_ms("bwrap", &bwrap, runs));
    println!("/usr/bin/true alone: {:.1} ms", command_ms("/usr/bin/true", &[], runs));
    match cgroup_ms(runs) {
        Some(ms) => println!("cgroup created, limited and removed: {ms:.1} ms"),
        None => println!("no cgroups on this machine"),
    }
}
