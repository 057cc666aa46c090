//! `POST /v1/chat/completions` over HTTP: an OpenAI-style request naming an
//! agent as the model runs a turn of that agent with the last user message
//! and answers the agent's reply, whole or as `chat.completion.chunk`
//! events; the turn is stored as any turn is; bad requests are refused.

mod common;

use serde_json::{json, Value};

fn request(agent: &str, stream: bool) -> Value {
    json!({
        "model": agent, "stream": stream, "temperature": 0.2,
        "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "first"},
                     {"role": "assistant", "content": "earlier"},
                     {"role": "user", "content": [{"type": "text", "text": "the "}, {"type": "text", "text": "last"}]}],
    })
}

#[tokio::test]
async fn an_agent_answers_as_an_openai_chat_completion() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("chatty", &[]).await;
    let completion = server.ok("POST", "/v1/chat/completions", Some(request(&agent, false))).await;
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "fake-gpt");
    let id = completion["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-run-"), "{completion}");
    assert_eq!(
        completion["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "echo: the last", "refusal": null},
                "finish_reason": "stop", "logprobs": null}])
    );
    let usage = &completion["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap())
    );
    // Only the last user message went in; the turn is the agent's own run.
    let messages = server.ok("GET", &format!("/v1/agents/{agent}/messages"), None).await;
    let contents: Vec<&str> =
        messages.as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(contents, ["the last", "echo: the last"]);
    let run = server.ok("GET", &format!("/v1/runs/{}", id.trim_start_matches("chatcmpl-")), None).await;
    assert_eq!(run["status"], "completed");
    server.shutdown().await;
}

#[tokio::test]
async fn a_streamed_chat_completion_sends_the_reply_in_chunks_then_stop() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("streamy", &[]).await;
    let response = server
        .http
        .post(format!("{}/v1/chat/completions", server.base))
        .json(&request(&agent, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<&str> =
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.trim_start_matches("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.len() >= 3, "a role chunk, fragments and the stop: {text}");
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-run-"), "{text}");
    for chunk in &chunks {
        assert_eq!(
            (chunk["id"].as_str(), chunk["object"].as_str()),
            (Some(id), Some("chat.completion.chunk"))
        );
        assert_eq!(chunk["model"], "fake-gpt");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "echo: the last");
    let last = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!((last["finish_reason"].as_str(), last["delta"].clone()), (Some("stop"), json!({})));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
    server.shutdown().await;
}

#[tokio::test]
async fn chat_completions_refuse_what_names_no_agent_or_sends_no_user_message() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let agent = server.create_agent("strict", &[]).await;
    let (status, answer) = server.call("POST", "/v1/chat/completions", Some(request("gpt-4o", false))).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("gpt-4o"), "{answer}");
    let no_user = json!({"model": agent, "messages": [{"role": "system", "content": "x"}]});
    let (status, answer) = server.call("POST", "/v1/chat/completions", Some(no_user)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("user"), "{answer}");
    let missing = "agent-00000000-0000-4000-8000-000000000000";
    let (status, _) = server.call("POST", "/v1/chat/completions", Some(request(missing, true))).await;
    assert_eq!(status, 404, "an unknown agent fails before any stream starts");
    let empty = json!({"model": agent, "messages": [{"role": "user", "content": "  "}]});
    let (status, answer) = server.call("POST", "/v1/chat/completions", Some(empty)).await;
    assert_eq!(status, 422, "{answer}");
    let (status, _) = server.call("POST", "/v1/chat/completions", Some(json!({"model": agent}))).await;
    assert_eq!(status, 422, "messages are required");
    // Nothing above ran a turn.
    assert_eq!(server.ok("GET", &format!("/v1/agents/{agent}/messages"), None).await, json!([]));
    server.shutdown().await;
}
