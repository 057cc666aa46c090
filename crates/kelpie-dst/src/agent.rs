//! Deterministic stand-ins for what an agent talks to: an LLM, tools (local
//! or behind an MCP server) and a code sandbox with snapshots.
//!
//! Replies are scripted, latencies come from the node's seeded stream, and
//! the agent-level faults (LLM timeout, failure, rate limit; tool timeout,
//! failure; MCP server crash; sandbox boot and exec failure; snapshot create
//! and restore failure) fire through the simulation's fault injector. The
//! request and response types are deliberately small and self-contained; the
//! server crate maps its own types onto them in its tests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use kelpie_core::{Clock, NodeId};
use thiserror::Error;

use crate::fault::{Fault, FaultKind};
use crate::hash::Fnv1a64;
use crate::simulation::SimNode;

/// How long an LLM call may hang before the client gives up, by default.
pub const SIM_LLM_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Simulated LLM latency bounds.
pub const SIM_LLM_LATENCY_MS_MIN: u64 = 50;
pub const SIM_LLM_LATENCY_MS_MAX: u64 = 800;

/// How long a tool call may hang before the caller gives up, by default.
pub const SIM_TOOL_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Simulated tool latency bounds.
pub const SIM_TOOL_LATENCY_MS_MIN: u64 = 1;
pub const SIM_TOOL_LATENCY_MS_MAX: u64 = 50;

/// Simulated sandbox boot time bounds.
pub const SIM_SANDBOX_BOOT_MS_MIN: u64 = 100;
pub const SIM_SANDBOX_BOOT_MS_MAX: u64 = 500;

/// How long an execution may hang before the caller gives up, by default.
pub const SIM_SANDBOX_EXEC_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Most entries a sandbox's state may hold.
pub const SIM_SANDBOX_STATE_ENTRIES_MAX: usize = 10_000;

/// One message of a chat request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmMessage {
    pub role: String,
    pub content: String,
}

/// A chat completion request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmRequest {
    pub model: String,
    pub messages: Vec<LlmMessage>,
    /// Names of the tools offered to the model.
    pub tools: Vec<String>,
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A chat completion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<LlmToolCall>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl LlmResponse {
    /// A plain text reply.
    pub fn text(content: impl Into<String>) -> Self {
        LlmResponse { content: Some(content.into()), ..LlmResponse::default() }
    }

    /// A reply that asks for one tool call.
    pub fn tool_call(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        let call = LlmToolCall { id: id.into(), name: name.into(), arguments: arguments.into() };
        LlmResponse { tool_calls: vec![call], ..LlmResponse::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LlmError {
    #[error("LLM call from node {node} timed out after {timeout_ms} ms")]
    Timeout { node: NodeId, timeout_ms: u64 },
    #[error("LLM provider failed for node {node}: {reason}")]
    ProviderFailure { node: NodeId, reason: String },
    #[error("LLM provider rate-limited node {node}; retry after {retry_after_ms} ms")]
    RateLimited { node: NodeId, retry_after_ms: u64 },
    #[error("LLM script of node {node} has no reply left after {calls} calls")]
    ScriptExhausted { node: NodeId, calls: u64 },
}

impl LlmError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, LlmError::ScriptExhausted { .. })
    }
}

type Responder = Box<dyn Fn(&LlmRequest) -> LlmResponse + Send + Sync>;

enum Replies {
    Script(VecDeque<LlmResponse>),
    Function(Responder),
}

/// A simulated LLM client bound to one node.
pub struct SimLlmClient {
    node: SimNode,
    replies: Mutex<(Replies, u64)>,
    timeout_ms: u64,
}

impl SimLlmClient {
    /// Replies with `script`, in order, one per call.
    pub fn scripted(node: &SimNode, script: Vec<LlmResponse>) -> Self {
        Self::with_replies(node, Replies::Script(script.into()))
    }

    /// Replies with whatever `responder` computes from the request.
    pub fn with_responder(
        node: &SimNode,
        responder: impl Fn(&LlmRequest) -> LlmResponse + Send + Sync + 'static,
    ) -> Self {
        Self::with_replies(node, Replies::Function(Box::new(responder)))
    }

    fn with_replies(node: &SimNode, replies: Replies) -> Self {
        SimLlmClient {
            node: node.clone(),
            replies: Mutex::new((replies, 0)),
            timeout_ms: SIM_LLM_TIMEOUT_MS_DEFAULT,
        }
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        assert!(timeout_ms > 0, "an LLM timeout of 0 ms fails every call");
        self.timeout_ms = timeout_ms;
        self
    }

    /// One chat completion, after a simulated latency, subject to the LLM faults.
    pub async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let node = self.node.id().clone();
        let latency = self.node.rng().between_inclusive(SIM_LLM_LATENCY_MS_MIN, SIM_LLM_LATENCY_MS_MAX);
        self.node.clock().sleep(Duration::from_millis(latency)).await;
        let executor = self.node.executor();
        if executor.fault(FaultKind::LlmTimeout, Some(self.node.index())).is_some() {
            let remaining = self.timeout_ms.saturating_sub(latency);
            self.node.clock().sleep(Duration::from_millis(remaining)).await;
            return Err(LlmError::Timeout { node, timeout_ms: self.timeout_ms });
        }
        if let Some(Fault::LlmRateLimited { retry_after_ms }) =
            executor.fault(FaultKind::LlmRateLimited, Some(self.node.index()))
        {
            return Err(LlmError::RateLimited { node, retry_after_ms });
        }
        if executor.fault(FaultKind::LlmFailure, Some(self.node.index())).is_some() {
            return Err(LlmError::ProviderFailure { node, reason: "injected 500 from the provider".into() });
        }
        self.reply(request)
    }

    /// The fault point of a streamed answer: whether this stream stops
    /// part-way ([`FaultKind::LlmStreamCut`]). The streaming adapter asks
    /// once per streamed call, after the answer is complete, and delivers
    /// only a part of it when the answer is yes.
    pub fn stream_cut(&self) -> bool {
        self.node.executor().fault(FaultKind::LlmStreamCut, Some(self.node.index())).is_some()
    }

    fn reply(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let mut guard = self.replies.lock().unwrap_or_else(|poison| poison.into_inner());
        let (replies, calls) = &mut *guard;
        *calls += 1;
        let mut response = match replies {
            Replies::Script(script) => script.pop_front().ok_or_else(|| LlmError::ScriptExhausted {
                node: self.node.id().clone(),
                calls: *calls - 1,
            })?,
            Replies::Function(responder) => responder(request),
        };
        // A crude but deterministic token count: four characters per token.
        let prompt_chars: usize = request.messages.iter().map(|message| message.content.len()).sum();
        response.prompt_tokens = (prompt_chars as u64).div_ceil(4);
        response.completion_tokens = (response.content.as_ref().map_or(0, String::len) as u64).div_ceil(4);
        Ok(response)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ToolError {
    #[error("tool {tool} timed out after {timeout_ms} ms")]
    Timeout { tool: String, timeout_ms: u64 },
    #[error("tool {tool} failed: {reason}")]
    Failed { tool: String, reason: String },
    #[error("tool {tool}: MCP server {server} is down")]
    McpServerDown { tool: String, server: String },
}

type ToolHandler = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// A simulated tool: a deterministic handler behind latency and tool faults,
/// optionally served by an MCP server that can crash.
pub struct SimTool {
    node: SimNode,
    name: String,
    handler: ToolHandler,
    mcp_server: Option<String>,
    server_down: AtomicBool,
    timeout_ms: u64,
}

impl SimTool {
    /// A local tool computing its result with `handler` (`Err` is a tool failure).
    pub fn new(
        node: &SimNode,
        name: impl Into<String>,
        handler: impl Fn(&str) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        SimTool {
            node: node.clone(),
            name: name.into(),
            handler: Box::new(handler),
            mcp_server: None,
            server_down: AtomicBool::new(false),
            timeout_ms: SIM_TOOL_TIMEOUT_MS_DEFAULT,
        }
    }

    /// Serves the tool through the MCP server `server` (subject to MCP crashes).
    pub fn via_mcp_server(mut self, server: impl Into<String>) -> Self {
        self.mcp_server = Some(server.into());
        self
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        assert!(timeout_ms > 0, "a tool timeout of 0 ms fails every call");
        self.timeout_ms = timeout_ms;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the tool's MCP server is running (always true for local tools).
    pub fn server_up(&self) -> bool {
        !self.server_down.load(Ordering::SeqCst)
    }

    /// Starts a crashed MCP server again, as a client does before its next
    /// call: after a start latency, or, under `McpServerSlowStart`, not
    /// within the tool's timeout (it stays down).
    pub async fn start_mcp_server(&self) -> Result<(), ToolError> {
        let server = self.mcp_server.clone().expect("a tool with an MCP server");
        let index = Some(self.node.index());
        if self.node.executor().fault(FaultKind::McpServerSlowStart, index).is_some() {
            self.node.clock().sleep(Duration::from_millis(self.timeout_ms)).await;
            return Err(ToolError::Timeout {
                tool: format!("MCP server {server} start"),
                timeout_ms: self.timeout_ms,
            });
        }
        let latency = self.node.rng().between_inclusive(SIM_TOOL_LATENCY_MS_MIN, SIM_TOOL_LATENCY_MS_MAX);
        self.node.clock().sleep(Duration::from_millis(latency)).await;
        self.restart_mcp_server();
        Ok(())
    }

    /// Brings a crashed MCP server back.
    pub fn restart_mcp_server(&self) {
        assert!(self.mcp_server.is_some(), "tool {} has no MCP server", self.name);
        self.server_down.store(false, Ordering::SeqCst);
    }

    /// Runs the tool with `arguments`.
    pub async fn call(&self, arguments: &str) -> Result<String, ToolError> {
        let tool = self.name.clone();
        let index = Some(self.node.index());
        let executor = self.node.executor();
        if let Some(server) = &self.mcp_server {
            if executor.fault(FaultKind::McpServerCrash, index).is_some() {
                self.server_down.store(true, Ordering::SeqCst);
            }
            if !self.server_up() {
                return Err(ToolError::McpServerDown { tool, server: server.clone() });
            }
        }
        let latency = self.node.rng().between_inclusive(SIM_TOOL_LATENCY_MS_MIN, SIM_TOOL_LATENCY_MS_MAX);
        self.node.clock().sleep(Duration::from_millis(latency)).await;
        if executor.fault(FaultKind::ToolTimeout, index).is_some() {
            let remaining = self.timeout_ms.saturating_sub(latency);
            self.node.clock().sleep(Duration::from_millis(remaining)).await;
            return Err(ToolError::Timeout { tool, timeout_ms: self.timeout_ms });
        }
        if executor.fault(FaultKind::ToolFailure, index).is_some() {
            return Err(ToolError::Failed { tool, reason: "injected tool failure".into() });
        }
        (self.handler)(arguments).map_err(|reason| ToolError::Failed { tool, reason })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SandboxError {
    #[error("sandbox on node {node} failed to boot")]
    BootFailed { node: NodeId },
    #[error("sandbox on node {node} is not booted")]
    NotBooted { node: NodeId },
    #[error("sandbox on node {node}: `{command}` failed: {reason}")]
    ExecFailed { node: NodeId, command: String, reason: String },
    #[error("sandbox on node {node} crashed during `{command}`")]
    Crashed { node: NodeId, command: String },
    #[error("sandbox on node {node}: `{command}` timed out after {timeout_ms} ms")]
    TimedOut { node: NodeId, command: String, timeout_ms: u64 },
    #[error("sandbox on node {node}: snapshot failed")]
    SnapshotCreateFailed { node: NodeId },
    #[error("sandbox on node {node}: restore failed: {reason}")]
    SnapshotRestoreFailed { node: NodeId, reason: String },
}

/// The captured state of a sandbox, with a checksum verified on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSnapshot {
    pub state: BTreeMap<String, String>,
    pub checksum: u64,
}

fn state_checksum(state: &BTreeMap<String, String>) -> u64 {
    let mut hasher = Fnv1a64::new();
    for (key, value) in state {
        hasher.write_str(key);
        hasher.write_str(value);
    }
    hasher.finish()
}

/// A simulated sandbox running a toy command language: `set KEY VALUE`,
/// `get KEY`, `echo TEXT`. Enough to test boot, exec and snapshot paths.
pub struct SimSandbox {
    node: SimNode,
    booted: bool,
    state: BTreeMap<String, String>,
    exec_timeout_ms: u64,
}

impl SimSandbox {
    pub fn new(node: &SimNode) -> Self {
        SimSandbox {
            node: node.clone(),
            booted: false,
            state: BTreeMap::new(),
            exec_timeout_ms: SIM_SANDBOX_EXEC_TIMEOUT_MS_DEFAULT,
        }
    }

    pub fn with_exec_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.set_exec_timeout_ms(timeout_ms);
        self
    }

    /// How long the next executions may hang before they time out.
    pub fn set_exec_timeout_ms(&mut self, timeout_ms: u64) {
        assert!(timeout_ms > 0, "an exec timeout of 0 ms fails every command");
        self.exec_timeout_ms = timeout_ms;
    }

    pub fn is_booted(&self) -> bool {
        self.booted
    }

    fn fault(&self, kind: FaultKind) -> bool {
        self.node.executor().fault(kind, Some(self.node.index())).is_some()
    }

    pub async fn boot(&mut self) -> Result<(), SandboxError> {
        let boot_ms = self.node.rng().between_inclusive(SIM_SANDBOX_BOOT_MS_MIN, SIM_SANDBOX_BOOT_MS_MAX);
        self.node.clock().sleep(Duration::from_millis(boot_ms)).await;
        if self.fault(FaultKind::SandboxBootFailure) {
            return Err(SandboxError::BootFailed { node: self.node.id().clone() });
        }
        self.booted = true;
        Ok(())
    }

    /// Runs one command; output as a string.
    pub async fn exec(&mut self, command: &str) -> Result<String, SandboxError> {
        let node = self.node.id().clone();
        if !self.booted {
            return Err(SandboxError::NotBooted { node });
        }
        let latency = self.node.rng().between_inclusive(SIM_TOOL_LATENCY_MS_MIN, SIM_TOOL_LATENCY_MS_MAX);
        self.node.clock().sleep(Duration::from_millis(latency)).await;
        let failed = |reason: &str| SandboxError::ExecFailed {
            node: node.clone(),
            command: command.to_string(),
            reason: reason.to_string(),
        };
        if self.fault(FaultKind::SandboxExecFailure) {
            return Err(failed("injected exec failure"));
        }
        if self.fault(FaultKind::SandboxExecTimeout) {
            let remaining = self.exec_timeout_ms.saturating_sub(latency);
            self.node.clock().sleep(Duration::from_millis(remaining)).await;
            let timeout_ms = self.exec_timeout_ms;
            return Err(SandboxError::TimedOut { node, command: command.to_string(), timeout_ms });
        }
        if self.fault(FaultKind::SandboxCrash) {
            // Everything the sandbox held is gone with it.
            self.booted = false;
            self.state.clear();
            return Err(SandboxError::Crashed { node, command: command.to_string() });
        }
        let mut words = command.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("set"), Some(key), Some(value)) => {
                if self.state.len() >= SIM_SANDBOX_STATE_ENTRIES_MAX && !self.state.contains_key(key) {
                    return Err(failed("sandbox state is full"));
                }
                self.state.insert(key.to_string(), value.to_string());
                Ok(String::new())
            }
            (Some("get"), Some(key), None) => {
                self.state.get(key).cloned().ok_or_else(|| failed("no such key"))
            }
            (Some("echo"), text, rest) => {
                Ok([text, rest].into_iter().flatten().collect::<Vec<_>>().join(" "))
            }
            _ => Err(failed("unknown command")),
        }
    }

    pub fn snapshot(&self) -> Result<SandboxSnapshot, SandboxError> {
        if !self.booted {
            return Err(SandboxError::NotBooted { node: self.node.id().clone() });
        }
        if self.fault(FaultKind::SnapshotCreateFailure) {
            return Err(SandboxError::SnapshotCreateFailed { node: self.node.id().clone() });
        }
        Ok(SandboxSnapshot { checksum: state_checksum(&self.state), state: self.state.clone() })
    }

    /// Replaces the state with `snapshot`'s after checking its checksum; boots the sandbox.
    pub fn restore(&mut self, snapshot: &SandboxSnapshot) -> Result<(), SandboxError> {
        let node = self.node.id().clone();
        if self.fault(FaultKind::SnapshotRestoreFailure) {
            return Err(SandboxError::SnapshotRestoreFailed {
                node,
                reason: "injected restore failure".into(),
            });
        }
        if state_checksum(&snapshot.state) != snapshot.checksum {
            return Err(SandboxError::SnapshotRestoreFailed { node, reason: "checksum mismatch".into() });
        }
        self.state = snapshot.state.clone();
        self.booted = true;
        debug_assert_eq!(state_checksum(&self.state), snapshot.checksum);
        Ok(())
    }
}
