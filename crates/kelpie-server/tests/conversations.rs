//! Conversations (`/v1/conversations`) over HTTP: two conversations of one
//! agent with separate histories and shared memory, the agent's own
//! history apart from both, fork, messages paged to the end, a restart,
//! streaming and background turns with a resumed stream, cancel, compact,
//! recompile, runs filtered by conversation, delete, and bad input.

mod common;

use serde_json::{json, Value};

fn ids(items: &Value) -> Vec<String> {
    items.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

/// The texts of the user and assistant messages of a message list.
fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "user_message" || m["message_type"] == "assistant_message")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn create(server: &common::Running, agent_id: &str, body: Value) -> String {
    let created = server.ok("POST", &format!("/v1/conversations/?agent_id={agent_id}"), Some(body)).await;
    assert_eq!(created["agent_id"], json!(agent_id));
    created["id"].as_str().unwrap().to_string()
}

async fn send(server: &common::Running, conversation_id: &str, text: &str) -> Value {
    let body = json!({"messages": [{"role": "user", "content": text}], "streaming": false});
    server.ok("POST", &format!("/v1/conversations/{conversation_id}/messages"), Some(body)).await
}

/// The events of a Server-Sent Events answer, `[DONE]` as a string.
async fn sse(server: &common::Running, path: &str, body: Value) -> (u16, Vec<Value>) {
    let response = server.http.post(format!("{}{path}", server.base)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let events = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or(Value::String(data.to_string())))
        .collect();
    (status, events)
}

#[tokio::test]
async fn two_conversations_keep_their_own_histories_and_share_the_agents_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let alpha = create(&server, &agent, json!({"summary": "alpha chat"})).await;
    let beta = create(&server, &agent, json!({})).await;
    assert!(alpha.starts_with("conv-") && beta.starts_with("conv-"), "{alpha} {beta}");
    assert_ne!(alpha, beta);

    let answer = send(&server, &alpha, "hello from alpha").await;
    assert_eq!(texts(&json!(answer["messages"])), vec!["echo: hello from alpha"]);
    // A memory edit made in beta...
    let edit = r#"/call core_memory_append {"label":"human","content":"Likes green tea."}"#;
    send(&server, &beta, edit).await;
    let agent_state = server.ok("GET", &format!("/v1/agents/{agent}"), None).await;
    let human = agent_state["memory"]["blocks"].as_array().unwrap().iter().find(|b| b["label"] == "human");
    assert!(human.unwrap()["value"].as_str().unwrap().contains("Likes green tea."), "{agent_state}");
    // ...is in alpha's next prompt, beside alpha's messages only.
    let preview = server
        .ok(
            "POST",
            &format!("/v1/conversations/{alpha}/messages/preview-raw-payload"),
            Some(json!({"messages": [{"role": "user", "content": "next"}]})),
        )
        .await;
    let prompt = preview.to_string();
    assert!(prompt.contains("Likes green tea."), "{prompt}");
    assert!(prompt.contains("hello from alpha"), "{prompt}");
    assert!(!prompt.contains("/call "), "beta's turn is not in alpha's prompt: {prompt}");
    send(&server, &alpha, "second in alpha").await;
    let sent = fake.requests().last().unwrap().to_string();
    assert!(sent.contains("Likes green tea.") && sent.contains("hello from alpha"), "{sent}");
    assert!(!sent.contains("/call "), "{sent}");

    // Each history lists its own messages; the agent's own history has none.
    let alpha_messages =
        server.ok("GET", &format!("/v1/conversations/{alpha}/messages?order=asc"), None).await;
    assert_eq!(
        texts(&alpha_messages),
        vec!["hello from alpha", "echo: hello from alpha", "second in alpha", "echo: second in alpha"]
    );
    let beta_messages = server.ok("GET", &format!("/v1/conversations/{beta}/messages?order=asc"), None).await;
    assert_eq!(texts(&beta_messages)[0], edit);
    assert!(!texts(&beta_messages).iter().any(|t| t.contains("alpha")), "{beta_messages}");
    let own = server.ok("GET", &format!("/v1/agents/{agent}/messages"), None).await;
    assert_eq!(own, json!([]));
    let default =
        server.ok("GET", &format!("/v1/conversations/default/messages?agent_id={agent}"), None).await;
    assert_eq!(default, json!([]));
    // A turn in the agent's own history stays out of both conversations.
    server.say(&agent, "hello agent").await;
    assert_eq!(texts(&server.ok("GET", &format!("/v1/agents/{agent}/messages"), None).await).len(), 2);
    assert_eq!(texts(&server.ok("GET", &format!("/v1/conversations/{alpha}/messages"), None).await).len(), 4);

    // The conversation: its in-context messages, when it last had one.
    let got = server.ok("GET", &format!("/v1/conversations/{alpha}"), None).await;
    let in_context: Vec<String> = ids(&json!(got["in_context_message_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| json!({"id": id}))
        .collect::<Vec<_>>()));
    let listed: Vec<String> =
        alpha_messages.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).fold(
            Vec::new(),
            |mut all, id| {
                if all.last() != Some(&id) {
                    all.push(id);
                }
                all
            },
        );
    // user, assistant, send_message's return (not listed), per turn.
    assert_eq!(in_context.len(), 6, "{in_context:?}");
    assert_eq!(in_context.iter().filter(|id| listed.contains(id)).cloned().collect::<Vec<_>>(), listed);
    assert_eq!((got["summary"].as_str(), got["isolated_block_ids"].clone()), (Some("alpha chat"), json!([])));
    assert!(got["last_message_at"].is_string(), "{got}");

    // Runs carry their conversation and are found by it.
    let runs = server.ok("GET", &format!("/v1/runs/?conversation_id={alpha}"), None).await;
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    assert!(runs.as_array().unwrap().iter().all(|run| run["conversation_id"] == json!(alpha)));
    let beta_runs =
        server.ok("GET", &format!("/v1/runs/?conversation_id={beta}&agent_id={agent}"), None).await;
    assert_eq!(beta_runs.as_array().unwrap().len(), 1);
    let all_runs = server.ok("GET", &format!("/v1/runs/?agent_id={agent}"), None).await;
    assert_eq!(all_runs.as_array().unwrap().len(), 4);
    let by_activity = server
        .ok("GET", &format!("/v1/conversations/?agent_id={agent}&order_by=last_message_at&order=desc"), None)
        .await;
    assert_eq!(ids(&by_activity), vec![alpha.clone(), beta.clone()]);
    // conversation_search looks in the conversation it runs in.
    let tool_return = |answer: &Value| {
        let messages = answer["messages"].as_array().unwrap();
        let found = messages.iter().find(|m| m["message_type"] == "tool_return_message").unwrap();
        found["tool_return"].as_str().unwrap().to_string()
    };
    let in_beta = send(&server, &beta, r#"/call conversation_search {"query":"hello"}"#).await;
    assert_eq!(tool_return(&in_beta), "[]");
    let in_alpha = send(&server, &alpha, r#"/call conversation_search {"query":"hello"}"#).await;
    assert!(tool_return(&in_alpha).contains("hello from alpha"), "{in_alpha}");
    // A conversation's model answers its turns; the agent keeps its own.
    let gamma = create(&server, &agent, json!({"model": "openai-proxy/fake-gpt-mini"})).await;
    send(&server, &gamma, "which model").await;
    assert_eq!(fake.requests().last().unwrap()["model"], "fake-gpt-mini");
    send(&server, &alpha, "and here").await;
    assert_eq!(fake.requests().last().unwrap()["model"], "fake-gpt");
    let unserved = create(&server, &agent, json!({"model": "nowhere/some-model"})).await;
    let body = json!({"input": "hi", "streaming": false});
    let (status, answer) =
        server.call("POST", &format!("/v1/conversations/{unserved}/messages"), Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("nowhere"), "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_fork_starts_from_the_source_window_and_then_goes_its_own_way() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let source = create(&server, &agent, json!({"model": "openai-proxy/fake-gpt"})).await;
    send(&server, &source, "the shared start").await;
    let fork = server.ok("POST", &format!("/v1/conversations/{source}/fork"), None).await;
    let fork_id = fork["id"].as_str().unwrap().to_string();
    assert_ne!(fork_id, source);
    assert_eq!(
        (fork["agent_id"].as_str(), fork["model"].as_str()),
        (Some(agent.as_str()), Some("openai-proxy/fake-gpt"))
    );
    let source_messages =
        server.ok("GET", &format!("/v1/conversations/{source}/messages?order=asc"), None).await;
    let fork_messages =
        server.ok("GET", &format!("/v1/conversations/{fork_id}/messages?order=asc"), None).await;
    // The same messages, same ids (Letta shares them between the two).
    assert_eq!(ids(&fork_messages), ids(&source_messages));
    assert_eq!(texts(&fork_messages), vec!["the shared start", "echo: the shared start"]);
    send(&server, &fork_id, "only in the fork").await;
    send(&server, &source, "only in the source").await;
    let fork_texts =
        texts(&server.ok("GET", &format!("/v1/conversations/{fork_id}/messages?order=asc"), None).await);
    let source_texts =
        texts(&server.ok("GET", &format!("/v1/conversations/{source}/messages?order=asc"), None).await);
    assert_eq!(fork_texts[2..], ["only in the fork".to_string(), "echo: only in the fork".to_string()]);
    assert_eq!(source_texts[2..], ["only in the source".to_string(), "echo: only in the source".to_string()]);
    let sent = fake.requests().last().unwrap().to_string();
    assert!(sent.contains("the shared start") && !sent.contains("only in the fork"), "{sent}");
    // The agent's own history forks too (`default` with agent_id).
    server.say(&agent, "agent history").await;
    let from_agent =
        server.ok("POST", &format!("/v1/conversations/default/fork?agent_id={agent}"), None).await;
    let from_agent_id = from_agent["id"].as_str().unwrap();
    assert_eq!(
        texts(
            &server.ok("GET", &format!("/v1/conversations/{from_agent_id}/messages?order=asc"), None).await
        ),
        vec!["agent history", "echo: agent history"]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn conversations_and_their_messages_page_to_the_end_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let other = server.create_agent("other", &[]).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(create(&server, &agent, json!({"summary": format!("topic {i}")})).await);
    }
    let elsewhere = create(&server, &other, json!({"summary": "topic elsewhere"})).await;
    for i in 0..6 {
        send(&server, &created[0], &format!("turn {i}")).await;
    }
    let page_through = |order: &'static str, agent: Option<String>| {
        let server = &server;
        async move {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/v1/conversations/?limit=3&order={order}");
                if let Some(agent) = &agent {
                    path.push_str(&format!("&agent_id={agent}"));
                }
                if let Some(after) = &after {
                    path.push_str(&format!("&after={after}"));
                }
                let page = ids(&server.ok("GET", &path, None).await);
                if page.is_empty() {
                    return seen;
                }
                after = page.last().cloned();
                seen.extend(page);
            }
        }
    };
    assert_eq!(page_through("asc", Some(agent.clone())).await, created);
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(page_through("desc", Some(agent.clone())).await, newest_first);
    // Without agent_id: every agent's conversations.
    let everywhere = page_through("asc", None).await;
    assert_eq!(everywhere.len(), 8);
    assert!(everywhere.contains(&elsewhere));
    let searched = server
        .ok("GET", &format!("/v1/conversations/?agent_id={agent}&summary_search=topic%203"), None)
        .await;
    assert_eq!(ids(&searched), vec![created[3].clone()]);
    // Messages, three at a time, oldest first, to the end.
    let conversation = created[0].clone();
    let read_all = |server: &common::Running| {
        let (base, http, conversation) = (server.base.clone(), server.http.clone(), conversation.clone());
        async move {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut url = format!("{base}/v1/conversations/{conversation}/messages?limit=3&order=asc");
                if let Some(after) = &after {
                    url.push_str(&format!("&after={after}"));
                }
                let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                let page = page.as_array().unwrap().clone();
                if page.is_empty() {
                    return seen;
                }
                after = page.last().map(|m| m["id"].as_str().unwrap().to_string());
                seen.extend(texts(&Value::Array(page)));
            }
        }
    };
    let before = read_all(&server).await;
    assert_eq!(before.len(), 12);
    assert_eq!(before[10..], ["turn 5".to_string(), "echo: turn 5".to_string()]);
    let got_before = server.ok("GET", &format!("/v1/conversations/{conversation}"), None).await;
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    assert_eq!(read_all(&server).await, before);
    assert_eq!(server.ok("GET", &format!("/v1/conversations/{conversation}"), None).await, got_before);
    assert_eq!(page_through_after_restart(&server, &agent).await, created);
    // The window is still the conversation's: the next turn sees its history.
    send(&server, &conversation, "after the restart").await;
    let sent = fake.requests().last().unwrap().to_string();
    assert!(sent.contains("turn 5") && sent.contains("after the restart"), "{sent}");
    server.shutdown().await;
}

async fn page_through_after_restart(server: &common::Running, agent: &str) -> Vec<String> {
    ids(&server.ok("GET", &format!("/v1/conversations/?agent_id={agent}&order=asc&limit=50"), None).await)
}

#[tokio::test]
async fn streaming_and_background_turns_run_in_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let conversation = create(&server, &agent, json!({})).await;
    // Streaming is the default.
    let path = format!("/v1/conversations/{conversation}/messages");
    let (status, events) =
        sse(&server, &path, json!({"messages": [{"role": "user", "content": "streamed"}]})).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = events.iter().map(|e| e["message_type"].as_str().unwrap_or("[DONE]")).collect();
    assert_eq!(kinds.first(), Some(&"ping"));
    assert!(
        kinds.contains(&"assistant_message")
            && kinds.ends_with(&["stop_reason", "usage_statistics", "[DONE]"]),
        "{kinds:?}"
    );
    let assistant = events.iter().find(|e| e["message_type"] == "assistant_message").unwrap();
    assert_eq!(assistant["content"], "echo: streamed");
    // A background turn streams through its run; its stream can be resumed.
    let body = json!({"messages": [{"role": "user", "content": "in the background"}], "background": true});
    let (status, events) = sse(&server, &path, body).await;
    assert_eq!(status, 200);
    let assistant = events.iter().find(|e| e["message_type"] == "assistant_message").unwrap();
    assert_eq!(assistant["content"], "echo: in the background");
    let run_id = assistant["run_id"].as_str().unwrap().to_string();
    let run = server.ok("GET", &format!("/v1/runs/{run_id}"), None).await;
    assert_eq!(
        (run["background"].clone(), run["conversation_id"].clone()),
        (json!(true), json!(conversation))
    );
    let stream_path = format!("/v1/conversations/{conversation}/stream");
    let (status, resumed) = sse(&server, &stream_path, json!({"run_id": run_id, "starting_after": 0})).await;
    assert_eq!(status, 200);
    assert!(resumed.iter().any(|e| e["content"] == "echo: in the background"), "{resumed:?}");
    // Nothing runs now: no active run to resume or cancel.
    let (status, answer) = server.call("POST", &stream_path, None).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["detail"], "No active runs found for this conversation.");
    let (status, answer) =
        server.call("POST", &format!("/v1/conversations/{conversation}/cancel"), None).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains(&conversation), "{answer}");
    // Compact summarizes this conversation's window; recompile shows the prompt.
    let compacted = server.ok("POST", &format!("/v1/conversations/{conversation}/compact"), None).await;
    assert!(compacted["summary"].as_str().unwrap().starts_with("Summary of"), "{compacted}");
    assert!(
        compacted["num_messages_before"].as_u64().unwrap()
            > compacted["num_messages_after"].as_u64().unwrap()
    );
    let prompt = server.ok("POST", &format!("/v1/conversations/{conversation}/recompile"), None).await;
    assert!(prompt.as_str().unwrap().contains("A patient tutor."), "{prompt}");
    let (status, _) = server.call("POST", &format!("/v1/agents/{agent}/summarize"), None).await;
    assert_eq!(status, 400, "the agent's own history has nothing to compact");
    server.shutdown().await;
}

#[tokio::test]
async fn a_deleted_conversation_is_gone_with_its_messages_and_the_agent_takes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let kept = create(&server, &agent, json!({})).await;
    let dropped = create(&server, &agent, json!({})).await;
    send(&server, &dropped, "soon gone").await;
    send(&server, &kept, "stays").await;
    server.ok("DELETE", &format!("/v1/conversations/{dropped}"), None).await;
    for (method, path) in [
        ("GET", format!("/v1/conversations/{dropped}")),
        ("GET", format!("/v1/conversations/{dropped}/messages")),
        ("DELETE", format!("/v1/conversations/{dropped}")),
        ("POST", format!("/v1/conversations/{dropped}/fork")),
    ] {
        let (status, answer) = server.call(method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert_eq!(answer["detail"], format!("Conversation with ID {dropped} not found"));
    }
    let (status, _) = server
        .call(
            "POST",
            &format!("/v1/conversations/{dropped}/messages"),
            Some(json!({"input": "x", "streaming": false})),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/conversations/?agent_id={agent}"), None).await),
        vec![kept.clone()]
    );
    assert_eq!(texts(&server.ok("GET", &format!("/v1/conversations/{kept}/messages"), None).await).len(), 2);
    server.service.reclaimer.run_once().await.unwrap();
    // The agent's deletion takes its conversations.
    server.ok("DELETE", &format!("/v1/agents/{agent}"), None).await;
    let (status, _) = server.call("GET", &format!("/v1/conversations/{kept}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(server.ok("GET", "/v1/conversations/", None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_conversation_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let conversation = create(&server, &agent, json!({})).await;
    let unknown_agent = "agent-00000000-0000-4000-8000-000000000000";
    let long_summary = "s".repeat(kelpie_agent::service::conversations::CONVERSATION_SUMMARY_BYTES_MAX + 1);
    let long_model =
        format!("p/{}", "m".repeat(kelpie_agent::service::conversations::CONVERSATION_MODEL_BYTES_MAX));
    let big_settings = json!({"provider_type": "openai", "x": "y".repeat(kelpie_agent::service::conversations::CONVERSATION_MODEL_SETTINGS_BYTES_MAX)});
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("POST", format!("/v1/conversations/?agent_id={unknown_agent}"), None, 404, "not found"),
        ("POST", "/v1/conversations/".into(), None, 422, "agent_id"),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"model": "no-slash"})),
            422,
            "provider/model-name",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"summary": long_summary})),
            422,
            "CONVERSATION_SUMMARY_BYTES_MAX",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"model": long_model})),
            422,
            "CONVERSATION_MODEL_BYTES_MAX",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"model_settings": big_settings})),
            422,
            "CONVERSATION_MODEL_SETTINGS_BYTES_MAX",
        ),
        (
            "PATCH",
            format!("/v1/conversations/{conversation}"),
            Some(json!({"model_settings": {}})),
            422,
            "model_settings.provider_type None must be one of",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"model_settings": {"provider_type": "hal"}})),
            422,
            "model_settings.provider_type Some(\"hal\")",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"model_settings": {"provider_type": "chatgpt_oauth", "temperature": {}}})),
            422,
            "model_settings.temperature must be a number",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"isolated_block_labels": ["human"]})),
            422,
            "isolated_block_labels",
        ),
        (
            "POST",
            format!("/v1/conversations/?agent_id={agent}"),
            Some(json!({"colour": "red"})),
            422,
            "colour",
        ),
        (
            "PATCH",
            format!("/v1/conversations/{conversation}"),
            Some(json!({"last_message_at": "yesterday"})),
            422,
            "RFC 3339",
        ),
        ("GET", "/v1/conversations/conv-00000000-0000-4000-8000-000000000000".into(), None, 404, "not found"),
        ("GET", "/v1/conversations/nonsense/messages".into(), None, 422, "neither"),
        ("GET", "/v1/conversations/default/messages".into(), None, 422, "agent_id"),
        (
            "GET",
            format!("/v1/conversations/default/messages?agent_id={unknown_agent}"),
            None,
            404,
            "not found",
        ),
        (
            "POST",
            format!("/v1/conversations/{conversation}/messages"),
            Some(json!({"messages": [], "streaming": false})),
            422,
            "Messages must not be empty",
        ),
        ("GET", format!("/v1/conversations/?agent_id={agent}&limit=0"), None, 422, "limit"),
        (
            "GET",
            format!("/v1/conversations/?agent_id={agent}&limit=1001"),
            None,
            422,
            "AGENT_CONVERSATIONS_COUNT_MAX",
        ),
        ("GET", format!("/v1/conversations/?agent_id={agent}&order=sideways"), None, 422, "order"),
        ("GET", format!("/v1/conversations/?agent_id={agent}&order_by=size"), None, 422, "order_by"),
        ("GET", "/v1/conversations/?order_by=last_message_at".into(), None, 422, "needs agent_id"),
        ("GET", format!("/v1/conversations/?agent_id={agent}&archive_status=archived"), None, 422, "archive"),
        (
            "POST",
            format!("/v1/conversations/{conversation}/stream"),
            Some(json!({"otid": "x"})),
            422,
            "run_id",
        ),
        ("POST", format!("/v1/conversations/{conversation}/compact"), None, 400, "nothing to summarize"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, answer) = server.call(method, &path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{method} {path}: {detail:?} lacks {needle:?}");
    }
    // Nothing of it was stored.
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/conversations/?agent_id={agent}"), None).await),
        vec![conversation.clone()]
    );
    // A well-formed modify changes what it names only.
    let changed = server
        .ok("PATCH", &format!("/v1/conversations/{conversation}"), Some(json!({"summary": "renamed"})))
        .await;
    assert_eq!((changed["summary"].as_str(), changed["model"].clone()), (Some("renamed"), Value::Null));
    server.shutdown().await;
}

#[tokio::test]
async fn the_message_routes_across_agents_find_a_conversations_messages() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("tutor", &[]).await;
    let alpha = create(&server, &agent, json!({})).await;
    send(&server, &alpha, "pelicans in alpha").await;
    server.say(&agent, "herons at home").await;
    let in_alpha = server.ok("GET", &format!("/v1/conversations/{alpha}/messages?order=asc"), None).await;
    assert!(in_alpha.as_array().unwrap().iter().all(|m| m["conversation_id"] == json!(alpha)), "{in_alpha}");
    let user = in_alpha.as_array().unwrap().iter().find(|m| m["message_type"] == "user_message").unwrap();
    let user_id = user["id"].as_str().unwrap();
    // By id: found in the conversation, and said so.
    let found = server.ok("GET", &format!("/v1/messages/{user_id}"), None).await;
    assert_eq!(
        (&found[0]["content"], &found[0]["conversation_id"]),
        (&json!("pelicans in alpha"), &json!(alpha))
    );
    // Listed by conversation: the conversation's messages only; by the
    // agent's id: its own history only.
    let listed = server.ok("GET", &format!("/v1/messages/?conversation_id={alpha}&order=asc"), None).await;
    assert_eq!(texts(&listed), vec!["pelicans in alpha", "echo: pelicans in alpha"]);
    let only_users =
        format!("/v1/messages/?conversation_id={alpha}&include_return_message_types=user_message");
    assert_eq!(texts(&server.ok("GET", &only_users, None).await), vec!["pelicans in alpha"]);
    let own = server.ok("GET", &format!("/v1/messages/?conversation_id={agent}&order=asc"), None).await;
    assert_eq!(texts(&own), vec!["herons at home", "echo: herons at home"]);
    // Searched by conversation: its words are found there, not at home.
    let search = |body: Value| server.ok("POST", "/v1/messages/search", Some(body));
    let hits = search(json!({"query": "pelicans", "conversation_id": alpha})).await;
    let hits = hits.as_array().unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h["conversation_id"] == json!(alpha)), "{hits:?}");
    assert!(hits.iter().any(|h| h["content"] == "pelicans in alpha"), "{hits:?}");
    let home = search(json!({"query": "pelicans", "agent_id": agent})).await;
    assert_eq!(home, json!([]));
    let elsewhere = search(json!({"query": "herons", "conversation_id": alpha})).await;
    assert_eq!(elsewhere, json!([]));
    // A deleted conversation's messages are not found any more.
    server.ok("DELETE", &format!("/v1/conversations/{alpha}"), None).await;
    let (status, _) = server.call("GET", &format!("/v1/messages/{user_id}"), None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}
