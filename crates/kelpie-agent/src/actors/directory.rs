//! The agent directory: the index of every agent (id, name, tags, creation
//! order) for listing and filtering, split over `DIRECTORY_SHARDS_COUNT`
//! shard actors (`agent-directory/shard-<k>`). An agent's entry lives in the
//! shard its id hashes to, so creates of different agents commit to
//! different actors and share group-commit fsyncs instead of queuing on one
//! actor whose every invocation is its own fsync.
//!
//! Creation order across shards comes from a creation stamp given to each
//! entry when it is registered ([`next_stamp`]): strictly increasing within
//! one server, above every stamp already stored, and near wall-clock time.
//! In a shard, entries are extra keys `o/<stamp>` (in stamp order) with an id
//! index `i/<id>`; listing merges the shards by stamp.

use kelpie_core::{Error, Result};
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

/// The namespace of the directory shard actors.
pub const DIRECTORY_NAMESPACE: &str = "agent-directory";
/// Shards of the directory. An id's shard is fixed by this count: changing
/// it would strand stored entries in shards their ids no longer hash to.
pub const DIRECTORY_SHARDS_COUNT: usize = 16;
/// Creation stamps available per wall-clock millisecond before stamps run
/// ahead of the clock (they stay strictly increasing either way).
pub const CREATION_STAMPS_PER_MS_COUNT: u64 = 1_024;
/// Most ids one shard answers for a prefix (a message id names 64 bits of
/// its agent's id: more than one match is already a rare coincidence).
pub const PREFIX_MATCHES_COUNT_MAX: usize = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DirectoryState {
    /// The largest creation stamp this shard has registered.
    pub last_stamp: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
}

/// An entry with the creation stamp that orders it among all shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StampedEntry {
    pub stamp: u64,
    pub entry: DirectoryEntry,
}

#[derive(Serialize, Deserialize)]
pub enum DirectoryCommand {
    /// Lists the entry under `stamp` unless its id is listed already (then
    /// it keeps its first place: a repeated idempotent create).
    Register(StampedEntry),
    Update(DirectoryEntry),
    Unregister {
        id: String,
    },
    /// This shard's entries in stamp order.
    List,
    /// The largest stamp this shard has registered.
    LastStamp,
    /// The ids of this shard starting with `prefix`, at most
    /// [`PREFIX_MATCHES_COUNT_MAX`], in id order.
    FindPrefix {
        prefix: String,
    },
}

#[derive(Serialize, Deserialize)]
pub enum DirectoryReply {
    Entries(Vec<StampedEntry>),
    Ids(Vec<String>),
    LastStamp(u64),
    Done,
}

pub struct DirectoryActor;

type Ctx<'a> = ActorContext<'a, DirectoryState>;

/// The shard actor id (`shard-<k>`) holding the entry of `agent_id`:
/// FNV-1a of the id, so every server and release agrees.
pub fn shard_of(agent_id: &str) -> String {
    let hash = crate::ids::fnv1a_64(agent_id);
    shard_name(usize::try_from(hash % DIRECTORY_SHARDS_COUNT as u64).expect("shard index fits usize"))
}

/// The actor id of shard `index`.
pub fn shard_name(index: usize) -> String {
    assert!(index < DIRECTORY_SHARDS_COUNT, "shard {index} of {DIRECTORY_SHARDS_COUNT}");
    format!("shard-{index}")
}

/// The stamp after `last` at wall-clock `now_ms`: the clock's stamp when it
/// is ahead, else `last + 1`, so stamps never repeat or go back even when the
/// clock does.
pub fn next_stamp(last: u64, now_ms: u64) -> u64 {
    let stamp = now_ms.saturating_mul(CREATION_STAMPS_PER_MS_COUNT).max(last + 1);
    assert!(stamp > last);
    stamp
}

/// Merges the shards' entries (each in stamp order) into one list in
/// creation order. Stamps from one server never repeat; two servers of a
/// cluster may give the same stamp in one millisecond, and such ties are
/// ordered by id, so every listing agrees.
pub fn merge_shards(shards: Vec<Vec<StampedEntry>>) -> Vec<DirectoryEntry> {
    assert!(
        shards.iter().all(|shard| shard.windows(2).all(|pair| pair[0].stamp < pair[1].stamp)),
        "a shard lists its entries in stamp order"
    );
    let mut all: Vec<StampedEntry> = shards.into_iter().flatten().collect();
    all.sort_by(|a, b| (a.stamp, &a.entry.id).cmp(&(b.stamp, &b.entry.id)));
    all.into_iter().map(|stamped| stamped.entry).collect()
}

fn order_key(stamp: u64) -> Vec<u8> {
    format!("o/{stamp:016x}").into_bytes()
}

fn id_key(id: &str) -> Vec<u8> {
    format!("i/{id}").into_bytes()
}

fn encode(entry: &DirectoryEntry) -> Result<Vec<u8>> {
    serde_json::to_vec(entry).map_err(|e| Error::Internal(format!("encode directory entry: {e}")))
}

fn corrupt(what: &str, reason: String) -> Error {
    Error::Corruption { location: format!("agent directory: {what}"), reason }
}

async fn stamp_of(ctx: &mut Ctx<'_>, id: &str) -> Result<Option<u64>> {
    let Some(bytes) = ctx.kv_get(&id_key(id)).await? else { return Ok(None) };
    let bytes: [u8; 8] =
        bytes.as_slice().try_into().map_err(|_| corrupt(&format!("index of {id}"), "not 8 bytes".into()))?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

async fn list(ctx: &mut Ctx<'_>) -> Result<Vec<StampedEntry>> {
    let rows = ctx.kv_scan_prefix(b"o/").await?;
    rows.iter()
        .map(|(key, value)| {
            let hex = std::str::from_utf8(&key[2..]).map_err(|e| corrupt("order key", e.to_string()))?;
            let stamp = u64::from_str_radix(hex, 16).map_err(|e| corrupt("order key", e.to_string()))?;
            let entry = serde_json::from_slice(value).map_err(|e| corrupt("entry", e.to_string()))?;
            Ok(StampedEntry { stamp, entry })
        })
        .collect()
}

impl Actor for DirectoryActor {
    type State = DirectoryState;
    type Message = DirectoryCommand;
    type Reply = DirectoryReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: DirectoryCommand) -> Result<DirectoryReply> {
        match command {
            DirectoryCommand::Register(StampedEntry { stamp, entry }) => {
                assert_eq!(shard_of(&entry.id), ctx.actor_id.id(), "entry registered in its own shard");
                if stamp_of(ctx, &entry.id).await?.is_some() {
                    return Ok(DirectoryReply::Done);
                }
                ctx.state.last_stamp = ctx.state.last_stamp.max(stamp);
                ctx.kv_put(&order_key(stamp), encode(&entry)?)?;
                ctx.kv_put(&id_key(&entry.id), stamp.to_be_bytes().to_vec())?;
            }
            DirectoryCommand::Update(entry) => {
                if let Some(stamp) = stamp_of(ctx, &entry.id).await? {
                    ctx.kv_put(&order_key(stamp), encode(&entry)?)?;
                }
            }
            DirectoryCommand::Unregister { id } => {
                if let Some(stamp) = stamp_of(ctx, &id).await? {
                    ctx.kv_delete(&order_key(stamp))?;
                    ctx.kv_delete(&id_key(&id))?;
                }
            }
            DirectoryCommand::List => return Ok(DirectoryReply::Entries(list(ctx).await?)),
            DirectoryCommand::LastStamp => return Ok(DirectoryReply::LastStamp(ctx.state.last_stamp)),
            DirectoryCommand::FindPrefix { prefix } => {
                let range = kelpie_storage::KeyRange::prefix(id_key(&prefix));
                let rows = ctx
                    .kv_scan_page(&range, kelpie_storage::ScanOrder::Ascending, PREFIX_MATCHES_COUNT_MAX)
                    .await?;
                let ids = rows
                    .into_iter()
                    .map(|(key, _)| {
                        String::from_utf8(key[2..].to_vec()).map_err(|e| corrupt("id key", e.to_string()))
                    })
                    .collect::<Result<_>>()?;
                return Ok(DirectoryReply::Ids(ids));
            }
        }
        Ok(DirectoryReply::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(stamp: u64, id: &str) -> StampedEntry {
        StampedEntry { stamp, entry: DirectoryEntry { id: id.into(), name: id.into(), tags: Vec::new() } }
    }

    #[test]
    fn shard_of_is_stable_and_spreads_ids() {
        // Fixed forever: a stored entry must be found in the same shard.
        assert_eq!(
            shard_of("agent-00000000-0000-4000-8000-000000000000"),
            shard_of("agent-00000000-0000-4000-8000-000000000000")
        );
        let mut used = std::collections::BTreeSet::new();
        for index in 0..256 {
            used.insert(shard_of(&format!("agent-{index:08x}-0000-4000-8000-000000000000")));
        }
        assert_eq!(used.len(), DIRECTORY_SHARDS_COUNT);
        assert_eq!(shard_of(""), "shard-5");
    }

    #[test]
    fn stamps_follow_the_clock_and_never_go_back() {
        assert_eq!(next_stamp(0, 10), 10 * CREATION_STAMPS_PER_MS_COUNT);
        assert_eq!(next_stamp(10 * CREATION_STAMPS_PER_MS_COUNT, 10), 10 * CREATION_STAMPS_PER_MS_COUNT + 1);
        // The clock went back: stamps keep increasing.
        assert_eq!(next_stamp(50 * CREATION_STAMPS_PER_MS_COUNT, 10), 50 * CREATION_STAMPS_PER_MS_COUNT + 1);
    }

    #[test]
    fn merging_shards_orders_every_entry_by_stamp() {
        let merged = merge_shards(vec![
            vec![stamped(2, "b"), stamped(5, "e")],
            vec![],
            vec![stamped(1, "a"), stamped(3, "c"), stamped(4, "d")],
        ]);
        let ids: Vec<&str> = merged.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn equal_stamps_from_two_servers_are_ordered_by_id() {
        let merged = merge_shards(vec![vec![stamped(7, "y"), stamped(9, "z")], vec![stamped(7, "x")]]);
        let ids: Vec<&str> = merged.iter().map(|entry| entry.id.as_str()).collect();
        assert_eq!(ids, ["x", "y", "z"]);
    }
}
