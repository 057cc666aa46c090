//! Per-agent routes on ids that name no agent: each answers 404 `Agent with
//! ID ... not found` without activating an actor or claiming a placement
//! (the activation and claim counters of `GET /metrics` stay put), also over
//! a thousand distinct ids, while a created agent still answers.
//!
//! The metrics registry is process-wide, so this file holds one test:
//! nothing else in its process records.

mod common;

use kelpie_core::ActorId;
use serde_json::{json, Value};

/// Distinct unknown ids asked for in the flood.
const PROBED_IDS_COUNT: usize = 1_000;

const ACTIVATED: &str = r#"kelpie_actor_activations_total{outcome="activated"}"#;
const CLAIMED: &str = r#"kelpie_lease_operations_total{operation="claim",outcome="granted"}"#;

/// The activations and granted claims counted so far.
async fn activations_and_claims(server: &common::Running) -> (f64, f64) {
    let sample = server.metrics().await;
    (sample.get(ACTIVATED).copied().unwrap_or(0.0), sample.get(CLAIMED).copied().unwrap_or(0.0))
}

fn unknown_id(n: usize) -> String {
    format!("agent-00000000-0000-4000-8000-{n:012}")
}

/// Every per-agent route tried on an unknown id: method, path, body.
fn routes(id: &str) -> Vec<(&'static str, String, Option<Value>)> {
    let say = json!({"messages": [{"role": "user", "content": "hello"}]});
    vec![
        ("GET", format!("/v1/agents/{id}"), None),
        ("PATCH", format!("/v1/agents/{id}"), Some(json!({"name": "renamed"}))),
        ("DELETE", format!("/v1/agents/{id}"), None),
        ("GET", format!("/v1/agents/{id}/messages"), None),
        ("POST", format!("/v1/agents/{id}/messages"), Some(say.clone())),
        ("POST", format!("/v1/agents/{id}/messages/async"), Some(say.clone())),
        ("POST", format!("/v1/agents/{id}/messages/stream"), Some(say)),
        ("GET", format!("/v1/agents/{id}/core-memory"), None),
        ("GET", format!("/v1/agents/{id}/core-memory/blocks"), None),
        ("GET", format!("/v1/agents/{id}/core-memory/blocks/human"), None),
        ("PATCH", format!("/v1/agents/{id}/core-memory/blocks/human"), Some(json!({"value": "x"}))),
        ("GET", format!("/v1/agents/{id}/tools"), None),
        ("PATCH", format!("/v1/agents/{id}/reset-messages"), None),
        ("GET", format!("/v1/agents/{id}/export"), None),
        ("GET", format!("/v1/agents/{id}/context"), None),
        ("GET", format!("/v1/agents/{id}/archival-memory"), None),
    ]
}

#[tokio::test]
async fn unknown_agent_ids_answer_404_and_activate_and_claim_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let known = server.create_agent("ana", &[]).await;
    let known_actor = ActorId::new("agents", &known).unwrap();
    assert_eq!(server.service.active_agents(), vec![known_actor.clone()]);
    let before = activations_and_claims(&server).await;

    let unknown = unknown_id(PROBED_IDS_COUNT);
    for (method, path, body) in routes(&unknown) {
        let (status, answer) = server.call(method, &path, body).await;
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert_eq!(
            (status, detail),
            (404, format!("Agent with ID {unknown} not found").as_str()),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(activations_and_claims(&server).await, before, "one of each route");

    for n in 0..PROBED_IDS_COUNT {
        let (status, _) = server.call("GET", &format!("/v1/agents/{}", unknown_id(n)), None).await;
        assert_eq!(status, 404);
    }
    assert_eq!(activations_and_claims(&server).await, before, "a thousand ids");
    assert_eq!(server.service.active_agents(), vec![known_actor], "only the created agent is active");
    assert_eq!(server.ok("GET", &format!("/v1/agents/{known}"), None).await["name"], "ana");
    server.shutdown().await;
}
