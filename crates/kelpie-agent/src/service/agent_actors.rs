//! The agent actors as every other part of the service reaches them: a
//! reference by agent id (an id that cannot be an agent's is not found, not
//! a bad request), the agent's record, its rendering as Letta's
//! `AgentState` (with the group it manages, read from the group store),
//! and the per-agent turn lock.
//!
//! Message turns of one agent are serialized by that lock, held for the
//! whole turn (the LLM calls happen outside the actor, between the actor
//! invocations that persist each step); turns of different agents run in
//! parallel. Whatever must not interleave with a turn (resetting messages,
//! moving the agent to another node) takes the same lock.

use std::future::Future;
use std::sync::Arc;

use kelpie_core::{ActorId, Result};
use kelpie_runtime::{ActorRef, Runtime};
use kelpie_tools::builtin_tools;
use serde_json::Value;

use super::locks::KeyedLocks;
use super::tools::ToolService;
use crate::actors::agent::{AgentActor, AgentCommand, AgentReply, AGENT_NAMESPACE};
use crate::actors::group_store::{GroupCommand, GroupReply, GroupStoreActor, GROUP_STORE_ACTOR};
use crate::actors::tool_store::ToolRecord;
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::letta::{agent_json, builtin_tool_json, custom_tool_json};
use crate::model::AgentRecord;

pub struct AgentActors {
    runtime: Runtime<AgentActor>,
    tools: Arc<ToolService>,
    /// Read to show the group an agent manages.
    groups: Runtime<GroupStoreActor>,
    turn_locks: KeyedLocks,
}

impl AgentActors {
    pub(crate) fn new(
        runtime: Runtime<AgentActor>,
        tools: Arc<ToolService>,
        groups: Runtime<GroupStoreActor>,
    ) -> Self {
        AgentActors { runtime, tools, groups, turn_locks: KeyedLocks::default() }
    }

    /// `rendered` (agent `agent` as Letta shows it) with the group it
    /// manages in `managed_group` and `multi_agent_group`.
    pub async fn with_group(&self, agent: &AgentRecord, mut rendered: Value) -> ServiceResult<Value> {
        let Some(group_id) = &agent.managed_group else { return Ok(rendered) };
        let actor_id = ActorId::new(GROUP_STORE_ACTOR.0, GROUP_STORE_ACTOR.1)?;
        let group = match self.groups.invoke(&actor_id, GroupCommand::Get { id: group_id.clone() }).await {
            Ok(GroupReply::Group(group)) => crate::letta::group_json(&group),
            // Deleted while the agent's link was being cleared.
            Err(kelpie_core::Error::NotFound { .. }) => Value::Null,
            Ok(_) => return Err(unexpected("group get")),
            Err(err) => return Err(err.into()),
        };
        rendered["managed_group"] = group.clone();
        rendered["multi_agent_group"] = group;
        Ok(rendered)
    }

    /// The actor of `agent_id`; not found for an id no agent can have.
    pub fn agent_ref(&self, agent_id: &str) -> ServiceResult<ActorRef<AgentActor>> {
        if !agent_id.starts_with("agent-") {
            return Err(ServiceError::AgentNotFound(agent_id.to_string()));
        }
        let actor_id = ActorId::new(AGENT_NAMESPACE, agent_id)
            .map_err(|_| ServiceError::AgentNotFound(agent_id.to_string()))?;
        Ok(self.runtime.actor_ref(actor_id))
    }

    /// Sends `command` to the actor of `agent_id`.
    pub async fn invoke(&self, agent_id: &str, command: AgentCommand) -> ServiceResult<AgentReply> {
        Ok(self.agent_ref(agent_id)?.invoke(command).await?)
    }

    /// Sends `command` and expects the agent back.
    pub async fn invoke_for_agent(
        &self,
        agent_id: &str,
        command: AgentCommand,
    ) -> ServiceResult<AgentRecord> {
        match self.invoke(agent_id, command).await? {
            AgentReply::Agent(agent) => Ok(*agent),
            _ => Err(unexpected("an agent command")),
        }
    }

    /// The agent's record.
    pub async fn record(&self, agent_id: &str) -> ServiceResult<AgentRecord> {
        self.invoke_for_agent(agent_id, AgentCommand::Get).await
    }

    /// The agent as Letta shows it; `custom` are the server's custom tools
    /// (an attached tool deleted since is not shown).
    pub fn render_agent(&self, agent: &AgentRecord, custom: &[ToolRecord]) -> Value {
        let builtins = builtin_tools();
        let tools = agent
            .tool_ids
            .iter()
            .filter_map(|id| match builtins.iter().find(|tool| tool.id == id) {
                Some(builtin) => Some(builtin_tool_json(builtin)),
                None => custom.iter().find(|tool| &tool.id == id).map(custom_tool_json),
            })
            .collect();
        agent_json(agent, tools)
    }

    /// [`Self::render_agent`] with the custom tools read now.
    pub async fn render(&self, agent: &AgentRecord) -> ServiceResult<Value> {
        let rendered = self.render_agent(agent, &self.tools.custom_tools().await?);
        self.with_group(agent, rendered).await
    }

    /// The lock that serializes the turns of `agent_id`.
    pub fn turn_lock(&self, agent_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.turn_locks.lock_for(agent_id)
    }

    /// The agents active on this node, least recently used first.
    pub fn active(&self) -> Vec<ActorId> {
        self.runtime.active_actors()
    }

    pub fn is_active(&self, actor_id: &ActorId) -> bool {
        self.runtime.is_active(actor_id)
    }

    /// Activates `actor_id` here without a command (claims its placement).
    pub async fn activate(&self, actor_id: &ActorId) -> kelpie_core::Result<()> {
        self.runtime.touch(actor_id).await
    }

    /// Deactivates `actor_id` here under its turn lock, then runs
    /// `complete` (the target's claim) before letting turns proceed: a turn
    /// in progress finishes here first, the next one waits for the move.
    pub async fn hand_off<F>(&self, actor_id: &ActorId, complete: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        assert_eq!(actor_id.namespace(), AGENT_NAMESPACE, "only agents are moved");
        let lock = self.turn_lock(actor_id.id());
        let _turn = lock.lock().await;
        self.runtime.deactivate(actor_id).await;
        complete.await
    }

    pub async fn shutdown(&self) {
        self.runtime.shutdown().await;
    }
}
