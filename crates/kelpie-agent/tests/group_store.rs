//! The group store's protocol against a real redb file: Letta's sleeptime
//! counter and last processed message, the runs a group remembers past
//! `GROUP_RUNS_COUNT_MAX`, one manager per group, forgetting a deleted
//! agent, a store past `GROUPS_COUNT_MAX`, and everything read again
//! after the store is opened anew.

mod support;

use kelpie_agent::actors::group_store::{
    GroupCommand, GroupRecord, GroupReply, GroupRun, GroupStoreActor, GROUPS_COUNT_MAX, GROUP_RUNS_COUNT_MAX,
    GROUP_STORE_ACTOR,
};
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_core::{ActorId, Env, NodeId};
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_storage::Storage;

fn groups(storage: &Storage) -> Runtime<GroupStoreActor> {
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    agent_runtimes(storage, &Placement::Local, &Env::production(), &config).unwrap().groups
}

async fn send(runtime: &Runtime<GroupStoreActor>, command: GroupCommand) -> kelpie_core::Result<GroupReply> {
    let id = ActorId::new(GROUP_STORE_ACTOR.0, GROUP_STORE_ACTOR.1).unwrap();
    runtime.invoke(&id, command).await
}

async fn group(runtime: &Runtime<GroupStoreActor>, command: GroupCommand) -> GroupRecord {
    match send(runtime, command).await.unwrap() {
        GroupReply::Group(group) => *group,
        _ => panic!("not a group"),
    }
}

fn record(id: &str, manager_type: &str, manager: Option<&str>) -> GroupRecord {
    GroupRecord {
        id: id.into(),
        manager_type: manager_type.into(),
        agent_ids: vec!["agent-member".into()],
        description: String::new(),
        project_id: None,
        shared_block_ids: Vec::new(),
        manager_agent_id: manager.map(str::to_string),
        termination_token: None,
        max_turns: None,
        sleeptime_agent_frequency: None,
        turns_counter: None,
        last_processed_message_id: None,
        max_message_buffer_length: None,
        min_message_buffer_length: None,
        hidden: None,
        created_ms: 1,
        runs: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_runs_and_links_are_kept_as_letta_keeps_them_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kelpie.redb");
    {
        let storage = Storage::open_redb(&path).unwrap();
        let store = groups(&storage);
        let sleeptime = GroupRecord {
            sleeptime_agent_frequency: Some(3),
            turns_counter: Some(-1),
            ..record("group-s", "sleeptime", Some("agent-main"))
        };
        group(&store, GroupCommand::Create(Box::new(sleeptime))).await;
        // -1 → 0 (due), 1, 2, 0 (due): Letta's (n + 1) mod frequency.
        let mut counters = Vec::new();
        for _ in 0..4 {
            match send(&store, GroupCommand::BumpTurns { id: "group-s".into() }).await.unwrap() {
                GroupReply::Counter(counter) => counters.push(counter),
                _ => panic!("not a counter"),
            }
        }
        assert_eq!(counters, vec![Some(0), Some(1), Some(2), Some(0)]);
        let take = |message: &str| GroupCommand::TakeLastProcessed {
            id: "group-s".into(),
            message_id: message.into(),
        };
        assert!(matches!(send(&store, take("message-1")).await.unwrap(), GroupReply::LastProcessed(None)));
        match send(&store, take("message-2")).await.unwrap() {
            GroupReply::LastProcessed(before) => assert_eq!(before.as_deref(), Some("message-1")),
            _ => panic!("not the last processed message"),
        }
        // A group remembers its newest GROUP_RUNS_COUNT_MAX runs.
        for n in 0..=GROUP_RUNS_COUNT_MAX {
            let run = GroupRun { agent_id: "agent-main".into(), run_id: format!("run-{n}") };
            group(&store, GroupCommand::AddRun { id: "group-s".into(), run }).await;
        }
        let stored = group(&store, GroupCommand::Get { id: "group-s".into() }).await;
        assert_eq!(stored.runs.len(), GROUP_RUNS_COUNT_MAX);
        assert_eq!(stored.runs[0].run_id, "run-1");
        // One manager manages one group.
        let second = record("group-t", "supervisor", Some("agent-main"));
        let refused = send(&store, GroupCommand::Create(Box::new(second))).await.err().unwrap();
        assert!(refused.to_string().contains("already manages"), "{refused}");
        // A replace keeps the counters and runs as stored.
        let replaced =
            GroupRecord { description: "new".into(), ..record("group-s", "sleeptime", Some("agent-main")) };
        let now = group(&store, GroupCommand::Replace(Box::new(replaced))).await;
        assert_eq!(
            (now.description.as_str(), now.turns_counter, now.runs.len()),
            ("new", Some(0), GROUP_RUNS_COUNT_MAX)
        );
        assert_eq!(now.last_processed_message_id.as_deref(), Some("message-2"));
        group(&store, GroupCommand::Create(Box::new(record("group-r", "round_robin", None)))).await;
        store.shutdown().await;
    }
    let storage = support::reopen_redb(&path).await;
    let store = groups(&storage);
    let kept = group(&store, GroupCommand::Get { id: "group-s".into() }).await;
    assert_eq!(
        (kept.turns_counter, kept.runs.len(), kept.description.as_str()),
        (Some(0), GROUP_RUNS_COUNT_MAX, "new")
    );
    // A deleted manager takes its group; a deleted member leaves its groups.
    match send(&store, GroupCommand::ForgetAgent { agent_id: "agent-main".into() }).await.unwrap() {
        GroupReply::Groups(gone) => {
            assert_eq!(gone.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), vec!["group-s"])
        }
        _ => panic!("not groups"),
    }
    send(&store, GroupCommand::ForgetAgent { agent_id: "agent-member".into() }).await.unwrap();
    let left = group(&store, GroupCommand::Get { id: "group-r".into() }).await;
    assert!(left.agent_ids.is_empty());
    assert!(send(&store, GroupCommand::Get { id: "group-s".into() }).await.is_err());
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_past_groups_count_max_refuses_the_next_group() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let store = groups(&storage);
    for n in 0..GROUPS_COUNT_MAX {
        group(&store, GroupCommand::Create(Box::new(record(&format!("group-{n}"), "round_robin", None))))
            .await;
    }
    let over = record("group-over", "round_robin", None);
    let refused = send(&store, GroupCommand::Create(Box::new(over))).await.err().unwrap();
    assert!(refused.to_string().contains("GROUPS_COUNT_MAX"), "{refused}");
    match send(&store, GroupCommand::List).await.unwrap() {
        GroupReply::Groups(all) => assert_eq!(all.len(), GROUPS_COUNT_MAX),
        _ => panic!("not groups"),
    }
    store.shutdown().await;
}
