//! Conversations: more message histories of one agent (Letta's
//! conversations), each with its own messages and context window, all
//! sharing the agent's memory blocks, tools and archival memory, which
//! stay in the agent's record and keys.
//!
//! A conversation is a record under `<conversations>r/<slot>` (slots are
//! handed out in creation order and never reused, so listing in creation
//! order is a range read), an id index `<conversations>i/<id>`, and a
//! message space `<conversations>s/<slot>/` laid out as the agent's own
//! messages (see `store`). Deleting one leaves its space to the reclaim
//! batches; deleting the agent ends the whole generation.

use std::ops::Bound;

use kelpie_core::{Error, Result};
use kelpie_storage::KeyRange;
use serde::{Deserialize, Serialize};

use super::store::{
    self, conversation_id_key as id_key, conversation_record_key as record_key, decode, ContextState, Ctx,
    History, MessageChanges, PageSpec,
};
pub(crate) use super::store::{load_conversation as load, save_conversation as save, ConversationRecord};
use crate::context::SharedMessage;
use crate::limits::{AGENT_CONVERSATIONS_COUNT_MAX, STORE_PAGE_COUNT_MAX};
use crate::model::StoredMessage;

/// Changes to a conversation; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConversationPatch {
    pub summary: Option<String>,
    pub model: Option<String>,
    pub model_settings: Option<serde_json::Value>,
    pub last_message_ms: Option<u64>,
}

/// Which conversations a page selects, besides its slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationFilter {
    /// Only those whose summary contains this text (case as given, as
    /// Letta's `summary_search`).
    pub summary_search: Option<String>,
    /// Only those strictly beyond this (created_ms, id) in the page's
    /// order: the cursor of a list over several agents.
    pub beyond: Option<(u64, String)>,
}

impl ConversationFilter {
    fn accepts(&self, record: &ConversationRecord, descending: bool) -> bool {
        let summary_ok = match &self.summary_search {
            Some(text) => record.summary.as_deref().is_some_and(|summary| summary.contains(text.as_str())),
            None => true,
        };
        let beyond_ok = match &self.beyond {
            Some((created_ms, id)) => {
                let here = (record.created_ms, record.id.as_str());
                let cursor = (*created_ms, id.as_str());
                match descending {
                    true => here < cursor,
                    false => here > cursor,
                }
            }
            None => true,
        };
        summary_ok && beyond_ok
    }
}

/// One message of an imported conversation: `compacted` when it was out
/// of the conversation's context window where it was exported (the window
/// then starts after the last such message).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportedMessage {
    pub conversation_id: String,
    pub message: StoredMessage,
    pub compacted: bool,
}

/// Stores `record` as a new conversation under the next slot; refused past
/// `AGENT_CONVERSATIONS_COUNT_MAX`. The record as stored.
pub(crate) fn create(ctx: &mut Ctx<'_>, record: ConversationRecord) -> Result<ConversationRecord> {
    store::agent(ctx)?;
    insert(ctx, record)
}

/// [`create`] without asking whether the agent is visible (an import
/// stores conversations before it is).
pub(crate) fn insert(ctx: &mut Ctx<'_>, mut record: ConversationRecord) -> Result<ConversationRecord> {
    assert!(ctx.state.agent.is_some(), "a conversation is stored in an agent");
    let held = ctx.state.conversations_count;
    if held >= AGENT_CONVERSATIONS_COUNT_MAX as u64 {
        return Err(Error::LimitExceeded {
            what: format!("conversations of agent {}", ctx.actor_id.id()),
            actual: held + 1,
            limit_name: "AGENT_CONVERSATIONS_COUNT_MAX",
            limit: AGENT_CONVERSATIONS_COUNT_MAX as u64,
        });
    }
    record.slot = ctx.state.conversation_slot_next;
    ctx.state.conversation_slot_next += 1;
    ctx.state.conversations_count = held + 1;
    // An empty window starts at the next message stored.
    record.context.start_seq = record.context.start_seq.max(ctx.state.next_seq);
    save(ctx, &record)?;
    let slot = record.slot.to_be_bytes().to_vec();
    let key = id_key(ctx, &record.id);
    ctx.kv_put(&key, slot)?;
    Ok(record)
}

/// Creates `record` as a fork of `source` (the agent's own history when
/// `None`): the source's compaction summary and its newest `count_max`
/// in-context messages are copied, same ids, bodies and times, in order.
pub(crate) async fn fork(
    ctx: &mut Ctx<'_>,
    windows: &dyn MessageChanges,
    recent: Vec<SharedMessage>,
    source_context: ContextState,
    record: ConversationRecord,
) -> Result<ConversationRecord> {
    let record = create(ctx, record)?;
    let mut history = History::Conversation(Box::new(record));
    let first_seq = ctx.state.next_seq;
    for message in recent {
        store::put_message(ctx, windows, &mut history, StoredMessage { seq: 0, ..(*message).clone() })
            .await?;
    }
    match history {
        History::Conversation(mut record) => {
            record.context = ContextState { start_seq: first_seq, ..source_context };
            save(ctx, &record)?;
            Ok(*record)
        }
        History::Agent => Err(Error::Internal("a fork writes into its own conversation".into())),
    }
}

/// Appends imported messages to their conversations, in order (each
/// conversation read once per batch and saved after it).
pub(crate) async fn import_messages(
    ctx: &mut Ctx<'_>,
    windows: &dyn MessageChanges,
    imported: Vec<ImportedMessage>,
) -> Result<()> {
    let mut touched: Vec<History> = Vec::new();
    for ImportedMessage { conversation_id, message, compacted } in imported {
        let at = touched.iter().position(
            |history| matches!(history, History::Conversation(record) if record.id == conversation_id),
        );
        let at = match at {
            Some(at) => at,
            None => {
                let record = store::load_conversation_unchecked(ctx, &conversation_id).await?;
                touched.push(History::Conversation(Box::new(record)));
                touched.len() - 1
            }
        };
        let stored =
            store::put_message(ctx, windows, &mut touched[at], StoredMessage { seq: 0, ..message }).await?;
        if let (true, History::Conversation(record)) = (compacted, &mut touched[at]) {
            record.context.start_seq = stored.seq + 1;
        }
    }
    for history in &touched {
        history.save(ctx)?;
    }
    Ok(())
}

/// Applies `patch` to conversation `id`; the record after.
pub(crate) async fn update(
    ctx: &mut Ctx<'_>,
    id: &str,
    patch: ConversationPatch,
) -> Result<ConversationRecord> {
    let mut record = load(ctx, id).await?;
    if patch.summary.is_some() {
        record.summary = patch.summary;
    }
    if patch.model.is_some() {
        record.model = patch.model;
    }
    if patch.model_settings.is_some() {
        record.model_settings = patch.model_settings;
    }
    if patch.last_message_ms.is_some() {
        record.last_message_ms = patch.last_message_ms;
    }
    record.updated_ms = ctx.env.clock.wall_ms();
    save(ctx, &record)?;
    Ok(record)
}

/// Deletes conversation `id`: gone at once; its messages are left to the
/// reclaim batches. The record as it was.
pub(crate) async fn delete(ctx: &mut Ctx<'_>, id: &str) -> Result<ConversationRecord> {
    let record = load(ctx, id).await?;
    assert!(ctx.state.conversations_count > 0, "a stored conversation is counted");
    let (record_key, id_key) = (record_key(ctx, record.slot), id_key(ctx, id));
    ctx.kv_delete(&record_key)?;
    ctx.kv_delete(&id_key)?;
    let space = store::conversation_space(ctx, record.slot);
    ctx.state.reclaim.push(space);
    ctx.state.conversations_count -= 1;
    Ok(record)
}

/// At most `limit` conversations in creation order (newest first when
/// `descending`) after the one `after` names (an unknown id selects
/// nothing), that pass `filter`. At most `AGENT_CONVERSATIONS_COUNT_MAX`
/// rows are read: every conversation the agent can hold.
pub(crate) async fn page(
    ctx: &mut Ctx<'_>,
    after: Option<&str>,
    filter: &ConversationFilter,
    (limit, descending): (usize, bool),
) -> Result<Vec<ConversationRecord>> {
    store::agent(ctx)?;
    let limit = limit.clamp(1, AGENT_CONVERSATIONS_COUNT_MAX);
    let space = store::conversations(ctx);
    let mut range = KeyRange::prefix(format!("{space}r/"));
    if let Some(id) = after {
        let Some(slot) = store::seq_of(ctx, &space, "i", id).await? else { return Ok(Vec::new()) };
        let cursor = Bound::Excluded(record_key(ctx, slot));
        match descending {
            false => range.start = cursor,
            true => range.end = cursor,
        }
    }
    let mut found = Vec::new();
    let mut scanned = 0;
    while found.len() < limit && scanned < AGENT_CONVERSATIONS_COUNT_MAX {
        let batch = (AGENT_CONVERSATIONS_COUNT_MAX - scanned).min(STORE_PAGE_COUNT_MAX);
        let rows = ctx.kv_scan_page(&range, store::order(descending), batch).await?;
        scanned += rows.len();
        for (_, value) in &rows {
            let record: ConversationRecord = decode(value, "conversation")?;
            if found.len() < limit && filter.accepts(&record, descending) {
                found.push(record);
            }
        }
        match rows.last() {
            Some((key, _)) if rows.len() == batch => match descending {
                false => range.start = Bound::Excluded(key.clone()),
                true => range.end = Bound::Excluded(key.clone()),
            },
            _ => break,
        }
    }
    Ok(found)
}

/// Notes that a run of conversation `id` ended at `ended_ms` (nothing when
/// the conversation is gone).
pub(crate) async fn note_run_end(ctx: &mut Ctx<'_>, id: &str, ended_ms: u64) -> Result<()> {
    match load(ctx, id).await {
        Ok(mut record) => {
            record.last_run_completion_ms = Some(ended_ms);
            save(ctx, &record)
        }
        Err(Error::NotFound { .. }) => Ok(()),
        Err(err) => Err(err),
    }
}

/// One page of the messages of conversation `id`.
pub(crate) async fn message_page(ctx: &mut Ctx<'_>, id: &str, page: &PageSpec) -> Result<Vec<StoredMessage>> {
    let history = History::Conversation(Box::new(load(ctx, id).await?));
    store::message_page(ctx, &history, page).await
}
