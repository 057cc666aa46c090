//! `/v1/providers/` over HTTP: a provider created with its own key on a
//! second fake LLM (which accepts only that key) serves agents on
//! `<name>/<model>`; a rotated key takes effect at once; the key is never
//! answered; a deleted provider fails its agents' next turn with an error
//! naming it; internal base URLs are refused without the switch; the
//! providers survive a restart and page past one page both ways; a listing
//! past `PROVIDER_MODELS_COUNT_MAX` is refused by refresh.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use kelpie_agent::actors::provider_store::PROVIDER_MODELS_COUNT_MAX;
use kelpie_llm::fake::FakeLlm;
use kelpie_tools::mcp::url::MCP_URL_BYTES_MAX;
use serde_json::{json, Value};

const GOOD_KEY: &str = "sk-byok-good-0123456789";
const ROTATED_KEY: &str = "sk-byok-rotated-9876543210";
const ALLOW_INTERNAL: (&str, &str) = ("llm.allow_internal_provider_urls", "true");

async fn byok_fake(keys: &[&str]) -> FakeLlm {
    let keys = keys.iter().map(|key| key.to_string()).collect();
    FakeLlm::start_with_keys(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), keys).await.unwrap()
}

fn handles(models: &Value) -> Vec<String> {
    models.as_array().unwrap().iter().map(|m| m["handle"].as_str().unwrap().to_string()).collect()
}

fn message_text(reply: &Value) -> String {
    let messages = reply["messages"].as_array().unwrap();
    let assistant = messages.iter().find(|m| m["message_type"] == "assistant_message").unwrap();
    assistant["content"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_created_provider_serves_its_agents_with_its_own_key_which_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let byok = byok_fake(&[GOOD_KEY, ROTATED_KEY]).await;
    let server = common::start_with(dir.path(), &fake, &[ALLOW_INTERNAL]).await;
    let body =
        json!({"name": "mine", "provider_type": "openai", "api_key": GOOD_KEY, "base_url": byok.base_url()});
    let provider = server.ok("POST", "/v1/providers/", Some(body)).await;
    let id = provider["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("provider-") && id.len() == 45, "{id}");
    assert_eq!(provider["provider_category"], "byok");
    assert_eq!(provider["base_url"], byok.base_url().as_str());
    assert_eq!((&provider["api_key"], &provider["api_key_enc"]), (&Value::Null, &Value::Null));
    assert!(provider["last_synced"].is_string(), "the models were read at create: {provider}");

    let models = server.ok("GET", "/v1/models/", None).await;
    assert_eq!(handles(&models), ["openai-proxy/fake-gpt", "mine/fake-gpt"]);
    assert_eq!(models[1]["provider_category"], "byok");
    assert_eq!(models[1]["provider_name"], "mine");
    assert_eq!(models[1]["model_endpoint"], byok.base_url().as_str());
    let only_byok = server.ok("GET", "/v1/models/?provider_category=byok", None).await;
    assert_eq!(handles(&only_byok), ["mine/fake-gpt"]);
    let by_name = server.ok("GET", "/v1/models/?provider_name=openai-proxy", None).await;
    assert_eq!(handles(&by_name), ["openai-proxy/fake-gpt"]);

    let agent = server.ok("POST", "/v1/agents/", Some(json!({"name": "a", "model": "mine/fake-gpt"}))).await;
    assert_eq!(agent["llm_config"]["provider_category"], "byok");
    assert_eq!(agent["llm_config"]["provider_name"], "mine");
    assert_eq!(agent["llm_config"]["model_endpoint"], byok.base_url().as_str());
    let agent_id = agent["id"].as_str().unwrap();
    assert_eq!(message_text(&server.say(agent_id, "hello").await), "echo: hello");
    assert_eq!(byok.bearer_keys(), [Some(GOOD_KEY.to_string())]);
    assert!(fake.requests().is_empty(), "nothing went to the configured provider");

    // A rotated key is used from the next call on.
    let rotated =
        server.ok("PATCH", &format!("/v1/providers/{id}"), Some(json!({"api_key": ROTATED_KEY}))).await;
    assert_eq!(rotated["api_key"], Value::Null);
    assert_eq!(message_text(&server.say(agent_id, "again").await), "echo: again");
    assert_eq!(byok.bearer_keys()[1], Some(ROTATED_KEY.to_string()));
    assert_eq!(
        server.ok("POST", &format!("/v1/providers/{id}/check"), None).await,
        json!({"message": "Valid api key for provider_type=openai"})
    );

    // A wrong key: the check answers the provider's 401 and reason, a turn fails.
    server.ok("PATCH", &format!("/v1/providers/{id}"), Some(json!({"api_key": "sk-wrong"}))).await;
    let (status, error) = server.call("POST", &format!("/v1/providers/{id}/check"), None).await;
    assert_eq!(status, 401, "{error}");
    assert!(error["detail"].as_str().unwrap().contains("Incorrect API key"), "{error}");
    let body = json!({"messages": [{"role": "user", "content": "wrong"}]});
    let (status, error) = server.call("POST", &format!("/v1/agents/{agent_id}/messages"), Some(body)).await;
    assert_eq!(status, 502, "{error}");
    assert!(error["detail"].as_str().unwrap().contains("401"), "{error}");

    // No answer shows a key, nor does an export.
    server.ok("PATCH", &format!("/v1/providers/{id}"), Some(json!({"api_key": GOOD_KEY}))).await;
    let mut shown = String::new();
    for path in
        ["/v1/providers/".to_string(), format!("/v1/providers/{id}"), format!("/v1/agents/{agent_id}")]
    {
        shown.push_str(&server.ok("GET", &path, None).await.to_string());
    }
    shown.push_str(&server.ok("GET", &format!("/v1/agents/{agent_id}/export"), None).await.to_string());
    for key in [GOOD_KEY, ROTATED_KEY, "sk-server"] {
        assert!(!shown.contains(key), "{key} shown");
    }

    // Deleted: the agent's next turn names the missing provider.
    let deleted = server.ok("DELETE", &format!("/v1/providers/{id}"), None).await;
    assert_eq!(deleted["message"], format!("Provider id={id} successfully deleted"));
    let body = json!({"messages": [{"role": "user", "content": "still there?"}]});
    let (status, error) = server.call("POST", &format!("/v1/agents/{agent_id}/messages"), Some(body)).await;
    assert_eq!(status, 400, "{error}");
    let detail = error["detail"].as_str().unwrap();
    assert!(detail.contains("\"mine\"") && detail.contains("deleted"), "{detail}");
    assert_eq!(server.call("GET", &format!("/v1/providers/{id}"), None).await.0, 404);
    assert_eq!(handles(&server.ok("GET", "/v1/models/", None).await), ["openai-proxy/fake-gpt"]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let create = |body: Value| async { server.call("POST", "/v1/providers/", Some(body)).await };
    let detail = |answer: &(u16, Value)| answer.1["detail"].as_str().unwrap_or_default().to_string();

    // Loopback, by address or by name, is refused without the switch.
    for url in [fake.base_url(), "http://localhost:9/v1".to_string(), "http://169.254.169.254/v1".to_string()]
    {
        let answer =
            create(json!({"name": "local", "provider_type": "openai", "api_key": "k", "base_url": url}))
                .await;
        assert_eq!(answer.0, 422, "{url}: {:?}", answer.1);
        assert!(detail(&answer).contains("KELPIE_ALLOW_INTERNAL_PROVIDER_URLS"), "{}", detail(&answer));
        let check = json!({"provider_type": "openai", "api_key": "k", "base_url": url});
        assert_eq!(server.call("POST", "/v1/providers/check", Some(check)).await.0, 422);
    }
    let long_url = format!("https://llm.example/{}", "p".repeat(MCP_URL_BYTES_MAX));
    let answer =
        create(json!({"name": "long", "provider_type": "openai", "api_key": "k", "base_url": long_url}))
            .await;
    assert!(answer.0 == 422 && detail(&answer).contains("MCP_URL_BYTES_MAX"), "{:?}", answer.1);
    let answer = create(json!({"name": "g", "provider_type": "google_ai", "api_key": "k"})).await;
    assert_eq!(answer.0, 422);
    assert!(
        detail(&answer).contains("not served by Kelpie")
            && detail(&answer).contains("openai, anthropic, ollama")
    );
    let answer = create(json!({"name": "g", "provider_type": "nonsense", "api_key": "k"})).await;
    assert!(answer.0 == 422 && detail(&answer).contains("is unknown"), "{:?}", answer);
    let answer = create(json!({"name": "v", "provider_type": "vllm", "api_key": "k"})).await;
    assert!(answer.0 == 422 && detail(&answer).contains("base_url is required"), "{:?}", answer);
    let answer = create(json!({"name": "openai", "provider_type": "openai", "api_key": "k"})).await;
    assert!(answer.0 == 409 && detail(&answer).contains("base provider"), "{:?}", answer);
    let answer = create(json!({"name": "x", "provider_type": "openai"})).await;
    assert!(answer.0 == 422 && detail(&answer).contains("api_key is required"), "{:?}", answer);
    let answer =
        create(json!({"name": "x", "provider_type": "openai", "api_key": "k", "colour": "red"})).await;
    assert_eq!(answer.0, 422, "unknown fields are refused as Letta's schema does: {:?}", answer);
    let answer = create(json!({"name": "a", "provider_type": "anthropic", "api_key": ""})).await;
    assert!(answer.0 == 422 && detail(&answer).contains("non-empty api_key"), "{:?}", answer);

    // The configured provider is listed as a base one and cannot be changed.
    let listed = server.ok("GET", "/v1/providers/", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let base = &listed[0];
    assert_eq!(
        (&base["name"], &base["provider_category"], &base["api_key"]),
        (&json!("openai-proxy"), &json!("base"), &Value::Null)
    );
    let base_id = base["id"].as_str().unwrap();
    assert_eq!(&server.ok("GET", &format!("/v1/providers/{base_id}"), None).await, base);
    let checked = server.ok("POST", &format!("/v1/providers/{base_id}/check"), None).await;
    assert_eq!(
        checked["message"], "Valid api key for provider_type=openai",
        "checked with the configured key"
    );
    for (method, path) in [
        ("PATCH", format!("/v1/providers/{base_id}")),
        ("DELETE", format!("/v1/providers/{base_id}")),
        ("PATCH", format!("/v1/providers/{base_id}/refresh")),
    ] {
        let answer = server.call(method, &path, Some(json!({"api_key": "k"}))).await;
        assert_eq!(answer.0, 400, "{method} {path}: {:?}", answer.1);
    }
    let unknown = "provider-00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        ("GET", format!("/v1/providers/{unknown}")),
        ("PATCH", format!("/v1/providers/{unknown}")),
        ("DELETE", format!("/v1/providers/{unknown}")),
        ("POST", format!("/v1/providers/{unknown}/check")),
    ] {
        let answer = server.call(method, &path, Some(json!({"api_key": "k"}))).await;
        assert_eq!(answer.0, 404, "{method} {path}: {:?}", answer.1);
        assert_eq!(detail(&answer), format!("Provider with ID {unknown} not found"));
    }
    let answer =
        server.call("POST", "/v1/agents/", Some(json!({"name": "n", "model": "nobody/fake-gpt"}))).await;
    assert!(answer.0 == 422 && detail(&answer).contains("/v1/providers/"), "{:?}", answer);
    server.shutdown().await;
}

#[tokio::test]
async fn providers_survive_a_restart_and_page_past_one_page_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let byok = byok_fake(&[GOOD_KEY]).await;
    let server = common::start_with(dir.path(), &fake, &[ALLOW_INTERNAL]).await;
    const CREATED_COUNT: usize = 7;
    for n in 0..CREATED_COUNT {
        let body = json!({"name": format!("p{n}"), "provider_type": "openai", "api_key": GOOD_KEY, "base_url": byok.base_url()});
        server.ok("POST", "/v1/providers/", Some(body)).await;
    }
    let answer = server
        .call(
            "POST",
            "/v1/providers/",
            Some(
                json!({"name": "p0", "provider_type": "openai", "api_key": "k", "base_url": byok.base_url()}),
            ),
        )
        .await;
    assert_eq!(answer.0, 409, "{:?}", answer.1);
    let agent = server.ok("POST", "/v1/agents/", Some(json!({"name": "a", "model": "p3/fake-gpt"}))).await;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    server.shutdown().await;

    let server = common::start_with(dir.path(), &fake, &[ALLOW_INTERNAL]).await;
    let names = |page: &Value| -> Vec<String> {
        page.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    for (order, expected) in [
        ("asc", (0..CREATED_COUNT).map(|n| format!("p{n}")).collect::<Vec<_>>()),
        ("desc", (0..CREATED_COUNT).rev().map(|n| format!("p{n}")).collect()),
    ] {
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = server
                .ok("GET", &format!("/v1/providers/?provider_type=openai&limit=3&order={order}{after}"), None)
                .await;
            if page.as_array().unwrap().is_empty() {
                break;
            }
            assert!(page.as_array().unwrap().len() <= 3);
            after = format!("&after={}", page.as_array().unwrap().last().unwrap()["id"].as_str().unwrap());
            seen.extend(names(&page));
        }
        // The configured provider (openai-proxy) is of type openai too: first oldest.
        let mut with_base = expected.clone();
        match order {
            "asc" => with_base.insert(0, "openai-proxy".into()),
            _ => with_base.push("openai-proxy".into()),
        }
        assert_eq!(seen, with_base, "{order}");
    }
    assert_eq!(names(&server.ok("GET", "/v1/providers/?name=p5", None).await), ["p5"]);
    assert_eq!(server.call("GET", "/v1/providers/?provider_type=klingon", None).await.0, 422);
    assert_eq!(message_text(&server.say(&agent_id, "after restart").await), "echo: after restart");
    assert_eq!(byok.bearer_keys(), [Some(GOOD_KEY.to_string())]);
    server.shutdown().await;
}

/// An OpenAI-compatible `GET /v1/models` listing `count` models.
async fn provider_listing(count: usize) -> String {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data: Vec<Value> = (0..count).map(|n| json!({"id": format!("model-{n:05}")})).collect();
    let app = Router::new().route("/v1/models", get(move || async move { Json(json!({"data": data})) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn refresh_stores_the_listing_and_refuses_one_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start_with(dir.path(), &fake, &[ALLOW_INTERNAL]).await;
    let small = provider_listing(3).await;
    let body = json!({"name": "big", "provider_type": "vllm", "api_key": "", "base_url": small.trim_end_matches("/v1")});
    let provider = server.ok("POST", "/v1/providers/", Some(body)).await;
    assert_eq!(provider["base_url"], small.trim_end_matches("/v1"), "kept as given; /v1 is added to call it");
    let id = provider["id"].as_str().unwrap().to_string();
    let listed = server.ok("GET", "/v1/models/?provider_name=big", None).await;
    assert_eq!(handles(&listed), ["big/model-00000", "big/model-00001", "big/model-00002"]);
    assert_eq!(listed[0]["provider_type"], "vllm");
    assert_eq!(listed[0]["model_endpoint_type"], "openai");

    let huge = provider_listing(PROVIDER_MODELS_COUNT_MAX + 1).await;
    server.ok("PATCH", &format!("/v1/providers/{id}"), Some(json!({"api_key": "", "base_url": huge}))).await;
    let (status, error) = server.call("PATCH", &format!("/v1/providers/{id}/refresh"), None).await;
    assert_eq!(status, 422, "{error}");
    assert!(error["detail"].as_str().unwrap().contains("PROVIDER_MODELS_COUNT_MAX"), "{error}");
    assert_eq!(
        handles(&server.ok("GET", "/v1/models/?provider_name=big", None).await).len(),
        3,
        "the old listing is kept"
    );

    let exact = provider_listing(PROVIDER_MODELS_COUNT_MAX).await;
    server.ok("PATCH", &format!("/v1/providers/{id}"), Some(json!({"api_key": "", "base_url": exact}))).await;
    let refreshed = server.ok("PATCH", &format!("/v1/providers/{id}/refresh"), None).await;
    assert!(refreshed["last_synced"].as_str().unwrap() >= provider["last_synced"].as_str().unwrap());
    let listed = server.ok("GET", "/v1/models/?provider_name=big", None).await;
    assert_eq!(listed.as_array().unwrap().len(), PROVIDER_MODELS_COUNT_MAX);
    let answer =
        server.call("POST", "/v1/agents/", Some(json!({"name": "n", "model": "big/not-listed"}))).await;
    assert_eq!(answer.0, 422, "{:?}", answer.1);
    assert!(answer.1["detail"].as_str().unwrap().contains("refresh"), "{:?}", answer.1);
    server.shutdown().await;
}

/// An OpenAI-compatible provider listing a chat and an embedding model,
/// serving embeddings (one fixed vector each) and recording the key of
/// each embeddings request.
async fn embedding_provider() -> (String, Arc<Mutex<Vec<String>>>) {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&keys);
    let models = json!({"data": [{"id": "chat-1"}, {"id": "text-embed-1"}]});
    let embeddings = move |headers: HeaderMap, Json(body): Json<Value>| {
        let seen = Arc::clone(&seen);
        async move {
            let key = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
            seen.lock().unwrap().push(key.to_string());
            let count = body["input"].as_array().map_or(1, Vec::len);
            let data: Vec<Value> = (0..count).map(|i| json!({"index": i, "embedding": [0.6, 0.8]})).collect();
            Json(json!({"data": data}))
        }
    };
    let app = Router::new()
        .route("/v1/models", get(move || async move { Json(models) }))
        .route("/v1/embeddings", post(embeddings));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), keys)
}

#[tokio::test]
async fn a_created_providers_embedding_model_serves_agents_and_folders_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let (base, keys) = embedding_provider().await;
    let server = common::start_with(dir.path(), &fake, &[ALLOW_INTERNAL]).await;
    let body = json!({"name": "emb", "provider_type": "openai", "api_key": GOOD_KEY, "base_url": base});
    server.ok("POST", "/v1/providers/", Some(body)).await;
    assert_eq!(handles(&server.ok("GET", "/v1/models/?provider_name=emb", None).await), ["emb/chat-1"]);
    let embeddings = server.ok("GET", "/v1/models/embedding", None).await;
    assert_eq!(handles(&embeddings), ["kelpie/local-hash-256", "emb/text-embed-1"]);
    assert_eq!(embeddings[1]["embedding_endpoint"], base.as_str());

    let body = json!({"name": "e", "model": "openai-proxy/fake-gpt", "embedding": "emb/text-embed-1"});
    let agent = server.ok("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(agent["embedding_config"]["handle"], "emb/text-embed-1");
    let path = format!("/v1/agents/{}/archival-memory", agent["id"].as_str().unwrap());
    server.ok("POST", &path, Some(json!({"text": "the lighthouse keeper"}))).await;
    assert_eq!(*keys.lock().unwrap(), [format!("Bearer {GOOD_KEY}")]);

    let folder = server
        .ok("POST", "/v1/folders/", Some(json!({"name": "docs", "embedding": "emb/text-embed-1"})))
        .await;
    assert_eq!(folder["embedding_config"]["handle"], "emb/text-embed-1");
    let answer = server
        .call("POST", "/v1/agents/", Some(json!({"name": "x", "embedding": "emb/missing-embed"})))
        .await;
    assert_eq!(answer.0, 422, "{:?}", answer.1);
    server.shutdown().await;
}
