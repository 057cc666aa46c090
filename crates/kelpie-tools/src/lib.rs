//! Tool definitions and custom tool execution: the built-in tools every
//! agent has (their names, our own descriptions and JSON schemas, in the
//! OpenAI function-calling shape), and [`python`], which derives schemas of
//! custom Python tools and runs them out of process.
//!
//! Executing the built-in memory tools is the agent actor's job (they edit
//! the agent's state inside its transaction); this crate only describes
//! them. Never depends on the server.

pub mod builtin;
pub mod python;

pub use builtin::{builtin_tool, builtin_tools, BuiltinTool, SEND_MESSAGE};
