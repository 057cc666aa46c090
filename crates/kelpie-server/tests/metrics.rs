//! `GET /metrics` over a known workload: three agents created, two
//! messages sent through the fake LLM and a third it refuses, one unknown
//! identity asked for. The
//! counters move by exactly the amounts the workload implies.
//!
//! The registry is process-wide, so this file holds one test: nothing else
//! in its process records.

mod common;

use std::collections::BTreeMap;

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_known_workload_moves_the_counters_by_known_amounts() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let before = server.metrics().await;
    assert_eq!(before["kelpie_agents_registered"], 0.0);

    let mut agents = Vec::new();
    for index in 0..3 {
        agents.push(server.create_agent(&format!("metered-{index}"), &[]).await);
    }
    let (mut steps, mut prompt_tokens, mut completion_tokens) = (0.0, 0.0, 0.0);
    for text in ["hello", "and again"] {
        let answer = server.say(&agents[0], text).await;
        let usage = &answer["usage"];
        assert!(usage["step_count"].as_u64().unwrap() >= 1, "{answer}");
        steps += usage["step_count"].as_f64().unwrap();
        prompt_tokens += usage["prompt_tokens"].as_f64().unwrap();
        completion_tokens += usage["completion_tokens"].as_f64().unwrap();
    }
    // A third message the provider refuses (400: not retried): one more call, one error.
    fake.push_error(400, "the model refuses");
    let body = serde_json::json!({"messages": [{"role": "user", "content": "refused"}]});
    let (refused_status, refusal) =
        server.call("POST", &format!("/v1/agents/{}/messages", agents[0]), Some(body)).await;
    assert!(refused_status >= 400, "{refusal}");
    let unknown = "identity-00000000-0000-4000-8000-000000000000";
    let (status, _) = server.call("GET", &format!("/v1/identities/{unknown}"), None).await;
    assert_eq!(status, 404);
    let after = server.metrics().await;

    let refused_series = format!(
        r#"kelpie_http_requests_total{{method="POST",route="/v1/agents/{{agent_id}}/messages",status="{refused_status}"}}"#
    );
    assert_eq!(delta(&before, &after, &refused_series), 1.0, "{refused_series}");
    let expected: [(&str, f64); 11] = [
        (r#"kelpie_http_requests_total{method="POST",route="/v1/agents/",status="200"}"#, 3.0),
        (
            r#"kelpie_http_requests_total{method="POST",route="/v1/agents/{agent_id}/messages",status="200"}"#,
            2.0,
        ),
        (
            r#"kelpie_http_requests_total{method="GET",route="/v1/identities/{identity_id}",status="404"}"#,
            1.0,
        ),
        // The first scrape; the second counts once it has answered.
        (r#"kelpie_http_requests_total{method="GET",route="/metrics",status="200"}"#, 1.0),
        (r#"kelpie_http_request_duration_seconds_count{method="POST",route="/v1/agents/"}"#, 3.0),
        (r#"kelpie_http_request_duration_seconds_bucket{method="POST",route="/v1/agents/",le="+Inf"}"#, 3.0),
        (r#"kelpie_llm_calls_total{provider="openai"}"#, steps + 1.0),
        (r#"kelpie_llm_call_duration_seconds_count{provider="openai"}"#, steps + 1.0),
        (r#"kelpie_llm_prompt_tokens_total{provider="openai"}"#, prompt_tokens),
        (r#"kelpie_llm_completion_tokens_total{provider="openai"}"#, completion_tokens),
        (r#"kelpie_llm_call_errors_total{provider="openai"}"#, 1.0),
    ];
    for (series, moved) in expected {
        assert_eq!(delta(&before, &after, series), moved, "{series}");
    }
    assert!(steps >= 2.0 && prompt_tokens > 0.0 && completion_tokens > 0.0);
    assert_eq!(after["kelpie_agents_registered"], 3.0);
    assert_eq!(after["kelpie_agents_active"], 3.0);
    // The scrape itself is in flight while it is answered.
    assert_eq!(after["kelpie_http_requests_in_flight"], 1.0);
    // Durable writes happened, grouped into no more flushes than writes.
    let fsyncs = delta(&before, &after, r#"kelpie_storage_fsyncs_total{backend="redb"}"#);
    let writes = delta(&before, &after, r#"kelpie_storage_writes_total{backend="redb"}"#);
    assert!(fsyncs >= 1.0 && writes >= fsyncs, "fsyncs {fsyncs}, writes {writes}");
    assert_eq!(
        delta(&before, &after, r#"kelpie_storage_group_commit_batch_size_count{backend="redb"}"#),
        fsyncs
    );
    // No tool ran in a sandbox, and no label holds a raw agent id.
    assert!(after.keys().all(|series| !series.starts_with("kelpie_sandbox_tool_runs_total")), "{after:?}");
    let ids: Vec<&String> =
        after.keys().filter(|series| series.contains("agent-") || series.contains("identity-")).collect();
    assert_eq!(ids, Vec::<&String>::new());
    server.shutdown().await;
}
