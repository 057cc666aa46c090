//! Archives (`/v1/archives`) over HTTP: an archive embedded with its own
//! embedding (the fake provider's, which knows synonyms the agents' local
//! embedding does not), passages added one at a time and in a batch,
//! attached to two agents whose searches (the route, `/v1/passages/search`
//! and their own `archival_memory_search` tool) find its passages beside
//! their own; a restart keeps everything; deleting a passage, an agent and
//! the archive; listing with filters and pages; bad input and limits.

mod common;

use kelpie_agent::actors::archive::ARCHIVE_INSERT_PASSAGES_COUNT_MAX;
use kelpie_agent::actors::archive_store::{AGENT_ARCHIVES_COUNT_MAX, ARCHIVE_NAME_BYTES_MAX};
use kelpie_agent::service::archives::ARCHIVE_PASSAGE_TEXT_BYTES_MAX;
use serde_json::{json, Value};

const EMBEDDING_HANDLE: &str = "openai/fake-embed";

fn ids(items: &Value) -> Vec<String> {
    items.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

fn texts(found: &Value) -> Vec<String> {
    found.as_array().unwrap().iter().map(|r| r["passage"]["text"].as_str().unwrap().to_string()).collect()
}

/// The tool return of the turn's `archival_memory_search` call.
fn tool_return(reply: &Value) -> Value {
    let messages = reply["messages"].as_array().unwrap();
    let found = messages.iter().find(|m| m["message_type"] == "tool_return_message").expect("a tool return");
    serde_json::from_str(found["tool_return"].as_str().unwrap()).unwrap()
}

async fn archive(server: &common::Running, name: &str) -> String {
    let created = server.ok("POST", "/v1/archives/", Some(json!({"name": name}))).await;
    created["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_is_searched_by_its_agents_beside_their_own_passages_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body = json!({"name": "facts", "description": "shared facts", "embedding": EMBEDDING_HANDLE});
    let created = server.ok("POST", "/v1/archives/", Some(body)).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("archive-") && id.len() == 44, "{id}");
    assert_eq!(
        (&created["name"], &created["description"], &created["vector_db_provider"]),
        (&json!("facts"), &json!("shared facts"), &json!("native"))
    );
    assert_eq!(created["embedding_config"]["handle"], EMBEDDING_HANDLE);
    let cat = json!({"text": "My cat sleeps all day.", "tags": ["pets"], "metadata": {"source": "notes"},
                     "created_at": "2024-01-02T03:04:05Z"});
    let cat = server.ok("POST", &format!("/v1/archives/{id}/passages"), Some(cat)).await;
    assert_eq!(
        (&cat["archive_id"], &cat["tags"], &cat["metadata"]),
        (&json!(id), &json!(["pets"]), &json!({"source": "notes"}))
    );
    assert_eq!(cat["created_at"], "2024-01-02T03:04:05.000000Z");
    assert_eq!(cat["embedding"].as_array().unwrap().len(), 3, "the archive's embedding, not the local one");
    let batch = json!({"passages": [{"text": "The automobile is red."}, {"text": "Rain is due on Monday."}]});
    let added = server.ok("POST", &format!("/v1/archives/{id}/passages/batch"), Some(batch)).await;
    assert_eq!(added.as_array().unwrap().len(), 2);
    assert_eq!((&added[0]["archive_id"], &added[1]["tags"]), (&json!(id), &Value::Null));

    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    for agent in [&ana, &bo] {
        let attached = server.ok("PATCH", &format!("/v1/agents/{agent}/archives/attach/{id}"), None).await;
        assert_eq!(attached, Value::Null);
    }
    server.ok("PATCH", &format!("/v1/agents/{ana}/archives/attach/{id}"), None).await;
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/archives/?agent_id={ana}"), None).await),
        vec![id.clone()]
    );
    let agents = server.ok("GET", &format!("/v1/archives/{id}/agents?order=asc"), None).await;
    assert_eq!(ids(&agents), [ana.clone(), bo.clone()], "attached once each, in attach order");
    assert_eq!(agents[0]["name"], "ana");

    // The agents' searches reach the archive, its query embedded with the
    // archive's embedding (only the fake provider knows kitten ~ cat).
    let found = server
        .ok("GET", &format!("/v1/agents/{ana}/archival-memory/search?query=kitten&top_k=1"), None)
        .await;
    assert_eq!(found["results"][0]["content"], "My cat sleeps all day.");
    let body = json!({"agent_id": bo, "query": "vehicle", "limit": 1});
    let ranked = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(texts(&ranked), ["The automobile is red."]);
    assert_eq!(ranked[0]["passage"]["archive_id"], json!(id));
    let body = json!({"archive_id": id, "query": "kitten", "limit": 1});
    assert_eq!(
        texts(&server.ok("POST", "/v1/passages/search", Some(body)).await),
        ["My cat sleeps all day."]
    );
    let body = json!({"archive_id": id, "tags": ["pets"]});
    assert_eq!(
        texts(&server.ok("POST", "/v1/passages/search", Some(body)).await),
        ["My cat sleeps all day."]
    );
    let reply = server.say(&ana, r#"/call archival_memory_search {"query":"kitten","top_k":1}"#).await;
    assert_eq!(tool_return(&reply), json!(["My cat sleeps all day."]));
    // The agent's own insert stays its own: bo does not see it.
    server.say(&ana, r#"/call archival_memory_insert {"content":"Ana keeps a diary."}"#).await;
    let own = server.ok("GET", &format!("/v1/agents/{ana}/archival-memory"), None).await;
    assert_eq!(own.as_array().unwrap().len(), 1);
    let found =
        server.ok("GET", &format!("/v1/agents/{ana}/archival-memory/search?query=diary&top_k=5"), None).await;
    let contents: Vec<&str> =
        found["results"].as_array().unwrap().iter().map(|r| r["content"].as_str().unwrap()).collect();
    assert_eq!(contents.len(), 4, "its own passage and the archive's three: {found}");
    assert!(contents.contains(&"Ana keeps a diary."), "{found}");
    let found =
        server.ok("GET", &format!("/v1/agents/{bo}/archival-memory/search?query=diary&top_k=5"), None).await;
    assert_eq!(found["count"], 3, "the archive's three passages, none of ana's: {found}");

    // Deleting a passage; modifying the archive.
    let cat_id = cat["id"].as_str().unwrap();
    let (status, _) = server.call("DELETE", &format!("/v1/archives/{id}/passages/{cat_id}"), None).await;
    assert_eq!(status, 204);
    let (status, body) = server.call("DELETE", &format!("/v1/archives/{id}/passages/{cat_id}"), None).await;
    assert_eq!(status, 404, "{body}");
    let body = json!({"archive_id": id, "query": "kitten", "limit": 5});
    assert!(!texts(&server.ok("POST", "/v1/passages/search", Some(body)).await)
        .contains(&"My cat sleeps all day.".to_string()));
    let modified = server.ok("PATCH", &format!("/v1/archives/{id}"), Some(json!({"name": "facts v2"}))).await;
    assert_eq!((&modified["name"], &modified["description"]), (&json!("facts v2"), &json!("shared facts")));

    // A restart keeps the archive, its passages and its agents.
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    assert_eq!(server.ok("GET", &format!("/v1/archives/{id}"), None).await["name"], "facts v2");
    let body = json!({"agent_id": bo, "query": "vehicle", "limit": 1});
    assert_eq!(
        texts(&server.ok("POST", "/v1/passages/search", Some(body)).await),
        ["The automobile is red."]
    );
    // A deleted agent leaves the archive; a deleted archive leaves its agents.
    server.ok("DELETE", &format!("/v1/agents/{bo}"), None).await;
    assert_eq!(ids(&server.ok("GET", &format!("/v1/archives/{id}/agents"), None).await), vec![ana.clone()]);
    let (status, _) = server.call("DELETE", &format!("/v1/archives/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, body) = server.call("GET", &format!("/v1/archives/{id}"), None).await;
    assert_eq!((status, body["detail"].clone()), (404, json!(format!("Archive with ID {id} not found"))));
    assert_eq!(server.ok("GET", &format!("/v1/archives/?agent_id={ana}"), None).await, json!([]));
    let found = server
        .ok("GET", &format!("/v1/agents/{ana}/archival-memory/search?query=vehicle&top_k=5"), None)
        .await;
    assert_eq!(found["count"], 1, "only ana's own passage is left: {found}");
    let (status, _) = server.call("DELETE", &format!("/v1/archives/{id}"), None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_are_listed_by_name_and_in_pages_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut made = Vec::new();
    for n in 0..7 {
        made.push(archive(&server, &format!("a{}", n % 3)).await);
    }
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();
    assert_eq!(ids(&server.ok("GET", "/v1/archives/", None).await), newest_first, "desc by default");
    let first = ids(&server.ok("GET", "/v1/archives/?order=asc&limit=3", None).await);
    assert_eq!(first, made[..3]);
    let after = format!("/v1/archives/?order=asc&limit=3&after={}", first[2]);
    assert_eq!(ids(&server.ok("GET", &after, None).await), made[3..6]);
    // `before` is before in the order asked: newer ones when newest first.
    let before = format!("/v1/archives/?limit=2&before={}", made[2]);
    assert_eq!(ids(&server.ok("GET", &before, None).await), [made[6].clone(), made[5].clone()]);
    let before = format!("/v1/archives/?order=asc&before={}", made[2]);
    assert_eq!(ids(&server.ok("GET", &before, None).await), made[..2]);
    let named = ids(&server.ok("GET", "/v1/archives/?name=a1&order=asc", None).await);
    assert_eq!(named, [made[1].clone(), made[4].clone()]);
    assert_eq!(server.ok("GET", "/v1/archives/?name=none", None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_unknown_ids_and_limits_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("ana", &[]).await;
    let id = archive(&server, "notes").await;
    let refused = |body: &Value, status: u16, needle: &str| {
        assert!(body["detail"].as_str().unwrap().contains(needle), "{status}: {body} lacks {needle:?}")
    };
    let (status, body) = server.call("POST", "/v1/archives/", Some(json!({"description": "x"}))).await;
    assert_eq!(status, 422);
    refused(&body, status, "name");
    let long = "n".repeat(ARCHIVE_NAME_BYTES_MAX + 1);
    let (status, body) = server.call("POST", "/v1/archives/", Some(json!({"name": long}))).await;
    assert_eq!(status, 422);
    refused(&body, status, "ARCHIVE_NAME_BYTES_MAX");
    let (status, _) =
        server.call("POST", "/v1/archives/", Some(json!({"name": "x", "embedding": "nope/none"}))).await;
    assert_eq!(status, 422);
    let unknown = "archive-00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        ("GET", format!("/v1/archives/{unknown}")),
        ("GET", "/v1/archives/not-an-id".to_string()),
        ("PATCH", format!("/v1/archives/{unknown}")),
        ("DELETE", format!("/v1/archives/{unknown}")),
        ("GET", format!("/v1/archives/{unknown}/agents")),
        ("PATCH", format!("/v1/agents/{agent}/archives/attach/{unknown}")),
        ("PATCH", format!("/v1/agents/agent-00000000-0000-4000-8000-000000000000/archives/attach/{id}")),
        ("PATCH", format!("/v1/agents/{agent}/archives/detach/{unknown}")),
        ("GET", "/v1/archives/?agent_id=agent-00000000-0000-4000-8000-000000000000".to_string()),
        ("DELETE", format!("/v1/archives/{id}/passages/passage-00000000-0000-4000-8000-000000000000")),
    ] {
        let body = (method == "PATCH").then(|| json!({}));
        let (status, answer) = server.call(method, &path, body).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert!(answer["detail"].is_string(), "{answer}");
    }
    let passages = format!("/v1/archives/{id}/passages");
    let (status, body) = server.call("POST", &passages, Some(json!({"text": "  "}))).await;
    assert_eq!(status, 422);
    refused(&body, status, "text");
    let (status, body) =
        server.call("POST", &passages, Some(json!({"text": "x", "created_at": "yesterday"}))).await;
    assert_eq!(status, 422);
    refused(&body, status, "created_at");
    let long = "x".repeat(ARCHIVE_PASSAGE_TEXT_BYTES_MAX + 1);
    let (status, body) = server.call("POST", &passages, Some(json!({"text": long}))).await;
    assert_eq!(status, 422);
    refused(&body, status, "ARCHIVE_PASSAGE_TEXT_BYTES_MAX");
    let many: Vec<Value> =
        (0..=ARCHIVE_INSERT_PASSAGES_COUNT_MAX).map(|n| json!({"text": format!("p{n}")})).collect();
    let (status, body) =
        server.call("POST", &format!("{passages}/batch"), Some(json!({"passages": many}))).await;
    assert_eq!(status, 422);
    refused(&body, status, "ARCHIVE_INSERT_PASSAGES_COUNT_MAX");
    let body = json!({"query": "x"});
    let (status, answer) = server.call("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    // The batch limit itself is accepted, and nothing refused was stored.
    let full: Vec<Value> =
        (0..ARCHIVE_INSERT_PASSAGES_COUNT_MAX).map(|n| json!({"text": format!("p{n}")})).collect();
    let added = server.ok("POST", &format!("{passages}/batch"), Some(json!({"passages": full}))).await;
    assert_eq!(added.as_array().unwrap().len(), ARCHIVE_INSERT_PASSAGES_COUNT_MAX);
    let body = json!({"archive_id": id, "query": "p7", "limit": 100});
    let found = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(found.as_array().unwrap().len(), 100, "more passages than one search answers");
    assert_eq!(found[0]["passage"]["text"], "p7");

    // An agent holds at most AGENT_ARCHIVES_COUNT_MAX archives.
    server.ok("PATCH", &format!("/v1/agents/{agent}/archives/attach/{id}"), None).await;
    for n in 1..AGENT_ARCHIVES_COUNT_MAX {
        let other = archive(&server, &format!("more-{n}")).await;
        server.ok("PATCH", &format!("/v1/agents/{agent}/archives/attach/{other}"), None).await;
    }
    let one_more = archive(&server, "one-more").await;
    let (status, body) =
        server.call("PATCH", &format!("/v1/agents/{agent}/archives/attach/{one_more}"), None).await;
    assert_eq!(status, 400);
    refused(&body, status, "AGENT_ARCHIVES_COUNT_MAX");
    let held = server.ok("GET", &format!("/v1/archives/?agent_id={agent}&limit=100"), None).await;
    assert_eq!(held.as_array().unwrap().len(), AGENT_ARCHIVES_COUNT_MAX);
    // Detaching frees a place; detaching again changes nothing.
    server.ok("PATCH", &format!("/v1/agents/{agent}/archives/detach/{id}"), None).await;
    server.ok("PATCH", &format!("/v1/agents/{agent}/archives/detach/{id}"), None).await;
    server.ok("PATCH", &format!("/v1/agents/{agent}/archives/attach/{one_more}"), None).await;
    let held = ids(&server.ok("GET", &format!("/v1/archives/?agent_id={agent}&limit=100"), None).await);
    assert!(held.contains(&one_more) && !held.contains(&id), "{held:?}");
    server.shutdown().await;
}
