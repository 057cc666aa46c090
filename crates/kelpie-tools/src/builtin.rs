//! The built-in tools: `send_message` (the reply to the user), core memory
//! edits, archival memory insert/search and conversation search.

use serde_json::{json, Value};

pub const SEND_MESSAGE: &str = "send_message";
pub const CORE_MEMORY_APPEND: &str = "core_memory_append";
pub const CORE_MEMORY_REPLACE: &str = "core_memory_replace";
pub const ARCHIVAL_MEMORY_INSERT: &str = "archival_memory_insert";
pub const ARCHIVAL_MEMORY_SEARCH: &str = "archival_memory_search";
pub const CONVERSATION_SEARCH: &str = "conversation_search";

/// A built-in tool's description for the API and the LLM.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinTool {
    pub name: &'static str,
    /// A stable id, the same on every server and across restarts.
    pub id: &'static str,
    pub description: &'static str,
    /// `{"name", "description", "parameters"}`.
    pub json_schema: Value,
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

fn tool(
    name: &'static str,
    id: &'static str,
    description: &'static str,
    properties: Value,
    required: &[&str],
) -> BuiltinTool {
    BuiltinTool { name, id, description, json_schema: schema(name, description, properties, required) }
}

/// Every built-in tool, in a fixed order.
pub fn builtin_tools() -> Vec<BuiltinTool> {
    vec![
        tool(
            SEND_MESSAGE,
            "tool-00000000-0000-4000-8000-6b656c700001",
            "Reply to the user. The text is shown to them; calling this ends your turn.",
            json!({"message": string_param("What to say to the user.")}),
            &["message"],
        ),
        tool(
            CORE_MEMORY_APPEND,
            "tool-00000000-0000-4000-8000-6b656c700002",
            "Add a line to the end of one of your core memory blocks.",
            json!({"label": string_param("Label of the block to edit."), "content": string_param("Text to add.")}),
            &["label", "content"],
        ),
        tool(
            CORE_MEMORY_REPLACE,
            "tool-00000000-0000-4000-8000-6b656c700003",
            "Replace the first exact occurrence of some text in one of your core memory blocks.",
            json!({
                "label": string_param("Label of the block to edit."),
                "old_content": string_param("Exact text to find."),
                "new_content": string_param("Text to put in its place (empty to delete)."),
            }),
            &["label", "old_content", "new_content"],
        ),
        tool(
            ARCHIVAL_MEMORY_INSERT,
            "tool-00000000-0000-4000-8000-6b656c700004",
            "Store a passage in your long-term archival memory for later search.",
            json!({"content": string_param("The passage to store.")}),
            &["content"],
        ),
        tool(
            ARCHIVAL_MEMORY_SEARCH,
            "tool-00000000-0000-4000-8000-6b656c700005",
            "Search your archival memory; returns the most similar passages.",
            json!({
                "query": string_param("What to look for."),
                "top_k": {"type": "integer", "description": "How many passages to return (default 5)."},
            }),
            &["query"],
        ),
        tool(
            CONVERSATION_SEARCH,
            "tool-00000000-0000-4000-8000-6b656c700006",
            "Search earlier messages of this conversation for a word or phrase.",
            json!({
                "query": string_param("Text to look for (case-insensitive)."),
                "limit": {"type": "integer", "description": "How many messages to return (default 5)."},
            }),
            &["query"],
        ),
    ]
}

/// The built-in tool called `name`, if there is one.
pub fn builtin_tool(name: &str) -> Option<BuiltinTool> {
    builtin_tools().into_iter().find(|tool| tool.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tools_have_unique_names_and_ids_and_valid_schemas() {
        let tools = builtin_tools();
        assert_eq!(tools.len(), 6);
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
    }
}
