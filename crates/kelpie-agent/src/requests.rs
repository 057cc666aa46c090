//! The request bodies the agent service takes, with Letta's field names.
//! Serde checks their shape (a wrong type is a 422 at the HTTP layer); the
//! service checks their meaning. Unknown fields are ignored, as Letta's
//! clients send many we do not use.

use std::collections::BTreeMap;

use kelpie_tools::pip::PipRequirement;
use serde::Deserialize;
use serde_json::Value;

use crate::model::CompactionSettings;

#[derive(Debug, Clone, Deserialize)]
pub struct CreateBlock {
    pub label: String,
    pub value: String,
    pub limit: Option<u64>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LlmConfigIn {
    pub model: String,
    pub handle: Option<String>,
    pub context_window: Option<u64>,
}

/// Letta's `embedding_config` on create: its handle (or provider and
/// model) chooses the embedding, as `embedding` does.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingConfigIn {
    pub handle: Option<String>,
    pub embedding_model: Option<String>,
    pub embedding_endpoint_type: Option<String>,
}

impl EmbeddingConfigIn {
    /// The handle it names: `handle`, else `<endpoint type>/<model>`.
    pub fn handle(&self) -> Option<String> {
        self.handle.clone().or_else(|| {
            Some(format!("{}/{}", self.embedding_endpoint_type.as_deref()?, self.embedding_model.as_deref()?))
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateAgent {
    pub name: Option<String>,
    pub system: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<Value>,
    pub memory_blocks: Option<Vec<CreateBlock>>,
    pub tools: Option<Vec<String>>,
    pub tool_ids: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub model: Option<String>,
    pub llm_config: Option<LlmConfigIn>,
    pub embedding: Option<String>,
    pub embedding_config: Option<EmbeddingConfigIn>,
    /// Identities the new agent is linked to (each must exist).
    #[serde(default)]
    pub identity_ids: Option<Vec<String>>,
    pub context_window_limit: Option<u64>,
    pub max_tokens: Option<u64>,
    /// Letta's limits of the agent's open files (see `crate::files`).
    pub max_files_open: Option<u32>,
    pub per_file_view_window_char_limit: Option<u64>,
    /// Environment variables of the agent's tool calls (Letta's `secrets`).
    pub secrets: Option<BTreeMap<String, String>>,
    /// Letta's older name for `secrets`; `secrets` wins when both are given.
    pub tool_exec_environment_variables: Option<BTreeMap<String, String>>,
    pub compaction_settings: Option<CompactionSettings>,
    /// Letta's tool rules, read by [`crate::tool_rules::parse_rules`].
    pub tool_rules: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateAgent {
    pub name: Option<String>,
    pub system: Option<String>,
    pub description: Option<String>,
    pub metadata: Option<Value>,
    pub tags: Option<Vec<String>>,
    pub tool_ids: Option<Vec<String>>,
    /// Replaces every environment variable of the agent's tool calls.
    pub secrets: Option<BTreeMap<String, String>>,
    pub tool_exec_environment_variables: Option<BTreeMap<String, String>>,
    /// Merged into the stored settings: only the fields given change.
    pub compaction_settings: Option<Value>,
    /// Replaces the agent's tool rules.
    pub tool_rules: Option<Vec<Value>>,
    pub max_files_open: Option<u32>,
    pub per_file_view_window_char_limit: Option<u64>,
}

/// The body of `POST /v1/agents/{id}/summarize` (Letta's `CompactionRequest`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SummarizeRequest {
    /// Merged over the agent's settings for this compaction only.
    pub compaction_settings: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateBlock {
    pub value: Option<String>,
    pub limit: Option<u64>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
}

/// `POST /v1/tools/` and `PUT /v1/tools/`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateTool {
    pub source_code: String,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub json_schema: Option<Value>,
    pub return_char_limit: Option<usize>,
    pub pip_requirements: Option<Vec<PipRequirement>>,
    /// Not in Letta's create body, but in its update's; accepted here too.
    #[serde(rename = "metadata_")]
    pub metadata: Option<Value>,
    /// Agents it is attached to ask the client's approval before calling it.
    pub default_requires_approval: Option<bool>,
}

/// `PATCH /v1/tools/{tool_id}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateTool {
    pub source_code: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub json_schema: Option<Value>,
    pub return_char_limit: Option<usize>,
    pub pip_requirements: Option<Vec<PipRequirement>>,
    #[serde(rename = "metadata_")]
    pub metadata: Option<Value>,
    pub default_requires_approval: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatePassage {
    pub text: String,
    pub tags: Option<Vec<String>>,
}

/// `POST /v1/passages/search` (Letta's `PassageSearchRequest`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PassageSearch {
    pub query: Option<String>,
    pub agent_id: Option<String>,
    pub archive_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub tag_match_mode: Option<String>,
    pub limit: Option<usize>,
    pub start_date: Option<String>,
    pub end_date: Option<String>,
}

/// The `config` of `POST /v1/mcp-servers/` and `PATCH /v1/mcp-servers/{id}`:
/// Letta's three shapes in one (`mcp_server_type` picks; without it, a
/// `command` means stdio and a `server_url` streamable HTTP).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct McpServerConfigIn {
    pub mcp_server_type: Option<String>,
    pub command: Option<String>,
    pub args: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub server_url: Option<String>,
    pub auth_header: Option<String>,
    pub auth_token: Option<String>,
    pub custom_headers: Option<std::collections::BTreeMap<String, String>>,
}

/// `POST /v1/mcp-servers/`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateMcpServer {
    pub server_name: String,
    pub config: McpServerConfigIn,
}

/// `PATCH /v1/mcp-servers/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UpdateMcpServer {
    pub server_name: Option<String>,
    pub config: Option<McpServerConfigIn>,
}

/// `POST /v1/tools/run`: a function run once from its source.
#[derive(Debug, Clone, Deserialize)]
pub struct RunToolFromSource {
    pub source_code: String,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// The function to call; the source's schema names it when absent.
    pub name: Option<String>,
    pub source_type: Option<String>,
    pub json_schema: Option<Value>,
    pub pip_requirements: Option<Vec<PipRequirement>>,
}

/// `POST /v1/tools/generate-schema`.
#[derive(Debug, Clone, Deserialize)]
pub struct CodeInput {
    pub code: String,
    pub source_type: Option<String>,
}
