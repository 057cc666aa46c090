//! The agent actor's storage layout and the reads and writes its commands
//! and built-in tools are made of. Everything here runs inside one
//! invocation, so it commits with the command that called it.
//!
//! The state is the agent record, counters and generations. Messages and
//! passages are extra keys, each kind under its own generation's prefix:
//!
//! | key | value |
//! |---|---|
//! | `<messages>m/<seq>` | a message |
//! | `<messages>mi/<id>` | the message's seq (the id index) |
//! | `<messages>w/<word>/<seq>` | nothing: message `seq` holds `word` (the search index) |
//! | `<messages>r/<seq>` | a run with its steps (`runs`) |
//! | `<messages>ri/<id>` | the run's seq |
//! | `<messages>k/<key>` | the id of the run begun with idempotency key `key` |
//! | `<passages>p/<seq>` | a passage |
//! | `<passages>pi/<id>` | the passage's seq |
//! | `<passages>q/<seq>` | the passage's search code (`kelpie_memory::Code`; empty when its embedding has no direction) |
//! | `<conversations>r/<slot>` | a conversation (`conversations`) |
//! | `<conversations>i/<id>` | the conversation's slot |
//! | `<conversations>s/<slot>/m/<seq>` … | the conversation's messages, with the `mi/` and `w/` keys above |
//!
//! A conversation is one more message history of the agent: its messages
//! take seqs from the same counter as the agent's own, so its pages and
//! window reads are the same bounded range reads, under its own space.
//! `<seq>` is 16 hex digits, so key order is sequence order and every list
//! is a bounded range read: O(limit + log n) whatever the history's size.
//! Generation 0 has an empty prefix (the layout before generations); a
//! reset or delete starts a new generation and leaves the old prefix to
//! [`reclaim_batch`], which deletes it in bounded batches.

use std::collections::BTreeSet;
use std::ops::Bound;

use kelpie_core::{Error, Result};
use kelpie_memory::{Code, Passage};
use kelpie_runtime::ActorContext;
use kelpie_storage::{KeyRange, ScanOrder};
use serde::{Deserialize, Serialize};

use crate::ids::{new_id, new_message_id};
use crate::limits::{
    CONVERSATION_SEARCH_CANDIDATES_COUNT_MAX, MESSAGE_INDEXED_WORDS_COUNT_MAX, SEARCH_WORD_BYTES_MAX,
    STORE_PAGE_COUNT_MAX,
};
use crate::model::{AgentRecord, MessageBody, OpenRun, StoredMessage};

/// What the agent actor persists as its state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentActorState {
    pub agent: Option<AgentRecord>,
    /// Next sequence number of a message or passage.
    pub next_seq: u64,
    /// Generation of the message keys; a reset or delete starts a new one.
    #[serde(default)]
    pub message_generation: u64,
    /// Generation of the passage keys; a delete starts a new one.
    #[serde(default)]
    pub passage_generation: u64,
    /// Key prefixes of ended generations, still to delete, oldest first.
    #[serde(default)]
    pub reclaim: Vec<String>,
    /// Messages and passages held, counted as they are written. `None` in
    /// a state written before counting (counted once, on first use).
    #[serde(default)]
    pub counts: Option<Counts>,
    /// Messages below this seq were written before the search index and
    /// are searched by reading them. `None` in a state written before the
    /// index (set on first use).
    #[serde(default)]
    pub unindexed_below_seq: Option<u64>,
    /// Set while an import writes the agent's history in batches: the agent
    /// is not visible until the import finishes.
    #[serde(default)]
    pub importing: bool,
    /// What of the conversation is in the context window.
    #[serde(default)]
    pub context: ContextState,
    /// Drawn afresh at every change to the passages: an archival index
    /// built for another token is stale (see `archive`).
    #[serde(default)]
    pub passage_token: u64,
    /// Drawn afresh at every message stored: a cached window read or
    /// extended for another token is stale (see `window`).
    #[serde(default)]
    pub message_token: u64,
    /// The runs of this agent still running, with the process running
    /// each (`runs`): one a later activation finds under another process
    /// was left by a process that is gone.
    #[serde(default)]
    pub open_runs: Vec<OpenRun>,
    /// Generation of the conversation keys; deleting the agent starts a
    /// new one (a reset of its own messages leaves them).
    #[serde(default)]
    pub conversation_generation: u64,
    /// The slot the next conversation takes (slots are never reused).
    #[serde(default)]
    pub conversation_slot_next: u64,
    /// Conversations held, at most `AGENT_CONVERSATIONS_COUNT_MAX`.
    #[serde(default)]
    pub conversations_count: u64,
}

/// The part of the conversation in the context window: the messages from
/// `start_seq` on, after the summary of those before it, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextState {
    pub start_seq: u64,
    /// The latest summary, as the model wrote it.
    pub summary: Option<String>,
    /// The message holding it, as the agent reads it.
    pub summary_content: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub messages: u64,
    pub passages: u64,
}

impl AgentActorState {
    /// Whether the state holds an agent a client may see: created and not
    /// deleted, or imported and finished. Every command but those that
    /// create, import or reclaim asks this first (through [`agent`]), and
    /// the runtime asks it before activating the actor for one of them.
    pub fn holds_visible_agent(&self) -> bool {
        self.agent.is_some() && !self.importing
    }

    /// The state of a new agent: counted and indexed from the start, in a
    /// generation after any the actor held before.
    pub(crate) fn begin_agent(&mut self, record: AgentRecord) {
        assert!(self.agent.is_none(), "an agent begins in an actor holding none");
        self.agent = Some(record);
        self.counts = Some(Counts::default());
        self.unindexed_below_seq = Some(self.next_seq);
    }
}

pub(crate) type Ctx<'a> = ActorContext<'a, AgentActorState>;

/// A change to an agent's passages, as an index of them sees it.
pub(crate) enum Change<'a> {
    Insert { seq: u64, code: Option<&'a Code> },
    Remove { seq: u64 },
}

/// What keeps something derived from the passages (the archival index,
/// `archive`) in step with each change made here.
pub(crate) trait PassageChanges: Sync {
    /// `change` was just made (and the state's `passage_token` is still
    /// the one from before it).
    fn changed(&self, ctx: &mut Ctx<'_>, change: Change<'_>);
    /// The agent's passages are gone (a new generation).
    fn forget(&self, actor_id: &kelpie_core::ActorId);
}

/// What keeps the cached context window (`window`) in step with each
/// message stored here.
pub(crate) trait MessageChanges: Sync {
    /// `message` (`bytes` long, encoded) was just stored, and the state's
    /// `message_token` is still the one from before it.
    fn stored(&self, ctx: &mut Ctx<'_>, history: &History, message: &StoredMessage, bytes: usize);
}

fn not_found(ctx: &Ctx<'_>) -> Error {
    Error::NotFound { kind: "agent", id: ctx.actor_id.id().to_string() }
}

/// The agent, or not found when this actor holds none (or is importing it).
pub(crate) fn agent(ctx: &Ctx<'_>) -> Result<AgentRecord> {
    match &ctx.state.agent {
        Some(agent) if ctx.state.holds_visible_agent() => Ok(agent.clone()),
        _ => Err(not_found(ctx)),
    }
}

pub(crate) fn agent_mut<'s>(ctx: &'s mut Ctx<'_>) -> Result<&'s mut AgentRecord> {
    let missing = not_found(ctx);
    if !ctx.state.holds_visible_agent() {
        return Err(missing);
    }
    ctx.state.agent.as_mut().ok_or(missing)
}

/// The key prefix of generation `generation` of `kind` (`m` or `p`).
fn generation_prefix(kind: char, generation: u64) -> String {
    match generation {
        0 => String::new(),
        n => format!("{kind}g{n:08x}/"),
    }
}

/// The prefixes generation 0 (no prefix of its own) keeps `kind` under.
fn legacy_prefixes(kind: char) -> &'static [&'static str] {
    match kind {
        'm' => &["m/", "mi/", "w/", "r/", "ri/", "k/"],
        _ => &["p/", "pi/", "q/"],
    }
}

pub(crate) fn messages(ctx: &Ctx<'_>) -> String {
    generation_prefix('m', ctx.state.message_generation)
}

/// The key prefix of the current generation of conversations (never empty:
/// conversations came after generations).
pub(crate) fn conversations(ctx: &Ctx<'_>) -> String {
    format!("cg{:08x}/", ctx.state.conversation_generation)
}

/// The message space of conversation `slot`.
pub(crate) fn conversation_space(ctx: &Ctx<'_>, slot: u64) -> String {
    format!("{}s/{slot:016x}/", conversations(ctx))
}

/// One conversation of an agent, with what of it is in its context window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub id: String,
    pub agent_id: String,
    /// Its place in creation order (0 until stored).
    pub slot: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Letta's `summary`: a description the client sets (not the
    /// compaction summary, which is in `context`).
    pub summary: Option<String>,
    /// Letta's `model`: a model handle for this conversation's turns.
    pub model: Option<String>,
    /// Letta's `model_settings`, kept as given.
    pub model_settings: Option<serde_json::Value>,
    /// When a turn last stored a user message here.
    pub last_message_ms: Option<u64>,
    /// When a run of this conversation last ended.
    pub last_run_completion_ms: Option<u64>,
    pub context: ContextState,
    /// Messages stored, counted as they are written.
    pub messages: u64,
}

pub(crate) fn conversation_record_key(ctx: &Ctx<'_>, slot: u64) -> Vec<u8> {
    seq_key(&conversations(ctx), "r", slot)
}

pub(crate) fn conversation_id_key(ctx: &Ctx<'_>, id: &str) -> Vec<u8> {
    index_key(&conversations(ctx), "i", id)
}

fn conversation_not_found(id: &str) -> Error {
    Error::NotFound { kind: "conversation", id: id.to_string() }
}

/// Conversation `id` of this agent; not found when it has none.
pub(crate) async fn load_conversation(ctx: &mut Ctx<'_>, id: &str) -> Result<ConversationRecord> {
    agent(ctx)?;
    load_conversation_unchecked(ctx, id).await
}

/// [`load_conversation`] of an agent visible or not (an import's).
pub(crate) async fn load_conversation_unchecked(ctx: &mut Ctx<'_>, id: &str) -> Result<ConversationRecord> {
    let space = conversations(ctx);
    let Some(slot) = seq_of(ctx, &space, "i", id).await? else { return Err(conversation_not_found(id)) };
    match ctx.kv_get(&conversation_record_key(ctx, slot)).await? {
        Some(bytes) => {
            let record: ConversationRecord = decode(&bytes, "conversation")?;
            assert_eq!(record.slot, slot, "a conversation is stored under its slot");
            Ok(record)
        }
        None => Err(Error::Corruption {
            location: format!("conversation {id}"),
            reason: format!("its index names slot {slot}, which holds no conversation"),
        }),
    }
}

pub(crate) fn save_conversation(ctx: &mut Ctx<'_>, record: &ConversationRecord) -> Result<()> {
    assert_eq!(record.agent_id, ctx.actor_id.id(), "a conversation lives in its agent");
    let key = conversation_record_key(ctx, record.slot);
    ctx.kv_put(&key, encode(record)?)
}

/// Which message history of the agent a read or write is about: its own
/// (the default history, which the agent routes use) or one of its
/// conversations, whose record the caller saves after a change.
pub(crate) enum History {
    Agent,
    Conversation(Box<ConversationRecord>),
}

impl History {
    /// The key prefix of the history's messages.
    pub(crate) fn space(&self, ctx: &Ctx<'_>) -> String {
        match self {
            History::Agent => messages(ctx),
            History::Conversation(record) => conversation_space(ctx, record.slot),
        }
    }

    /// What of the history is in the context window.
    pub(crate) fn context<'s>(&'s self, ctx: &'s Ctx<'_>) -> &'s ContextState {
        match self {
            History::Agent => &ctx.state.context,
            History::Conversation(record) => &record.context,
        }
    }

    /// The conversation's slot; `None` for the agent's own history.
    pub(crate) fn slot(&self) -> Option<u64> {
        match self {
            History::Agent => None,
            History::Conversation(record) => Some(record.slot),
        }
    }

    /// The generation the history's keys belong to.
    pub(crate) fn generation(&self, ctx: &Ctx<'_>) -> u64 {
        match self {
            History::Agent => ctx.state.message_generation,
            History::Conversation(_) => ctx.state.conversation_generation,
        }
    }

    /// Messages stored in the history.
    pub(crate) fn message_count(&self, ctx: &Ctx<'_>) -> u64 {
        match self {
            History::Agent => ctx.state.counts.map_or(0, |counts| counts.messages),
            History::Conversation(record) => record.messages,
        }
    }

    /// The history `conversation` names (the agent's own when `None`); not
    /// found when the agent has no such conversation.
    pub(crate) async fn of(ctx: &mut Ctx<'_>, conversation: Option<&str>) -> Result<History> {
        match conversation {
            None => Ok(History::Agent),
            Some(id) => Ok(History::Conversation(Box::new(load_conversation(ctx, id).await?))),
        }
    }

    /// Stores the conversation's record after a change (nothing to do for
    /// the agent's own history, which lives in the state).
    pub(crate) fn save(&self, ctx: &mut Ctx<'_>) -> Result<()> {
        match self {
            History::Agent => Ok(()),
            History::Conversation(record) => save_conversation(ctx, record),
        }
    }
}

fn passages(ctx: &Ctx<'_>) -> String {
    generation_prefix('p', ctx.state.passage_generation)
}

pub(crate) fn seq_key(space: &str, kind: &str, seq: u64) -> Vec<u8> {
    format!("{space}{kind}/{seq:016x}").into_bytes()
}

pub(crate) fn index_key(space: &str, kind: &str, id: &str) -> Vec<u8> {
    format!("{space}{kind}/{id}").into_bytes()
}

fn word_key(space: &str, word: &str, seq: u64) -> Vec<u8> {
    format!("{space}w/{word}/{seq:016x}").into_bytes()
}

/// Keys one stored passage takes.
pub(crate) const PASSAGE_KEYS_COUNT: usize = 3;

/// The seq a `…/<seq>` key ends with.
pub(crate) fn seq_of_key(key: &[u8]) -> Result<u64> {
    let corrupt = || Error::Corruption { location: "agent key".into(), reason: "no seq at its end".into() };
    let hex = key.len().checked_sub(16).map(|start| &key[start..]).ok_or_else(corrupt)?;
    u64::from_str_radix(std::str::from_utf8(hex).map_err(|_| corrupt())?, 16).map_err(|_| corrupt())
}

/// Every stored search code of the current passages.
pub(crate) fn code_range(ctx: &Ctx<'_>) -> KeyRange {
    KeyRange::prefix(format!("{}q/", passages(ctx)))
}

/// Every current passage.
pub(crate) fn passage_range(ctx: &Ctx<'_>) -> KeyRange {
    KeyRange::prefix(format!("{}p/", passages(ctx)))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encode: {e}")))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corruption { location: what.to_string(), reason: e.to_string() })
}

fn decode_seq(bytes: &[u8], what: &str) -> Result<u64> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| Error::Corruption { location: what.to_string(), reason: "not 8 bytes".into() })?;
    Ok(u64::from_be_bytes(array))
}

pub(crate) fn next_seq(ctx: &mut Ctx<'_>) -> u64 {
    let seq = ctx.state.next_seq;
    ctx.state.next_seq += 1;
    seq
}

/// Counts a state written before counting, once: pages through its keys.
pub(crate) async fn ensure_counted(ctx: &mut Ctx<'_>) -> Result<Counts> {
    if let Some(counts) = ctx.state.counts {
        return Ok(counts);
    }
    let mut counts = Counts::default();
    for (kind, total) in [("m", &mut counts.messages), ("p", &mut counts.passages)] {
        let space = if kind == "m" { messages(ctx) } else { passages(ctx) };
        let mut range = KeyRange::prefix(format!("{space}{kind}/"));
        loop {
            let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, STORE_PAGE_COUNT_MAX).await?;
            *total += rows.len() as u64;
            match rows.last() {
                Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => {
                    range.start = Bound::Excluded(key.clone())
                }
                _ => break,
            }
        }
    }
    ctx.state.counts = Some(counts);
    Ok(counts)
}

/// Marks a state written before the search index: its messages so far are
/// searched by reading them.
pub(crate) fn ensure_index_watermark(ctx: &mut Ctx<'_>) {
    if ctx.state.unindexed_below_seq.is_none() {
        ctx.state.unindexed_below_seq = Some(ctx.state.next_seq);
    }
}

fn counts_mut<'s>(ctx: &'s mut Ctx<'_>) -> &'s mut Counts {
    ctx.state.counts.as_mut().expect("counted before anything is written")
}

/// The words of `text` a search index holds: lower-cased runs of letters
/// and digits, each at most `SEARCH_WORD_BYTES_MAX` bytes (longer runs are
/// not indexed), distinct, in order of first appearance.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut words = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let word = word.to_lowercase();
        if word.len() <= SEARCH_WORD_BYTES_MAX && seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

/// Stores `message` under the next sequence number (which it takes), with
/// its id and the first `MESSAGE_INDEXED_WORDS_COUNT_MAX` of its words.
pub(crate) async fn put_message(
    ctx: &mut Ctx<'_>,
    windows: &dyn MessageChanges,
    history: &mut History,
    mut message: StoredMessage,
) -> Result<StoredMessage> {
    ensure_counted(ctx).await?;
    ensure_index_watermark(ctx);
    message.seq = next_seq(ctx);
    let space = history.space(ctx);
    let encoded = encode(&message)?;
    let bytes = encoded.len();
    ctx.kv_put(&seq_key(&space, "m", message.seq), encoded)?;
    ctx.kv_put(&index_key(&space, "mi", &message.id), message.seq.to_be_bytes().to_vec())?;
    for word in words(&message.searchable_text()).into_iter().take(MESSAGE_INDEXED_WORDS_COUNT_MAX) {
        ctx.kv_put(&word_key(&space, &word, message.seq), Vec::new())?;
    }
    match history {
        History::Agent => counts_mut(ctx).messages += 1,
        History::Conversation(record) => {
            // Where a message id of a conversation is found again.
            let slot = record.slot.to_be_bytes().to_vec();
            ctx.kv_put(&index_key(&conversations(ctx), "c", &message.id), slot)?;
            record.messages += 1;
        }
    }
    windows.stored(ctx, history, &message, bytes);
    Ok(message)
}

/// A new message of a step, with `id` or a new one, stored now.
pub(crate) async fn append_message(
    ctx: &mut Ctx<'_>,
    (windows, history): (&dyn MessageChanges, &mut History),
    (run_id, step_id): (&str, &str),
    body: MessageBody,
    id: Option<String>,
) -> Result<StoredMessage> {
    let message = StoredMessage {
        id: id.unwrap_or_else(|| new_message_id(ctx.actor_id.id(), ctx.env.rng.as_ref())),
        seq: 0,
        created_ms: ctx.env.clock.wall_ms(),
        run_id: Some(run_id.to_string()),
        step_id: Some(step_id.to_string()),
        body,
    };
    put_message(ctx, windows, history, message).await
}

/// Which slice of a list a page is: after and before the item with those
/// ids (an unknown id selects nothing), at most `limit`, oldest first
/// unless `descending`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSpec {
    pub after: Option<String>,
    pub before: Option<String>,
    pub limit: usize,
    pub descending: bool,
}

/// The seq of item `id` in the index under `index`, if it exists.
pub(crate) async fn seq_of(ctx: &mut Ctx<'_>, space: &str, index: &str, id: &str) -> Result<Option<u64>> {
    match ctx.kv_get(&index_key(space, index, id)).await? {
        Some(bytes) => Ok(Some(decode_seq(&bytes, index)?)),
        None => Ok(None),
    }
}

/// The range of `kind` keys a page selects, or `None` when a cursor names
/// an item that does not exist.
pub(crate) async fn page_range(
    ctx: &mut Ctx<'_>,
    (space, kind, index): (&str, &str, &str),
    page: &PageSpec,
) -> Result<Option<KeyRange>> {
    let mut range = KeyRange::prefix(format!("{space}{kind}/"));
    // In descending order `after` is the newer end and `before` the older.
    let (newer, older) = match page.descending {
        false => (&page.before, &page.after),
        true => (&page.after, &page.before),
    };
    if let Some(id) = older {
        let Some(seq) = seq_of(ctx, space, index, id).await? else { return Ok(None) };
        range.start = Bound::Excluded(seq_key(space, kind, seq));
    }
    if let Some(id) = newer {
        let Some(seq) = seq_of(ctx, space, index, id).await? else { return Ok(None) };
        range.end = Bound::Excluded(seq_key(space, kind, seq));
    }
    Ok(Some(range))
}

pub(crate) fn order(descending: bool) -> ScanOrder {
    if descending {
        ScanOrder::Descending
    } else {
        ScanOrder::Ascending
    }
}

/// One page of the messages of `history`.
pub(crate) async fn message_page(
    ctx: &mut Ctx<'_>,
    history: &History,
    page: &PageSpec,
) -> Result<Vec<StoredMessage>> {
    agent(ctx)?;
    let limit = page.limit.clamp(1, STORE_PAGE_COUNT_MAX);
    let space = history.space(ctx);
    let Some(range) = page_range(ctx, (&space, "m", "mi"), page).await? else { return Ok(Vec::new()) };
    let rows = ctx.kv_scan_page(&range, order(page.descending), limit).await?;
    rows.iter().map(|(_, value)| decode(value, "agent message")).collect()
}

/// A message's place in the order of every agent's messages by time: its
/// creation time, then its seq (the agent's own order).
pub type TimePlace = (u64, u64);

pub fn time_place(created_ms: u64, seq: u64) -> TimePlace {
    (created_ms, seq)
}

/// The first stored message at or after `seq`: (seq, creation time).
async fn message_at_or_after(ctx: &mut Ctx<'_>, space: &str, seq: u64) -> Result<Option<(u64, u64)>> {
    let mut range = KeyRange::prefix(format!("{space}m/"));
    range.start = Bound::Included(seq_key(space, "m", seq));
    let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, 1).await?;
    match rows.first() {
        Some((key, value)) => {
            let message: StoredMessage = decode(value, "agent message")?;
            Ok(Some((seq_of_key(key)?, message.created_ms)))
        }
        None => Ok(None),
    }
}

/// The seq of the first stored message whose [`time_place`] is at least
/// `place` (`u64::MAX` when none is): a binary search over seqs, O(log n)
/// reads, as a message's time does not go back as its seq grows.
async fn first_seq_at_place(ctx: &mut Ctx<'_>, space: &str, place: TimePlace) -> Result<u64> {
    let (mut low, mut high) = (0_u64, u64::MAX);
    let mut found = u64::MAX;
    while low < high {
        let mid = low + (high - low) / 2;
        match message_at_or_after(ctx, space, mid).await? {
            Some((seq, created_ms)) if seq < high => {
                if time_place(created_ms, seq) < place {
                    low = seq + 1;
                } else {
                    found = seq;
                    high = mid;
                }
            }
            _ => high = mid,
        }
    }
    Ok(found)
}

/// At most `limit` of the agent's messages whose [`time_place`] is in
/// `[from, to)` (either end open when `None`), from the older end or,
/// `descending`, the newer one: O(limit + log n).
pub(crate) async fn messages_between(
    ctx: &mut Ctx<'_>,
    (from, to): (Option<TimePlace>, Option<TimePlace>),
    descending: bool,
    limit: usize,
) -> Result<Vec<StoredMessage>> {
    agent(ctx)?;
    let space = messages(ctx);
    let mut range = KeyRange::prefix(format!("{space}m/"));
    if let Some(from) = from {
        range.start = Bound::Included(seq_key(&space, "m", first_seq_at_place(ctx, &space, from).await?));
    }
    if let Some(to) = to {
        range.end = Bound::Excluded(seq_key(&space, "m", first_seq_at_place(ctx, &space, to).await?));
    }
    let rows = ctx.kv_scan_page(&range, order(descending), limit.clamp(1, STORE_PAGE_COUNT_MAX)).await?;
    rows.iter().map(|(_, value)| decode(value, "agent message")).collect()
}

/// The key range of the current messages of the history in `space`.
pub(crate) fn message_range(space: &str) -> KeyRange {
    KeyRange::prefix(format!("{space}m/"))
}

/// The key of message `seq` of the history in `space`.
pub(crate) fn message_key(space: &str, seq: u64) -> Vec<u8> {
    seq_key(space, "m", seq)
}

/// Moves the context window's start to `start_seq` (the messages before it
/// leave the window) and stores the summary of what left, as a message.
pub(crate) async fn compact(
    ctx: &mut Ctx<'_>,
    (windows, history): (&dyn MessageChanges, &mut History),
    start_seq: u64,
    summary: String,
    content: String,
) -> Result<StoredMessage> {
    agent(ctx)?;
    let window_start = history.context(ctx).start_seq;
    if start_seq < window_start || start_seq > ctx.state.next_seq {
        return Err(Error::validation(
            "compaction",
            format!("the window may start at {window_start}..={}, not {start_seq}", ctx.state.next_seq),
        ));
    }
    let message = StoredMessage {
        id: new_message_id(ctx.actor_id.id(), ctx.env.rng.as_ref()),
        seq: 0,
        created_ms: ctx.env.clock.wall_ms(),
        run_id: None,
        step_id: None,
        body: MessageBody::Summary { summary: summary.clone(), content: content.clone() },
    };
    let message = put_message(ctx, windows, history, message).await?;
    let context = ContextState { start_seq, summary: Some(summary), summary_content: Some(content) };
    match history {
        History::Agent => ctx.state.context = context,
        History::Conversation(record) => record.context = context,
    }
    history.save(ctx)?;
    Ok(message)
}

/// Up to `limit` messages of `history` below seq `below_seq` whose text contains
/// `query` (case-insensitive), newest first. Candidates come from the search index (the messages
/// holding the query's longest word), so the cost follows the matches, not
/// the history: at most `CONVERSATION_SEARCH_CANDIDATES_COUNT_MAX` are read.
pub(crate) async fn search_messages(
    ctx: &mut Ctx<'_>,
    history: &History,
    query: &str,
    limit: usize,
    below_seq: u64,
) -> Result<Vec<StoredMessage>> {
    agent(ctx)?;
    ensure_index_watermark(ctx);
    let needle = query.to_lowercase();
    let Some(driver) = words(query).into_iter().max_by_key(|word| word.len()) else {
        return Ok(Vec::new());
    };
    let space = history.space(ctx);
    // Conversations came after the index: all their messages are in it.
    let unindexed_below = match history {
        History::Agent => ctx.state.unindexed_below_seq.unwrap_or(0).min(below_seq),
        History::Conversation(_) => 0,
    };
    let mut hits = Vec::new();
    let mut candidates_read = 0;
    let mut range = KeyRange::prefix(format!("{space}w/{driver}/"));
    range.end = Bound::Excluded(word_key(&space, &driver, below_seq));
    'indexed: while hits.len() < limit && candidates_read < CONVERSATION_SEARCH_CANDIDATES_COUNT_MAX {
        let rows = ctx.kv_scan_page(&range, ScanOrder::Descending, STORE_PAGE_COUNT_MAX).await?;
        for (key, _) in &rows {
            let seq = seq_of_key(key)?;
            candidates_read += 1;
            if let Some(message) = read_message(ctx, &space, seq).await? {
                if message.searchable_text().to_lowercase().contains(&needle) {
                    hits.push(message);
                }
            }
            if hits.len() >= limit || candidates_read >= CONVERSATION_SEARCH_CANDIDATES_COUNT_MAX {
                break 'indexed;
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == STORE_PAGE_COUNT_MAX => range.end = Bound::Excluded(key.clone()),
            _ => break,
        }
    }
    // Messages written before the index existed are read one by one.
    let mut seq = unindexed_below;
    while hits.len() < limit && seq > 0 && candidates_read < CONVERSATION_SEARCH_CANDIDATES_COUNT_MAX {
        seq -= 1;
        candidates_read += 1;
        if let Some(message) = read_message(ctx, &space, seq).await? {
            if message.searchable_text().to_lowercase().contains(&needle) {
                hits.push(message);
            }
        }
    }
    Ok(hits)
}

/// Replaces the body of message `id` with what `edit` makes of it, keeping
/// its seq, id and time; its search words are replaced too, and the cached
/// window is left to be read again (its token changes). The message after.
pub(crate) async fn edit_message(
    ctx: &mut Ctx<'_>,
    id: &str,
    edit: impl FnOnce(&mut MessageBody) -> std::result::Result<(), String>,
) -> Result<StoredMessage> {
    agent(ctx)?;
    ensure_index_watermark(ctx);
    let space = messages(ctx);
    let missing = || Error::NotFound { kind: "message", id: id.to_string() };
    let seq = seq_of(ctx, &space, "mi", id).await?.ok_or_else(missing)?;
    let mut message = read_message(ctx, &space, seq).await?.ok_or_else(missing)?;
    let before = words(&message.searchable_text());
    edit(&mut message.body).map_err(|reason| Error::validation("message", reason))?;
    for word in before.into_iter().take(MESSAGE_INDEXED_WORDS_COUNT_MAX) {
        ctx.kv_delete(&word_key(&space, &word, seq))?;
    }
    for word in words(&message.searchable_text()).into_iter().take(MESSAGE_INDEXED_WORDS_COUNT_MAX) {
        ctx.kv_put(&word_key(&space, &word, seq), Vec::new())?;
    }
    ctx.kv_put(&seq_key(&space, "m", seq), encode(&message)?)?;
    ctx.state.message_token = ctx.env.rng.next_u64();
    Ok(message)
}

/// The stored message `id`, if the agent has it, in its own history or in
/// one of its conversations (then with that conversation's id): through
/// the id index of each, never a scan. A message of a conversation deleted
/// since is not found.
pub(crate) async fn get_message(
    ctx: &mut Ctx<'_>,
    id: &str,
) -> Result<Option<(StoredMessage, Option<String>)>> {
    agent(ctx)?;
    let space = messages(ctx);
    if let Some(seq) = seq_of(ctx, &space, "mi", id).await? {
        return Ok(read_message(ctx, &space, seq).await?.map(|message| (message, None)));
    }
    let Some(slot) = seq_of(ctx, &conversations(ctx), "c", id).await? else { return Ok(None) };
    let Some(bytes) = ctx.kv_get(&conversation_record_key(ctx, slot)).await? else { return Ok(None) };
    let record: ConversationRecord = decode(&bytes, "conversation")?;
    let space = conversation_space(ctx, slot);
    let Some(seq) = seq_of(ctx, &space, "mi", id).await? else { return Ok(None) };
    Ok(read_message(ctx, &space, seq).await?.map(|message| (message, Some(record.id))))
}

async fn read_message(ctx: &mut Ctx<'_>, space: &str, seq: u64) -> Result<Option<StoredMessage>> {
    match ctx.kv_get(&seq_key(space, "m", seq)).await? {
        Some(bytes) => Ok(Some(decode(&bytes, "agent message")?)),
        None => Ok(None),
    }
}

/// Stores `passage` under the next sequence number, with its search code.
pub(crate) async fn put_passage(
    ctx: &mut Ctx<'_>,
    indexes: &dyn PassageChanges,
    passage: &Passage,
) -> Result<()> {
    ensure_counted(ctx).await?;
    let seq = next_seq(ctx);
    let space = passages(ctx);
    let code = Code::of(&passage.embedding);
    ctx.kv_put(&seq_key(&space, "p", seq), encode(passage)?)?;
    ctx.kv_put(&index_key(&space, "pi", &passage.id), seq.to_be_bytes().to_vec())?;
    ctx.kv_put(&seq_key(&space, "q", seq), code.as_ref().map(Code::to_bytes).unwrap_or_default())?;
    counts_mut(ctx).passages += 1;
    indexes.changed(ctx, Change::Insert { seq, code: code.as_ref() });
    Ok(())
}

/// A new passage with a new id, stored now.
pub(crate) async fn insert_passage(
    ctx: &mut Ctx<'_>,
    indexes: &dyn PassageChanges,
    text: String,
    tags: Vec<String>,
    embedding: Vec<f32>,
) -> Result<Passage> {
    agent(ctx)?;
    assert!(!embedding.is_empty(), "a passage is stored with its embedding");
    let passage = Passage {
        id: new_id("passage", ctx.env.rng.as_ref()),
        embedding,
        text,
        tags,
        created_ms: ctx.env.clock.wall_ms(),
    };
    put_passage(ctx, indexes, &passage).await?;
    Ok(passage)
}

/// Passage `seq` of the current generation, if stored.
pub(crate) async fn read_passage(ctx: &mut Ctx<'_>, seq: u64) -> Result<Option<Passage>> {
    let space = passages(ctx);
    match ctx.kv_get(&seq_key(&space, "p", seq)).await? {
        Some(bytes) => Ok(Some(decode(&bytes, "agent passage")?)),
        None => Ok(None),
    }
}

/// One page of the agent's passages.
pub(crate) async fn passage_page(ctx: &mut Ctx<'_>, page: &PageSpec) -> Result<Vec<Passage>> {
    agent(ctx)?;
    let limit = page.limit.clamp(1, STORE_PAGE_COUNT_MAX);
    let space = passages(ctx);
    let Some(range) = page_range(ctx, (&space, "p", "pi"), page).await? else { return Ok(Vec::new()) };
    let rows = ctx.kv_scan_page(&range, order(page.descending), limit).await?;
    rows.iter().map(|(_, value)| decode(value, "agent passage")).collect()
}

/// Deletes passage `id`; not found when the agent has no such passage.
pub(crate) async fn delete_passage(ctx: &mut Ctx<'_>, indexes: &dyn PassageChanges, id: &str) -> Result<()> {
    agent(ctx)?;
    ensure_counted(ctx).await?;
    let space = passages(ctx);
    let Some(seq) = seq_of(ctx, &space, "pi", id).await? else {
        return Err(Error::NotFound { kind: "passage", id: id.to_string() });
    };
    ctx.kv_delete(&seq_key(&space, "p", seq))?;
    ctx.kv_delete(&index_key(&space, "pi", id))?;
    ctx.kv_delete(&seq_key(&space, "q", seq))?;
    counts_mut(ctx).passages -= 1;
    indexes.changed(ctx, Change::Remove { seq });
    Ok(())
}

/// Ends the current message generation: the agent holds no message from
/// now on, and the old ones wait for [`reclaim_batch`].
pub(crate) async fn end_message_generation(ctx: &mut Ctx<'_>) -> Result<()> {
    ensure_counted(ctx).await?;
    let generation = ctx.state.message_generation;
    push_reclaim(ctx, 'm', generation);
    ctx.state.message_generation = generation + 1;
    counts_mut(ctx).messages = 0;
    ctx.state.unindexed_below_seq = Some(ctx.state.next_seq);
    ctx.state.context = ContextState { start_seq: ctx.state.next_seq, ..ContextState::default() };
    // The runs are kept with the messages they made, and go with them.
    ctx.state.open_runs.clear();
    Ok(())
}

/// Ends the current generation of conversations (the agent is deleted):
/// they and their messages wait for [`reclaim_batch`].
pub(crate) fn end_conversation_generation(ctx: &mut Ctx<'_>) {
    let prefix = conversations(ctx);
    ctx.state.reclaim.push(prefix);
    ctx.state.conversation_generation += 1;
    ctx.state.conversations_count = 0;
}

/// Ends the current passage generation, as [`end_message_generation`].
pub(crate) async fn end_passage_generation(ctx: &mut Ctx<'_>, indexes: &dyn PassageChanges) -> Result<()> {
    ensure_counted(ctx).await?;
    let generation = ctx.state.passage_generation;
    push_reclaim(ctx, 'p', generation);
    ctx.state.passage_generation = generation + 1;
    counts_mut(ctx).passages = 0;
    indexes.forget(ctx.actor_id);
    ctx.state.passage_token = ctx.env.rng.next_u64();
    Ok(())
}

fn push_reclaim(ctx: &mut Ctx<'_>, kind: char, generation: u64) {
    match generation {
        0 => ctx.state.reclaim.extend(legacy_prefixes(kind).iter().map(|p| p.to_string())),
        n => ctx.state.reclaim.push(generation_prefix(kind, n)),
    }
}

/// Deletes up to `keys_max` keys of ended generations; `true` when none
/// is left.
pub(crate) async fn reclaim_batch(ctx: &mut Ctx<'_>, keys_max: usize) -> Result<bool> {
    assert!(keys_max > 0, "a reclaim batch deletes something");
    let mut budget = keys_max;
    while budget > 0 {
        let Some(prefix) = ctx.state.reclaim.first().cloned() else { break };
        let page = budget.min(STORE_PAGE_COUNT_MAX);
        let range = KeyRange::prefix(prefix.into_bytes());
        let rows = ctx.kv_scan_page(&range, ScanOrder::Ascending, page).await?;
        for (key, _) in &rows {
            ctx.kv_delete(key)?;
        }
        budget -= rows.len();
        if rows.len() < page {
            // A short page: nothing of this prefix is left.
            ctx.state.reclaim.remove(0);
        }
    }
    Ok(ctx.state.reclaim.is_empty())
}
