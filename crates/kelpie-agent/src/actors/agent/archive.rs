//! Archival search at scale: each active agent's [`PassageIndex`] (its
//! passages' quantized codes, see `kelpie_memory::index`), held in memory
//! by the agent actor between invocations and rebuilt from the stored codes
//! when it cannot be trusted.
//!
//! Trust is a token: every change to an agent's passages writes a fresh
//! random `passage_token` into its state, and the cached index is updated
//! in place only when it was built for the token the change started from.
//! An invocation that fails (or whose commit fails) leaves the state's old
//! token behind while the index holds the new one, so the next search sees
//! the mismatch and rebuilds: the index never answers for passages the
//! store does not hold, across aborts, restarts and moves between nodes.
//!
//! A search ranks `ARCHIVAL_RERANK_FACTOR × top_k` candidates by their
//! codes, then reads those passages and ranks them again by the exact
//! cosine of their stored embeddings.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use kelpie_core::{ActorId, Result};
use kelpie_memory::{cosine, Code, Passage, PassageIndex, ARCHIVAL_SEARCH_RESULTS_COUNT_MAX};
use kelpie_storage::{KeyRange, ScanOrder};
use serde::{Deserialize, Serialize};

use super::store::{self, Change, Ctx, PassageChanges};
use crate::limits::{
    ARCHIVAL_INDEX_CACHE_BYTES_MAX, ARCHIVAL_RERANK_FACTOR, ARCHIVAL_TAGGED_CANDIDATES_FACTOR,
    STORE_PAGE_COUNT_MAX,
};

/// One agent's index and what it was built for.
struct Cached {
    generation: u64,
    token: u64,
    index: PassageIndex,
}

/// Which passages a search may answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TagFilter {
    pub tags: Vec<String>,
    /// Every tag (else any one).
    pub all: bool,
}

impl TagFilter {
    pub fn matches(&self, passage: &Passage) -> bool {
        match (self.tags.is_empty(), self.all) {
            (true, _) => true,
            (false, true) => self.tags.iter().all(|tag| passage.tags.contains(tag)),
            (false, false) => self.tags.iter().any(|tag| passage.tags.contains(tag)),
        }
    }
}

/// The indexes of the agents active on this node.
#[derive(Default)]
pub struct ArchivalIndexes {
    cached: Mutex<BTreeMap<ActorId, Cached>>,
}

impl PassageChanges for ArchivalIndexes {
    /// Records `change` in the state's token and, when the cached index is
    /// the one the change started from, in the index.
    fn changed(&self, ctx: &mut Ctx<'_>, change: Change<'_>) {
        let before = ctx.state.passage_token;
        let after = ctx.env.rng.next_u64();
        ctx.state.passage_token = after;
        let mut cached = self.cached.lock().expect("index cache lock");
        let Some(entry) = cached.get_mut(ctx.actor_id) else { return };
        if entry.token != before || entry.generation != ctx.state.passage_generation {
            cached.remove(ctx.actor_id);
            return;
        }
        match change {
            Change::Insert { seq, code: Some(code) } => {
                entry.index.insert(seq, code);
            }
            Change::Insert { code: None, .. } => {}
            Change::Remove { seq } => {
                entry.index.remove(seq);
            }
        }
        entry.token = after;
    }

    /// Drops what is cached of agent `actor_id` (its activation ends, or
    /// its passages are gone).
    fn forget(&self, actor_id: &ActorId) {
        self.cached.lock().expect("index cache lock").remove(actor_id);
    }
}

impl ArchivalIndexes {
    /// The `top_k` passages nearest `query` that pass `filter`, best first,
    /// with their cosine similarity. A tag-filtered search ranks among the
    /// `ARCHIVAL_TAGGED_CANDIDATES_FACTOR` times more nearest candidates.
    pub(crate) async fn search(
        &self,
        ctx: &mut Ctx<'_>,
        query: &[f32],
        top_k: usize,
        filter: &TagFilter,
    ) -> Result<Vec<(Passage, f32)>> {
        store::agent(ctx)?;
        let top_k = top_k.min(ARCHIVAL_SEARCH_RESULTS_COUNT_MAX);
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let Some(query_code) = Code::of(query) else {
            // A query without direction ranks nothing above anything.
            return Ok(Vec::new());
        };
        let factor = match filter.tags.is_empty() {
            true => ARCHIVAL_RERANK_FACTOR,
            false => ARCHIVAL_RERANK_FACTOR * ARCHIVAL_TAGGED_CANDIDATES_FACTOR,
        };
        let candidates = self.candidates(ctx, &query_code, top_k.saturating_mul(factor)).await?;
        let mut ranked = Vec::with_capacity(candidates.len());
        for seq in candidates {
            let Some(passage) = store::read_passage(ctx, seq).await? else {
                return Err(kelpie_core::Error::Corruption {
                    location: format!("archival index of {}", ctx.actor_id),
                    reason: format!("passage {seq} is indexed but not stored"),
                });
            };
            if filter.matches(&passage) {
                let score = cosine(&passage.embedding, query);
                ranked.push((seq, passage, score));
            }
        }
        ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k);
        Ok(ranked.into_iter().map(|(_, passage, score)| (passage, score)).collect())
    }

    /// The seqs of the `count` passages whose codes are nearest `query`.
    async fn candidates(&self, ctx: &mut Ctx<'_>, query: &Code, count: usize) -> Result<Vec<u64>> {
        let (generation, token) = (ctx.state.passage_generation, ctx.state.passage_token);
        {
            let cached = self.cached.lock().expect("index cache lock");
            if let Some(entry) = cached.get(ctx.actor_id) {
                if entry.generation == generation && entry.token == token {
                    return Ok(entry.index.search(query, count).into_iter().map(|(seq, _)| seq).collect());
                }
            }
        }
        let index = build(ctx).await?;
        let found = index.search(query, count).into_iter().map(|(seq, _)| seq).collect();
        let mut cached = self.cached.lock().expect("index cache lock");
        // Bounded memory: an index that would pass the cap evicts the others.
        let others: usize =
            cached.iter().filter(|(id, _)| *id != ctx.actor_id).map(|(_, e)| e.index.memory_bytes()).sum();
        if others + index.memory_bytes() > ARCHIVAL_INDEX_CACHE_BYTES_MAX {
            cached.clear();
        }
        cached.insert(ctx.actor_id.clone(), Cached { generation, token, index });
        Ok(found)
    }
}

/// The index of the agent's current passages, from their stored codes;
/// passages stored before codes were kept are quantized from their rows.
async fn build(ctx: &mut Ctx<'_>) -> Result<PassageIndex> {
    let mut index = PassageIndex::new();
    let mut coded = 0u64;
    let mut range = store::code_range(ctx);
    loop {
        let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, STORE_PAGE_COUNT_MAX).await?;
        for (key, value) in &rows {
            coded += 1;
            if let Some(code) = Code::from_bytes(value) {
                index.insert(store::seq_of_key(key)?, &code);
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => {
                range.start = Bound::Excluded(key.clone())
            }
            _ => break,
        }
    }
    let counts = store::ensure_counted(ctx).await?;
    if coded < counts.passages {
        let mut range: KeyRange = store::passage_range(ctx);
        loop {
            let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, STORE_PAGE_COUNT_MAX).await?;
            for (key, value) in &rows {
                let seq = store::seq_of_key(key)?;
                if !index.contains(seq) {
                    let passage: Passage = store::decode(value, "agent passage")?;
                    if let Some(code) = Code::of(&passage.embedding) {
                        index.insert(seq, &code);
                    }
                }
            }
            match rows.last() {
                Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => {
                    range.start = Bound::Excluded(key.clone())
                }
                _ => break,
            }
        }
    }
    Ok(index)
}
