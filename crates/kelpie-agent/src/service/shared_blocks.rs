//! Standalone (shared) blocks: `/v1/blocks` and attaching them to agents.
//!
//! Consistency: the block store actor holds each shared block's canonical
//! version and the agents it is attached to; each attached agent holds a
//! copy in its core memory. Every change through the API (`PATCH
//! /v1/blocks/{id}` or the agent's own block route) is checked and written
//! to the store first, then copied to every attached agent, one actor
//! invocation each, under a per-block lock so that two changes reach every
//! agent in the order the store took them (and an attach never copies a
//! version older than one being propagated). The agent's own tool edits during a turn change only
//! its copy (they commit with the step, inside the agent actor).

use std::sync::Arc;

use kelpie_core::{ActorId, Env, Error};
use kelpie_memory::Block;
use kelpie_runtime::Runtime;
use serde_json::Value;

use super::agent_actors::AgentActors;
use super::locks::KeyedLocks;
use crate::actors::agent::{AgentCommand, AgentReply};
use crate::actors::block_store::{BlockCommand, BlockReply, BlockStoreActor, SharedBlock, BLOCK_STORE_ACTOR};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::letta::block_json;
use crate::model::BlockPatch;
use crate::page::{json_id, paginate, Page};
use crate::requests::{CreateBlock, UpdateBlock};

pub struct SharedBlocks {
    actors: Arc<AgentActors>,
    store: Runtime<BlockStoreActor>,
    env: Env,
    /// Held while a shared block changes in its store and in its agents, so
    /// two changes to one block reach every agent in the store's order.
    locks: KeyedLocks,
}

/// A store error with an unknown block as [`ServiceError::BlockNotFound`].
fn store_error(err: Error) -> ServiceError {
    match err {
        Error::NotFound { kind: "block", id } => ServiceError::BlockNotFound(id),
        other => ServiceError::from(other),
    }
}

fn patch_of(request: UpdateBlock) -> BlockPatch {
    BlockPatch {
        value: request.value,
        limit: request.limit,
        description: request.description,
        read_only: request.read_only,
    }
}

impl SharedBlocks {
    pub(crate) fn new(actors: Arc<AgentActors>, store: Runtime<BlockStoreActor>, env: Env) -> Self {
        SharedBlocks { actors, store, env, locks: KeyedLocks::default() }
    }

    async fn block_store(&self, command: BlockCommand) -> ServiceResult<BlockReply> {
        let actor_id = ActorId::new(BLOCK_STORE_ACTOR.0, BLOCK_STORE_ACTOR.1)?;
        self.store.invoke(&actor_id, command).await.map_err(store_error)
    }

    async fn shared_block(&self, command: BlockCommand) -> ServiceResult<SharedBlock> {
        match self.block_store(command).await? {
            BlockReply::Block(shared) => Ok(*shared),
            _ => Err(unexpected("block store")),
        }
    }

    pub async fn create(&self, request: CreateBlock) -> ServiceResult<Value> {
        let id = new_id("block", self.env.rng.as_ref());
        let mut block = Block::new(id, request.label, request.value, request.limit)?;
        block.description = request.description;
        block.read_only = request.read_only.unwrap_or(false);
        let shared = self.shared_block(BlockCommand::Create(Box::new(block))).await?;
        Ok(block_json(&shared.block))
    }

    pub async fn list(&self, label: Option<&str>, page: &Page) -> ServiceResult<Vec<Value>> {
        let BlockReply::Blocks(all) = self.block_store(BlockCommand::List).await? else {
            return Err(unexpected("block list"));
        };
        let matching: Vec<Value> = all
            .iter()
            .filter(|shared| label.is_none_or(|label| shared.block.label == label))
            .map(|shared| block_json(&shared.block))
            .collect();
        Ok(paginate(matching, json_id, page))
    }

    /// `GET /v1/blocks/count`: how many standalone blocks (with `label`).
    pub async fn count(&self, label: Option<&str>) -> ServiceResult<usize> {
        let BlockReply::Blocks(all) = self.block_store(BlockCommand::List).await? else {
            return Err(unexpected("block list"));
        };
        Ok(all.iter().filter(|shared| label.is_none_or(|label| shared.block.label == label)).count())
    }

    /// `GET /v1/blocks/{id}/agents`: the agents the block is attached to,
    /// in attach order, paged by agent id (an agent deleted meanwhile is
    /// left out).
    pub async fn agents(&self, block_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let shared = self.shared_block(BlockCommand::Get { id: block_id.to_string() }).await?;
        let mut agents = Vec::new();
        for agent_id in paginate(shared.agent_ids.clone(), |id| id.as_str(), page) {
            match self.actors.record(&agent_id).await {
                Ok(agent) => agents.push(self.actors.render(&agent).await?),
                Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(agents)
    }

    pub async fn get(&self, block_id: &str) -> ServiceResult<Value> {
        let shared = self.shared_block(BlockCommand::Get { id: block_id.to_string() }).await?;
        Ok(block_json(&shared.block))
    }

    /// Changes the canonical block (refused, nothing changed, when over a
    /// limit), then every attached agent's copy. An agent that refuses the
    /// copy (its total core memory would go over) keeps its old copy and the
    /// first such refusal is answered after every agent was tried.
    pub async fn update(&self, block_id: &str, request: UpdateBlock) -> ServiceResult<Value> {
        let lock = self.locks.lock_for(block_id);
        let _held = lock.lock().await;
        let command = BlockCommand::Update { id: block_id.to_string(), patch: patch_of(request) };
        let shared = self.shared_block(command).await?;
        let mut first_refusal = None;
        for agent_id in &shared.agent_ids {
            let command = AgentCommand::SyncBlock(Box::new(shared.block.clone()));
            match self.actors.agent_ref(agent_id)?.invoke(command).await.map_err(ServiceError::from) {
                Ok(_) | Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => {
                    first_refusal.get_or_insert(err);
                }
            }
        }
        match first_refusal {
            Some(err) => Err(err),
            None => Ok(block_json(&shared.block)),
        }
    }

    /// Deletes the block from the store, then from every attached agent.
    pub async fn delete(&self, block_id: &str) -> ServiceResult<Value> {
        let lock = self.locks.lock_for(block_id);
        let _held = lock.lock().await;
        let shared = self.shared_block(BlockCommand::Delete { id: block_id.to_string() }).await?;
        for agent_id in &shared.agent_ids {
            let command = AgentCommand::DetachBlock { id: block_id.to_string() };
            match self.actors.agent_ref(agent_id)?.invoke(command).await.map_err(ServiceError::from) {
                Ok(_)
                | Err(ServiceError::AgentNotFound(_))
                | Err(ServiceError::Core(Error::NotFound { .. })) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(serde_json::json!({"message": format!("Block id={block_id} successfully deleted")}))
    }

    /// Links the block to the agent in the store, then puts a copy in the
    /// agent's core memory (the link is undone if the agent refuses it).
    /// Attaching a block the agent already holds changes nothing.
    pub async fn attach(&self, agent_id: &str, block_id: &str) -> ServiceResult<Value> {
        let agent = self.actors.record(agent_id).await?;
        if agent.memory.label_of(block_id).is_some() {
            return self.actors.render(&agent).await;
        }
        let lock = self.locks.lock_for(block_id);
        let _held = lock.lock().await;
        let link = BlockCommand::Link { id: block_id.to_string(), agent_id: agent_id.to_string() };
        let shared = self.shared_block(link).await?;
        let attach = AgentCommand::AttachBlock(Box::new(shared.block));
        match self.actors.agent_ref(agent_id)?.invoke(attach).await {
            Ok(AgentReply::Agent(agent)) => self.actors.render(&agent).await,
            Ok(_) => Err(unexpected("attach block")),
            Err(err) => {
                let unlink =
                    BlockCommand::Unlink { id: Some(block_id.to_string()), agent_id: agent_id.to_string() };
                self.block_store(unlink).await?;
                Err(ServiceError::from(err))
            }
        }
    }

    /// Makes block `block` of agent `agent_id`'s own core memory a shared
    /// block under its id, linked to that agent, so it can be attached to
    /// others (a sleeptime agent shares its main agent's blocks this way).
    /// A block that is shared already is left as it is.
    pub(crate) async fn share_own(&self, agent_id: &str, block: &Block) -> ServiceResult<()> {
        let lock = self.locks.lock_for(&block.id);
        let _held = lock.lock().await;
        if self.find_shared(&block.id).await?.is_none() {
            self.shared_block(BlockCommand::Create(Box::new(block.clone()))).await?;
        }
        let link = BlockCommand::Link { id: block.id.clone(), agent_id: agent_id.to_string() };
        self.shared_block(link).await?;
        Ok(())
    }

    /// Makes `block` a shared block linked to `holders`, which already hold
    /// their copy of it under its id (an import's agents); a block shared
    /// already is left as it is.
    pub(crate) async fn adopt(&self, block: Block, holders: &[String]) -> ServiceResult<()> {
        let lock = self.locks.lock_for(&block.id);
        let _held = lock.lock().await;
        let id = block.id.clone();
        if self.find_shared(&id).await?.is_none() {
            self.shared_block(BlockCommand::Create(Box::new(block))).await?;
        }
        for agent_id in holders {
            let link = BlockCommand::Link { id: id.clone(), agent_id: agent_id.clone() };
            self.shared_block(link).await?;
        }
        Ok(())
    }

    /// Removes the block from the agent's core memory (a shared block or one
    /// of its own), then forgets the link in the store.
    pub async fn detach(&self, agent_id: &str, block_id: &str) -> ServiceResult<Value> {
        let detach = AgentCommand::DetachBlock { id: block_id.to_string() };
        let agent = match self.actors.agent_ref(agent_id)?.invoke(detach).await.map_err(store_error)? {
            AgentReply::Agent(agent) => agent,
            _ => return Err(unexpected("detach block")),
        };
        let unlink = BlockCommand::Unlink { id: Some(block_id.to_string()), agent_id: agent_id.to_string() };
        self.block_store(unlink).await?;
        self.actors.render(&agent).await
    }

    /// Forgets every link of a deleted agent.
    pub(crate) async fn unlink_agent(&self, agent_id: &str) -> ServiceResult<()> {
        self.block_store(BlockCommand::Unlink { id: None, agent_id: agent_id.to_string() }).await?;
        Ok(())
    }

    /// The store's version of block `block_id` if it is a shared block.
    pub(crate) async fn find_shared(&self, block_id: &str) -> ServiceResult<Option<SharedBlock>> {
        match self.shared_block(BlockCommand::Get { id: block_id.to_string() }).await {
            Ok(shared) => Ok(Some(shared)),
            Err(ServiceError::BlockNotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn shutdown(&self) {
        self.store.shutdown().await;
    }
}
