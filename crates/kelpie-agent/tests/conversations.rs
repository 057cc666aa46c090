//! Conversations in the agent service over a real redb file, with the
//! fake LLM on loopback: an agent past `AGENT_CONVERSATIONS_COUNT_MAX`, a
//! list paged to the end, a turn stored in its conversation's own key
//! space and read back after reopening the file, and deletes that leave
//! no key of a conversation behind once reclaimed.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Bound;

use kelpie_agent::limits::AGENT_CONVERSATIONS_COUNT_MAX;
use kelpie_agent::page::Page;
use kelpie_agent::requests::CreateAgent;
use kelpie_agent::service::conversations::{ConversationInput, ConversationOrder, ConversationQuery};
use kelpie_agent::service::runs::TurnInput;
use kelpie_agent::{AgentService, ServiceError};
use kelpie_core::{ActorId, Error};
use kelpie_llm::fake::FakeLlm;
use kelpie_storage::limits::SCAN_ROWS_COUNT_MAX;
use kelpie_storage::{KeyRange, ScanOrder, Storage};
use serde_json::Value;

fn service(storage: &Storage, dir: &std::path::Path, llm_base_url: &str) -> AgentService {
    support::local_service(storage, dir, llm_base_url)
}

async fn create_agent(service: &AgentService, name: &str) -> String {
    let request = CreateAgent { name: Some(name.into()), ..CreateAgent::default() };
    service.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string()
}

async fn create(service: &AgentService, agent_id: &str, summary: &str) -> String {
    let input = ConversationInput { summary: Some(summary.into()), ..ConversationInput::default() };
    service.conversations.create(agent_id, input).await.unwrap()["id"].as_str().unwrap().to_string()
}

fn query(agent_id: &str, after: Option<String>, limit: usize, descending: bool) -> ConversationQuery {
    ConversationQuery {
        agent_id: Some(agent_id.to_string()),
        after,
        limit,
        summary_search: None,
        descending,
        order_by: ConversationOrder::CreatedAt,
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

/// Every key stored for agent `agent_id`.
async fn stored_keys(storage: &Storage, agent_id: &str) -> Vec<String> {
    let mut txn = storage.begin(ActorId::new("agents", agent_id).unwrap());
    let mut range = KeyRange::prefix(Vec::new());
    let mut keys = Vec::new();
    loop {
        let rows = txn.scan_page(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX).await.unwrap();
        keys.extend(rows.iter().map(|(key, _)| String::from_utf8_lossy(key).into_owned()));
        match rows.last() {
            Some((key, _)) if rows.len() == SCAN_ROWS_COUNT_MAX => range.start = Bound::Excluded(key.clone()),
            _ => return keys,
        }
    }
}

fn all_messages() -> Page {
    Page { before: None, after: None, limit: 100, descending: false }
}

fn contents(messages: &[Value]) -> Vec<String> {
    messages.iter().filter_map(|m| m["content"].as_str().map(str::to_string)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holds_conversations_up_to_the_limit_and_lists_them_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    let agent = create_agent(&service, "busy").await;
    let mut created = Vec::new();
    for i in 0..AGENT_CONVERSATIONS_COUNT_MAX {
        created.push(create(&service, &agent, &format!("chat {i}")).await);
    }
    let refused = service.conversations.create(&agent, ConversationInput::default()).await;
    match refused {
        Err(ServiceError::Core(Error::LimitExceeded { limit_name, limit, actual, .. })) => {
            assert_eq!(limit_name, "AGENT_CONVERSATIONS_COUNT_MAX");
            assert_eq!(
                (limit, actual),
                (AGENT_CONVERSATIONS_COUNT_MAX as u64, AGENT_CONVERSATIONS_COUNT_MAX as u64 + 1)
            );
        }
        other => panic!("past the limit: {other:?}"),
    }
    // Pages of 300 reach every conversation, in creation order, both ways.
    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = service.conversations.list(query(&agent, after, 300, descending)).await.unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|c| c["id"].as_str().unwrap().to_string());
            seen.extend(ids(&page));
        }
        let mut expected = created.clone();
        if descending {
            expected.reverse();
        }
        assert_eq!(seen, expected);
    }
    // A summary search reads every record and finds the one.
    let mut search = query(&agent, None, 10, false);
    search.summary_search = Some("chat 999".into());
    assert_eq!(ids(&service.conversations.list(search).await.unwrap()), vec![created[999].clone()]);
    // A delete frees a place.
    service.conversations.delete(&created[0]).await.unwrap();
    let again = create(&service, &agent, "after a delete").await;
    assert!(again.starts_with("conv-") && !created.contains(&again));
    assert!(service.conversations.create(&agent, ConversationInput::default()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_in_a_conversation_is_stored_in_its_own_space_and_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kelpie.redb");
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let (agent, first, second) = {
        let storage = Storage::open_redb(&path).unwrap();
        let service = service(&storage, dir.path(), &fake.base_url());
        let agent = create_agent(&service, "tutor").await;
        let first = create(&service, &agent, "first").await;
        let second = create(&service, &agent, "second").await;
        let turn = TurnInput::Texts(vec!["hi first".into()]);
        let outcome =
            service.runs.run_turn_in((&agent, Some(first.clone())), turn, None, None, None).await.unwrap();
        assert_eq!(outcome.stop_reason, "end_turn");
        let run = service.runs.record(&outcome.run_id).await.unwrap();
        assert_eq!(run.conversation_id.as_deref(), Some(first.as_str()));
        // The run's messages are read from the conversation's space.
        let run_messages = service.runs.messages(&outcome.run_id, &all_messages()).await.unwrap();
        assert_eq!(contents(&run_messages), vec!["hi first", "echo: hi first"]);
        let keys = stored_keys(&storage, &agent).await;
        assert!(keys.iter().any(|k| k.starts_with("u/cg00000000/s/0000000000000000/m/")), "{keys:?}");
        assert!(!keys.iter().any(|k| k.starts_with("u/m/")), "the agent's own history is empty: {keys:?}");
        service.shutdown().await;
        (agent, first, second)
    };
    let storage = support::reopen_redb(&path).await;
    let service = service(&storage, dir.path(), &fake.base_url());
    let listed = service.agents.list_history_messages((&agent, Some(&first)), &all_messages()).await.unwrap();
    assert_eq!(contents(&listed), vec!["hi first", "echo: hi first"]);
    assert_eq!(service.agents.list_messages(&agent, &all_messages()).await.unwrap(), Vec::<Value>::new());
    let empty = service.agents.list_history_messages((&agent, Some(&second)), &all_messages()).await.unwrap();
    assert!(empty.is_empty());
    let found = service.conversations.locate(&first).await.unwrap();
    assert_eq!(
        (found.agent_id.as_str(), found.record.messages, found.in_context.len()),
        (agent.as_str(), 3, 3)
    );
    assert!(found.record.last_message_ms.is_some() && found.record.last_run_completion_ms.is_some());
    // The second conversation's turn does not see the first's messages.
    let turn = TurnInput::Texts(vec!["hi second".into()]);
    service.runs.run_turn_in((&agent, Some(second.clone())), turn, None, None, None).await.unwrap();
    let sent = fake.requests().last().unwrap().to_string();
    assert!(sent.contains("hi second") && !sent.contains("hi first"), "{sent}");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_conversations_and_their_agent_leave_no_key_once_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), &fake.base_url());
    let agent = create_agent(&service, "tutor").await;
    let gone = create(&service, &agent, "gone").await;
    let kept = create(&service, &agent, "kept").await;
    for conversation in [&gone, &kept] {
        for i in 0..3 {
            let turn = TurnInput::Texts(vec![format!("note {i}")]);
            service
                .runs
                .run_turn_in((&agent, Some(conversation.clone())), turn, None, None, None)
                .await
                .unwrap();
        }
    }
    let gone_space = "u/cg00000000/s/0000000000000000/";
    let kept_space = "u/cg00000000/s/0000000000000001/";
    let keys = stored_keys(&storage, &agent).await;
    assert!(keys.iter().filter(|k| k.starts_with(gone_space)).count() >= 9, "{keys:?}");
    service.conversations.delete(&gone).await.unwrap();
    match service.conversations.get(&gone).await {
        Err(ServiceError::ConversationNotFound(id)) => assert_eq!(id, gone),
        other => panic!("a deleted conversation: {other:?}"),
    }
    service.reclaimer.run_once().await.unwrap();
    let keys = stored_keys(&storage, &agent).await;
    assert!(!keys.iter().any(|k| k.starts_with(gone_space)), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with(kept_space)), "{keys:?}");
    let kept_messages =
        service.agents.list_history_messages((&agent, Some(&kept)), &all_messages()).await.unwrap();
    assert_eq!(contents(&kept_messages).len(), 6);
    // The agent's deletion takes the rest of its conversations.
    service.agents.delete(&agent).await.unwrap();
    service.reclaimer.run_once().await.unwrap();
    let keys = stored_keys(&storage, &agent).await;
    assert!(!keys.iter().any(|k| k.starts_with("u/cg")), "{keys:?}");
    assert!(matches!(service.conversations.get(&kept).await, Err(ServiceError::ConversationNotFound(_))));
    service.shutdown().await;
}
