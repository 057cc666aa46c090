//! The newest messages of each active agent's context window, held in
//! memory by the agent actor between turns so that a turn does not read
//! them from storage again (on PostgreSQL that read was the largest part of
//! a turn's traffic; on any store its cost grew with the window).
//!
//! Trust is a token, as for the archival index (`archive`): every message
//! stored draws a fresh random `message_token` into the agent's state, and
//! the cached window is extended in place only when it was built for the
//! token the change started from. A failed invocation leaves the old token
//! in the state while the cache holds the new one, and another node's
//! writes leave a token this node never saw, so the next read finds the
//! mismatch and reads the window from storage again. A compaction (new
//! `start_seq`) or a reset (new generation) changes the key the cache is
//! checked against, with the same effect.
//!
//! Each history of an agent (its own, and each conversation) has its own
//! cached window; the token is the agent's, so a message stored in one
//! history makes the others read their windows again (correct, if not
//! the cheapest).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Mutex;

use kelpie_core::{ActorId, Result};
use kelpie_storage::{KeyRange, ScanOrder};

use super::store::{self, Ctx, History, MessageChanges};
use crate::context::SharedMessage;
use crate::limits::{STORE_PAGE_COUNT_MAX, WINDOW_CACHED_MESSAGES_COUNT_MAX, WINDOW_CACHE_BYTES_MAX};
use crate::model::{MessageBody, StoredMessage};

/// What a cached window was read or extended for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    generation: u64,
    start_seq: u64,
    token: u64,
}

impl Stamp {
    fn of(ctx: &Ctx<'_>, history: &History) -> Stamp {
        Stamp {
            generation: history.generation(ctx),
            start_seq: history.context(ctx).start_seq,
            token: ctx.state.message_token,
        }
    }
}

/// A cached window: the agent's actor, and the conversation's slot
/// (`None`: the agent's own history).
type WindowKey = (ActorId, Option<u64>);

fn key_of(ctx: &Ctx<'_>, history: &History) -> WindowKey {
    (ctx.actor_id.clone(), history.slot())
}

/// One agent's newest window messages, oldest first (summaries included,
/// as storage holds them), each with its encoded size in bytes.
struct Cached {
    stamp: Stamp,
    messages: VecDeque<(SharedMessage, usize)>,
    bytes: usize,
    used_tick: u64,
}

impl Cached {
    fn push(&mut self, message: StoredMessage, bytes: usize) {
        self.messages.push_back((message.into(), bytes));
        self.bytes += bytes;
        while self.messages.len() > WINDOW_CACHED_MESSAGES_COUNT_MAX {
            let (_, dropped) = self.messages.pop_front().expect("longer than the cap");
            self.bytes -= dropped;
        }
    }

    /// The conversation messages among the newest `count_max`, oldest first.
    fn newest(&self, count_max: usize) -> Vec<SharedMessage> {
        let skip = self.messages.len().saturating_sub(count_max);
        self.messages
            .iter()
            .skip(skip)
            .filter(|(message, _)| !matches!(message.body, MessageBody::Summary { .. }))
            .map(|(message, _)| message.clone())
            .collect()
    }
}

#[derive(Default)]
struct Windows {
    cached: BTreeMap<WindowKey, Cached>,
    bytes: usize,
    tick: u64,
}

impl Windows {
    fn remove(&mut self, key: &WindowKey) {
        if let Some(entry) = self.cached.remove(key) {
            self.bytes -= entry.bytes;
        }
    }

    fn insert(&mut self, key: WindowKey, entry: Cached) {
        self.remove(&key);
        self.bytes += entry.bytes;
        self.cached.insert(key.clone(), entry);
        self.evict_except(&key);
    }

    /// Bounded memory: drops the least recently used windows (never
    /// `keep`'s) until the cache is within `WINDOW_CACHE_BYTES_MAX`.
    fn evict_except(&mut self, keep: &WindowKey) {
        while self.bytes > WINDOW_CACHE_BYTES_MAX {
            let oldest = self
                .cached
                .iter()
                .filter(|(id, _)| *id != keep)
                .min_by_key(|(_, entry)| entry.used_tick)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.remove(&id),
                None => break,
            }
        }
    }
}

/// The cached windows of the agents active on this node.
#[derive(Default)]
pub struct RecentWindows {
    windows: Mutex<Windows>,
}

impl MessageChanges for RecentWindows {
    fn stored(&self, ctx: &mut Ctx<'_>, history: &History, message: &StoredMessage, bytes: usize) {
        let before = Stamp::of(ctx, history);
        ctx.state.message_token = ctx.env.rng.next_u64();
        let after = Stamp::of(ctx, history);
        let key = key_of(ctx, history);
        let mut windows = self.windows.lock().expect("window cache lock");
        let Some(entry) = windows.cached.get_mut(&key) else { return };
        if entry.stamp != before {
            windows.remove(&key);
            return;
        }
        assert!(message.seq >= after.start_seq, "a new message lies inside the window");
        let held = entry.bytes;
        entry.push(message.clone(), bytes);
        entry.stamp = after;
        let grown = entry.bytes;
        windows.bytes = windows.bytes - held + grown;
        windows.evict_except(&key);
    }
}

impl RecentWindows {
    /// The conversation messages among the newest `count_max` of the
    /// agent's context window, oldest first: from memory when the cached
    /// window is the stored one, else read (and cached).
    pub(crate) async fn recent(
        &self,
        ctx: &mut Ctx<'_>,
        history: &History,
        count_max: usize,
    ) -> Result<Vec<SharedMessage>> {
        store::agent(ctx)?;
        let count_max = count_max.clamp(1, STORE_PAGE_COUNT_MAX);
        if count_max > WINDOW_CACHED_MESSAGES_COUNT_MAX {
            let rows = read(ctx, history, count_max).await?;
            let entry = cached_from(Stamp::of(ctx, history), rows);
            return Ok(entry.newest(count_max));
        }
        let stamp = Stamp::of(ctx, history);
        let key = key_of(ctx, history);
        {
            let mut windows = self.windows.lock().expect("window cache lock");
            windows.tick += 1;
            let tick = windows.tick;
            if let Some(entry) = windows.cached.get_mut(&key) {
                if entry.stamp == stamp {
                    entry.used_tick = tick;
                    return Ok(entry.newest(count_max));
                }
            }
        }
        let rows = read(ctx, history, WINDOW_CACHED_MESSAGES_COUNT_MAX).await?;
        let mut entry = cached_from(stamp, rows);
        let newest = entry.newest(count_max);
        let mut windows = self.windows.lock().expect("window cache lock");
        entry.used_tick = windows.tick;
        windows.insert(key, entry);
        Ok(newest)
    }

    /// Drops what is cached of agent `actor_id`, every history of it (its
    /// activation ends, or it is deleted).
    pub(crate) fn forget(&self, actor_id: &ActorId) {
        let mut windows = self.windows.lock().expect("window cache lock");
        let keys: Vec<WindowKey> = windows.cached.keys().filter(|(id, _)| id == actor_id).cloned().collect();
        for key in &keys {
            windows.remove(key);
        }
    }

    /// Drops the cached window of conversation `slot` of agent `actor_id`
    /// (the conversation is deleted).
    pub(crate) fn forget_conversation(&self, actor_id: &ActorId, slot: u64) {
        self.windows.lock().expect("window cache lock").remove(&(actor_id.clone(), Some(slot)));
    }

    /// Bytes of messages held, for tests of the bound.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.windows.lock().expect("window cache lock").bytes
    }
}

/// The newest `count` messages of the window from storage, newest first,
/// each with its stored size.
async fn read(ctx: &mut Ctx<'_>, history: &History, count: usize) -> Result<Vec<(StoredMessage, usize)>> {
    let space = history.space(ctx);
    let mut range: KeyRange = store::message_range(&space);
    range.start = Bound::Included(store::message_key(&space, history.context(ctx).start_seq));
    let rows = ctx.kv_scan_page(&range, ScanOrder::Descending, count).await?;
    rows.iter()
        .map(|(_, value)| Ok((store::decode::<StoredMessage>(value, "agent message")?, value.len())))
        .collect()
}

fn cached_from(stamp: Stamp, newest_first: Vec<(StoredMessage, usize)>) -> Cached {
    let bytes = newest_first.iter().map(|(_, bytes)| bytes).sum();
    let messages = newest_first.into_iter().rev().map(|(message, bytes)| (message.into(), bytes)).collect();
    Cached { stamp, messages, bytes, used_tick: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, text: &str) -> StoredMessage {
        StoredMessage {
            id: format!("message-{seq}"),
            seq,
            created_ms: seq,
            run_id: None,
            step_id: None,
            body: MessageBody::User { content: text.to_string() },
        }
    }

    fn entry(tick: u64, bytes_each: usize, count: u64) -> Cached {
        let stamp = Stamp { generation: 0, start_seq: 0, token: tick };
        let mut entry = Cached { stamp, messages: VecDeque::new(), bytes: 0, used_tick: tick };
        for seq in 0..count {
            entry.push(message(seq, "x"), bytes_each);
        }
        entry
    }

    #[test]
    fn a_window_keeps_only_the_newest_messages_up_to_the_cap() {
        let total = WINDOW_CACHED_MESSAGES_COUNT_MAX as u64 + 7;
        let cached = entry(1, 10, total);
        assert_eq!(cached.messages.len(), WINDOW_CACHED_MESSAGES_COUNT_MAX);
        assert_eq!(cached.bytes, WINDOW_CACHED_MESSAGES_COUNT_MAX * 10);
        assert_eq!(cached.messages.front().map(|(m, _)| m.seq), Some(7));
        let newest = cached.newest(3);
        assert_eq!(newest.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![total - 3, total - 2, total - 1]);
    }

    #[test]
    fn summaries_count_toward_the_newest_but_are_not_returned() {
        let mut cached = entry(1, 10, 3);
        let summary = MessageBody::Summary { summary: "s".into(), content: "c".into() };
        cached.push(StoredMessage { body: summary, ..message(3, "") }, 10);
        cached.push(message(4, "after"), 10);
        assert_eq!(cached.newest(3).iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn the_cache_stays_within_its_byte_bound_evicting_the_least_recently_used() {
        let cache = RecentWindows::default();
        // Each window is a third of the bound, plus a little: three do not fit.
        let per_message = WINDOW_CACHE_BYTES_MAX / 3 / 100 + 1;
        let ids: Vec<ActorId> = (0..3).map(|i| ActorId::new("agents", format!("a{i}")).unwrap()).collect();
        {
            let mut windows = cache.windows.lock().unwrap();
            let keys: Vec<WindowKey> = ids.iter().map(|id| (id.clone(), None)).collect();
            windows.insert(keys[0].clone(), entry(1, per_message, 100));
            windows.insert(keys[1].clone(), entry(2, per_message, 100));
            assert_eq!(windows.cached.len(), 2);
            windows.cached.get_mut(&keys[0]).unwrap().used_tick = 3;
            windows.insert(keys[2].clone(), entry(4, per_message, 100));
            assert!(windows.cached.contains_key(&keys[0]), "recently used: kept");
            assert!(!windows.cached.contains_key(&keys[1]), "least recently used: evicted");
            assert!(windows.cached.contains_key(&keys[2]), "the new window: kept");
        }
        assert_eq!(cache.bytes(), 2 * 100 * per_message);
        assert!(cache.bytes() <= WINDOW_CACHE_BYTES_MAX);
        cache.forget(&ids[0]);
        assert_eq!(cache.bytes(), 100 * per_message);
    }
}
