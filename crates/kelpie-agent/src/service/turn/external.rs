//! The tool calls of a step that run outside the agent actor: custom Python
//! tools and the code interpreter (`run_code`), each in a sandbox, and MCP
//! tools, on their server (a stdio one in its own sandbox). They
//! run before the step is committed and their results are committed with it.
//! Every failure (a raised error, a timeout, a sandbox that cannot start) is
//! a failed tool result the LLM sees; none aborts the step, and none touches
//! the agent's state.

use std::collections::BTreeMap;

use kelpie_llm::ToolCall;
use kelpie_tools::{builtin_tool, ToolRun, ToolRunner, RUN_CODE};
use serde_json::{json, Value};

use crate::actors::agent::ExternalResult;
use crate::actors::tool_store::ToolRecord;
use crate::limits::TOOL_RETURN_CHARS_MAX;
use crate::model::AgentRecord;
use crate::service::sandbox_configs::ToolSandboxSettings;
use crate::service::tools::ToolService;

fn clip_chars(text: String, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text;
    }
    text.chars().take(chars_max).collect()
}

/// A tool call's environment: the sandbox configuration's variables, then
/// the agent's own (which win on the same name).
pub(crate) fn tool_env(settings: &ToolSandboxSettings, agent: &AgentRecord) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = settings.env.iter().cloned().collect();
    env.extend(agent.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.into_iter().collect()
}

/// Letta's shape of a `run_code` result.
fn run_code_json(run: &ToolRun) -> String {
    let listed = |text: &str| if text.is_empty() { json!([]) } else { json!([text]) };
    let results = if run.ok && !run.result.is_empty() { json!([run.result]) } else { json!([]) };
    let error = (!run.ok).then_some(run.result.as_str());
    json!({"results": results, "logs": {"stdout": listed(&run.stdout), "stderr": listed(&run.stderr)}, "error": error})
        .to_string()
}

/// What running one call gave: its result for the LLM and what it printed.
fn finished(
    call: &ToolCall,
    outcome: Result<ToolRun, String>,
    chars_max: usize,
    render: impl Fn(&ToolRun) -> String,
) -> ExternalResult {
    let (result, ok, stdout, stderr) = match outcome {
        Ok(run) => (render(&run), run.ok, Some(run.stdout), Some(run.stderr)),
        Err(reason) => (reason, false, None, None),
    };
    let clip = |text: Option<String>| text.map(|text| clip_chars(text, TOOL_RETURN_CHARS_MAX));
    ExternalResult {
        tool_call_id: call.id.clone(),
        result: clip_chars(result, chars_max),
        ok,
        stdout: clip(stdout),
        stderr: clip(stderr),
    }
}

/// Runs the calls among `calls` that are the agent's custom tools or its
/// code interpreter; built-in memory tools are left to the actor.
pub(crate) async fn run_external_calls(
    tools: &ToolService,
    agent: &AgentRecord,
    custom: &[ToolRecord],
    settings: &ToolSandboxSettings,
    calls: &[ToolCall],
) -> Vec<ExternalResult> {
    let runner: &ToolRunner = tools.runner();
    let env = tool_env(settings, agent);
    let run_code_attached =
        builtin_tool(RUN_CODE).is_some_and(|tool| agent.tool_ids.iter().any(|id| id == tool.id));
    let mut results = Vec::new();
    for call in calls {
        let tool = custom.iter().find(|tool| tool.name == call.name && agent.tool_ids.contains(&tool.id));
        if tool.is_none() && !(call.name == RUN_CODE && run_code_attached) {
            continue;
        }
        let args = match serde_json::from_str::<Value>(&call.arguments) {
            Ok(args @ Value::Object(_)) => args,
            _ => {
                let reason = format!("arguments of {} are not a JSON object", call.name);
                results.push(finished(call, Err(reason), TOOL_RETURN_CHARS_MAX, |run| run.result.clone()));
                continue;
            }
        };
        let result = match tool {
            Some(tool) if tool.mcp.is_some() => {
                let outcome = tools.call_mcp(tool, &args).await;
                let outcome = match outcome {
                    Ok(result) => Ok(ToolRun {
                        ok: !result.is_error,
                        result: result.text,
                        stdout: String::new(),
                        stderr: String::new(),
                    }),
                    Err(error) => Err(format!("tool {} failed: {error}", tool.name)),
                };
                finished(call, outcome, tool.return_char_limit, |run| match run.ok {
                    true => run.result.clone(),
                    false => format!("tool {} failed: {}", tool.name, run.result),
                })
            }
            Some(tool) => {
                let mut requirements = tool.pip_requirements.clone();
                requirements.extend(settings.requirements.iter().cloned());
                let tool_call = kelpie_tools::ToolCall {
                    source: &tool.source_code,
                    name: &tool.name,
                    args: &args,
                    env: &env,
                    network: tool.network(),
                    requirements: &requirements,
                };
                let outcome = runner.run_tool(tool_call).await.map_err(|e| e.to_string());
                finished(call, outcome, tool.return_char_limit, |run| match run.ok {
                    true => run.result.clone(),
                    false => format!("tool {} failed: {}", tool.name, run.result),
                })
            }
            None => {
                let code = args["code"].as_str().unwrap_or_default();
                let language = args["language"].as_str().unwrap_or("python");
                let outcome = runner.run_code(language, code, &env).await.map_err(|e| e.to_string());
                finished(call, outcome, TOOL_RETURN_CHARS_MAX, run_code_json)
            }
        };
        results.push(result);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_code_results_have_letta_shape() {
        let run = ToolRun { ok: true, result: "4".into(), stdout: "hi\n".into(), stderr: String::new() };
        let value: Value = serde_json::from_str(&run_code_json(&run)).unwrap();
        assert_eq!(
            value,
            json!({"results": ["4"], "logs": {"stdout": ["hi\n"], "stderr": []}, "error": null})
        );
        let failed =
            ToolRun { ok: false, result: "NameError: x".into(), stdout: String::new(), stderr: "tb".into() };
        let value: Value = serde_json::from_str(&run_code_json(&failed)).unwrap();
        assert_eq!(
            value,
            json!({"results": [], "logs": {"stdout": [], "stderr": ["tb"]}, "error": "NameError: x"})
        );
    }
}
