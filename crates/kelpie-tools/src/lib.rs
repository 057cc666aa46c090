//! Tools: the built-in tools every agent has (their names, our own
//! descriptions and JSON schemas, in the OpenAI function-calling shape), and
//! custom Python tools and the code interpreter, which always run in a
//! sandbox of kelpie-sandbox through [`runner::ToolRunner`].
//!
//! - [`builtin`]: the built-in tools' descriptions. Executing the memory
//!   tools is the agent actor's job (they edit the agent's state inside its
//!   transaction); this crate only describes them.
//! - [`python`]: the scripts a custom tool runs with and their protocol.
//! - [`pip`]: a tool's `pip_requirements`, checked and installed once.
//! - [`runner`]: runs all of the above in sandboxes, the common calls in
//!   sandboxes started ahead of them (`warm`), and long-lived programs
//!   spoken to over stdio (sessions); on the process backend, Python calls
//!   go to fork servers ([`forkserver`]) that serve many calls per sandbox.
//! - [`mcp`]: the MCP client (stdio servers in sandboxes, streamable HTTP,
//!   legacy SSE), with restarts and the URL check against internal addresses.
//!
//! Never depends on the agent or the server.

pub mod builtin;
pub mod error;
pub mod forkserver;
pub mod mcp;
pub mod pip;
pub mod python;
pub mod runner;
mod warm;

pub use builtin::{builtin_tool, builtin_tools, BuiltinTool, RUN_CODE, SEND_MESSAGE};
pub use error::ToolError;
pub use runner::{RunnerSettings, ToolCall, ToolRun, ToolRunner};
