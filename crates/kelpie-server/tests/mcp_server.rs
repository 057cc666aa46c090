//! Kelpie as an MCP server: `/mcp` over streamable HTTP, driven by the MCP
//! client of kelpie-tools (the official Rust SDK's), against a real server
//! on redb and the fake LLM: list the tools, create an agent, talk to it,
//! read its memory, list agents; bad calls come back as error results; the
//! bearer token guards `/mcp` as every route; the server stops with an MCP
//! session open.

mod common;

use std::sync::Arc;

use kelpie_sandbox::unsandboxed::UnsandboxedBackend;
use kelpie_tools::mcp::{McpClient, McpError, McpSettings, McpTransport};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::{json, Value};

fn client(base: &str, dir: &std::path::Path, headers: Vec<(String, String)>) -> McpClient {
    // The runner is never used over HTTP; the client takes one for stdio servers.
    let runner = ToolRunner::new(
        Arc::new(UnsandboxedBackend::open(dir.join("sandboxes"))),
        RunnerSettings::new("/usr/bin/python3", dir.join("pip")),
    );
    let settings = McpSettings { allow_internal_urls: true, stdio_network: false };
    McpClient::new(
        McpTransport::StreamableHttp { url: format!("{base}/mcp"), headers },
        settings,
        Arc::new(runner),
    )
}

#[tokio::test]
async fn an_mcp_client_lists_creates_talks_to_and_reads_kelpie_agents() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mcp = client(&server.base, dir.path(), Vec::new());
    let tools = mcp.list_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
    assert_eq!(names, ["list_agents", "create_agent", "send_message", "read_memory"]);
    assert_eq!(tools[2].input_schema["required"], json!(["agent_id", "message"]));

    let created = mcp
        .call_tool("create_agent", &json!({"name": "via-mcp", "persona": "A calm otter.", "human": "Ana."}))
        .await
        .unwrap();
    assert!(!created.is_error, "{created:?}");
    let agent: Value = serde_json::from_str(&created.text).unwrap();
    let agent_id = agent["id"].as_str().unwrap().to_string();
    assert_eq!(agent["name"], "via-mcp");

    let reply =
        mcp.call_tool("send_message", &json!({"agent_id": agent_id, "message": "hello kelp"})).await.unwrap();
    assert_eq!((reply.is_error, reply.text.as_str()), (false, "echo: hello kelp"));
    // The conversation is the agent's: the REST API sees it.
    let messages = server.ok("GET", &format!("/v1/agents/{agent_id}/messages?limit=10"), None).await;
    assert!(messages.to_string().contains("hello kelp"));

    let memory: Value = serde_json::from_str(
        &mcp.call_tool("read_memory", &json!({"agent_id": agent_id})).await.unwrap().text,
    )
    .unwrap();
    let labels: Vec<(&str, &str)> = memory
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["label"].as_str().unwrap(), b["value"].as_str().unwrap()))
        .collect();
    assert_eq!(labels, [("persona", "A calm otter."), ("human", "Ana.")]);

    let listed: Value =
        serde_json::from_str(&mcp.call_tool("list_agents", &json!({})).await.unwrap().text).unwrap();
    assert_eq!(listed[0]["id"], agent_id.as_str());
    let by_name: Value =
        serde_json::from_str(&mcp.call_tool("list_agents", &json!({"name": "nobody"})).await.unwrap().text)
            .unwrap();
    assert_eq!(by_name, json!([]));

    // Bad calls are error results with the API's reason, never a crash.
    let missing = mcp
        .call_tool(
            "send_message",
            &json!({"agent_id": "agent-00000000-0000-4000-8000-000000000000", "message": "hi"}),
        )
        .await
        .unwrap();
    assert!(missing.is_error && missing.text.starts_with("404: Agent with ID"), "{missing:?}");
    let escape = mcp.call_tool("read_memory", &json!({"agent_id": "../tools"})).await.unwrap();
    assert!(escape.is_error && escape.text.contains("is not an agent id"), "{escape:?}");
    let limit = mcp.call_tool("list_agents", &json!({"limit": 0})).await.unwrap();
    assert!(limit.is_error, "{limit:?}");
    let unknown = mcp.call_tool("drop_tables", &json!({})).await.unwrap_err();
    assert!(
        matches!(unknown, McpError::Protocol(ref reason) if reason.contains("no tool named")),
        "{unknown:?}"
    );

    // The server stops with the session still open.
    server.shutdown().await;
}

#[tokio::test]
async fn the_mcp_endpoint_needs_the_bearer_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[("api_key", "mcp-secret-key")]).await;
    let anonymous = client(&server.base, dir.path(), Vec::new());
    let refused = anonymous.list_tools().await.unwrap_err();
    // The 401 carries `WWW-Authenticate: Bearer`: the MCP client reports the challenge.
    assert!(
        matches!(refused, McpError::AuthRequired { ref challenge, .. } if challenge == "Bearer"),
        "{refused:?}"
    );
    let bearer = vec![("Authorization".to_string(), "Bearer mcp-secret-key".to_string())];
    let allowed = client(&server.base, dir.path(), bearer);
    let created = allowed.call_tool("create_agent", &json!({"name": "guarded"})).await.unwrap();
    assert!(!created.is_error, "{created:?}");
    let listed = allowed.call_tool("list_agents", &json!({})).await.unwrap();
    assert!(listed.text.contains("guarded"), "{listed:?}");
    server.shutdown().await;
}
