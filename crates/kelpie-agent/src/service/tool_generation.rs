//! `POST /v1/tools/generate-tool`: a model writes a Python tool from a
//! prompt. As in Letta, the model is offered one tool, `generate_tool`,
//! whose arguments are the source, sample arguments and pip requirements
//! (each a string, the last two JSON objects); the answer is the tool as
//! `POST /v1/tools/` would make it (the schema derived from the source by
//! the same code) but not stored, with the sample arguments and the
//! model's text.
//!
//! A model that fails, answers without the call or with arguments that
//! are not what the tool asks is the model's fault (502); a source whose
//! schema cannot be derived is refused as Letta refuses it (400).

use std::sync::Arc;

use kelpie_core::Env;
use kelpie_llm::{ChatModel, ChatRequest, LlmError, LlmSettings};
use kelpie_tools::pip::PipRequirement;
use serde_json::{json, Map, Value};

use crate::actors::tool_store::ToolRecord;
use crate::error::{ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::letta::custom_tool_json;
use crate::limits::TOOL_RETURN_CHARS_MAX;
use crate::requests::GenerateTool;
use crate::service::providers::Providers;
use crate::service::tools::ToolService;

/// The tool the model is offered (and must call).
pub const GENERATE_TOOL_NAME: &str = "generate_tool";
/// Most bytes of the request's texts together (prompt, starter code,
/// validation errors, tool name).
pub const GENERATE_TOOL_INPUT_BYTES_MAX: usize = 256 * 1024;
/// Most validation errors one request passes on.
pub const GENERATE_TOOL_VALIDATION_ERRORS_COUNT_MAX: usize = 64;
/// Longest tool name, in bytes.
pub const GENERATE_TOOL_NAME_BYTES_MAX: usize = 128;

const SYSTEM_PROMPT: &str = "You write Python tools that an AI agent calls. Answer by calling \
generate_tool once with: raw_source_code, the source of one Python function with exactly the \
name asked for, a one-line signature whose parameters have plain types (str, int, float, bool, \
list, dict) and no defaults, and a Google-style docstring (a summary line, an Args: section \
naming each parameter with its type and meaning, a Returns: section); imports go inside the \
function. sample_args_json, a JSON object of arguments to try the function with. \
pip_requirements_json, a JSON object of the pip packages the function needs (name to version, \
or an empty string for any version; {} for none).";

const ACKNOWLEDGEMENT: &str =
    "Understood: I will answer the next request with a generate_tool call holding the source, sample arguments and requirements.";

/// The parameters of the offered tool (three strings, all required).
fn generate_tool_schema() -> Value {
    json!({
        "name": GENERATE_TOOL_NAME,
        "description": "Hands back the Python source of a tool an agent can call, with arguments to test it.",
        "parameters": {
            "type": "object",
            "properties": {
                "raw_source_code": {"type": "string", "description": "The Python source of the tool's function."},
                "sample_args_json": {"type": "string", "description": "A JSON object: the function's parameters with example values."},
                "pip_requirements_json": {"type": "string", "description": "A JSON object: pip package name to version (empty for any); {} for none."},
            },
            "required": ["raw_source_code", "sample_args_json", "pip_requirements_json"],
        },
    })
}

/// What the request asks the model, in one user message.
fn user_prompt(request: &GenerateTool) -> String {
    let mut text = format!("Write a Python function named {}.\n", request.tool_name);
    if let Some(code) = request.starter_code.as_deref().filter(|code| !code.trim().is_empty()) {
        text.push_str(&format!("Start from this code:\n```\n{code}\n```\n"));
    }
    if !request.validation_errors.is_empty() {
        text.push_str(&format!(
            "An earlier version failed these checks; fix them:\n{}\n",
            request.validation_errors.join("\n")
        ));
    }
    text.push_str(&format!("Instructions: {}", request.prompt));
    text
}

fn check(request: &GenerateTool) -> ServiceResult<()> {
    let name = &request.tool_name;
    let identifier = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier || name.len() > GENERATE_TOOL_NAME_BYTES_MAX {
        return Err(ServiceError::Invalid(format!(
            "tool_name {name:?} must be a Python identifier of 1..={GENERATE_TOOL_NAME_BYTES_MAX} bytes (GENERATE_TOOL_NAME_BYTES_MAX)"
        )));
    }
    if request.validation_errors.len() > GENERATE_TOOL_VALIDATION_ERRORS_COUNT_MAX {
        return Err(ServiceError::Invalid(format!(
            "{} validation_errors, over GENERATE_TOOL_VALIDATION_ERRORS_COUNT_MAX = {GENERATE_TOOL_VALIDATION_ERRORS_COUNT_MAX}",
            request.validation_errors.len()
        )));
    }
    let bytes = name.len()
        + request.prompt.len()
        + request.starter_code.as_deref().map_or(0, str::len)
        + request.validation_errors.iter().map(String::len).sum::<usize>();
    if bytes > GENERATE_TOOL_INPUT_BYTES_MAX {
        return Err(ServiceError::TooLarge(format!(
            "the request's texts are {bytes} bytes, over GENERATE_TOOL_INPUT_BYTES_MAX = {GENERATE_TOOL_INPUT_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// What the model's `generate_tool` call holds, checked.
#[derive(Debug)]
struct GeneratedCall {
    source: String,
    sample_args: Map<String, Value>,
    requirements: Vec<PipRequirement>,
}

/// The model's arguments, checked field by field; the reason when not.
fn parsed_call(arguments: &str) -> Result<GeneratedCall, String> {
    let call: Value =
        serde_json::from_str(arguments).map_err(|e| format!("its arguments are not JSON: {e}"))?;
    let field =
        |name: &str| call[name].as_str().ok_or_else(|| format!("its arguments have no string {name}"));
    let source = field("raw_source_code")?.to_string();
    let object = |name: &str| -> Result<Map<String, Value>, String> {
        let text = field(name)?;
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!("its {name} is not a JSON object: {text:?}")),
        }
    };
    let sample_args = object("sample_args_json")?;
    let requirements = object("pip_requirements_json")?
        .into_iter()
        .map(|(name, version)| PipRequirement {
            name,
            version: version.as_str().filter(|version| !version.is_empty()).map(str::to_string),
        })
        .collect();
    Ok(GeneratedCall { source, sample_args, requirements })
}

fn model_error(llm: &LlmSettings, tool_name: &str, reason: String) -> ServiceError {
    ServiceError::Llm(LlmError::InvalidResponse {
        endpoint: llm.endpoint.clone(),
        reason: format!("failed to generate tool '{tool_name}' with model {}: {reason}", llm.handle),
    })
}

pub struct ToolGenerator {
    tools: Arc<ToolService>,
    llm: Arc<dyn ChatModel>,
    providers: Arc<Providers>,
    env: Env,
}

impl ToolGenerator {
    pub(crate) fn new(
        tools: Arc<ToolService>,
        llm: Arc<dyn ChatModel>,
        providers: Arc<Providers>,
        env: Env,
    ) -> Self {
        ToolGenerator { tools, llm, providers, env }
    }

    /// `{tool, sample_args, response}` (Letta's `GenerateToolOutput`).
    pub async fn generate(&self, request: GenerateTool) -> ServiceResult<Value> {
        check(&request)?;
        let llm = self.providers.resolve_llm(request.handle.as_deref()).await?;
        let chat = ChatRequest {
            model: llm.model.clone(),
            messages: vec![
                json!({"role": "system", "content": SYSTEM_PROMPT}).into(),
                json!({"role": "assistant", "content": ACKNOWLEDGEMENT}).into(),
                json!({"role": "user", "content": user_prompt(&request)}).into(),
            ],
            tools: vec![generate_tool_schema()],
            max_tokens: llm.max_tokens,
            temperature: llm.temperature,
        };
        let answer = self.llm.chat(&llm, &chat).await?;
        let Some(call) = answer.tool_calls.iter().find(|call| call.name == GENERATE_TOOL_NAME) else {
            let text = answer.content.as_deref().unwrap_or("(no text)");
            let reason = format!("the model did not call {GENERATE_TOOL_NAME}; it answered {text:?}");
            return Err(model_error(&llm, &request.tool_name, reason));
        };
        let GeneratedCall { source, sample_args, requirements } =
            parsed_call(&call.arguments).map_err(|reason| model_error(&llm, &request.tool_name, reason))?;
        let requirements = kelpie_tools::pip::normalize(&requirements)
            .map_err(|error| model_error(&llm, &request.tool_name, error.to_string()))?;
        let schema = match self.tools.runner().tool_schema(&source, None).await {
            Ok(schema) => schema,
            Err(error) if error.is_bad_input() => {
                return Err(ServiceError::Refused(format!(
                    "Failed to generate JSON schema for tool '{}': {error}",
                    request.tool_name
                )))
            }
            Err(error) => return Err(error.into()),
        };
        assert!(schema.is_object(), "a derived schema is an object");
        let now = self.env.clock.wall_ms();
        let record = ToolRecord {
            id: new_id("tool", self.env.rng.as_ref()),
            name: request.tool_name,
            description: schema["description"].as_str().map(str::to_string),
            source_code: source,
            json_schema: schema,
            tags: Vec::new(),
            return_char_limit: TOOL_RETURN_CHARS_MAX,
            metadata: None,
            pip_requirements: requirements,
            created_ms: now,
            updated_ms: now,
            mcp: None,
            default_requires_approval: false,
        };
        Ok(json!({
            "tool": custom_tool_json(&record),
            "sample_args": sample_args,
            "response": answer.content.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> GenerateTool {
        GenerateTool {
            tool_name: name.into(),
            prompt: "Reverse a string.".into(),
            handle: None,
            starter_code: Some("def flip(text: str) -> str:\n    pass".into()),
            validation_errors: vec!["no docstring".into()],
        }
    }

    #[test]
    fn the_prompt_names_the_tool_and_passes_on_code_errors_and_instructions() {
        let text = user_prompt(&request("flip"));
        assert!(text.starts_with("Write a Python function named flip.\n"), "{text}");
        assert!(text.contains("def flip(text: str)") && text.contains("no docstring"), "{text}");
        assert!(text.ends_with("Instructions: Reverse a string."), "{text}");
    }

    #[test]
    fn bad_names_and_inputs_past_the_limits_are_refused() {
        assert!(check(&request("flip")).is_ok());
        for bad in ["", "1flip", "flip-it", "flip it"] {
            let refused = check(&request(bad)).unwrap_err().to_string();
            assert!(refused.contains("Python identifier"), "{bad}: {refused}");
        }
        let mut long = request("flip");
        long.prompt = "x".repeat(GENERATE_TOOL_INPUT_BYTES_MAX + 1);
        assert!(check(&long).unwrap_err().to_string().contains("GENERATE_TOOL_INPUT_BYTES_MAX"));
        let mut many = request("flip");
        many.validation_errors = vec!["e".into(); GENERATE_TOOL_VALIDATION_ERRORS_COUNT_MAX + 1];
        assert!(check(&many).unwrap_err().to_string().contains("GENERATE_TOOL_VALIDATION_ERRORS_COUNT_MAX"));
    }

    #[test]
    fn the_call_arguments_are_checked_field_by_field() {
        let good = json!({
            "raw_source_code": "def f():\n    pass",
            "sample_args_json": "{\"a\": 1}",
            "pip_requirements_json": "{\"requests\": \"2.31.0\", \"rich\": \"\"}",
        });
        let GeneratedCall { source, sample_args, requirements } = parsed_call(&good.to_string()).unwrap();
        assert_eq!(source, "def f():\n    pass");
        assert_eq!(Value::Object(sample_args), json!({"a": 1}));
        assert_eq!(requirements[0].name, "requests");
        assert_eq!(requirements[0].version.as_deref(), Some("2.31.0"));
        assert_eq!(requirements[1].version, None);
        let reason = |arguments: &str| parsed_call(arguments).err().unwrap();
        assert!(reason("not json").contains("not JSON"));
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("raw_source_code");
        assert!(reason(&missing.to_string()).contains("raw_source_code"));
        let mut listed = good;
        listed["sample_args_json"] = json!("[1]");
        assert!(parsed_call(&listed.to_string())
            .unwrap_err()
            .contains("sample_args_json is not a JSON object"));
    }
}
