//! The context window, sans-IO: what of an agent a prompt holds, how many
//! tokens each part takes (estimated as UTF-8 bytes / 4, as Letta does for
//! OpenAI-compatible models), and compaction — when a prompt would fill the
//! window past [`COMPACTION_TRIGGER_PERCENT`], the oldest messages in it are
//! summarized by the model and leave the window (they stay stored and
//! searchable); the summary takes their place after the system message.
//!
//! The I/O (the summarizer call, the commit) is the turn's
//! (`service::turn::compaction`); here are the decisions and the texts.

use std::sync::{Arc, OnceLock};

use kelpie_llm::ChatMessage;
use kelpie_memory::CoreMemory;
use kelpie_tools::SEND_MESSAGE;
use serde_json::{json, Value};

use crate::ids::rfc3339_seconds;
use crate::model::{AgentRecord, CompactionMode, CompactionSettings, MessageBody, StoredMessage};

/// Bytes per token assumed by the estimates.
pub const BYTES_PER_TOKEN_COUNT: u64 = 4;
/// A prompt estimated over this share of the window (percent) is compacted
/// before it is sent.
pub const COMPACTION_TRIGGER_PERCENT: u64 = 90;
/// The most of the window (percent) the system prompt and core memory may
/// take: a write past it is refused, since no conversation would then fit.
pub const FIXED_CONTEXT_PERCENT_MAX: u64 = 80;
/// Longest summary kept when the settings do not say, in characters.
pub const SUMMARY_CLIP_CHARS_DEFAULT: u64 = 50_000;
/// Where a sliding-window compaction starts evicting when the settings do
/// not say (a share of the in-context messages).
pub const SLIDING_WINDOW_SHARE_DEFAULT: f64 = 0.3;
/// Longest tool result quoted in a summarizer transcript, in characters.
pub const TRANSCRIPT_TOOL_RESULT_CHARS_MAX: usize = 2_000;
/// The most of the summarizer's window (percent) a transcript may fill.
pub const TRANSCRIPT_WINDOW_PERCENT_MAX: u64 = 60;

const SLIDING_PROMPT: &str = "You are compacting the memory of a conversational agent. The transcript holds the oldest messages of its conversation, which are leaving its context window; newer messages stay. Write the summary the agent will read in their place: what the user wants, what happened and what was decided, the details worth keeping (names, numbers, preferences, open questions), and any errors met and how they were resolved. Write in the first person, as the agent. Keep it under 300 words and answer with the summary only.";
const ALL_PROMPT: &str = "You are compacting the memory of a conversational agent. The transcript holds its whole conversation so far, which is leaving its context window. Write the summary the agent will read in its place: what the user wants, what happened and what was decided, the details worth keeping (names, numbers, preferences, open questions), where things stand now and what comes next. Write in the first person, as the agent. Keep it under 500 words and answer with the summary only.";
/// What the summarizer "says" before the transcript when
/// `prompt_acknowledgement` is set.
pub const SUMMARY_ACKNOWLEDGEMENT: &str =
    "Understood. Send the conversation; I will answer with its summary and nothing else.";
/// The words that mark a summary message (clients look for them).
pub const SUMMARY_MARKER: &str = "The following is a summary of the previous messages:";

/// Estimated tokens of `text`.
pub fn tokens_of(text: &str) -> u64 {
    (text.len() as u64).div_ceil(BYTES_PER_TOKEN_COUNT)
}

/// The system message: prompt, core memory, the attached folders with the
/// open files (see [`crate::files`]), working memory live at
/// `now_ms`, and statistics (`shown` messages in view, `hidden` stored
/// outside the window).
pub fn system_text(agent: &AgentRecord, shown: usize, hidden: u64, now_ms: u64) -> String {
    let directories = crate::files::directories_text(&agent.folders, &agent.open_files, agent.file_limits());
    let directories = if directories.is_empty() { directories } else { directories + "\n" };
    format!(
        "{}\n\n{}\n{directories}{}{}",
        agent.system,
        core_memory_text(agent),
        agent.working.render(now_ms),
        metadata_text(agent, shown, hidden, now_ms)
    )
}

pub fn core_memory_text(agent: &AgentRecord) -> String {
    format!("<memory_blocks>\n{}</memory_blocks>", agent.memory.render())
}

pub fn metadata_text(agent: &AgentRecord, shown: usize, hidden: u64, now_ms: u64) -> String {
    format!(
        "<memory_metadata>\nRecent messages in view: {shown}\nEarlier messages out of view (conversation_search finds them): {hidden}\nWorking memory entries: {}\n</memory_metadata>",
        agent.working.len(now_ms),
    )
}

/// A stored message as an OpenAI chat message, printed from borrows (no
/// value is built); `None` for what is not part of a prompt.
pub fn chat_message(message: &StoredMessage) -> Option<ChatMessage> {
    in_prompt(message).then(|| ChatMessage::new(&ChatView(message)))
}

/// A stored message of a context window, shared (not copied) between the
/// agent actor's window cache and the turns that prompt with it, with its
/// chat JSON and token count made at most once for all of them: a full
/// window is hundreds of messages and every step sends all of them.
///
/// The message cannot change once shared (no `DerefMut`), so what was
/// printed from it stays true; an edited message is stored, and shared,
/// as a new value.
#[derive(Debug, Clone)]
pub struct SharedMessage(Arc<Printed>);

#[derive(Debug)]
struct Printed {
    message: StoredMessage,
    chat: OnceLock<Option<ChatMessage>>,
}

impl SharedMessage {
    /// The message's [`chat_message`], printed on first use.
    pub fn chat(&self) -> Option<&ChatMessage> {
        self.0.chat.get_or_init(|| chat_message(&self.0.message)).as_ref()
    }

    /// The message's [`message_tokens`], from its printed chat JSON.
    pub fn tokens(&self) -> u64 {
        match self.chat() {
            Some(chat) => tokens_of(chat.json()),
            None => message_tokens(&self.0.message),
        }
    }
}

impl From<StoredMessage> for SharedMessage {
    fn from(message: StoredMessage) -> SharedMessage {
        SharedMessage(Arc::new(Printed { message, chat: OnceLock::new() }))
    }
}

impl std::ops::Deref for SharedMessage {
    type Target = StoredMessage;

    fn deref(&self) -> &StoredMessage {
        &self.0.message
    }
}

impl std::borrow::Borrow<StoredMessage> for SharedMessage {
    fn borrow(&self) -> &StoredMessage {
        &self.0.message
    }
}

impl PartialEq for SharedMessage {
    fn eq(&self, other: &SharedMessage) -> bool {
        self.0.message == other.0.message
    }
}

impl serde::Serialize for SharedMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.message.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for SharedMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SharedMessage, D::Error> {
        StoredMessage::deserialize(deserializer).map(SharedMessage::from)
    }
}

/// Whether a message is sent to the model as part of the history.
pub fn in_prompt(message: &StoredMessage) -> bool {
    !matches!(message.body, MessageBody::ApprovalResponse { .. })
}

/// Estimated tokens of a message in a prompt: the bytes of its
/// [`chat_message`] JSON, counted as they are written (no value is built:
/// a turn counts every message of its window).
pub fn message_tokens(message: &StoredMessage) -> u64 {
    let mut counted = ByteCount(0);
    serde_json::to_writer(&mut counted, &ChatView(message)).expect("a counting writer does not fail");
    counted.0.div_ceil(BYTES_PER_TOKEN_COUNT)
}

/// A writer that only counts the bytes written to it.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message's chat JSON, serialized from borrows: what [`chat_message`]
/// prints and [`message_tokens`] counts.
struct ChatView<'a>(&'a StoredMessage);

impl serde::Serialize for ChatView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let map = match &self.0.body {
            MessageBody::User { content } | MessageBody::Summary { content, .. } => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("role", "user")?;
                map.serialize_entry("content", content)?;
                map
            }
            MessageBody::Assistant { content, tool_calls, .. } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("role", "assistant")?;
                map.serialize_entry("content", content)?;
                if !tool_calls.is_empty() {
                    map.serialize_entry("tool_calls", &CallsView(tool_calls))?;
                }
                map
            }
            MessageBody::Tool { tool_call_id, result, .. } => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("role", "tool")?;
                map.serialize_entry("tool_call_id", tool_call_id)?;
                map.serialize_entry("content", result)?;
                map
            }
            MessageBody::ApprovalResponse { .. } => return serializer.serialize_unit(),
        };
        map.end()
    }
}

struct CallsView<'a>(&'a [kelpie_llm::ToolCall]);

impl serde::Serialize for CallsView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(CallView))
    }
}

struct CallView<'a>(&'a kelpie_llm::ToolCall);

impl serde::Serialize for CallView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let call = self.0;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("id", &call.id)?;
        map.serialize_entry("type", "function")?;
        map.serialize_entry("function", &FunctionView(call))?;
        map.end()
    }
}

struct FunctionView<'a>(&'a kelpie_llm::ToolCall);

impl serde::Serialize for FunctionView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("name", &self.0.name)?;
        map.serialize_entry("arguments", &self.0.arguments)?;
        map.end()
    }
}

/// The system prompt and core memory: refused when they would take more
/// than `FIXED_CONTEXT_PERCENT_MAX` of the window (no conversation would
/// fit beside them); the error names the budget.
pub fn check_fixed_fits(agent: &AgentRecord) -> Result<(), String> {
    check_fits(&agent.system, &agent.memory, agent.llm.context_window)
}

/// [`check_fixed_fits`] for a system prompt, a core memory and a window.
pub fn check_fits(system: &str, memory: &CoreMemory, window: u64) -> Result<(), String> {
    let used =
        tokens_of(system) + tokens_of(&format!("<memory_blocks>\n{}</memory_blocks>", memory.render()));
    let budget = window * FIXED_CONTEXT_PERCENT_MAX / 100;
    if used > budget {
        return Err(format!(
            "the system prompt and core memory would take about {used} tokens; at most {budget} may \
             ({FIXED_CONTEXT_PERCENT_MAX}% of the model's context window of {window} tokens)"
        ));
    }
    Ok(())
}

/// Whether a prompt of `tokens` must be compacted first.
pub fn over_trigger(tokens: u64, window: u64) -> bool {
    tokens * 100 > window * COMPACTION_TRIGGER_PERCENT
}

/// The settings with every default filled in, as Letta shows them.
pub fn settings_json(agent: &AgentRecord) -> Value {
    let settings = agent.compaction.clone().unwrap_or_default();
    json!({
        "model": settings.model.clone().unwrap_or_else(|| agent.llm.handle.clone()),
        "model_settings": settings.model_settings,
        "prompt": prompt(&settings),
        "prompt_acknowledgement": settings.prompt_acknowledgement,
        "clip_chars": clip_chars(&settings),
        "mode": settings.mode,
        "sliding_window_percentage": share(&settings),
    })
}

/// The summarizer's instructions.
pub fn prompt(settings: &CompactionSettings) -> String {
    match &settings.prompt {
        Some(prompt) => prompt.clone(),
        None if settings.mode.is_sliding() => SLIDING_PROMPT.to_string(),
        None => ALL_PROMPT.to_string(),
    }
}

fn clip_chars(settings: &CompactionSettings) -> u64 {
    settings.clip_chars.unwrap_or(SUMMARY_CLIP_CHARS_DEFAULT)
}

fn share(settings: &CompactionSettings) -> f64 {
    settings.sliding_window_percentage.unwrap_or(SLIDING_WINDOW_SHARE_DEFAULT)
}

/// `changes` (the JSON a client sent) merged over `current`: only the
/// fields given change; a new mode without a new prompt takes the new
/// mode's default prompt.
pub fn merge_settings(
    current: Option<&CompactionSettings>,
    changes: &Value,
) -> Result<CompactionSettings, String> {
    let Some(changes) = changes.as_object() else {
        return Err("compaction_settings must be an object".into());
    };
    let current = current.cloned().unwrap_or_default();
    let mut merged = serde_json::to_value(&current).expect("settings serialize");
    for (key, value) in changes {
        merged[key] = value.clone();
    }
    let mut merged: CompactionSettings =
        serde_json::from_value(merged).map_err(|e| format!("compaction_settings: {e}"))?;
    if merged.mode != current.mode && !changes.contains_key("prompt") {
        merged.prompt = None;
    }
    check_settings(&merged)?;
    Ok(merged)
}

/// Checks settings a client sent.
pub fn check_settings(settings: &CompactionSettings) -> Result<(), String> {
    let share = share(settings);
    if !(0.0..=0.9).contains(&share) {
        return Err(format!("sliding_window_percentage {share} is outside 0..=0.9"));
    }
    if settings.clip_chars == Some(0) {
        return Err("clip_chars must be positive".into());
    }
    if settings.prompt.as_ref().is_some_and(|p| p.trim().is_empty()) {
        return Err("prompt must not be empty".into());
    }
    if let Some(model_settings) = settings.model_settings.as_ref().filter(|value| !value.is_null()) {
        crate::model_settings::check(model_settings)
            .map_err(|reason| format!("compaction_settings.{reason}"))?;
    }
    Ok(())
}

/// Where a compaction of `history` (the in-context messages, oldest first)
/// cuts: the index of the first message kept, so `history[..cut]` is
/// summarized. A sliding window evicts the oldest `share + 10 %` of the
/// messages, then 10 % more at a time, until the rest (with `fixed_tokens`
/// for the system message and the pending input) fits in `1 - share` of the
/// window; the kept part starts at a user message, so no tool result is
/// cut from its call. When no such cut exists, or in mode `all`, every
/// message goes. `None` when there is nothing to summarize.
pub fn cut<M: std::borrow::Borrow<StoredMessage>>(
    history: &[M],
    fixed_tokens: u64,
    window: u64,
    settings: &CompactionSettings,
) -> Option<usize> {
    let evictable =
        history.iter().filter(|m| !matches!(m.borrow().body, MessageBody::Summary { .. })).count();
    if evictable == 0 {
        return None;
    }
    if settings.mode.is_sliding() {
        let share = share(settings);
        let goal_tokens = ((1.0 - share) * window as f64) as u64;
        let count = history.len();
        let mut eviction = share;
        loop {
            eviction += 0.1;
            if eviction >= 1.0 {
                break;
            }
            let from = ((eviction * count as f64).round() as usize).max(1);
            let Some(start) =
                (from..count).find(|&i| matches!(history[i].borrow().body, MessageBody::User { .. }))
            else {
                continue;
            };
            let kept: u64 = history[start..].iter().map(|m| message_tokens(m.borrow())).sum();
            if fixed_tokens + kept <= goal_tokens {
                return Some(start);
            }
        }
    }
    Some(history.len())
}

fn clip(text: &str, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The transcript a summarizer reads: the previous summary, then each
/// evicted message on its own line (`[role] text`, a call as
/// `-> name(arguments)`), at most `chars_max` characters (the middle is
/// dropped, with a note, when longer).
pub fn transcript<M: std::borrow::Borrow<StoredMessage>>(
    previous_summary: Option<&str>,
    evicted: &[M],
    chars_max: usize,
) -> String {
    let mut lines = Vec::new();
    if let Some(summary) = previous_summary {
        lines.push(format!("[summary of what came before] {summary}"));
    }
    for message in evicted {
        match &message.borrow().body {
            MessageBody::User { content } => lines.push(format!("[user] {content}")),
            MessageBody::Assistant { content, tool_calls, .. } => {
                let mut line = format!("[assistant] {}", content.as_deref().unwrap_or_default());
                for call in tool_calls {
                    line.push_str(&format!(" -> {}({})", call.name, call.arguments));
                }
                lines.push(line);
            }
            MessageBody::Tool { name, .. } if name == SEND_MESSAGE => {}
            MessageBody::Tool { name, result, .. } => {
                lines.push(format!("[tool {name}] {}", clip(result, TRANSCRIPT_TOOL_RESULT_CHARS_MAX)))
            }
            MessageBody::Summary { .. } | MessageBody::ApprovalResponse { .. } => {}
        }
    }
    let text = lines.join("\n");
    if text.chars().count() <= chars_max {
        return format!("<transcript>\n{text}\n</transcript>\nWrite the summary.");
    }
    let half = chars_max / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(text.chars().count() - half).collect();
    format!("<transcript>\n{head}\n[… the middle of the transcript was left out to fit …]\n{tail}\n</transcript>\nWrite the summary.")
}

/// The longest transcript a summarizer with `window` tokens reads.
pub fn transcript_chars_max(window: u64) -> usize {
    (window * TRANSCRIPT_WINDOW_PERCENT_MAX / 100 * BYTES_PER_TOKEN_COUNT) as usize
}

/// `summary` cut to the settings' `clip_chars`.
pub fn clip_summary(summary: &str, settings: &CompactionSettings) -> String {
    let chars_max = clip_chars(settings) as usize;
    match summary.char_indices().nth(chars_max) {
        Some((at, _)) => format!("{}... [summary cut to fit]", &summary[..at]),
        None => summary.to_string(),
    }
}

/// The message that holds a summary, as the agent reads it (the shape
/// Letta gives it: a system alert in JSON, listed as a user message).
pub fn summary_content(summary: &str, mode: CompactionMode, now_ms: u64) -> String {
    let scope = match mode.is_sliding() {
        true => "Earlier messages of this conversation",
        false => "The messages of this conversation so far",
    };
    let message = format!(
        "Note: {scope} were moved out of the context window to save space; conversation_search still finds them.\n{SUMMARY_MARKER}\n {summary}"
    );
    let time = rfc3339_seconds(now_ms);
    serde_json::to_string_pretty(&json!({"type": "system_alert", "message": message, "time": time}))
        .expect("a JSON object serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, body: MessageBody) -> StoredMessage {
        StoredMessage { id: format!("message-{seq}"), seq, created_ms: 0, run_id: None, step_id: None, body }
    }

    fn user(seq: u64, text: &str) -> StoredMessage {
        message(seq, MessageBody::User { content: text.into() })
    }

    fn reply(seq: u64, text: &str) -> StoredMessage {
        message(
            seq,
            MessageBody::Assistant {
                content: Some(text.into()),
                tool_calls: Vec::new(),
                awaiting_approval: false,
            },
        )
    }

    /// `turns` user/assistant pairs, each message about `tokens` tokens.
    fn history(turns: u64, tokens: usize) -> Vec<StoredMessage> {
        let text = "x".repeat(tokens * 4);
        (0..turns).flat_map(|t| [user(2 * t, &text), reply(2 * t + 1, &text)]).collect()
    }

    #[test]
    fn a_message_is_counted_as_the_bytes_of_its_chat_json() {
        let call = kelpie_llm::ToolCall {
            id: "call_1".into(),
            name: "send_message".into(),
            arguments: "{\"message\":\"h\\u00e9llo \\\"quoted\\\"\\n\"}".into(),
        };
        let bodies = [
            MessageBody::User { content: "plain \"quoted\" \u{1F600} \u{7} text".into() },
            MessageBody::Summary { summary: "s".into(), content: "a summary".into() },
            MessageBody::Assistant {
                content: None,
                tool_calls: vec![call.clone(), call],
                awaiting_approval: false,
            },
            MessageBody::Assistant {
                content: Some("thinking".into()),
                tool_calls: Vec::new(),
                awaiting_approval: true,
            },
            MessageBody::Tool {
                tool_call_id: "call_1".into(),
                name: "send_message".into(),
                result: "{\"status\": \"OK\"}".into(),
                ok: true,
                stdout: Some("printed".into()),
                stderr: None,
            },
            MessageBody::ApprovalResponse { decisions: Vec::new() },
        ];
        let function =
            json!({"name": "send_message", "arguments": "{\"message\":\"h\\u00e9llo \\\"quoted\\\"\\n\"}"});
        let call = json!({"id": "call_1", "type": "function", "function": function});
        let expected = [
            Some(json!({"role": "user", "content": "plain \"quoted\" \u{1F600} \u{7} text"})),
            Some(json!({"role": "user", "content": "a summary"})),
            Some(json!({"role": "assistant", "content": null, "tool_calls": [call, call]})),
            Some(json!({"role": "assistant", "content": "thinking"})),
            Some(json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"OK\"}"})),
            None,
        ];
        for ((seq, body), expected) in bodies.into_iter().enumerate().zip(expected) {
            let message = message(seq as u64, body);
            let printed = chat_message(&message);
            assert_eq!(printed.as_ref().map(ChatMessage::to_value), expected);
            let counted = printed.as_ref().map_or(tokens_of("null"), |printed| tokens_of(printed.json()));
            assert_eq!(message_tokens(&message), counted, "{printed:?}");
        }
        // A count at the rounding edge: 9 bytes are 3 tokens, 8 are 2.
        assert_eq!(tokens_of("123456789"), 3);
        assert_eq!(tokens_of("12345678"), 2);
    }

    #[test]
    fn a_shared_message_is_printed_once_for_every_holder_and_counts_as_the_message() {
        let stored = reply(7, "hello \"there\"");
        let shared = SharedMessage::from(stored.clone());
        let holder = shared.clone();
        let printed = shared.chat().expect("a reply is part of a prompt");
        assert_eq!(printed, &chat_message(&stored).unwrap());
        assert!(std::ptr::eq(printed.json(), holder.chat().unwrap().json()), "printed once, shared");
        assert_eq!(shared.tokens(), message_tokens(&stored));
        assert_eq!(*holder, stored);
        let wire = serde_json::to_string(&shared).unwrap();
        assert_eq!(wire, serde_json::to_string(&stored).unwrap());
        assert_eq!(serde_json::from_str::<SharedMessage>(&wire).unwrap(), shared);
        let approval =
            SharedMessage::from(message(8, MessageBody::ApprovalResponse { decisions: Vec::new() }));
        assert_eq!(approval.chat(), None);
        assert_eq!(approval.tokens(), message_tokens(&approval));
    }

    #[test]
    fn a_sliding_cut_keeps_a_tail_that_fits_and_starts_at_a_user_message() {
        let history = history(10, 100);
        let settings = CompactionSettings::default();
        // 20 messages of ~110 tokens, a window of 2 000: the tail must fit in 1 400.
        let cut = cut(&history, 100, 2_000, &settings).unwrap();
        assert!(matches!(history[cut].body, MessageBody::User { .. }));
        let kept: u64 = history[cut..].iter().map(message_tokens).sum();
        assert!(100 + kept <= 1_400, "kept {kept}");
        assert!(cut >= 8, "at least share + 10 % of 20 messages go: {cut}");
        // Nothing fits: everything goes.
        assert_eq!(super::cut(&history, 5_000, 2_000, &settings), Some(20));
        let all = CompactionSettings { mode: CompactionMode::All, ..CompactionSettings::default() };
        assert_eq!(super::cut(&history, 0, 1_000_000, &all), Some(20));
        assert_eq!(super::cut::<StoredMessage>(&[], 0, 2_000, &settings), None);
    }

    #[test]
    fn transcripts_and_summaries_fit_their_limits() {
        let long = "y".repeat(10_000);
        let call =
            kelpie_llm::ToolCall { id: "c".into(), name: "lookup".into(), arguments: "{\"q\":1}".into() };
        let evicted = vec![
            user(0, "hello"),
            message(
                1,
                MessageBody::Assistant {
                    content: Some("checking".into()),
                    tool_calls: vec![call],
                    awaiting_approval: false,
                },
            ),
            message(
                2,
                MessageBody::Tool {
                    tool_call_id: "c".into(),
                    name: "lookup".into(),
                    result: long,
                    ok: true,
                    stdout: None,
                    stderr: None,
                },
            ),
        ];
        let text = transcript(Some("before"), &evicted, 100_000);
        assert!(text.contains(
            "[summary of what came before] before\n[user] hello\n[assistant] checking -> lookup({\"q\":1})"
        ));
        assert!(text.contains(&format!("[tool lookup] {}…", "y".repeat(TRANSCRIPT_TOOL_RESULT_CHARS_MAX))));
        let short = transcript(None, &evicted, 200);
        assert!(short.contains("left out to fit") && short.chars().count() < 400, "{short}");
        let settings = CompactionSettings { clip_chars: Some(5), ..CompactionSettings::default() };
        assert_eq!(clip_summary("abcdefgh", &settings), "abcde... [summary cut to fit]");
        let content = summary_content("We met.", CompactionMode::SlidingWindow, 0);
        let packed: Value = serde_json::from_str(&content).unwrap();
        assert_eq!(packed["type"], "system_alert");
        assert!(packed["message"].as_str().unwrap().ends_with(&format!("{SUMMARY_MARKER}\n We met.")));
    }
}
