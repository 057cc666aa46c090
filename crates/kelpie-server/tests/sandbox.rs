//! Tool execution through the API: Letta's sandbox configuration routes,
//! the variables and agent secrets a tool call gets (and that are never sent
//! back), what a tool prints, the code interpreter, and pip requirements
//! refused at creation.
//!
//! Tools run in the process sandbox: needs bubblewrap, fails without it.

mod common;

use serde_json::{json, Value};

const SHOW_ENV: &str = "import os\ndef show_env(name: str) -> str:\n    \"\"\"Shows a variable.\"\"\"\n    print('looking up', name)\n    return os.environ.get(name, 'unset')\n";

async fn call_tool(server: &common::Running, agent_id: &str, name: &str, args: Value) -> Value {
    let messages = server.say(agent_id, &format!("/call {name} {args}")).await;
    let messages = messages["messages"].as_array().unwrap().clone();
    messages.into_iter().find(|m| m["message_type"] == "tool_return_message").expect("a tool return")
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn sandbox_config_routes_manage_the_local_config_and_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    assert_eq!(server.ok("GET", "/v1/sandbox-config/", None).await, json!([]));
    let config = server.ok("POST", "/v1/sandbox-config/local/default", None).await;
    let id = config["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sandbox-"), "{id}");
    assert_eq!(config["type"], "local");
    assert_eq!(
        config["config"],
        json!({"sandbox_dir": null, "use_venv": false, "venv_name": "venv", "pip_requirements": []})
    );
    // One local config: asking again, or creating one, keeps its id.
    assert_eq!(server.ok("POST", "/v1/sandbox-config/local/default", None).await["id"], id.as_str());
    let replaced =
        server.ok("POST", "/v1/sandbox-config/", Some(json!({"config": {"venv_name": "tools"}}))).await;
    assert_eq!(
        (replaced["id"].as_str(), replaced["config"]["venv_name"].as_str()),
        (Some(id.as_str()), Some("tools"))
    );
    let listed = server.ok("GET", "/v1/sandbox-config/?sandbox_type=local", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(server.ok("GET", "/v1/sandbox-config/?sandbox_type=e2b", None).await, json!([]));

    let path = format!("/v1/sandbox-config/{id}/environment-variable");
    let var = server
        .ok("POST", &path, Some(json!({"key": "API_TOKEN", "value": "s3cret-value", "description": "d"})))
        .await;
    assert_eq!((var["key"].as_str(), var["value"].as_str()), (Some("API_TOKEN"), Some("")));
    let var_id = var["id"].as_str().unwrap().to_string();
    let (status, body) = server.call("POST", &path, Some(json!({"key": "API_TOKEN", "value": "x"}))).await;
    assert_eq!(status, 422, "{body}");
    let listed = server.ok("GET", &path, None).await;
    assert_eq!(listed, json!([var.clone()]));
    let renamed = server
        .ok(
            "PATCH",
            &format!("/v1/sandbox-config/environment-variable/{var_id}"),
            Some(json!({"key": "TOKEN"})),
        )
        .await;
    assert_eq!((renamed["key"].as_str(), renamed["value"].as_str()), (Some("TOKEN"), Some("")));
    assert!(!server.ok("GET", &path, None).await.to_string().contains("s3cret"), "a value was echoed");

    for (method, url, body, status, detail) in [
        (
            "POST",
            "/v1/sandbox-config/".to_string(),
            json!({"config": {"template": "t"}}),
            422,
            "e2b sandbox configurations are not supported",
        ),
        (
            "POST",
            "/v1/sandbox-config/e2b/default".to_string(),
            json!({}),
            422,
            "e2b sandboxes are not supported",
        ),
        (
            "POST",
            "/v1/sandbox-config/local".to_string(),
            json!({"sandbox_dir": "/srv"}),
            422,
            "sandbox_dir is not supported",
        ),
        ("POST", path.clone(), json!({"key": "PATH", "value": "/x"}), 422, "PATH is set by the sandbox"),
        (
            "PATCH",
            "/v1/sandbox-config/sandbox-nope".to_string(),
            json!({"config": {}}),
            404,
            "Sandbox config with ID sandbox-nope not found",
        ),
        (
            "DELETE",
            "/v1/sandbox-config/environment-variable/sandbox-env-nope".to_string(),
            json!({}),
            404,
            "not found",
        ),
    ] {
        let (got, answer) = server.call(method, &url, Some(body)).await;
        let text = answer["detail"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{method} {url}: {answer}");
        assert!(text.contains(detail), "{method} {url}: {text}");
    }
    // Deleted with 204 and no body, as Letta answers.
    let other = server.ok("POST", &path, Some(json!({"key": "OTHER", "value": "v"}))).await;
    let env_path = format!("/v1/sandbox-config/environment-variable/{}", other["id"].as_str().unwrap());
    assert_eq!(server.call("DELETE", &env_path, None).await, (204, json!("")));
    assert_eq!(ids(&server.ok("GET", &path, None).await), vec![var_id.as_str()]);
    assert_eq!(server.call("DELETE", &format!("/v1/sandbox-config/{id}"), None).await, (204, json!("")));
    assert_eq!(server.ok("GET", "/v1/sandbox-config/", None).await, json!([]));
    let (status, _) = server.call("GET", &path, None).await;
    assert_eq!(status, 404, "the variables went with their config");
    server.shutdown().await;
}

#[tokio::test]
async fn a_tool_call_gets_config_variables_and_agent_secrets_never_the_server_env() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let config = server.ok("POST", "/v1/sandbox-config/local/default", None).await;
    let path = format!("/v1/sandbox-config/{}/environment-variable", config["id"].as_str().unwrap());
    server.ok("POST", &path, Some(json!({"key": "SHARED", "value": "from-config"}))).await;
    server.ok("POST", &path, Some(json!({"key": "BOTH", "value": "config-loses"}))).await;
    let tool = server.ok("POST", "/v1/tools/", Some(json!({"source_code": SHOW_ENV}))).await;
    let body = json!({"name": "env-agent", "model": "openai-proxy/fake-gpt", "tool_ids": [tool["id"]],
                      "secrets": {"MINE": "agent-secret", "BOTH": "agent-wins"}});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    let keys: Vec<&str> =
        agent["secrets"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["BOTH", "MINE"]);
    assert!(agent["secrets"].as_array().unwrap().iter().all(|s| s["value"] == ""));
    assert_eq!(agent["tool_exec_environment_variables"], agent["secrets"]);
    for (name, expected) in [
        ("SHARED", "from-config"),
        ("MINE", "agent-secret"),
        ("BOTH", "agent-wins"),
        ("OPENAI_BASE_URL", "unset"),
        ("KELPIE_DATA_DIR", "unset"),
    ] {
        let returned = call_tool(&server, &agent_id, "show_env", json!({"name": name})).await;
        assert_eq!(
            (returned["tool_return"].as_str(), returned["status"].as_str()),
            (Some(expected), Some("success")),
            "{name}"
        );
        assert_eq!(returned["stdout"], json!([format!("looking up {name}\n")]));
        assert_eq!(returned["stderr"], Value::Null);
    }
    // Replacing the secrets replaces the environment; neither is ever echoed.
    let patched = server
        .ok(
            "PATCH",
            &format!("/v1/agents/{agent_id}"),
            Some(json!({"tool_exec_environment_variables": {"MINE": "rotated"}})),
        )
        .await;
    assert_eq!(patched["secrets"].as_array().unwrap().len(), 1);
    let returned = call_tool(&server, &agent_id, "show_env", json!({"name": "MINE"})).await;
    assert_eq!(returned["tool_return"], "rotated");
    let fetched = server.ok("GET", &format!("/v1/agents/{agent_id}"), None).await.to_string();
    assert!(!fetched.contains("rotated") && !fetched.contains("agent-secret"), "a secret was echoed");
    let (status, body) = server
        .call("PATCH", &format!("/v1/agents/{agent_id}"), Some(json!({"secrets": {"PATH": "/evil"}})))
        .await;
    assert_eq!(status, 422, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_code_interpreter_and_a_failing_tool_answer_the_model_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body = json!({"name": "coder", "model": "openai-proxy/fake-gpt", "tools": ["run_code"]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    assert!(agent["tools"].as_array().unwrap().iter().any(|t| t["name"] == "run_code"));
    let returned = call_tool(
        &server,
        &agent_id,
        "run_code",
        json!({"code": "print(2 + 2)\n6 * 7", "language": "python"}),
    )
    .await;
    let result: Value = serde_json::from_str(returned["tool_return"].as_str().unwrap()).unwrap();
    assert_eq!(result, json!({"results": ["42"], "logs": {"stdout": ["4\n"], "stderr": []}, "error": null}));
    let returned = call_tool(
        &server,
        &agent_id,
        "run_code",
        json!({"code": "open('/etc/shadow').read()", "language": "python"}),
    )
    .await;
    assert_eq!(returned["status"], "error");
    assert!(returned["tool_return"].as_str().unwrap().contains("FileNotFoundError"), "{returned}");
    let returned = call_tool(&server, &agent_id, "run_code", json!({"code": "x", "language": "r"})).await;
    assert_eq!(returned["status"], "error");
    assert!(
        returned["tool_return"].as_str().unwrap().contains("language \"r\" is not available"),
        "{returned}"
    );
    // An agent without the interpreter attached cannot run code.
    let other = server.create_agent("plain", &[]).await;
    let returned = call_tool(&server, &other, "run_code", json!({"code": "1", "language": "python"})).await;
    assert_eq!(returned["tool_return"], "tool run_code is not available to this agent");
    server.shutdown().await;
}

#[tokio::test]
async fn pip_requirements_that_cannot_install_are_refused_at_creation_naming_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    // An index nothing listens on: every package is missing.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let index = format!("http://{closed}/simple");
    let server = common::start_with(dir.path(), &fake, &[("sandbox.pip_index_url", &index)]).await;
    let body = json!({"source_code": SHOW_ENV, "pip_requirements": [{"name": "kelpie-no-such-package", "version": "1.0"}]});
    let (status, answer) = server.call("POST", "/v1/tools/", Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .starts_with("cannot install pip requirement kelpie-no-such-package"),
        "{answer}"
    );
    let (status, answer) = server
        .call(
            "POST",
            "/v1/tools/",
            Some(json!({"source_code": SHOW_ENV, "pip_requirements": [{"name": "-e ."}]})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().starts_with("pip requirement"), "{answer}");
    let tools = server.ok("GET", "/v1/tools/", None).await;
    assert!(tools.as_array().unwrap().iter().all(|t| t["name"] != "show_env"), "nothing was stored");
    let (status, answer) = server
        .call(
            "POST",
            "/v1/sandbox-config/local",
            Some(json!({"use_venv": true, "pip_requirements": [{"name": "kelpie-no-such-package"}]})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    server.shutdown().await;
}
