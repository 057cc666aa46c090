//! Identities (`/v1/identities`): the users and organisations of a
//! client's application, each known by its `identifier_key`, linked to
//! agents and standalone blocks. The identity store holds each identity
//! and its links; an agent also holds the ids of its identities, written
//! after the store (as shared blocks are), so an agent shows them without
//! reading the store.

use std::sync::Arc;

use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;
use serde_json::{json, Value};

use super::agent_actors::AgentActors;
use super::shared_blocks::SharedBlocks;
use crate::actors::agent::{AgentCommand, AgentPatch};
use crate::actors::identity_store::{
    IdentityCommand, IdentityProperty, IdentityRecord, IdentityReply, IdentityStoreActor,
    IDENTITY_STORE_ACTOR,
};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::ids::new_id;
use crate::page::{json_id, paginate, Page};

/// What a create, upsert or modify sets; `None` keeps (modify) or empties.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct IdentityInput {
    pub identifier_key: Option<String>,
    pub name: Option<String>,
    pub identity_type: Option<String>,
    pub project_id: Option<String>,
    pub agent_ids: Option<Vec<String>>,
    pub block_ids: Option<Vec<String>>,
    pub properties: Option<Vec<IdentityProperty>>,
}

/// `GET /v1/identities/` filters besides the page.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct IdentityFilter {
    pub name: Option<String>,
    pub identifier_key: Option<String>,
    pub identity_type: Option<String>,
    pub project_id: Option<String>,
}

impl IdentityFilter {
    fn accepts(&self, identity: &IdentityRecord) -> bool {
        self.name.as_ref().is_none_or(|name| identity.name.contains(name.as_str()))
            && self.identifier_key.as_ref().is_none_or(|key| identity.identifier_key == *key)
            && self.identity_type.as_ref().is_none_or(|kind| identity.identity_type == *kind)
            && self.project_id.as_ref().is_none_or(|project| identity.project_id.as_ref() == Some(project))
    }
}

/// Letta's `Identity`.
pub fn identity_json(identity: &IdentityRecord) -> Value {
    json!({
        "id": identity.id, "identifier_key": identity.identifier_key, "name": identity.name,
        "identity_type": identity.identity_type, "project_id": identity.project_id,
        "agent_ids": identity.agent_ids, "block_ids": identity.block_ids, "organization_id": null,
        "properties": identity.properties,
    })
}

pub struct Identities {
    store: Runtime<IdentityStoreActor>,
    actors: Arc<AgentActors>,
    blocks: Arc<SharedBlocks>,
    env: Env,
}

impl Identities {
    pub(crate) fn new(
        store: Runtime<IdentityStoreActor>,
        actors: Arc<AgentActors>,
        blocks: Arc<SharedBlocks>,
        env: Env,
    ) -> Self {
        Identities { store, actors, blocks, env }
    }

    async fn command(&self, command: IdentityCommand) -> ServiceResult<IdentityReply> {
        let actor_id = ActorId::new(IDENTITY_STORE_ACTOR.0, IDENTITY_STORE_ACTOR.1)?;
        match self.store.invoke(&actor_id, command).await {
            Ok(reply) => Ok(reply),
            Err(kelpie_core::Error::NotFound { kind: "identity", id }) => {
                Err(ServiceError::IdentityNotFound(id))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn identity(&self, command: IdentityCommand) -> ServiceResult<IdentityRecord> {
        match self.command(command).await? {
            IdentityReply::Identity(identity) => Ok(*identity),
            _ => Err(unexpected("an identity command")),
        }
    }

    async fn all(&self) -> ServiceResult<Vec<IdentityRecord>> {
        match self.command(IdentityCommand::List).await? {
            IdentityReply::Identities(all) => Ok(all),
            _ => Err(unexpected("identity list")),
        }
    }

    /// Every agent and block `ids` names exists (else 404 naming it).
    async fn check_links(&self, agent_ids: &[String], block_ids: &[String]) -> ServiceResult<()> {
        for agent_id in agent_ids {
            self.actors.record(agent_id).await?;
        }
        for block_id in block_ids {
            self.blocks.get(block_id).await?;
        }
        Ok(())
    }

    /// Brings the agents' own lists in line: `before` → `now`.
    async fn sync_agents(&self, identity_id: &str, before: &[String], now: &[String]) -> ServiceResult<()> {
        for (agent_id, linked) in before
            .iter()
            .filter(|id| !now.contains(id))
            .map(|id| (id, false))
            .chain(now.iter().filter(|id| !before.contains(id)).map(|id| (id, true)))
        {
            let patch =
                AgentPatch { identity: Some((identity_id.to_string(), linked)), ..AgentPatch::default() };
            match self.actors.invoke_for_agent(agent_id, AgentCommand::Update(Box::new(patch))).await {
                Ok(_) => {}
                // Deleted since: nothing of it to update.
                Err(ServiceError::AgentNotFound(_)) if !linked => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    fn record_of(&self, input: IdentityInput, id: String) -> ServiceResult<IdentityRecord> {
        let missing = |field: &str| ServiceError::Invalid(format!("{field} is required"));
        Ok(IdentityRecord {
            id,
            identifier_key: input.identifier_key.ok_or_else(|| missing("identifier_key"))?,
            name: input.name.ok_or_else(|| missing("name"))?,
            identity_type: input.identity_type.ok_or_else(|| missing("identity_type"))?,
            project_id: input.project_id,
            agent_ids: dedup(input.agent_ids.unwrap_or_default()),
            block_ids: dedup(input.block_ids.unwrap_or_default()),
            properties: input.properties.unwrap_or_default(),
        })
    }

    /// `POST /v1/identities/`.
    pub async fn create(&self, input: IdentityInput) -> ServiceResult<Value> {
        let record = self.record_of(input, new_id("identity", self.env.rng.as_ref()))?;
        record.check().map_err(ServiceError::Invalid)?;
        self.check_links(&record.agent_ids, &record.block_ids).await?;
        let identity = self.identity(IdentityCommand::Create(Box::new(record))).await?;
        self.sync_agents(&identity.id, &[], &identity.agent_ids).await?;
        Ok(identity_json(&identity))
    }

    /// `PUT /v1/identities/`: the identity with the identifier key,
    /// replaced, or created.
    pub async fn upsert(&self, input: IdentityInput) -> ServiceResult<Value> {
        let record = self.record_of(input, new_id("identity", self.env.rng.as_ref()))?;
        record.check().map_err(ServiceError::Invalid)?;
        self.check_links(&record.agent_ids, &record.block_ids).await?;
        let IdentityReply::Upserted { now, before } =
            self.command(IdentityCommand::Upsert(Box::new(record))).await?
        else {
            return Err(unexpected("identity upsert"));
        };
        let before = before.map(|before| before.agent_ids).unwrap_or_default();
        self.sync_agents(&now.id, &before, &now.agent_ids).await?;
        Ok(identity_json(&now))
    }

    pub async fn get(&self, identity_id: &str) -> ServiceResult<Value> {
        Ok(identity_json(&self.identity(IdentityCommand::Get { id: identity_id.to_string() }).await?))
    }

    /// `GET /v1/identities/`: in creation order, paged by id.
    pub async fn list(&self, filter: &IdentityFilter, page: &Page) -> ServiceResult<Vec<Value>> {
        let matching: Vec<Value> =
            self.all().await?.iter().filter(|identity| filter.accepts(identity)).map(identity_json).collect();
        Ok(paginate(matching, json_id, page))
    }

    pub async fn count(&self) -> ServiceResult<usize> {
        Ok(self.all().await?.len())
    }

    /// `PATCH /v1/identities/{id}`: the fields given replace the identity's.
    pub async fn modify(&self, identity_id: &str, input: IdentityInput) -> ServiceResult<Value> {
        let before = self.identity(IdentityCommand::Get { id: identity_id.to_string() }).await?;
        let now = IdentityRecord {
            id: before.id.clone(),
            identifier_key: input.identifier_key.unwrap_or_else(|| before.identifier_key.clone()),
            name: input.name.unwrap_or_else(|| before.name.clone()),
            identity_type: input.identity_type.unwrap_or_else(|| before.identity_type.clone()),
            project_id: input.project_id.or_else(|| before.project_id.clone()),
            agent_ids: input.agent_ids.map(dedup).unwrap_or_else(|| before.agent_ids.clone()),
            block_ids: input.block_ids.map(dedup).unwrap_or_else(|| before.block_ids.clone()),
            properties: input.properties.unwrap_or_else(|| before.properties.clone()),
        };
        now.check().map_err(ServiceError::Invalid)?;
        self.check_links(&now.agent_ids, &now.block_ids).await?;
        let now = self.identity(IdentityCommand::Replace(Box::new(now))).await?;
        self.sync_agents(&now.id, &before.agent_ids, &now.agent_ids).await?;
        Ok(identity_json(&now))
    }

    /// `PUT /v1/identities/{id}/properties`: replaces the properties.
    pub async fn set_properties(
        &self,
        identity_id: &str,
        properties: Vec<IdentityProperty>,
    ) -> ServiceResult<Value> {
        let input = IdentityInput { properties: Some(properties), ..IdentityInput::default() };
        self.modify(identity_id, input).await
    }

    pub async fn delete(&self, identity_id: &str) -> ServiceResult<()> {
        let gone = self.identity(IdentityCommand::Delete { id: identity_id.to_string() }).await?;
        self.sync_agents(&gone.id, &gone.agent_ids, &[]).await
    }

    /// Links (`true`) or unlinks agent `agent_id` and the identity; the
    /// agent as it shows now.
    pub async fn link_agent(&self, agent_id: &str, identity_id: &str, linked: bool) -> ServiceResult<Value> {
        self.actors.record(agent_id).await?;
        let command = IdentityCommand::Link {
            id: identity_id.to_string(),
            target: agent_id.to_string(),
            agent: true,
            linked,
        };
        self.identity(command).await?;
        let patch = AgentPatch { identity: Some((identity_id.to_string(), linked)), ..AgentPatch::default() };
        let agent = self.actors.invoke_for_agent(agent_id, AgentCommand::Update(Box::new(patch))).await?;
        self.actors.render(&agent).await
    }

    /// Links (`true`) or unlinks standalone block `block_id` and the identity.
    pub async fn link_block(&self, block_id: &str, identity_id: &str, linked: bool) -> ServiceResult<Value> {
        let block = self.blocks.get(block_id).await?;
        let command = IdentityCommand::Link {
            id: identity_id.to_string(),
            target: block_id.to_string(),
            agent: false,
            linked,
        };
        self.identity(command).await?;
        Ok(block)
    }

    /// Forgets a deleted agent or block in every identity.
    pub async fn forget(&self, target: &str) -> ServiceResult<()> {
        self.command(IdentityCommand::Forget { target: target.to_string() }).await.map(drop)
    }

    /// `GET /v1/identities/{id}/agents`: its agents, in link order, paged.
    pub async fn agents(&self, identity_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let identity = self.identity(IdentityCommand::Get { id: identity_id.to_string() }).await?;
        let mut agents = Vec::new();
        for agent_id in paginate(identity.agent_ids, |id| id.as_str(), page) {
            match self.actors.record(&agent_id).await {
                Ok(agent) => agents.push(self.actors.render(&agent).await?),
                Err(ServiceError::AgentNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(agents)
    }

    /// `GET /v1/identities/{id}/blocks`: its standalone blocks, paged.
    pub async fn blocks(&self, identity_id: &str, page: &Page) -> ServiceResult<Vec<Value>> {
        let identity = self.identity(IdentityCommand::Get { id: identity_id.to_string() }).await?;
        let mut blocks = Vec::new();
        for block_id in paginate(identity.block_ids, |id| id.as_str(), page) {
            match self.blocks.get(&block_id).await {
                Ok(block) => blocks.push(block),
                Err(ServiceError::BlockNotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(blocks)
    }

    pub async fn shutdown(&self) {
        self.store.shutdown().await;
    }
}

fn dedup(ids: Vec<String>) -> Vec<String> {
    let mut seen = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    seen
}
