//! The context window of a long conversation, at a tiny window so every
//! boundary is crossed within a test: compaction summarizes the oldest
//! messages (the fake LLM answers summarizer requests), no turn fails
//! because history grew, the summarized messages stay listed and
//! searchable, `/context` shows the window, `/summarize` compacts on demand,
//! a prompt the provider refuses as too long is compacted and sent again,
//! and a system prompt or core memory that could never fit is refused.

mod common;

use kelpie_agent::context::SUMMARY_MARKER;
use serde_json::{json, Value};

/// Tokens of the agents' context window: small, so a few turns fill it.
const WINDOW_TOKENS: u64 = 4_000;
/// Turns of the long conversation.
const TURNS_COUNT: usize = 40;

async fn small_agent(server: &common::Running, name: &str) -> String {
    let body = json!({
        "name": name, "model": "openai-proxy/fake-gpt", "context_window_limit": WINDOW_TOKENS,
        "memory_blocks": [{"label": "human", "value": "Name: Ana.", "limit": 1000}],
    });
    server.ok("POST", "/v1/agents/", Some(body)).await["id"].as_str().unwrap().to_string()
}

/// A user message of about 100 tokens naming `item`.
fn line(item: usize) -> String {
    format!("Please remember item{item}. {}", "The harbour was quiet that morning. ".repeat(10))
}

fn estimated_tokens(request: &Value) -> u64 {
    let text = request["messages"].to_string() + &request["tools"].to_string();
    (text.len() as u64).div_ceil(4)
}

fn is_summary(message: &Value) -> bool {
    message["message_type"] == "user_message"
        && message["content"].as_str().is_some_and(|c| c.contains(SUMMARY_MARKER))
}

#[tokio::test]
async fn a_long_conversation_is_compacted_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = small_agent(&server, "long").await;
    let mut summaries_in_replies = 0;
    for item in 0..TURNS_COUNT {
        let reply = server.say(&id, &line(item)).await;
        assert_eq!(reply["stop_reason"]["stop_reason"], "end_turn", "turn {item}");
        summaries_in_replies +=
            reply["messages"].as_array().unwrap().iter().filter(|m| is_summary(m)).count();
    }
    assert!(summaries_in_replies >= 2, "the window was compacted more than once: {summaries_in_replies}");

    let requests = fake.requests();
    let summarizer: Vec<&Value> =
        requests.iter().filter(|r| r["tools"].as_array().is_none_or(Vec::is_empty)).collect();
    assert_eq!(summarizer.len(), summaries_in_replies, "one summarizer call per compaction");
    let first = summarizer[0]["messages"].as_array().unwrap();
    assert_eq!(first[0]["role"], "system");
    assert!(first[1]["content"].as_str().unwrap().starts_with("<transcript>\n[user] Please remember item0."));
    // A later summary folds in the one before it.
    let later = summarizer[1]["messages"][1]["content"].as_str().unwrap();
    assert!(later.contains("[summary of what came before] Summary of"), "{later}");
    // Every prompt fits the window; after a compaction the summary follows
    // the system message.
    let steps: Vec<&Value> =
        requests.iter().filter(|r| !r["tools"].as_array().is_none_or(Vec::is_empty)).collect();
    for step in &steps {
        assert!(estimated_tokens(step) <= WINDOW_TOKENS, "a prompt of {} tokens", estimated_tokens(step));
    }
    let last = steps.last().unwrap()["messages"].as_array().unwrap();
    assert!(last[1]["content"].as_str().unwrap().contains(SUMMARY_MARKER), "{}", last[1]);
    // Past the system message and the summary (which may quote it), item0 is gone.
    assert!(
        !last[2..].iter().any(|m| m["content"].as_str().is_some_and(|c| c.contains("item0."))),
        "item0 left the window"
    );

    // Nothing is lost: every message is listed, the summaries among them,
    // and the oldest is found by conversation_search.
    let listed = server.ok("GET", &format!("/v1/agents/{id}/messages?limit=1000"), None).await;
    let listed = listed.as_array().unwrap();
    let users: Vec<&Value> =
        listed.iter().filter(|m| m["message_type"] == "user_message" && !is_summary(m)).collect();
    assert_eq!(users.len(), TURNS_COUNT);
    assert_eq!(listed.iter().filter(|m| is_summary(m)).count(), summaries_in_replies);
    let found = server.say(&id, r#"/call conversation_search {"query": "item0."}"#).await;
    let returned =
        found["messages"].as_array().unwrap().iter().find(|m| m["message_type"] == "tool_return_message");
    assert!(returned.unwrap()["tool_return"].as_str().unwrap().contains("Please remember item0."), "{found}");

    // The context window as the next step would send it.
    let context = server.ok("GET", &format!("/v1/agents/{id}/context"), None).await;
    assert_eq!(context["context_window_size_max"], WINDOW_TOKENS);
    let current = context["context_window_size_current"].as_u64().unwrap();
    assert!(current <= WINDOW_TOKENS, "{current}");
    assert!(context["summary_memory"].as_str().unwrap().contains(SUMMARY_MARKER));
    let parts = [
        "num_tokens_system",
        "num_tokens_core_memory",
        "num_tokens_external_memory_summary",
        "num_tokens_summary_memory",
        "num_tokens_functions_definitions",
        "num_tokens_messages",
    ];
    assert_eq!(parts.iter().map(|p| context[p].as_u64().unwrap()).sum::<u64>(), current);
    let in_context = context["messages"].as_array().unwrap().len();
    assert_eq!(
        context["num_messages"].as_u64().unwrap() as usize,
        2 + in_context,
        "system + summary + messages"
    );
    assert!(in_context < listed.len());
    let stored = server.ok("GET", &format!("/v1/agents/{id}/messages?limit=1000"), None).await;
    assert!(context["num_recall_memory"].as_u64().unwrap() as usize >= stored.as_array().unwrap().len());
    assert!(context["core_memory"].as_str().unwrap().contains("Name: Ana."));
    assert_eq!(context["functions_definitions"][0]["type"], "function");
    server.shutdown().await;
}

#[tokio::test]
async fn summarize_compacts_on_demand_with_settings_over_the_agents() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = small_agent(&server, "summarized").await;
    let (status, body) = server.call("POST", &format!("/v1/agents/{id}/summarize"), None).await;
    assert_eq!(status, 400, "nothing to summarize yet: {body}");
    assert!(body["detail"].as_str().unwrap().contains("nothing to summarize"), "{body}");
    for item in 0..6 {
        server.say(&id, &format!("short note {item}")).await;
    }
    let done = server.ok("POST", &format!("/v1/agents/{id}/summarize"), None).await;
    assert!(done["summary"].as_str().unwrap().starts_with("Summary of "), "{done}");
    let (before, after) =
        (done["num_messages_before"].as_u64().unwrap(), done["num_messages_after"].as_u64().unwrap());
    assert!(after < before, "{done}");
    let all = json!({"compaction_settings": {"mode": "all"}});
    let done = server.ok("POST", &format!("/v1/agents/{id}/summarize"), Some(all)).await;
    assert_eq!(
        done["num_messages_after"], 2,
        "mode all keeps only the system message and the summary: {done}"
    );
    let context = server.ok("GET", &format!("/v1/agents/{id}/context"), None).await;
    assert_eq!(context["messages"], json!([]));
    // The agent's own settings are untouched by a request's.
    let agent = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
    assert_eq!(agent["compaction_settings"]["mode"], "sliding_window");
    let bad = json!({"compaction_settings": {"sliding_window_percentage": 5}});
    let (status, body) = server.call("POST", &format!("/v1/agents/{id}/summarize"), Some(bad)).await;
    assert_eq!(status, 422, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn compaction_settings_are_shown_with_defaults_and_merged_on_update() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = small_agent(&server, "settings").await;
    let agent = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
    let settings = &agent["compaction_settings"];
    assert_eq!(settings["model"], "openai-proxy/fake-gpt");
    assert_eq!(
        (settings["mode"].as_str(), settings["clip_chars"].as_u64()),
        (Some("sliding_window"), Some(50_000))
    );
    assert_eq!(settings["sliding_window_percentage"], 0.3);
    let sliding_prompt = settings["prompt"].as_str().unwrap().to_string();
    let patch = json!({"compaction_settings": {"mode": "all", "clip_chars": 1000}});
    let agent = server.ok("PATCH", &format!("/v1/agents/{id}"), Some(patch)).await;
    let settings = &agent["compaction_settings"];
    assert_eq!((settings["mode"].as_str(), settings["clip_chars"].as_u64()), (Some("all"), Some(1000)));
    assert_ne!(settings["prompt"].as_str().unwrap(), sliding_prompt, "a new mode brings its own prompt");
    assert_eq!(settings["sliding_window_percentage"], 0.3, "fields not given keep their value");
    let (status, body) = server
        .call(
            "PATCH",
            &format!("/v1/agents/{id}"),
            Some(json!({"compaction_settings": {"mode": "sideways"}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_prompt_refused_as_too_long_is_compacted_and_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = small_agent(&server, "refused").await;
    for item in 0..3 {
        server.say(&id, &format!("note {item}")).await;
    }
    fake.push_error(
        400,
        "This model's maximum context length is 4000 tokens; your messages resulted in 9000 tokens.",
    );
    let reply = server.say(&id, "after the refusal").await;
    assert_eq!(reply["stop_reason"]["stop_reason"], "end_turn", "{reply}");
    let messages = reply["messages"].as_array().unwrap();
    assert!(is_summary(&messages[0]), "the compaction's summary comes first: {reply}");
    assert_eq!(messages.last().unwrap()["content"], "echo: after the refusal");
    let context = server.ok("GET", &format!("/v1/agents/{id}/context"), None).await;
    assert!(context["summary_memory"].as_str().unwrap().contains("Summary of"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_failed_summary_does_not_fail_the_turn() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let id = small_agent(&server, "unsummarized").await;
    for item in 0..3 {
        server.say(&id, &line(item)).await;
    }
    // Fill core memory (2 000 of the 4 000 tokens, beside 1 100 of tool
    // schemas): the next prompt is past the trigger.
    let big = json!({"value": "w".repeat(8_000), "limit": 13_000});
    server.ok("PATCH", &format!("/v1/agents/{id}/core-memory/blocks/human"), Some(big)).await;
    for _ in 0..4 {
        fake.push_status(500); // every attempt of the summarizer call
    }
    let reply = server.say(&id, "still here?").await;
    assert_eq!(reply["stop_reason"]["stop_reason"], "end_turn", "{reply}");
    assert!(!reply["messages"].as_array().unwrap().iter().any(is_summary));
    let sent = fake.requests().last().unwrap().clone();
    assert!(estimated_tokens(&sent) <= WINDOW_TOKENS, "the newest messages that fit were sent");
    server.shutdown().await;
}

#[tokio::test]
async fn a_system_prompt_or_core_memory_that_could_never_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let huge = "s".repeat(20_000);
    let body = json!({"name": "huge", "model": "openai-proxy/fake-gpt", "context_window_limit": WINDOW_TOKENS, "system": huge});
    let (status, answer) = server.call("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains("at most 3200") && detail.contains("context window of 4000 tokens"), "{detail}");
    let id = small_agent(&server, "fits").await;
    let (status, answer) =
        server.call("PATCH", &format!("/v1/agents/{id}"), Some(json!({"system": huge}))).await;
    assert_eq!(status, 422, "{answer}");
    let block = json!({"value": "b".repeat(14_000), "limit": 20_000});
    let (status, answer) =
        server.call("PATCH", &format!("/v1/agents/{id}/core-memory/blocks/human"), Some(block)).await;
    assert_eq!(status, 422, "{answer}");
    // The model's own memory edit past the budget is an error it reads; nothing changes.
    let limit = json!({"limit": 20_000});
    server.ok("PATCH", &format!("/v1/agents/{id}/core-memory/blocks/human"), Some(limit)).await;
    let append = json!({"label": "human", "content": "x".repeat(14_000)});
    let reply = server.say(&id, &format!("/call core_memory_append {append}")).await;
    assert_eq!(reply["messages"][2]["status"], "error", "{}", reply["messages"][2]);
    let agent = server.ok("GET", &format!("/v1/agents/{id}"), None).await;
    assert_eq!(agent["memory"]["blocks"][0]["value"], "Name: Ana.");
    server.shutdown().await;
}

#[tokio::test]
async fn recompile_answers_the_system_prompt_the_next_step_sends() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("ana", &[]).await;
    server.say(&agent, "hello").await;
    let body = json!({"value": "Name: Ana. Plays chess."});
    server.ok("PATCH", &format!("/v1/agents/{agent}/core-memory/blocks/human"), Some(body)).await;
    let prompt = server.ok("POST", &format!("/v1/agents/{agent}/recompile"), None).await;
    let prompt = prompt.as_str().unwrap().to_string();
    let system =
        server.ok("GET", &format!("/v1/agents/{agent}"), None).await["system"].as_str().unwrap().to_string();
    assert!(prompt.starts_with(&system), "{prompt}");
    assert!(prompt.contains("Name: Ana. Plays chess."), "the edit is in: {prompt}");
    // "hello", the reply's call and its return.
    assert!(prompt.contains("Recent messages in view: 3"), "{prompt}");
    let again =
        server.ok("POST", &format!("/v1/agents/{agent}/system-prompt/recompile?dry_run=true"), None).await;
    assert_eq!(again.as_str(), Some(prompt.as_str()));
    // The next step sends it (its counts then take in the turn's own message).
    server.say(&agent, "again").await;
    let requests = fake.requests();
    let sent = requests.last().unwrap()["messages"][0]["content"].as_str().unwrap().to_string();
    let before_counts = |text: &str| text.split("<memory_metadata>").next().unwrap().to_string();
    assert_eq!(before_counts(&sent), before_counts(&prompt));
    assert!(sent.len() > system.len() + 100, "{sent}");
    let (status, _) =
        server.call("POST", "/v1/agents/agent-00000000-0000-4000-8000-000000000000/recompile", None).await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn preview_shows_the_next_request_and_generate_asks_the_model_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("ana", &[]).await;
    server.say(&agent, "hello").await;
    let messages_path = format!("/v1/agents/{agent}/messages?limit=1000");
    let stored = server.ok("GET", &messages_path, None).await;
    let asked = fake.requests().len();
    let body = json!({"messages": [{"role": "user", "content": "preview me"}]});
    let preview = server
        .ok("POST", &format!("/v1/agents/{agent}/messages/preview-raw-payload"), Some(body.clone()))
        .await;
    assert_eq!(preview["model"], "fake-gpt");
    assert_eq!(preview["messages"][0]["role"], "system");
    assert_eq!(preview["messages"].as_array().unwrap().last().unwrap()["content"], "preview me");
    assert!(preview["tools"].as_array().unwrap().iter().any(|t| t["function"]["name"] == "send_message"));
    assert_eq!(
        (fake.requests().len(), server.ok("GET", &messages_path, None).await),
        (asked, stored.clone())
    );
    // Sent for real, the first request is the previewed one.
    server.ok("POST", &format!("/v1/agents/{agent}/messages"), Some(body)).await;
    let sent = fake.requests()[asked].clone();
    assert_eq!(
        (&sent["messages"], &sent["tools"], &sent["model"]),
        (&preview["messages"], &preview["tools"], &preview["model"])
    );

    // generate: the model alone, nothing stored.
    let stored = server.ok("GET", &messages_path, None).await;
    fake.push_reply(Some("Brief answer."), &[]);
    let body = json!({"prompt": "Say something", "system_prompt": "Be brief."});
    let answer = server.ok("POST", &format!("/v1/agents/{agent}/generate"), Some(body)).await;
    assert_eq!(
        (answer["content"].as_str(), answer["model"].as_str()),
        (Some("Brief answer."), Some("openai-proxy/fake-gpt"))
    );
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0, "{answer}");
    let request = fake.requests().last().unwrap().clone();
    assert_eq!(
        request["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something"}])
    );
    assert!(request.get("tools").is_none(), "{request}");
    assert_eq!(server.ok("GET", &messages_path, None).await, stored);
    let cases = [
        (json!({"prompt": ""}), 422),
        (json!({"prompt": "x", "override_model": "nowhere/x"}), 422),
        (json!({"prompt": "x", "response_schema": {"type": "object"}}), 422),
    ];
    for (body, status) in cases {
        let (got, answer) = server.call("POST", &format!("/v1/agents/{agent}/generate"), Some(body)).await;
        assert_eq!(got, status, "{answer}");
    }
    let (got, _) = server
        .call(
            "POST",
            &format!("/v1/agents/{agent}/messages/preview-raw-payload"),
            Some(json!({"messages": []})),
        )
        .await;
    assert_eq!(got, 422);
    server.shutdown().await;
}
