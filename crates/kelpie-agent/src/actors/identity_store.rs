//! The identity store: one actor holding every identity (Letta's
//! `/v1/identities`: a user or organisation of the client's application,
//! known by its `identifier_key`) with the agents and standalone blocks it
//! is linked to, so each change to an identity is one transaction. An
//! agent also keeps the ids of its identities in its own record (to show
//! them without reading this store); the service writes the store first
//! and then each agent.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The store's own actor id (namespace, id).
pub const IDENTITY_STORE_ACTOR: (&str, &str) = ("identity-store", "all");
/// Most identities a server holds.
pub const IDENTITIES_COUNT_MAX: usize = 10_000;
/// Most properties one identity holds.
pub const IDENTITY_PROPERTIES_COUNT_MAX: usize = 64;
/// Most agents, and most blocks, one identity is linked to.
pub const IDENTITY_LINKS_COUNT_MAX: usize = 10_000;
/// Longest name, identifier key or property key, in bytes.
pub const IDENTITY_TEXT_BYTES_MAX: usize = 256;
/// Letta's `IdentityType`.
pub const IDENTITY_TYPES: [&str; 3] = ["org", "user", "other"];
/// Letta's `IdentityPropertyType`.
pub const IDENTITY_PROPERTY_TYPES: [&str; 4] = ["string", "number", "boolean", "json"];

/// One property: a key, a value and Letta's type of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityProperty {
    pub key: String,
    pub value: Value,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub id: String,
    pub identifier_key: String,
    pub name: String,
    pub identity_type: String,
    pub project_id: Option<String>,
    /// Linked agents and standalone blocks, in link order, without repeats.
    pub agent_ids: Vec<String>,
    pub block_ids: Vec<String>,
    pub properties: Vec<IdentityProperty>,
}

impl IdentityRecord {
    /// Checks what a client may set; the reason when it is refused.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (what, text) in [("identifier_key", &self.identifier_key), ("name", &self.name)] {
            if text.is_empty() || text.len() > IDENTITY_TEXT_BYTES_MAX {
                return Err(format!(
                    "{what} must be 1..={IDENTITY_TEXT_BYTES_MAX} bytes (IDENTITY_TEXT_BYTES_MAX)"
                ));
            }
        }
        if !IDENTITY_TYPES.contains(&self.identity_type.as_str()) {
            return Err(format!("identity_type {:?} is none of org, user, other", self.identity_type));
        }
        if self.properties.len() > IDENTITY_PROPERTIES_COUNT_MAX {
            return Err(format!(
                "{} properties, over the limit IDENTITY_PROPERTIES_COUNT_MAX = {IDENTITY_PROPERTIES_COUNT_MAX}",
                self.properties.len()
            ));
        }
        for property in &self.properties {
            if property.key.is_empty() || property.key.len() > IDENTITY_TEXT_BYTES_MAX {
                return Err(format!("a property key must be 1..={IDENTITY_TEXT_BYTES_MAX} bytes"));
            }
            if !IDENTITY_PROPERTY_TYPES.contains(&property.kind.as_str()) {
                return Err(format!(
                    "property type {:?} is none of string, number, boolean, json",
                    property.kind
                ));
            }
        }
        for (what, links) in [("agent_ids", &self.agent_ids), ("block_ids", &self.block_ids)] {
            if links.len() > IDENTITY_LINKS_COUNT_MAX {
                return Err(format!(
                    "{what} holds {}, over IDENTITY_LINKS_COUNT_MAX = {IDENTITY_LINKS_COUNT_MAX}",
                    links.len()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdentityStoreState {
    /// In creation order.
    pub identities: Vec<IdentityRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum IdentityCommand {
    /// Refused when another identity has the identifier key.
    Create(Box<IdentityRecord>),
    /// Replaces the identity with the record's identifier key (keeping its
    /// id), or creates it; answers the identity as it was before too.
    Upsert(Box<IdentityRecord>),
    List,
    Get {
        id: String,
    },
    /// Replaces the identity `record.id` names, all but its id.
    Replace(Box<IdentityRecord>),
    Delete {
        id: String,
    },
    /// Links (`true`) or unlinks an agent (`agent`) or a block.
    Link {
        id: String,
        target: String,
        agent: bool,
        linked: bool,
    },
    /// Forgets `target` (an agent or a block) in every identity.
    Forget {
        target: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum IdentityReply {
    Identity(Box<IdentityRecord>),
    /// The identity now and before (`None` when it is new).
    Upserted {
        now: Box<IdentityRecord>,
        before: Option<Box<IdentityRecord>>,
    },
    Identities(Vec<IdentityRecord>),
    Done,
}

pub struct IdentityStoreActor;

type Ctx<'a> = ActorContext<'a, IdentityStoreState>;

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "identity", id: id.to_string() }
}

fn find<'s>(state: &'s mut IdentityStoreState, id: &str) -> Result<&'s mut IdentityRecord> {
    state.identities.iter_mut().find(|identity| identity.id == id).ok_or_else(|| not_found(id))
}

fn checked(record: &IdentityRecord) -> Result<()> {
    record.check().map_err(|reason| Error::validation("identity", reason))
}

fn key_taken(state: &IdentityStoreState, record: &IdentityRecord) -> Result<()> {
    let taken = state
        .identities
        .iter()
        .any(|other| other.identifier_key == record.identifier_key && other.id != record.id);
    match taken {
        true => Err(Error::validation(
            "identity",
            format!("an identity with identifier_key {:?} exists", record.identifier_key),
        )),
        false => Ok(()),
    }
}

fn create(ctx: &mut Ctx<'_>, record: IdentityRecord) -> Result<IdentityRecord> {
    checked(&record)?;
    key_taken(ctx.state, &record)?;
    if ctx.state.identities.len() >= IDENTITIES_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "identities".into(),
            actual: ctx.state.identities.len() as u64 + 1,
            limit_name: "IDENTITIES_COUNT_MAX",
            limit: IDENTITIES_COUNT_MAX as u64,
        });
    }
    ctx.state.identities.push(record.clone());
    Ok(record)
}

impl Actor for IdentityStoreActor {
    type State = IdentityStoreState;
    type Message = IdentityCommand;
    type Reply = IdentityReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: IdentityCommand) -> Result<IdentityReply> {
        match command {
            IdentityCommand::Create(record) => Ok(IdentityReply::Identity(Box::new(create(ctx, *record)?))),
            IdentityCommand::Upsert(record) => {
                let existing = ctx
                    .state
                    .identities
                    .iter_mut()
                    .find(|other| other.identifier_key == record.identifier_key);
                match existing {
                    Some(identity) => {
                        let before = identity.clone();
                        let now = IdentityRecord { id: before.id.clone(), ..*record };
                        checked(&now)?;
                        *identity = now.clone();
                        Ok(IdentityReply::Upserted { now: Box::new(now), before: Some(Box::new(before)) })
                    }
                    None => {
                        let now = create(ctx, *record)?;
                        Ok(IdentityReply::Upserted { now: Box::new(now), before: None })
                    }
                }
            }
            IdentityCommand::List => Ok(IdentityReply::Identities(ctx.state.identities.clone())),
            IdentityCommand::Get { id } => {
                Ok(IdentityReply::Identity(Box::new(find(ctx.state, &id)?.clone())))
            }
            IdentityCommand::Replace(record) => {
                checked(&record)?;
                key_taken(ctx.state, &record)?;
                let identity = find(ctx.state, &record.id)?;
                *identity = *record;
                Ok(IdentityReply::Identity(Box::new(identity.clone())))
            }
            IdentityCommand::Delete { id } => {
                let identity = find(ctx.state, &id)?.clone();
                ctx.state.identities.retain(|other| other.id != id);
                Ok(IdentityReply::Identity(Box::new(identity)))
            }
            IdentityCommand::Link { id, target, agent, linked } => {
                let identity = find(ctx.state, &id)?;
                let links = if agent { &mut identity.agent_ids } else { &mut identity.block_ids };
                links.retain(|other| *other != target);
                if linked {
                    if links.len() >= IDENTITY_LINKS_COUNT_MAX {
                        return Err(Error::LimitExceeded {
                            what: format!("links of identity {id}"),
                            actual: links.len() as u64 + 1,
                            limit_name: "IDENTITY_LINKS_COUNT_MAX",
                            limit: IDENTITY_LINKS_COUNT_MAX as u64,
                        });
                    }
                    links.push(target);
                }
                Ok(IdentityReply::Identity(Box::new(identity.clone())))
            }
            IdentityCommand::Forget { target } => {
                for identity in ctx.state.identities.iter_mut() {
                    identity.agent_ids.retain(|other| *other != target);
                    identity.block_ids.retain(|other| *other != target);
                }
                Ok(IdentityReply::Done)
            }
        }
    }
}
