//! Custom Python tools: the scripts that run inside a sandbox and what their
//! answers mean. [`crate::runner::ToolRunner`] runs them.
//!
//! - `introspect.py` parses a tool's source with `ast` (nothing in it is
//!   executed) and prints one JSON object: its top-level functions and the
//!   schema of the last one.
//! - `run.py` runs one call (or, for the code interpreter, one piece of
//!   code) and sends the outcome on the sandbox's result socket, which the
//!   tool's own code cannot reach.
//! - `forkserver.py`, appended to `run.py`, serves many calls from one
//!   interpreter in one long-lived sandbox ([`crate::forkserver`]).

use serde_json::Value;

use crate::error::ToolError;

/// Longest tool source accepted, in bytes.
pub const TOOL_SOURCE_BYTES_MAX: usize = 256 * 1024;
/// Longest code the code interpreter takes, in bytes.
pub const CODE_BYTES_MAX: usize = 256 * 1024;

pub(crate) const INTROSPECT_SCRIPT: &str = include_str!("python/introspect.py");
pub(crate) const RUN_SCRIPT: &str = include_str!("python/run.py");
/// `run.py` with the fork server after it, started with the argument `serve`.
pub(crate) const FORK_SERVER_SCRIPT: &str =
    concat!(include_str!("python/run.py"), include_str!("python/forkserver.py"));

/// What parsing a source found.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Top-level functions, in source order.
    pub functions: Vec<String>,
    /// The schema of the last function, or why there is none.
    pub schema: Result<Value, String>,
}

/// The JSON object on the last non-empty line of `stdout`.
pub(crate) fn last_json_line(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .and_then(|line| serde_json::from_str::<Value>(line).ok())
        .filter(Value::is_object)
}

/// What `introspect.py` printed, as a [`SourceInfo`].
pub(crate) fn source_info(out: &Value) -> Result<SourceInfo, ToolError> {
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
/// of the source and has object `parameters`) or the one derived from the
/// source's last function.
pub fn choose_schema(info: SourceInfo, given: Option<Value>) -> Result<Value, ToolError> {
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

/// The outcome `run.py` sent on the result socket: `Ok(text)` for a
/// returned value, `Err(text)` for an exception the tool raised.
pub(crate) fn outcome(bytes: &[u8]) -> Option<Result<String, String>> {
    let outcome: Value = serde_json::from_slice(bytes).ok()?;
    match outcome.get("ok").and_then(Value::as_bool)? {
        true => Some(Ok(outcome["result"].as_str().unwrap_or_default().to_string())),
        false => Some(Err(outcome["error"].as_str().unwrap_or("no error text").to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_last_json_line_is_read_and_garbage_is_none() {
        assert_eq!(last_json_line("noise\n{\"a\": 1}\n\n"), Some(json!({"a": 1})));
        assert_eq!(last_json_line("{\"a\": 1}\nnot json"), None);
        assert_eq!(last_json_line("[1]"), None);
    }

    #[test]
    fn a_given_schema_must_name_a_function_of_the_source() {
        let info = SourceInfo { functions: vec!["f".into()], schema: Err("none".into()) };
        let wrong = choose_schema(info.clone(), Some(json!({"name": "g", "parameters": {}}))).unwrap_err();
        assert_eq!(wrong.to_string(), "json_schema names \"g\", but source_code defines [\"f\"]");
        let given = json!({"name": "f", "parameters": {"type": "object"}});
        assert_eq!(choose_schema(info.clone(), Some(given.clone())).unwrap(), given);
        assert_eq!(choose_schema(info, None).unwrap_err(), ToolError::Schema("none".into()));
    }

    #[test]
    fn outcomes_are_read_and_malformed_ones_are_none() {
        assert_eq!(outcome(br#"{"ok": true, "result": "4"}"#), Some(Ok("4".into())));
        assert_eq!(outcome(br#"{"ok": false, "error": "ValueError: x"}"#), Some(Err("ValueError: x".into())));
        assert_eq!(outcome(br#"{"result": "4"}"#), None);
        assert_eq!(outcome(b"garbage"), None);
    }
}
