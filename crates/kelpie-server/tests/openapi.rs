//! `GET /openapi.json` lists exactly the routes the router serves: every
//! `.route(...)` in `src/routes/*.rs` is in the document, and every
//! documented operation is answered by a handler (not the JSON 404).

mod common;

use serde_json::{json, Value};

const ROUTE_SOURCES: &[&str] = &[
    include_str!("../src/routes/agents.rs"),
    include_str!("../src/routes/all_messages.rs"),
    include_str!("../src/routes/archival.rs"),
    include_str!("../src/routes/batches.rs"),
    include_str!("../src/routes/archives.rs"),
    include_str!("../src/routes/auth.rs"),
    include_str!("../src/routes/embeddings.rs"),
    include_str!("../src/routes/blocks.rs"),
    include_str!("../src/routes/chat_completions.rs"),
    include_str!("../src/routes/cluster.rs"),
    include_str!("../src/routes/console.rs"),
    include_str!("../src/routes/conversations.rs"),
    include_str!("../src/routes/health.rs"),
    include_str!("../src/routes/mcp.rs"),
    include_str!("../src/routes/mcp_legacy.rs"),
    include_str!("../src/routes/messages.rs"),
    include_str!("../src/routes/models.rs"),
    include_str!("../src/routes/openapi.rs"),
    include_str!("../src/routes/passages.rs"),
    include_str!("../src/routes/providers.rs"),
    include_str!("../src/routes/runs.rs"),
    include_str!("../src/routes/steps.rs"),
    include_str!("../src/routes/identities.rs"),
    include_str!("../src/routes/groups.rs"),
    include_str!("../src/routes/folders.rs"),
    include_str!("../src/routes/jobs.rs"),
    include_str!("../src/routes/sandbox_config.rs"),
    include_str!("../src/routes/shared_blocks.rs"),
    include_str!("../src/routes/tools.rs"),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// `(method, path)` of every `.route("path", handlers)` call in `source`.
fn registered(source: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (index, _) in source.match_indices(".route(\"") {
        let rest = &source[index + 8..];
        let Some(end) = rest.find('"') else { continue };
        let path = &rest[..end];
        let mut depth = 1;
        let close = rest.char_indices().find(|(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0
        });
        let handlers = &rest[end..close.map_or(rest.len(), |(i, _)| i)];
        for method in METHODS {
            if handlers.contains(&format!("{method}(")) {
                found.push((method.to_string(), path.to_string()));
            }
        }
    }
    found
}

/// A path without its trailing slash and with its parameters unnamed: the
/// document spells Letta's operations as Letta does (`{source_id}` where the
/// router says `{folder_id}`); the URL is the same.
fn normalized(path: &str) -> String {
    kelpie_server::routes::openapi::path_shape(path.trim_end_matches('/'))
}

#[tokio::test]
async fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let document = server.ok("GET", "/openapi.json", None).await;
    assert_eq!(document["openapi"], "3.1.0");
    // Printed once and served as the same bytes, typed as JSON.
    let answer = reqwest::get(format!("{}/openapi.json", server.base)).await.unwrap();
    assert_eq!(answer.headers()["content-type"], "application/json");
    let again: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(again, document);
    assert_eq!(document["components"]["schemas"]["HTTPError"]["required"], json!(["detail", "trace_id"]));
    // Letta's operations are typed from the vendored contract; Kelpie's own are loose.
    let create = &document["paths"]["/v1/agents/"]["post"];
    assert_eq!(create["operationId"], "create_agent");
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"],
        json!({"$ref": "#/components/schemas/CreateAgentRequest"})
    );
    assert_eq!(document["paths"]["/v1/cluster/nodes"]["get"]["tags"], json!(["kelpie"]));
    assert_eq!(document["paths"]["/v1/health/"]["get"]["security"], json!([]));
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let paths = document["paths"].as_object().unwrap();
    let documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), normalized(path))))
        .collect();
    let mut served: Vec<(String, String)> = ROUTE_SOURCES
        .iter()
        .flat_map(|source| registered(source))
        .map(|(m, p)| (m, normalized(&p)))
        .collect();
    served.sort();
    served.dedup();
    assert!(served.len() >= 27, "found only {} routes: {served:?}", served.len());
    for route in &served {
        assert!(documented.contains(route), "{route:?} is served but not in /openapi.json");
    }
    for (method, path) in &documented {
        assert!(
            served.contains(&(method.clone(), path.clone())),
            "{method} {path} is documented but not registered"
        );
        let concrete = path.replace("{}", "agent-00000000-0000-4000-8000-000000000000");
        let (_, body) = server.call(&method.to_uppercase(), &concrete, Some(json!({}))).await;
        let detail = body.get("detail").and_then(Value::as_str).unwrap_or_default();
        assert!(!detail.starts_with("no route for"), "{method} {path} hit the fallback: {detail}");
    }
    let create = &paths["/v1/tools/"]["post"];
    assert_eq!(create["requestBody"]["required"], true);
    let attach = &paths["/v1/agents/{agent_id}/tools/attach/{tool_id}"]["patch"]["parameters"];
    assert_eq!(attach.as_array().unwrap().len(), 2);
    server.shutdown().await;
}
