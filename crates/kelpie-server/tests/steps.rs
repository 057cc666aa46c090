//! `/v1/steps/`: every step of every run found by its id, its metrics,
//! trace and messages, feedback and transaction ids, and the list with
//! Letta's filters paged to its end past the runs read per round.

mod common;

use serde_json::{json, Value};

fn ids(items: &Value) -> Vec<String> {
    items.as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

/// Every page of `path` (which has a query) through `after` cursors.
async fn every_page(server: &common::Running, path: &str, limit: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|id| format!("&after={id}")).unwrap_or_default();
        let page = server.ok("GET", &format!("{path}&limit={limit}{cursor}"), None).await;
        let page = ids(&page);
        assert!(page.len() <= limit);
        match page.last() {
            Some(last) => after = Some(last.clone()),
            None => return all,
        }
        all.extend(page);
    }
}

#[tokio::test]
async fn a_step_is_found_by_its_id_with_its_metrics_messages_and_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("steps", &[]).await;
    // Two steps: a tool call, then the reply.
    let reply = server.say(&agent_id, "/call archival_memory_insert {\"content\": \"tea at five\"}").await;
    let run_id = reply["usage"]["run_ids"][0].as_str().unwrap().to_string();
    let run_steps = server.ok("GET", &format!("/v1/runs/{run_id}/steps?order=asc"), None).await;
    let step_ids = ids(&run_steps);
    assert_eq!(step_ids.len(), 2, "{run_steps}");
    for (step_id, listed) in step_ids.iter().zip(run_steps.as_array().unwrap()) {
        let step = server.ok("GET", &format!("/v1/steps/{step_id}"), None).await;
        assert_eq!(&step, listed);
        assert_eq!((step["run_id"].as_str(), step["agent_id"].as_str()), (Some(&*run_id), Some(&*agent_id)));
        let metrics = server.ok("GET", &format!("/v1/steps/{step_id}/metrics"), None).await;
        assert_eq!((metrics["id"].as_str(), metrics["run_id"].as_str()), (Some(&**step_id), Some(&*run_id)));
        let (llm_ns, step_ns) =
            (metrics["llm_request_ns"].as_u64().unwrap(), metrics["step_ns"].as_u64().unwrap());
        assert!(llm_ns > 0 && step_ns >= llm_ns, "{metrics}");
        assert!(step_ns >= metrics["tool_execution_ns"].as_u64().unwrap(), "{metrics}");
        let created_ms = step["created_at"].as_str().and_then(kelpie_agent::ids::parse_iso_ms).unwrap();
        let start_ms = metrics["step_start_ns"].as_u64().unwrap() / 1_000_000;
        assert!(start_ms <= created_ms && created_ms - start_ms < 60_000, "{metrics} {step}");
        assert_eq!(server.ok("GET", &format!("/v1/steps/{step_id}/trace"), None).await, Value::Null);
        assert_eq!(server.ok("GET", &format!("/v1/telemetry/{step_id}"), None).await, Value::Null);
    }
    // The run's metrics: its steps, its time, the tools it ran.
    let metrics = server.ok("GET", &format!("/v1/runs/{run_id}/metrics"), None).await;
    assert_eq!((metrics["id"].as_str(), metrics["num_steps"].as_u64()), (Some(&*run_id), Some(2)));
    let agent = server.ok("GET", &format!("/v1/agents/{agent_id}"), None).await;
    let tool_id = |name: &str| {
        agent["tools"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["id"].clone()
    };
    let in_use_order = json!([tool_id("archival_memory_insert"), tool_id("send_message")]);
    assert_eq!(metrics["tools_used"], in_use_order);
    let run = server.ok("GET", &format!("/v1/runs/{run_id}"), None).await;
    assert_eq!(metrics["run_ns"], run["total_duration_ns"]);
    let created_ms = run["created_at"].as_str().and_then(kelpie_agent::ids::parse_iso_ms).unwrap();
    assert_eq!(metrics["run_start_ns"].as_u64(), Some(created_ms * 1_000_000));
    let (status, body) = server.call("GET", &format!("/v1/runs/{run_id}/trace"), None).await;
    assert_eq!(status, 501, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("/v1/steps/"), "{body}");
    let (status, _) =
        server.call("GET", "/v1/runs/run-00000000-0000-4000-8000-000000000000/metrics", None).await;
    assert_eq!(status, 404);
    let (status, _) =
        server.call("GET", "/v1/runs/run-00000000-0000-4000-8000-000000000000/trace", None).await;
    assert_eq!(status, 404);
    // Each step's messages are the part of the run's messages it stored.
    let run_messages = ids(&server.ok("GET", &format!("/v1/runs/{run_id}/messages"), None).await);
    let mut by_step = Vec::new();
    for step_id in &step_ids {
        let messages = server.ok("GET", &format!("/v1/steps/{step_id}/messages"), None).await;
        assert!(messages.as_array().unwrap().iter().all(|m| m["step_id"] == step_id.as_str()), "{messages}");
        by_step.extend(ids(&messages));
    }
    assert_eq!(by_step, run_messages);
    let first = &step_ids[0];
    let newest = server.ok("GET", &format!("/v1/steps/{first}/messages?order=desc&limit=1"), None).await;
    let all_first = ids(&server.ok("GET", &format!("/v1/steps/{first}/messages"), None).await);
    assert_eq!(ids(&newest), vec![all_first.last().unwrap().clone()]);
    // Feedback and tags are set, kept across a restart, and cleared.
    let body = json!({"feedback": "positive", "tags": ["good", "fast"]});
    let step = server.ok("PATCH", &format!("/v1/steps/{first}/feedback"), Some(body)).await;
    assert_eq!(
        (step["feedback"].as_str(), step["tags"].clone()),
        (Some("positive"), json!(["good", "fast"]))
    );
    let step = server.ok("PATCH", &format!("/v1/steps/{first}/transaction/tx-42"), None).await;
    assert_eq!((step["tid"].as_str(), step["feedback"].as_str()), (Some("tx-42"), Some("positive")));
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    let step = server.ok("GET", &format!("/v1/steps/{first}"), None).await;
    assert_eq!(
        (step["feedback"].as_str(), step["tid"].as_str(), step["tags"].clone()),
        (Some("positive"), Some("tx-42"), json!(["good", "fast"]))
    );
    // Empty tags leave the tags as they are (as Letta does); null feedback clears it.
    let step = server.ok("PATCH", &format!("/v1/steps/{first}/feedback"), Some(json!({"tags": []}))).await;
    assert_eq!((step["feedback"].clone(), step["tags"].clone()), (Value::Null, json!(["good", "fast"])));
    // A deleted run's steps are gone.
    server.ok("DELETE", &format!("/v1/runs/{run_id}"), None).await;
    let (status, _) = server.call("GET", &format!("/v1/telemetry/{first}"), None).await;
    assert_eq!(status, 404);
    for path in ["", "/metrics", "/trace", "/messages"] {
        let (status, body) = server.call("GET", &format!("/v1/steps/{first}{path}"), None).await;
        assert_eq!(status, 404, "{path} {body}");
        assert_eq!(body["detail"], format!("Step with ID {first} not found"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn steps_list_with_filters_and_pages_to_the_end_past_a_round_of_runs() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let busy = server.create_agent("busy", &[]).await;
    let quiet = server.create_agent("quiet", &[]).await;
    // More runs than one round of the list reads (100).
    const TURNS_COUNT: usize = 130;
    for turn in 0..TURNS_COUNT {
        server.say(&busy, &format!("turn {turn}")).await;
    }
    server.say(&quiet, "hello").await;
    // Every step of the busy agent, oldest first, as the runs hold them.
    let mut expected = Vec::new();
    let runs = server.ok("GET", &format!("/v1/runs/?agent_id={busy}&order=asc&limit=1000"), None).await;
    assert_eq!(runs.as_array().unwrap().len(), TURNS_COUNT);
    for run_id in ids(&runs) {
        expected.extend(ids(&server.ok("GET", &format!("/v1/runs/{run_id}/steps?order=asc"), None).await));
    }
    assert!(expected.len() >= TURNS_COUNT);
    let ascending = every_page(&server, &format!("/v1/steps/?agent_id={busy}&order=asc"), 7).await;
    assert_eq!(ascending, expected);
    let descending = every_page(&server, &format!("/v1/steps/?agent_id={busy}"), 9).await;
    assert_eq!(descending, expected.iter().rev().cloned().collect::<Vec<_>>(), "newest first by default");
    // Without agent_id: both agents' steps, the quiet one's newest.
    let everything = every_page(&server, "/v1/steps/?order=desc", 50).await;
    assert_eq!(everything.len(), expected.len() + 1);
    let quiet_steps = ids(&server.ok("GET", &format!("/v1/steps/?agent_id={quiet}"), None).await);
    assert_eq!(everything[0], quiet_steps[0]);
    // `before` stops the page at its step.
    let cursor = &expected[10];
    let before =
        server.ok("GET", &format!("/v1/steps/?agent_id={busy}&order=asc&before={cursor}"), None).await;
    assert_eq!(ids(&before), expected[..10].to_vec());
    // Filters: model by name or handle, feedback, tags, dates, traces.
    let all = |query: &str| {
        let path = format!("/v1/steps/?agent_id={busy}&order=asc{query}");
        let server = &server;
        async move { every_page(server, &path, 100).await }
    };
    assert_eq!(all("&model=fake-gpt").await, expected);
    assert_eq!(all("&model=openai-proxy/fake-gpt").await, expected);
    assert_eq!(all("&model=gpt-4o").await, Vec::<String>::new());
    let (liked, disliked) = (&expected[3], &expected[expected.len() - 2]);
    server
        .ok(
            "PATCH",
            &format!("/v1/steps/{liked}/feedback"),
            Some(json!({"feedback": "positive", "tags": ["a", "b"]})),
        )
        .await;
    server
        .ok(
            "PATCH",
            &format!("/v1/steps/{disliked}/feedback"),
            Some(json!({"feedback": "negative", "tags": ["a"]})),
        )
        .await;
    assert_eq!(all("&feedback=positive").await, vec![liked.clone()]);
    assert_eq!(all("&has_feedback=true").await, vec![liked.clone(), disliked.clone()]);
    assert_eq!(all("&has_feedback=false").await.len(), expected.len() - 2);
    assert_eq!(all("&tags=a").await, vec![liked.clone(), disliked.clone()]);
    assert_eq!(all("&tags=a&tags=b").await, vec![liked.clone()]);
    assert_eq!(all("&trace_ids=t-1").await, Vec::<String>::new(), "Kelpie keeps no traces");
    let step = server.ok("GET", &format!("/v1/steps/{}", expected[20]), None).await;
    let at = step["created_at"].as_str().unwrap();
    let at_ms = kelpie_agent::ids::parse_iso_ms(at).unwrap();
    let later = all(&format!("&start_date={at}")).await;
    let earlier = all(&format!("&end_date={at}")).await;
    assert!(later.iter().all(|id| !earlier.contains(id)));
    assert!(!later.contains(&expected[20]) && !earlier.contains(&expected[20]));
    for id in later.iter().take(3) {
        let step = server.ok("GET", &format!("/v1/steps/{id}"), None).await;
        assert!(kelpie_agent::ids::parse_iso_ms(step["created_at"].as_str().unwrap()).unwrap() > at_ms);
    }
    assert_eq!(all("&start_date=2100-01-01").await, Vec::<String>::new());
    assert_eq!(all("&end_date=2000-01-01T00:00:00-08:00").await, Vec::<String>::new());
    // An unknown cursor selects nothing.
    let unknown = "step-00000000-0000-4000-8000-000000000000";
    assert_eq!(server.ok("GET", &format!("/v1/steps/?after={unknown}"), None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_step_requests_are_4xx_with_detail() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent_id = server.create_agent("bad", &[]).await;
    let reply = server.say(&agent_id, "hi").await;
    let step_id = reply["messages"][0]["step_id"].as_str().unwrap().to_string();
    let cases = [
        ("GET", "/v1/steps/step-00000000-0000-4000-8000-000000000000".to_string(), None, 404),
        ("GET", "/v1/steps/not-a-step".to_string(), None, 404),
        ("GET", "/v1/steps/step-x/metrics".to_string(), None, 404),
        ("PATCH", "/v1/steps/step-x/transaction/t".to_string(), None, 404),
        ("GET", "/v1/steps/?feedback=great".to_string(), None, 422),
        ("GET", "/v1/steps/?start_date=yesterday".to_string(), None, 422),
        ("GET", "/v1/steps/?end_date=2026-02-30".to_string(), None, 422),
        ("GET", "/v1/steps/?order_by=id".to_string(), None, 422),
        ("GET", "/v1/steps/?limit=0".to_string(), None, 422),
        ("PATCH", format!("/v1/steps/{step_id}/feedback"), Some(json!({"feedback": "meh"})), 422),
        ("PATCH", format!("/v1/steps/{step_id}/feedback"), Some(json!({"tags": "a"})), 422),
        (
            "PATCH",
            format!("/v1/steps/{step_id}/feedback"),
            Some(json!({"tags": (0..65).map(|n| n.to_string()).collect::<Vec<_>>()})),
            422,
        ),
        ("PATCH", format!("/v1/steps/{step_id}/feedback"), Some(json!({"tags": ["x".repeat(257)]})), 422),
        ("PATCH", format!("/v1/steps/{step_id}/transaction/{}", "t".repeat(257)), None, 422),
    ];
    for (method, path, body, status) in cases {
        let (got, answer) = server.call(method, &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(answer["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{answer}");
    }
    // At the limits exactly, accepted.
    let tags: Vec<String> = (0..64).map(|n| format!("{n:0>256}")).collect();
    let step =
        server.ok("PATCH", &format!("/v1/steps/{step_id}/feedback"), Some(json!({"tags": tags}))).await;
    assert_eq!(step["tags"], json!(tags));
    server.shutdown().await;
}
