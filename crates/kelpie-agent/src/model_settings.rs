//! Letta's model-settings objects (`model_settings` of a conversation or a
//! compaction): a union told apart by `provider_type`. Kelpie stores them as
//! given and answers them back, so it checks their shape on the way in.

use serde_json::Value;

/// The `provider_type`s of Letta's model-settings objects (the tag of the
/// union a conversation's or a compaction's `model_settings` is).
pub const MODEL_SETTINGS_PROVIDER_TYPES: [&str; 15] = [
    "anthropic",
    "azure",
    "baseten",
    "bedrock",
    "chatgpt_oauth",
    "deepseek",
    "google_ai",
    "google_vertex",
    "groq",
    "openai",
    "openrouter",
    "sglang",
    "together",
    "xai",
    "zai",
];

/// `settings` has the shape of one of Letta's model-settings objects, as
/// they are stored and answered back: a known `provider_type`, and each
/// field those objects define of its type, nested objects included (other
/// keys are allowed by the union's members and kept as given).
pub fn check(settings: &Value) -> Result<(), String> {
    let Some(fields) = settings.as_object() else {
        return Err("model_settings must be an object".into());
    };
    let provider = match fields.get("provider_type").and_then(Value::as_str) {
        Some(provider) if MODEL_SETTINGS_PROVIDER_TYPES.contains(&provider) => provider,
        other => {
            return Err(format!(
                "model_settings.provider_type {other:?} must be one of {MODEL_SETTINGS_PROVIDER_TYPES:?}"
            ))
        }
    };
    let one_of = |value: &Value, allowed: &[&str]| value.as_str().is_some_and(|v| allowed.contains(&v));
    for (field, value) in fields {
        let expected = match field.as_str() {
            "max_output_tokens" if !value.is_i64() => "an integer",
            "parallel_tool_calls" | "strict" if !value.is_boolean() => "true or false",
            "temperature" if !value.is_number() => "a number",
            "tool_call_parser" if !(value.is_string() || value.is_null()) => "a string or null",
            "effort" if !(value.is_null() || one_of(value, &["low", "medium", "high", "max"])) => {
                "null or one of low, medium, high, max"
            }
            "verbosity" if !(value.is_null() || one_of(value, &["low", "medium", "high"])) => {
                "null or one of low, medium, high"
            }
            "reasoning" => {
                let efforts: &[&str] = if provider == "chatgpt_oauth" {
                    &["none", "low", "medium", "high", "xhigh"]
                } else {
                    &["none", "minimal", "low", "medium", "high", "xhigh"]
                };
                match object_fields(value, &[("reasoning_effort", &|v| one_of(v, efforts))]) {
                    true => continue,
                    false => "an object whose reasoning_effort is one of Letta's efforts",
                }
            }
            "thinking" => match object_fields(
                value,
                &[
                    ("type", &|v| one_of(v, &["enabled", "disabled"])),
                    ("budget_tokens", &Value::is_i64),
                    ("clear_thinking", &Value::is_boolean),
                ],
            ) {
                true => continue,
                false => "an object with type enabled or disabled",
            },
            "thinking_config" => match object_fields(
                value,
                &[("include_thoughts", &Value::is_boolean), ("thinking_budget", &Value::is_i64)],
            ) {
                true => continue,
                false => "an object with include_thoughts (true or false) and thinking_budget (an integer)",
            },
            "response_format" | "response_schema" if !(value.is_null() || response_format(value)) => {
                "null or an object with type text, json_object or json_schema (with a json_schema object)"
            }
            _ => continue,
        };
        return Err(format!("model_settings.{field} must be {expected}"));
    }
    Ok(())
}

/// A field of a nested settings object and the check its value must pass.
type FieldCheck<'a> = (&'a str, &'a dyn Fn(&Value) -> bool);

/// `value` is an object whose listed fields, where present, pass their check.
fn object_fields(value: &Value, checks: &[FieldCheck<'_>]) -> bool {
    value
        .as_object()
        .is_some_and(|fields| checks.iter().all(|(name, check)| fields.get(*name).is_none_or(check)))
}

/// One of Letta's response formats: `{"type": "text" | "json_object"}` or
/// `{"type": "json_schema", "json_schema": {...}}`.
fn response_format(value: &Value) -> bool {
    match value.get("type").and_then(Value::as_str) {
        Some("text" | "json_object") => true,
        Some("json_schema") => value.get("json_schema").is_some_and(Value::is_object),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn model_settings_are_checked_against_the_shape_of_lettas_union() {
        // What Kelpie answers back for each of these is valid against Letta's schema.
        for good in [
            json!({"provider_type": "openai", "temperature": 0.2, "reasoning": {"reasoning_effort": "minimal"}}),
            json!({"provider_type": "anthropic", "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            json!({"provider_type": "google_ai", "thinking_config": {"include_thoughts": true}}),
            json!({"provider_type": "openai", "response_format": {"type": "json_schema", "json_schema": {}}}),
            json!({"provider_type": "xai", "response_format": null, "effort": null, "custom": [1]}),
        ] {
            assert_eq!(check(&good), Ok(()), "{good}");
        }
        for (bad, reason) in [
            (json!([]), "model_settings must be an object"),
            (json!({}), "model_settings.provider_type None must be one of"),
            (json!({"provider_type": "hal"}), "model_settings.provider_type Some(\"hal\")"),
            (
                json!({"provider_type": "openai", "temperature": {}}),
                "model_settings.temperature must be a number",
            ),
            (
                json!({"provider_type": "openai", "max_output_tokens": 1.5}),
                "max_output_tokens must be an integer",
            ),
            (
                json!({"provider_type": "chatgpt_oauth", "reasoning": null}),
                "model_settings.reasoning must be an object",
            ),
            (
                json!({"provider_type": "chatgpt_oauth", "reasoning": {"reasoning_effort": "minimal"}}),
                "reasoning_effort",
            ),
            (json!({"provider_type": "anthropic", "thinking": {"type": "maybe"}}), "model_settings.thinking"),
            (
                json!({"provider_type": "google_ai", "thinking_config": {"thinking_budget": "x"}}),
                "thinking_budget",
            ),
            (
                json!({"provider_type": "openai", "response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            (json!({"provider_type": "openai", "verbosity": "loud"}), "verbosity must be null or one of"),
            (json!({"provider_type": "openai", "strict": "yes"}), "strict must be true or false"),
        ] {
            let refused = check(&bad).unwrap_err();
            assert!(refused.contains(reason), "{bad}: {refused}");
        }
    }
}
