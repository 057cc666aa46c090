//! `POST /v1/passages/search`: scoped to one agent, ranked, tag-filtered.

mod common;

use serde_json::{json, Value};

fn texts(results: &Value) -> Vec<String> {
    results.as_array().unwrap().iter().map(|r| r["passage"]["text"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn search_never_returns_another_agents_passages() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    let insert = |agent: String, text: &'static str, tags: Value| {
        let server = &server;
        async move {
            let body = json!({"text": text, "tags": tags});
            server.ok("POST", &format!("/v1/agents/{agent}/archival-memory"), Some(body)).await
        }
    };
    insert(ana.clone(), "The lighthouse key is under the blue stone.", json!(["secret"])).await;
    insert(ana.clone(), "Ana likes chess.", json!(["hobby"])).await;
    // Bo's passage shares every query word; it must never show up for Ana.
    insert(bo.clone(), "The lighthouse key is under the red stone.", json!(["secret"])).await;

    let body = json!({"agent_id": ana, "query": "where is the lighthouse key", "limit": 10});
    let results = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(texts(&results), ["The lighthouse key is under the blue stone.", "Ana likes chess."]);
    let first_score = results[0]["score"].as_f64().unwrap();
    assert!(first_score > 0.5 && first_score <= 1.0 + 1e-6, "{first_score}");
    assert!(results[0]["score"].as_f64() > results[1]["score"].as_f64(), "{results}");
    assert!(results[0]["passage"]["id"].as_str().unwrap().starts_with("passage-"));

    let body = json!({"agent_id": bo, "query": "lighthouse", "tags": ["secret"]});
    let results = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(texts(&results), ["The lighthouse key is under the red stone."]);

    let body = json!({"agent_id": ana, "tags": ["secret", "hobby"], "tag_match_mode": "all"});
    assert_eq!(server.ok("POST", "/v1/passages/search", Some(body)).await, json!([]));
    let body = json!({"agent_id": ana, "tags": ["hobby"], "limit": 1});
    let results = server.ok("POST", "/v1/passages/search", Some(body)).await;
    assert_eq!(
        (texts(&results), results[0]["score"].as_f64()),
        (vec!["Ana likes chess.".to_string()], Some(0.0))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn passage_search_bad_input_is_4xx_with_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let cases = [
        (json!({"query": "x"}), 422, "agent_id or archive_id is required"),
        (json!({"agent_id": "agent-missing", "query": "x"}), 404, "Agent with ID agent-missing not found"),
        (json!({"agent_id": ana, "limit": 0}), 422, "limit 0 is outside 1..=100"),
        (json!({"agent_id": ana, "tag_match_mode": "some"}), 422, "tag_match_mode \"some\" is neither"),
        (json!({"agent_id": ana, "archive_id": "archive-1"}), 404, "Archive with ID archive-1 not found"),
        (json!({"agent_id": 5}), 422, "agent_id"),
    ];
    for (body, status, detail) in cases {
        let (got, answer) = server.call("POST", "/v1/passages/search", Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(detail), "{body}: {answer}");
    }
    server.shutdown().await;
}
