//! Agents: the agent actor and the directory actor (persistence, one
//! transaction per command), the agent loop, and [`service::AgentService`],
//! the one entry point the HTTP handlers call.

pub mod actor;
pub mod block_store;
pub mod blocks;
pub mod directory;
mod embed;
pub mod legacy_directory;
pub mod letta;
pub mod model;
pub mod moves;
pub mod page;
pub mod passage_search;
pub mod runs;
pub mod service;
pub mod token_stream;
pub mod tool_service;
pub mod tool_store;
mod tools_exec;
pub mod transfer;
mod turn;

/// Longest tool result kept and shown to the LLM, in characters.
pub const TOOL_RETURN_CHARS_MAX: usize = 50_000;
/// Steps of the agent loop per request when the client does not say.
pub const AGENT_STEPS_COUNT_DEFAULT: u32 = 10;
/// Most steps of the agent loop per request.
pub const AGENT_STEPS_COUNT_MAX: u32 = 50;
/// Most recent messages put into the prompt, before the context-window cut.
pub const PROMPT_MESSAGES_COUNT_MAX: usize = 100;
