//! Messages across agents over HTTP: `GET /v1/messages/{id}` finds any
//! agent's message from its id alone (also after a restart and for
//! imported agents), `POST /v1/messages/search` and
//! `POST /v1/agents/messages/search` find messages by keyword across
//! agents or in one, with roles, dates and limits; bad input is refused.

mod common;

use kelpie_agent::service::messages::{MESSAGES_ACROSS_AGENTS_COUNT_MAX, MESSAGE_SEARCH_RESULTS_COUNT_MAX};
use serde_json::{json, Value};

#[tokio::test]
async fn any_message_is_found_by_id_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    server.say(&ana, "apples are red").await;
    server.say(&bo, "bananas are yellow").await;
    let listed = server.ok("GET", &format!("/v1/agents/{bo}/messages"), None).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for message in listed {
        let id = message["id"].as_str().unwrap();
        let found = server.ok("GET", &format!("/v1/messages/{id}"), None).await;
        assert_eq!(found, json!([message]), "GET /v1/messages/{id} answers what the agent lists");
    }
    // An imported agent's messages get ids of the new agent.
    let export = server.ok("GET", &format!("/v1/agents/{ana}/export"), None).await;
    let options = kelpie_agent::service::transfer::ImportOptions {
        override_name: None,
        append_copy_suffix: true,
        strip_messages: false,
        model: None,
        embedding: None,
    };
    let imported =
        server.service.transfer.import_bytes(export.to_string().as_bytes(), options).await.unwrap();
    let copy = imported["agent_ids"][0].as_str().unwrap().to_string();
    let copied = server.ok("GET", &format!("/v1/agents/{copy}/messages"), None).await;
    let first = copied[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        server.ok("GET", &format!("/v1/messages/{first}"), None).await[0]["content"],
        "apples are red"
    );
    // After a restart too; unknown and malformed ids are 404.
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    let id = listed[0]["id"].as_str().unwrap();
    assert_eq!(server.ok("GET", &format!("/v1/messages/{id}"), None).await, json!([listed[0]]));
    for unknown in ["message-00000000-0000-4000-8000-000000000000", "message-1", "nothing"] {
        let (status, answer) = server.call("GET", &format!("/v1/messages/{unknown}"), None).await;
        assert_eq!(status, 404, "{unknown}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(unknown), "{answer}");
    }
    // A deleted agent's messages are gone.
    server.ok("DELETE", &format!("/v1/agents/{bo}"), None).await;
    let (status, _) = server.call("GET", &format!("/v1/messages/{id}"), None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn search_finds_messages_by_keyword_across_agents_and_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    server.say(&ana, "my favourite fruit is the Mango").await;
    server.say(&ana, "the weather is mild").await;
    server.say(&bo, "mango season starts in May").await;
    // Across agents, newest first: each user message and its echo.
    let found = server.ok("POST", "/v1/messages/search", Some(json!({"query": "mango"}))).await;
    let found = found.as_array().unwrap();
    let summary: Vec<(String, String, String)> = found
        .iter()
        .map(|r| {
            (
                r["agent_id"].as_str().unwrap().to_string(),
                r["message_type"].as_str().unwrap().to_string(),
                r["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (bo.clone(), "assistant_message".into(), "echo: mango season starts in May".into()),
            (bo.clone(), "user_message".into(), "mango season starts in May".into()),
            (ana.clone(), "assistant_message".into(), "echo: my favourite fruit is the Mango".into()),
            (ana.clone(), "user_message".into(), "my favourite fruit is the Mango".into()),
        ]
    );
    for result in found {
        assert!(result["message_id"].as_str().unwrap().starts_with("message-"));
        assert!(result["created_at"].is_string());
    }
    // One agent; roles; limit.
    let body = json!({"query": "mango", "agent_id": ana, "roles": ["user"]});
    let in_ana = server.ok("POST", "/v1/agents/messages/search", Some(body)).await;
    let in_ana = in_ana.as_array().unwrap();
    assert_eq!(in_ana.len(), 1, "{in_ana:?}");
    assert_eq!(in_ana[0]["message"]["role"], "user");
    assert_eq!(in_ana[0]["message"]["agent_id"], ana.as_str());
    assert_eq!(in_ana[0]["embedded_text"], "my favourite fruit is the Mango");
    assert_eq!((in_ana[0]["fts_rank"].as_u64(), in_ana[0]["vector_rank"].clone()), (Some(1), Value::Null));
    assert!(in_ana[0]["rrf_score"].as_f64().unwrap() > 0.0);
    let limited =
        server.ok("POST", "/v1/agents/messages/search", Some(json!({"query": "mango", "limit": 3}))).await;
    assert_eq!(limited.as_array().unwrap().len(), 3);
    // Dates: nothing before the epoch's first day, nothing after 2100.
    let body = json!({"query": "mango", "end_date": "1970-01-02T00:00:00Z"});
    assert_eq!(server.ok("POST", "/v1/agents/messages/search", Some(body)).await, json!([]));
    let body = json!({"query": "mango", "start_date": "2100-01-01"});
    assert_eq!(server.ok("POST", "/v1/messages/search", Some(body)).await, json!([]));
    // Without a query, the newest messages.
    let newest =
        server.ok("POST", "/v1/agents/messages/search", Some(json!({"agent_id": bo, "limit": 50}))).await;
    assert_eq!(newest.as_array().unwrap().len(), 3, "user, assistant and tool return: {newest}");
    // A word no message holds.
    assert_eq!(server.ok("POST", "/v1/messages/search", Some(json!({"query": "durian"}))).await, json!([]));
    // Bad input.
    for (path, body, needle) in [
        ("/v1/messages/search", json!({}), "query"),
        (
            "/v1/agents/messages/search",
            json!({"limit": MESSAGE_SEARCH_RESULTS_COUNT_MAX + 1}),
            "MESSAGE_SEARCH_RESULTS_COUNT_MAX",
        ),
        ("/v1/agents/messages/search", json!({"limit": 0}), "limit"),
        ("/v1/agents/messages/search", json!({"roles": ["robot"]}), "robot"),
        ("/v1/agents/messages/search", json!({"search_mode": "psychic"}), "psychic"),
        ("/v1/agents/messages/search", json!({"start_date": "yesterday"}), "start_date"),
    ] {
        let (status, answer) = server.call("POST", path, Some(body.clone())).await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(needle), "{answer}");
    }
    let missing = "agent-00000000-0000-4000-8000-000000000000";
    let (status, _) =
        server.call("POST", "/v1/agents/messages/search", Some(json!({"agent_id": missing}))).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn routes_across_agents_past_the_agent_bound_ask_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let mut last = String::new();
    for index in 0..=MESSAGES_ACROSS_AGENTS_COUNT_MAX {
        let body = json!({"name": format!("a{index}"), "model": "openai-proxy/fake-gpt"});
        last = server.ok("POST", "/v1/agents/", Some(body)).await["id"].as_str().unwrap().to_string();
    }
    let (status, answer) = server.call("POST", "/v1/messages/search", Some(json!({"query": "x"}))).await;
    assert_eq!(status, 422, "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("MESSAGES_ACROSS_AGENTS_COUNT_MAX = 1000") && detail.contains("give agent_id"),
        "{detail}"
    );
    let (status, answer) = server.call("GET", "/v1/messages/", None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("list one agent's messages"), "{answer}");
    server.say(&last, "still searchable").await;
    let body = json!({"query": "searchable", "agent_id": last});
    let found = server.ok("POST", "/v1/messages/search", Some(body)).await;
    let contents: Vec<&str> =
        found.as_array().unwrap().iter().map(|r| r["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["echo: still searchable", "still searchable"]);
    server.shutdown().await;
}

/// Every page of `GET /v1/messages/` in `order`, `limit` at a time, through
/// `after` cursors to the end.
async fn walk(server: &common::Running, order: &str, limit: usize) -> Vec<Value> {
    let mut walked = Vec::new();
    let mut after = String::new();
    loop {
        let page = server.ok("GET", &format!("/v1/messages/?order={order}&limit={limit}{after}"), None).await;
        let page = page.as_array().unwrap().clone();
        let Some(last) = page.last() else { return walked };
        after = format!("&after={}", last["id"].as_str().unwrap());
        walked.extend(page);
    }
}

#[tokio::test]
async fn every_agents_messages_list_in_time_order_and_page_to_the_end_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agents = [
        server.create_agent("a", &[]).await,
        server.create_agent("b", &[]).await,
        server.create_agent("c", &[]).await,
    ];
    let mut said = Vec::new();
    for round in 0..8 {
        for (index, agent) in agents.iter().enumerate() {
            if (round + index) % 3 != 2 {
                let text = format!("r{round} to {index}");
                server.say(agent, &text).await;
                said.push(text);
            }
        }
    }
    // Oldest first: every user message in the order it was sent, each
    // followed by its echo.
    let all = server.ok("GET", "/v1/messages/?order=asc&limit=1000", None).await;
    let all = all.as_array().unwrap().clone();
    let texts: Vec<String> = all.iter().map(|m| m["content"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> =
        said.iter().flat_map(|text| [text.clone(), format!("echo: {text}")]).collect();
    assert_eq!(texts, expected);
    // Pages of any size walk the same list, in both orders.
    for limit in [1, 3, 7] {
        assert_eq!(walk(&server, "asc", limit).await, all, "asc, limit {limit}");
        let mut newest_first = walk(&server, "desc", limit).await;
        newest_first.reverse();
        assert_eq!(newest_first, all, "desc, limit {limit}");
    }
    // The default is newest first, 100 at most.
    let default = server.ok("GET", "/v1/messages/", None).await;
    assert_eq!(default.as_array().unwrap().len(), all.len().min(100));
    assert_eq!(default[0], all[all.len() - 1]);
    // `before` a message, oldest first: the ones before it.
    let middle = all[11]["id"].as_str().unwrap();
    let before = server.ok("GET", &format!("/v1/messages/?order=asc&before={middle}&limit=1000"), None).await;
    assert_eq!(before.as_array().unwrap(), &all[..11].to_vec());
    // Only some types; an unknown cursor selects nothing.
    let users = server
        .ok("GET", "/v1/messages/?order=asc&limit=1000&include_return_message_types=user_message", None)
        .await;
    assert_eq!(users.as_array().unwrap().len(), said.len());
    assert!(users.as_array().unwrap().iter().all(|m| m["message_type"] == "user_message"));
    let unknown = "message-00000000-0000-4000-8000-000000000000";
    assert_eq!(server.ok("GET", &format!("/v1/messages/?after={unknown}"), None).await, json!([]));
    assert_eq!(server.ok("GET", "/v1/messages/?conversation_id=conv-1", None).await, json!([]));
    let (status, answer) = server.call("GET", "/v1/messages/?order=sideways", None).await;
    assert_eq!(status, 422, "{answer}");
    // A restart keeps the order.
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    assert_eq!(walk(&server, "asc", 5).await, all);
    server.shutdown().await;
}
