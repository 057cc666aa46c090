//! Per-agent operations on ids that name no agent (never created, deleted,
//! or an import that never decided), through the agent service over a real
//! redb file: each answers not found without activating an agent actor and
//! without writing anything, not a placement, not a row; probing a thousand
//! such ids leaves the active agents and the stored placements as they
//! were. Created agents are still found, also after a restart (their actor
//! inactive until asked). Batch ids no batch has are refused the same way.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kelpie_agent::page::Page;
use kelpie_agent::requests::{CreateAgent, UpdateAgent, UpdateBlock};
use kelpie_agent::service::runs::TurnInput;
use kelpie_agent::{AgentService, ServiceError};
use kelpie_core::{ActorId, Result as CoreResult};
use kelpie_storage::types::{CommitRequest, StoredRows};
use kelpie_storage::{
    Backend, BoxFut, ClaimOutcome, CommitInfo, Placement as StoredPlacement, RedbBackend, ScanPage, Storage,
    Versioned,
};

/// Distinct unknown ids probed in the flood test.
const PROBED_IDS_COUNT: usize = 1_000;

/// What reached the disk: the actors whose placement was claimed and the
/// actors a commit wrote to, in order.
#[derive(Default)]
struct Written {
    claimed: Vec<ActorId>,
    committed: Vec<ActorId>,
}

/// Redb that notes every placement claim and every commit that writes.
struct NotingDisk {
    inner: Arc<RedbBackend>,
    written: Arc<Mutex<Written>>,
}

impl NotingDisk {
    fn note(&self, edit: impl FnOnce(&mut Written)) {
        edit(&mut self.written.lock().unwrap());
    }
}

impl Backend for NotingDisk {
    fn name(&self) -> &'static str {
        "noting-disk"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, CoreResult<Option<Versioned>>> {
        self.inner.get(actor, key)
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, CoreResult<StoredRows>> {
        self.inner.scan(actor, page)
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, CoreResult<CommitInfo>> {
        if !request.is_read_only() {
            self.note(|written| written.committed.push(request.actor_id.clone()));
        }
        self.inner.commit(request)
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, CoreResult<Option<StoredPlacement>>> {
        self.inner.get_placement(actor)
    }

    fn put_placement(&self, placement: StoredPlacement) -> BoxFut<'_, CoreResult<()>> {
        self.note(|written| written.claimed.push(placement.actor_id.clone()));
        self.inner.put_placement(placement)
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: kelpie_core::NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, CoreResult<ClaimOutcome>> {
        self.note(|written| written.claimed.push(actor.clone()));
        self.inner.claim_placement(actor, node, expected_epoch)
    }
}

/// Fails the test if anything was claimed or committed since `written`
/// was last taken (naming the first few), and clears it.
fn assert_nothing_written(written: &Mutex<Written>) {
    let after = std::mem::take(&mut *written.lock().unwrap());
    assert_eq!(
        after.claimed.len(),
        0,
        "placements claimed: {:?}",
        &after.claimed[..after.claimed.len().min(5)]
    );
    assert_eq!(after.committed.len(), 0, "commits: {:?}", &after.committed[..after.committed.len().min(5)]);
}

/// A service over `redb` that notes what it writes in `written`.
fn service(redb: &Arc<RedbBackend>, dir: &std::path::Path, written: &Arc<Mutex<Written>>) -> AgentService {
    let noting = NotingDisk { inner: Arc::clone(redb), written: Arc::clone(written) };
    support::local_service(&Storage::from_backend(Arc::new(noting)), dir, "http://127.0.0.1:9/v1")
}

fn everything() -> Page {
    Page { before: None, after: None, limit: 1000, descending: false }
}

fn unknown_id(n: usize) -> String {
    format!("agent-00000000-0000-4000-8000-{n:012}")
}

fn agent_actor(agent_id: &str) -> ActorId {
    ActorId::new("agents", agent_id).unwrap()
}

/// Expects `outcome` to be "agent `agent_id` not found".
fn assert_not_found<T: std::fmt::Debug>(what: &str, agent_id: &str, outcome: Result<T, ServiceError>) {
    match outcome {
        Err(ServiceError::AgentNotFound(id)) => assert_eq!(id, agent_id, "{what}"),
        other => panic!("{what} of {agent_id}: {other:?}"),
    }
}

/// Every per-agent operation a client can ask for `agent_id`, each
/// expected to answer that the agent is not found.
async fn probe_every_operation(service: &AgentService, agent_id: &str) {
    let agents = &service.agents;
    assert_not_found("get", agent_id, agents.get(agent_id).await);
    let rename = UpdateAgent { name: Some("renamed".into()), ..UpdateAgent::default() };
    assert_not_found("update", agent_id, agents.update(agent_id, rename).await);
    assert_not_found("delete", agent_id, service.delete_agent(agent_id).await);
    assert_not_found("core memory", agent_id, agents.core_memory(agent_id).await);
    assert_not_found("list messages", agent_id, agents.list_messages(agent_id, &everything()).await);
    assert_not_found("list blocks", agent_id, agents.list_blocks(agent_id, &everything()).await);
    assert_not_found("get block", agent_id, agents.get_block(agent_id, "human").await);
    let block = UpdateBlock { value: Some("x".into()), ..UpdateBlock::default() };
    assert_not_found("update block", agent_id, agents.update_block(agent_id, "human", block).await);
    assert_not_found("list tools", agent_id, agents.list_tools(agent_id, &everything()).await);
    assert_not_found("reset messages", agent_id, agents.reset_messages(agent_id).await);
    assert_not_found("passages", agent_id, service.archival.list(agent_id, &everything()).await);
    assert_not_found("context", agent_id, service.turns.context_window(agent_id).await);
    assert_not_found("system prompt", agent_id, service.turns.system_prompt(agent_id).await);
    assert_not_found("export", agent_id, service.transfer.export_value(agent_id).await);
    let texts = TurnInput::Texts(vec!["hello".into()]);
    assert_not_found("send", agent_id, service.runs.run_turn(agent_id, texts, None, None, None).await);
    let texts = TurnInput::Texts(vec!["hello".into()]);
    let keyed = Some("key-1".to_string());
    assert_not_found(
        "send with a key",
        agent_id,
        service.runs.run_turn(agent_id, texts, None, None, keyed).await,
    );
    let inputs = vec!["hello".to_string()];
    assert_not_found("send async", agent_id, service.runs.start(agent_id, inputs, None, None).await);
}

/// What the disk holds of `ids`: each id's stored placement epoch.
async fn placements_of(redb: &RedbBackend, ids: &[String]) -> BTreeMap<String, Option<u64>> {
    let mut found = BTreeMap::new();
    for id in ids {
        let placement = redb.get_placement(&agent_actor(id)).await.unwrap();
        found.insert(id.clone(), placement.map(|placement| placement.epoch));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_an_unknown_id_is_not_found_and_activates_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let written = Arc::new(Mutex::new(Written::default()));
    let service = service(&redb, dir.path(), &written);
    let request = CreateAgent { name: Some("ana".into()), ..CreateAgent::default() };
    let created = service.agents.create(request, None).await.unwrap();
    let known = created["id"].as_str().unwrap().to_string();
    assert_eq!(service.active_agents(), vec![agent_actor(&known)]);
    let before = std::mem::take(&mut *written.lock().unwrap());
    assert!(before.claimed.contains(&agent_actor(&known)), "creating claims the agent");

    let unknown = unknown_id(1);
    probe_every_operation(&service, &unknown).await;
    // Not an agent's id at all: refused before any actor is named.
    probe_every_operation(&service, "agent-x").await;

    assert_eq!(service.active_agents(), vec![agent_actor(&known)], "no agent activated");
    let after = std::mem::take(&mut *written.lock().unwrap());
    assert_eq!(after.claimed, Vec::<ActorId>::new(), "no placement claimed");
    assert_eq!(after.committed, Vec::<ActorId>::new(), "nothing written");
    assert_eq!(placements_of(&redb, std::slice::from_ref(&unknown)).await, BTreeMap::from([(unknown, None)]));
    // The agent that exists is untouched and still answers.
    assert_eq!(service.agents.get(&known).await.unwrap()["name"], "ana");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unknown_ids_leave_no_activation_and_no_placement() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let written = Arc::new(Mutex::new(Written::default()));
    let service = service(&redb, dir.path(), &written);
    let ids: Vec<String> = (0..PROBED_IDS_COUNT).map(unknown_id).collect();
    std::mem::take(&mut *written.lock().unwrap());

    for id in &ids {
        assert_not_found("get", id, service.agents.get(id).await);
        assert_not_found("list messages", id, service.agents.list_messages(id, &everything()).await);
        let texts = TurnInput::Texts(vec!["hello".into()]);
        assert_not_found("send", id, service.runs.run_turn(id, texts, None, None, None).await);
    }

    assert_eq!(service.active_agents().len(), 0, "active agents");
    assert_nothing_written(&written);
    let stored = placements_of(&redb, &ids).await;
    assert_eq!(stored.values().filter(|epoch| epoch.is_some()).count(), 0, "stored placements");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_deleted_agent_is_not_found_unactivated_and_a_kept_one_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let written = Arc::new(Mutex::new(Written::default()));
    let first = service(&redb, dir.path(), &written);
    let mut ids = Vec::new();
    for name in ["kept", "gone"] {
        let request = CreateAgent { name: Some(name.into()), ..CreateAgent::default() };
        ids.push(first.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let (kept, gone) = (ids[0].clone(), ids[1].clone());
    first.delete_agent(&gone).await.unwrap();
    assert_not_found("get after delete", &gone, first.agents.get(&gone).await);
    first.shutdown().await;
    drop(first);
    let epochs = placements_of(&redb, &ids).await;
    assert!(epochs.values().all(Option::is_some), "both were active once: {epochs:?}");

    let restarted = service(&redb, dir.path(), &written);
    assert_eq!(restarted.active_agents(), Vec::<ActorId>::new());
    std::mem::take(&mut *written.lock().unwrap());
    probe_every_operation(&restarted, &gone).await;
    assert_eq!(restarted.active_agents(), Vec::<ActorId>::new(), "the deleted agent stays inactive");
    let after = std::mem::take(&mut *written.lock().unwrap());
    assert_eq!((after.claimed, after.committed), (Vec::new(), Vec::new()));
    assert_eq!(placements_of(&redb, &ids).await, epochs, "no placement changed");

    // The kept agent, inactive after the restart, activates on demand.
    assert_eq!(restarted.agents.get(&kept).await.unwrap()["name"], "kept");
    assert_eq!(restarted.active_agents(), vec![agent_actor(&kept)]);
    let after = std::mem::take(&mut *written.lock().unwrap());
    let agents_claimed: Vec<&ActorId> =
        after.claimed.iter().filter(|actor| actor.namespace() == "agents").collect();
    assert_eq!(agents_claimed, vec![&agent_actor(&kept)], "the kept agent is claimed again");
    let listed = restarted.agents.list(None, &[], false, &everything()).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|agent| agent["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["kept"]);
    restarted.shutdown().await;
}

/// Expects `outcome` to be "batch `batch_id` not found".
fn assert_batch_not_found<T: std::fmt::Debug>(what: &str, batch_id: &str, outcome: Result<T, ServiceError>) {
    match outcome {
        Err(ServiceError::BatchNotFound(id)) => assert_eq!(id, batch_id, "{what}"),
        other => panic!("{what} of {batch_id}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_batch_ids_are_not_found_and_claim_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let written = Arc::new(Mutex::new(Written::default()));
    let service = service(&redb, dir.path(), &written);
    std::mem::take(&mut *written.lock().unwrap());

    let ids: Vec<String> =
        (0..PROBED_IDS_COUNT).map(|n| format!("job-00000000-0000-4000-8000-{n:012}")).collect();
    for id in &ids {
        assert_batch_not_found("get", id, service.batches.get(id).await);
        assert_batch_not_found("messages", id, service.batches.messages(id, None, &everything()).await);
        assert_batch_not_found("cancel", id, service.batches.cancel(id).await);
    }

    assert_nothing_written(&written);
    assert_eq!(service.batches.list(&everything()).await.unwrap(), Vec::<serde_json::Value>::new());
    service.shutdown().await;
}
