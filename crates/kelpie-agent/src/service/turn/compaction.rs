//! Compaction, the I/O half ([`crate::context`] decides what and writes the
//! texts): the summarizer call and the commit that moves the context
//! window's start past the summarized messages.

use crate::service::providers::Providers;
use kelpie_llm::{ChatMessage, ChatModel, ChatRequest, LlmSettings};
use serde_json::json;

use kelpie_runtime::ActorRef;

use crate::actors::agent::{AgentActor, AgentCommand, AgentReply};
use crate::context::{self, SharedMessage, SUMMARY_ACKNOWLEDGEMENT};
use crate::error::{unexpected, ServiceError, ServiceResult};
use crate::model::{AgentRecord, CompactionSettings, StoredMessage};

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct Compacted {
    /// The messages still in the window, oldest first.
    pub kept: Vec<SharedMessage>,
    /// The summary as the model wrote it (clipped to the settings).
    pub summary: String,
    /// The stored summary message.
    pub message: StoredMessage,
    /// In-context messages before and after, the system message included
    /// (and the summary, when there is one), as Letta counts them.
    pub before: usize,
    pub after: usize,
}

/// The model that writes summaries: the settings' handle when this server
/// serves it, else the agent's own (as Letta falls back).
async fn summarizer(
    providers: &Providers,
    agent: &AgentRecord,
    settings: &CompactionSettings,
) -> LlmSettings {
    match settings.model.as_deref().filter(|handle| *handle != agent.llm.handle) {
        Some(handle) => providers.resolve_llm(Some(handle)).await.unwrap_or_else(|err| {
            tracing::warn!(%err, handle, "the compaction model is not served here; the agent's model summarizes");
            agent.llm.clone()
        }),
        None => agent.llm.clone(),
    }
}

/// The parts a compaction works on.
pub struct CompactionInput<'a> {
    pub agent: &'a AgentRecord,
    /// The in-context messages, oldest first.
    pub history: &'a [SharedMessage],
    pub previous_summary: Option<&'a str>,
    /// Tokens the prompt takes besides the history (system message, tool
    /// schemas, pending input).
    pub fixed_tokens: u64,
    pub settings: &'a CompactionSettings,
    pub now_ms: u64,
    /// The conversation compacted; `None`: the agent's own history.
    pub conversation: Option<&'a str>,
}

/// Summarizes the oldest in-context messages (all of them in mode `all`)
/// and moves the window past them. `None` when there is nothing to
/// summarize. The summary folds in the previous one.
pub async fn compact(
    llm: &dyn ChatModel,
    providers: &Providers,
    agent_ref: &ActorRef<AgentActor>,
    input: CompactionInput<'_>,
) -> ServiceResult<Option<Compacted>> {
    let CompactionInput { agent, history, previous_summary, fixed_tokens, settings, now_ms, conversation } =
        input;
    let Some(cut) = context::cut(history, fixed_tokens, agent.llm.context_window, settings) else {
        return Ok(None);
    };
    assert!(cut > 0 && cut <= history.len(), "a cut evicts something and stays inside the history");
    let (evicted, kept) = history.split_at(cut);
    let model = summarizer(providers, agent, settings).await;
    let transcript =
        context::transcript(previous_summary, evicted, context::transcript_chars_max(model.context_window));
    let mut messages = vec![json!({"role": "system", "content": context::prompt(settings)})];
    if settings.prompt_acknowledgement {
        messages.push(json!({"role": "assistant", "content": SUMMARY_ACKNOWLEDGEMENT}));
    }
    messages.push(json!({"role": "user", "content": transcript}));
    let request = ChatRequest {
        model: model.model.clone(),
        messages: messages.into_iter().map(ChatMessage::from).collect(),
        tools: Vec::new(),
        max_tokens: model.max_tokens,
        temperature: model.temperature,
    };
    let answer = llm.chat(&model, &request).await?;
    let summary = answer.content.unwrap_or_default();
    if summary.trim().is_empty() {
        return Err(ServiceError::Invalid("the summarizer answered with no summary".into()));
    }
    let summary = context::clip_summary(summary.trim(), settings);
    let content = context::summary_content(&summary, settings.mode, now_ms);
    // The window starts at the first kept message, or past every message.
    let start_seq = match kept.first() {
        Some(first) => first.seq,
        None => history.last().map_or(0, |last| last.seq + 1),
    };
    let conversation = conversation.map(str::to_string);
    let command = AgentCommand::Compact { start_seq, summary: summary.clone(), content, conversation };
    let AgentReply::Messages(mut stored) = agent_ref.invoke_local(command).await? else {
        return Err(unexpected("compact"));
    };
    let message = stored.pop().ok_or_else(|| unexpected("compact"))?;
    let before = 1 + usize::from(previous_summary.is_some()) + history.len();
    Ok(Some(Compacted { kept: kept.to_vec(), summary, message, before, after: 2 + kept.len() }))
}
