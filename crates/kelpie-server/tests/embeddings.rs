//! `openai/<model>` embeddings through the fake server's `/embeddings`:
//! archival insert and search (API, `/v1/passages/search` and the agent's
//! own tools) use the provider's vectors; the local embedding stays default.

mod common;

use serde_json::{json, Value};

const EMBEDDING_HANDLE: &str = "openai/fake-embed";

async fn create_agent(server: &common::Running, embedding: Option<&str>) -> Value {
    let mut body = json!({"name": "embedder", "model": "openai-proxy/fake-gpt"});
    if let Some(handle) = embedding {
        body["embedding"] = json!(handle);
    }
    server.ok("POST", "/v1/agents/", Some(body)).await
}

#[tokio::test]
async fn openai_embedding_is_used_for_archival_insert_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = create_agent(&server, Some(EMBEDDING_HANDLE)).await;
    assert_eq!(agent["embedding"], EMBEDDING_HANDLE);
    assert_eq!(agent["embedding_config"]["embedding_endpoint_type"], "openai");
    let id = agent["id"].as_str().unwrap();
    let path = format!("/v1/agents/{id}/archival-memory");
    for text in ["My cat sleeps all day.", "The automobile is red."] {
        let inserted = server.ok("POST", &path, Some(json!({"text": text}))).await;
        assert_eq!(inserted[0]["embedding"].as_array().unwrap().len(), 3, "the provider's vector is stored");
    }
    let found = server.ok("GET", &format!("{path}/search?query=kitten&top_k=1"), None).await;
    assert_eq!(found["results"][0]["content"], "My cat sleeps all day.", "a synonym only the provider knows");
    let body = json!({"agent_id": id, "query": "vehicle", "limit": 1});
    let ranked = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(ranked[0]["passage"]["text"], "The automobile is red.");
    assert_eq!(ranked[0]["score"], 1.0);

    server.say(id, r#"/call archival_memory_insert {"content":"A feline on the roof."}"#).await;
    let reply = server.say(id, r#"/call archival_memory_search {"query":"kitten","top_k":2}"#).await;
    assert_eq!(
        reply["messages"][2]["tool_return"],
        json!(["My cat sleeps all day.", "A feline on the roof."]).to_string()
    );
    let inputs: Vec<Value> = fake.embedding_requests().iter().map(|r| r["input"].clone()).collect();
    assert_eq!(inputs.len(), 6, "2 inserts, 2 searches, 1 tool insert, 1 tool search: {inputs:?}");
    assert!(fake.embedding_requests().iter().all(|r| r["model"] == "fake-embed"));
    assert_eq!(inputs[5], json!(["kitten"]));
    server.shutdown().await;
}

#[tokio::test]
async fn local_embedding_stays_default_and_unknown_embeddings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = create_agent(&server, None).await;
    assert_eq!(agent["embedding"], "kelpie/local-hash-256");
    let id = agent["id"].as_str().unwrap();
    let inserted =
        server.ok("POST", &format!("/v1/agents/{id}/archival-memory"), Some(json!({"text": "cat"}))).await;
    assert_eq!(inserted[0]["embedding"].as_array().unwrap().len(), 256);
    assert!(fake.embedding_requests().is_empty(), "the local embedding needs no network");
    let body = json!({"name": "bad", "model": "openai-proxy/fake-gpt", "embedding": "cohere/embed"});
    let (status, error) = server.call("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(status, 422);
    assert!(
        error["detail"].as_str().unwrap().starts_with("embedding \"cohere/embed\" is not offered"),
        "{error}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn import_reembeds_passages_with_the_agents_openai_embedding() {
    const BOUNDARY: &str = "kelpie-embed-boundary";
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = create_agent(&server, Some(EMBEDDING_HANDLE)).await;
    let id = agent["id"].as_str().unwrap();
    for text in ["The automobile is red.", "My cat sleeps all day."] {
        server.ok("POST", &format!("/v1/agents/{id}/archival-memory"), Some(json!({"text": text}))).await;
    }
    let mut exported = server.ok("GET", &format!("/v1/agents/{id}/export"), None).await;
    for passage in exported["kelpie_passages"].as_array_mut().unwrap() {
        passage["embedding"] = json!([0.0, 0.0, 1.0]);
    }
    let mut form = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"agent.json\"\r\n\r\n"
    )
    .into_bytes();
    form.extend(serde_json::to_vec(&exported).unwrap());
    form.extend(format!("\r\n--{BOUNDARY}--\r\n").into_bytes());
    let response = server
        .http
        .post(format!("{}/v1/agents/import", server.base))
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let copy = answer["agent_ids"][0].as_str().unwrap();
    let body = json!({"agent_id": copy, "query": "kitten", "limit": 1});
    let ranked = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(ranked[0]["passage"]["text"], "My cat sleeps all day.", "the file's vectors were replaced");
    assert_eq!(ranked[0]["score"], 1.0);
    server.shutdown().await;
}

/// An OpenAI-compatible provider listing two chat models and two embedding
/// models at `GET /v1/models`; answers its base URL.
async fn provider_listing_embedding_models() -> String {
    use axum::routing::get;
    let listing = json!({"object": "list", "data": [
        {"id": "gpt-4o-mini", "object": "model"}, {"id": "text-embedding-3-small", "object": "model"},
        {"id": "nomic-Embed-text", "object": "model"}, {"id": "llama3", "object": "model"},
    ]});
    let app = axum::Router::new().route("/v1/models", get(move || async move { axum::Json(listing) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn embedding_listing_adds_the_providers_embedding_models_and_each_works_on_create() {
    let dir = tempfile::tempdir().unwrap();
    let base = provider_listing_embedding_models().await;
    let server = common::start_with_base_url(dir.path(), &base, &[]).await;
    let listed = server.ok("GET", "/v1/models/embedding", None).await;
    let handles: Vec<&str> =
        listed.as_array().unwrap().iter().map(|m| m["handle"].as_str().unwrap()).collect();
    assert_eq!(
        handles,
        ["kelpie/local-hash-256", "openai/text-embedding-3-small", "openai/nomic-Embed-text"]
    );
    let remote = &listed[1];
    assert_eq!(remote["embedding_endpoint_type"], "openai");
    assert_eq!(remote["embedding_endpoint"], base.as_str());
    assert_eq!(remote["embedding_model"], "text-embedding-3-small");
    assert_eq!(remote["embedding_dim"], 1536);
    assert_eq!(remote["model_type"], "embedding");
    for handle in &handles {
        let agent = create_agent(&server, Some(handle)).await;
        assert_eq!(agent["embedding"], *handle);
    }
    // Every listed model is in Letta's enums, and its embedding_config, as
    // an agent shows it, creates an agent with that embedding again.
    const ENDPOINT_TYPES: [&str; 6] = ["openai", "anthropic", "ollama", "azure", "mistral", "vllm"];
    for model in listed.as_array().unwrap() {
        assert!(ENDPOINT_TYPES.contains(&model["embedding_endpoint_type"].as_str().unwrap()), "{model}");
        assert_eq!(model["provider_type"], "openai", "{model}");
        let shown = create_agent(&server, model["handle"].as_str()).await["embedding_config"].clone();
        assert!(ENDPOINT_TYPES.contains(&shown["embedding_endpoint_type"].as_str().unwrap()), "{shown}");
        let body = json!({"name": "by-config", "model": "openai-proxy/fake-gpt", "embedding_config": shown});
        let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
        assert_eq!(agent["embedding"], model["handle"], "an explicit embedding_config is kept");
    }
    // Without a handle the provider and model name it; an unknown one is 422 with Letta's trace_id
    // (the request's id).
    let config = json!({"embedding_endpoint_type": "openai", "embedding_model": "text-embedding-3-small"});
    let body = json!({"name": "by-parts", "model": "openai-proxy/fake-gpt", "embedding_config": config});
    assert_eq!(
        server.ok("POST", "/v1/agents/", Some(body)).await["embedding"],
        "openai/text-embedding-3-small"
    );
    let config = json!({"handle": "cohere/embed", "embedding_model": "embed"});
    let body = json!({"name": "unknown", "model": "openai-proxy/fake-gpt", "embedding_config": config});
    let (status, error) = server.call("POST", "/v1/agents/", Some(body)).await;
    assert_eq!((status, error["trace_id"].as_str().map(str::len)), (422, Some(32)), "{error}");
    server.shutdown().await;
}

#[tokio::test]
async fn embedding_listing_has_only_the_local_model_when_the_provider_lists_none() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let listed = server.ok("GET", "/v1/models/embedding", None).await;
    let handles: Vec<&str> =
        listed.as_array().unwrap().iter().map(|m| m["handle"].as_str().unwrap()).collect();
    assert_eq!(handles, ["kelpie/local-hash-256"]);
    server.shutdown().await;
}

/// `GET /v1/embeddings/total_storage_size` counts the archival passages of
/// agents and archives at the dimension of their embedding settings, 4
/// bytes each, in the unit asked; a deleted passage no longer counts; an unknown unit is 400.
#[tokio::test]
async fn total_storage_size_counts_agent_and_archive_embeddings_in_the_unit_asked() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let size = |unit: Option<&'static str>| {
        let server = &server;
        async move {
            let mut request = server.http.get(format!("{}/v1/embeddings/total_storage_size", server.base));
            if let Some(unit) = unit {
                request = request.header("storage-unit", unit);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(size(Some("B")).await, (200, json!(0.0)), "nothing stored yet");

    let agent = create_agent(&server, None).await;
    let agent_dim = agent["embedding_config"]["embedding_dim"].as_u64().unwrap();
    let id = agent["id"].as_str().unwrap();
    let path = format!("/v1/agents/{id}/archival-memory");
    let mut passages = Vec::new();
    for text in ["one", "two", "three"] {
        let inserted = server.ok("POST", &path, Some(json!({"text": text}))).await;
        passages.push(inserted[0]["id"].as_str().unwrap().to_string());
    }
    let archive = server
        .ok("POST", "/v1/archives/", Some(json!({"name": "shelf", "embedding": EMBEDDING_HANDLE})))
        .await;
    let archive_dim = archive["embedding_config"]["embedding_dim"].as_u64().unwrap();
    assert!(agent_dim > 0 && archive_dim > 0, "{agent} {archive}");
    let batch = json!({"passages": [{"text": "a cat"}, {"text": "a car"}]});
    let archive_id = archive["id"].as_str().unwrap();
    server.ok("POST", &format!("/v1/archives/{archive_id}/passages/batch"), Some(batch)).await;

    let bytes = (3 * agent_dim + 2 * archive_dim) * 4;
    assert_eq!(size(Some("B")).await, (200, json!(bytes as f64)));
    assert_eq!(size(Some("KB")).await, (200, json!(bytes as f64 / 1024.0)));
    assert_eq!(size(None).await, (200, json!(bytes as f64 / (1u64 << 30) as f64)), "GB by default");

    server.ok("DELETE", &format!("{path}/{}", passages[0]), None).await;
    assert_eq!(size(Some("B")).await, (200, json!(((2 * agent_dim + 2 * archive_dim) * 4) as f64)));

    let (status, body) = size(Some("PB")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("\"PB\" is not one of B, KB, MB, GB, TB"), "{body}");
    server.shutdown().await;
}
