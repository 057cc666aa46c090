//! Custom Python tools over HTTP: create (schema derived or given), upsert,
//! modify, delete, attach to an agent, and calls from the agent loop run
//! out of process (results, failures and bad input).

mod common;

use serde_json::{json, Value};

const ROLL_DIE: &str = "def roll_die(sides: int) -> str:\n    \"\"\"Roll a die.\n\n    Args:\n        sides (int): number of sides\n\n    Returns:\n        str: the result\n    \"\"\"\n    return str(min(sides, 4))\n";

const FAILING: &str =
    "def explode(reason: str) -> str:\n    \"\"\"Always fails.\"\"\"\n    raise RuntimeError(reason)\n";

#[tokio::test]
async fn create_derives_schema_and_crud_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let created =
        server.ok("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE, "tags": ["dice"]}))).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("tool-") && id.len() == 41, "{id}");
    assert_eq!(
        (created["name"].as_str(), created["tool_type"].as_str(), created["description"].as_str()),
        (Some("roll_die"), Some("custom"), Some("Roll a die."))
    );
    assert_eq!(
        created["json_schema"],
        json!({"name": "roll_die", "description": "Roll a die.", "parameters": {"type": "object",
            "properties": {"sides": {"type": "integer", "description": "number of sides"}}, "required": ["sides"]}})
    );
    assert_eq!(created["source_code"], ROLL_DIE);
    assert_eq!(created["tags"], json!(["dice"]));
    assert_eq!(server.ok("GET", &format!("/v1/tools/{id}"), None).await, created);
    let listed = server.ok("GET", "/v1/tools/", None).await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 16, "{names:?}");
    assert_eq!(names[15], "roll_die");

    let patched = server
        .ok("PATCH", &format!("/v1/tools/{id}"), Some(json!({"description": "Roll it.", "tags": []})))
        .await;
    assert_eq!(
        (patched["description"].as_str(), patched["json_schema"]["description"].as_str()),
        (Some("Roll it."), Some("Roll it."))
    );
    assert_eq!(patched["tags"], json!([]));

    let new_source = ROLL_DIE.replace("min(sides, 4)", "sides * 2");
    let upserted = server.ok("PUT", "/v1/tools/", Some(json!({"source_code": new_source}))).await;
    assert_eq!(
        (upserted["id"].as_str(), upserted["source_code"].as_str()),
        (Some(id.as_str()), Some(new_source.as_str()))
    );

    let deleted = server.ok("DELETE", &format!("/v1/tools/{id}"), None).await;
    assert_eq!(deleted["message"], format!("Tool id={id} successfully deleted"));
    let (status, body) = server.call("GET", &format!("/v1/tools/{id}"), None).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (404, Some(format!("Tool with ID {id} not found").as_str()))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn bad_tool_input_is_4xx_with_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/tools/",
            json!({"source_code": "def f(x:\n"}),
            422,
            "source_code is not valid Python: line 1",
        ),
        (
            "POST",
            "/v1/tools/",
            json!({"source_code": "def f(x):\n    return x\n"}),
            422,
            "parameter `x` of f has no supported type",
        ),
        (
            "POST",
            "/v1/tools/",
            json!({"source_code": "x = 1\n"}),
            422,
            "source_code defines no top-level function",
        ),
        (
            "POST",
            "/v1/tools/",
            json!({"source_code": ROLL_DIE, "json_schema": {"name": "other", "parameters": {}}}),
            422,
            "json_schema names \"other\"",
        ),
        ("POST", "/v1/tools/", json!({"description": "no source"}), 422, "source_code"),
        (
            "POST",
            "/v1/tools/",
            json!({"source_code": "def send_message(message: str) -> str:\n    return message\n"}),
            409,
            "a tool named \"send_message\" already exists",
        ),
        (
            "PATCH",
            "/v1/tools/tool-00000000-0000-4000-8000-6b656c700001",
            json!({"description": "x"}),
            422,
            "cannot be changed",
        ),
        ("DELETE", "/v1/tools/tool-nope", Value::Null, 404, "Tool with ID tool-nope not found"),
        ("PATCH", "/v1/tools/tool-nope", json!({}), 404, "Tool with ID tool-nope not found"),
    ];
    for (method, path, body, status, detail) in cases {
        let body = if body.is_null() { None } else { Some(body) };
        let (got, answer) = server.call(method, path, body.clone()).await;
        let text = answer["detail"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{method} {path} {body:?}: {answer}");
        assert!(text.contains(detail), "{method} {path}: {text:?} lacks {detail:?}");
    }
    server.ok("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE}))).await;
    let (status, body) = server.call("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE}))).await;
    assert_eq!((status, body["detail"].as_str()), (409, Some("a tool named \"roll_die\" already exists")));
    server.shutdown().await;
}

async fn send_call(server: &common::Running, agent_id: &str, text: &str) -> Vec<Value> {
    let response = server.say(agent_id, text).await;
    response["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn attached_custom_tool_is_called_out_of_process_by_the_agent_loop() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE}))).await;
    let failing = server.ok("POST", "/v1/tools/", Some(json!({"source_code": FAILING}))).await;
    let agent_id = server.create_agent("dice", &[]).await;
    for tool_id in [&tool["id"], &failing["id"]] {
        let agent = server
            .ok("PATCH", &format!("/v1/agents/{agent_id}/tools/attach/{}", tool_id.as_str().unwrap()), None)
            .await;
        assert!(agent["tools"].as_array().unwrap().iter().any(|t| &t["id"] == tool_id));
    }
    let messages = send_call(&server, &agent_id, "/call roll_die {\"sides\": 9}").await;
    let kinds: Vec<&str> = messages.iter().map(|m| m["message_type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]);
    assert_eq!(
        (messages[2]["tool_return"].as_str(), messages[2]["status"].as_str()),
        (Some("4"), Some("success"))
    );
    let last_request = fake.requests().last().cloned().unwrap();
    let offered: Vec<&str> = last_request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"roll_die") && offered.contains(&"explode"), "{offered:?}");

    let messages = send_call(&server, &agent_id, "/call explode {\"reason\": \"boom\"}").await;
    assert_eq!(
        (messages[2]["tool_return"].as_str(), messages[2]["status"].as_str()),
        (Some("tool explode failed: RuntimeError: boom"), Some("error"))
    );
    let messages = send_call(&server, &agent_id, "/call roll_die {}").await;
    let text = messages[2]["tool_return"].as_str().unwrap();
    assert!(text.starts_with("tool roll_die failed: TypeError"), "{text}");

    server
        .ok("PATCH", &format!("/v1/agents/{agent_id}/tools/detach/{}", tool["id"].as_str().unwrap()), None)
        .await;
    let messages = send_call(&server, &agent_id, "/call roll_die {\"sides\": 2}").await;
    assert_eq!(
        (messages[2]["tool_return"].as_str(), messages[2]["status"].as_str()),
        (Some("tool roll_die is not available to this agent"), Some("error"))
    );
    let (status, body) =
        server.call("PATCH", &format!("/v1/agents/{agent_id}/tools/attach/tool-nope"), None).await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("Tool with ID tool-nope not found")));
    server.shutdown().await;
}

#[tokio::test]
async fn custom_tools_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": ROLL_DIE}))).await;
    let agent = server
        .ok(
            "POST",
            "/v1/agents/",
            Some(json!({"name": "r", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]]})),
        )
        .await;
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    assert_eq!(server.ok("GET", &format!("/v1/tools/{}", tool["id"].as_str().unwrap()), None).await, tool);
    let fetched = server.ok("GET", &format!("/v1/agents/{}", agent["id"].as_str().unwrap()), None).await;
    assert_eq!(fetched["tools"], agent["tools"]);
    let messages = send_call(&server, agent["id"].as_str().unwrap(), "/call roll_die {\"sides\": 3}").await;
    assert_eq!(messages[2]["tool_return"], "3");
    server.shutdown().await;
}

/// `POST /v1/tools/generate-tool`: the model is offered `generate_tool`;
/// its source comes back as a tool with the schema `POST /v1/tools/`
/// derives, the sample arguments and the model's text, and nothing is
/// stored. A source that does not parse is Letta's 400; a model that
/// calls nothing or fails is 502; bad input is 422.
#[tokio::test]
async fn generate_tool_parses_the_models_source_without_storing_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ask = |name: &str, prompt: &str| json!({"tool_name": name, "prompt": prompt, "validation_errors": ["no docstring"]});

    let generated = server.ok("POST", "/v1/tools/generate-tool", Some(ask("shout", "Shout the text."))).await;
    let tool = &generated["tool"];
    assert!(tool["id"].as_str().unwrap().starts_with("tool-"), "{tool}");
    assert_eq!(
        (&tool["name"], &tool["tool_type"], &tool["source_type"]),
        (&json!("shout"), &json!("custom"), &json!("python"))
    );
    assert!(tool["source_code"].as_str().unwrap().starts_with("def shout(text: str) -> str:"), "{tool}");
    assert_eq!(tool["json_schema"]["name"], "shout");
    assert_eq!(tool["json_schema"]["description"], "Shout the text.");
    assert_eq!(tool["json_schema"]["parameters"]["properties"]["text"]["type"], "string");
    assert_eq!(generated["sample_args"], json!({"text": "hello"}));
    assert_eq!(generated["response"], "Here is shout.");
    let listed = server.ok("GET", "/v1/tools/?name=shout", None).await;
    assert_eq!(listed, json!([]), "a generated tool is not stored");

    let sent = fake.requests().pop().unwrap();
    assert_eq!(sent["tools"][0]["function"]["name"], "generate_tool");
    let required = &sent["tools"][0]["function"]["parameters"]["required"];
    assert_eq!(required, &json!(["raw_source_code", "sample_args_json", "pip_requirements_json"]));
    let roles: Vec<&str> =
        sent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "assistant", "user"]);
    let user = sent["messages"][2]["content"].as_str().unwrap();
    assert!(
        user.starts_with("Write a Python function named shout.") && user.contains("no docstring"),
        "{user}"
    );

    let cases: Vec<(Value, u16, &str)> = vec![
        (
            ask("shout", "/source def shout(:"),
            400,
            "Failed to generate JSON schema for tool 'shout': source_code is not valid Python",
        ),
        (ask("shout", "/text"), 502, "did not call generate_tool"),
        (ask("shout-it", "x"), 422, "must be a Python identifier"),
        (json!({"tool_name": "shout", "prompt": "x"}), 422, "validation_errors"),
        (ask("shout", &"x".repeat(256 * 1024 + 1)), 413, "GENERATE_TOOL_INPUT_BYTES_MAX"),
    ];
    for (body, status, detail) in cases {
        let (got, answer) = server.call("POST", "/v1/tools/generate-tool", Some(body)).await;
        assert_eq!(got, status, "{answer}");
        assert!(answer["detail"].as_str().unwrap().contains(detail), "{answer} lacks {detail:?}");
    }
    fake.push_status(400);
    let (status, answer) = server.call("POST", "/v1/tools/generate-tool", Some(ask("shout", "x"))).await;
    assert_eq!(status, 502, "a model error: {answer}");
    assert!(answer["detail"].as_str().unwrap().contains("answered 400"), "{answer}");
    server.shutdown().await;
}
