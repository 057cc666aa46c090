//! Tool definitions: the built-in tools every agent has (their names, our own
//! descriptions and JSON schemas, in the OpenAI function-calling shape).
//!
//! Executing the built-in memory tools is the agent actor's job (they edit
//! the agent's state inside its transaction); this crate only describes
//! them. Never depends on the server.

pub mod builtin;

pub use builtin::{builtin_tool, builtin_tools, BuiltinTool, SEND_MESSAGE};
