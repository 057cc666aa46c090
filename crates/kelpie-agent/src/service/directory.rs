//! The agent listing as the service uses it: register an agent in its shard
//! under a creation stamp, update or remove its entry, and read every entry
//! in creation order (the shards' layout: [`crate::actors::directory`]).
//!
//! Also the move of a data dir written before the directory was sharded: its
//! agents were listed by one actor, `agent-directory/all`, whose entries have
//! the shards' own layout (`o/<seq>` → entry, `i/<id>` → seq). At start-up
//! each entry is registered in its shard with its old sequence number as its
//! stamp (far below any clock-based stamp, so old agents stay first and in
//! their order), then removed from the old actor. Both steps are idempotent,
//! so a crash in between, or two nodes of a cluster doing it at once, lists
//! every agent exactly once.

use kelpie_core::{ActorId, Env};
use kelpie_runtime::Runtime;

use crate::actors::directory::{
    merge_shards, next_stamp, shard_name, shard_of, DirectoryActor, DirectoryCommand, DirectoryEntry,
    DirectoryReply, StampedEntry, DIRECTORY_NAMESPACE, DIRECTORY_SHARDS_COUNT,
};
use crate::error::{unexpected, ServiceResult};

/// The actor id (within [`DIRECTORY_NAMESPACE`]) of the unsharded directory.
pub const LEGACY_DIRECTORY_ID: &str = "all";

pub struct AgentDirectory {
    runtime: Runtime<DirectoryActor>,
    env: Env,
    /// The last creation stamp given out; `None` until read from the shards.
    last_stamp: tokio::sync::Mutex<Option<u64>>,
}

impl AgentDirectory {
    pub(crate) fn new(runtime: Runtime<DirectoryActor>, env: Env) -> Self {
        AgentDirectory { runtime, env, last_stamp: tokio::sync::Mutex::new(None) }
    }

    /// Sends `command` to directory shard `shard`.
    async fn shard(&self, shard: String, command: DirectoryCommand) -> ServiceResult<DirectoryReply> {
        let actor_id = ActorId::new(DIRECTORY_NAMESPACE, shard)?;
        Ok(self.runtime.invoke(&actor_id, command).await?)
    }

    /// Lists `entry` in creation order, after every agent listed before.
    pub async fn register(&self, entry: DirectoryEntry) -> ServiceResult<()> {
        let shard = shard_of(&entry.id);
        let stamp = self.next_stamp().await?;
        self.shard(shard, DirectoryCommand::Register(StampedEntry { stamp, entry })).await?;
        Ok(())
    }

    /// Changes the name or tags an agent is listed with.
    pub async fn update(&self, entry: DirectoryEntry) -> ServiceResult<()> {
        self.shard(shard_of(&entry.id), DirectoryCommand::Update(entry)).await?;
        Ok(())
    }

    /// Stops listing `agent_id`.
    pub async fn unregister(&self, agent_id: &str) -> ServiceResult<()> {
        let command = DirectoryCommand::Unregister { id: agent_id.to_string() };
        self.shard(shard_of(agent_id), command).await?;
        Ok(())
    }

    /// A creation stamp above every stamp given out or stored. The first
    /// call reads each shard's largest stamp, so a restart (or a clock that
    /// went back) never reorders new agents before older ones.
    async fn next_stamp(&self) -> ServiceResult<u64> {
        let mut last = self.last_stamp.lock().await;
        let previous = match *last {
            Some(previous) => previous,
            None => {
                let replies = futures::future::try_join_all(
                    (0..DIRECTORY_SHARDS_COUNT)
                        .map(|index| self.shard(shard_name(index), DirectoryCommand::LastStamp)),
                )
                .await?;
                let mut stored = 0;
                for reply in replies {
                    let DirectoryReply::LastStamp(stamp) = reply else {
                        return Err(unexpected("last stamp"));
                    };
                    stored = stored.max(stamp);
                }
                stored
            }
        };
        let stamp = next_stamp(previous, self.env.clock.wall_ms());
        *last = Some(stamp);
        Ok(stamp)
    }

    /// The listed agents whose ids start with `prefix` (every shard is
    /// asked: an id's shard is a hash of the whole id).
    pub async fn find_prefix(&self, prefix: &str) -> ServiceResult<Vec<String>> {
        let replies = futures::future::try_join_all((0..DIRECTORY_SHARDS_COUNT).map(|index| {
            self.shard(shard_name(index), DirectoryCommand::FindPrefix { prefix: prefix.to_string() })
        }))
        .await?;
        let mut ids = Vec::new();
        for reply in replies {
            let DirectoryReply::Ids(found) = reply else { return Err(unexpected("find prefix")) };
            ids.extend(found);
        }
        Ok(ids)
    }

    /// Every listed agent, in creation order.
    pub async fn entries(&self) -> ServiceResult<Vec<DirectoryEntry>> {
        let replies = futures::future::try_join_all(
            (0..DIRECTORY_SHARDS_COUNT).map(|index| self.shard(shard_name(index), DirectoryCommand::List)),
        )
        .await?;
        let mut shards = Vec::with_capacity(DIRECTORY_SHARDS_COUNT);
        for reply in replies {
            let DirectoryReply::Entries(entries) = reply else { return Err(unexpected("list")) };
            shards.push(entries);
        }
        Ok(merge_shards(shards))
    }

    /// Moves every entry of the unsharded directory into its shard;
    /// returns how many were moved (0 for a data dir that has none).
    pub async fn migrate_legacy(&self) -> ServiceResult<usize> {
        let DirectoryReply::Entries(entries) =
            self.shard(LEGACY_DIRECTORY_ID.to_string(), DirectoryCommand::List).await?
        else {
            return Err(unexpected("legacy list"));
        };
        for stamped in &entries {
            self.shard(shard_of(&stamped.entry.id), DirectoryCommand::Register(stamped.clone())).await?;
            let unregister = DirectoryCommand::Unregister { id: stamped.entry.id.clone() };
            self.shard(LEGACY_DIRECTORY_ID.to_string(), unregister).await?;
        }
        Ok(entries.len())
    }

    pub async fn shutdown(&self) {
        self.runtime.shutdown().await;
    }
}
