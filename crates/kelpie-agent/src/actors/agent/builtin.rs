//! Execution of the built-in tools inside the agent actor's invocation, so
//! their effects commit with the step that called them.
//!
//! A tool's own failure (bad arguments, a block over its limit) is a tool
//! result with `ok = false` for the LLM to see; only storage failures abort
//! the step.

use kelpie_core::Result;
use kelpie_memory::core::INSERT_LINE_END;
use kelpie_memory::working::{MS_PER_SECOND, WORKING_TTL_MS_MAX};
use kelpie_memory::{CoreMemory, MemoryError};
use kelpie_tools::builtin::{
    ARCHIVAL_MEMORY_INSERT, ARCHIVAL_MEMORY_SEARCH, CONVERSATION_SEARCH, CORE_MEMORY_APPEND,
    CORE_MEMORY_REPLACE, MEMORY_INSERT, MEMORY_REPLACE, WORKING_MEMORY_DELETE, WORKING_MEMORY_GET,
    WORKING_MEMORY_SET,
};
use kelpie_tools::SEND_MESSAGE;
use serde_json::Value;

use super::archive::{ArchivalIndexes, TagFilter};
use super::store::{agent_mut, insert_passage, search_messages, Ctx, History};
use crate::limits::TOOL_RETURN_CHARS_MAX;
use crate::model::{ArchiveHits, TextEmbedding};
use kelpie_llm::ToolCall;

/// Results a search tool returns when the LLM does not say.
const SEARCH_RESULTS_COUNT_DEFAULT: usize = 5;
/// Most results a search tool returns.
const SEARCH_RESULTS_COUNT_MAX: usize = 50;

type ToolResult = std::result::Result<String, String>;

fn arg<'a>(args: &'a Value, name: &str) -> std::result::Result<&'a str, String> {
    args.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing string argument `{name}`"))
}

/// An optional integer argument; `Ok(None)` when absent, an error when it
/// is there but not an integer.
fn int_arg(args: &Value, name: &str) -> std::result::Result<Option<i64>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            value.as_i64().map(Some).ok_or_else(|| format!("argument `{name}` must be an integer"))
        }
    }
}

fn count_arg(args: &Value, name: &str) -> usize {
    let count = args.get(name).and_then(Value::as_u64).map_or(SEARCH_RESULTS_COUNT_DEFAULT, |n| n as usize);
    count.clamp(1, SEARCH_RESULTS_COUNT_MAX)
}

fn clip(text: String) -> String {
    if text.chars().count() <= TOOL_RETURN_CHARS_MAX {
        return text;
    }
    text.chars().take(TOOL_RETURN_CHARS_MAX).collect()
}

/// Runs built-in tool `call` of the step whose first message is
/// `step_first_seq` in `history` (a search looks only there, before it:
/// the step's own messages are in the prompt already); `(result, ok)`.
pub(super) async fn run_builtin(
    ctx: &mut Ctx<'_>,
    indexes: &ArchivalIndexes,
    call: &ToolCall,
    (embeddings, archive_hits): (&[TextEmbedding], &[ArchiveHits]),
    (step_first_seq, history): (u64, &History),
) -> Result<(String, bool)> {
    let args: Value = match serde_json::from_str(&call.arguments) {
        Ok(args @ Value::Object(_)) => args,
        _ => return Ok((format!("arguments of {} are not a JSON object", call.name), false)),
    };
    let outcome = match call.name.as_str() {
        SEND_MESSAGE => arg(&args, "message").map(|_| "Sent message successfully.".to_string()),
        CORE_MEMORY_APPEND => core_memory_append(ctx, &args),
        CORE_MEMORY_REPLACE => core_memory_replace(ctx, &args),
        MEMORY_INSERT => memory_insert(ctx, &args),
        MEMORY_REPLACE => memory_replace(ctx, &args),
        WORKING_MEMORY_SET => working_memory_set(ctx, &args),
        WORKING_MEMORY_GET => working_memory_get(ctx, &args),
        WORKING_MEMORY_DELETE => working_memory_delete(ctx, &args),
        ARCHIVAL_MEMORY_INSERT => archival_insert(ctx, indexes, &args, embeddings).await?,
        ARCHIVAL_MEMORY_SEARCH => archival_search(ctx, indexes, &args, (embeddings, archive_hits)).await?,
        CONVERSATION_SEARCH => conversation_search(ctx, &args, (history, step_first_seq)).await?,
        other => Err(format!("tool {other} is not available to this agent")),
    };
    Ok(match outcome {
        Ok(text) => (clip(text), true),
        Err(text) => (clip(text), false),
    })
}

/// Applies a memory tool's `edit` to a copy of core memory, kept only if
/// it succeeds and the system prompt and core memory still leave room for a
/// conversation in the context window; else the model reads why.
fn edit_core<T>(
    ctx: &mut Ctx<'_>,
    edit: impl FnOnce(&mut CoreMemory) -> Result<T, MemoryError>,
) -> Result<T, String> {
    let agent = agent_mut(ctx).map_err(|e| e.to_string())?;
    let mut memory = agent.memory.clone();
    let out = edit(&mut memory).map_err(|e| e.to_string())?;
    crate::context::check_fits(&agent.system, &memory, agent.llm.context_window)?;
    agent.memory = memory;
    Ok(out)
}

fn core_memory_append(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let (label, content) = (arg(args, "label")?, arg(args, "content")?);
    edit_core(ctx, |memory| memory.append(label, content).map(drop))?;
    Ok(format!("Appended to block {label}."))
}

fn core_memory_replace(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let (label, old, new) = (arg(args, "label")?, arg(args, "old_content")?, arg(args, "new_content")?);
    edit_core(ctx, |memory| memory.replace(label, old, new).map(drop))?;
    Ok(format!("Replaced text in block {label}."))
}

fn memory_insert(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let (label, text) = (arg(args, "label")?, arg(args, "new_string")?);
    let insert_line = int_arg(args, "insert_line")?.unwrap_or(INSERT_LINE_END);
    let block = edit_core(ctx, |memory| memory.insert_lines(label, text, insert_line).cloned())?;
    Ok(format!("Inserted into block {label}; it now reads:\n{}", block.value))
}

fn memory_replace(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let (label, old, new) = (arg(args, "label")?, arg(args, "old_string")?, arg(args, "new_string")?);
    let block = edit_core(ctx, |memory| memory.replace_unique(label, old, new).cloned())?;
    Ok(format!("Replaced text in block {label}; it now reads:\n{}", block.value))
}

/// `ttl_seconds` as milliseconds, checked against the working memory's
/// longest TTL before multiplying, so no value can overflow.
fn ttl_ms_arg(args: &Value) -> std::result::Result<u64, String> {
    let ttl_seconds_max = WORKING_TTL_MS_MAX / MS_PER_SECOND;
    let bad = || format!("argument `ttl_seconds` must be an integer in 1..={ttl_seconds_max}");
    let ttl_seconds = int_arg(args, "ttl_seconds")?.ok_or_else(bad)?;
    match u64::try_from(ttl_seconds) {
        Ok(seconds) if (1..=ttl_seconds_max).contains(&seconds) => Ok(seconds * MS_PER_SECOND),
        _ => Err(bad()),
    }
}

fn working_memory_set(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let (key, value, ttl_ms) = (arg(args, "key")?, arg(args, "value")?, ttl_ms_arg(args)?);
    let now_ms = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx).map_err(|e| e.to_string())?;
    agent.working.put(key, value.to_string(), ttl_ms, now_ms).map_err(|e| e.to_string())?;
    debug_assert_eq!(agent.working.get(key, now_ms), Some(value));
    Ok(format!("Stored working memory key {key:?} for {} s.", ttl_ms / MS_PER_SECOND))
}

fn working_memory_get(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let key = arg(args, "key")?;
    let now_ms = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx).map_err(|e| e.to_string())?;
    match agent.working.get(key, now_ms) {
        Some(value) => Ok(value.to_string()),
        None => Err(format!("working memory key {key:?} is not set or has expired")),
    }
}

fn working_memory_delete(ctx: &mut Ctx<'_>, args: &Value) -> ToolResult {
    let key = arg(args, "key")?;
    let now_ms = ctx.env.clock.wall_ms();
    let agent = agent_mut(ctx).map_err(|e| e.to_string())?;
    if agent.working.delete(key, now_ms) {
        Ok(format!("Deleted working memory key {key:?}."))
    } else {
        Err(format!("working memory key {key:?} is not set or has expired"))
    }
}

/// The embedding the service computed for `text` with the step.
fn embedding_of<'a>(embeddings: &'a [TextEmbedding], text: &str) -> std::result::Result<&'a [f32], String> {
    embeddings
        .iter()
        .find(|(embedded, _)| embedded == text)
        .map(|(_, vector)| vector.as_slice())
        .ok_or_else(|| "no embedding was computed for this text".to_string())
}

async fn archival_insert(
    ctx: &mut Ctx<'_>,
    indexes: &ArchivalIndexes,
    args: &Value,
    embeddings: &[TextEmbedding],
) -> Result<ToolResult> {
    let (content, embedding) = match arg(args, "content").and_then(|c| Ok((c, embedding_of(embeddings, c)?)))
    {
        Ok((content, embedding)) => (content.to_string(), embedding.to_vec()),
        Err(e) => return Ok(Err(e)),
    };
    let passage = insert_passage(ctx, indexes, content, Vec::new(), embedding).await?;
    Ok(Ok(format!("Stored passage {}.", passage.id)))
}

/// The agent's own passages nearest the query, ranked by score with what
/// its attached archives found for the same query.
async fn archival_search(
    ctx: &mut Ctx<'_>,
    indexes: &ArchivalIndexes,
    args: &Value,
    (embeddings, archive_hits): (&[TextEmbedding], &[ArchiveHits]),
) -> Result<ToolResult> {
    let (query, query_embedding) =
        match arg(args, "query").and_then(|q| Ok((q, embedding_of(embeddings, q)?))) {
            Ok((query, embedding)) => (query, embedding.to_vec()),
            Err(e) => return Ok(Err(e)),
        };
    let top_k = archival_top_k(args);
    let found = indexes.search(ctx, &query_embedding, top_k, &TagFilter::default()).await?;
    let mut ranked: Vec<(&str, f32)> =
        found.iter().map(|(passage, score)| (passage.text.as_str(), *score)).collect();
    let shared = archive_hits.iter().filter(|hits| hits.query == query).flat_map(|hits| hits.found.iter());
    ranked.extend(shared.map(|(text, score)| (text.as_str(), *score)));
    // Stable: on equal scores the agent's own passages come first.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top_k);
    let texts: Vec<&str> = ranked.into_iter().map(|(text, _)| text).collect();
    Ok(Ok(serde_json::to_string(&texts).unwrap_or_default()))
}

/// The `top_k` of an `archival_memory_search` call (the service asks the
/// attached archives for as many).
pub(crate) fn archival_top_k(args: &Value) -> usize {
    count_arg(args, "top_k")
}

async fn conversation_search(
    ctx: &mut Ctx<'_>,
    args: &Value,
    (history, below_seq): (&History, u64),
) -> Result<ToolResult> {
    let query = match arg(args, "query") {
        Ok(query) => query.to_lowercase(),
        Err(e) => return Ok(Err(e)),
    };
    let limit = count_arg(args, "limit");
    let hits: Vec<String> = search_messages(ctx, history, &query, limit, below_seq)
        .await?
        .iter()
        .map(|message| message.searchable_text())
        .collect();
    Ok(Ok(serde_json::to_string(&hits).unwrap_or_default()))
}
