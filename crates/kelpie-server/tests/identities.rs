//! Identities (`/v1/identities`) over HTTP: create, upsert by identifier
//! key, list with filters to the end of its pages, count, modify,
//! properties, agents and blocks linked both ways, delete, bad input.

mod common;

use serde_json::{json, Value};

fn ids(items: &Value) -> Vec<String> {
    items.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn identities_link_agents_and_blocks_both_ways_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    let block = server.ok("POST", "/v1/blocks/", Some(json!({"label": "prefs", "value": "tea"}))).await;
    let block_id = block["id"].as_str().unwrap().to_string();
    let body = json!({"identifier_key": "user-1", "name": "Ana Lima", "identity_type": "user",
                      "agent_ids": [ana], "block_ids": [block_id],
                      "properties": [{"key": "plan", "value": "pro", "type": "string"}]});
    let created = server.ok("POST", "/v1/identities/", Some(body)).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("identity-"), "{id}");
    assert_eq!(
        (created["agent_ids"].clone(), created["block_ids"].clone()),
        (json!([ana]), json!([block_id]))
    );
    assert_eq!(server.ok("GET", &format!("/v1/agents/{ana}"), None).await["identity_ids"], json!([id]));
    // The same key again is refused; PUT replaces the identity by its key.
    let again = json!({"identifier_key": "user-1", "name": "x", "identity_type": "user"});
    let (status, answer) = server.call("POST", "/v1/identities/", Some(again)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("user-1"), "{answer}");
    let upsert =
        json!({"identifier_key": "user-1", "name": "Ana L.", "identity_type": "user", "agent_ids": [bo]});
    let replaced = server.ok("PUT", "/v1/identities/", Some(upsert)).await;
    assert_eq!((replaced["id"].as_str(), replaced["name"].as_str()), (Some(id.as_str()), Some("Ana L.")));
    assert_eq!(server.ok("GET", &format!("/v1/agents/{ana}"), None).await["identity_ids"], json!([]));
    assert_eq!(server.ok("GET", &format!("/v1/agents/{bo}"), None).await["identity_ids"], json!([id]));
    // Linking from the agent's and the block's side.
    let agent = server.ok("PATCH", &format!("/v1/agents/{ana}/identities/attach/{id}"), None).await;
    assert_eq!(agent["identity_ids"], json!([id]));
    server.ok("PATCH", &format!("/v1/blocks/{block_id}/identities/attach/{id}"), None).await;
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/identities/{id}/agents"), None).await),
        vec![bo.clone(), ana.clone()]
    );
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/identities/{id}/blocks"), None).await),
        vec![block_id.clone()]
    );
    let agent = server.ok("PATCH", &format!("/v1/agents/{bo}/identities/detach/{id}"), None).await;
    assert_eq!(agent["identity_ids"], json!([]));
    // Properties are replaced whole.
    let props = json!([{"key": "age", "value": 31, "type": "number"}, {"key": "vip", "value": true, "type": "boolean"}]);
    let identity = server.ok("PUT", &format!("/v1/identities/{id}/properties"), Some(props.clone())).await;
    assert_eq!(identity["properties"], props);
    // A restart keeps both sides.
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    let identity = server.ok("GET", &format!("/v1/identities/{id}"), None).await;
    assert_eq!((identity["agent_ids"].clone(), identity["properties"].clone()), (json!([ana]), props));
    assert_eq!(server.ok("GET", &format!("/v1/agents/{ana}"), None).await["identity_ids"], json!([id]));
    // Deleting the agent forgets it in the identity; deleting the identity
    // forgets it in its agents.
    server.ok("DELETE", &format!("/v1/blocks/{block_id}"), None).await;
    assert_eq!(server.ok("GET", &format!("/v1/identities/{id}"), None).await["block_ids"], json!([]));
    server.ok("PATCH", &format!("/v1/agents/{bo}/identities/attach/{id}"), None).await;
    server.ok("DELETE", &format!("/v1/agents/{ana}"), None).await;
    assert_eq!(server.ok("GET", &format!("/v1/identities/{id}"), None).await["agent_ids"], json!([bo]));
    server.ok("DELETE", &format!("/v1/identities/{id}"), None).await;
    assert_eq!(server.ok("GET", &format!("/v1/agents/{bo}"), None).await["identity_ids"], json!([]));
    let (status, _) = server.call("GET", &format!("/v1/identities/{id}"), None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn identities_list_with_filters_to_the_end_and_bad_input_is_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut made = Vec::new();
    for n in 0..7 {
        let kind = if n % 2 == 0 { "user" } else { "org" };
        let body =
            json!({"identifier_key": format!("key-{n}"), "name": format!("name {n}"), "identity_type": kind});
        made.push(server.ok("POST", "/v1/identities/", Some(body)).await["id"].as_str().unwrap().to_string());
    }
    assert_eq!(server.ok("GET", "/v1/identities/count", None).await, json!(7));
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let page = ids(&server.ok("GET", &format!("/v1/identities/?limit=3{cursor}"), None).await);
        let Some(last) = page.last().cloned() else { break };
        listed.extend(page);
        after = Some(last);
    }
    assert_eq!(listed, made);
    let users = ids(&server.ok("GET", "/v1/identities/?identity_type=user", None).await);
    assert_eq!(users, vec![made[0].clone(), made[2].clone(), made[4].clone(), made[6].clone()]);
    assert_eq!(
        ids(&server.ok("GET", "/v1/identities/?identifier_key=key-3", None).await),
        vec![made[3].clone()]
    );
    let cases = [
        (
            "POST",
            "/v1/identities/".to_string(),
            json!({"identifier_key": "k", "name": "n", "identity_type": "robot"}),
            422,
        ),
        ("POST", "/v1/identities/".to_string(), json!({"name": "n", "identity_type": "user"}), 422),
        (
            "POST",
            "/v1/identities/".to_string(),
            json!({"identifier_key": "k", "name": "n", "identity_type": "user", "agent_ids": ["agent-nope"]}),
            404,
        ),
        (
            "POST",
            "/v1/identities/".to_string(),
            json!({"identifier_key": "x".repeat(257), "name": "n", "identity_type": "user"}),
            422,
        ),
        (
            "PUT",
            format!("/v1/identities/{}/properties", made[0]),
            json!([{"key": "a", "value": 1, "type": "color"}]),
            422,
        ),
        (
            "PUT",
            format!("/v1/identities/{}/properties", made[0]),
            json!((0..65)
                .map(|n| json!({"key": format!("k{n}"), "value": n, "type": "number"}))
                .collect::<Vec<_>>()),
            422,
        ),
        ("PATCH", "/v1/identities/identity-nope".to_string(), json!({"name": "z"}), 404),
        ("PATCH", "/v1/agents/agent-nope/identities/attach/identity-nope".to_string(), Value::Null, 404),
    ];
    for (method, path, body, status) in cases {
        let body = (!body.is_null()).then_some(body);
        let (got, answer) = server.call(method, &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["detail"].is_string(), "{answer}");
    }
    assert_eq!(server.ok("GET", "/v1/identities/count", None).await, json!(7), "nothing refused was stored");
    // An agent created with identity_ids is linked at once; an unknown one
    // is refused before anything is created.
    let body =
        json!({"name": "linked", "model": "openai-proxy/fake-gpt", "identity_ids": [made[1], made[2]]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(agent["identity_ids"], json!([made[1], made[2]]));
    let agent_id = agent["id"].as_str().unwrap();
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/identities/{}/agents", made[2]), None).await),
        vec![agent_id.to_string()]
    );
    // The agent list of one identity.
    let listed = server.ok("GET", &format!("/v1/agents/?identity_id={}", made[1]), None).await;
    assert_eq!(ids(&listed), vec![agent_id.to_string()]);
    assert_eq!(server.ok("GET", &format!("/v1/agents/?identity_id={}", made[0]), None).await, json!([]));
    let (status, _) = server.call("GET", "/v1/agents/?identity_id=identity-nope", None).await;
    assert_eq!(status, 404);
    let body = json!({"name": "orphan", "model": "openai-proxy/fake-gpt", "identity_ids": ["identity-nope"]});
    let (status, _) = server.call("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(status, 404);
    assert_eq!(server.ok("GET", "/v1/agents/?name=orphan", None).await, json!([]));
    server.shutdown().await;
}
