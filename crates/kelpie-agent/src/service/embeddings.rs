//! `GET /v1/embeddings/total_storage_size`: an estimate of the space the
//! server's stored embeddings take, in a unit the caller names.
//!
//! As in Letta, the estimate counts archival passages: every agent's own
//! and every archive's (Letta stores both as archival passages); the
//! passages of folders' files are not counted (Letta leaves its source
//! passages out too). Each passage counts its embedding's dimension times
//! [`EMBEDDING_DIM_BYTES`] (a stored vector is `f32`s). Letta counts every
//! passage at its padded column width (4096 dimensions); Kelpie stores the
//! vectors at their own dimension, so that is what it counts.
//!
//! The counts are the running counts the agent and archive actors keep
//! (no passage is read), but the agents are asked one by one: at most
//! [`STORAGE_SIZE_AGENTS_COUNT_MAX`] agents are counted; a server with
//! more answers 400 naming the limit rather than a partial sum.

use std::sync::Arc;

use futures::StreamExt;
use kelpie_core::Error;

use crate::actors::agent::{AgentCommand, AgentReply};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::service::agent_actors::AgentActors;
use crate::service::archives::Archives;
use crate::service::directory::AgentDirectory;

/// Bytes one dimension of a stored embedding takes (an `f32`).
pub const EMBEDDING_DIM_BYTES: u64 = 4;
/// Most agents one estimate asks for their counts.
pub const STORAGE_SIZE_AGENTS_COUNT_MAX: usize = 10_000;
/// Agents asked at once.
pub const STORAGE_SIZE_CONCURRENT_AGENTS_COUNT: usize = 8;
/// The units Letta takes, with their bytes (powers of 1024).
pub const STORAGE_UNITS: [(&str, u64); 5] =
    [("B", 1), ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("TB", 1 << 40)];
/// The unit when the caller names none.
pub const STORAGE_UNIT_DEFAULT: &str = "GB";

/// The bytes of unit `name`; the reason when it is not one of [`STORAGE_UNITS`].
pub fn unit_bytes(name: &str) -> Result<u64, String> {
    STORAGE_UNITS.iter().find(|(unit, _)| *unit == name).map(|(_, bytes)| *bytes).ok_or_else(|| {
        let names: Vec<&str> = STORAGE_UNITS.iter().map(|(unit, _)| *unit).collect();
        format!("storage unit {name:?} is not one of {}", names.join(", "))
    })
}

pub struct EmbeddingStorage {
    directory: Arc<AgentDirectory>,
    actors: Arc<AgentActors>,
    archives: Arc<Archives>,
}

impl EmbeddingStorage {
    pub(crate) fn new(
        directory: Arc<AgentDirectory>,
        actors: Arc<AgentActors>,
        archives: Arc<Archives>,
    ) -> Self {
        EmbeddingStorage { directory, actors, archives }
    }

    /// The estimated size of every stored embedding, in `unit`.
    pub async fn total_size(&self, unit: &str) -> ServiceResult<f64> {
        let unit_bytes = unit_bytes(unit).map_err(ServiceError::Refused)?;
        let bytes = self.agents_bytes().await? + self.archives_bytes().await?;
        Ok(bytes as f64 / unit_bytes as f64)
    }

    /// The bytes of every agent's own archival embeddings.
    async fn agents_bytes(&self) -> ServiceResult<u64> {
        let entries = self.directory.entries().await?;
        check_agents_count(entries.len())?;
        let mut sizes = futures::stream::iter(entries)
            .map(|entry| async move { self.agent_bytes(&entry.id).await })
            .buffer_unordered(STORAGE_SIZE_CONCURRENT_AGENTS_COUNT);
        let mut total: u64 = 0;
        while let Some(bytes) = sizes.next().await {
            total = total.saturating_add(bytes?);
        }
        Ok(total)
    }

    /// One agent's bytes; 0 for an agent deleted since it was listed.
    async fn agent_bytes(&self, agent_id: &str) -> ServiceResult<u64> {
        let record = match self.actors.record(agent_id).await {
            Ok(record) => record,
            Err(ServiceError::AgentNotFound(_)) => return Ok(0),
            Err(error) => return Err(error),
        };
        let counts = match self.actors.invoke(agent_id, AgentCommand::Counts).await {
            Ok(AgentReply::Counts(counts)) => counts,
            Ok(_) => return Err(unexpected("agent counts")),
            Err(ServiceError::AgentNotFound(_)) => return Ok(0),
            Err(error) => return Err(error),
        };
        Ok(passages_bytes(counts.passages, record.embedding.dim))
    }

    /// The bytes of every archive's embeddings.
    async fn archives_bytes(&self) -> ServiceResult<u64> {
        let counted = self.archives.passage_counts().await?;
        Ok(counted.iter().map(|(archive, count)| passages_bytes(*count, archive.embedding.dim)).sum())
    }
}

/// Refuses an estimate over more than [`STORAGE_SIZE_AGENTS_COUNT_MAX`] agents.
fn check_agents_count(count: usize) -> ServiceResult<()> {
    if count > STORAGE_SIZE_AGENTS_COUNT_MAX {
        return Err(ServiceError::Core(Error::LimitExceeded {
            what: "agents counted for an embeddings size estimate".into(),
            actual: count as u64,
            limit_name: "STORAGE_SIZE_AGENTS_COUNT_MAX",
            limit: STORAGE_SIZE_AGENTS_COUNT_MAX as u64,
        }));
    }
    Ok(())
}

fn passages_bytes(count: u64, dim: u64) -> u64 {
    assert!(dim > 0 || count == 0, "stored passages have embeddings of some dimension");
    count.saturating_mul(dim).saturating_mul(EMBEDDING_DIM_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_letta_powers_of_1024_and_others_are_refused() {
        assert_eq!(unit_bytes("B"), Ok(1));
        assert_eq!(unit_bytes("KB"), Ok(1024));
        assert_eq!(unit_bytes("GB"), Ok(1024 * 1024 * 1024));
        assert_eq!(unit_bytes("TB"), Ok(1u64 << 40));
        assert_eq!(unit_bytes(STORAGE_UNIT_DEFAULT), Ok(1 << 30));
        let refused = unit_bytes("gb").unwrap_err();
        assert!(refused.contains("\"gb\"") && refused.contains("B, KB, MB, GB, TB"), "{refused}");
        assert_eq!(passages_bytes(3, 1536), 3 * 1536 * 4);
    }

    #[test]
    fn an_estimate_over_more_agents_than_the_limit_is_refused_naming_it() {
        assert!(check_agents_count(STORAGE_SIZE_AGENTS_COUNT_MAX).is_ok());
        let refused = check_agents_count(STORAGE_SIZE_AGENTS_COUNT_MAX + 1).unwrap_err().to_string();
        assert!(refused.contains("STORAGE_SIZE_AGENTS_COUNT_MAX"), "{refused}");
    }
}
