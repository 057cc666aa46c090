//! Limits of the agent loop and of what it shows the LLM, with their units.

/// Longest tool result kept and shown to the LLM, in characters.
pub const TOOL_RETURN_CHARS_MAX: usize = 50_000;
/// Steps of the agent loop per request when the client does not say.
pub const AGENT_STEPS_COUNT_DEFAULT: u32 = 10;
/// Most steps of the agent loop per request.
pub const AGENT_STEPS_COUNT_MAX: u32 = 50;
/// Most recent messages put into the prompt, before the context-window cut.
pub const PROMPT_MESSAGES_COUNT_MAX: usize = 100;
