//! The errors of the agent service ([`ServiceError`]), each variant carrying
//! what the client needs to see, and of starting a node ([`NodeError`]).
//! kelpie-server maps each service error to a status code in one place.

use std::net::SocketAddr;

use kelpie_core::Error;
use kelpie_llm::catalog::ModelError;
use kelpie_llm::LlmError;
use kelpie_memory::MemoryError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("Agent with ID {0} not found")]
    AgentNotFound(String),
    #[error("Run with ID {0} not found")]
    RunNotFound(String),
    #[error("Identity with ID {0} not found")]
    IdentityNotFound(String),
    #[error("Batch job with ID {0} not found")]
    BatchNotFound(String),
    #[error("Group with ID {0} not found")]
    GroupNotFound(String),
    #[error("Step with ID {0} not found")]
    StepNotFound(String),
    #[error("Block with ID {0} not found")]
    BlockNotFound(String),
    #[error("Tool with ID {0} not found")]
    ToolNotFound(String),
    #[error("Sandbox config with ID {0} not found")]
    SandboxConfigNotFound(String),
    #[error("Sandbox environment variable with ID {0} not found")]
    SandboxEnvNotFound(String),
    #[error("a tool named {0:?} already exists")]
    ToolNameTaken(String),
    #[error("Message with ID {0} not found")]
    MessageNotFound(String),
    #[error("Folder with ID {0} not found")]
    FolderNotFound(String),
    #[error("File with ID {0} not found")]
    FileNotFound(String),
    #[error("Archive with ID {0} not found")]
    ArchiveNotFound(String),
    #[error("a folder named {0:?} already exists")]
    FolderNameTaken(String),
    /// An upload of a type no parser reads (HTTP 415).
    #[error("{0}")]
    UnsupportedType(String),
    /// A body over a named limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    #[error("Provider with ID {0} not found")]
    ProviderNotFound(String),
    #[error("a provider named {0} already exists")]
    ProviderNameTaken(String),
    /// A provider refused a check of its key or could not be reached.
    #[error("provider check failed: {0}")]
    ProviderCheck(LlmError),
    #[error("Conversation with ID {0} not found")]
    ConversationNotFound(String),
    /// A cancel found no run to stop (HTTP 409, as Letta).
    #[error("{0}")]
    NoActiveRuns(String),
    #[error("MCP server with ID {0} not found")]
    McpServerNotFound(String),
    #[error("an MCP server named {0:?} already exists")]
    McpServerNameTaken(String),
    #[error(transparent)]
    Mcp(#[from] kelpie_tools::mcp::McpError),
    #[error(transparent)]
    Tool(#[from] kelpie_tools::ToolError),
    #[error("{0}")]
    Invalid(String),
    /// A well-formed request that cannot be done in the agent's state.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Core(Error),
}

impl From<Error> for ServiceError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound { kind: "agent", id } => ServiceError::AgentNotFound(id),
            Error::NotFound { kind: "tool", id } => ServiceError::ToolNotFound(id),
            Error::NotFound { kind: "mcp server", id } => ServiceError::McpServerNotFound(id),
            Error::NotFound { kind: "folder", id } => ServiceError::FolderNotFound(id),
            Error::NotFound { kind: "message", id } => ServiceError::MessageNotFound(id),
            Error::NotFound { kind: "file", id } => ServiceError::FileNotFound(id),
            Error::NotFound { kind: "group", id } => ServiceError::GroupNotFound(id),
            Error::NotFound { kind: "archive", id } => ServiceError::ArchiveNotFound(id),
            Error::NotFound { kind: "provider", id } => ServiceError::ProviderNotFound(id),
            Error::NotFound { kind: "conversation", id } => ServiceError::ConversationNotFound(id),
            other => ServiceError::Core(other),
        }
    }
}

impl ServiceError {
    /// The node that should serve this could not be reached (or is
    /// leaving): nothing was done, and trying again later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ServiceError::Core(Error::NodeUnavailable { .. } | Error::ShuttingDown { .. }))
    }

    /// The status a provider answered a key check with, when it refused
    /// the key (401 or 403).
    pub fn key_refusal_status(&self) -> Option<u16> {
        match self {
            ServiceError::ProviderCheck(LlmError::Status { status: status @ (401 | 403), .. }) => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// A created provider an agent's model needs is gone or its URL is no
    /// longer allowed.
    pub fn is_provider_unavailable(&self) -> bool {
        matches!(self, ServiceError::Llm(LlmError::ProviderUnavailable { .. }))
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Why a node could not start or stop.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot create data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("cannot open {backend} storage: {reason}")]
    Storage { backend: &'static str, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot start the agent service: {0}")]
    Service(String),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// An actor answered a command with a reply of another kind: a bug.
pub(crate) fn unexpected(what: &str) -> ServiceError {
    ServiceError::Core(Error::Internal(format!("actor answered {what} with the wrong reply")))
}

/// A memory error met inside an actor invocation, as the runtime's error:
/// an unknown block is not found, anything else is invalid input.
pub(crate) fn memory_error(err: MemoryError) -> Error {
    match err {
        MemoryError::BlockNotFound { label } => Error::NotFound { kind: "block", id: label },
        MemoryError::BlockIdNotFound { id } => Error::NotFound { kind: "block", id },
        other => Error::validation("memory", other.to_string()),
    }
}
