//! Agents and core memory blocks over HTTP.

mod common;

use serde_json::{json, Value};

#[tokio::test]
async fn create_retrieve_list_modify_delete_agent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body = json!({"name": "ana", "model": "openai-proxy/fake-gpt", "tags": ["demo"], "metadata": {"k": 1},
                      "memory_blocks": [{"label": "human", "value": "Name: Ana."}]});
    let created = server.ok("POST", "/v1/agents/", Some(body)).await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("agent-") && id.len() == 42, "{id}");
    assert_eq!(created["name"], "ana");
    assert_eq!(created["tags"], json!(["demo"]));
    assert_eq!(created["metadata"], json!({"k": 1}));
    assert_eq!(created["model"], "openai-proxy/fake-gpt");
    assert_eq!(created["llm_config"]["model"], "fake-gpt");
    assert_eq!(created["llm_config"]["model_endpoint"], fake.base_url());
    assert_eq!(created["embedding"], "kelpie/local-hash-256");
    assert_eq!(created["memory"]["blocks"][0]["value"], "Name: Ana.");
    assert_eq!(created["blocks"][0]["limit"], 100_000);
    let tool_names: Vec<&str> =
        created["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(
        tool_names.contains(&"send_message") && tool_names.contains(&"archival_memory_search"),
        "{tool_names:?}"
    );

    let fetched = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
    assert_eq!(fetched, created);

    let patched =
        server.ok("PATCH", &format!("/v1/agents/{id}"), Some(json!({"name": "ana-2", "tags": ["x"]}))).await;
    assert_eq!((patched["name"].as_str(), patched["tags"].clone()), (Some("ana-2"), json!(["x"])));
    let by_name = server.ok("GET", "/v1/agents/?name=ana-2", None).await;
    assert_eq!(by_name.as_array().unwrap().len(), 1);
    assert_eq!(server.ok("GET", "/v1/agents/?name=ana", None).await, json!([]));

    let deleted = server.ok("DELETE", &format!("/v1/agents/{id}"), None).await;
    assert_eq!(deleted["message"], format!("Agent id={id} successfully deleted"));
    let (status, body) = server.call("GET", &format!("/v1/agents/{id}"), None).await;
    assert_eq!(
        (status, body["detail"].as_str().unwrap()),
        (404, format!("Agent with ID {id} not found").as_str())
    );
    assert_eq!(server.ok("GET", "/v1/agents/", None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn list_paginates_with_after_before_and_filters_by_tags() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tags: &[&str] = if i % 2 == 0 { &["even"] } else { &["odd"] };
        ids.push(server.create_agent(&format!("a{i}"), tags).await);
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect()
    };
    let first = server.ok("GET", "/v1/agents/?limit=2", None).await;
    assert_eq!(names(&first), ["a0", "a1"]);
    let second = server.ok("GET", &format!("/v1/agents/?limit=2&after={}", ids[1]), None).await;
    assert_eq!(names(&second), ["a2", "a3"]);
    let before = server.ok("GET", &format!("/v1/agents/?before={}", ids[2]), None).await;
    assert_eq!(names(&before), ["a0", "a1"]);
    let desc = server.ok("GET", "/v1/agents/?limit=2&order=desc", None).await;
    assert_eq!(names(&desc), ["a4", "a3"]);
    let even = server.ok("GET", "/v1/agents/?tags=even", None).await;
    assert_eq!(names(&even), ["a0", "a2", "a4"]);
    let both = server.ok("GET", "/v1/agents/?tags=even&tags=odd&match_all_tags=true", None).await;
    assert_eq!(names(&both), Vec::<String>::new());
    // The count routes count what the list would list (not an agent named "count").
    assert_eq!(server.ok("GET", "/v1/agents/count", None).await, 5);
    assert_eq!(server.ok("GET", "/v1/agents/count?tags=even", None).await, 3);
    assert_eq!(server.ok("GET", "/v1/agents/count?tags=even&tags=odd", None).await, 5);
    assert_eq!(server.ok("GET", "/v1/agents/count?tags=even&tags=odd&match_all_tags=true", None).await, 0);
    assert_eq!(server.ok("GET", "/v1/agents/count?name=a3", None).await, 1);
    let (status, body) = server.call("GET", "/v1/agents/?limit=0", None).await;
    assert_eq!((status, body["detail"].as_str().unwrap()), (422, "limit 0 is outside 1..=1000"));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_4xx_with_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let (status, body) =
        server.call("POST", "/v1/agents/", Some(json!({"name": 5, "memory_blocks": "nope"}))).await;
    assert_eq!(status, 422);
    assert!(body["detail"].as_str().unwrap().contains("invalid type"), "{body}");
    let (status, body) =
        server.call("POST", "/v1/agents/", Some(json!({"name": "x", "model": "letta/letta-free"}))).await;
    assert_eq!(status, 422);
    assert!(body["detail"].as_str().unwrap().contains("unknown model provider \"letta\""), "{body}");
    let (status, body) = server
        .call("POST", "/v1/agents/", Some(json!({"name": "x", "embedding": "cohere/embed-english-v3"})))
        .await;
    assert_eq!(status, 422);
    assert!(body["detail"].as_str().unwrap().contains("kelpie/local-hash-256"), "{body}");
    let blocks = json!({"name": "x", "memory_blocks": [{"label": "h", "value": "abc", "limit": 2}]});
    let (status, body) = server.call("POST", "/v1/agents/", Some(blocks)).await;
    assert_eq!(status, 422);
    assert!(body["detail"].as_str().unwrap().contains("over the block's limit of 2"), "{body}");
    // metadata is an object or null, for every kind that has one (schemathesis stored a list once,
    // and every later answer broke Letta's schema); the refused change leaves the agent as it was.
    let agent = server.create_agent("meta", &[]).await;
    let tool = server
        .ok("POST", "/v1/tools/", Some(json!({"source_code": "def f(x: int) -> int:\n    return x\n"})))
        .await;
    let folder = server.ok("POST", "/v1/folders/", Some(json!({"name": "meta-folder"}))).await;
    for (method, path, body) in [
        ("PATCH", format!("/v1/agents/{agent}"), json!({"metadata": [null, null]})),
        ("POST", "/v1/agents/".to_string(), json!({"name": "m", "metadata": "text"})),
        ("PATCH", format!("/v1/tools/{}", tool["id"].as_str().unwrap()), json!({"metadata_": [1]})),
        ("PATCH", format!("/v1/folders/{}", folder["id"].as_str().unwrap()), json!({"metadata": [null]})),
    ] {
        let (status, answer) = server.call(method, &path, Some(body)).await;
        assert_eq!(status, 422, "{method} {path}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains("metadata must be a JSON object or null"),
            "{answer}"
        );
    }
    // A compaction's model_settings is Letta's union too (an empty object was stored once).
    let compaction = json!({"compaction_settings": {"model_settings": {}}});
    let (status, answer) = server.call("PATCH", &format!("/v1/agents/{agent}"), Some(compaction)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("compaction_settings.model_settings.provider_type None"),
        "{answer}"
    );
    let kept = server.ok("GET", &format!("/v1/agents/{agent}"), None).await;
    assert!(kept["metadata"].is_object() || kept["metadata"].is_null(), "{kept}");
    assert_ne!(kept["compaction_settings"]["model_settings"], json!({}), "{kept}");
    let set =
        server.ok("PATCH", &format!("/v1/agents/{agent}"), Some(json!({"metadata": {"team": "a"}}))).await;
    assert_eq!(set["metadata"], json!({"team": "a"}));
    for path in [
        "/v1/agents/agent-00000000-0000-4000-8000-000000000000",
        "/v1/agents/nope",
        "/v1/agents/agent-x/core-memory/blocks",
    ] {
        let (status, body) = server.call("GET", path, None).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["detail"].as_str().unwrap().starts_with("Agent with ID "), "{body}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn blocks_list_get_patch_and_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = server.create_agent("blocks", &[]).await;
    let base = format!("/v1/agents/{id}/core-memory/blocks");
    let blocks = server.ok("GET", &base, None).await;
    let labels: Vec<&str> = blocks.as_array().unwrap().iter().map(|b| b["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["human", "persona"]);
    let human = server.ok("GET", &format!("{base}/human"), None).await;
    assert_eq!((human["value"].as_str(), human["limit"].as_u64()), (Some("Name: Ana."), Some(100)));
    let patched =
        server.ok("PATCH", &format!("{base}/human"), Some(json!({"value": "Name: Ana. Likes chess."}))).await;
    assert_eq!(patched["value"], "Name: Ana. Likes chess.");
    assert_eq!(patched["id"], human["id"]);

    let (status, body) =
        server.call("PATCH", &format!("{base}/human"), Some(json!({"value": "x".repeat(101)}))).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["detail"],
        "invalid memory: block \"human\": value is 101 characters, over the block's limit of 100"
    );
    let kept = server.ok("GET", &format!("{base}/human"), None).await;
    assert_eq!(kept["value"], "Name: Ana. Likes chess.");

    let (status, body) = server.call("GET", &format!("{base}/nope"), None).await;
    assert_eq!((status, body["detail"].as_str()), (404, Some("block with label \"nope\" not found")));
    let (status, _) = server.call("PATCH", &format!("{base}/nope"), Some(json!({"value": "x"}))).await;
    assert_eq!(status, 404);
    let (status, _) = server.call("PATCH", &format!("{base}/human"), Some(json!({"value": 7}))).await;
    assert_eq!(status, 422);
    server.shutdown().await;
}

#[tokio::test]
async fn models_list_handles_that_work_on_create() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let models = server.ok("GET", "/v1/models/", None).await;
    let handles: Vec<&str> =
        models.as_array().unwrap().iter().map(|m| m["handle"].as_str().unwrap()).collect();
    assert_eq!(handles, ["openai-proxy/fake-gpt"]);
    let embeddings = server.ok("GET", "/v1/models/embedding", None).await;
    assert_eq!(embeddings[0]["handle"], "kelpie/local-hash-256");
    let body = json!({"name": "m", "model": handles[0], "embedding": embeddings[0]["handle"]});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(agent["model"], "openai-proxy/fake-gpt");
    // The agent's llm_config names its provider as the models list does.
    assert_eq!(agent["llm_config"]["provider_name"], models[0]["provider_name"]);
    assert_eq!(agent["llm_config"]["handle"], models[0]["handle"]);
    assert_eq!(agent["memory"]["prompt_template"], "", "Letta's schema wants a string");
    let tools = server.ok("GET", "/v1/tools/", None).await;
    assert_eq!(
        tools.as_array().unwrap().len(),
        15,
        "every built-in tool, run_code and the file tools included"
    );
    assert_eq!(
        agent["tools"].as_array().unwrap().len(),
        11,
        "every built-in tool but run_code and the file tools is attached"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_creates_with_one_idempotency_key_yield_one_agent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut requests = Vec::new();
    for i in 0..10 {
        let http = server.http.clone();
        let url = format!("{}/v1/agents/", server.base);
        let body = json!({"name": format!("same-{i}"), "model": "openai-proxy/fake-gpt"});
        requests.push(tokio::spawn(async move {
            let response =
                http.post(url).header("Idempotency-Key", "key-1").json(&body).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = Vec::new();
    for request in requests {
        let (status, agent) = request.await.unwrap();
        assert_eq!(status, 200, "{agent}");
        ids.push(agent["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let listed = server.ok("GET", "/v1/agents/", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], ids[0].as_str());
    assert!(listed[0]["name"].as_str().unwrap().starts_with("same-"));
    let other = server
        .http
        .post(format!("{}/v1/agents/", server.base))
        .header("Idempotency-Key", "key-2")
        .json(&json!({"name": "other", "model": "openai-proxy/fake-gpt"}))
        .send()
        .await
        .unwrap();
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"], ids[0].as_str());
    let long_key = "k".repeat(257);
    let refused = server
        .http
        .post(format!("{}/v1/agents/", server.base))
        .header("Idempotency-Key", long_key)
        .json(&json!({"name": "x", "model": "openai-proxy/fake-gpt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let detail: Value = refused.json().await.unwrap();
    assert_eq!(detail["detail"], "Idempotency-Key must be 1..=256 bytes");
    server.shutdown().await;
}

/// Agents enough that every directory shard holds several.
const AGENTS_ACROSS_SHARDS_COUNT: usize = 48;

/// Creates agent `name` with idempotency key `name`: its id, hence its
/// directory shard, is the same on every run.
async fn create_keyed(server: &common::Running, name: &str, tag: &str) -> String {
    let response = server
        .http
        .post(format!("{}/v1/agents/", server.base))
        .header("Idempotency-Key", name)
        .json(&json!({"name": name, "model": "openai-proxy/fake-gpt", "tags": [tag]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
}

fn listed_ids(listed: &Value) -> Vec<String> {
    listed.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn listing_across_directory_shards_keeps_creation_order_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut ids = Vec::new();
    for i in 0..AGENTS_ACROSS_SHARDS_COUNT {
        ids.push(create_keyed(&server, &format!("s{i}"), "s").await);
    }
    let shards: std::collections::HashSet<String> =
        ids.iter().map(|id| kelpie_agent::actors::directory::shard_of(id)).collect();
    assert_eq!(shards.len(), kelpie_agent::actors::directory::DIRECTORY_SHARDS_COUNT, "{shards:?}");

    let all = server.ok("GET", "/v1/agents/?limit=1000", None).await;
    assert_eq!(listed_ids(&all), ids);
    let mut paged = Vec::new();
    let mut path = "/v1/agents/?limit=5".to_string();
    loop {
        let page = listed_ids(&server.ok("GET", &path, None).await);
        let Some(last) = page.last() else { break };
        path = format!("/v1/agents/?limit=5&after={last}");
        paged.extend(page);
    }
    assert_eq!(paged, ids);
    let desc = server.ok("GET", &format!("/v1/agents/?order=desc&limit=3&before={}", ids[40]), None).await;
    assert_eq!(listed_ids(&desc), [ids[47].clone(), ids[46].clone(), ids[45].clone()]);
    let window = server.ok("GET", &format!("/v1/agents/?after={}&before={}", ids[10], ids[14]), None).await;
    assert_eq!(listed_ids(&window), ids[11..14]);
    server.ok("DELETE", &format!("/v1/agents/{}", ids[20]), None).await;
    let after_delete = listed_ids(&server.ok("GET", "/v1/agents/?limit=1000", None).await);
    let expected: Vec<String> = ids.iter().filter(|id| **id != ids[20]).cloned().collect();
    assert_eq!(after_delete, expected);
    server.shutdown().await;
}

#[tokio::test]
async fn created_agents_are_listed_after_a_restart_and_new_ones_come_after() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut ids = Vec::new();
    for i in 0..AGENTS_ACROSS_SHARDS_COUNT / 2 {
        ids.push(create_keyed(&server, &format!("before-{i}"), "old").await);
    }
    server.shutdown().await;

    let restarted = common::start(dir.path(), &fake).await;
    assert_eq!(listed_ids(&restarted.ok("GET", "/v1/agents/?limit=1000", None).await), ids);
    for i in 0..AGENTS_ACROSS_SHARDS_COUNT / 2 {
        ids.push(create_keyed(&restarted, &format!("after-{i}"), "new").await);
    }
    assert_eq!(listed_ids(&restarted.ok("GET", "/v1/agents/?limit=1000", None).await), ids);
    let old = restarted.ok("GET", "/v1/agents/?tags=old&limit=1000", None).await;
    assert_eq!(listed_ids(&old), ids[..AGENTS_ACROSS_SHARDS_COUNT / 2]);
    restarted.shutdown().await;
}

#[tokio::test]
async fn concurrent_creates_are_each_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut requests = Vec::new();
    for i in 0..AGENTS_ACROSS_SHARDS_COUNT {
        let http = server.http.clone();
        let url = format!("{}/v1/agents/", server.base);
        let body = json!({"name": format!("c{i}"), "model": "openai-proxy/fake-gpt"});
        requests.push(tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
        }));
    }
    let mut created = Vec::new();
    for request in requests {
        created.push(request.await.unwrap());
    }
    let mut listed = listed_ids(&server.ok("GET", "/v1/agents/?limit=1000", None).await);
    assert_eq!(listed.len(), AGENTS_ACROSS_SHARDS_COUNT);
    listed.sort();
    created.sort();
    assert_eq!(listed, created);
    server.shutdown().await;
}

/// Rewrites the directory entries of `ids` the way a data dir from before
/// the sharding held them: in one `agent-directory/all` actor, numbered in
/// creation order.
async fn unshard_directory(redb: &std::path::Path, ids: &[String]) {
    use kelpie_agent::actors::directory::{shard_of, DIRECTORY_NAMESPACE};
    use kelpie_agent::service::directory::LEGACY_DIRECTORY_ID;
    use kelpie_core::ActorId;
    let storage = kelpie_storage::Storage::open_redb(redb).unwrap();
    let legacy = ActorId::new(DIRECTORY_NAMESPACE, LEGACY_DIRECTORY_ID).unwrap();
    let mut old = storage.begin(legacy);
    for (seq, id) in ids.iter().enumerate() {
        let shard = ActorId::new(DIRECTORY_NAMESPACE, shard_of(id)).unwrap();
        let mut txn = storage.begin(shard);
        let index_key = format!("u/i/{id}").into_bytes();
        let stamp = u64::from_be_bytes(txn.get(&index_key).await.unwrap().unwrap().try_into().unwrap());
        let order_key = format!("u/o/{stamp:016x}").into_bytes();
        let entry = txn.get(&order_key).await.unwrap().unwrap();
        txn.delete(index_key).unwrap();
        txn.delete(order_key).unwrap();
        txn.commit(None).await.unwrap();
        old.put(format!("u/o/{seq:016x}").into_bytes(), entry).unwrap();
        old.put(format!("u/i/{id}").into_bytes(), (seq as u64).to_be_bytes().to_vec()).unwrap();
    }
    old.commit(None).await.unwrap();
}

#[tokio::test]
async fn agents_of_an_unsharded_directory_are_moved_into_the_shards_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(create_keyed(&server, &format!("legacy-{i}"), "old").await);
    }
    server.shutdown().await;
    unshard_directory(&dir.path().join("kelpie.redb"), &ids).await;

    // The next start moves them; a second start finds nothing left to move.
    for _ in 0..2 {
        let restarted = common::start(dir.path(), &fake).await;
        assert_eq!(listed_ids(&restarted.ok("GET", "/v1/agents/?limit=1000", None).await), ids);
        restarted.shutdown().await;
    }
    let restarted = common::start(dir.path(), &fake).await;
    let newer = create_keyed(&restarted, "after-migration", "new").await;
    let mut expected = ids.clone();
    expected.push(newer);
    assert_eq!(listed_ids(&restarted.ok("GET", "/v1/agents/?limit=1000", None).await), expected);
    restarted.shutdown().await;
}
