//! The shared block store: one actor holding every standalone block
//! (`/v1/blocks`) and the agents each is attached to, so create, modify,
//! delete, attach and detach are each one transaction.
//!
//! This store holds the block's canonical value. An attached agent holds a
//! copy in its own core memory (so a prompt is built from one actor's state
//! and a step commits memory atomically); the service writes every change
//! made through the API to the store first and then to each attached
//! agent's copy.

use kelpie_core::{Error, Result};
use kelpie_memory::Block;
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

use crate::error::memory_error;
use crate::model::BlockPatch;

/// The store's own actor id (namespace, id).
pub const BLOCK_STORE_ACTOR: (&str, &str) = ("block-store", "all");
/// Most standalone blocks a server holds.
pub const SHARED_BLOCKS_COUNT_MAX: usize = 10_000;

/// A standalone block and the agents holding a copy of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedBlock {
    pub block: Block,
    /// Attached agents, in attach order, without repeats.
    pub agent_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlockStoreState {
    pub blocks: Vec<SharedBlock>,
}

#[derive(Serialize, Deserialize)]
pub enum BlockCommand {
    Create(Box<Block>),
    List,
    Get {
        id: String,
    },
    /// Applies the patch to the canonical block; refused (nothing changed)
    /// when the block's own limits would break.
    Update {
        id: String,
        patch: BlockPatch,
    },
    Delete {
        id: String,
    },
    Link {
        id: String,
        agent_id: String,
    },
    /// Forgets `agent_id` on block `id`, or on every block when `id` is `None`.
    Unlink {
        id: Option<String>,
        agent_id: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum BlockReply {
    Block(Box<SharedBlock>),
    Blocks(Vec<SharedBlock>),
    Done,
}

pub struct BlockStoreActor;

type Ctx<'a> = ActorContext<'a, BlockStoreState>;

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "block", id: id.to_string() }
}

fn find<'s>(state: &'s mut BlockStoreState, id: &str) -> Result<&'s mut SharedBlock> {
    state.blocks.iter_mut().find(|shared| shared.block.id == id).ok_or_else(|| not_found(id))
}

fn create(ctx: &mut Ctx<'_>, block: Block) -> Result<BlockReply> {
    if ctx.state.blocks.len() >= SHARED_BLOCKS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "standalone blocks".into(),
            actual: ctx.state.blocks.len() as u64 + 1,
            limit_name: "SHARED_BLOCKS_COUNT_MAX",
            limit: SHARED_BLOCKS_COUNT_MAX as u64,
        });
    }
    block.check().map_err(memory_error)?;
    let shared = SharedBlock { block, agent_ids: Vec::new() };
    ctx.state.blocks.push(shared.clone());
    Ok(BlockReply::Block(Box::new(shared)))
}

fn update(ctx: &mut Ctx<'_>, id: &str, patch: BlockPatch) -> Result<BlockReply> {
    let shared = find(ctx.state, id)?;
    // Change a copy so a refused edit leaves the stored block as it was.
    let mut block = shared.block.clone();
    block.limit = patch.limit.unwrap_or(block.limit);
    block.value = patch.value.unwrap_or(block.value);
    block.description = patch.description.or(block.description);
    block.read_only = patch.read_only.unwrap_or(block.read_only);
    block.check().map_err(memory_error)?;
    shared.block = block;
    Ok(BlockReply::Block(Box::new(shared.clone())))
}

impl Actor for BlockStoreActor {
    type State = BlockStoreState;
    type Message = BlockCommand;
    type Reply = BlockReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: BlockCommand) -> Result<BlockReply> {
        match command {
            BlockCommand::Create(block) => create(ctx, *block),
            BlockCommand::List => Ok(BlockReply::Blocks(ctx.state.blocks.clone())),
            BlockCommand::Get { id } => Ok(BlockReply::Block(Box::new(find(ctx.state, &id)?.clone()))),
            BlockCommand::Update { id, patch } => update(ctx, &id, patch),
            BlockCommand::Delete { id } => {
                let shared = find(ctx.state, &id)?.clone();
                ctx.state.blocks.retain(|other| other.block.id != id);
                Ok(BlockReply::Block(Box::new(shared)))
            }
            BlockCommand::Link { id, agent_id } => {
                let shared = find(ctx.state, &id)?;
                if !shared.agent_ids.contains(&agent_id) {
                    shared.agent_ids.push(agent_id);
                }
                Ok(BlockReply::Block(Box::new(shared.clone())))
            }
            BlockCommand::Unlink { id, agent_id } => {
                for shared in ctx.state.blocks.iter_mut() {
                    if id.as_ref().is_none_or(|id| &shared.block.id == id) {
                        shared.agent_ids.retain(|other| other != &agent_id);
                    }
                }
                Ok(BlockReply::Done)
            }
        }
    }
}
