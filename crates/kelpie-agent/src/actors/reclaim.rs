//! The durable list of agents whose storage may need reclaiming: one actor
//! with a key per agent (`a/<agent id>`), written *before* the work that
//! leaves something to reclaim (a delete, a reset, an import), so a crash
//! at any point leaves an entry behind and the work is resumed after a
//! restart. The agent's own state says what is left; an entry only says
//! "ask it". See `service::reclaim` for the loop that does the work.
//!
//! Beside the entries, the decided imports (`d/<import id>`): an import of
//! several agents, once every one is written, records here in one commit
//! what is to appear (agents, shared blocks, groups) and takes its agents
//! off the list, so from that commit on the import only rolls forward
//! (`service::decided_imports`), whatever stops the server.
//!
//! And the things an import makes visible before its decision (`m/<id>`:
//! a Letta file's folders and MCP servers), each put here before it is
//! made; the decision's commit takes them off with its agents, and one
//! whose lease runs out with no decision is deleted by the reclaimer.

use std::ops::Bound;

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_storage::{KeyRange, ScanOrder};
use serde::{Deserialize, Serialize};

/// The list's own actor id (namespace, id).
pub const RECLAIM_ACTOR: (&str, &str) = ("reclaim", "pending");
/// Most entries one page of the list returns.
pub const RECLAIM_PAGE_COUNT_MAX: usize = 256;
/// Most decided imports one page returns (each lists up to
/// `AGENT_FILE_AGENTS_COUNT_MAX` agents and as many groups).
pub const DECISIONS_PAGE_COUNT_MAX: usize = 16;

/// Why an agent is on the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingKind {
    /// A delete or a reset left ended generations of keys.
    Ended,
    /// An import is writing the agent's history. Until `lease_expires_ms`
    /// (wall clock) it is in progress and left alone; past it, it is taken
    /// as abandoned (its server stopped) and its keys are reclaimed.
    Import { lease_expires_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub agent_id: String,
    pub kind: PendingKind,
}

/// What an import makes, visible, before its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MadeKind {
    /// A folder (a Letta file's source) with its files.
    Folder,
    /// An MCP server record with its tools.
    McpServer,
}

/// A folder or MCP server an import is making (`id`, drawn before it is
/// made). Until `lease_expires_ms` (wall clock) its import may still
/// decide; past it, with no decision, it is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadeEntry {
    pub id: String,
    pub kind: MadeKind,
    pub lease_expires_ms: u64,
}

/// An agent a decided import makes visible, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedAgent {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub tool_ids: Vec<String>,
    pub drop_messages: bool,
}

/// A block the import's agents share: its id (each holder has its copy
/// under it, which the shared block is made from) and its holders; the
/// block itself only when no agent holds it (a group's block its members
/// get when the group is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedBlock {
    pub id: String,
    pub holders: Vec<String>,
    pub unheld: Option<kelpie_memory::Block>,
}

/// A folder an import made before its decision, and the agents it is
/// attached to once they appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedFolder {
    pub id: String,
    pub agent_ids: Vec<String>,
}

/// An MCP server of this server that a decided import names by its name,
/// and the config the file gives it (checked before the decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedMcpConfig {
    pub id: String,
    pub config: crate::actors::tool_store::McpServerConfig,
}

/// What a decided import makes appear, in order: the file's config on the
/// MCP servers of the same name here, its agents, then the blocks they
/// share, then its groups (their ids drawn at the decision, so a group
/// made again after a crash is found, not made twice), then its folders'
/// attachments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportDecision {
    /// `import-<uuid>`.
    pub id: String,
    pub agents: Vec<DecidedAgent>,
    pub shared_blocks: Vec<DecidedBlock>,
    pub groups: Vec<crate::actors::group_store::GroupRecord>,
    /// Absent from decisions recorded before folders were imported.
    #[serde(default)]
    pub folders: Vec<DecidedFolder>,
    /// Absent from decisions recorded before MCP servers' configs rolled
    /// forward with them.
    #[serde(default)]
    pub mcp_configs: Vec<DecidedMcpConfig>,
}

#[derive(Serialize, Deserialize)]
pub enum ReclaimCommand {
    /// Adds or replaces the entry of `entry.agent_id`.
    Put(PendingEntry),
    /// Removes the entry of `agent_id` if it is still `kind` (an import's
    /// entry replaced by a later delete stays).
    Remove { agent_id: String, kind: PendingKind },
    /// Up to `limit` entries after `after` (an agent id), in id order.
    Page { after: Option<String>, limit: usize },
    /// Records `decision` and removes the entries `entries` (the import's
    /// agents, each if still of its kind) and the made entries `made` (its
    /// folders and MCP servers, by id), in one commit.
    Decide {
        decision: Box<ImportDecision>,
        entries: Vec<PendingEntry>,
        #[serde(default)]
        made: Vec<String>,
    },
    /// Up to `limit` decided imports after `after` (an import id), in id order.
    Decisions { after: Option<String>, limit: usize },
    /// Forgets decided import `id` (everything it decided appeared).
    Settle { id: String },
    /// Adds or replaces the made entry of `entry.id`.
    PutMade(MadeEntry),
    /// Removes the made entry of `id`, if any.
    RemoveMade { id: String },
    /// Up to `limit` made entries after `after` (an id), in id order.
    MadePage { after: Option<String>, limit: usize },
}

#[derive(Serialize, Deserialize)]
pub enum ReclaimReply {
    Done,
    Entries(Vec<PendingEntry>),
    Decisions(Vec<ImportDecision>),
    Made(Vec<MadeEntry>),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReclaimState {}

pub struct ReclaimActor;

fn entry_key(agent_id: &str) -> Vec<u8> {
    format!("a/{agent_id}").into_bytes()
}

fn decision_key(import_id: &str) -> Vec<u8> {
    format!("d/{import_id}").into_bytes()
}

fn made_key(id: &str) -> Vec<u8> {
    format!("m/{id}").into_bytes()
}

fn decode(bytes: &[u8]) -> Result<PendingEntry> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corruption { location: "reclaim entry".into(), reason: e.to_string() })
}

fn decode_made(bytes: &[u8]) -> Result<MadeEntry> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corruption { location: "made entry".into(), reason: e.to_string() })
}

impl Actor for ReclaimActor {
    type State = ReclaimState;
    type Message = ReclaimCommand;
    type Reply = ReclaimReply;

    async fn handle(
        &self,
        ctx: &mut ActorContext<'_, ReclaimState>,
        command: ReclaimCommand,
    ) -> Result<ReclaimReply> {
        match command {
            ReclaimCommand::Put(entry) => {
                let bytes = serde_json::to_vec(&entry).map_err(|e| Error::Internal(e.to_string()))?;
                ctx.kv_put(&entry_key(&entry.agent_id), bytes)?;
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::Remove { agent_id, kind } => {
                if let Some(bytes) = ctx.kv_get(&entry_key(&agent_id)).await? {
                    if decode(&bytes)?.kind == kind {
                        ctx.kv_delete(&entry_key(&agent_id))?;
                    }
                }
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::Page { after, limit } => {
                let mut range = KeyRange::prefix(b"a/".to_vec());
                if let Some(after) = after {
                    range.start = Bound::Excluded(entry_key(&after));
                }
                let limit = limit.clamp(1, RECLAIM_PAGE_COUNT_MAX);
                let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, limit).await?;
                let entries = rows.iter().map(|(_, value)| decode(value)).collect::<Result<_>>()?;
                Ok(ReclaimReply::Entries(entries))
            }
            ReclaimCommand::Decide { decision, entries, made } => {
                assert!(decision.id.starts_with("import-"), "a decision is named by its import");
                for entry in entries {
                    if let Some(bytes) = ctx.kv_get(&entry_key(&entry.agent_id)).await? {
                        if decode(&bytes)?.kind == entry.kind {
                            ctx.kv_delete(&entry_key(&entry.agent_id))?;
                        }
                    }
                }
                // Decided: what the import made stays.
                for id in made {
                    ctx.kv_delete(&made_key(&id))?;
                }
                let bytes = serde_json::to_vec(&decision).map_err(|e| Error::Internal(e.to_string()))?;
                ctx.kv_put(&decision_key(&decision.id), bytes)?;
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::Decisions { after, limit } => {
                let mut range = KeyRange::prefix(b"d/".to_vec());
                if let Some(after) = after {
                    range.start = Bound::Excluded(decision_key(&after));
                }
                let limit = limit.clamp(1, DECISIONS_PAGE_COUNT_MAX);
                let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, limit).await?;
                let decisions = rows
                    .iter()
                    .map(|(_, value)| {
                        serde_json::from_slice(value).map_err(|e| Error::Corruption {
                            location: "decided import".into(),
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(ReclaimReply::Decisions(decisions))
            }
            ReclaimCommand::Settle { id } => {
                ctx.kv_delete(&decision_key(&id))?;
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::PutMade(entry) => {
                assert!(!entry.id.is_empty(), "a made entry names what was made");
                let bytes = serde_json::to_vec(&entry).map_err(|e| Error::Internal(e.to_string()))?;
                ctx.kv_put(&made_key(&entry.id), bytes)?;
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::RemoveMade { id } => {
                ctx.kv_delete(&made_key(&id))?;
                Ok(ReclaimReply::Done)
            }
            ReclaimCommand::MadePage { after, limit } => {
                let mut range = KeyRange::prefix(b"m/".to_vec());
                if let Some(after) = after {
                    range.start = Bound::Excluded(made_key(&after));
                }
                let limit = limit.clamp(1, RECLAIM_PAGE_COUNT_MAX);
                let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, limit).await?;
                let entries = rows.iter().map(|(_, value)| decode_made(value)).collect::<Result<_>>()?;
                Ok(ReclaimReply::Made(entries))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_recorded_before_folders_and_mcp_configs_reads_with_none() {
        let old = r#"{"id": "import-1", "agents": [{"id": "agent-1", "name": "ada", "tags": [],
            "tool_ids": ["tool-1"], "drop_messages": false}], "shared_blocks": [], "groups": []}"#;
        let decision: ImportDecision = serde_json::from_str(old).unwrap();
        assert_eq!(decision.id, "import-1");
        assert_eq!(decision.agents[0].tool_ids, vec!["tool-1".to_string()]);
        assert_eq!((decision.folders, decision.mcp_configs), (Vec::new(), Vec::new()));
        let command = r#"{"Decide": {"decision": {"id": "import-1", "agents": [], "shared_blocks": [],
            "groups": []}, "entries": []}}"#;
        match serde_json::from_str(command).unwrap() {
            ReclaimCommand::Decide { decision, entries, made } => {
                assert_eq!(
                    (decision.id.as_str(), entries, made),
                    ("import-1", Vec::new(), Vec::<String>::new())
                )
            }
            _ => panic!("a Decide command"),
        }
    }

    #[test]
    fn made_entries_are_keyed_apart_from_agents_and_decisions() {
        assert_eq!(made_key("source-1"), b"m/source-1".to_vec());
        assert_ne!(made_key("x")[..2], entry_key("x")[..2]);
        assert_ne!(made_key("x")[..2], decision_key("x")[..2]);
        let entry = MadeEntry { id: "mcp_server-1".into(), kind: MadeKind::McpServer, lease_expires_ms: 7 };
        let bytes = serde_json::to_vec(&entry).unwrap();
        assert_eq!(decode_made(&bytes).unwrap(), entry);
    }
}
