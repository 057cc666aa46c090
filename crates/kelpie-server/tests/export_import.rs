//! Agent export (`GET /v1/agents/{id}/export`) and import
//! (`POST /v1/agents/import`, multipart) round trip.

mod common;

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
    exported["agent"]["memory"]["blocks"][0]["value"] = json!("x".repeat(101));
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
    assert_eq!(exported["custom_tools"][0]["name"], "roll_die");
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
