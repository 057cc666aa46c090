//! The archive store: one actor holding every archive's record (Letta's
//! `/v1/archives`: a named collection of archival passages with the
//! embedding they are indexed with), the agents each is attached to, and
//! the deleted archives whose passages still await reclaiming. An
//! archive's passages live in its own actor (`actors::archive`).
//!
//! The attachments live here and only here: attaching, detaching and
//! deleting an archive (which detaches it from every agent) are each one
//! transaction of this actor, so no crash leaves an agent searching an
//! archive the store no longer lists, or the reverse.

use kelpie_core::{Error, Result};
use kelpie_llm::EmbeddingSettings;
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store's own actor id (namespace, id).
pub const ARCHIVE_STORE_ACTOR: (&str, &str) = ("archive-store", "all");
/// Most archives a server holds (every change to one rewrites the store's
/// state, which holds them all).
pub const ARCHIVES_COUNT_MAX: usize = 1_000;
/// Most deleted archives awaiting the reclaiming of their passages; a
/// delete past it is refused until the worker catches up.
pub const ARCHIVES_DELETED_COUNT_MAX: usize = 1_000;
/// Most agents one archive is attached to.
pub const ARCHIVE_AGENTS_COUNT_MAX: usize = 1_000;
/// Most archives one agent has attached: an agent's archival search asks
/// each of them, so this bounds the work of one search.
pub const AGENT_ARCHIVES_COUNT_MAX: usize = 8;
/// Longest archive name, in bytes.
pub const ARCHIVE_NAME_BYTES_MAX: usize = 256;
/// Longest description, in bytes.
pub const ARCHIVE_DESCRIPTION_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub metadata: Option<Value>,
    /// What every passage of the archive is embedded with; never changes.
    pub embedding: EmbeddingSettings,
    /// Attached agents, in attach order, without repeats.
    pub agent_ids: Vec<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl ArchiveRecord {
    /// Checks what a client may set; the reason when it is refused.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > ARCHIVE_NAME_BYTES_MAX {
            return Err(format!("name must be 1..={ARCHIVE_NAME_BYTES_MAX} bytes (ARCHIVE_NAME_BYTES_MAX)"));
        }
        if self.description.as_ref().is_some_and(|text| text.len() > ARCHIVE_DESCRIPTION_BYTES_MAX) {
            return Err(format!(
                "description is over ARCHIVE_DESCRIPTION_BYTES_MAX = {ARCHIVE_DESCRIPTION_BYTES_MAX} bytes"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ArchiveStoreState {
    /// In creation order.
    pub archives: Vec<ArchiveRecord>,
    /// Deleted archives whose actors still hold keys, oldest first.
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArchiveStoreCommand {
    Create(Box<ArchiveRecord>),
    List,
    Get {
        id: String,
    },
    /// Sets the name and the description of archive `record.id`.
    Replace(Box<ArchiveRecord>),
    /// Forgets the archive (so every agent is detached from it) and queues
    /// its passages for reclaiming.
    Delete {
        id: String,
    },
    Attach {
        id: String,
        agent_id: String,
        attached: bool,
    },
    /// The archives agent `agent_id` has attached, in creation order.
    OfAgent {
        agent_id: String,
    },
    /// Detaches `agent_id` from every archive (the agent is deleted).
    ForgetAgent {
        agent_id: String,
    },
    /// The deleted archives awaiting reclaiming.
    Deleted,
    /// Archive `id`'s passages are all reclaimed.
    Reclaimed {
        id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArchiveStoreReply {
    Archive(Box<ArchiveRecord>),
    Archives(Vec<ArchiveRecord>),
    Ids(Vec<String>),
    Done,
}

pub struct ArchiveStoreActor;

type Ctx<'a> = ActorContext<'a, ArchiveStoreState>;

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "archive", id: id.to_string() }
}

fn find<'s>(state: &'s mut ArchiveStoreState, id: &str) -> Result<&'s mut ArchiveRecord> {
    state.archives.iter_mut().find(|archive| archive.id == id).ok_or_else(|| not_found(id))
}

fn checked(record: &ArchiveRecord) -> Result<()> {
    record.check().map_err(|reason| Error::validation("archive", reason))
}

fn create(ctx: &mut Ctx<'_>, record: ArchiveRecord) -> Result<ArchiveRecord> {
    checked(&record)?;
    assert!(record.agent_ids.is_empty(), "an archive is created without agents");
    if ctx.state.archives.len() >= ARCHIVES_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "archives".into(),
            actual: ctx.state.archives.len() as u64 + 1,
            limit_name: "ARCHIVES_COUNT_MAX",
            limit: ARCHIVES_COUNT_MAX as u64,
        });
    }
    ctx.state.archives.push(record.clone());
    Ok(record)
}

fn delete(ctx: &mut Ctx<'_>, id: &str) -> Result<ArchiveRecord> {
    let archive = find(ctx.state, id)?.clone();
    if ctx.state.deleted.len() >= ARCHIVES_DELETED_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "deleted archives awaiting reclaiming (try again shortly)".into(),
            actual: ctx.state.deleted.len() as u64 + 1,
            limit_name: "ARCHIVES_DELETED_COUNT_MAX",
            limit: ARCHIVES_DELETED_COUNT_MAX as u64,
        });
    }
    ctx.state.archives.retain(|other| other.id != id);
    ctx.state.deleted.push(id.to_string());
    Ok(archive)
}

fn attach(ctx: &mut Ctx<'_>, id: &str, agent_id: String, attached: bool) -> Result<ArchiveRecord> {
    let held = ctx.state.archives.iter().filter(|a| a.id != id && a.agent_ids.contains(&agent_id)).count();
    let archive = find(ctx.state, id)?;
    if attached && archive.agent_ids.contains(&agent_id) {
        // Attached already: nothing changes (it keeps its place).
        return Ok(archive.clone());
    }
    archive.agent_ids.retain(|other| *other != agent_id);
    if attached {
        if archive.agent_ids.len() >= ARCHIVE_AGENTS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: format!("agents of archive {id}"),
                actual: archive.agent_ids.len() as u64 + 1,
                limit_name: "ARCHIVE_AGENTS_COUNT_MAX",
                limit: ARCHIVE_AGENTS_COUNT_MAX as u64,
            });
        }
        if held >= AGENT_ARCHIVES_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: format!("archives of agent {agent_id}"),
                actual: held as u64 + 1,
                limit_name: "AGENT_ARCHIVES_COUNT_MAX",
                limit: AGENT_ARCHIVES_COUNT_MAX as u64,
            });
        }
        archive.agent_ids.push(agent_id);
    }
    Ok(archive.clone())
}

impl Actor for ArchiveStoreActor {
    type State = ArchiveStoreState;
    type Message = ArchiveStoreCommand;
    type Reply = ArchiveStoreReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: ArchiveStoreCommand) -> Result<ArchiveStoreReply> {
        match command {
            ArchiveStoreCommand::Create(record) => {
                Ok(ArchiveStoreReply::Archive(Box::new(create(ctx, *record)?)))
            }
            ArchiveStoreCommand::List => Ok(ArchiveStoreReply::Archives(ctx.state.archives.clone())),
            ArchiveStoreCommand::Get { id } => {
                Ok(ArchiveStoreReply::Archive(Box::new(find(ctx.state, &id)?.clone())))
            }
            ArchiveStoreCommand::Replace(record) => {
                checked(&record)?;
                let archive = find(ctx.state, &record.id)?;
                archive.name = record.name;
                archive.description = record.description;
                archive.updated_ms = record.updated_ms;
                Ok(ArchiveStoreReply::Archive(Box::new(archive.clone())))
            }
            ArchiveStoreCommand::Delete { id } => Ok(ArchiveStoreReply::Archive(Box::new(delete(ctx, &id)?))),
            ArchiveStoreCommand::Attach { id, agent_id, attached } => {
                Ok(ArchiveStoreReply::Archive(Box::new(attach(ctx, &id, agent_id, attached)?)))
            }
            ArchiveStoreCommand::OfAgent { agent_id } => {
                let held: Vec<ArchiveRecord> =
                    ctx.state.archives.iter().filter(|a| a.agent_ids.contains(&agent_id)).cloned().collect();
                assert!(held.len() <= AGENT_ARCHIVES_COUNT_MAX, "attach keeps an agent's archives bounded");
                Ok(ArchiveStoreReply::Archives(held))
            }
            ArchiveStoreCommand::ForgetAgent { agent_id } => {
                for archive in ctx.state.archives.iter_mut() {
                    archive.agent_ids.retain(|other| *other != agent_id);
                }
                Ok(ArchiveStoreReply::Done)
            }
            ArchiveStoreCommand::Deleted => Ok(ArchiveStoreReply::Ids(ctx.state.deleted.clone())),
            ArchiveStoreCommand::Reclaimed { id } => {
                ctx.state.deleted.retain(|other| *other != id);
                Ok(ArchiveStoreReply::Done)
            }
        }
    }
}
