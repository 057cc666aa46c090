//! Moving a data dir written before the directory was sharded: its agents
//! were listed by one actor, `agent-directory/all`, whose entries have the
//! shards' own layout (`o/<seq>` → entry, `i/<id>` → seq). At start-up each
//! entry is registered in its shard with its old sequence number as its
//! stamp (far below any clock-based stamp, so old agents stay first and in
//! their order), then removed from the old actor. Both steps are
//! idempotent, so a crash in between, or two nodes of a cluster doing it at
//! once, lists every agent exactly once.

use kelpie_core::ActorId;

use super::directory::{shard_of, DirectoryCommand, DirectoryReply, DIRECTORY_NAMESPACE};
use super::service::{unexpected, AgentService, ServiceResult};

/// The actor id (within [`DIRECTORY_NAMESPACE`]) of the unsharded directory.
pub const LEGACY_DIRECTORY_ID: &str = "all";

impl AgentService {
    /// Moves every entry of the unsharded directory into its shard;
    /// returns how many were moved (0 for a data dir that has none).
    pub async fn migrate_legacy_directory(&self) -> ServiceResult<usize> {
        let legacy = ActorId::new(DIRECTORY_NAMESPACE, LEGACY_DIRECTORY_ID)?;
        let DirectoryReply::Entries(entries) = self.directory.invoke(&legacy, DirectoryCommand::List).await?
        else {
            return Err(unexpected("legacy list"));
        };
        for stamped in &entries {
            let shard = ActorId::new(DIRECTORY_NAMESPACE, shard_of(&stamped.entry.id))?;
            self.directory.invoke(&shard, DirectoryCommand::Register(stamped.clone())).await?;
            let unregister = DirectoryCommand::Unregister { id: stamped.entry.id.clone() };
            self.directory.invoke(&legacy, unregister).await?;
        }
        Ok(entries.len())
    }
}
