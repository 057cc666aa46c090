//! The group store: one actor holding every multi-agent group (Letta's
//! `/v1/groups`): its manager and its settings, its member agents in
//! order, the standalone blocks it shares, the sleeptime counters, and the
//! runs its turns made (so the group's messages are read from its
//! members' runs). Each change to a group is one transaction. A manager
//! agent also keeps the id of the group it manages in its own record (to
//! show `managed_group` and to know after a turn that a sleeptime group
//! follows it); the service writes the store first and then the agent.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

/// The store's own actor id (namespace, id).
pub const GROUP_STORE_ACTOR: (&str, &str) = ("group-store", "all");
/// Most groups a server holds.
pub const GROUPS_COUNT_MAX: usize = 1_000;
/// Most member agents of one group.
pub const GROUP_AGENTS_COUNT_MAX: usize = 64;
/// Most standalone blocks one group shares.
pub const GROUP_BLOCKS_COUNT_MAX: usize = 64;
/// Longest description, in bytes.
pub const GROUP_DESCRIPTION_BYTES_MAX: usize = 4_096;
/// Longest termination token, in bytes.
pub const GROUP_TOKEN_BYTES_MAX: usize = 256;
/// Most member turns one group turn makes (`max_turns`).
pub const GROUP_TURNS_COUNT_MAX: u32 = 64;
/// Most runs a group remembers (the newest; its message list reads them).
pub const GROUP_RUNS_COUNT_MAX: usize = 256;
/// Letta's `ManagerType` values that a group can be created with.
pub const MANAGER_TYPES: [&str; 5] = ["round_robin", "supervisor", "dynamic", "sleeptime", "voice_sleeptime"];

/// One run a group turn made: which member ran it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRun {
    pub agent_id: String,
    pub run_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    pub manager_type: String,
    /// Members in speaking order (a round robin group may repeat one).
    pub agent_ids: Vec<String>,
    pub description: String,
    pub project_id: Option<String>,
    pub shared_block_ids: Vec<String>,
    pub manager_agent_id: Option<String>,
    pub termination_token: Option<String>,
    pub max_turns: Option<u32>,
    pub sleeptime_agent_frequency: Option<i64>,
    /// Letta's counter of the manager's turns: -1 before the first, then
    /// `(n + 1) mod sleeptime_agent_frequency`.
    pub turns_counter: Option<i64>,
    /// The last message of the manager that sleeptime agents were given.
    pub last_processed_message_id: Option<String>,
    pub max_message_buffer_length: Option<i64>,
    pub min_message_buffer_length: Option<i64>,
    pub hidden: Option<bool>,
    pub created_ms: u64,
    /// The runs of the group's turns, oldest first, the newest
    /// `GROUP_RUNS_COUNT_MAX` kept.
    #[serde(default)]
    pub runs: Vec<GroupRun>,
}

impl GroupRecord {
    /// Checks what a client may set; the reason when it is refused.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !MANAGER_TYPES.contains(&self.manager_type.as_str()) {
            return Err(format!(
                "manager_type {:?} is none of {}",
                self.manager_type,
                MANAGER_TYPES.join(", ")
            ));
        }
        if self.description.len() > GROUP_DESCRIPTION_BYTES_MAX {
            return Err(format!(
                "description is {} bytes, over GROUP_DESCRIPTION_BYTES_MAX = {GROUP_DESCRIPTION_BYTES_MAX}",
                self.description.len()
            ));
        }
        for (what, count, limit, name) in [
            ("agent_ids", self.agent_ids.len(), GROUP_AGENTS_COUNT_MAX, "GROUP_AGENTS_COUNT_MAX"),
            (
                "shared_block_ids",
                self.shared_block_ids.len(),
                GROUP_BLOCKS_COUNT_MAX,
                "GROUP_BLOCKS_COUNT_MAX",
            ),
        ] {
            if count > limit {
                return Err(format!("{what} holds {count}, over {name} = {limit}"));
            }
        }
        let needs_manager = self.manager_type != "round_robin";
        if needs_manager && self.manager_agent_id.is_none() {
            return Err(format!("a {} group needs manager_agent_id", self.manager_type));
        }
        if !needs_manager && self.manager_agent_id.is_some() {
            return Err("a round_robin group has no manager agent".into());
        }
        if let Some(manager) = &self.manager_agent_id {
            if self.agent_ids.contains(manager) {
                return Err(format!("the manager agent {manager} cannot also be a member of its group"));
            }
        }
        if self.manager_type == "dynamic" {
            let mut seen: Vec<&String> = Vec::with_capacity(self.agent_ids.len());
            for id in &self.agent_ids {
                if seen.contains(&id) {
                    return Err("Duplicate agent ids found in list".into());
                }
                seen.push(id);
            }
        }
        if let Some(turns) = self.max_turns {
            if turns == 0 || turns > GROUP_TURNS_COUNT_MAX {
                return Err(format!(
                    "max_turns {turns} is outside 1..={GROUP_TURNS_COUNT_MAX} (GROUP_TURNS_COUNT_MAX)"
                ));
            }
        }
        if self.termination_token.as_ref().is_some_and(|token| token.len() > GROUP_TOKEN_BYTES_MAX) {
            return Err(format!(
                "termination_token is over GROUP_TOKEN_BYTES_MAX = {GROUP_TOKEN_BYTES_MAX} bytes"
            ));
        }
        if self.sleeptime_agent_frequency.is_some_and(|frequency| frequency < 0) {
            return Err("sleeptime_agent_frequency must not be negative".into());
        }
        check_buffer_lengths(self.max_message_buffer_length, self.min_message_buffer_length)
    }
}

/// Letta's rule for a voice sleeptime group's buffer lengths: both or
/// neither, each over 4, the maximum over the minimum.
pub fn check_buffer_lengths(max: Option<i64>, min: Option<i64>) -> std::result::Result<(), String> {
    match (max, min) {
        (None, None) => Ok(()),
        (Some(max), Some(min)) if max <= 4 || min <= 4 => Err(format!(
            "Both 'max_message_buffer_length' and 'min_message_buffer_length' must be greater than 4 (got {max}, {min})"
        )),
        (Some(max), Some(min)) if max <= min => {
            Err(format!("'max_message_buffer_length' must be greater than 'min_message_buffer_length' (got {max} <= {min})"))
        }
        (Some(_), Some(_)) => Ok(()),
        _ => Err("Both 'max_message_buffer_length' and 'min_message_buffer_length' must be provided together".into()),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupStoreState {
    /// In creation order.
    pub groups: Vec<GroupRecord>,
}

#[derive(Serialize, Deserialize)]
pub enum GroupCommand {
    /// Refused when the manager agent already manages another group; a
    /// group of that id stored already is answered unchanged.
    Create(Box<GroupRecord>),
    List,
    Get {
        id: String,
    },
    /// Replaces the settings and members of the group `record.id` names;
    /// its counters and runs stay as stored.
    Replace(Box<GroupRecord>),
    Delete {
        id: String,
    },
    /// Counts one turn of a sleeptime group's manager; the counter now.
    BumpTurns {
        id: String,
    },
    /// Sets the last message given to the sleeptime agents; the one before.
    TakeLastProcessed {
        id: String,
        message_id: String,
    },
    /// Remembers a run of the group's turns.
    AddRun {
        id: String,
        run: GroupRun,
    },
    /// Forgets the runs of the group's turns.
    ClearRuns {
        id: String,
    },
    /// Shares (`true`) or stops sharing a standalone block.
    SetBlock {
        id: String,
        block_id: String,
        shared: bool,
    },
    /// Forgets a deleted agent: it leaves every group, and a group it
    /// managed is deleted; the groups deleted.
    ForgetAgent {
        agent_id: String,
    },
    /// Forgets a deleted block in every group.
    ForgetBlock {
        block_id: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum GroupReply {
    Group(Box<GroupRecord>),
    Groups(Vec<GroupRecord>),
    Counter(Option<i64>),
    LastProcessed(Option<String>),
}

pub struct GroupStoreActor;

type Ctx<'a> = ActorContext<'a, GroupStoreState>;

fn not_found(id: &str) -> Error {
    Error::NotFound { kind: "group", id: id.to_string() }
}

fn find<'s>(state: &'s mut GroupStoreState, id: &str) -> Result<&'s mut GroupRecord> {
    state.groups.iter_mut().find(|group| group.id == id).ok_or_else(|| not_found(id))
}

fn checked(record: &GroupRecord) -> Result<()> {
    record.check().map_err(|reason| Error::validation("group", reason))
}

/// The manager of `record` manages no other group.
fn manager_free(state: &GroupStoreState, record: &GroupRecord) -> Result<()> {
    let Some(manager) = &record.manager_agent_id else { return Ok(()) };
    match state
        .groups
        .iter()
        .find(|other| other.manager_agent_id.as_ref() == Some(manager) && other.id != record.id)
    {
        Some(other) => Err(Error::validation(
            "group",
            format!("agent {manager} already manages group {}; an agent manages at most one group", other.id),
        )),
        None => Ok(()),
    }
}

/// Stores a new group; a group of that id stored already is answered as
/// stored (random ids never collide: only a decided import, made again
/// after a crash, creates an id twice).
fn create(ctx: &mut Ctx<'_>, record: GroupRecord) -> Result<GroupRecord> {
    if let Some(stored) = ctx.state.groups.iter().find(|group| group.id == record.id) {
        return Ok(stored.clone());
    }
    checked(&record)?;
    manager_free(ctx.state, &record)?;
    if ctx.state.groups.len() >= GROUPS_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: "groups".into(),
            actual: ctx.state.groups.len() as u64 + 1,
            limit_name: "GROUPS_COUNT_MAX",
            limit: GROUPS_COUNT_MAX as u64,
        });
    }
    assert!(record.runs.is_empty(), "a new group has made no turns");
    ctx.state.groups.push(record.clone());
    Ok(record)
}

fn replace(ctx: &mut Ctx<'_>, record: GroupRecord) -> Result<GroupRecord> {
    checked(&record)?;
    manager_free(ctx.state, &record)?;
    let group = find(ctx.state, &record.id)?;
    assert_eq!(group.manager_type, record.manager_type, "a group's pattern never changes");
    let kept = (group.runs.clone(), group.last_processed_message_id.clone(), group.created_ms);
    let counter = group.turns_counter.or(record.turns_counter);
    *group = GroupRecord {
        runs: kept.0,
        last_processed_message_id: kept.1,
        created_ms: kept.2,
        turns_counter: counter,
        ..record
    };
    Ok(group.clone())
}

fn set_block(ctx: &mut Ctx<'_>, id: &str, block_id: String, shared: bool) -> Result<GroupRecord> {
    let group = find(ctx.state, id)?;
    group.shared_block_ids.retain(|other| *other != block_id);
    if shared {
        if group.shared_block_ids.len() >= GROUP_BLOCKS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: format!("blocks of group {id}"),
                actual: group.shared_block_ids.len() as u64 + 1,
                limit_name: "GROUP_BLOCKS_COUNT_MAX",
                limit: GROUP_BLOCKS_COUNT_MAX as u64,
            });
        }
        group.shared_block_ids.push(block_id);
    }
    Ok(group.clone())
}

fn forget_agent(ctx: &mut Ctx<'_>, agent_id: &str) -> Vec<GroupRecord> {
    let (gone, kept): (Vec<GroupRecord>, Vec<GroupRecord>) = std::mem::take(&mut ctx.state.groups)
        .into_iter()
        .partition(|group| group.manager_agent_id.as_deref() == Some(agent_id));
    ctx.state.groups = kept;
    for group in ctx.state.groups.iter_mut() {
        group.agent_ids.retain(|member| member != agent_id);
        group.runs.retain(|run| run.agent_id != agent_id);
    }
    gone
}

impl Actor for GroupStoreActor {
    type State = GroupStoreState;
    type Message = GroupCommand;
    type Reply = GroupReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: GroupCommand) -> Result<GroupReply> {
        let group = |record: &GroupRecord| GroupReply::Group(Box::new(record.clone()));
        match command {
            GroupCommand::Create(record) => Ok(group(&create(ctx, *record)?)),
            GroupCommand::List => Ok(GroupReply::Groups(ctx.state.groups.clone())),
            GroupCommand::Get { id } => Ok(group(find(ctx.state, &id)?)),
            GroupCommand::Replace(record) => Ok(group(&replace(ctx, *record)?)),
            GroupCommand::Delete { id } => {
                let gone = find(ctx.state, &id)?.clone();
                ctx.state.groups.retain(|other| other.id != id);
                Ok(group(&gone))
            }
            GroupCommand::BumpTurns { id } => {
                let record = find(ctx.state, &id)?;
                let frequency = record.sleeptime_agent_frequency.filter(|frequency| *frequency > 0);
                let Some(frequency) = frequency else { return Ok(GroupReply::Counter(None)) };
                let next = (record.turns_counter.unwrap_or(-1) + 1).rem_euclid(frequency);
                assert!((0..frequency).contains(&next), "the counter stays below the frequency");
                record.turns_counter = Some(next);
                Ok(GroupReply::Counter(Some(next)))
            }
            GroupCommand::TakeLastProcessed { id, message_id } => {
                let record = find(ctx.state, &id)?;
                Ok(GroupReply::LastProcessed(record.last_processed_message_id.replace(message_id)))
            }
            GroupCommand::AddRun { id, run } => {
                let record = find(ctx.state, &id)?;
                record.runs.push(run);
                let excess = record.runs.len().saturating_sub(GROUP_RUNS_COUNT_MAX);
                record.runs.drain(..excess);
                assert!(record.runs.len() <= GROUP_RUNS_COUNT_MAX);
                Ok(group(record))
            }
            GroupCommand::ClearRuns { id } => {
                let record = find(ctx.state, &id)?;
                record.runs.clear();
                Ok(group(record))
            }
            GroupCommand::SetBlock { id, block_id, shared } => {
                Ok(group(&set_block(ctx, &id, block_id, shared)?))
            }
            GroupCommand::ForgetAgent { agent_id } => Ok(GroupReply::Groups(forget_agent(ctx, &agent_id))),
            GroupCommand::ForgetBlock { block_id } => {
                for record in ctx.state.groups.iter_mut() {
                    record.shared_block_ids.retain(|other| *other != block_id);
                }
                Ok(GroupReply::Groups(Vec::new()))
            }
        }
    }
}
