//! The folder store: one actor holding every folder's record (Letta's
//! folders, also called sources: name, description, instructions, the
//! embedding its files are indexed with), the agents each is attached to,
//! and which folders have work left (files to process, keys to reclaim),
//! so a restarted server finds that work without reading every folder.
//! A folder's files live in its own actor (`actors::folder`).

use std::collections::BTreeMap;

use kelpie_core::{Error, Result};
use kelpie_llm::EmbeddingSettings;
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store's own actor id (namespace, id).
pub const FOLDER_STORE_ACTOR: (&str, &str) = ("folder-store", "all");
/// Most folders a server holds (every change to one rewrites the store's
/// state, which holds them all).
pub const FOLDERS_COUNT_MAX: usize = 1_000;
/// Most agents one folder is attached to.
pub const FOLDER_AGENTS_COUNT_MAX: usize = 1_000;
/// Longest folder name, in bytes.
pub const FOLDER_NAME_BYTES_MAX: usize = 256;
/// Longest description or instructions, in bytes.
pub const FOLDER_TEXT_BYTES_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderRecord {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub instructions: Option<String>,
    pub metadata: Option<Value>,
    pub embedding: EmbeddingSettings,
    /// Attached agents, in attach order, without repeats.
    pub agent_ids: Vec<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl FolderRecord {
    /// Checks what a client may set; the reason when it is refused.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > FOLDER_NAME_BYTES_MAX {
            return Err(format!("name must be 1..={FOLDER_NAME_BYTES_MAX} bytes (FOLDER_NAME_BYTES_MAX)"));
        }
        if self.name.contains('/') {
            return Err(format!("name {:?} holds a '/', which file paths use", self.name));
        }
        for (what, text) in [("description", &self.description), ("instructions", &self.instructions)] {
            if text.as_ref().is_some_and(|text| text.len() > FOLDER_TEXT_BYTES_MAX) {
                return Err(format!("{what} is over FOLDER_TEXT_BYTES_MAX = {FOLDER_TEXT_BYTES_MAX} bytes"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FolderStoreState {
    /// In creation order.
    pub folders: Vec<FolderRecord>,
    /// Folders with work left (processing or reclaiming), deleted ones too,
    /// each with a generation that every `MarkBusy` advances, so a worker
    /// clears only the mark it saw (a file begun since keeps it busy).
    pub busy: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FolderStoreCommand {
    /// Answers `NameTaken` when another folder has the name.
    Create(Box<FolderRecord>),
    List,
    Get {
        id: String,
    },
    /// Replaces the folder `record.id` names, all but its id and links.
    Replace(Box<FolderRecord>),
    /// Forgets the folder; it stays busy until its actor is reclaimed.
    Delete {
        id: String,
    },
    Attach {
        id: String,
        agent_id: String,
        attached: bool,
    },
    /// Forgets `agent_id` in every folder.
    ForgetAgent {
        agent_id: String,
    },
    /// Marks the folder busy (a new generation of the mark).
    MarkBusy {
        id: String,
    },
    /// Clears the mark if it is still of `generation`.
    ClearBusy {
        id: String,
        generation: u64,
    },
    Busy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FolderStoreReply {
    Folder(Box<FolderRecord>),
    Folders(Vec<FolderRecord>),
    /// The busy folders with the generation of their mark.
    Busy(Vec<(String, u64)>),
    /// Another folder has this name; nothing changed.
    NameTaken(String),
    Done,
}

pub struct FolderStoreActor;

type Ctx<'a> = ActorContext<'a, FolderStoreState>;

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "folder", id: id.to_string() }
}

fn find<'s>(state: &'s mut FolderStoreState, id: &str) -> Result<&'s mut FolderRecord> {
    state.folders.iter_mut().find(|folder| folder.id == id).ok_or_else(|| not_found(id))
}

/// Whether another folder has `record`'s name.
fn name_taken(state: &FolderStoreState, record: &FolderRecord) -> bool {
    state.folders.iter().any(|other| other.name == record.name && other.id != record.id)
}

fn checked(record: &FolderRecord) -> Result<()> {
    record.check().map_err(|reason| Error::validation("folder", reason))
}

impl Actor for FolderStoreActor {
    type State = FolderStoreState;
    type Message = FolderStoreCommand;
    type Reply = FolderStoreReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: FolderStoreCommand) -> Result<FolderStoreReply> {
        match command {
            FolderStoreCommand::Create(record) => {
                checked(&record)?;
                if name_taken(ctx.state, &record) {
                    return Ok(FolderStoreReply::NameTaken(record.name));
                }
                if ctx.state.folders.len() >= FOLDERS_COUNT_MAX {
                    return Err(Error::LimitExceeded {
                        what: "folders".into(),
                        actual: ctx.state.folders.len() as u64 + 1,
                        limit_name: "FOLDERS_COUNT_MAX",
                        limit: FOLDERS_COUNT_MAX as u64,
                    });
                }
                ctx.state.folders.push((*record).clone());
                Ok(FolderStoreReply::Folder(record))
            }
            FolderStoreCommand::List => Ok(FolderStoreReply::Folders(ctx.state.folders.clone())),
            FolderStoreCommand::Get { id } => {
                Ok(FolderStoreReply::Folder(Box::new(find(ctx.state, &id)?.clone())))
            }
            FolderStoreCommand::Replace(record) => {
                checked(&record)?;
                if name_taken(ctx.state, &record) {
                    return Ok(FolderStoreReply::NameTaken(record.name));
                }
                let folder = find(ctx.state, &record.id)?;
                let agent_ids = std::mem::take(&mut folder.agent_ids);
                *folder = FolderRecord { agent_ids, ..*record };
                Ok(FolderStoreReply::Folder(Box::new(folder.clone())))
            }
            FolderStoreCommand::Delete { id } => {
                let folder = find(ctx.state, &id)?.clone();
                ctx.state.folders.retain(|other| other.id != id);
                *ctx.state.busy.entry(id).or_insert(0) += 1;
                Ok(FolderStoreReply::Folder(Box::new(folder)))
            }
            FolderStoreCommand::Attach { id, agent_id, attached } => {
                let folder = find(ctx.state, &id)?;
                folder.agent_ids.retain(|other| *other != agent_id);
                if attached {
                    if folder.agent_ids.len() >= FOLDER_AGENTS_COUNT_MAX {
                        return Err(Error::LimitExceeded {
                            what: format!("agents of folder {id}"),
                            actual: folder.agent_ids.len() as u64 + 1,
                            limit_name: "FOLDER_AGENTS_COUNT_MAX",
                            limit: FOLDER_AGENTS_COUNT_MAX as u64,
                        });
                    }
                    folder.agent_ids.push(agent_id);
                }
                Ok(FolderStoreReply::Folder(Box::new(folder.clone())))
            }
            FolderStoreCommand::ForgetAgent { agent_id } => {
                for folder in ctx.state.folders.iter_mut() {
                    folder.agent_ids.retain(|other| *other != agent_id);
                }
                Ok(FolderStoreReply::Done)
            }
            FolderStoreCommand::MarkBusy { id } => {
                *ctx.state.busy.entry(id).or_insert(0) += 1;
                Ok(FolderStoreReply::Done)
            }
            FolderStoreCommand::ClearBusy { id, generation } => {
                if ctx.state.busy.get(&id) == Some(&generation) {
                    ctx.state.busy.remove(&id);
                }
                Ok(FolderStoreReply::Done)
            }
            FolderStoreCommand::Busy => {
                Ok(FolderStoreReply::Busy(ctx.state.busy.iter().map(|(id, g)| (id.clone(), *g)).collect()))
            }
        }
    }
}
