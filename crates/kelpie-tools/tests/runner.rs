//! The tool runner on the process backend: schemas derived in a sandbox,
//! calls with results, errors and timeouts, the environment a call gets,
//! the code interpreter, and `pip_requirements` installed once from a
//! package index on 127.0.0.1 (a wheel built by the test) and mounted into
//! the tool's sandbox.
//!
//! Needs bubblewrap; fails (never skips) without it.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use kelpie_sandbox::process::ProcessBackend;
use kelpie_sandbox::ExecLimits;
use kelpie_tools::pip::PipRequirement;
use kelpie_tools::{RunnerSettings, ToolCall, ToolError, ToolRun, ToolRunner};
use serde_json::{json, Value};

const ROLL: &str = "def roll_die(sides: int, label: str = \"d\") -> str:\n    \"\"\"Roll a die.\n\n    Args:\n        sides (int): number of sides\n\n    Returns:\n        str: the result\n    \"\"\"\n    print(\"noise\")\n    return f\"{label}{min(sides, 4)}\"\n";

fn runner(index_url: Option<String>) -> (tempfile::TempDir, ToolRunner) {
    common::runner_with(|settings| settings.pip_index_url = index_url)
}

async fn call(runner: &ToolRunner, source: &str, name: &str, args: Value) -> Result<ToolRun, ToolError> {
    runner.run_tool(ToolCall { source, name, args: &args, env: &[], network: false, requirements: &[] }).await
}

#[tokio::test]
async fn schemas_are_derived_in_a_sandbox_and_bad_sources_refused_with_reasons() {
    let (_dir, runner) = runner(None);
    assert_eq!(
        runner.tool_schema(ROLL, None).await.unwrap(),
        json!({"name": "roll_die", "description": "Roll a die.", "parameters": {"type": "object",
            "properties": {"sides": {"type": "integer", "description": "number of sides"}, "label": {"type": "string"}},
            "required": ["sides"]}})
    );
    let syntax = runner.tool_schema("def f(x:\n", None).await.unwrap_err();
    assert_eq!(syntax.to_string(), "source_code is not valid Python: line 1: '(' was never closed");
    // Python refuses a NUL byte before parsing (found by schemathesis as a 500).
    let nul = runner.tool_schema("def f(x: int):\n    return x\0\n", None).await.unwrap_err();
    assert_eq!(
        nul.to_string(),
        "source_code is not valid Python: source code string cannot contain null bytes"
    );
    let untyped = runner.tool_schema("def f(x):\n    return x\n", None).await.unwrap_err();
    assert!(untyped.to_string().contains("parameter `x` of f has no supported type"), "{untyped}");
    let none = runner.tool_schema("x = 1\n", None).await.unwrap_err();
    assert_eq!(
        none.to_string(),
        "cannot derive a JSON schema from source_code: source_code defines no top-level function"
    );
    let huge = "#".repeat(kelpie_tools::python::TOOL_SOURCE_BYTES_MAX + 1);
    assert!(matches!(runner.tool_schema(&huge, None).await, Err(ToolError::SourceTooLarge { .. })));
}

#[tokio::test]
async fn calls_return_values_errors_output_and_time_out() {
    let (dir, runner) = runner(None);
    let run = call(&runner, ROLL, "roll_die", json!({"sides": 9})).await.unwrap();
    assert_eq!(
        run,
        ToolRun { ok: true, result: "d4".into(), stdout: "noise\n".into(), stderr: String::new() }
    );
    let raised = call(&runner, ROLL, "roll_die", json!({})).await.unwrap();
    assert!(!raised.ok && raised.result.starts_with("TypeError"), "{raised:?}");
    let dict = "def pair() -> dict:\n    return {'a': [1, 2]}\n";
    assert_eq!(call(&runner, dict, "pair", json!({})).await.unwrap().result, "{\"a\": [1, 2]}");
    let missing = call(&runner, ROLL, "nope", json!({})).await.unwrap();
    assert_eq!(missing.result, "NameError: the source defines no function nope");
    let slow = "import time\ndef nap(s: int) -> str:\n    time.sleep(s)\n    return 'done'\n";
    let mut settings = RunnerSettings::new("/usr/bin/python3", dir.path().join("pip2"));
    settings.limits = ExecLimits { wall_ms: 500, ..settings.limits };
    let quick = ToolRunner::new(Arc::new(ProcessBackend::open(dir.path().join("run2"))), settings);
    let timed_out = call(&quick, slow, "nap", json!({"s": 30})).await.unwrap_err();
    assert_eq!(timed_out, ToolError::Timeout { name: "nap".into(), timeout_ms: 500 });
}

#[tokio::test]
async fn a_call_sees_only_the_environment_it_is_given() {
    let (_dir, runner) = runner(None);
    let source = "import os\ndef env() -> dict:\n    return {k: v for k, v in os.environ.items() if k.startswith('MY_')}\n";
    let env = [("MY_TOKEN".to_string(), "t0k3n".to_string())];
    let args = json!({});
    let call = ToolCall { source, name: "env", args: &args, env: &env, network: false, requirements: &[] };
    assert_eq!(runner.run_tool(call.clone()).await.unwrap().result, "{\"MY_TOKEN\": \"t0k3n\"}");
    // The next call, on another (warm) sandbox, does not inherit it.
    assert_eq!(runner.run_tool(ToolCall { env: &[], ..call.clone() }).await.unwrap().result, "{}");
    for (key, reason) in
        [("PATH", "is set by the sandbox"), ("KELPIE_X", "is set by the sandbox"), ("1A", "must be 1..=")]
    {
        let env = [(key.to_string(), "v".to_string())];
        let err = runner.run_tool(ToolCall { env: &env, ..call.clone() }).await.unwrap_err();
        assert!(matches!(&err, ToolError::BadEnvironment(text) if text.contains(reason)), "{key}: {err}");
    }
}

#[tokio::test]
async fn the_code_interpreter_runs_python_and_js_in_a_sandbox() {
    let (_dir, runner) = runner(None);
    let run = runner.run_code("python", "import math\nprint('hi')\nmath.factorial(5)", &[]).await.unwrap();
    assert_eq!(run, ToolRun { ok: true, result: "120".into(), stdout: "hi\n".into(), stderr: String::new() });
    let failed = runner.run_code("python", "1 / 0", &[]).await.unwrap();
    assert_eq!((failed.ok, failed.result.as_str()), (false, "ZeroDivisionError: division by zero"));
    let js = runner.run_code("js", "console.log([1, 2, 3].map(x => x * 2).join(','))", &[]).await.unwrap();
    assert_eq!((js.ok, js.stdout.as_str()), (true, "2,4,6\n"));
    let thrown = runner.run_code("js", "throw new Error('nope')", &[]).await.unwrap();
    assert!(!thrown.ok && thrown.stderr.contains("Error: nope"), "{thrown:?}");
    let err = runner.run_code("cobol", "DISPLAY 'HI'.", &[]).await.unwrap_err();
    assert_eq!(err, ToolError::Language("cobol".into()));
}

/// A package index on 127.0.0.1 serving one wheel, `kelpietestpkg` 1.0,
/// built here (a wheel is a zip of the package and its metadata).
struct Index {
    server: Child,
    url: String,
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

const BUILD_WHEEL: &str = r#"
import os, sys, zipfile
root = sys.argv[1]
os.makedirs(f"{root}/simple/kelpietestpkg")
wheel = "kelpietestpkg-1.0-py3-none-any.whl"
with zipfile.ZipFile(f"{root}/simple/kelpietestpkg/{wheel}", "w") as z:
    z.writestr("kelpietestpkg/__init__.py", "GREETING = 'hello from a wheel'\n")
    z.writestr("kelpietestpkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: kelpietestpkg\nVersion: 1.0\n")
    z.writestr("kelpietestpkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: kelpie-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("kelpietestpkg-1.0.dist-info/RECORD", "")
open(f"{root}/simple/kelpietestpkg/index.html", "w").write(f'<a href="{wheel}">{wheel}</a>')
open(f"{root}/simple/index.html", "w").write('<a href="kelpietestpkg/">kelpietestpkg</a>')
"#;

fn index(root: &Path) -> Index {
    let built = Command::new("python3").args(["-c", BUILD_WHEEL]).arg(root).status().unwrap();
    assert!(built.success());
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0", "--directory"])
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41231 (http://127.0.0.1:41231/) ..."
    let port = line.split("port ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect(&line);
    Index { server, url: format!("http://127.0.0.1:{port}/simple") }
}

fn requirement(name: &str, version: Option<&str>) -> PipRequirement {
    PipRequirement { name: name.into(), version: version.map(str::to_string) }
}

#[tokio::test]
async fn pip_requirements_install_once_and_are_importable_by_the_tool() {
    let packages = tempfile::tempdir().unwrap();
    let index = index(packages.path());
    let (dir, runner) = runner(Some(index.url.clone()));
    let wanted = [requirement("kelpietestpkg", Some("1.0"))];
    let installed = runner.ensure_requirements(&wanted).await.unwrap().unwrap();
    assert!(installed.join("kelpietestpkg/__init__.py").is_file(), "{}", installed.display());
    assert!(installed.starts_with(dir.path().join("pip")));
    // Installed once: the second ask finds it without pip.
    assert_eq!(runner.ensure_requirements(&wanted).await.unwrap(), Some(installed.clone()));
    let source = "def greet() -> str:\n    import kelpietestpkg\n    return kelpietestpkg.GREETING\n";
    let args = json!({});
    let tool =
        ToolCall { source, name: "greet", args: &args, env: &[], network: false, requirements: &wanted };
    assert_eq!(runner.run_tool(tool.clone()).await.unwrap().result, "hello from a wheel");
    let without = runner.run_tool(ToolCall { requirements: &[], ..tool }).await.unwrap();
    assert!(!without.ok && without.result.starts_with("ModuleNotFoundError"), "{without:?}");
    // The packages are read-only to the tool.
    let writer = "def spoil() -> str:\n    import kelpietestpkg, os\n    open(os.path.join(os.path.dirname(kelpietestpkg.__file__), 'x'), 'w')\n    return 'spoiled'\n";
    let spoil = ToolCall {
        source: writer,
        name: "spoil",
        args: &args,
        env: &[],
        network: false,
        requirements: &wanted,
    };
    let spoiled = runner.run_tool(spoil).await.unwrap();
    assert!(!spoiled.ok && spoiled.result.contains("Read-only file system"), "{spoiled:?}");

    let missing = runner
        .ensure_requirements(&[requirement("kelpietestpkg", None), requirement("nosuchpkg", None)])
        .await;
    match missing.unwrap_err() {
        ToolError::PipInstall { package, .. } => assert_eq!(package, "nosuchpkg"),
        other => panic!("{other}"),
    }
    let no_version =
        runner.ensure_requirements(&[requirement("kelpietestpkg", Some("9.9"))]).await.unwrap_err();
    assert!(
        matches!(&no_version, ToolError::PipInstall { package, .. } if package.starts_with("kelpietestpkg")),
        "{no_version}"
    );
    let sneaky =
        runner.ensure_requirements(&[requirement("--index-url=http://evil", None)]).await.unwrap_err();
    assert!(matches!(sneaky, ToolError::BadRequirement(_)));
    // Failed installs leave no partial set behind.
    let sets: Vec<String> = std::fs::read_dir(dir.path().join("pip"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sets.len(), 1, "{sets:?}");
    drop(index);
}

/// Whether a process on this host has `marker` in its command line.
fn process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(marker))
    })
}

/// Seconds since the tool's interpreter (run.py, the parent of the process
/// running the tool) started, and whether a file an earlier call wrote is
/// there (then writes it).
const AGE: &str = "import os\ndef age() -> list:\n    ticks = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(') ', 1)[1].split()[19])\n    up = float(open('/proc/uptime').read().split()[0])\n    seen = os.path.exists('/work/mark')\n    open('/work/mark', 'w').close()\n    return [up - ticks / os.sysconf('SC_CLK_TCK'), seen]\n";

#[tokio::test]
async fn warm_sandboxes_serve_one_call_each_and_cancelled_calls_end_theirs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut settings = RunnerSettings::new("/usr/bin/python3", dir.path().join("pip"));
    settings.warm_sandboxes_count = 1;
    // Warm sandboxes serve the Python calls when fork servers are off.
    settings.fork_server_calls_max = 0;
    // Shorter than the idle time below: a warm sandbox's clock starts with its call.
    settings.limits = ExecLimits { wall_ms: 2_000, ..settings.limits };
    let runner = ToolRunner::new(Arc::new(ProcessBackend::open(dir.path().join("run"))), settings);
    let age = |run: ToolRun| -> (f64, bool) {
        let value: Value = serde_json::from_str(&run.result).unwrap();
        (value[0].as_f64().unwrap(), value[1].as_bool().unwrap())
    };
    let (_, seen) = age(call(&runner, AGE, "age", json!({})).await.unwrap());
    assert!(!seen);
    // The sandbox started after the first call has waited for this one.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let (waited_s, seen) = age(call(&runner, AGE, "age", json!({})).await.unwrap());
    assert!(waited_s >= 2.0, "the call ran on a sandbox started {waited_s} s before it, not a warm one");
    assert!(!seen, "a warm sandbox serves one call: nothing of an earlier call is left in it");
    // A network call does not fit the warm shape and starts its own sandbox.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let args = json!({});
    let networked =
        ToolCall { source: AGE, name: "age", args: &args, env: &[], network: true, requirements: &[] };
    let (waited_s, _) = age(runner.run_tool(networked).await.unwrap());
    assert!(waited_s < 1.0, "a networked call ran on a sandbox {waited_s} s old");
    runner.shutdown().await;
    assert!(!dir.path().join("run").exists(), "shutdown ends the warm sandboxes and removes their dir");

    // A call given up while it runs ends its sandbox and the program in it,
    // long before its wall time would.
    let mut settings = RunnerSettings::new("/usr/bin/python3", dir.path().join("pip"));
    settings.warm_sandboxes_count = 1;
    settings.fork_server_calls_max = 0;
    settings.limits = ExecLimits { wall_ms: 120_000, ..settings.limits };
    let runner = ToolRunner::new(Arc::new(ProcessBackend::open(dir.path().join("run"))), settings);
    let marker = "kelpie-warm-cancel-marker";
    let nap = format!("import subprocess\ndef nap() -> str:\n    subprocess.run(['/bin/sh', '-c', 'sleep 60 # {marker}'])\n    return 'woke'\n");
    let running = call(&runner, &nap, "nap", json!({}));
    assert!(tokio::time::timeout(std::time::Duration::from_millis(700), running).await.is_err());
    let sandboxes = || -> Vec<String> {
        std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "etc")
            .collect()
    };
    assert!(process_with(marker), "the call was running when given up");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The call took the only warm sandbox; it goes with its program.
    while !sandboxes().is_empty() || process_with(marker) {
        assert!(std::time::Instant::now() < deadline, "a cancelled call's sandbox stayed: {:?}", sandboxes());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    runner.shutdown().await;
    assert!(!dir.path().join("run").exists(), "shutdown ends the warm sandboxes and removes their dir");
}
