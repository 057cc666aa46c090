//! What the agent DSTs share: the custom tool they run in simulated sandboxes.

use kelpie_agent::actors::tool_store::ToolRecord;
use serde_json::json;

/// The probe tool's id, the same on every boot.
pub const PROBE_TOOL_ID: &str = "tool-00000000-0000-4000-8000-000000000001";

/// A custom tool that echoes its text (run in a simulated sandbox).
pub fn probe_tool() -> ToolRecord {
    ToolRecord {
        id: PROBE_TOOL_ID.into(),
        name: "probe".into(),
        description: Some("Echoes its text.".into()),
        source_code: "def probe(text: str) -> str:\n    return text\n".into(),
        json_schema: json!({"name": "probe", "description": "Echoes its text.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}),
        tags: Vec::new(),
        return_char_limit: 10_000,
        metadata: None,
        pip_requirements: Vec::new(),
        created_ms: 0,
        updated_ms: 0,
        mcp: None,
        default_requires_approval: false,
    }
}
