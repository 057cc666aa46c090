//! The archive actor: one per archive (`archive/<archive id>`), holding
//! its passages with their embeddings and search codes, as ordered keys
//! read by range with a limit. The archive's record (name, embedding, the
//! agents it is attached to) lives in the archive store.
//!
//! | key | value |
//! |---|---|
//! | `p/<seq>` | a passage ([`ArchivePassage`]) |
//! | `pi/<passage id>` | the passage's seq |
//! | `q/<seq>` | the passage's search code (`kelpie_memory::Code`; empty when its embedding has no direction) |
//!
//! A passage and its code are written in the same transaction, so the
//! stored codes always match the stored passages. The search index built
//! from the codes is cached in memory between invocations under the
//! state's `passage_token`, drawn afresh at every change: the cache is
//! updated in place only when it was built for the token the change began
//! from, so an invocation that fails (or whose commit fails) leaves the
//! old token stored while the cache holds the new one, and the next search
//! rebuilds from the stored codes. The index never answers for passages
//! the store does not hold, across aborts, restarts and moves.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use kelpie_core::{ActorId, Error, Result};
use kelpie_memory::{cosine, Code, PassageIndex, ARCHIVAL_SEARCH_RESULTS_COUNT_MAX};
use kelpie_runtime::{Actor, ActorContext};
use kelpie_storage::{KeyRange, ScanOrder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::actors::agent::store::{decode, encode};
use crate::actors::agent::TagFilter;
use crate::limits::{
    ARCHIVAL_INDEX_CACHE_BYTES_MAX, ARCHIVAL_RERANK_FACTOR, ARCHIVAL_TAGGED_CANDIDATES_FACTOR,
    RECLAIM_BATCH_KEYS_COUNT, STORE_PAGE_COUNT_MAX,
};

/// Namespace of the archive actors (`archive/<archive id>`).
pub const ARCHIVE_NAMESPACE: &str = "archive";
/// Most passages one archive holds.
pub const ARCHIVE_PASSAGES_COUNT_MAX: u64 = 1_000_000;
/// Most passages one insert writes (one transaction, three keys each).
pub const ARCHIVE_INSERT_PASSAGES_COUNT_MAX: usize = 256;

const _: () = assert!(
    ARCHIVE_INSERT_PASSAGES_COUNT_MAX * 3 < kelpie_core::limits::TRANSACTION_OPS_COUNT_MAX,
    "an insert fits one transaction"
);

/// One passage of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivePassage {
    pub id: String,
    pub text: String,
    /// `None` when the client gave none (Letta answers `null`).
    pub tags: Option<Vec<String>>,
    pub metadata: Value,
    pub embedding: Vec<f32>,
    pub created_ms: u64,
}

impl ArchivePassage {
    /// The passage as the agent's archival memory holds one (for ranking
    /// with the agent's own passages).
    pub fn as_passage(&self) -> kelpie_memory::Passage {
        kelpie_memory::Passage {
            id: self.id.clone(),
            text: self.text.clone(),
            tags: self.tags.clone().unwrap_or_default(),
            created_ms: self.created_ms,
            embedding: self.embedding.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ArchiveState {
    pub next_seq: u64,
    pub passages_count: u64,
    /// Drawn afresh at every change to the passages (see the module docs).
    pub passage_token: u64,
    /// The archive is deleted: nothing is served, its keys are reclaimed.
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArchiveCommand {
    /// Stores the passages, each under a new seq, in one transaction.
    Insert(Vec<ArchivePassage>),
    Delete {
        id: String,
    },
    /// The `top_k` passages nearest `query` that pass `filter`, best first.
    Search {
        query: Vec<f32>,
        top_k: usize,
        filter: TagFilter,
    },
    /// One page of passages after seq-order id `after`, oldest first.
    Page {
        after: Option<String>,
        limit: usize,
    },
    /// How many passages the archive holds (0 once deleted).
    Count,
    /// Marks the archive deleted (nothing is served from now on).
    DeleteAll,
    /// Deletes up to `keys_max` keys of a deleted archive.
    Reclaim {
        keys_max: usize,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ArchiveReply {
    Passages(Vec<ArchivePassage>),
    Scored(Vec<(ArchivePassage, f32)>),
    Reclaimed { done: bool },
    Count(u64),
    Done,
}

/// A cached index of one archive's codes and the token it was built for.
struct CachedIndex {
    token: u64,
    index: PassageIndex,
}

/// The archive actor, with the search indexes of the archives active here.
#[derive(Default)]
pub struct ArchiveActor {
    indexes: Mutex<BTreeMap<ActorId, CachedIndex>>,
}

type Ctx<'a> = ActorContext<'a, ArchiveState>;

fn seq_key(kind: &str, seq: u64) -> Vec<u8> {
    format!("{kind}/{seq:016x}").into_bytes()
}

fn id_key(id: &str) -> Vec<u8> {
    format!("pi/{id}").into_bytes()
}

fn seq_of_key(key: &[u8]) -> Result<u64> {
    let corrupt = || Error::Corruption { location: "archive key".into(), reason: "no seq at its end".into() };
    let hex = key.len().checked_sub(16).map(|start| &key[start..]).ok_or_else(corrupt)?;
    u64::from_str_radix(std::str::from_utf8(hex).map_err(|_| corrupt())?, 16).map_err(|_| corrupt())
}

fn decode_seq(bytes: &[u8]) -> Result<u64> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| Error::Corruption {
        location: "archive passage id".into(),
        reason: "not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(array))
}

/// The passages an archive holding `held` would hold with `adding` more;
/// refused past `ARCHIVE_PASSAGES_COUNT_MAX`.
fn room_for(archive_id: &str, held: u64, adding: usize) -> Result<u64> {
    let total = held.saturating_add(adding as u64);
    if total > ARCHIVE_PASSAGES_COUNT_MAX {
        return Err(Error::LimitExceeded {
            what: format!("passages of archive {archive_id}"),
            actual: total,
            limit_name: "ARCHIVE_PASSAGES_COUNT_MAX",
            limit: ARCHIVE_PASSAGES_COUNT_MAX,
        });
    }
    Ok(total)
}

fn live(ctx: &Ctx<'_>) -> Result<()> {
    match ctx.state.deleted {
        true => Err(Error::NotFound { kind: "archive", id: ctx.actor_id.id().to_string() }),
        false => Ok(()),
    }
}

async fn read_passage(ctx: &mut Ctx<'_>, seq: u64) -> Result<Option<ArchivePassage>> {
    match ctx.kv_get(&seq_key("p", seq)).await? {
        Some(bytes) => Ok(Some(decode(&bytes, "archive passage")?)),
        None => Ok(None),
    }
}

/// A change to the passages, as the cached index sees it.
enum Change {
    Insert(Vec<(u64, Option<Code>)>),
    Remove(u64),
}

impl ArchiveActor {
    /// Records `change` in the state's token and, when the cached index is
    /// the one the change began from, in the index.
    fn changed(&self, ctx: &mut Ctx<'_>, change: Change) {
        let before = ctx.state.passage_token;
        let after = ctx.env.rng.next_u64();
        ctx.state.passage_token = after;
        let mut cached = self.indexes.lock().expect("archive index lock");
        let Some(entry) = cached.get_mut(ctx.actor_id) else { return };
        if entry.token != before {
            cached.remove(ctx.actor_id);
            return;
        }
        match change {
            Change::Insert(codes) => {
                for (seq, code) in codes {
                    if let Some(code) = code {
                        entry.index.insert(seq, &code);
                    }
                }
            }
            Change::Remove(seq) => {
                entry.index.remove(seq);
            }
        }
        entry.token = after;
    }

    async fn insert(&self, ctx: &mut Ctx<'_>, passages: Vec<ArchivePassage>) -> Result<Vec<ArchivePassage>> {
        live(ctx)?;
        if passages.len() > ARCHIVE_INSERT_PASSAGES_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "passages in one insert".into(),
                actual: passages.len() as u64,
                limit_name: "ARCHIVE_INSERT_PASSAGES_COUNT_MAX",
                limit: ARCHIVE_INSERT_PASSAGES_COUNT_MAX as u64,
            });
        }
        let total = room_for(ctx.actor_id.id(), ctx.state.passages_count, passages.len())?;
        let mut codes = Vec::with_capacity(passages.len());
        for passage in &passages {
            assert!(!passage.embedding.is_empty(), "a passage is stored with its embedding");
            let seq = ctx.state.next_seq;
            ctx.state.next_seq += 1;
            let code = Code::of(&passage.embedding);
            ctx.kv_put(&seq_key("p", seq), encode(passage)?)?;
            ctx.kv_put(&id_key(&passage.id), seq.to_be_bytes().to_vec())?;
            ctx.kv_put(&seq_key("q", seq), code.as_ref().map(Code::to_bytes).unwrap_or_default())?;
            codes.push((seq, code));
        }
        ctx.state.passages_count = total;
        self.changed(ctx, Change::Insert(codes));
        Ok(passages)
    }

    async fn delete(&self, ctx: &mut Ctx<'_>, id: &str) -> Result<()> {
        live(ctx)?;
        let Some(bytes) = ctx.kv_get(&id_key(id)).await? else {
            return Err(Error::NotFound { kind: "passage", id: id.to_string() });
        };
        let seq = decode_seq(&bytes)?;
        ctx.kv_delete(&seq_key("p", seq))?;
        ctx.kv_delete(&id_key(id))?;
        ctx.kv_delete(&seq_key("q", seq))?;
        assert!(ctx.state.passages_count > 0, "a stored passage is counted");
        ctx.state.passages_count -= 1;
        self.changed(ctx, Change::Remove(seq));
        Ok(())
    }

    /// The seqs of the `count` passages whose codes are nearest `query`,
    /// from the cached index while its token holds, else from the codes.
    async fn candidates(&self, ctx: &mut Ctx<'_>, query: &Code, count: usize) -> Result<Vec<u64>> {
        let token = ctx.state.passage_token;
        {
            let cached = self.indexes.lock().expect("archive index lock");
            if let Some(entry) = cached.get(ctx.actor_id).filter(|entry| entry.token == token) {
                return Ok(entry.index.search(query, count).into_iter().map(|(seq, _)| seq).collect());
            }
        }
        let mut index = PassageIndex::new();
        let mut range = KeyRange::prefix("q/".to_string());
        loop {
            let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, STORE_PAGE_COUNT_MAX).await?;
            for (key, value) in &rows {
                if let Some(code) = Code::from_bytes(value) {
                    index.insert(seq_of_key(key)?, &code);
                }
            }
            match rows.last() {
                Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => {
                    range.start = Bound::Excluded(key.clone())
                }
                _ => break,
            }
        }
        let found = index.search(query, count).into_iter().map(|(seq, _)| seq).collect();
        let mut cached = self.indexes.lock().expect("archive index lock");
        // Bounded memory: an index that would pass the cap evicts the others.
        let others: usize =
            cached.iter().filter(|(id, _)| *id != ctx.actor_id).map(|(_, e)| e.index.memory_bytes()).sum();
        if others + index.memory_bytes() > ARCHIVAL_INDEX_CACHE_BYTES_MAX {
            cached.clear();
        }
        cached.insert(ctx.actor_id.clone(), CachedIndex { token, index });
        Ok(found)
    }

    async fn search(
        &self,
        ctx: &mut Ctx<'_>,
        query: &[f32],
        top_k: usize,
        filter: &TagFilter,
    ) -> Result<Vec<(ArchivePassage, f32)>> {
        live(ctx)?;
        let top_k = top_k.min(ARCHIVAL_SEARCH_RESULTS_COUNT_MAX);
        let Some(code) = Code::of(query).filter(|_| top_k > 0) else {
            // A query without direction ranks nothing above anything.
            return Ok(Vec::new());
        };
        let factor = match filter.tags.is_empty() {
            true => ARCHIVAL_RERANK_FACTOR,
            false => ARCHIVAL_RERANK_FACTOR * ARCHIVAL_TAGGED_CANDIDATES_FACTOR,
        };
        let mut ranked = Vec::new();
        for seq in self.candidates(ctx, &code, top_k.saturating_mul(factor)).await? {
            let Some(passage) = read_passage(ctx, seq).await? else {
                return Err(Error::Corruption {
                    location: format!("archive index of {}", ctx.actor_id),
                    reason: format!("passage {seq} is indexed but not stored"),
                });
            };
            if filter.matches(&passage.as_passage()) {
                let score = cosine(&passage.embedding, query);
                ranked.push((seq, passage, score));
            }
        }
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k);
        assert!(ranked.len() <= top_k, "a search answers at most top_k");
        Ok(ranked.into_iter().map(|(_, passage, score)| (passage, score)).collect())
    }

    async fn page(
        &self,
        ctx: &mut Ctx<'_>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<ArchivePassage>> {
        live(ctx)?;
        let mut range = KeyRange::prefix("p/".to_string());
        if let Some(id) = after {
            let Some(bytes) = ctx.kv_get(&id_key(&id)).await? else { return Ok(Vec::new()) };
            range.start = Bound::Excluded(seq_key("p", decode_seq(&bytes)?));
        }
        let rows =
            ctx.kv_scan_page(&range, ScanOrder::Ascending, limit.clamp(1, STORE_PAGE_COUNT_MAX)).await?;
        rows.iter().map(|(_, value)| decode(value, "archive passage")).collect()
    }
}

/// Deletes up to `keys_max` keys of a deleted archive; `true` when none is left.
async fn reclaim(ctx: &mut Ctx<'_>, keys_max: usize) -> Result<bool> {
    assert!(ctx.state.deleted, "only a deleted archive is reclaimed");
    let keys_max = keys_max.clamp(1, RECLAIM_BATCH_KEYS_COUNT);
    let rows = ctx.kv_scan_page(&KeyRange::prefix(String::new()), ScanOrder::Ascending, keys_max).await?;
    for (key, _) in &rows {
        ctx.kv_delete(key)?;
    }
    Ok(rows.len() < keys_max)
}

impl Actor for ArchiveActor {
    type State = ArchiveState;
    type Message = ArchiveCommand;
    type Reply = ArchiveReply;

    async fn handle(&self, ctx: &mut Ctx<'_>, command: ArchiveCommand) -> Result<ArchiveReply> {
        match command {
            ArchiveCommand::Insert(passages) => Ok(ArchiveReply::Passages(self.insert(ctx, passages).await?)),
            ArchiveCommand::Delete { id } => {
                self.delete(ctx, &id).await?;
                Ok(ArchiveReply::Done)
            }
            ArchiveCommand::Search { query, top_k, filter } => {
                Ok(ArchiveReply::Scored(self.search(ctx, &query, top_k, &filter).await?))
            }
            ArchiveCommand::Page { after, limit } => {
                Ok(ArchiveReply::Passages(self.page(ctx, after, limit).await?))
            }
            ArchiveCommand::Count => {
                assert!(
                    !ctx.state.deleted || ctx.state.passages_count == 0,
                    "a deleted archive counts nothing"
                );
                Ok(ArchiveReply::Count(ctx.state.passages_count))
            }
            ArchiveCommand::DeleteAll => {
                ctx.state.deleted = true;
                ctx.state.passages_count = 0;
                self.indexes.lock().expect("archive index lock").remove(ctx.actor_id);
                Ok(ArchiveReply::Done)
            }
            ArchiveCommand::Reclaim { keys_max } => {
                if !ctx.state.deleted {
                    // Not deleted (a reclaim raced nothing): nothing to do.
                    return Ok(ArchiveReply::Reclaimed { done: true });
                }
                Ok(ArchiveReply::Reclaimed { done: reclaim(ctx, keys_max).await? })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_holds_at_most_its_limit_of_passages() {
        assert_eq!(room_for("a", 0, 3).unwrap(), 3);
        assert_eq!(room_for("a", ARCHIVE_PASSAGES_COUNT_MAX - 2, 2).unwrap(), ARCHIVE_PASSAGES_COUNT_MAX);
        let over = room_for("a", ARCHIVE_PASSAGES_COUNT_MAX - 2, 3).unwrap_err();
        assert!(
            matches!(over, Error::LimitExceeded { actual, limit_name: "ARCHIVE_PASSAGES_COUNT_MAX", .. } if actual == ARCHIVE_PASSAGES_COUNT_MAX + 1),
            "{over:?}"
        );
        assert!(room_for("a", u64::MAX, 1).is_err(), "no overflow");
    }

    #[test]
    fn keys_hold_their_seq() {
        assert_eq!(seq_of_key(&seq_key("q", 0x1234)).unwrap(), 0x1234);
        assert_eq!(decode_seq(&7u64.to_be_bytes()).unwrap(), 7);
        assert!(seq_of_key(b"q/xyz").is_err());
        assert!(decode_seq(b"short").is_err());
    }
}
