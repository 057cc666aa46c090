//! What an agent actor persists: the agent record (config, core memory,
//! working memory, attached tools) in its state, and messages and passages
//! as extra keys.

use std::collections::BTreeMap;

use kelpie_llm::{EmbeddingSettings, LlmSettings, ToolCall};
use kelpie_memory::{CoreMemory, WorkingMemory};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ServiceError, ServiceResult};

/// Longest agent name, in bytes.
pub const AGENT_NAME_BYTES_MAX: usize = 256;
/// Most tags on one agent.
pub const AGENT_TAGS_COUNT_MAX: usize = 64;

/// The persisted agent, minus messages and passages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub system: String,
    pub description: Option<String>,
    pub metadata: Option<Value>,
    pub tags: Vec<String>,
    pub memory: CoreMemory,
    /// The agent's scratchpad with expiring entries, edited only by its own
    /// tool calls. Absent in records written before it existed.
    #[serde(default)]
    pub working: WorkingMemory,
    pub llm: LlmSettings,
    pub embedding: EmbeddingSettings,
    /// Attached tools, built-in and custom, by id, in attach order.
    pub tool_ids: Vec<String>,
    /// Environment variables given to this agent's tool calls (Letta's
    /// `secrets`). Never rendered back with their values.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// How the agent's context is compacted (Letta's `compaction_settings`);
    /// `None` uses the defaults.
    #[serde(default)]
    pub compaction: Option<CompactionSettings>,
    /// Letta's `tool_rules`, enforced by the loop ([`crate::tool_rules`]).
    #[serde(default)]
    pub tool_rules: Vec<crate::tool_rules::ToolRule>,
    /// The identities the agent belongs to (their store holds the same
    /// links; see `service::identities`).
    #[serde(default)]
    pub identity_ids: Vec<String>,
    /// Attached folders (Letta's sources), as the prompt shows them.
    #[serde(default)]
    pub folders: Vec<crate::files::AgentFolder>,
    /// Files open in the context, least recently used first.
    #[serde(default)]
    pub open_files: Vec<crate::files::OpenFile>,
    /// Letta's `max_files_open`; `None` takes the default of the context window.
    #[serde(default)]
    pub max_files_open: Option<u32>,
    /// Letta's `per_file_view_window_char_limit`; `None` as above.
    #[serde(default)]
    pub file_window_chars: Option<u64>,
    /// Letta's `enable_sleeptime`: a sleeptime group this agent manages
    /// runs after its turns only when set.
    #[serde(default)]
    pub enable_sleeptime: Option<bool>,
    /// The group this agent manages (Letta's `managed_group`), by id; the
    /// group store holds the same link (see `service::groups`).
    #[serde(default)]
    pub managed_group: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl AgentRecord {
    /// `(max_files_open, per_file_view_window_char_limit)`: as set, else
    /// Letta's defaults for the context window.
    pub fn file_limits(&self) -> (u32, u64) {
        let (open, chars) = crate::files::default_limits(self.llm.context_window);
        (self.max_files_open.unwrap_or(open), self.file_window_chars.unwrap_or(chars))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum MessageBody {
    User {
        content: String,
    },
    Assistant {
        content: Option<String>,
        tool_calls: Vec<ToolCall>,
        /// Its calls wait for the client's approval (Letta's approval
        /// request): none ran; an [`MessageBody::ApprovalResponse`] and
        /// their results follow once the client answers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        awaiting_approval: bool,
    },
    /// The client's answer to an approval request, one decision per held call.
    ApprovalResponse {
        decisions: Vec<ApprovalDecision>,
    },
    Tool {
        tool_call_id: String,
        name: String,
        result: String,
        ok: bool,
        /// What a sandboxed tool printed; absent for built-in tools.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdout: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stderr: Option<String>,
    },
    /// The summary a compaction wrote of the messages it moved out of the
    /// context window: `summary` as the model wrote it, `content` the
    /// message the agent reads (and Letta's clients list as a user message).
    Summary {
        summary: String,
        content: String,
    },
}

/// How a compaction chooses what to summarize (Letta's names; the
/// `self_compact_*` modes summarize as their plain counterparts do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionMode {
    /// The oldest messages, until the rest fits comfortably.
    #[default]
    SlidingWindow,
    /// Every message in the context window.
    All,
    SelfCompactSlidingWindow,
    SelfCompactAll,
}

impl CompactionMode {
    pub fn is_sliding(self) -> bool {
        matches!(self, CompactionMode::SlidingWindow | CompactionMode::SelfCompactSlidingWindow)
    }
}

/// Letta's `CompactionSettings`, as stored: `None` fields take defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompactionSettings {
    /// The model handle that writes summaries (default: the agent's own).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub model_settings: Option<Value>,
    /// The summarizer's instructions (default: Kelpie's, per mode).
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub prompt_acknowledgement: bool,
    /// Longest summary kept, in characters (default 50 000; `null` in a
    /// request keeps the default).
    #[serde(default)]
    pub clip_chars: Option<u64>,
    #[serde(default)]
    pub mode: CompactionMode,
    /// Share of the window the first eviction starts from (default 0.3).
    #[serde(default)]
    pub sliding_window_percentage: Option<f64>,
}

/// The process that runs a run: the node and the boot of its server
/// process (drawn at every start), so a run found open under another boot
/// was left by a process that is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOwner {
    pub node_id: String,
    pub boot_id: String,
}

/// Letta's `RunStatus` (`created` is never stored: a run is stored running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The status Letta names `name`, if any (`created` is `running` here).
    pub fn parse(name: &str) -> Option<RunStatus> {
        match name {
            "created" | "running" => Some(RunStatus::Running),
            "completed" => Some(RunStatus::Completed),
            "failed" => Some(RunStatus::Failed),
            "cancelled" => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

/// How a run began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStart {
    pub run_id: String,
    /// Started by `messages/async` (Letta's `background`).
    pub background: bool,
    pub created_ms: u64,
    /// The client's key for the turn (`Idempotency-Key`, or the `otid` of
    /// its first message): a turn sent again with it runs once.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The conversation the turn runs in; `None`: the agent's own history.
    #[serde(default)]
    pub conversation_id: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEnd {
    pub status: RunStatus,
    pub stop_reason: String,
    pub error: Option<String>,
}

impl RunEnd {
    pub fn completed(stop_reason: &str) -> RunEnd {
        RunEnd { status: RunStatus::Completed, stop_reason: stop_reason.to_string(), error: None }
    }

    pub fn failed(error: String) -> RunEnd {
        RunEnd { status: RunStatus::Failed, stop_reason: "error".into(), error: Some(error) }
    }

    pub fn cancelled() -> RunEnd {
        RunEnd { status: RunStatus::Cancelled, stop_reason: "cancelled".into(), error: None }
    }
}

/// One step of a run: one LLM call and what it led to, committed with its
/// messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub created_ms: u64,
    /// The model handle that answered; `None` for a step that only stored
    /// the client's answer to an approval request.
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Seqs of the messages the step stored, in order.
    pub message_seqs: Vec<u64>,
    /// How long the step's parts took (`None` for an approval's commit and
    /// for steps stored before timings were kept).
    #[serde(default)]
    pub timing: Option<StepTiming>,
    /// The client's feedback on the step (Letta's `positive`/`negative`).
    #[serde(default)]
    pub feedback: Option<StepFeedback>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The transaction id a client attached to the step.
    #[serde(default)]
    pub tid: Option<String>,
}

/// Where a step's time went, measured by the agent loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Wall time the step began (ms since the Unix epoch).
    pub start_ms: u64,
    /// Building the prompt and the model's answer.
    pub llm_request_ns: u64,
    /// Running the step's sandboxed and MCP tool calls and embedding the
    /// texts its archival calls store or search for (built-in tools run
    /// inside the step's commit and are not counted here).
    pub tool_execution_ns: u64,
    /// From the step's start until its commit was sent.
    pub step_ns: u64,
}

/// What `PATCH /v1/steps/{id}/...` changes; `None` leaves a field as is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepPatch {
    /// `Some(None)` clears the feedback.
    pub feedback: Option<Option<StepFeedback>>,
    pub tags: Option<Vec<String>>,
    pub tid: Option<String>,
}

/// Letta's `FeedbackType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepFeedback {
    Positive,
    Negative,
}

impl StepFeedback {
    pub fn as_str(self) -> &'static str {
        match self {
            StepFeedback::Positive => "positive",
            StepFeedback::Negative => "negative",
        }
    }

    pub fn parse(name: &str) -> Option<StepFeedback> {
        match name {
            "positive" => Some(StepFeedback::Positive),
            "negative" => Some(StepFeedback::Negative),
            _ => None,
        }
    }
}

/// A run as its agent stores it, with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub agent_id: String,
    pub seq: u64,
    pub status: RunStatus,
    pub stop_reason: Option<String>,
    pub error: Option<String>,
    pub created_ms: u64,
    pub completed_ms: Option<u64>,
    pub background: bool,
    pub owner: RunOwner,
    pub steps: Vec<StepRecord>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The conversation the run's messages are in (`None`: the agent's own
    /// history).
    #[serde(default)]
    pub conversation_id: Option<String>,
}

impl RunRecord {
    /// Run `start` of `agent_id` as it begins: running, no step yet, under
    /// `owner`, at `seq` (0 while not stored).
    pub fn running(start: &RunStart, agent_id: &str, seq: u64, owner: RunOwner) -> RunRecord {
        RunRecord {
            id: start.run_id.clone(),
            agent_id: agent_id.to_string(),
            seq,
            status: RunStatus::Running,
            stop_reason: None,
            error: None,
            created_ms: start.created_ms,
            completed_ms: None,
            background: start.background,
            owner,
            steps: Vec::new(),
            idempotency_key: start.idempotency_key.clone(),
            conversation_id: start.conversation_id.clone(),
        }
    }

    pub fn prompt_tokens(&self) -> u64 {
        self.steps.iter().map(|step| step.prompt_tokens).sum()
    }

    pub fn completion_tokens(&self) -> u64 {
        self.steps.iter().map(|step| step.completion_tokens).sum()
    }
}

/// The runs this process is running now (their tasks are alive), shared by
/// the run service, which adds each before anything stores it and removes
/// it when its task ends, and the agent actors, which end any open run of
/// this process that is not here: a task that ended without recording its
/// run's end.
#[derive(Debug, Default)]
pub struct LiveRuns {
    runs: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl LiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.runs.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn insert(&self, run_id: &str) {
        let fresh = self.lock().insert(run_id.to_string());
        assert!(fresh, "run ids are never reused");
    }

    pub fn remove(&self, run_id: &str) {
        self.lock().remove(run_id);
    }

    pub fn contains(&self, run_id: &str) -> bool {
        self.lock().contains(run_id)
    }
}

/// A run still running, as the agent's state lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRun {
    pub run_id: String,
    pub seq: u64,
    pub owner: RunOwner,
}

/// One persisted message of an agent's conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: String,
    pub seq: u64,
    pub created_ms: u64,
    pub run_id: Option<String>,
    pub step_id: Option<String>,
    pub body: MessageBody,
}

impl StoredMessage {
    /// The text a conversation search looks at.
    pub fn searchable_text(&self) -> String {
        match &self.body {
            MessageBody::User { content } => content.clone(),
            MessageBody::Assistant { content, tool_calls, .. } => {
                let mut text = content.clone().unwrap_or_default();
                for call in tool_calls {
                    text.push(' ');
                    text.push_str(&call.arguments);
                }
                text
            }
            MessageBody::Tool { result, .. } => result.clone(),
            MessageBody::Summary { summary, .. } => summary.clone(),
            MessageBody::ApprovalResponse { .. } => String::new(),
        }
    }
}

/// What the client decided for one held tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub tool_call_id: String,
    pub verdict: ApprovalVerdict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalVerdict {
    /// Run it (`approve: true`).
    Approve { reason: Option<String> },
    /// Do not run it; the model is told why (`approve: false`).
    Deny { reason: Option<String> },
    /// The client ran it itself and gives its return (`type: "tool"`).
    ClientReturn { tool_return: String, ok: bool },
}

impl ApprovalDecision {
    /// Letta's `ApprovalReturn` / `ToolReturn` of this decision.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.verdict {
            ApprovalVerdict::Approve { reason } | ApprovalVerdict::Deny { reason } => serde_json::json!({
                "type": "approval", "tool_call_id": self.tool_call_id, "reason": reason,
                "approve": matches!(self.verdict, ApprovalVerdict::Approve { .. }),
            }),
            ApprovalVerdict::ClientReturn { tool_return, ok } => serde_json::json!({
                "type": "tool", "tool_call_id": self.tool_call_id, "tool_return": tool_return,
                "status": if *ok { "success" } else { "error" },
            }),
        }
    }
}

/// A text and its embedding, computed by the service and handed to the
/// agent actor with a step.
pub type TextEmbedding = (String, Vec<f32>);

/// What the archives an agent has attached found for one query of its
/// `archival_memory_search` calls: texts with their scores, best first,
/// searched by the service before the step (an actor calls no other
/// actor) and ranked by the agent's actor together with its own passages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiveHits {
    pub query: String,
    pub found: Vec<(String, f32)>,
}

/// Changes to a block; `None` leaves a field as it is. Applied by the agent
/// actor to its copy and by the block store to a shared block's canonical
/// version, each refusing (nothing changed) what breaks the block's limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BlockPatch {
    pub value: Option<String>,
    pub limit: Option<u64>,
    pub description: Option<String>,
    pub read_only: Option<bool>,
}

/// Checks a name and tags an agent is about to get (on create, modify or
/// import).
pub fn check_name_and_tags(name: &str, tags: &[String]) -> ServiceResult<()> {
    if name.trim().is_empty() || name.len() > AGENT_NAME_BYTES_MAX {
        return Err(ServiceError::Invalid(format!(
            "name must be 1..={AGENT_NAME_BYTES_MAX} bytes and not blank"
        )));
    }
    if tags.len() > AGENT_TAGS_COUNT_MAX {
        return Err(ServiceError::Invalid(format!("an agent has at most {AGENT_TAGS_COUNT_MAX} tags")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_stored_before_working_memory_existed_reads_with_an_empty_one() {
        let llm = LlmSettings {
            handle: "openai/m".into(),
            provider: "openai".into(),
            model: "m".into(),
            endpoint: "http://127.0.0.1:1/v1".into(),
            context_window: 1_000,
            max_tokens: 100,
            temperature: 0.7,
            byok_provider: None,
        };
        let embedding = EmbeddingSettings {
            handle: "kelpie/local-hash-256".into(),
            model: "l".into(),
            dim: 256,
            byok_provider: None,
        };
        let mut record = AgentRecord {
            id: "agent-1".into(),
            name: "a".into(),
            system: "s".into(),
            description: None,
            metadata: None,
            tags: Vec::new(),
            memory: CoreMemory::default(),
            working: WorkingMemory::default(),
            llm,
            embedding,
            tool_ids: Vec::new(),
            secrets: BTreeMap::new(),
            compaction: None,
            tool_rules: Vec::new(),
            identity_ids: Vec::new(),
            folders: Vec::new(),
            open_files: Vec::new(),
            max_files_open: None,
            file_window_chars: None,
            enable_sleeptime: None,
            managed_group: None,
            created_ms: 1,
            updated_ms: 2,
        };
        record.working.put("k", "v".into(), 1_000, 0).unwrap();
        let mut old = serde_json::to_value(&record).unwrap();
        assert_eq!(old["working"]["entries"]["k"]["value"], "v");
        old.as_object_mut().unwrap().remove("working");
        let read: AgentRecord = serde_json::from_value(old).unwrap();
        assert!(read.working.is_empty(0));
        assert_eq!(read.working.limits(), kelpie_memory::WorkingLimits::default());
        record.working = WorkingMemory::default();
        assert_eq!(read, record);
    }
}
