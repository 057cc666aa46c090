//! The built-in tools: `send_message` (the reply to the user), core memory
//! edits (`core_memory_*` and Letta's newer `memory_insert`/`memory_replace`),
//! archival memory insert/search, conversation search, working memory (a
//! key-value scratchpad with expiry, our own: Letta has no such tools), and
//! Letta's code interpreter `run_code`, which runs in a sandbox and is
//! attached only on request.

use serde_json::{json, Value};

pub const SEND_MESSAGE: &str = "send_message";
pub const CORE_MEMORY_APPEND: &str = "core_memory_append";
pub const CORE_MEMORY_REPLACE: &str = "core_memory_replace";
pub const ARCHIVAL_MEMORY_INSERT: &str = "archival_memory_insert";
pub const ARCHIVAL_MEMORY_SEARCH: &str = "archival_memory_search";
pub const CONVERSATION_SEARCH: &str = "conversation_search";
pub const MEMORY_INSERT: &str = "memory_insert";
pub const MEMORY_REPLACE: &str = "memory_replace";
pub const WORKING_MEMORY_SET: &str = "working_memory_set";
pub const WORKING_MEMORY_GET: &str = "working_memory_get";
pub const WORKING_MEMORY_DELETE: &str = "working_memory_delete";
pub const RUN_CODE: &str = "run_code";
pub const OPEN_FILES: &str = "open_files";
pub const GREP_FILES: &str = "grep_files";
pub const SEMANTIC_SEARCH_FILES: &str = "semantic_search_files";
/// The file tools: attached with an agent's first folder, detached with its last.
pub const FILE_TOOLS: [&str; 3] = [OPEN_FILES, GREP_FILES, SEMANTIC_SEARCH_FILES];
/// The languages `run_code` offers (js only where node is installed).
pub const RUN_CODE_LANGUAGES: [&str; 2] = ["python", "js"];

/// Letta's `ToolType` of the tools every Letta agent has.
pub const TOOL_TYPE_CORE: &str = "letta_core";
/// Letta's `ToolType` of `core_memory_append`/`_replace`.
pub const TOOL_TYPE_MEMORY_CORE: &str = "letta_memory_core";
/// Letta's `ToolType` of `memory_insert`/`memory_replace`.
pub const TOOL_TYPE_SLEEPTIME_CORE: &str = "letta_sleeptime_core";
/// Letta's `ToolType` of the file tools.
pub const TOOL_TYPE_FILES_CORE: &str = "letta_files_core";
/// Letta's `ToolType` for server-provided tools outside its core sets; ours
/// for the working memory tools.
pub const TOOL_TYPE_BUILTIN: &str = "letta_builtin";

/// A built-in tool's description for the API and the LLM.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinTool {
    pub name: &'static str,
    /// A stable id, the same on every server and across restarts.
    pub id: &'static str,
    /// Letta's `ToolType` value shown by the API.
    pub tool_type: &'static str,
    pub description: &'static str,
    /// `{"name", "description", "parameters"}`.
    pub json_schema: Value,
    /// Whether every new agent has it (else only when asked for).
    pub default_attached: bool,
}

fn string_param(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn schema(name: &str, description: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    })
}

fn integer_param(description: &str) -> Value {
    json!({"type": "integer", "description": description})
}

fn tool(
    (name, id, tool_type): (&'static str, &'static str, &'static str),
    description: &'static str,
    properties: Value,
    required: &[&str],
) -> BuiltinTool {
    let json_schema = schema(name, description, properties, required);
    BuiltinTool { name, id, tool_type, description, json_schema, default_attached: true }
}

/// Every built-in tool, in a fixed order. Built once per process: prompts
/// list the tools several times per step, and building the schemas is
/// measurable in a turn's CPU.
pub fn builtin_tools() -> &'static [BuiltinTool] {
    static TOOLS: std::sync::OnceLock<Vec<BuiltinTool>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(build_builtin_tools)
}

fn build_builtin_tools() -> Vec<BuiltinTool> {
    vec![
        tool(
            (SEND_MESSAGE, "tool-00000000-0000-4000-8000-6b656c700001", TOOL_TYPE_CORE),
            "Reply to the user. The text is shown to them; calling this ends your turn.",
            json!({"message": string_param("What to say to the user.")}),
            &["message"],
        ),
        tool(
            (CORE_MEMORY_APPEND, "tool-00000000-0000-4000-8000-6b656c700002", TOOL_TYPE_MEMORY_CORE),
            "Add a line to the end of one of your core memory blocks.",
            json!({"label": string_param("Label of the block to edit."), "content": string_param("Text to add.")}),
            &["label", "content"],
        ),
        tool(
            (CORE_MEMORY_REPLACE, "tool-00000000-0000-4000-8000-6b656c700003", TOOL_TYPE_MEMORY_CORE),
            "Replace the first exact occurrence of some text in one of your core memory blocks.",
            json!({
                "label": string_param("Label of the block to edit."),
                "old_content": string_param("Exact text to find."),
                "new_content": string_param("Text to put in its place (empty to delete)."),
            }),
            &["label", "old_content", "new_content"],
        ),
        tool(
            (ARCHIVAL_MEMORY_INSERT, "tool-00000000-0000-4000-8000-6b656c700004", TOOL_TYPE_CORE),
            "Store a passage in your long-term archival memory for later search.",
            json!({"content": string_param("The passage to store.")}),
            &["content"],
        ),
        tool(
            (ARCHIVAL_MEMORY_SEARCH, "tool-00000000-0000-4000-8000-6b656c700005", TOOL_TYPE_CORE),
            "Search your archival memory; returns the most similar passages.",
            json!({
                "query": string_param("What to look for."),
                "top_k": {"type": "integer", "description": "How many passages to return (default 5)."},
            }),
            &["query"],
        ),
        tool(
            (CONVERSATION_SEARCH, "tool-00000000-0000-4000-8000-6b656c700006", TOOL_TYPE_CORE),
            "Search earlier messages of this conversation for a word or phrase.",
            json!({
                "query": string_param("Text to look for (case-insensitive)."),
                "limit": {"type": "integer", "description": "How many messages to return (default 5)."},
            }),
            &["query"],
        ),
        tool(
            (MEMORY_INSERT, "tool-00000000-0000-4000-8000-6b656c700007", TOOL_TYPE_SLEEPTIME_CORE),
            "Insert text as new line(s) into one of your core memory blocks, after a given line.",
            json!({
                "label": string_param("Label of the block to edit."),
                "new_string": string_param("The text to insert; it may hold several lines."),
                "insert_line": integer_param(
                    "Line after which to insert: 0 for the beginning, -1 (the default) for the end."
                ),
            }),
            &["label", "new_string"],
        ),
        tool(
            (MEMORY_REPLACE, "tool-00000000-0000-4000-8000-6b656c700008", TOOL_TYPE_SLEEPTIME_CORE),
            "Replace text in one of your core memory blocks. The text to replace must occur exactly \
             once in the block; include surrounding words to make it unique.",
            json!({
                "label": string_param("Label of the block to edit."),
                "old_string": string_param("The exact text to replace, whitespace included."),
                "new_string": string_param("The text to put in its place (empty to delete)."),
            }),
            &["label", "old_string", "new_string"],
        ),
        tool(
            (WORKING_MEMORY_SET, "tool-00000000-0000-4000-8000-6b656c700009", TOOL_TYPE_BUILTIN),
            "Keep a short-lived note in your working memory under a key, until it expires. Working \
             memory is shown to you with each message; use it for plans and intermediate results.",
            json!({
                "key": string_param("Name of the note (replaces an earlier note of that name)."),
                "value": string_param("The note."),
                "ttl_seconds": integer_param("Seconds until the note expires (at least 1, at most 30 days)."),
            }),
            &["key", "value", "ttl_seconds"],
        ),
        tool(
            (WORKING_MEMORY_GET, "tool-00000000-0000-4000-8000-6b656c70000a", TOOL_TYPE_BUILTIN),
            "Read the note stored under a key in your working memory.",
            json!({"key": string_param("Name of the note.")}),
            &["key"],
        ),
        tool(
            (WORKING_MEMORY_DELETE, "tool-00000000-0000-4000-8000-6b656c70000b", TOOL_TYPE_BUILTIN),
            "Remove the note stored under a key from your working memory.",
            json!({"key": string_param("Name of the note.")}),
            &["key"],
        ),
        BuiltinTool {
            default_attached: false,
            ..tool(
                (RUN_CODE, "tool-00000000-0000-4000-8000-6b656c70000c", TOOL_TYPE_BUILTIN),
                "Run a piece of code in a fresh, isolated sandbox (no network, no files kept) and get                  back what it printed and, for Python, the value of its last expression.",
                json!({
                    "code": string_param("The code to run."),
                    "language": {"type": "string", "enum": RUN_CODE_LANGUAGES, "description": "Its language."},
                }),
                &["code", "language"],
            )
        },
        BuiltinTool {
            default_attached: false,
            ..tool(
                (OPEN_FILES, "tool-00000000-0000-4000-8000-6b656c70000d", TOOL_TYPE_FILES_CORE),
                "Open files of your folders into your context, whole or a window of lines, so their \
                 text shows in your directories. Past your limit of open files the least recently used \
                 close. Name files as your directories list them: folder/file.",
                json!({
                    "file_requests": {
                        "type": "array",
                        "description": "The files to open.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "file_name": string_param("Name of the file, folder/file."),
                                "offset": integer_param("First line to show, counted from 0 (default 0)."),
                                "length": integer_param("How many lines to show (default: to the end)."),
                            },
                            "required": ["file_name"],
                        },
                    },
                    "close_all_others": {"type": "boolean", "description": "Close every other open file first (default false)."},
                }),
                &["file_requests"],
            )
        },
        BuiltinTool {
            default_attached: false,
            ..tool(
                (GREP_FILES, "tool-00000000-0000-4000-8000-6b656c70000e", TOOL_TYPE_FILES_CORE),
                "Search the lines of every file in your folders with a regular expression \
                 (case-insensitive); answers the matching lines with their neighbours.",
                json!({
                    "pattern": string_param("The regular expression to look for."),
                    "include": string_param("Only files whose name matches this (a regex, or a glob such as *.md)."),
                    "context_lines": integer_param("Lines shown before and after each match (default 1)."),
                    "offset": integer_param("Skip this many matches (to page through many)."),
                }),
                &["pattern"],
            )
        },
        BuiltinTool {
            default_attached: false,
            ..tool(
                (SEMANTIC_SEARCH_FILES, "tool-00000000-0000-4000-8000-6b656c70000f", TOOL_TYPE_FILES_CORE),
                "Search the files in your folders by meaning; answers the passages nearest the query.",
                json!({
                    "query": string_param("What to look for."),
                    "limit": integer_param("How many passages to return (default 5, at most 50)."),
                }),
                &["query"],
            )
        },
    ]
}

/// The built-in tool called `name`, if there is one.
pub fn builtin_tool(name: &str) -> Option<&'static BuiltinTool> {
    builtin_tools().iter().find(|tool| tool.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tools_have_unique_names_and_ids_and_valid_schemas() {
        let tools = builtin_tools();
        assert_eq!(tools.len(), 15);
        for (index, tool) in tools.iter().enumerate() {
            assert!(tools[..index].iter().all(|other| other.name != tool.name && other.id != tool.id));
            assert_eq!(tool.json_schema["name"], tool.name);
            assert_eq!(tool.json_schema["parameters"]["type"], "object");
            assert!(tool.id.starts_with("tool-") && tool.id.len() == 41, "{}", tool.id);
        }
        assert_eq!(
            builtin_tool("send_message").unwrap().json_schema["parameters"]["required"],
            json!(["message"])
        );
        assert_eq!(builtin_tool("nope"), None);
        let insert = builtin_tool(MEMORY_INSERT).unwrap();
        assert_eq!(insert.tool_type, TOOL_TYPE_SLEEPTIME_CORE);
        assert_eq!(insert.json_schema["parameters"]["required"], json!(["label", "new_string"]));
        assert_eq!(insert.json_schema["parameters"]["properties"]["insert_line"]["type"], "integer");
        assert_eq!(
            builtin_tool(MEMORY_REPLACE).unwrap().json_schema["parameters"]["required"],
            json!(["label", "old_string", "new_string"])
        );
        assert_eq!(builtin_tool(WORKING_MEMORY_SET).unwrap().tool_type, TOOL_TYPE_BUILTIN);
        let run_code = builtin_tool(RUN_CODE).unwrap();
        assert!(!run_code.default_attached);
        assert_eq!(tools.iter().filter(|tool| tool.default_attached).count(), 11);
        assert_eq!(run_code.json_schema["parameters"]["required"], json!(["code", "language"]));
        for name in FILE_TOOLS {
            let tool = builtin_tool(name).unwrap();
            assert!(!tool.default_attached, "{name} comes with a folder");
            assert_eq!(tool.tool_type, TOOL_TYPE_FILES_CORE);
        }
        assert_eq!(
            builtin_tool(OPEN_FILES).unwrap().json_schema["parameters"]["properties"]["file_requests"]
                ["items"]["required"],
            json!(["file_name"])
        );
    }
}
