//! Groups (`/v1/groups`) over HTTP: create each pattern, list with filters
//! to the end of its pages, count, modify, an agent's groups, the
//! manager's `managed_group`, limits and bad input, durability across a
//! restart; a round robin turn across members; sleeptime agents after
//! their manager's turns, sharing the block they edit.

mod common;

use std::time::Duration;

use kelpie_agent::actors::group_store::{GROUP_BLOCKS_COUNT_MAX, GROUP_TOKEN_BYTES_MAX};
use serde_json::{json, Value};

fn ids(items: &Value) -> Vec<String> {
    items.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

/// Waits (up to 30 s) until `check` holds for what `read` answers.
async fn eventually(server: &common::Running, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let value = server.ok("GET", path, None).await;
        if check(&value) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never reached the expected state: {}", server.ok("GET", path, None).await);
}

#[tokio::test]
async fn groups_are_created_listed_modified_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    let boss = server.create_agent("boss", &[]).await;
    let rr =
        server.ok("POST", "/v1/groups/", Some(json!({"agent_ids": [ana, bo], "description": "pair"}))).await;
    let rr_id = rr["id"].as_str().unwrap().to_string();
    assert!(rr_id.starts_with("group-"), "{rr_id}");
    assert_eq!(
        (rr["manager_type"].as_str(), rr["agent_ids"].clone()),
        (Some("round_robin"), json!([ana, bo]))
    );
    assert_eq!((rr["manager_agent_id"].clone(), rr["turns_counter"].clone()), (Value::Null, Value::Null));
    let config =
        json!({"manager_type": "sleeptime", "manager_agent_id": boss, "sleeptime_agent_frequency": 3});
    let body = json!({"agent_ids": [ana], "description": "sleepers", "manager_config": config});
    let sleep = server.ok("POST", "/v1/groups/", Some(body)).await;
    let sleep_id = sleep["id"].as_str().unwrap().to_string();
    assert_eq!(
        (sleep["turns_counter"].clone(), sleep["sleeptime_agent_frequency"].clone()),
        (json!(-1), json!(3))
    );
    let config = json!({"manager_type": "dynamic", "manager_agent_id": ana});
    let dynamic = server
        .ok(
            "POST",
            "/v1/groups/",
            Some(json!({"agent_ids": [bo], "description": "d", "manager_config": config, "hidden": true})),
        )
        .await;
    assert_eq!(dynamic["termination_token"], "DONE!");
    // The manager shows the group it manages.
    let manager = server.ok("GET", &format!("/v1/agents/{boss}"), None).await;
    assert_eq!(
        (manager["managed_group"]["id"].as_str(), manager["multi_agent_group"]["id"].as_str()),
        (Some(sleep_id.as_str()), Some(sleep_id.as_str()))
    );
    let listed = server.ok("GET", "/v1/agents/", None).await;
    let listed_boss = listed.as_array().unwrap().iter().find(|a| a["id"] == boss.as_str()).unwrap();
    assert_eq!(listed_boss["managed_group"]["manager_type"], "sleeptime");
    // Lists: hidden groups left out unless asked, paged to the end.
    assert_eq!(ids(&server.ok("GET", "/v1/groups/", None).await), vec![rr_id.clone(), sleep_id.clone()]);
    let all = ids(&server.ok("GET", "/v1/groups/?show_hidden_groups=true", None).await);
    assert_eq!(all.len(), 3);
    let mut paged = Vec::new();
    let mut path = "/v1/groups/?show_hidden_groups=true&limit=1".to_string();
    loop {
        let page = ids(&server.ok("GET", &path, None).await);
        let Some(last) = page.last().cloned() else { break };
        paged.extend(page);
        path = format!("/v1/groups/?show_hidden_groups=true&limit=1&after={last}");
    }
    assert_eq!(paged, all);
    assert_eq!(
        ids(&server.ok("GET", "/v1/groups/?manager_type=sleeptime", None).await),
        vec![sleep_id.clone()]
    );
    assert_eq!(server.ok("GET", "/v1/groups/count", None).await, json!(3));
    // An agent's groups: those it is a member of, newest first.
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/agents/{ana}/groups"), None).await),
        vec![sleep_id.clone(), rr_id.clone()]
    );
    assert_eq!(
        ids(&server.ok("GET", &format!("/v1/agents/{ana}/groups?manager_type=round_robin"), None).await),
        vec![rr_id.clone()]
    );
    // Modify: the fields given; the pattern never changes.
    let body = json!({"description": "trio", "agent_ids": [bo, ana, bo], "manager_config": {"manager_type": "round_robin", "max_turns": 4}});
    let modified = server.ok("PATCH", &format!("/v1/groups/{rr_id}"), Some(body)).await;
    assert_eq!((modified["description"].as_str(), modified["max_turns"].clone()), (Some("trio"), json!(4)));
    assert_eq!(modified["agent_ids"], json!([bo, ana, bo]));
    let (status, answer) = server
        .call(
            "PATCH",
            &format!("/v1/groups/{rr_id}"),
            Some(json!({"manager_config": {"manager_type": "supervisor", "manager_agent_id": boss}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("Cannot change group pattern"), "{answer}");
    // A restart keeps every group and the manager's link.
    server.shutdown().await;
    let server = common::start(dir.path(), &fake).await;
    let again = server.ok("GET", &format!("/v1/groups/{rr_id}"), None).await;
    assert_eq!(
        (again["description"].as_str(), again["agent_ids"].clone()),
        (Some("trio"), json!([bo, ana, bo]))
    );
    assert_eq!(
        server.ok("GET", &format!("/v1/agents/{boss}"), None).await["managed_group"]["id"],
        sleep_id.as_str()
    );
    // Deleting a group leaves its agents; the manager manages nothing.
    let deleted = server.ok("DELETE", &format!("/v1/groups/{sleep_id}"), None).await;
    assert_eq!(deleted["message"], format!("Group id={sleep_id} successfully deleted"));
    let manager = server.ok("GET", &format!("/v1/agents/{boss}"), None).await;
    assert_eq!(
        (manager["managed_group"].clone(), manager["multi_agent_group"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(server.call("GET", &format!("/v1/groups/{sleep_id}"), None).await.0, 404);
    // Deleting an agent takes it out of its groups.
    server.ok("DELETE", &format!("/v1/agents/{bo}"), None).await;
    assert_eq!(server.ok("GET", &format!("/v1/groups/{rr_id}"), None).await["agent_ids"], json!([ana]));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_group_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let ghost = "agent-00000000-0000-4000-8000-000000000000";
    let cases = [
        (json!({"agent_ids": [ghost], "description": "x"}), 404, ghost.to_string()),
        (
            json!({"agent_ids": [ana], "description": "x", "manager_config": {"manager_type": "sleeptime"}}),
            422,
            "manager_agent_id".to_string(),
        ),
        (
            json!({"agent_ids": [ana], "description": "x", "manager_config": {"manager_type": "swarm"}}),
            422,
            "manager_type".to_string(),
        ),
        (
            json!({"agent_ids": [ana], "description": "x", "manager_config": {"manager_type": "supervisor", "manager_agent_id": ana}}),
            422,
            "cannot also be a member".to_string(),
        ),
        (
            json!({"agent_ids": [ana], "description": "x", "manager_config": {"manager_type": "round_robin", "max_turns": 65}}),
            422,
            "GROUP_TURNS_COUNT_MAX".to_string(),
        ),
        (
            json!({"agent_ids": vec![ana.clone(); 65], "description": "x"}),
            422,
            "GROUP_AGENTS_COUNT_MAX".to_string(),
        ),
        (
            json!({"agent_ids": [ana], "description": "d".repeat(4097)}),
            422,
            "GROUP_DESCRIPTION_BYTES_MAX".to_string(),
        ),
        (
            json!({"agent_ids": [ana, ana], "description": "x", "manager_config": {"manager_type": "dynamic", "manager_agent_id": server.create_agent("dyn", &[]).await}}),
            422,
            "Duplicate agent ids".to_string(),
        ),
        (
            json!({"agent_ids": [ana], "description": "x", "manager_config": {"manager_type": "voice_sleeptime", "manager_agent_id": server.create_agent("voice", &[]).await, "max_message_buffer_length": 10}}),
            422,
            "together".to_string(),
        ),
        (json!({"agent_ids": [ana]}), 422, "description".to_string()),
    ];
    for (body, expected, words) in cases {
        let (status, answer) = server.call("POST", "/v1/groups/", Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(&words), "{words}: {answer}");
    }
    // A termination token one byte past GROUP_TOKEN_BYTES_MAX.
    let dynamic = json!({"manager_type": "dynamic", "manager_agent_id": server.create_agent("dyn2", &[]).await,
                         "termination_token": "t".repeat(GROUP_TOKEN_BYTES_MAX + 1)});
    let (status, answer) = server
        .call(
            "POST",
            "/v1/groups/",
            Some(json!({"agent_ids": [ana], "description": "x", "manager_config": dynamic})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("GROUP_TOKEN_BYTES_MAX"), "{answer}");
    // Shared blocks: one past GROUP_BLOCKS_COUNT_MAX refused at create and at attach.
    let mut blocks = Vec::new();
    for index in 0..=GROUP_BLOCKS_COUNT_MAX {
        let block =
            server.ok("POST", "/v1/blocks/", Some(json!({"label": format!("b{index}"), "value": "v"}))).await;
        blocks.push(block["id"].as_str().unwrap().to_string());
    }
    let body = json!({"agent_ids": [ana], "description": "x", "shared_block_ids": blocks});
    let (status, answer) = server.call("POST", "/v1/groups/", Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("GROUP_BLOCKS_COUNT_MAX"), "{answer}");
    // A member with two blocks of its own has no room for 64 more: refused
    // before anything is stored (no group, no block attached).
    let member = server.create_agent("sharer", &[]).await;
    let groups_before = server.ok("GET", "/v1/groups/count", None).await;
    let body = json!({"agent_ids": [member], "description": "x", "shared_block_ids": blocks[..GROUP_BLOCKS_COUNT_MAX]});
    let (status, answer) = server.call("POST", "/v1/groups/", Some(body)).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("CORE_MEMORY_BLOCKS_COUNT_MAX"), "{answer}");
    assert_eq!(server.ok("GET", "/v1/groups/count", None).await, groups_before);
    let agent = server.ok("GET", &format!("/v1/agents/{member}"), None).await;
    assert_eq!(agent["memory"]["blocks"].as_array().unwrap().len(), 2, "nothing attached");
    // A member without blocks takes all 64.
    let bare = server
        .ok("POST", "/v1/agents/", Some(json!({"name": "bare", "model": "openai-proxy/fake-gpt"})))
        .await;
    let bare = bare["id"].as_str().unwrap();
    let body = json!({"agent_ids": [bare], "description": "x", "shared_block_ids": blocks[..GROUP_BLOCKS_COUNT_MAX]});
    let shared = server.ok("POST", "/v1/groups/", Some(body)).await;
    assert_eq!(shared["shared_block_ids"].as_array().unwrap().len(), GROUP_BLOCKS_COUNT_MAX);
    let group_id = shared["id"].as_str().unwrap();
    let last = &blocks[GROUP_BLOCKS_COUNT_MAX];
    let (status, answer) =
        server.call("PATCH", &format!("/v1/groups/{group_id}/blocks/attach/{last}"), None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("GROUP_BLOCKS_COUNT_MAX"), "{answer}");
    // 64 members is the limit itself: accepted.
    let full = server
        .ok("POST", "/v1/groups/", Some(json!({"agent_ids": vec![ana.clone(); 64], "description": "full"})))
        .await;
    assert_eq!(full["agent_ids"].as_array().unwrap().len(), 64);
    // One manager manages one group.
    let boss = server.create_agent("boss", &[]).await;
    let config = json!({"manager_type": "sleeptime", "manager_agent_id": boss});
    server
        .ok(
            "POST",
            "/v1/groups/",
            Some(json!({"agent_ids": [ana], "description": "a", "manager_config": config.clone()})),
        )
        .await;
    let (status, answer) = server
        .call(
            "POST",
            "/v1/groups/",
            Some(json!({"agent_ids": [ana], "description": "b", "manager_config": config})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["detail"].as_str().unwrap().contains("already manages"), "{answer}");
    let unknown = "group-00000000-0000-4000-8000-000000000000";
    for (method, path) in [
        ("GET", format!("/v1/groups/{unknown}")),
        ("DELETE", format!("/v1/groups/{unknown}")),
        ("GET", format!("/v1/groups/{unknown}/messages")),
        ("PATCH", format!("/v1/groups/{unknown}/reset-messages")),
        ("GET", format!("/v1/agents/{ghost}/groups")),
    ] {
        let (status, answer) = server.call(method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let block = server.ok("POST", "/v1/blocks/", Some(json!({"label": "notes", "value": ""}))).await;
    let (status, _) = server
        .call("PATCH", &format!("/v1/groups/{unknown}/blocks/attach/{}", block["id"].as_str().unwrap()), None)
        .await;
    assert_eq!(status, 404);
    let (status, answer) = server
        .call(
            "POST",
            &format!("/v1/groups/{}/messages", full["id"].as_str().unwrap()),
            Some(json!({"messages": []})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_round_robin_turn_gives_each_member_what_it_has_not_seen() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let ana = server.create_agent("ana", &[]).await;
    let bo = server.create_agent("bo", &[]).await;
    let config = json!({"manager_type": "round_robin", "max_turns": 3});
    let group = server
        .ok(
            "POST",
            "/v1/groups/",
            Some(json!({"agent_ids": [ana, bo], "description": "duo", "manager_config": config})),
        )
        .await;
    let group_id = group["id"].as_str().unwrap().to_string();
    let body = json!({"messages": [{"role": "user", "content": "hello"}]});
    let answer = server.ok("POST", &format!("/v1/groups/{group_id}/messages"), Some(body)).await;
    let said: Vec<(String, String)> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "assistant_message")
        .map(|m| {
            (
                m["agent_id"].as_str().unwrap_or_default().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let texts: Vec<&str> = said.iter().map(|(_, text)| text.as_str()).collect();
    // ana hears the user; bo hears the user and ana; ana then hears bo only.
    assert_eq!(texts, vec!["echo: hello", "echo: ana: echo: hello", "echo: bo: echo: ana: echo: hello"]);
    assert_eq!(answer["stop_reason"]["stop_reason"], "end_turn");
    let run_ids = answer["usage"]["run_ids"].as_array().unwrap().clone();
    assert_eq!(run_ids.len(), 3);
    let first_run = server.ok("GET", &format!("/v1/runs/{}", run_ids[0].as_str().unwrap()), None).await;
    assert_eq!(
        (first_run["agent_id"].as_str(), first_run["status"].as_str()),
        (Some(ana.as_str()), Some("completed"))
    );
    // The group's messages: every member's, newest first, paged.
    let newest = server.ok("GET", &format!("/v1/groups/{group_id}/messages?limit=2"), None).await;
    assert_eq!(newest[0]["content"], "echo: bo: echo: ana: echo: hello");
    let everything =
        server.ok("GET", &format!("/v1/groups/{group_id}/messages?order=asc&limit=1000"), None).await;
    let users: Vec<&str> = everything
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "user_message")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["hello", "hello", "ana: echo: hello", "bo: echo: ana: echo: hello"]);
    let mut paged = Vec::new();
    let mut path = format!("/v1/groups/{group_id}/messages?order=asc&limit=2");
    loop {
        let page = server.ok("GET", &path, None).await;
        let Some(last) = page.as_array().unwrap().last().map(|m| m["id"].as_str().unwrap().to_string())
        else {
            break;
        };
        paged.extend(page.as_array().unwrap().iter().map(|m| (m["id"].clone(), m["message_type"].clone())));
        path = format!("/v1/groups/{group_id}/messages?order=asc&limit=2&after={last}");
    }
    let all: Vec<(Value, Value)> =
        everything.as_array().unwrap().iter().map(|m| (m["id"].clone(), m["message_type"].clone())).collect();
    assert_eq!(paged.iter().map(|(id, _)| id).collect::<Vec<_>>().len(), paged.len());
    assert_eq!(paged.first(), all.first());
    let only_users = server
        .ok(
            "GET",
            &format!("/v1/groups/{group_id}/messages?include_return_message_types=user_message&limit=100"),
            None,
        )
        .await;
    assert_eq!(only_users.as_array().unwrap().len(), 4);
    // Edit a message through the group.
    let first_user =
        everything.as_array().unwrap().iter().find(|m| m["message_type"] == "user_message").unwrap();
    let edit = json!({"message_type": "user_message", "content": "hello there"});
    let edited = server
        .ok(
            "PATCH",
            &format!("/v1/groups/{group_id}/messages/{}", first_user["id"].as_str().unwrap()),
            Some(edit),
        )
        .await;
    assert_eq!(edited["content"], "hello there");
    let (status, _) = server
        .call(
            "PATCH",
            &format!("/v1/groups/{group_id}/messages/message-00000000-0000-4000-8000-000000000000"),
            Some(json!({"message_type": "user_message", "content": "x"})),
        )
        .await;
    assert_eq!(status, 404);
    // Reset: the members' messages go, and the group forgets its turns.
    server.ok("PATCH", &format!("/v1/groups/{group_id}/reset-messages"), None).await;
    assert_eq!(server.ok("GET", &format!("/v1/groups/{group_id}/messages"), None).await, json!([]));
    assert_eq!(server.ok("GET", &format!("/v1/agents/{ana}/messages"), None).await, json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn sleeptime_members_run_after_their_manager_and_share_the_block_they_edit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let main = server.create_agent("main", &[]).await;
    let sleeper = server.create_agent("main-sleeptime", &[]).await;
    let block = server.ok("POST", "/v1/blocks/", Some(json!({"label": "notes", "value": "Notes:"}))).await;
    let block_id = block["id"].as_str().unwrap().to_string();
    let config =
        json!({"manager_type": "sleeptime", "manager_agent_id": main, "sleeptime_agent_frequency": 2});
    let group = server
        .ok(
            "POST",
            "/v1/groups/",
            Some(json!({"agent_ids": [sleeper], "description": "", "manager_config": config})),
        )
        .await;
    let group_id = group["id"].as_str().unwrap().to_string();
    // The manager has its group already, so this makes no other.
    server.ok("PATCH", &format!("/v1/agents/{main}"), Some(json!({"enable_sleeptime": true}))).await;
    assert_eq!(server.ok("GET", "/v1/groups/count", None).await, json!(1));
    // Attaching a block to the group gives it to the manager and the member.
    server.ok("PATCH", &format!("/v1/groups/{group_id}/blocks/attach/{block_id}"), None).await;
    assert_eq!(
        server.ok("GET", &format!("/v1/groups/{group_id}"), None).await["shared_block_ids"],
        json!([block_id])
    );
    for agent in [&main, &sleeper] {
        let labels = server.ok("GET", &format!("/v1/agents/{agent}/core-memory/blocks"), None).await;
        assert!(labels.as_array().unwrap().iter().any(|b| b["id"] == block_id.as_str()), "{agent}: {labels}");
    }
    // Turn 1: the counter goes -1 → 0, so the sleeptime agent runs.
    let ask = r#"/sleeptime-call core_memory_append {"label": "notes", "content": "likes tea"}"#;
    let answer = server.say(&main, ask).await;
    let run_ids = answer["usage"]["run_ids"].as_array().unwrap().clone();
    assert_eq!(run_ids.len(), 2, "{answer}");
    let sleeptime_run = run_ids[1].as_str().unwrap().to_string();
    let run =
        eventually(&server, &format!("/v1/runs/{sleeptime_run}"), |run| run["status"] != "running").await;
    assert_eq!(
        (run["agent_id"].as_str(), run["status"].as_str()),
        (Some(sleeper.as_str()), Some("completed"))
    );
    // The member's edit reaches the manager through the shared block.
    let path = format!("/v1/agents/{main}/core-memory/blocks/notes");
    let notes = eventually(&server, &path, |b| b["value"].as_str().unwrap().contains("likes tea")).await;
    assert!(notes["value"].as_str().unwrap().starts_with("Notes:"), "{notes}");
    let transcript = server.ok("GET", &format!("/v1/runs/{sleeptime_run}/messages"), None).await;
    let prompt = transcript[0]["content"].as_str().unwrap();
    assert!(prompt.contains("<system-reminder>") && prompt.contains(&format!("user: {ask}")), "{prompt}");
    let group_now = server.ok("GET", &format!("/v1/groups/{group_id}"), None).await;
    assert_eq!(group_now["turns_counter"], json!(0));
    assert!(group_now["last_processed_message_id"].as_str().unwrap().starts_with("message-"), "{group_now}");
    // Turn 2: counter 1, no sleeptime run; turn 3: counter 0, one again,
    // given both turns since the last.
    let second = server.say(&main, "second").await;
    assert_eq!(second["usage"]["run_ids"].as_array().unwrap().len(), 1, "{second}");
    let third = server.say(&main, "third").await;
    let third_runs = third["usage"]["run_ids"].as_array().unwrap().clone();
    assert_eq!(third_runs.len(), 2, "{third}");
    let run = eventually(&server, &format!("/v1/runs/{}", third_runs[1].as_str().unwrap()), |run| {
        run["status"] != "running"
    })
    .await;
    assert_eq!(run["status"], "completed");
    let transcript =
        server.ok("GET", &format!("/v1/runs/{}/messages", third_runs[1].as_str().unwrap()), None).await;
    let prompt = transcript[0]["content"].as_str().unwrap();
    assert!(
        prompt.contains("user: second") && prompt.contains("user: third") && !prompt.contains("likes tea"),
        "{prompt}"
    );
    // The group's messages are the manager's turns.
    let messages =
        server.ok("GET", &format!("/v1/groups/{group_id}/messages?order=asc&limit=100"), None).await;
    let users: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["message_type"] == "user_message")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec![ask, "second", "third"]);
    // Without enable_sleeptime the manager's turns run alone.
    server.ok("PATCH", &format!("/v1/agents/{main}"), Some(json!({"enable_sleeptime": false}))).await;
    let alone = server.say(&main, "alone").await;
    assert_eq!(alone["usage"]["run_ids"].as_array().unwrap().len(), 1);
    // Detaching the block takes it from both.
    server.ok("PATCH", &format!("/v1/groups/{group_id}/blocks/detach/{block_id}"), None).await;
    let blocks = server.ok("GET", &format!("/v1/agents/{sleeper}/core-memory/blocks"), None).await;
    assert!(!blocks.as_array().unwrap().iter().any(|b| b["id"] == block_id.as_str()), "{blocks}");
    server.shutdown().await;
}

#[tokio::test]
async fn enable_sleeptime_makes_a_sleeptime_agent_sharing_the_main_agents_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let body = json!({
        "name": "diary", "model": "openai-proxy/fake-gpt", "enable_sleeptime": true,
        "memory_blocks": [{"label": "human", "value": "Name: Ana."}, {"label": "persona", "value": "A tutor."}],
    });
    let main = server.ok("POST", "/v1/agents/", Some(body)).await;
    let main_id = main["id"].as_str().unwrap().to_string();
    let group = &main["multi_agent_group"];
    assert_eq!(main["managed_group"], *group);
    assert_eq!(
        (&group["manager_type"], &group["manager_agent_id"], &group["sleeptime_agent_frequency"]),
        (&json!("sleeptime"), &json!(main_id), &json!(5))
    );
    let sleeper_id = group["agent_ids"][0].as_str().unwrap().to_string();
    assert_eq!(group["agent_ids"].as_array().unwrap().len(), 1, "{group}");
    let sleeper = server.ok("GET", &format!("/v1/agents/{sleeper_id}"), None).await;
    assert_eq!(
        (sleeper["name"].as_str(), &sleeper["llm_config"]),
        (Some("diary-sleeptime"), &main["llm_config"])
    );
    // The sleeptime agent holds the main agent's blocks (the same ids) and its own persona.
    let ids_of = |agent: &Value| -> Vec<(String, String)> {
        agent["memory"]["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["label"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string()))
            .collect()
    };
    let main_blocks = ids_of(&main);
    let sleeper_blocks = ids_of(&sleeper);
    for block in &main_blocks {
        assert!(sleeper_blocks.contains(block), "{block:?} not in {sleeper_blocks:?}");
        let agents = server.ok("GET", &format!("/v1/blocks/{}/agents", block.1), None).await;
        let mut holders: Vec<&str> =
            agents.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
        holders.sort();
        let mut expected = vec![main_id.as_str(), sleeper_id.as_str()];
        expected.sort();
        assert_eq!(holders, expected);
    }
    let labels: Vec<&str> = sleeper_blocks.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(labels, vec!["memory_persona", "human", "persona"]);
    // Turning it on again, or on an agent that has it, makes nothing new.
    server.ok("PATCH", &format!("/v1/agents/{main_id}"), Some(json!({"enable_sleeptime": true}))).await;
    assert_eq!(server.ok("GET", "/v1/groups/count", None).await, json!(1));
    assert_eq!(server.ok("GET", "/v1/agents/count", None).await, json!(2));
    // The first turn runs the sleeptime agent (Letta's counter starts at -1);
    // its edit of the shared block reaches the main agent.
    let ask = r#"/sleeptime-call core_memory_append {"label": "human", "content": "Likes tea."}"#;
    let answer = server.say(&main_id, ask).await;
    let run_ids = answer["usage"]["run_ids"].as_array().unwrap().clone();
    assert_eq!(run_ids.len(), 2, "{answer}");
    let run = eventually(&server, &format!("/v1/runs/{}", run_ids[1].as_str().unwrap()), |run| {
        run["status"] != "running"
    })
    .await;
    assert_eq!(
        (run["agent_id"].as_str(), run["status"].as_str()),
        (Some(sleeper_id.as_str()), Some("completed"))
    );
    let path = format!("/v1/agents/{main_id}/core-memory/blocks/human");
    let human = eventually(&server, &path, |b| b["value"].as_str().unwrap().contains("Likes tea.")).await;
    assert!(human["value"].as_str().unwrap().starts_with("Name: Ana."), "{human}");
    // Turning it on later, by modify, makes one too; a main agent with a
    // memory_persona of its own shares that one.
    let later = server
        .ok(
            "POST",
            "/v1/agents/",
            Some(json!({"name": "later", "model": "openai-proxy/fake-gpt",
                        "memory_blocks": [{"label": "memory_persona", "value": "Mine."}]})),
        )
        .await;
    let later_id = later["id"].as_str().unwrap().to_string();
    assert_eq!(later["multi_agent_group"], Value::Null);
    let patched =
        server.ok("PATCH", &format!("/v1/agents/{later_id}"), Some(json!({"enable_sleeptime": true}))).await;
    let later_sleeper = patched["multi_agent_group"]["agent_ids"][0].as_str().unwrap().to_string();
    let later_sleeper = server.ok("GET", &format!("/v1/agents/{later_sleeper}"), None).await;
    assert_eq!(ids_of(&later_sleeper), ids_of(&later));
    assert_eq!(server.ok("GET", "/v1/groups/count", None).await, json!(2));
    server.shutdown().await;
}

#[tokio::test]
async fn an_agent_whose_sleeptime_agent_cannot_be_made_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let fake = common::fake_llm().await;
    let server = common::start(dir.path(), &fake).await;
    let member = server.create_agent("member", &[]).await;
    for n in 0..kelpie_agent::actors::group_store::GROUPS_COUNT_MAX {
        let body = json!({"agent_ids": [member], "description": format!("g{n}")});
        server.ok("POST", "/v1/groups/", Some(body)).await;
    }
    // The store is full, so the sleeptime group is refused after both
    // agents were made: neither is left.
    let body = json!({"name": "full", "model": "openai-proxy/fake-gpt", "enable_sleeptime": true});
    let (status, refused) = server.call("POST", "/v1/agents/", Some(body)).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("GROUPS_COUNT_MAX"), "{refused}");
    let agents = server.ok("GET", "/v1/agents/?limit=100", None).await;
    let names: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["member"]);
    server.shutdown().await;
}
