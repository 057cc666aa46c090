//! Agent export (`GET /v1/agents/{id}/export`) and import
//! (`POST /v1/agents/import`, multipart) round trip.

mod common;

use kelpie_agent::letta_af::AGENT_FILE_AGENTS_COUNT_MAX;
use serde_json::{json, Value};

const BOUNDARY: &str = "kelpie-test-boundary";

/// A multipart form of `fields` (name, content).
fn form(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, content) in fields {
        let filename = if *name == "file" { "; filename=\"agent.json\"" } else { "" };
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn import(server: &common::Running, body: Vec<u8>) -> (u16, Value) {
    let response = server
        .http
        .post(format!("{}/v1/agents/import", server.base))
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn strip_ids(items: &Value, fields: &[&str]) -> Vec<Value> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let mut item = item.clone();
            for field in ["id", "otid", "created_at", "updated_at", "date", "step_id", "run_id"] {
                item.as_object_mut().unwrap().remove(field);
            }
            fields.iter().map(|field| item[*field].clone()).collect::<Vec<_>>().into()
        })
        .collect()
}

#[tokio::test]
async fn exported_agent_imports_with_same_blocks_messages_and_passages() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &["demo"]).await;
    server.say(&ana, "hello there").await;
    server.say(&ana, "/call core_memory_append {\"label\": \"human\", \"content\": \"Likes chess.\"}").await;
    for text in ["The key is under the stone.", "Ana was born in Porto."] {
        server.ok("POST", &format!("/v1/agents/{ana}/archival-memory"), Some(json!({"text": text}))).await;
    }
    let exported = server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await;
    assert_eq!(exported["kelpie_agent_file_version"], 1);
    let file = serde_json::to_vec(&exported).unwrap();

    let (status, answer) = import(&server, form(&[("file", &file)])).await;
    assert_eq!(status, 200, "{answer}");
    let copy = answer["agent_ids"][0].as_str().unwrap().to_string();
    assert_ne!(copy, ana);
    let original = server.ok("GET", &format!("/v1/agents/{ana}"), None).await;
    let imported = server.ok("GET", &format!("/v1/agents/{copy}"), None).await;
    assert_eq!(imported["name"], "ana_copy");
    assert_eq!(
        (imported["tags"].clone(), imported["system"].clone()),
        (original["tags"].clone(), original["system"].clone())
    );
    let block_fields = ["label", "value", "limit", "description", "read_only"];
    assert_eq!(strip_ids(&imported["blocks"], &block_fields), strip_ids(&original["blocks"], &block_fields));
    assert_eq!(imported["blocks"][0]["value"], "Name: Ana.\nLikes chess.");
    assert_ne!(imported["blocks"][0]["id"], original["blocks"][0]["id"]);

    let message_fields = ["message_type", "content", "tool_call", "tool_return", "status"];
    let messages_of = |id: String| {
        let server = &server;
        async move { server.ok("GET", &format!("/v1/agents/{id}/messages?limit=1000"), None).await }
    };
    let (old_messages, new_messages) = (messages_of(ana.clone()).await, messages_of(copy.clone()).await);
    assert!(old_messages.as_array().unwrap().len() >= 4, "{old_messages}");
    assert_eq!(strip_ids(&new_messages, &message_fields), strip_ids(&old_messages, &message_fields));

    let passages_of = |id: String| {
        let server = &server;
        async move { server.ok("GET", &format!("/v1/agents/{id}/archival-memory"), None).await }
    };
    let new_passages = passages_of(copy.clone()).await;
    assert_eq!(
        strip_ids(&new_passages, &["text", "tags"]),
        strip_ids(&passages_of(ana.clone()).await, &["text", "tags"])
    );
    assert_eq!(new_passages.as_array().unwrap().len(), 2);
    // The copy's passages are its own: searchable there, and deleting one leaves the original's.
    let found = server.ok("GET", &format!("/v1/agents/{copy}/archival-memory/search?query=key"), None).await;
    assert_eq!(found["results"][0]["content"], "The key is under the stone.");
    let passage_id = new_passages[0]["id"].as_str().unwrap();
    server.ok("DELETE", &format!("/v1/agents/{copy}/archival-memory/{passage_id}"), None).await;
    assert_eq!(passages_of(ana.clone()).await.as_array().unwrap().len(), 2);

    let listed = server.ok("GET", "/v1/agents/?name=ana_copy", None).await;
    assert_eq!(listed[0]["id"], copy.as_str());
    let form = form(&[("file", &file), ("override_name", b"bo"), ("strip_messages", b"true")]);
    let (status, answer) = import(&server, form).await;
    assert_eq!(status, 200, "{answer}");
    let bo = answer["agent_ids"][0].as_str().unwrap().to_string();
    assert_eq!(server.ok("GET", &format!("/v1/agents/{bo}"), None).await["name"], "bo");
    assert_eq!(messages_of(bo).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn export_and_import_bad_input_is_4xx_with_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let (status, body) = server.call("GET", "/v1/agents/agent-missing/export", None).await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("Agent with ID agent-missing not found")));

    let (status, body) = server.call("POST", "/v1/agents/import", Some(json!({"file": "x"}))).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("multipart/form-data"), "{body}");
    let cases: [(Vec<u8>, &str); 4] = [
        (form(&[("name", b"x")]), "no file field"),
        (form(&[("file", b"{not json")]), "not a kelpie agent file"),
        (form(&[("file", b"{\"kelpie_agent_file_version\": 1}")]), "not a kelpie agent file"),
        (form(&[("file", b"{}"), ("strip_messages", b"maybe")]), "strip_messages must be true or false"),
    ];
    for (body, detail) in cases {
        let (status, answer) = import(&server, body).await;
        assert_eq!(status, 422, "{answer}");
        assert!(answer["detail"].as_str().unwrap().contains(detail), "{detail}: {answer}");
    }
    // A file whose block is over its limit is refused; no agent is created.
    let ana = server.create_agent("ana", &[]).await;
    let mut exported = server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await;
    exported["kelpie_agent"]["memory"]["blocks"][0]["value"] = json!("x".repeat(101));
    exported["kelpie_agent_file_version"] = json!(1);
    let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&exported).unwrap())])).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("over the block's limit of 100"), "{answer}");
    exported["kelpie_agent_file_version"] = json!(2);
    let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&exported).unwrap())])).await;
    assert_eq!((status, answer["detail"].as_str()), (422, Some("agent file version 2 is not 1")));
    assert_eq!(server.ok("GET", "/v1/agents/", None).await.as_array().unwrap().len(), 1);
    server.shutdown().await;
}

const ROLL_DIE: &str =
    "def roll_die(sides: int) -> str:\n    \"\"\"Roll a die.\"\"\"\n    return str(sides)\n";

#[tokio::test]
async fn attached_custom_tool_travels_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE}))).await;
    let tool_id = tool["id"].as_str().unwrap().to_string();
    server.ok("PATCH", &format!("/v1/agents/{ana}/tools/attach/{tool_id}"), None).await;
    let exported = server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await;
    assert_eq!(exported["kelpie_custom_tools"][0]["name"], "roll_die");
    let file = serde_json::to_vec(&exported).unwrap();

    // The tool still exists: the copy gets the same tool, by name.
    let (status, answer) = import(&server, form(&[("file", &file)])).await;
    assert_eq!(status, 200, "{answer}");
    let copy =
        server.ok("GET", &format!("/v1/agents/{}", answer["agent_ids"][0].as_str().unwrap()), None).await;
    let custom: Vec<&Value> =
        copy["tools"].as_array().unwrap().iter().filter(|t| t["tool_type"] == "custom").collect();
    assert_eq!((custom.len(), custom[0]["id"].as_str()), (1, Some(tool_id.as_str())));

    // Deleted since: the import creates it again and attaches the new one.
    server.ok("DELETE", &format!("/v1/tools/{tool_id}"), None).await;
    let (status, answer) = import(&server, form(&[("file", &file)])).await;
    assert_eq!(status, 200, "{answer}");
    let copy =
        server.ok("GET", &format!("/v1/agents/{}", answer["agent_ids"][0].as_str().unwrap()), None).await;
    let custom: Vec<&Value> =
        copy["tools"].as_array().unwrap().iter().filter(|t| t["tool_type"] == "custom").collect();
    assert_eq!(
        (custom.len(), custom[0]["name"].as_str(), custom[0]["source_code"].as_str()),
        (1, Some("roll_die"), Some(ROLL_DIE))
    );
    let recreated = server.ok("GET", "/v1/tools/", None).await;
    assert!(recreated.as_array().unwrap().iter().any(|t| t["id"] == custom[0]["id"]), "{recreated}");
    server.shutdown().await;
}

/// Real Letta agent files (`tests/fixtures/letta-agent-files`, as published).
const LETTA_AGENT_FILES: [&str; 3] = ["memgpt_agent_with_convo.af", "deep_research_agent.af", "loop.af"];

fn letta_agent_file(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/letta-agent-files")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// What Kelpie shows of the file's messages, in order: (message_type, the
/// text or tool name it carries).
fn expected_messages(agent: &Value) -> Vec<(String, String)> {
    let text = |content: &Value| match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
        _ => String::new(),
    };
    let mut expected = Vec::new();
    for message in agent["messages"].as_array().unwrap() {
        match message["role"].as_str().unwrap() {
            "user" => expected.push(("user_message".to_string(), text(&message["content"]))),
            "assistant" => {
                for call in message["tool_calls"].as_array().into_iter().flatten() {
                    let name = call["function"]["name"].as_str().unwrap();
                    let args: Value =
                        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                    match name {
                        "send_message" => expected
                            .push(("assistant_message".into(), args["message"].as_str().unwrap().into())),
                        _ => expected.push(("tool_call_message".into(), name.to_string())),
                    }
                }
            }
            _ => {}
        }
    }
    expected
}

#[tokio::test]
async fn letta_agent_files_import_block_by_block_tool_by_tool_message_by_message() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let builtins: Vec<String> =
        kelpie_tools::builtin_tools().iter().map(|tool| tool.name.to_string()).collect();
    for name in LETTA_AGENT_FILES {
        let raw = letta_agent_file(name);
        let file: Value = serde_json::from_slice(&raw).unwrap();
        let agent = &file["agents"][0];
        let (status, answer) =
            import(&server, form(&[("file", &raw), ("append_copy_suffix", b"false")])).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let id = answer["agent_ids"][0].as_str().unwrap().to_string();
        let warnings: Vec<String> = answer["warnings"]
            .as_array()
            .map(|w| w.iter().map(|w| w.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let imported = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
        assert_eq!(imported["name"], agent["name"], "{name}");
        assert_eq!(imported["system"], agent["system"], "{name}");
        assert_eq!(imported["description"], agent["description"], "{name}");
        for field in ["max_files_open", "per_file_view_window_char_limit"] {
            assert_eq!(imported[field], agent[field], "{name}: {field}");
        }

        // Blocks: every one the agent links, as the file has it.
        let blocks = server.ok("GET", &format!("/v1/agents/{id}/core-memory/blocks"), None).await;
        let linked: Vec<&Value> = agent["block_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|block_id| file["blocks"].as_array().unwrap().iter().find(|b| b["id"] == *block_id).unwrap())
            .collect();
        assert_eq!(blocks.as_array().unwrap().len(), linked.len(), "{name}: {blocks}");
        for want in linked {
            let got = blocks.as_array().unwrap().iter().find(|b| b["label"] == want["label"]).unwrap();
            for field in ["value", "limit", "description", "read_only"] {
                assert_eq!(got[field], want[field], "{name}: block {} field {field}", want["label"]);
            }
        }

        // Tools: custom ones with their source; Letta's own by name when
        // Kelpie has them, else named in a warning.
        let tools = server.ok("GET", &format!("/v1/agents/{id}/tools"), None).await;
        let attached: Vec<&str> =
            tools.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        for tool_id in agent["tool_ids"].as_array().unwrap() {
            let want = file["tools"].as_array().unwrap().iter().find(|t| t["id"] == *tool_id).unwrap();
            let tool_name = want["name"].as_str().unwrap();
            if want["tool_type"] == "custom" {
                let got = tools.as_array().unwrap().iter().find(|t| t["name"] == tool_name).unwrap();
                assert_eq!(got["source_code"], want["source_code"], "{name}: tool {tool_name}");
                assert_eq!(got["tool_type"], "custom", "{name}: tool {tool_name}");
            } else if builtins.iter().any(|b| b == tool_name) {
                assert!(attached.contains(&tool_name), "{name}: built-in {tool_name} attached: {attached:?}");
            } else {
                assert!(!attached.contains(&tool_name), "{name}: {tool_name}");
                assert!(
                    warnings.iter().any(|w| w.contains(tool_name)),
                    "{name}: {tool_name} named in {warnings:?}"
                );
            }
        }

        // Messages: the file's, in order.
        let messages =
            server.ok("GET", &format!("/v1/agents/{id}/messages?limit=1000&order=asc"), None).await;
        let shown: Vec<(String, String)> = messages
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let kind = m["message_type"].as_str()?.to_string();
                let carried = match kind.as_str() {
                    "tool_call_message" => m["tool_call"]["name"].as_str()?.to_string(),
                    "user_message" | "assistant_message" => m["content"].as_str()?.to_string(),
                    _ => return None,
                };
                Some((kind, carried))
            })
            .collect();
        assert_eq!(shown, expected_messages(agent), "{name}");

        // The file's model, or this server's default when it has not that
        // one (the warning says so).
        let handle = imported["llm_config"]["handle"].as_str().unwrap();
        let file_model = agent["llm_config"]["model"].as_str().unwrap();
        match handle.ends_with(file_model) {
            true => assert!(!warnings.iter().any(|w| w.starts_with("model")), "{name}: {warnings:?}"),
            false => {
                assert!(warnings.iter().any(|w| w.contains(file_model)), "{name}: {handle} {warnings:?}")
            }
        }
        // The imported agent takes a turn.
        let reply = server.say(&id, "hello again").await;
        assert!(
            reply["messages"].as_array().unwrap().iter().any(|m| m["message_type"] == "assistant_message"),
            "{reply}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn letta_agent_files_kelpie_cannot_import_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let file: Value = serde_json::from_slice(&letta_agent_file("memgpt_agent_with_convo.af")).unwrap();
    let mut two = file.clone();
    two["agents"].as_array_mut().unwrap().push(file["agents"][0].clone());
    let mut grouped = file.clone();
    grouped["groups"] = json!([{"id": "group-0", "agent_ids": ["agent-0", "agent-7"]}]);
    let mut crowded = file.clone();
    crowded["agents"] = (0..=AGENT_FILE_AGENTS_COUNT_MAX)
        .map(|n| {
            let mut agent = file["agents"][0].clone();
            (agent["id"], agent["messages"]) = (json!(format!("agent-{n}")), json!([]));
            agent
        })
        .collect();
    let mut dangling = file.clone();
    dangling["agents"][0]["block_ids"] = json!(["block-404"]);
    let mut no_agents = file.clone();
    no_agents["agents"] = json!([]);
    for (case, body, says) in [
        ("an id twice", two, "id \"agent-0\" is in the file twice"),
        (
            "a group of an agent not in the file",
            grouped,
            "group group-0 names agent \"agent-7\", not in the file",
        ),
        ("past the agent count max", crowded, "over AGENT_FILE_AGENTS_COUNT_MAX"),
        ("a dangling block", dangling, "block-404"),
        ("no agent", no_agents, "0 agents"),
    ] {
        let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&body).unwrap())])).await;
        assert_eq!(status, 422, "{case}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(says), "{case}: {answer}");
    }
    // A model the client names instead of the file's must exist here.
    let raw = letta_agent_file("loop.af");
    let body = form(&[("file", &raw), ("override_model_handle", b"nowhere/model-x")]);
    let (status, answer) = import(&server, body).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("nowhere"), "{answer}");
    // Nothing of the refused files is listed.
    assert_eq!(server.ok("GET", "/v1/agents/", None).await, json!([]));
    // An override that exists replaces the file's model.
    let body = form(&[("file", &raw), ("override_model_handle", b"openai-proxy/other-model")]);
    let (status, answer) = import(&server, body).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["agent_ids"][0].as_str().unwrap();
    let agent = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
    assert_eq!(agent["llm_config"]["handle"], "openai-proxy/other-model");
    server.shutdown().await;
}

#[tokio::test]
async fn an_export_is_a_letta_agent_file_that_imports_without_kelpie_parts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE}))).await;
    server
        .ok("PATCH", &format!("/v1/agents/{ana}/tools/attach/{}", tool["id"].as_str().unwrap()), None)
        .await;
    server.say(&ana, "hello there").await;
    server.say(&ana, "/call core_memory_append {\"label\": \"human\", \"content\": \"Likes chess.\"}").await;
    let exported = server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await;

    // Letta's part: the agent, its blocks and tools by the file's ids, its messages.
    let agent = &exported["agents"][0];
    assert_eq!((agent["name"].as_str(), agent["id"].as_str()), (Some("ana"), Some("agent-0")));
    for list in ["groups", "files", "sources", "mcp_servers"] {
        assert_eq!(exported[list], json!([]), "{list}");
    }
    let blocks = exported["blocks"].as_array().unwrap();
    assert_eq!(agent["block_ids"].as_array().unwrap().len(), blocks.len());
    let human = blocks.iter().find(|b| b["label"] == "human").unwrap();
    assert_eq!(human["value"], "Name: Ana.\nLikes chess.");
    let tools = exported["tools"].as_array().unwrap();
    assert_eq!(agent["tool_ids"].as_array().unwrap().len(), tools.len());
    let roll = tools.iter().find(|t| t["name"] == "roll_die").unwrap();
    assert_eq!((roll["tool_type"].as_str(), roll["source_code"].as_str()), (Some("custom"), Some(ROLL_DIE)));
    let roles: Vec<&str> =
        agent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "user").count(), 2, "{roles:?}");
    assert!(roles.contains(&"tool"), "{roles:?}");
    assert!(agent.get("secrets").is_none_or(Value::is_null), "secrets stay out of the Letta part");

    // Without Kelpie's parts it is a Letta file, and imports as one.
    let mut letta = exported.clone();
    letta.as_object_mut().unwrap().retain(|key, _| !key.starts_with("kelpie_"));
    let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&letta).unwrap())])).await;
    assert_eq!(status, 200, "{answer}");
    let copy = answer["agent_ids"][0].as_str().unwrap().to_string();
    let original = server.ok("GET", &format!("/v1/agents/{ana}"), None).await;
    let imported = server.ok("GET", &format!("/v1/agents/{copy}"), None).await;
    let block_fields = ["label", "value", "limit", "description", "read_only"];
    assert_eq!(strip_ids(&imported["blocks"], &block_fields), strip_ids(&original["blocks"], &block_fields));
    let names = |agent: &Value| {
        let mut names: Vec<String> = agent["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&imported), names(&original));
    let message_fields = ["message_type", "content", "tool_call", "tool_return", "status"];
    let messages_of = |id: String| {
        let server = &server;
        async move { server.ok("GET", &format!("/v1/agents/{id}/messages?limit=1000"), None).await }
    };
    assert_eq!(
        strip_ids(&messages_of(copy).await, &message_fields),
        strip_ids(&messages_of(ana).await, &message_fields)
    );
    server.shutdown().await;
}

/// A Letta file of three agents sharing their `human` block, in a round
/// robin group of all three and a supervisor group the first manages.
fn team_file() -> Value {
    let agent = |n: usize, name: &str| {
        json!({
            "id": format!("agent-{n}"), "name": name, "system": format!("You are {name}."),
            "block_ids": ["block-0", format!("block-{}", n + 1)], "tool_ids": [], "tool_rules": [],
            "llm_config": {"handle": "openai-proxy/fake-gpt", "context_window": 16000},
            "messages": [{"id": format!("message-{n}"), "role": "user",
                          "content": [{"type": "text", "text": format!("hi {name}")}]}],
        })
    };
    json!({
        "agents": [agent(0, "lead"), agent(1, "left"), agent(2, "right")],
        "groups": [
            {"id": "group-0", "agent_ids": ["agent-0", "agent-1", "agent-2"], "description": "all",
             "manager_config": {"manager_type": "round_robin"}},
            {"id": "group-1", "agent_ids": ["agent-1", "agent-2"], "description": "led",
             "manager_config": {"manager_type": "supervisor", "manager_agent_id": "agent-0"}},
        ],
        "blocks": [
            {"id": "block-0", "label": "human", "value": "Shared user.", "limit": 2000},
            {"id": "block-1", "label": "persona", "value": "Lead.", "limit": 2000},
            {"id": "block-2", "label": "persona", "value": "Left.", "limit": 2000},
            {"id": "block-3", "label": "persona", "value": "Right.", "limit": 2000},
        ],
        "tools": [], "files": [], "sources": [], "mcp_servers": [],
    })
}

#[tokio::test]
async fn a_letta_file_of_several_agents_and_groups_imports_them_all_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body =
        form(&[("file", &serde_json::to_vec(&team_file()).unwrap()), ("append_copy_suffix", b"false")]);
    let (status, answer) = import(&server, body).await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<String> =
        answer["agent_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_string()).collect();
    let mut human_ids = Vec::new();
    for (id, (name, persona)) in ids.iter().zip([("lead", "Lead."), ("left", "Left."), ("right", "Right.")]) {
        let agent = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
        assert_eq!(
            (agent["name"].as_str(), agent["system"].as_str()),
            (Some(name), Some(&*format!("You are {name}.")))
        );
        let blocks = agent["blocks"].as_array().unwrap();
        assert_eq!(
            (blocks[0]["label"].as_str(), blocks[0]["value"].as_str()),
            (Some("human"), Some("Shared user."))
        );
        assert_eq!(blocks[1]["value"], persona);
        human_ids.push(blocks[0]["id"].clone());
        let messages = server.ok("GET", &format!("/v1/agents/{id}/messages"), None).await;
        let texts: Vec<&str> =
            messages.as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
        assert_eq!(texts, vec![format!("hi {name}")]);
    }
    assert!(human_ids.iter().all(|id| *id == human_ids[0]), "one shared block: {human_ids:?}");
    let block_agents =
        server.ok("GET", &format!("/v1/blocks/{}/agents", human_ids[0].as_str().unwrap()), None).await;
    assert_eq!(block_agents.as_array().unwrap().len(), 3);
    let groups = server.ok("GET", "/v1/groups/", None).await;
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    let by_type = |kind: &str| groups.iter().find(|g| g["manager_type"] == kind).unwrap().clone();
    assert_eq!(by_type("round_robin")["agent_ids"], json!(ids));
    assert_eq!(by_type("supervisor")["agent_ids"], json!(ids[1..]));
    assert_eq!(by_type("supervisor")["manager_agent_id"], json!(ids[0]));
    // A file whose third agent cannot be made leaves nothing: not listed, not found.
    let mut broken = team_file();
    broken["agents"][2]["name"] = json!("");
    let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&broken).unwrap())])).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("name"), "{answer}");
    assert_eq!(server.ok("GET", "/v1/agents/", None).await.as_array().unwrap().len(), 3);
    assert_eq!(server.ok("GET", "/v1/groups/", None).await.as_array().unwrap().len(), 2);
    assert_eq!(server.ok("GET", "/v1/blocks/", None).await.as_array().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_exported_agent_keeps_its_conversations_through_an_import() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let mut originals = Vec::new();
    for (summary, said) in [("chess", vec!["e4", "Nf3"]), ("tea", vec!["green"])] {
        let made = server
            .ok("POST", &format!("/v1/conversations/?agent_id={ana}"), Some(json!({"summary": summary})))
            .await;
        let id = made["id"].as_str().unwrap().to_string();
        for text in said {
            let body = json!({"messages": [{"role": "user", "content": text}], "streaming": false});
            server.ok("POST", &format!("/v1/conversations/{id}/messages"), Some(body)).await;
        }
        originals.push(id);
    }
    let exported = server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await;
    let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&exported).unwrap())])).await;
    assert_eq!(status, 200, "{answer}");
    let copy = answer["agent_ids"][0].as_str().unwrap();
    let listed = |agent: String| {
        let server = &server;
        async move { server.ok("GET", &format!("/v1/conversations/?agent_id={agent}"), None).await }
    };
    let (before, after) = (listed(ana.clone()).await, listed(copy.to_string()).await);
    let summaries = |list: &Value| -> Vec<Value> {
        list.as_array().unwrap().iter().map(|c| c["summary"].clone()).collect()
    };
    let mut sorted = summaries(&after);
    sorted.sort_by_key(|summary| summary.to_string());
    assert_eq!(sorted, vec![json!("chess"), json!("tea")]);
    assert_eq!(summaries(&after), summaries(&before));
    for (old, new) in before.as_array().unwrap().iter().zip(after.as_array().unwrap()) {
        assert_ne!(old["id"], new["id"]);
        assert_eq!(new["agent_id"], copy);
        assert_eq!(
            old["in_context_message_ids"].as_array().unwrap().len(),
            new["in_context_message_ids"].as_array().unwrap().len()
        );
        let messages = |id: &Value| {
            let server = &server;
            let path = format!("/v1/conversations/{}/messages?limit=100", id.as_str().unwrap());
            async move { server.ok("GET", &path, None).await }
        };
        let fields = ["message_type", "content"];
        assert_eq!(
            strip_ids(&messages(&new["id"]).await, &fields),
            strip_ids(&messages(&old["id"]).await, &fields)
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_letta_files_sources_import_as_folders_attached_to_their_agents_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut file = team_file();
    file["groups"] = json!([]);
    file["sources"] = json!([{"id": "source-0", "name": "manual", "instructions": "quote it"}]);
    file["files"] = json!([
        {"id": "file-0", "source_id": "source-0", "file_name": "a.txt", "content": "Alpha line.\n"},
        {"id": "file-1", "source_id": "source-0", "file_name": "b.md", "content": "# Beta\n\nBeta line.\n"},
    ]);
    file["agents"][0]["source_ids"] = json!(["source-0"]);
    file["agents"][2]["folder_ids"] = json!(["source-0"]);
    // Past a limit, or naming what the file lacks: 422 and nothing made.
    let mut past = file.clone();
    past["files"][1]["file_name"] = json!("");
    let mut dangling = file.clone();
    dangling["agents"][1]["source_ids"] = json!(["source-4"]);
    for (broken, why) in [
        (past, "file file-1's name \"\" is empty or starts with a dot"),
        (dangling, "agent agent-1 names source \"source-4\", not in the file"),
    ] {
        let (status, answer) =
            import(&server, form(&[("file", &serde_json::to_vec(&broken).unwrap())])).await;
        assert_eq!(status, 422, "{answer}");
        assert!(answer["detail"].as_str().unwrap().contains(why), "{why}: {answer}");
        assert_eq!(server.ok("GET", "/v1/folders/", None).await, json!([]));
        assert_eq!(server.ok("GET", "/v1/agents/", None).await, json!([]));
    }
    let (status, answer) = import(&server, form(&[("file", &serde_json::to_vec(&file).unwrap())])).await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<&str> =
        answer["agent_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
    let folders = server.ok("GET", "/v1/folders/", None).await;
    assert_eq!(folders.as_array().unwrap().len(), 1, "{folders}");
    assert_eq!((&folders[0]["name"], &folders[0]["instructions"]), (&json!("manual"), &json!("quote it")));
    let folder_id = folders[0]["id"].as_str().unwrap();
    assert!(folder_id.starts_with("source-") && folder_id != "source-0", "{folder_id}");
    let files = server.ok("GET", &format!("/v1/folders/{folder_id}/files?order=asc"), None).await;
    let names: Vec<&str> =
        files.as_array().unwrap().iter().map(|f| f["file_name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["a.txt", "b.md"]);
    for (id, expected) in ids.iter().zip([true, false, true]) {
        let attached = server.ok("GET", &format!("/v1/agents/{id}/folders"), None).await;
        let attached: Vec<&str> =
            attached.as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
        assert_eq!(attached, if expected { vec![folder_id] } else { vec![] }, "{id}");
    }
    server.shutdown().await;
}

/// An export asked for with a body (Letta's POST form carries `spec`; a
/// client may send one with GET too) arrives whole, many times over on the
/// same connection: the body is read, not left on the socket, where it
/// made the close a reset that cut the streamed file (found by
/// schemathesis). A GET body over the request limit is 413, as for any route.
#[tokio::test]
async fn an_export_sent_with_a_body_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("bodied", &[]).await;
    for index in 0..20 {
        server.say(&agent, &format!("message {index} {}", "x".repeat(2_000))).await;
    }
    let spec = json!({"spec": {"agents": [{"name": "x".repeat(500_000)}]}}).to_string();
    for round in 0..10 {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let response = server
                .http
                .request(method.clone(), format!("{}/v1/agents/{agent}/export", server.base))
                .header("content-type", "application/json")
                .body(spec.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method} round {round}");
            let file: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(file["agents"][0]["name"], "bodied", "{method} round {round}");
            assert!(file["agents"][0]["messages"].as_array().unwrap().len() >= 40, "{method} round {round}");
        }
    }
    let over = "x".repeat(kelpie_server::routes::extract::REQUEST_BODY_BYTES_MAX + 1);
    let response =
        server.http.get(format!("{}/v1/agents/{agent}/export", server.base)).body(over).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("REQUEST_BODY_BYTES_MAX"), "{body}");
    server.shutdown().await;
}
