//! Agent export and import as one JSON file (our own format, not Letta's
//! `.af` agent file): the agent record, its messages and passages, and the
//! custom tools it has attached.
//!
//! Import creates a new agent (new ids for it, its blocks, messages and
//! passages) with its whole history in one actor invocation, so a failed
//! import leaves nothing behind but the custom tools it upserted.

use std::collections::BTreeMap;
use std::sync::Arc;

use kelpie_core::Env;
use kelpie_llm::ChatModel;
use kelpie_memory::{Block, CoreMemory, Passage};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::directory::AgentDirectory;
use super::tools::ToolService;
use crate::actors::agent::{AgentCommand, AgentReply, ImportedAgent};
use crate::actors::directory::DirectoryEntry;
use crate::actors::tool_store::ToolRecord;
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::model::{check_name_and_tags, AgentRecord, StoredMessage};

/// The version written into every export; import refuses any other.
pub const AGENT_FILE_VERSION: u32 = 1;
/// Suffix of an imported agent's name unless the client asks otherwise.
const COPY_SUFFIX: &str = "_copy";

/// The exported file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentFile {
    pub kelpie_agent_file_version: u32,
    pub agent: AgentRecord,
    pub messages: Vec<StoredMessage>,
    pub passages: Vec<Passage>,
    pub custom_tools: Vec<ToolRecord>,
}

/// The import form's options besides the file (Letta's names).
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub override_name: Option<String>,
    pub append_copy_suffix: bool,
    pub strip_messages: bool,
}

pub struct Transfer {
    actors: Arc<AgentActors>,
    directory: Arc<AgentDirectory>,
    tools: Arc<ToolService>,
    llm: Arc<dyn ChatModel>,
    env: Env,
}

impl Transfer {
    pub(crate) fn new(
        actors: Arc<AgentActors>,
        directory: Arc<AgentDirectory>,
        tools: Arc<ToolService>,
        llm: Arc<dyn ChatModel>,
        env: Env,
    ) -> Self {
        Transfer { actors, directory, tools, llm, env }
    }

    pub async fn export(&self, agent_id: &str) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        let actor = self.actors.agent_ref(agent_id)?;
        let AgentReply::Messages(messages) = actor.invoke(AgentCommand::Messages).await? else {
            return Err(unexpected("messages"));
        };
        let AgentReply::Passages { passages, .. } = actor.invoke(AgentCommand::Passages).await? else {
            return Err(unexpected("passages"));
        };
        let custom_tools: Vec<ToolRecord> = self
            .tools
            .custom_tools()
            .await?
            .into_iter()
            .filter(|tool| agent.tool_ids.contains(&tool.id))
            .collect();
        let file = AgentFile {
            kelpie_agent_file_version: AGENT_FILE_VERSION,
            agent,
            messages,
            passages,
            custom_tools,
        };
        serde_json::to_value(&file)
            .map_err(|e| ServiceError::Invalid(format!("cannot encode the agent file: {e}")))
    }

    /// Creates a new agent from an exported file; answers `{"agent_ids": [id]}`.
    pub async fn import(&self, file: &[u8], options: ImportOptions) -> ServiceResult<Value> {
        let file: AgentFile = serde_json::from_slice(file)
            .map_err(|e| ServiceError::Invalid(format!("not a kelpie agent file: {e}")))?;
        if file.kelpie_agent_file_version != AGENT_FILE_VERSION {
            return Err(ServiceError::Invalid(format!(
                "agent file version {} is not {AGENT_FILE_VERSION}",
                file.kelpie_agent_file_version
            )));
        }
        let mut tool_ids = BTreeMap::new();
        for tool in file.custom_tools {
            let old_id = tool.id.clone();
            tool_ids.insert(old_id, self.tools.upsert_record(tool).await?.id);
        }
        let mut imported = self.fresh_agent(file.agent, file.messages, file.passages, &tool_ids, &options)?;
        // Re-embedded with the agent's embedding: a file's vectors are not trusted.
        let texts: Vec<String> = imported.passages.iter().map(|passage| passage.text.clone()).collect();
        let vectors = self.llm.embed(&imported.record.embedding, &texts).await?;
        for (passage, vector) in imported.passages.iter_mut().zip(vectors) {
            passage.embedding = vector;
        }
        let entry = DirectoryEntry {
            id: imported.record.id.clone(),
            name: imported.record.name.clone(),
            tags: imported.record.tags.clone(),
        };
        let agent_id = entry.id.clone();
        self.actors.invoke(&agent_id, AgentCommand::Import(Box::new(imported))).await?;
        self.directory.register(entry).await?;
        Ok(json!({"agent_ids": [agent_id]}))
    }

    /// The file's agent with new ids everywhere, checked as a create is.
    fn fresh_agent(
        &self,
        mut record: AgentRecord,
        messages: Vec<StoredMessage>,
        passages: Vec<Passage>,
        tool_ids: &BTreeMap<String, String>,
        options: &ImportOptions,
    ) -> ServiceResult<ImportedAgent> {
        let rng = self.env.rng.as_ref();
        record.id = new_id("agent", rng);
        record.name = match &options.override_name {
            Some(name) => name.clone(),
            None if options.append_copy_suffix => format!("{}{COPY_SUFFIX}", record.name),
            None => record.name,
        };
        check_name_and_tags(&record.name, &record.tags)?;
        let mut blocks = Vec::new();
        for old in record.memory.blocks() {
            let mut block =
                Block::new(new_id("block", rng), old.label.clone(), old.value.clone(), Some(old.limit))?;
            block.description = old.description.clone();
            block.read_only = old.read_only;
            blocks.push(block);
        }
        record.memory = CoreMemory::new(blocks)?;
        // A custom tool not in the file cannot be attached on this server.
        let builtins = kelpie_tools::builtin_tools();
        record.tool_ids = record
            .tool_ids
            .iter()
            .filter_map(|id| match builtins.iter().any(|tool| tool.id == id) {
                true => Some(id.clone()),
                false => tool_ids.get(id).cloned(),
            })
            .collect();
        let messages = if options.strip_messages { Vec::new() } else { messages };
        let messages = messages
            .into_iter()
            .map(|message| StoredMessage { id: new_id("message", rng), ..message })
            .collect();
        let passages =
            passages.into_iter().map(|passage| Passage { id: new_id("passage", rng), ..passage }).collect();
        Ok(ImportedAgent { record, messages, passages })
    }
}
