//! DST of the agent actor's in-memory caches (the archival index and the
//! context window) under storage read faults. Each turn's step stores its
//! messages and a passage and searches for it in the same invocation
//! (`archival_memory_insert` then `archival_memory_search`), so a read
//! fault during the search aborts a step whose messages already reached
//! the cached window and whose insert already reached the in-memory index.
//! Properties checked after every turn:
//! - no run is left running once its turn returned (a run whose end could
//!   not be stored is ended by the agent's next command), a turn that
//!   succeeded has a completed run, and the user messages stored are
//!   exactly those the runs' steps hold;
//! - a search answers only passages the store holds (an aborted insert is
//!   never found), with the scores brute force gives over what is stored;
//! - a committed insert is found by its own text;
//! - every prompt holds the user messages of every earlier turn that is
//!   stored and of none that is not (an aborted step never reaches a later
//!   prompt through the cached window).
//!
//! Over the seed sweep, some aborted step must have left the caches ahead
//! of the store (else the properties above were never put to the test).
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-agent --test dst_archival`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kelpie_agent::actors::agent::RunFilter;
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_agent::page::Page;
use kelpie_agent::requests::{CreateAgent, PassageSearch};
use kelpie_agent::service::runs::{RunQuery, TurnInput};
use kelpie_agent::AgentService;
use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_core::{ActorId, Error, NodeId, Result as CoreResult};
use kelpie_dst::{
    replay_command, seeds_to_run, Fault, FaultKind, FaultRule, LlmRequest, LlmResponse, LlmToolCall,
    SimLlmClient, SimNode, SimStorage, Simulation,
};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::sim::SimChatModel;
use kelpie_llm::LlmClients;
use kelpie_runtime::RuntimeConfig;
use kelpie_sandbox::sim::SimBackend;
use kelpie_storage::types::{CommitRequest, StoredRows};
use kelpie_storage::{Backend, BoxFut, MemoryBackend, Storage};
use kelpie_storage::{ClaimOutcome, CommitInfo, Placement as StoredPlacement, ScanPage, Versioned};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::json;

const SEEDS_COUNT: u64 = 60;
const TURNS_COUNT: usize = 12;
const READ_FAULT_PROBABILITY: f64 = 0.03;
/// Attempts of a check's read before the check gives up.
const CHECK_ATTEMPTS_COUNT_MAX: usize = 100;
const SIM_LIMIT_SECS: u64 = 3_600;

/// The memory backend whose reads pass the simulated disk's read fault
/// point first, so the fault injector decides which read fails.
struct FaultyReads {
    disk: SimStorage,
    inner: MemoryBackend,
}

impl FaultyReads {
    async fn probe(&self) -> CoreResult<()> {
        self.disk.get(b"read-probe").await.map(drop).map_err(Error::from)
    }
}

impl Backend for FaultyReads {
    fn name(&self) -> &'static str {
        "faulty-reads"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, CoreResult<Option<Versioned>>> {
        Box::pin(async move {
            self.probe().await?;
            self.inner.get(actor, key).await
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, CoreResult<StoredRows>> {
        Box::pin(async move {
            self.probe().await?;
            self.inner.scan(actor, page).await
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, CoreResult<CommitInfo>> {
        self.inner.commit(request)
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, CoreResult<Option<StoredPlacement>>> {
        self.inner.get_placement(actor)
    }

    fn put_placement(&self, placement: StoredPlacement) -> BoxFut<'_, CoreResult<()>> {
        self.inner.put_placement(placement)
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, CoreResult<ClaimOutcome>> {
        self.inner.claim_placement(actor, node, expected_epoch)
    }
}

/// The contents of every prompt's messages, in the order sent.
type Prompts = Arc<std::sync::Mutex<Vec<Vec<String>>>>;

/// Answers a user message with an insert and a search of its text in one
/// step, and the tool results with a reply.
fn responder(calls: Arc<AtomicU64>, prompts: Prompts) -> impl Fn(&LlmRequest) -> LlmResponse + Send + Sync {
    move |request: &LlmRequest| {
        let contents = request.messages.iter().map(|m| m.content.clone()).collect();
        prompts.lock().unwrap().push(contents);
        let last = request.messages.last().expect("a request has messages");
        let id = || format!("call-{}", calls.fetch_add(1, Ordering::SeqCst));
        if last.role == "tool" {
            return LlmResponse::tool_call(id(), "send_message", json!({"message": "done"}).to_string());
        }
        let text = last.content.clone();
        let insert = LlmToolCall {
            id: id(),
            name: "archival_memory_insert".into(),
            arguments: json!({"content": text}).to_string(),
        };
        let search = LlmToolCall {
            id: id(),
            name: "archival_memory_search".into(),
            arguments: json!({"query": text, "top_k": 3}).to_string(),
        };
        LlmResponse { tool_calls: vec![insert, search], ..LlmResponse::default() }
    }
}

fn service(node: &SimNode, prompts: Prompts) -> AgentService {
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("dst".into());
    layers.set("llm.openai_base_url", "http://127.0.0.1:9/v1", flag.clone()).unwrap();
    layers.set("llm.default_model", "openai-proxy/sim-gpt", flag).unwrap();
    let llm_config = layers.resolve().unwrap().llm;
    let catalog = ModelCatalog::new(llm_config.clone(), LlmClients::from_config(&llm_config).unwrap());
    let model = SimChatModel::new(SimLlmClient::with_responder(
        node,
        responder(Arc::new(AtomicU64::new(0)), prompts),
    ));
    let mut settings = RunnerSettings::new("/usr/bin/python3", "/nonexistent/pip".into());
    settings.warm_sandboxes_count = 0;
    let runner = Arc::new(ToolRunner::new(Arc::new(SimBackend::new(node)), settings));
    let backend = FaultyReads { disk: node.storage().clone(), inner: MemoryBackend::new() };
    let storage = Storage::from_backend(Arc::new(backend));
    let env = node.env();
    let config = RuntimeConfig::new(node.id().clone());
    let runtimes = agent_runtimes(&storage, &Placement::Local, &env, &config).unwrap();
    AgentService::new(runtimes, env, Arc::new(model), catalog, runner)
}

/// Retries a read that a fault may fail.
macro_rules! retried {
    ($read:expr) => {{
        let mut attempt = 0;
        loop {
            match $read {
                Ok(value) => break Ok(value),
                Err(_) if attempt < CHECK_ATTEMPTS_COUNT_MAX => attempt += 1,
                Err(e) => break Err(format!("a read failed {CHECK_ATTEMPTS_COUNT_MAX} times: {e}")),
            }
        }
    }};
}

/// What one seed saw.
#[derive(Default)]
struct Seen {
    /// Steps that failed after storing their passage (it is not stored).
    aborted_inserts: usize,
    committed_inserts: usize,
}

async fn scenario(node: SimNode) -> Result<Seen, String> {
    let prompts = Prompts::default();
    let service = service(&node, Arc::clone(&prompts));
    let request = CreateAgent {
        name: Some("dst".into()),
        model: Some("openai-proxy/sim-gpt".into()),
        ..CreateAgent::default()
    };
    let agent = retried!(service.agents.create(request.clone(), Some("dst-agent")).await)?;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    let mut seen = Seen::default();
    let marker = |turn: usize| format!("note {turn} about the ");
    for turn in 0..TURNS_COUNT {
        let text = format!("{}{} harbor", marker(turn), ["north", "south", "old"][turn % 3]);
        prompts.lock().unwrap().clear();
        let outcome =
            service.runs.run_turn(&agent_id, TurnInput::Texts(vec![text.clone()]), None, None, None).await;

        // The user messages stored so far: each earlier turn's must be in
        // every prompt of this turn exactly when it is stored.
        let mut stored_users: Vec<String> = Vec::new();
        let mut after = None;
        loop {
            let page = Page { before: None, after: after.clone(), limit: 50, descending: false };
            let listed = retried!(service.agents.list_messages(&agent_id, &page).await)?;
            after = listed.last().map(|m| m["id"].as_str().unwrap().to_string());
            for message in listed.iter().filter(|m| m["message_type"] == "user_message") {
                stored_users.push(message["content"].as_str().unwrap_or_default().to_string());
            }
            if listed.len() < 50 {
                break;
            }
        }
        for prompt in prompts.lock().unwrap().iter() {
            for earlier in 0..turn {
                let is_stored = stored_users.iter().any(|content| content.contains(&marker(earlier)));
                let prompted = prompt.iter().any(|content| content.contains(&marker(earlier)));
                if is_stored != prompted {
                    return Err(format!(
                        "turn {turn}: turn {earlier}'s message is stored: {is_stored}, in the prompt: {prompted}"
                    ));
                }
            }
        }

        // Runs: none is left running once its turn returned (a run whose
        // end could not be stored is ended by the agent's next command),
        // the turn's run ended as the turn did, and the user messages
        // stored are exactly those the runs' steps hold.
        let all = Page { before: None, after: None, limit: 1_000, descending: false };
        let query = RunQuery {
            agent_ids: vec![agent_id.clone()],
            filter: RunFilter::default(),
            active: false,
            page: all.clone(),
        };
        let runs = retried!(service.runs.list(query.clone()).await)?;
        let mut run_users: Vec<String> = Vec::new();
        for run in &runs {
            let run_id = run["id"].as_str().unwrap();
            if run["status"] == "running" {
                return Err(format!("turn {turn}: run {run_id} is still running after its turn returned"));
            }
            let messages = retried!(service.runs.messages(run_id, &all).await)?;
            for message in messages.iter().filter(|m| m["message_type"] == "user_message") {
                run_users.push(message["content"].as_str().unwrap_or_default().to_string());
            }
        }
        if let Ok(outcome) = &outcome {
            let run = runs.iter().find(|run| run["id"] == outcome.run_id.as_str());
            if run.map(|run| run["status"].clone()) != Some(json!("completed")) {
                return Err(format!("turn {turn} succeeded but its run {} is {run:?}", outcome.run_id));
            }
        }
        let (mut by_runs, mut by_messages) = (run_users.clone(), stored_users.clone());
        by_runs.sort();
        by_messages.sort();
        if by_runs != by_messages {
            return Err(format!(
                "turn {turn}: runs hold user messages {by_runs:?}, the agent {by_messages:?}"
            ));
        }

        // What is stored, read page by page.
        let mut stored: Vec<(String, Vec<f32>)> = Vec::new();
        let mut after = None;
        loop {
            let page = Page { before: None, after: after.clone(), limit: 50, descending: false };
            let listed = retried!(service.archival.list(&agent_id, &page).await)?;
            after = listed.last().map(|p| p["id"].as_str().unwrap().to_string());
            for passage in &listed {
                let text = passage["text"].as_str().unwrap().to_string();
                stored.push((text.clone(), kelpie_memory::embed_local(&text)));
            }
            if listed.len() < 50 {
                break;
            }
        }
        let holds = stored.iter().any(|(t, _)| *t == text);
        match (outcome.is_ok(), holds) {
            (true, true) => seen.committed_inserts += 1,
            (false, false) => seen.aborted_inserts += 1,
            (true, false) => return Err(format!("turn {turn} succeeded but its passage is not stored")),
            // A step that committed, then a later step of the turn failed.
            (false, true) => seen.committed_inserts += 1,
        }

        let search = PassageSearch {
            query: Some(text.clone()),
            agent_id: Some(agent_id.clone()),
            limit: Some(5),
            ..PassageSearch::default()
        };
        let found = retried!(service.archival.search_passages(search.clone()).await)?;
        let query = kelpie_memory::embed_local(&text);
        let mut exact: Vec<f32> = stored.iter().map(|(_, e)| kelpie_memory::cosine(e, &query)).collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        exact.truncate(5);
        if found.len() != exact.len() {
            return Err(format!("turn {turn}: {} found, {} expected", found.len(), exact.len()));
        }
        for (hit, want) in found.iter().zip(&exact) {
            let hit_text = hit["passage"]["text"].as_str().unwrap();
            if !stored.iter().any(|(t, _)| t == hit_text) {
                return Err(format!("turn {turn}: search found {hit_text:?}, which is not stored"));
            }
            let score = hit["score"].as_f64().unwrap() as f32;
            if (score - want).abs() > 1e-5 {
                return Err(format!("turn {turn}: score {score} where brute force gives {want}"));
            }
        }
        if holds && found[0]["score"].as_f64().unwrap() < 0.999 {
            return Err(format!("turn {turn}: a stored passage is not its own nearest"));
        }
    }
    service.shutdown().await;
    Ok(seen)
}

fn run_seed(seed: u64) -> (Result<Seen, String>, u64) {
    let mut sim = Simulation::builder()
        .seed(seed)
        .nodes(1)
        .fault(FaultRule::new(Fault::StorageReadFail, READ_FAULT_PROBABILITY))
        .build()
        .unwrap();
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let (slot, node) = (Arc::clone(&outcome), sim.node(0).clone());
    sim.spawn(0, "archival", async move {
        *slot.lock().unwrap() = Some(scenario(node).await);
    });
    let run = sim.run_until_idle(Duration::from_secs(SIM_LIMIT_SECS));
    let fired = sim.fault_count(FaultKind::StorageReadFail);
    let result = match run {
        Err(failure) => Err(format!("simulation failed: {failure:?}")),
        Ok(_) => outcome.lock().unwrap().take().unwrap_or_else(|| Err("the scenario never finished".into())),
    };
    (result, fired)
}

#[test]
fn archival_search_answers_only_what_is_stored_whatever_read_fails() {
    let (mut aborted, mut committed, mut fired) = (0, 0, 0);
    for seed in seeds_to_run(0..SEEDS_COUNT).unwrap() {
        let (result, count) = run_seed(seed);
        match result {
            Ok(seen) => {
                (aborted, committed) = (aborted + seen.aborted_inserts, committed + seen.committed_inserts)
            }
            Err(broken) => panic!("seed {seed}: {broken}\nreplay: {}", replay_command(seed)),
        }
        fired += count;
    }
    if std::env::var(kelpie_dst::DST_SEED_ENV).is_err() {
        assert!(fired > 0, "no read fault fired over the sweep");
        assert!(aborted > 0, "no step failed after its insert over the sweep");
        assert!(committed > aborted, "{committed} committed, {aborted} aborted");
    }
}
