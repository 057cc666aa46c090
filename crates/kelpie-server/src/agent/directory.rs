//! The agent directory: one actor holding the index of every agent (id,
//! name, tags, creation order) for listing and filtering. Entries are extra
//! keys `o/<seq>` (in creation order) with an id index `i/<id>`.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

/// The directory's own actor id (namespace, id).
pub const DIRECTORY_ACTOR: (&str, &str) = ("agent-directory", "all");

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DirectoryState {
    pub next_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub enum DirectoryCommand {
    Register(DirectoryEntry),
    Update(DirectoryEntry),
    Unregister {
        id: String,
    },
    /// Every entry in creation order.
    List,
}

#[derive(Serialize, Deserialize)]
pub enum DirectoryReply {
    Entries(Vec<DirectoryEntry>),
    Done,
}

pub struct DirectoryActor;

type Ctx<'a> = ActorContext<'a, DirectoryState>;

fn order_key(seq: u64) -> Vec<u8> {
    format!("o/{seq:016x}").into_bytes()
}

fn id_key(id: &str) -> Vec<u8> {
    format!("i/{id}").into_bytes()
}

fn encode(entry: &DirectoryEntry) -> Result<Vec<u8>> {
    serde_json::to_vec(entry).map_err(|e| Error::Internal(format!("encode directory entry: {e}")))
}

async fn seq_of(ctx: &mut Ctx<'_>, id: &str) -> Result<Option<u64>> {
    let Some(bytes) = ctx.kv_get(&id_key(id)).await? else { return Ok(None) };
    let bytes: [u8; 8] = bytes.as_slice().try_into().map_err(|_| Error::Corruption {
        location: format!("directory index of {id}"),
        reason: "not 8 bytes".into(),
    })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

impl Actor for DirectoryActor {
    type State = DirectoryState;
    type Message = DirectoryCommand;
    type Reply = DirectoryReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: DirectoryCommand) -> Result<DirectoryReply> {
        match command {
            DirectoryCommand::Register(entry) => {
                if seq_of(ctx, &entry.id).await?.is_some() {
                    return Ok(DirectoryReply::Done);
                }
                let seq = ctx.state.next_seq;
                ctx.state.next_seq += 1;
                ctx.kv_put(&order_key(seq), encode(&entry)?)?;
                ctx.kv_put(&id_key(&entry.id), seq.to_be_bytes().to_vec())?;
            }
            DirectoryCommand::Update(entry) => {
                if let Some(seq) = seq_of(ctx, &entry.id).await? {
                    ctx.kv_put(&order_key(seq), encode(&entry)?)?;
                }
            }
            DirectoryCommand::Unregister { id } => {
                if let Some(seq) = seq_of(ctx, &id).await? {
                    ctx.kv_delete(&order_key(seq))?;
                    ctx.kv_delete(&id_key(&id))?;
                }
            }
            DirectoryCommand::List => {
                let rows = ctx.kv_scan_prefix(b"o/").await?;
                let entries = rows
                    .iter()
                    .map(|(_, value)| {
                        serde_json::from_slice(value).map_err(|e| Error::Corruption {
                            location: "agent directory".into(),
                            reason: e.to_string(),
                        })
                    })
                    .collect::<Result<Vec<DirectoryEntry>>>()?;
                return Ok(DirectoryReply::Entries(entries));
            }
        }
        Ok(DirectoryReply::Done)
    }
}
