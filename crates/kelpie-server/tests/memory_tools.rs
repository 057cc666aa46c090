//! The agent's own memory tools over HTTP against the fake LLM:
//! `memory_insert`/`memory_replace` on core memory blocks (values after each
//! edit, each refusal as a failed tool return with the block unchanged) and
//! the working memory tools (set, get, delete, expiry on the server's clock,
//! the prompt's working memory section, restart).

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::Running;

/// Makes the fake LLM call `tool` with `args`; answers the tool return
/// message (the agent then replies, so the turn has four messages).
async fn call_tool(server: &Running, agent_id: &str, tool: &str, args: Value) -> Value {
    let reply = server.say(agent_id, &format!("/call {tool} {args}")).await;
    let messages = reply["messages"].as_array().unwrap();
    let kinds: Vec<&str> = messages.iter().map(|m| m["message_type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]);
    assert_eq!(messages[1]["tool_call"]["name"], tool);
    messages[2].clone()
}

fn assert_failed(tool_return: &Value, message: &str) {
    assert_eq!(tool_return["status"], "error", "{tool_return}");
    assert_eq!(tool_return["tool_return"], message, "{tool_return}");
}

async fn block_value(server: &Running, agent_id: &str, label: &str) -> String {
    let block = server.ok("GET", &format!("/v1/agents/{agent_id}/core-memory/blocks/{label}"), None).await;
    block["value"].as_str().unwrap().to_string()
}

/// The system message of the newest request the fake LLM received.
fn last_system_prompt(fake: &kelpie_llm::fake::FakeLlm) -> String {
    let requests = fake.requests();
    requests.last().unwrap()["messages"][0]["content"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn new_agents_have_letta_memory_edit_and_working_memory_tools() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("defaults", &[]).await;
    let agent = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
    let names: Vec<&str> =
        agent["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "send_message",
            "core_memory_append",
            "core_memory_replace",
            "archival_memory_insert",
            "archival_memory_search",
            "conversation_search",
            "memory_insert",
            "memory_replace",
            "working_memory_set",
            "working_memory_get",
            "working_memory_delete",
        ]
    );
    let tools = server.ok("GET", "/v1/tools/", None).await;
    let insert = tools.as_array().unwrap().iter().find(|t| t["name"] == "memory_insert").unwrap();
    assert_eq!(insert["tool_type"], "letta_sleeptime_core");
    assert_eq!(insert["json_schema"]["parameters"]["required"], json!(["label", "new_string"]));
    let replace = server.ok("GET", "/v1/tools/tool-00000000-0000-4000-8000-6b656c700008", None).await;
    assert_eq!(replace["name"], "memory_replace");
    assert_eq!(
        replace["json_schema"]["parameters"]["required"],
        json!(["label", "old_string", "new_string"])
    );
    server.say(&id, "hello").await;
    let offered: Vec<String> = fake.requests()[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, names);
    server.shutdown().await;
}

#[tokio::test]
async fn memory_insert_places_lines_and_refuses_bad_lines_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("insert", &[]).await;

    let done =
        call_tool(&server, &id, "memory_insert", json!({"label": "human", "new_string": "Likes tea."})).await;
    assert_eq!(done["status"], "success");
    assert_eq!(done["tool_return"], "Inserted into block human; it now reads:\nName: Ana.\nLikes tea.");
    let args = json!({"label": "human", "new_string": "Age: 30.\nFrom Porto.", "insert_line": 1});
    call_tool(&server, &id, "memory_insert", args).await;
    assert_eq!(block_value(&server, &id, "human").await, "Name: Ana.\nAge: 30.\nFrom Porto.\nLikes tea.");
    let args = json!({"label": "human", "new_string": "# Ana", "insert_line": 0});
    call_tool(&server, &id, "memory_insert", args).await;
    let expected = "# Ana\nName: Ana.\nAge: 30.\nFrom Porto.\nLikes tea.";
    assert_eq!(block_value(&server, &id, "human").await, expected);

    let args = json!({"label": "human", "new_string": "x", "insert_line": 6});
    let refused = call_tool(&server, &id, "memory_insert", args).await;
    assert_failed(
        &refused,
        "block \"human\": insert_line 6 is outside 0..=5 (or -1 for the end); the block has 5 lines",
    );
    let args = json!({"label": "human", "new_string": "x", "insert_line": -2});
    let refused = call_tool(&server, &id, "memory_insert", args).await;
    assert_failed(
        &refused,
        "block \"human\": insert_line -2 is outside 0..=5 (or -1 for the end); the block has 5 lines",
    );
    let args = json!({"label": "human", "new_string": "x", "insert_line": "two"});
    let refused = call_tool(&server, &id, "memory_insert", args).await;
    assert_failed(&refused, "argument `insert_line` must be an integer");
    let refused = call_tool(&server, &id, "memory_insert", json!({"label": "nope", "new_string": "x"})).await;
    assert_failed(&refused, "block with label \"nope\" not found");
    let refused = call_tool(&server, &id, "memory_insert", json!({"label": "human"})).await;
    assert_failed(&refused, "missing string argument `new_string`");

    // The block's limit is 100 characters and it holds 48: a line of 60 more is over.
    let args = json!({"label": "human", "new_string": "y".repeat(60)});
    let refused = call_tool(&server, &id, "memory_insert", args).await;
    assert_failed(&refused, "block \"human\": value is 109 characters, over the block's limit of 100");
    assert_eq!(block_value(&server, &id, "human").await, expected, "refused inserts change nothing");
    server.shutdown().await;
}

#[tokio::test]
async fn memory_replace_edits_exactly_one_occurrence_or_tells_the_model_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("replace", &[]).await;
    let value = "Name: Ana.\nLikes tea.\nLikes chess.";
    server
        .ok("PATCH", &format!("/v1/agents/{id}/core-memory/blocks/human"), Some(json!({"value": value})))
        .await;

    let args = json!({"label": "human", "old_string": "tea", "new_string": "green tea"});
    let done = call_tool(&server, &id, "memory_replace", args).await;
    assert_eq!(done["status"], "success");
    assert_eq!(
        done["tool_return"],
        "Replaced text in block human; it now reads:\nName: Ana.\nLikes green tea.\nLikes chess."
    );
    let args = json!({"label": "human", "old_string": "\nLikes chess.", "new_string": ""});
    call_tool(&server, &id, "memory_replace", args).await;
    assert_eq!(block_value(&server, &id, "human").await, "Name: Ana.\nLikes green tea.");

    let args = json!({"label": "human", "old_string": "a", "new_string": "o"});
    let refused = call_tool(&server, &id, "memory_replace", args).await;
    assert_failed(
        &refused,
        "block \"human\": text to replace \"a\" occurs 3 times (starting on lines [1, 1, 2]); \
         it must occur exactly once, so include more context",
    );
    let args = json!({"label": "human", "old_string": "coffee", "new_string": "tea"});
    let refused = call_tool(&server, &id, "memory_replace", args).await;
    assert_failed(&refused, "block \"human\": text to replace \"coffee\" not found");
    let args = json!({"label": "human", "old_string": "Ana", "new_string": "z".repeat(100)});
    let refused = call_tool(&server, &id, "memory_replace", args).await;
    assert_failed(&refused, "block \"human\": value is 124 characters, over the block's limit of 100");
    server
        .ok("PATCH", &format!("/v1/agents/{id}/core-memory/blocks/persona"), Some(json!({"read_only": true})))
        .await;
    let args = json!({"label": "persona", "old_string": "patient", "new_string": "strict"});
    let refused = call_tool(&server, &id, "memory_replace", args).await;
    assert_failed(&refused, "block \"persona\" is read-only");

    assert_eq!(block_value(&server, &id, "human").await, "Name: Ana.\nLikes green tea.");
    assert_eq!(block_value(&server, &id, "persona").await, "A patient tutor.");
    server.shutdown().await;
}

#[tokio::test]
async fn working_memory_set_get_delete_and_prompt_section() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("scratch", &[]).await;

    let args = json!({"key": "plan", "value": "1. greet 2. ask", "ttl_seconds": 3600});
    let done = call_tool(&server, &id, "working_memory_set", args).await;
    assert_eq!(done["status"], "success");
    assert_eq!(done["tool_return"], "Stored working memory key \"plan\" for 3600 s.");
    // The request after the tool return already shows the entry.
    let system = last_system_prompt(&fake);
    assert!(
        system.contains("<working_memory entries=\"1/256\" bytes=\"19/262144\">\nplan (expires in "),
        "{system}"
    );
    assert!(system.contains(" s): 1. greet 2. ask\n</working_memory>"), "{system}");
    assert!(system.contains("Working memory entries: 1\n"), "{system}");

    let got = call_tool(&server, &id, "working_memory_get", json!({"key": "plan"})).await;
    assert_eq!(
        (got["status"].as_str(), got["tool_return"].as_str()),
        (Some("success"), Some("1. greet 2. ask"))
    );
    let missing = call_tool(&server, &id, "working_memory_get", json!({"key": "other"})).await;
    assert_failed(&missing, "working memory key \"other\" is not set or has expired");

    let args = json!({"key": "t", "value": "v", "ttl_seconds": 0});
    let refused = call_tool(&server, &id, "working_memory_set", args).await;
    assert_failed(&refused, "argument `ttl_seconds` must be an integer in 1..=2592000");
    let args = json!({"key": "t", "value": "v"});
    let refused = call_tool(&server, &id, "working_memory_set", args).await;
    assert_failed(&refused, "argument `ttl_seconds` must be an integer in 1..=2592000");
    let args = json!({"key": "big", "value": "x".repeat(16 * 1024 + 1), "ttl_seconds": 60});
    let refused = call_tool(&server, &id, "working_memory_set", args).await;
    assert_failed(&refused, "working memory key \"big\": value is 16385 bytes, over value_bytes_max 16384");

    let deleted = call_tool(&server, &id, "working_memory_delete", json!({"key": "plan"})).await;
    assert_eq!(deleted["tool_return"], "Deleted working memory key \"plan\".");
    let again = call_tool(&server, &id, "working_memory_delete", json!({"key": "plan"})).await;
    assert_failed(&again, "working memory key \"plan\" is not set or has expired");
    let system = last_system_prompt(&fake);
    assert!(
        system.contains("<working_memory entries=\"0/256\" bytes=\"0/262144\">\n</working_memory>"),
        "{system}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn working_memory_entry_expires_on_the_server_clock_and_leaves_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("expiry", &[]).await;
    let args = json!({"key": "flash", "value": "gone soon", "ttl_seconds": 1});
    call_tool(&server, &id, "working_memory_set", args).await;
    let args = json!({"key": "stays", "value": "here", "ttl_seconds": 600});
    call_tool(&server, &id, "working_memory_set", args).await;
    assert!(last_system_prompt(&fake).contains(": gone soon\n"));

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let expired = call_tool(&server, &id, "working_memory_get", json!({"key": "flash"})).await;
    assert_failed(&expired, "working memory key \"flash\" is not set or has expired");
    let system = last_system_prompt(&fake);
    assert!(!system.contains("flash"), "an expired entry is not rendered: {system}");
    assert!(
        system.contains("<working_memory entries=\"1/256\" bytes=\"9/262144\">\nstays (expires in "),
        "{system}"
    );
    let stays = call_tool(&server, &id, "working_memory_get", json!({"key": "stays"})).await;
    assert_eq!(stays["tool_return"], "here");
    server.shutdown().await;
}

#[tokio::test]
async fn working_memory_and_tool_edits_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("durable", &[]).await;
    let args = json!({"key": "goal", "value": "finish the essay", "ttl_seconds": 3600});
    call_tool(&server, &id, "working_memory_set", args).await;
    call_tool(&server, &id, "memory_insert", json!({"label": "human", "new_string": "Writes essays."})).await;
    server.shutdown().await;

    let restarted = common::start(dir.path(), &fake).await;
    assert_eq!(block_value(&restarted, &id, "human").await, "Name: Ana.\nWrites essays.");
    let got = call_tool(&restarted, &id, "working_memory_get", json!({"key": "goal"})).await;
    assert_eq!(
        (got["status"].as_str(), got["tool_return"].as_str()),
        (Some("success"), Some("finish the essay"))
    );
    assert!(last_system_prompt(&fake).contains(" s): finish the essay\n"));
    restarted.shutdown().await;
}

#[tokio::test]
async fn working_memory_travels_with_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("exported", &[]).await;
    let args = json!({"key": "goal", "value": "finish the essay", "ttl_seconds": 3600});
    call_tool(&server, &id, "working_memory_set", args).await;
    let exported = server.ok("GET", &format!("/v1/agents/{id}/export"), None).await;
    assert_eq!(exported["kelpie_agent"]["working"]["entries"]["goal"]["value"], "finish the essay");

    let boundary = "kelpie-memory-tools";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"agent.json\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&serde_json::to_vec(&exported).unwrap());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let response = server
        .http
        .post(format!("{}/v1/agents/import", server.base))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let copy = answer["agent_ids"][0].as_str().unwrap().to_string();
    assert_ne!(copy, id);
    let got = call_tool(&server, &copy, "working_memory_get", json!({"key": "goal"})).await;
    assert_eq!(got["tool_return"], "finish the essay");
    server.shutdown().await;
}
