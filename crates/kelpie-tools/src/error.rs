//! Why a tool could not be created or run: bad input (a source that does not
//! parse, a requirement that does not install), a call the sandbox ended (its
//! wall time, its memory), or a sandbox that cannot run here.

use kelpie_sandbox::SandboxError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("tool {name} timed out after {timeout_ms} ms and was killed")]
    Timeout { name: String, timeout_ms: u64 },
    #[error("tool {name} went over its memory limit of {limit_bytes} bytes and was killed")]
    MemoryLimit { name: String, limit_bytes: u64 },
    #[error("tool {name} exited without a result (exit code {exit_code}); stderr: {stderr}")]
    NoResult { name: String, exit_code: i32, stderr: String },
    #[error("source_code is not valid Python: {0}")]
    Syntax(String),
    #[error("cannot derive a JSON schema from source_code: {0}")]
    Schema(String),
    #[error("source_code is {bytes} bytes; the limit is {limit}")]
    SourceTooLarge { bytes: usize, limit: usize },
    #[error("json_schema {0}")]
    BadJsonSchema(String),
    #[error("pip requirement {0}")]
    BadRequirement(String),
    #[error("cannot install pip requirement {package}: {reason}")]
    PipInstall { package: String, reason: String },
    #[error(
        "language {0:?} is not available on this server (it runs python and, where node is installed, js)"
    )]
    Language(String),
    #[error("command {0}")]
    Program(String),
    #[error("environment variable {0}")]
    BadEnvironment(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl ToolError {
    /// Whether the error is the caller's input (answered 422), as opposed
    /// to the server's trouble running it.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ToolError::Sandbox(_) | ToolError::NoResult { .. })
    }
}
