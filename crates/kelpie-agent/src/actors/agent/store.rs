//! The agent actor's storage layout and the reads and writes its commands
//! and built-in tools are made of. The state is the agent record and the
//! next sequence number; messages (`m/<seq>`) and passages (`p/<seq>`) are
//! extra keys with id-to-seq indexes (`mi/<id>`, `pi/<id>`). Everything here
//! runs inside one invocation, so it commits with the command that called it.

use kelpie_core::{Error, Result};
use kelpie_memory::{rank_passages, Passage};
use kelpie_runtime::ActorContext;
use serde::{Deserialize, Serialize};

use crate::ids::new_id;
use crate::model::{AgentRecord, MessageBody, StoredMessage};

/// What the agent actor persists as its state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentActorState {
    pub agent: Option<AgentRecord>,
    /// Next sequence number of a message or passage.
    pub next_seq: u64,
}

pub(crate) type Ctx<'a> = ActorContext<'a, AgentActorState>;

/// Key prefixes of messages and their id index.
pub(crate) const MESSAGE_PREFIXES: [&str; 2] = ["m/", "mi/"];
/// Key prefixes of passages and their id index.
pub(crate) const PASSAGE_PREFIXES: [&str; 2] = ["p/", "pi/"];

fn not_found(ctx: &Ctx<'_>) -> Error {
    Error::NotFound { kind: "agent", id: ctx.actor_id.id().to_string() }
}

/// The agent, or not found when this actor holds none.
pub(crate) fn agent(ctx: &Ctx<'_>) -> Result<AgentRecord> {
    ctx.state.agent.clone().ok_or_else(|| not_found(ctx))
}

pub(crate) fn agent_mut<'s>(ctx: &'s mut Ctx<'_>) -> Result<&'s mut AgentRecord> {
    let missing = not_found(ctx);
    ctx.state.agent.as_mut().ok_or(missing)
}

fn seq_key(prefix: &str, seq: u64) -> Vec<u8> {
    format!("{prefix}/{seq:016x}").into_bytes()
}

fn index_key(prefix: &str, id: &str) -> Vec<u8> {
    format!("{prefix}/{id}").into_bytes()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Corruption { location: what.to_string(), reason: e.to_string() })
}

fn next_seq(ctx: &mut Ctx<'_>) -> u64 {
    let seq = ctx.state.next_seq;
    ctx.state.next_seq += 1;
    seq
}

/// Every message of the agent, oldest first.
pub(crate) async fn all_messages(ctx: &mut Ctx<'_>) -> Result<Vec<StoredMessage>> {
    agent(ctx)?;
    let rows = ctx.kv_scan_prefix(b"m/").await?;
    rows.iter().map(|(_, value)| decode(value, "agent message")).collect()
}

/// The newest messages among the last `count_max` sequence numbers.
pub(crate) async fn recent_messages(ctx: &mut Ctx<'_>, count_max: usize) -> Result<Vec<StoredMessage>> {
    agent(ctx)?;
    let first = ctx.state.next_seq.saturating_sub(count_max as u64);
    let mut messages = Vec::new();
    for seq in first..ctx.state.next_seq {
        if let Some(bytes) = ctx.kv_get(&seq_key("m", seq)).await? {
            messages.push(decode::<StoredMessage>(&bytes, "agent message")?);
        }
    }
    Ok(messages)
}

/// Stores `message` under the next sequence number (which it takes).
pub(crate) fn put_message(ctx: &mut Ctx<'_>, mut message: StoredMessage) -> Result<StoredMessage> {
    message.seq = next_seq(ctx);
    ctx.kv_put(&seq_key("m", message.seq), encode(&message)?)?;
    ctx.kv_put(&index_key("mi", &message.id), message.seq.to_be_bytes().to_vec())?;
    Ok(message)
}

/// A new message of a step, with `id` or a new one, stored now.
pub(crate) fn append_message(
    ctx: &mut Ctx<'_>,
    (run_id, step_id): (&str, &str),
    body: MessageBody,
    id: Option<String>,
) -> Result<StoredMessage> {
    let message = StoredMessage {
        id: id.unwrap_or_else(|| new_id("message", ctx.env.rng.as_ref())),
        seq: 0,
        created_ms: ctx.env.clock.wall_ms(),
        run_id: Some(run_id.to_string()),
        step_id: Some(step_id.to_string()),
        body,
    };
    put_message(ctx, message)
}

/// Stores `passage` under the next sequence number.
pub(crate) fn put_passage(ctx: &mut Ctx<'_>, passage: &Passage) -> Result<()> {
    let seq = next_seq(ctx);
    ctx.kv_put(&seq_key("p", seq), encode(passage)?)?;
    ctx.kv_put(&index_key("pi", &passage.id), seq.to_be_bytes().to_vec())?;
    Ok(())
}

/// A new passage with a new id, stored now.
pub(crate) fn insert_passage(
    ctx: &mut Ctx<'_>,
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
    put_passage(ctx, &passage)?;
    Ok(passage)
}

/// Every passage of the agent, oldest first.
pub(crate) async fn all_passages(ctx: &mut Ctx<'_>) -> Result<Vec<Passage>> {
    agent(ctx)?;
    let rows = ctx.kv_scan_prefix(b"p/").await?;
    rows.iter().map(|(_, value)| decode(value, "agent passage")).collect()
}

/// The `top_k` passages nearest `query_embedding`, best first.
pub(crate) async fn search_passages(
    ctx: &mut Ctx<'_>,
    query_embedding: &[f32],
    top_k: usize,
) -> Result<Vec<Passage>> {
    let passages = all_passages(ctx).await?;
    let ranked = rank_passages(&passages, query_embedding, top_k);
    Ok(ranked.into_iter().map(|index| passages[index].clone()).collect())
}

/// Deletes passage `id`; not found when the agent has no such passage.
pub(crate) async fn delete_passage(ctx: &mut Ctx<'_>, id: &str) -> Result<()> {
    agent(ctx)?;
    let Some(seq) = ctx.kv_get(&index_key("pi", id)).await? else {
        return Err(Error::NotFound { kind: "passage", id: id.to_string() });
    };
    let seq =
        u64::from_be_bytes(seq.as_slice().try_into().map_err(|_| Error::Corruption {
            location: "passage index".into(),
            reason: "not 8 bytes".into(),
        })?);
    ctx.kv_delete(&seq_key("p", seq))?;
    ctx.kv_delete(&index_key("pi", id))?;
    Ok(())
}

/// Deletes every key under `prefixes`.
pub(crate) async fn delete_prefixes(ctx: &mut Ctx<'_>, prefixes: &[&str]) -> Result<()> {
    for prefix in prefixes {
        for (key, _) in ctx.kv_scan_prefix(prefix.as_bytes()).await? {
            ctx.kv_delete(&key)?;
        }
    }
    Ok(())
}
