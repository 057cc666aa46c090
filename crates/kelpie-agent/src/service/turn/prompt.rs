//! The prompt of one step: the system message (system prompt, rendered core
//! memory, live working memory, statistics), the summary of what left the
//! context window, the messages in it, the pending user messages, and the
//! schemas of the agent's tools, in OpenAI's chat shape (the Anthropic
//! client translates). Sizes are estimated with [`crate::context`].

use kelpie_llm::{ChatMessage, ChatRequest};
use kelpie_tools::builtin_tools;
use serde_json::{json, Value};

use crate::actors::tool_store::ToolRecord;
use crate::context::{system_text, tokens_of, SharedMessage};
use crate::model::{AgentRecord, MessageBody};

/// Everything a prompt is made of.
pub(super) struct PromptParts<'a> {
    pub agent: &'a AgentRecord,
    pub custom: &'a [ToolRecord],
    /// The in-context messages, oldest first.
    pub history: &'a [SharedMessage],
    /// The summary message of what left the window, as the agent reads it.
    pub summary: Option<&'a str>,
    /// Messages stored outside the window.
    pub hidden: u64,
    pub pending: &'a [String],
    pub now_ms: u64,
}

pub(super) fn tool_schemas(agent: &AgentRecord, custom: &[ToolRecord]) -> Vec<Value> {
    let builtins = builtin_tools();
    agent
        .tool_ids
        .iter()
        .filter_map(|id| match builtins.iter().find(|tool| tool.id == id) {
            Some(builtin) => Some(builtin.json_schema.clone()),
            None => custom.iter().find(|tool| &tool.id == id).map(|tool| tool.json_schema.clone()),
        })
        .collect()
}

impl PromptParts<'_> {
    /// Estimated tokens of everything but the history.
    pub fn fixed_tokens(&self) -> u64 {
        let system = tokens_of(&system_text(self.agent, self.history.len(), self.hidden, self.now_ms));
        let summary = self.summary.map_or(0, tokens_of);
        let pending: u64 = self.pending.iter().map(|text| tokens_of(text)).sum();
        let tools = tokens_of(&Value::Array(tool_schemas(self.agent, self.custom)).to_string());
        system + summary + pending + tools
    }

    /// Estimated tokens of the history.
    pub fn history_tokens(&self) -> u64 {
        self.history.iter().map(SharedMessage::tokens).sum()
    }

    /// Estimated tokens of the whole prompt.
    pub fn tokens(&self) -> u64 {
        self.fixed_tokens() + self.history_tokens()
    }

    /// The newest messages of the history that fit the whole window beside
    /// the rest of the prompt, from a user message on: what is sent when
    /// even a compaction could not make room.
    pub fn fitting_history(&self) -> &[SharedMessage] {
        let budget = self.agent.llm.context_window.saturating_sub(self.fixed_tokens());
        let mut used = 0;
        let mut start = self.history.len();
        for (index, message) in self.history.iter().enumerate().rev() {
            used += message.tokens();
            if used > budget {
                break;
            }
            start = index;
        }
        while start < self.history.len() && !matches!(self.history[start].body, MessageBody::User { .. }) {
            start += 1;
        }
        &self.history[start..]
    }

    pub fn request(&self, history: &[SharedMessage]) -> ChatRequest {
        let agent = self.agent;
        let hidden = self.hidden + (self.history.len() - history.len()) as u64;
        let system = system_text(agent, history.len(), hidden, self.now_ms);
        let mut messages = Vec::with_capacity(history.len() + self.pending.len() + 2);
        messages.push(ChatMessage::new(&json!({"role": "system", "content": system})));
        if let Some(summary) = self.summary {
            messages.push(ChatMessage::new(&json!({"role": "user", "content": summary})));
        }
        messages.extend(history.iter().filter_map(|message| message.chat().cloned()));
        messages.extend(
            self.pending.iter().map(|text| ChatMessage::new(&json!({"role": "user", "content": text}))),
        );
        ChatRequest {
            model: agent.llm.model.clone(),
            messages,
            tools: tool_schemas(agent, self.custom),
            max_tokens: agent.llm.max_tokens,
            temperature: agent.llm.temperature,
        }
    }
}
