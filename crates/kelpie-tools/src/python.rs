//! Custom Python tools, always out of process: the schema of a tool is
//! derived by parsing its source with `ast` in a `python3` subprocess, and
//! each call runs in its own `python3` subprocess (arguments as JSON on
//! stdin, the outcome as JSON on the last line of stdout), with a timeout,
//! an output size limit, a cleared environment (no server secrets) and
//! `kill_on_drop`, so a hung or hostile tool cannot stall or enter the
//! server process. This is isolation by process only, not a sandbox: the
//! tool runs with the server user's file and network access.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The interpreter custom tools run with.
pub const PYTHON_BIN: &str = "python3";
/// Longest a tool call may run before it is killed, in milliseconds.
pub const TOOL_EXECUTION_TIMEOUT_MS: u64 = 30_000;
/// Longest the schema derivation of a source may take, in milliseconds.
pub const SCHEMA_DERIVATION_TIMEOUT_MS: u64 = 10_000;
/// Most bytes read from a tool process's stdout; more is a failed call.
pub const TOOL_OUTPUT_BYTES_MAX: usize = 1024 * 1024;
/// Most bytes of stderr kept for an error message.
const TOOL_STDERR_BYTES_MAX: usize = 4 * 1024;
/// Longest tool source accepted, in bytes.
pub const TOOL_SOURCE_BYTES_MAX: usize = 256 * 1024;

const INTROSPECT_SCRIPT: &str = include_str!("python/introspect.py");
const RUN_SCRIPT: &str = include_str!("python/run.py");

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("cannot start {PYTHON_BIN}: {reason}")]
    Spawn { reason: String },
    #[error("tool {name} timed out after {timeout_ms} ms and was killed")]
    Timeout { name: String, timeout_ms: u64 },
    #[error("tool {name} wrote more than {TOOL_OUTPUT_BYTES_MAX} bytes of output")]
    OutputTooLarge { name: String },
    #[error("tool {name} exited without a result (status {status}); stderr: {stderr}")]
    NoResult { name: String, status: String, stderr: String },
    #[error("tool {name} failed: {error}")]
    Raised { name: String, error: String },
    #[error("source_code is not valid Python: {0}")]
    Syntax(String),
    #[error("cannot derive a JSON schema from source_code: {0}")]
    Schema(String),
    #[error("source_code is {bytes} bytes; the limit is {TOOL_SOURCE_BYTES_MAX}")]
    SourceTooLarge { bytes: usize },
    #[error("json_schema {0}")]
    BadJsonSchema(String),
}

/// What a finished process left behind.
struct Finished {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: String,
}

async fn read_limited(stream: Option<impl AsyncRead + Unpin>, bytes_max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(stream) = stream {
        // One byte past the limit tells "exactly at the limit" from "over".
        let _ = stream.take(bytes_max as u64 + 1).read_to_end(&mut out).await;
    }
    out
}

/// Runs `python3 -I -c <script>` with `input` on stdin; `name` and
/// `timeout_ms` only label errors.
async fn run_python(script: &str, input: &[u8], name: &str, timeout_ms: u64) -> Result<Finished, ToolError> {
    let mut child = Command::new(PYTHON_BIN)
        .args(["-I", "-c", script])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ToolError::Spawn { reason: e.to_string() })?;
    let stdin = child.stdin.take();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        if let Some(mut stdin) = stdin {
            // A tool that exits without reading its input is not our error.
            let _ = stdin.write_all(input).await;
        }
        let (stdout, stderr) = tokio::join!(
            read_limited(stdout, TOOL_OUTPUT_BYTES_MAX),
            read_limited(stderr, TOOL_STDERR_BYTES_MAX)
        );
        (stdout, stderr)
    };
    let timeout = Duration::from_millis(timeout_ms);
    let Ok((stdout, stderr)) = tokio::time::timeout(timeout, work).await else {
        let _ = child.kill().await;
        return Err(ToolError::Timeout { name: name.to_string(), timeout_ms });
    };
    if stdout.len() > TOOL_OUTPUT_BYTES_MAX {
        let _ = child.kill().await;
        return Err(ToolError::OutputTooLarge { name: name.to_string() });
    }
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => {
            let _ = child.kill().await;
            return Err(ToolError::Timeout { name: name.to_string(), timeout_ms });
        }
    };
    Ok(Finished { stdout, stderr, status })
}

/// The JSON object on the last non-empty line of the process's stdout.
fn last_json_line(finished: &Finished, name: &str) -> Result<Value, ToolError> {
    let text = String::from_utf8_lossy(&finished.stdout);
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .and_then(|line| serde_json::from_str::<Value>(line).ok())
        .filter(Value::is_object)
        .ok_or_else(|| ToolError::NoResult {
            name: name.to_string(),
            status: finished.status.clone(),
            stderr: String::from_utf8_lossy(&finished.stderr).trim().to_string(),
        })
}

/// What parsing a source found.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Top-level functions, in source order.
    pub functions: Vec<String>,
    /// The schema of the last function, or why there is none.
    pub schema: Result<Value, String>,
}

/// Parses `source` out of process (nothing in it is executed).
pub async fn inspect_source(source: &str) -> Result<SourceInfo, ToolError> {
    if source.len() > TOOL_SOURCE_BYTES_MAX {
        return Err(ToolError::SourceTooLarge { bytes: source.len() });
    }
    let finished =
        run_python(INTROSPECT_SCRIPT, source.as_bytes(), "schema derivation", SCHEMA_DERIVATION_TIMEOUT_MS)
            .await?;
    let out = last_json_line(&finished, "schema derivation")?;
    if let Some(error) = out.get("syntax_error").and_then(Value::as_str) {
        return Err(ToolError::Syntax(error.to_string()));
    }
    let functions = out["functions"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let schema = match out.get("schema") {
        Some(schema @ Value::Object(_)) => Ok(schema.clone()),
        _ => Err(out["schema_error"].as_str().unwrap_or("no schema").to_string()),
    };
    Ok(SourceInfo { functions, schema })
}

/// The schema a tool is stored with: `given` (checked: it names a function
/// of `source` and has object `parameters`) or the one derived from the
/// last function of `source`.
pub async fn tool_schema(source: &str, given: Option<Value>) -> Result<Value, ToolError> {
    let info = inspect_source(source).await?;
    let Some(given) = given else {
        return info.schema.map_err(ToolError::Schema);
    };
    let name = given
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::BadJsonSchema("needs a string \"name\", the function to call".into()))?;
    if !info.functions.iter().any(|function| function == name) {
        return Err(ToolError::BadJsonSchema(format!(
            "names {name:?}, but source_code defines {:?}",
            info.functions
        )));
    }
    if !given.get("parameters").is_some_and(Value::is_object) {
        return Err(ToolError::BadJsonSchema("needs an object \"parameters\"".into()));
    }
    Ok(given)
}

/// Calls function `name` of `source` with `args` in a fresh `python3`
/// process; the result text, or why the call failed.
pub async fn run_tool(source: &str, name: &str, args: &Value, timeout_ms: u64) -> Result<String, ToolError> {
    let payload = json!({"source": source, "name": name, "args": args}).to_string();
    let finished = run_python(RUN_SCRIPT, payload.as_bytes(), name, timeout_ms).await?;
    let outcome = last_json_line(&finished, name)?;
    match outcome.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(outcome["result"].as_str().unwrap_or_default().to_string()),
        _ => Err(ToolError::Raised {
            name: name.to_string(),
            error: outcome["error"].as_str().unwrap_or("no error text").to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLL: &str = "def roll_die(sides: int, label: str = \"d\") -> str:\n    \"\"\"Roll a die.\n\n    Args:\n        sides (int): number of sides\n\n    Returns:\n        str: the result\n    \"\"\"\n    print(\"noise\")\n    return f\"{label}{min(sides, 4)}\"\n";

    #[tokio::test]
    async fn schema_is_derived_from_signature_and_docstring() {
        let schema = tool_schema(ROLL, None).await.unwrap();
        assert_eq!(
            schema,
            json!({"name": "roll_die", "description": "Roll a die.", "parameters": {"type": "object",
                "properties": {"sides": {"type": "integer", "description": "number of sides"},
                               "label": {"type": "string"}},
                "required": ["sides"]}})
        );
    }

    #[tokio::test]
    async fn bad_sources_and_schemas_are_refused_with_reasons() {
        let syntax = tool_schema("def f(x:\n", None).await.unwrap_err();
        assert_eq!(syntax.to_string(), "source_code is not valid Python: line 1: '(' was never closed");
        let untyped = tool_schema("def f(x):\n    return x\n", None).await.unwrap_err();
        assert!(untyped.to_string().contains("parameter `x` of f has no supported type"), "{untyped}");
        let none = tool_schema("x = 1\n", None).await.unwrap_err();
        assert_eq!(
            none.to_string(),
            "cannot derive a JSON schema from source_code: source_code defines no top-level function"
        );
        let wrong_name = tool_schema(ROLL, Some(json!({"name": "other", "parameters": {}}))).await;
        assert!(wrong_name.unwrap_err().to_string().contains("names \"other\""));
    }

    #[tokio::test]
    async fn tools_run_out_of_process_with_results_errors_and_timeouts() {
        assert_eq!(run_tool(ROLL, "roll_die", &json!({"sides": 9}), 10_000).await.unwrap(), "d4");
        let raised = run_tool(ROLL, "roll_die", &json!({}), 10_000).await.unwrap_err();
        assert!(
            matches!(&raised, ToolError::Raised { error, .. } if error.starts_with("TypeError")),
            "{raised}"
        );
        let slow = "import time\ndef nap(s: int) -> str:\n    time.sleep(s)\n    return 'done'\n";
        let timed_out = run_tool(slow, "nap", &json!({"s": 30}), 300).await.unwrap_err();
        assert_eq!(timed_out, ToolError::Timeout { name: "nap".into(), timeout_ms: 300 });
        let pid = "import os\ndef pid() -> int:\n    return os.getpid()\n";
        let child_pid: u32 = run_tool(pid, "pid", &json!({}), 10_000).await.unwrap().parse().unwrap();
        assert_ne!(child_pid, std::process::id());
    }

    #[tokio::test]
    async fn huge_output_and_secrets_are_contained() {
        let loud =
            "import sys\ndef loud() -> str:\n    sys.__stdout__.write('x' * 2_000_000)\n    return 'ok'\n";
        let err = run_tool(loud, "loud", &json!({}), 10_000).await.unwrap_err();
        assert_eq!(err, ToolError::OutputTooLarge { name: "loud".into() });
        let env = "import os\ndef env() -> list:\n    return sorted(os.environ)\n";
        let names = run_tool(env, "env", &json!({}), 10_000).await.unwrap();
        assert!(!names.contains("OPENAI_API_KEY") && !names.contains("KELPIE_API_KEY"), "{names}");
    }
}
