//! What the agent tests share: a service on one node over given storage,
//! the custom tool the DSTs run in simulated sandboxes, and reopening a
//! redb file a test just closed.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use kelpie_agent::actors::tool_store::ToolRecord;
use kelpie_storage::Storage;
use serde_json::json;

/// An agent service on one node (`node-1`) over `storage`, its LLM at
/// `llm_base_url` (the fake's, or an address never called), tools run
/// unsandboxed under `dir`.
pub fn local_service(storage: &Storage, dir: &Path, llm_base_url: &str) -> kelpie_agent::AgentService {
    use kelpie_agent::node::{agent_runtimes, Placement};
    use kelpie_core::config::{ConfigLayers, Origin};
    use kelpie_tools::{RunnerSettings, ToolRunner};
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("test".into());
    layers.set("llm.openai_base_url", llm_base_url, flag.clone()).unwrap();
    layers.set("llm.default_model", "openai-proxy/fake-gpt", flag).unwrap();
    let llm_config = layers.resolve().unwrap().llm;
    let llm = kelpie_llm::LlmClients::from_config(&llm_config).unwrap();
    let catalog = kelpie_llm::catalog::ModelCatalog::new(llm_config, llm.clone());
    let runner = ToolRunner::new(
        std::sync::Arc::new(kelpie_sandbox::unsandboxed::UnsandboxedBackend::open(dir.join("run"))),
        RunnerSettings::new("/usr/bin/python3", dir.join("pip")),
    );
    let env = kelpie_core::Env::production();
    let config = kelpie_runtime::RuntimeConfig::new(kelpie_core::NodeId::new("node-1").unwrap());
    let runtimes = agent_runtimes(storage, &Placement::Local, &env, &config).unwrap();
    kelpie_agent::AgentService::new(
        runtimes,
        env,
        std::sync::Arc::new(llm),
        catalog,
        std::sync::Arc::new(runner),
    )
}

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
