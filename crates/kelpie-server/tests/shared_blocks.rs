//! Standalone blocks (`/v1/blocks`) and attaching them to agents over HTTP.

mod common;

use serde_json::{json, Value};

fn labels(agent: &Value) -> Vec<String> {
    agent["blocks"].as_array().unwrap().iter().map(|b| b["label"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn standalone_block_crud_with_limits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body =
        json!({"label": "team", "value": "We ship on Fridays.", "limit": 40, "description": "team facts"});
    let created = server.ok("POST", "/v1/blocks/", Some(body)).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("block-"), "{id}");
    assert_eq!((created["label"].as_str(), created["limit"].as_u64()), (Some("team"), Some(40)));
    assert_eq!(server.ok("GET", &format!("/v1/blocks/{id}"), None).await, created);
    server.ok("POST", "/v1/blocks/", Some(json!({"label": "other", "value": "x"}))).await;
    let listed = server.ok("GET", "/v1/blocks/?label=team", None).await;
    assert_eq!(listed, json!([created]));
    assert_eq!(server.ok("GET", "/v1/blocks/", None).await.as_array().unwrap().len(), 2);

    let (status, body) =
        server.call("PATCH", &format!("/v1/blocks/{id}"), Some(json!({"value": "x".repeat(41)}))).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("41 characters, over the block's limit of 40"),
        "{body}"
    );
    assert_eq!(server.ok("GET", &format!("/v1/blocks/{id}"), None).await["value"], "We ship on Fridays.");
    let patched = server.ok("PATCH", &format!("/v1/blocks/{id}"), Some(json!({"value": "Mondays."}))).await;
    assert_eq!(patched["value"], "Mondays.");

    let (status, body) =
        server.call("POST", "/v1/blocks/", Some(json!({"label": "x", "value": "abc", "limit": 2}))).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = server.call("POST", "/v1/blocks/", Some(json!({"value": "no label"}))).await;
    assert!(status == 422 && body["detail"].is_string(), "{status} {body}");

    let deleted = server.ok("DELETE", &format!("/v1/blocks/{id}"), None).await;
    assert_eq!(deleted["message"], format!("Block id={id} successfully deleted"));
    let (status, body) = server.call("GET", &format!("/v1/blocks/{id}"), None).await;
    assert_eq!(
        (status, body["detail"].as_str().unwrap()),
        (404, format!("Block with ID {id} not found").as_str())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shared_block_value_is_the_same_in_every_attached_agent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    let block =
        server.ok("POST", "/v1/blocks/", Some(json!({"label": "team", "value": "v1", "limit": 10}))).await;
    let block_id = block["id"].as_str().unwrap();
    for agent in [&ana, &bo] {
        let attached = server
            .ok("PATCH", &format!("/v1/agents/{agent}/core-memory/blocks/attach/{block_id}"), None)
            .await;
        assert_eq!(labels(&attached), ["human", "persona", "team"]);
    }
    // Attaching twice changes nothing.
    let again =
        server.ok("PATCH", &format!("/v1/agents/{ana}/core-memory/blocks/attach/{block_id}"), None).await;
    assert_eq!(labels(&again), ["human", "persona", "team"]);

    server.ok("PATCH", &format!("/v1/blocks/{block_id}"), Some(json!({"value": "v2"}))).await;
    for agent in [&ana, &bo] {
        let team = server.ok("GET", &format!("/v1/agents/{agent}/core-memory/blocks/team"), None).await;
        assert_eq!((team["value"].as_str(), team["id"].as_str()), (Some("v2"), Some(block_id)));
    }
    // An edit through one agent's block route reaches the store and the other agent.
    server
        .ok("PATCH", &format!("/v1/agents/{ana}/core-memory/blocks/team"), Some(json!({"value": "v3"})))
        .await;
    assert_eq!(server.ok("GET", &format!("/v1/blocks/{block_id}"), None).await["value"], "v3");
    assert_eq!(
        server.ok("GET", &format!("/v1/agents/{bo}/core-memory/blocks/team"), None).await["value"],
        "v3"
    );
    let (status, body) = server
        .call(
            "PATCH",
            &format!("/v1/agents/{bo}/core-memory/blocks/team"),
            Some(json!({"value": "x".repeat(11)})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        server.ok("GET", &format!("/v1/agents/{ana}/core-memory/blocks/team"), None).await["value"],
        "v3"
    );

    let detached =
        server.ok("PATCH", &format!("/v1/agents/{bo}/core-memory/blocks/detach/{block_id}"), None).await;
    assert_eq!(labels(&detached), ["human", "persona"]);
    server.ok("PATCH", &format!("/v1/blocks/{block_id}"), Some(json!({"value": "v4"}))).await;
    assert_eq!(
        server.ok("GET", &format!("/v1/agents/{ana}/core-memory/blocks/team"), None).await["value"],
        "v4"
    );
    let (status, _) = server.call("GET", &format!("/v1/agents/{bo}/core-memory/blocks/team"), None).await;
    assert_eq!(status, 404);

    server.ok("DELETE", &format!("/v1/blocks/{block_id}"), None).await;
    assert_eq!(labels(&server.ok("GET", &format!("/v1/agents/{ana}"), None).await), ["human", "persona"]);
    server.shutdown().await;
}

#[tokio::test]
async fn attach_and_detach_refuse_bad_ids_and_clashing_labels() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let (status, body) =
        server.call("PATCH", &format!("/v1/agents/{ana}/core-memory/blocks/attach/block-nope"), None).await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("Block with ID block-nope not found")));
    let (status, body) =
        server.call("PATCH", &format!("/v1/agents/{ana}/core-memory/blocks/detach/block-nope"), None).await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("Block with ID block-nope not found")));
    let clash = server.ok("POST", "/v1/blocks/", Some(json!({"label": "human", "value": "other"}))).await;
    let clash_id = clash["id"].as_str().unwrap();
    let (status, body) =
        server.call("PATCH", &format!("/v1/agents/{ana}/core-memory/blocks/attach/{clash_id}"), None).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("already exists"), "{body}");
    // The refused attach left no link: a change to the block touches nothing.
    server.ok("PATCH", &format!("/v1/blocks/{clash_id}"), Some(json!({"value": "changed"}))).await;
    let human = server.ok("GET", &format!("/v1/agents/{ana}/core-memory/blocks/human"), None).await;
    assert_eq!(human["value"], "Name: Ana.");
    let (status, body) = server
        .call("PATCH", &format!("/v1/agents/agent-missing/core-memory/blocks/attach/{clash_id}"), None)
        .await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("Agent with ID agent-missing not found")));
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_changes_leave_every_copy_equal_to_the_store_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agents = [server.create_agent("ana", &[]).await, server.create_agent("bo", &[]).await];
    let block = server.ok("POST", "/v1/blocks/", Some(json!({"label": "team", "value": "v0"}))).await;
    let block_id = block["id"].as_str().unwrap().to_string();
    for agent in &agents {
        server.ok("PATCH", &format!("/v1/agents/{agent}/core-memory/blocks/attach/{block_id}"), None).await;
    }
    let path = format!("/v1/blocks/{block_id}");
    let edits = (1..=20).map(|i| server.ok("PATCH", &path, Some(json!({"value": format!("v{i}")}))));
    futures::future::join_all(edits).await;
    let stored = server.ok("GET", &path, None).await["value"].clone();
    for agent in &agents {
        let copy = server.ok("GET", &format!("/v1/agents/{agent}/core-memory/blocks/team"), None).await;
        assert_eq!(copy["value"], stored, "agent {agent}");
    }
    server.shutdown().await;

    let server = common::start(dir.path(), &fake).await;
    assert_eq!(server.ok("GET", &path, None).await["value"], stored);
    server.ok("PATCH", &path, Some(json!({"value": "after restart"}))).await;
    for agent in &agents {
        let copy = server.ok("GET", &format!("/v1/agents/{agent}/core-memory/blocks/team"), None).await;
        assert_eq!(copy["value"], "after restart", "agent {agent}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_block_lists_its_agents_blocks_count_tags_and_core_memory_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &["b", "a"]).await;
    let bo = server.create_agent("bo", &["a", "c"]).await;
    server.create_agent("cy", &[]).await;
    let block = server.ok("POST", "/v1/blocks/", Some(json!({"label": "team", "value": "We ship."}))).await;
    server.ok("POST", "/v1/blocks/", Some(json!({"label": "other", "value": "x"}))).await;
    let block_id = block["id"].as_str().unwrap();
    for agent in [&ana, &bo] {
        server.ok("PATCH", &format!("/v1/agents/{agent}/core-memory/blocks/attach/{block_id}"), None).await;
    }
    // The block's agents, paged to the end one at a time.
    let ids = |items: &Value| -> Vec<String> {
        items.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
    };
    let all = server.ok("GET", &format!("/v1/blocks/{block_id}/agents"), None).await;
    assert_eq!(ids(&all), vec![ana.clone(), bo.clone()]);
    let first = server.ok("GET", &format!("/v1/blocks/{block_id}/agents?limit=1"), None).await;
    let second = server
        .ok("GET", &format!("/v1/blocks/{block_id}/agents?limit=1&after={}", ids(&first)[0]), None)
        .await;
    let third = server
        .ok("GET", &format!("/v1/blocks/{block_id}/agents?limit=1&after={}", ids(&second)[0]), None)
        .await;
    assert_eq!((ids(&first), ids(&second), third), (vec![ana.clone()], vec![bo.clone()], json!([])));
    // Deleted agents drop out; an unknown block is 404.
    server.ok("DELETE", &format!("/v1/agents/{bo}"), None).await;
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/blocks/{block_id}/agents"), None).await),
        vec![ana.clone()]
    );
    let (status, _) = server.call("GET", "/v1/blocks/block-nope/agents", None).await;
    assert_eq!(status, 404);
    // Counts.
    assert_eq!(server.ok("GET", "/v1/blocks/count", None).await, json!(2));
    assert_eq!(server.ok("GET", "/v1/blocks/count?label=team", None).await, json!(1));
    // Tags: distinct, in order, filtered, paged.
    assert_eq!(server.ok("GET", "/v1/tags/", None).await, json!(["a", "b"]), "bo's tags left with it");
    assert_eq!(server.ok("GET", "/v1/tags/?query_text=b", None).await, json!(["b"]));
    assert_eq!(server.ok("GET", "/v1/tags/?limit=1&after=a", None).await, json!(["b"]));
    // Core memory as the agent shows it.
    let memory = server.ok("GET", &format!("/v1/agents/{ana}/core-memory"), None).await;
    let agent = server.ok("GET", &format!("/v1/agents/{ana}"), None).await;
    assert_eq!(memory, agent["memory"]);
    assert!(memory["blocks"].as_array().unwrap().iter().any(|b| b["label"] == "team"));
    // POST export answers as GET.
    let (get, post) = (
        server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await,
        server.ok("POST", &format!("/v1/agents/{ana}/export"), Some(json!({}))).await,
    );
    assert_eq!(get["kelpie_agent"]["id"], post["kelpie_agent"]["id"]);
    assert_eq!(get["agents"][0]["name"], post["agents"][0]["name"]);
    server.shutdown().await;
}
