//! The service's multi-agent operations ask their `TurnRouter` for every
//! member operation, over a real redb file with the fake LLM on loopback: a
//! round robin turn's member runs (each with what the member has not
//! seen), a group reset, a batch's runs (with their idempotency keys); a
//! router that answers "run here" lets each run here; a router's error
//! fails the operation with that error, running nothing here for it.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kelpie_agent::page::Page;
use kelpie_agent::requests::CreateAgent;
use kelpie_agent::service::batches::BatchRequest;
use kelpie_agent::service::turn_router::{OwnerOp, TurnRouter};
use kelpie_agent::{AgentService, ServiceError, ServiceResult};
use kelpie_core::{Env, Error, NodeId};
use kelpie_llm::fake::FakeLlm;
use kelpie_storage::Storage;
use serde_json::{json, Value};

/// Generous bound on waiting for a batch to end; never a timing assertion.
const WAIT_MS_MAX: u64 = 20_000;
const POLL_MS: u64 = 20;

fn service(storage: &Storage, dir: &std::path::Path, llm_base_url: &str) -> Arc<AgentService> {
    Arc::new(support::local_service(storage, dir, llm_base_url))
}

/// Records every operation asked of it; answers "run here", except for
/// the agent it calls unreachable, whose owner it cannot reach.
struct Recorder {
    asked: Mutex<Vec<(String, OwnerOp)>>,
    unreachable: Mutex<Option<String>>,
}

impl TurnRouter for Recorder {
    fn on_owner<'a>(
        &'a self,
        agent_id: &'a str,
        op: &'a OwnerOp,
    ) -> BoxFuture<'a, ServiceResult<Option<Value>>> {
        async move {
            self.asked.lock().unwrap().push((agent_id.to_string(), op.clone()));
            match self.unreachable.lock().unwrap().as_deref() == Some(agent_id) {
                true => Err(ServiceError::Core(Error::NodeUnavailable {
                    node_id: NodeId::new("far").unwrap(),
                    reason: "unreachable".into(),
                })),
                false => Ok(None),
            }
        }
        .boxed()
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, OwnerOp)> {
        std::mem::take(&mut self.asked.lock().unwrap())
    }
}

async fn create_agent(service: &AgentService, name: &str) -> String {
    let request = CreateAgent {
        name: Some(name.into()),
        model: Some("openai-proxy/fake-gpt".into()),
        ..CreateAgent::default()
    };
    service.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string()
}

fn start(texts: &[&str], idempotency_key: Option<String>) -> OwnerOp {
    OwnerOp::StartRun {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        max_steps: None,
        idempotency_key,
    }
}

async fn user_texts(service: &AgentService, agent_id: &str) -> Vec<String> {
    let page = Page { before: None, after: None, limit: 1_000, descending: false };
    let messages = service.agents.list_messages(agent_id, &page).await.unwrap();
    messages
        .iter()
        .filter(|m| m["message_type"] == "user_message")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_batches_ask_the_router_for_every_member_operation() {
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), &fake.base_url());
    let recorder = Arc::new(Recorder { asked: Mutex::default(), unreachable: Mutex::default() });
    service.set_turn_router(Arc::clone(&recorder) as Arc<dyn TurnRouter>);
    let ana = create_agent(&service, "ana").await;
    let bo = create_agent(&service, "bo").await;

    // A round robin turn: each member run is asked of the router with what
    // that member has not seen, then runs here.
    let group = json!({"agent_ids": [ana, bo], "description": "duo",
                       "manager_config": {"manager_type": "round_robin", "max_turns": 3}});
    let group = service.groups.create(serde_json::from_value(group).unwrap()).await.unwrap();
    let group_id = group["id"].as_str().unwrap().to_string();
    let answer = service.groups.send(&group_id, vec!["hello".into()], None).await.unwrap();
    assert_eq!(answer["stop_reason"]["stop_reason"], "end_turn", "{answer}");
    assert_eq!(
        recorder.take(),
        vec![
            (ana.clone(), start(&["hello"], None)),
            (bo.clone(), start(&["hello", "ana: echo: hello"], None)),
            (ana.clone(), start(&["bo: echo: ana: echo: hello"], None)),
        ]
    );
    assert_eq!(user_texts(&service, &ana).await, ["hello", "bo: echo: ana: echo: hello"]);

    // A reset: each member, once, under its own turn lock where it lives.
    service.groups.reset_messages(&group_id).await.unwrap();
    assert_eq!(
        recorder.take(),
        vec![(ana.clone(), OwnerOp::ResetMessages), (bo.clone(), OwnerOp::ResetMessages)]
    );
    assert_eq!(user_texts(&service, &ana).await, Vec::<String>::new());

    // A batch: each request's run, with its key `<batch id>/<index>`.
    let requests = vec![
        BatchRequest { agent_id: ana.clone(), texts: vec!["batch a".into()], max_steps: None },
        BatchRequest { agent_id: bo.clone(), texts: vec!["batch b".into()], max_steps: None },
    ];
    let batch = service.batches.create(requests, None).await.unwrap();
    let batch_id = batch["id"].as_str().unwrap().to_string();
    assert_eq!(
        recorder.take(),
        vec![
            (ana.clone(), start(&["batch a"], Some(format!("{batch_id}/0")))),
            (bo.clone(), start(&["batch b"], Some(format!("{batch_id}/1")))),
        ]
    );
    let (clock, mut waited_ms) = (Env::production().clock, 0);
    while service.batches.get(&batch_id).await.unwrap()["status"] != "completed" {
        assert!(waited_ms < WAIT_MS_MAX, "the batch never completed");
        clock.sleep(Duration::from_millis(POLL_MS)).await;
        waited_ms += POLL_MS;
    }
    assert_eq!(user_texts(&service, &bo).await, ["batch b"]);

    // The router cannot reach bo's owner: the group turn fails with that
    // error after ana's turn, and bo runs nothing here.
    *recorder.unreachable.lock().unwrap() = Some(bo.clone());
    let err = service.groups.send(&group_id, vec!["again".into()], None).await.unwrap_err();
    assert!(matches!(err, ServiceError::Core(Error::NodeUnavailable { .. })), "{err}");
    assert_eq!(
        recorder.take().iter().map(|(agent, _)| agent.clone()).collect::<Vec<_>>(),
        [ana.clone(), bo.clone()]
    );
    assert_eq!(user_texts(&service, &bo).await, ["batch b"]);
    // A batch with a request for bo is refused whole: not stored, not listed.
    let requests = vec![BatchRequest { agent_id: bo.clone(), texts: vec!["lost".into()], max_steps: None }];
    let err = service.batches.create(requests, None).await.unwrap_err();
    assert!(matches!(err, ServiceError::Core(Error::NodeUnavailable { .. })), "{err}");
    let page = Page { before: None, after: None, limit: 100, descending: true };
    assert_eq!(service.batches.list(&page).await.unwrap(), Vec::<Value>::new());
    assert_eq!(user_texts(&service, &bo).await, ["batch b"]);
    service.shutdown().await;
}
