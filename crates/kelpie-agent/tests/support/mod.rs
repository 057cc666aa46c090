//! What the agent tests share: the custom tool the DSTs run in simulated
//! sandboxes, and reopening a redb file a test just closed.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use kelpie_agent::actors::tool_store::ToolRecord;
use kelpie_storage::Storage;
use serde_json::json;

/// Longest a test waits for a redb file it closed to be free again.
pub const REOPEN_WAIT_MS_MAX: u64 = 10_000;

/// Opens the redb file at `path` again once the storage a test dropped has
/// let it go: the runtime's last tasks may still hold the storage for a
/// moment after its shutdown, and redb refuses a second open meanwhile.
pub async fn reopen_redb(path: &Path) -> Storage {
    let clock = kelpie_core::Env::production().clock;
    let mut waited_ms = 0;
    loop {
        match Storage::open_redb(path) {
            Ok(storage) => return storage,
            Err(err) if err.to_string().contains("already open") && waited_ms < REOPEN_WAIT_MS_MAX => {
                clock.sleep(Duration::from_millis(20)).await;
                waited_ms += 20;
            }
            Err(err) => panic!("cannot reopen {}: {err}", path.display()),
        }
    }
}

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
