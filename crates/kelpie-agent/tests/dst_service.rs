//! Server DST: the whole agent service (its actors, turns, runs, archival
//! memory) on one simulated node whose storage is the simulated disk, with
//! a simulated LLM (latency, timeouts, provider 5xx, rate limits, malformed
//! tool calls, streams cut part-way), a custom tool in simulated sandboxes
//! that fail to boot, crash, cannot start or time out, disk read and write faults (a failed write crashes the
//! process, as a failed fsync does), crashes at any moment and restarts,
//! and clean shutdowns under load. Each boot opens the disk, builds the
//! service and recovers the runs it left, as `kelpie serve` does.
//!
//! A client drives seeded operations: idempotent creates (keys retried and
//! repeated), turns with idempotency keys (failed ones retried, acknowledged
//! ones sometimes sent again), archival inserts and searches, background
//! runs, crashes, and shutdowns with turns in flight. After every operation
//! these hold (a read a fault fails is tried again; a check the node's
//! crash interrupts is made after the restart):
//! - NoDuplicateAgents: one agent per idempotency key, with the key's id;
//! - CreatedAgentRetrievable: an acknowledged create is read back at once
//!   and after every restart;
//! - AgentDataIntact: every acknowledged turn's message is stored exactly
//!   once, no message twice, and the stored user messages are exactly those
//!   the runs' steps hold;
//! - SearchIsolation: an agent's search finds only its own passages;
//! - NoRunRunningPastRecovery: no run is running but one this boot started
//!   and has not seen end (after a restart: none);
//! - ShutdownAnswersEveryRequest: a turn in flight at a shutdown answers
//!   (done or failed, never lost: an answered success is stored), and every
//!   request after it is refused as unavailable (HTTP 503).
//!
//! Start-up is all-or-nothing by construction here: a boot that cannot
//! open the disk publishes nothing and the node restarts.
//!
//! Each invariant has a planted bug (`kelpie_agent::planted`, or a storage
//! backend that breaks its contract) that the sweep must catch, each by
//! that invariant: a create that ignores its key, a create answered before
//! its commit, a turn that forgets its key, archival rows shared between
//! agents, an agent that skips the recovery of stale runs, a stopped turn
//! that never answers, and agents left serving after shutdown.
//!
//! Client requests run as tasks of the node, so a crash ends them as it
//! ends a real server's requests; a request is never sent to the service
//! of an earlier boot (that process is gone), and the disk refuses the
//! calls of one.
//!
//! Not here yet: more than one node (`kelpie-cluster`'s DST has the
//! cluster protocol alone).
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-agent --test dst_service`
//! (`DST_VERBOSE=1` prints each turn and boot).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{select, Either};
use kelpie_agent::actors::agent::RunFilter;
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_agent::page::Page;
use kelpie_agent::planted::PlantedBug;
use kelpie_agent::requests::{CreateAgent, PassageSearch};
use kelpie_agent::service::runs::{RunQuery, TurnInput};
use kelpie_agent::service::turn::token_stream::TurnEvents;
use kelpie_agent::{AgentService, ServiceError};
use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_core::{ActorId, NodeId, Result as CoreResult};
use kelpie_dst::properties::{
    created_agent_retrievable, no_duplicate_agents, search_isolation, ObservedAgent, ObservedSearch,
};
use kelpie_dst::{
    replay_command, seeds_to_run, DeterministicRng, Fault, FaultKind, FaultRule, LlmRequest, LlmResponse,
    LlmToolCall, SimHandle, SimLlmClient, SimNode, Simulation,
};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::sim::SimChatModel;
use kelpie_llm::LlmClients;
use kelpie_runtime::RuntimeConfig;
use kelpie_sandbox::sim::SimBackend;
use kelpie_sandbox::ExecLimits;
use kelpie_storage::sim_disk::SimDiskBackend;
use kelpie_storage::types::{CommitRequest, StoredRows};
use kelpie_storage::{Backend, BoxFut, Storage};
use kelpie_storage::{ClaimOutcome, CommitInfo, Placement as StoredPlacement, ScanPage, Versioned};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::json;

/// Longest a probe call may run in its sandbox.
const TOOL_WALL_MS: u64 = 2_000;
/// Seeds of the sweep: the CI budget.
const SEEDS_COUNT: u64 = 500;
/// Client operations per seed.
const OPERATIONS_COUNT: usize = 24;
/// The idempotency keys creates draw from (each agent is named by its key).
const KEYS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Attempts of a check's reads before the check reports them failing.
const CHECK_ATTEMPTS_COUNT_MAX: usize = 50;
/// Longest a request in flight at a shutdown may take to answer.
const SHUTDOWN_ANSWER_MS_MAX: u64 = 120_000;
/// Longest the client waits for the node to boot again.
const BOOT_WAIT_MS_MAX: u64 = 600_000;
const POLL_MS: u64 = 10;
const SIM_LIMIT_SECS: u64 = 36_000;

/// A broken invariant: which, and what was seen.
#[derive(Debug)]
struct Violation {
    invariant: &'static str,
    detail: String,
}

fn violation<T>(invariant: &'static str, detail: String) -> Result<T, Violation> {
    Err(Violation { invariant, detail })
}

/// A storage backend bug a sweep plants (the service's own are in
/// `kelpie_agent::planted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendBug {
    /// Archival rows (passages and their search codes) are not namespaced
    /// by actor: an agent's scans and reads of them also find another's.
    ArchivalKeysShared,
}

/// Whether `key` (an agent actor's storage key) is an archival row:
/// `u/p/<seq>` (a passage) or `u/q/<seq>` (its search code).
fn is_archival(key: &[u8]) -> bool {
    key.starts_with(b"u/p/") || key.starts_with(b"u/q/")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    Service(PlantedBug),
    Backend(BackendBug),
}

/// The simulated disk's backend, with a backend bug when one is planted.
/// It serves only the boot that opened it: once the node crashed or booted
/// again, a call from the gone process's code (which the simulator may
/// still be running on a client's task) fails, as a dead process writes
/// nothing.
struct Disk {
    inner: SimDiskBackend,
    bug: Option<BackendBug>,
    /// Whether the process that opened the disk still runs: cleared when its
    /// boot task is dropped (the node crashed), so its code, which the
    /// simulator may still run on a client's task, writes nothing, even
    /// before the next boot's code has run.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// One boot's process: alive from its boot until its boot task is dropped.
struct Process {
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Process {
    fn drop(&mut self) {
        self.alive.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Disk {
    /// The agents of the other keys than `actor`'s, when `actor` is an agent.
    fn other_agents(&self, actor: &ActorId) -> CoreResult<Vec<ActorId>> {
        if actor.namespace() != "agents" {
            return Ok(Vec::new());
        }
        let ids = KEYS.iter().map(|key| kelpie_agent::ids::id_from_key("agent", key));
        let agents: CoreResult<Vec<ActorId>> = ids.map(|id| ActorId::new("agents", &id)).collect();
        Ok(agents?.into_iter().filter(|other| other != actor).collect())
    }

    fn alive(&self) -> CoreResult<()> {
        match self.alive.load(std::sync::atomic::Ordering::SeqCst) {
            true => Ok(()),
            false => Err(kelpie_core::Error::StorageIo {
                operation: "dst disk",
                reason: "the process that opened it is gone".into(),
            }),
        }
    }
}

impl Backend for Disk {
    fn name(&self) -> &'static str {
        "dst-disk"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, CoreResult<Option<Versioned>>> {
        Box::pin(async move {
            self.alive()?;
            let found = self.inner.get(actor, key).await?;
            if found.is_some() || self.bug != Some(BackendBug::ArchivalKeysShared) || !is_archival(key) {
                return Ok(found);
            }
            for other in self.other_agents(actor)? {
                if let Some(value) = self.inner.get(&other, key).await? {
                    return Ok(Some(value));
                }
            }
            Ok(None)
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, CoreResult<StoredRows>> {
        Box::pin(async move {
            self.alive()?;
            let mut rows = self.inner.scan(actor, page).await?;
            let archival = match &page.range.start {
                std::ops::Bound::Included(start) | std::ops::Bound::Excluded(start) => is_archival(start),
                std::ops::Bound::Unbounded => false,
            };
            if self.bug == Some(BackendBug::ArchivalKeysShared) && archival {
                for other in self.other_agents(actor)? {
                    rows.extend(self.inner.scan(&other, page).await?);
                }
                rows.sort_by(|a, b| a.0.cmp(&b.0));
                rows.dedup_by(|a, b| a.0 == b.0);
                rows.truncate(page.limit);
            }
            Ok(rows)
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, CoreResult<CommitInfo>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.commit(request).await
        })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, CoreResult<Option<StoredPlacement>>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.get_placement(actor).await
        })
    }

    fn put_placement(&self, placement: StoredPlacement) -> BoxFut<'_, CoreResult<()>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.put_placement(placement).await
        })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, CoreResult<ClaimOutcome>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.claim_placement(actor, node, expected_epoch).await
        })
    }
}

/// Answers a user message by its first word: `remember` inserts the text
/// into archival memory, `garbled` calls a tool with arguments that are
/// not JSON, anything else is echoed; a tool's result is answered with a
/// reply.
fn responder(request: &LlmRequest) -> LlmResponse {
    let last = request.messages.last().expect("a request has messages");
    let reply = |text: String| {
        LlmResponse::tool_call("call-reply", "send_message", json!({"message": text}).to_string())
    };
    if last.role == "tool" {
        return reply("done".into());
    }
    let text = last.content.clone();
    let call = |name: &str, arguments: String| LlmResponse {
        tool_calls: vec![LlmToolCall { id: "call-1".into(), name: name.into(), arguments }],
        ..LlmResponse::default()
    };
    if text.starts_with("probe ") {
        call("probe", json!({"text": text}).to_string())
    } else if text.starts_with("remember ") {
        call("archival_memory_insert", json!({"content": text}).to_string())
    } else if text.starts_with("garbled ") {
        call("archival_memory_insert", "{\"content\": unquoted".into())
    } else {
        reply(format!("echo: {text}"))
    }
}

fn build_service(node: &SimNode, storage: &Storage, bug: Option<Bug>) -> CoreResult<AgentService> {
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("dst".into());
    layers.set("llm.openai_base_url", "http://127.0.0.1:9/v1", flag.clone()).expect("a valid URL");
    layers.set("llm.default_model", "openai-proxy/sim-gpt", flag).expect("a valid model");
    let llm_config = layers.resolve().expect("a valid configuration").llm;
    let clients =
        LlmClients::from_config(&llm_config).map_err(|e| kelpie_core::Error::Internal(e.to_string()))?;
    let catalog = ModelCatalog::new(llm_config, clients);
    let model = SimChatModel::new(SimLlmClient::with_responder(node, responder));
    let mut settings = RunnerSettings::new("/usr/bin/python3", "/nonexistent/pip".into());
    settings.limits = ExecLimits { wall_ms: TOOL_WALL_MS, ..ExecLimits::default() };
    settings.warm_sandboxes_count = 0;
    let runner = Arc::new(ToolRunner::new(Arc::new(SimBackend::new(node)), settings));
    let env = node.env();
    let runtimes = agent_runtimes(storage, &Placement::Local, &env, &RuntimeConfig::new(node.id().clone()))?;
    if let Some(Bug::Service(planted)) = bug {
        runtimes.planted.plant(planted);
    }
    Ok(AgentService::new(runtimes, env, Arc::new(model), catalog, runner))
}

/// The service of the node's current boot.
struct Boot {
    service: Arc<AgentService>,
    number: u64,
}

type Slot = Arc<Mutex<Option<Boot>>>;

/// What the client was told.
#[derive(Default)]
struct Ledger {
    /// key -> id of every acknowledged create.
    agents: BTreeMap<String, String>,
    /// text -> agent of every turn answered `end_turn`.
    acked: BTreeMap<String, String>,
    /// text -> run of every turn answered `end_turn`.
    acked_runs: BTreeMap<String, String>,
    /// text -> agent of every turn sent, answered or not.
    sent: BTreeMap<String, String>,
    /// Turns that failed, to send again with the same key.
    retries: Vec<(String, String)>,
    /// Runs this boot started and has not seen end.
    open_runs: BTreeSet<String>,
    /// Streamed turns answered in full.
    streamed_acked: usize,
    boot: u64,
}

/// What one seed exercised.
#[derive(Default, Debug)]
struct Seen {
    acked_turns: usize,
    streamed: usize,
    /// Streamed turns answered in full, and the LLM streams cut.
    streamed_acked: usize,
    streams_cut: u64,
    sandbox_faults: u64,
    boots: u64,
    shutdowns: usize,
    searches: usize,
}

struct Client {
    node: SimNode,
    handle: SimHandle,
    slot: Slot,
    rng: DeterministicRng,
    ledger: Ledger,
    next_text: usize,
}

/// What a read found, when the node stayed up.
enum Read<T> {
    Done(T),
    /// The node went down or booted again: check after the restart.
    Interrupted,
}

impl Client {
    fn boot_number(&self) -> Option<u64> {
        self.slot.lock().unwrap().as_ref().map(|boot| boot.number)
    }

    /// The current boot's service, once the node is up and has booted.
    async fn service(&mut self) -> Result<Arc<AgentService>, Violation> {
        let mut waited_ms = 0;
        loop {
            if self.node.is_up() {
                if let Some(boot) = self.slot.lock().unwrap().as_ref() {
                    if boot.number != self.ledger.boot {
                        // A new process: nothing of the earlier one runs.
                        if std::env::var("DST_VERBOSE").is_ok() {
                            eprintln!("now boot {} at {:?}", boot.number, self.handle.now());
                        }
                        self.ledger.boot = boot.number;
                        self.ledger.open_runs.clear();
                    }
                    return Ok(Arc::clone(&boot.service));
                }
            }
            if waited_ms > BOOT_WAIT_MS_MAX {
                return violation("StartUp", format!("the node did not boot again in {BOOT_WAIT_MS_MAX} ms"));
            }
            self.handle.sleep(Duration::from_millis(POLL_MS)).await;
            waited_ms += POLL_MS;
        }
    }

    fn interrupted(&self, boot: u64) -> bool {
        !self.node.is_up() || self.boot_number() != Some(boot)
    }

    /// `read` tried until it answers, while the node stays up; a read that
    /// keeps failing is a violation of `invariant`.
    async fn read<T, F, Fut>(&self, boot: u64, invariant: &'static str, read: F) -> Result<Read<T>, Violation>
    where
        T: Send + 'static,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        let mut last = None;
        for _ in 0..CHECK_ATTEMPTS_COUNT_MAX {
            if self.interrupted(boot) {
                return Ok(Read::Interrupted);
            }
            match self.on_node(read()).await {
                Some(Ok(value)) => return Ok(Read::Done(value)),
                Some(Err(err)) => last = Some(err),
                None => return Ok(Read::Interrupted),
            }
            self.handle.sleep(Duration::from_millis(POLL_MS)).await;
        }
        if self.interrupted(boot) {
            return Ok(Read::Interrupted);
        }
        violation(invariant, format!("a read failed {CHECK_ATTEMPTS_COUNT_MAX} times: {last:?}"))
    }

    /// Runs `request` as a task of the node, as the server runs a client's
    /// request: a crash of the node ends it, and the client sees no answer
    /// (`None`), as a client sees its connection drop. A request for a
    /// service of an earlier boot is not sent: that process is gone.
    async fn on_node<T: Send + 'static>(
        &self,
        request: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        if self.interrupted(self.ledger.boot) {
            return None;
        }
        let (answer, answered) = futures::channel::oneshot::channel();
        let spawned = self.node.spawn("request", async move {
            let _ = answer.send(request.await);
        });
        match spawned {
            true => answered.await.ok(),
            false => None,
        }
    }

    fn text(&mut self, prefix: &str, key: &str) -> String {
        self.next_text += 1;
        format!("{prefix} {key} t{}", self.next_text)
    }

    fn pick_agent(&self) -> Option<(String, String)> {
        let agents: Vec<_> = self.ledger.agents.iter().collect();
        (!agents.is_empty()).then(|| {
            let (key, id) = agents[self.rng.index_below(agents.len())];
            (key.clone(), id.clone())
        })
    }

    async fn create(&mut self, service: &Arc<AgentService>) -> Result<(), Violation> {
        let key = KEYS[self.rng.index_below(KEYS.len())];
        let request = CreateAgent {
            name: Some(key.into()),
            model: Some("openai-proxy/sim-gpt".into()),
            tool_ids: Some(vec![support::PROBE_TOOL_ID.into()]),
            ..CreateAgent::default()
        };
        let service = Arc::clone(service);
        let created = self.on_node(async move { service.agents.create(request, Some(key)).await }).await;
        let Some(Ok(created)) = created else { return Ok(()) };
        let id = created["id"].as_str().unwrap_or_default().to_string();
        if let Some(earlier) = self.ledger.agents.get(key).filter(|earlier| **earlier != id) {
            return violation(
                "NoDuplicateAgents",
                format!("key {key} created agent {id} after agent {earlier}"),
            );
        }
        self.ledger.agents.insert(key.into(), id);
        Ok(())
    }

    /// Sends `text` to `agent` under the idempotency key `text`.
    async fn turn(&mut self, service: &Arc<AgentService>, agent: &str, text: String) {
        self.ledger.sent.insert(text.clone(), agent.to_string());
        let answer = self.on_node(send_turn(Arc::clone(service), agent.to_string(), text.clone())).await;
        let answer = answer.unwrap_or(Err(ServiceError::Refused("the connection dropped".into())));
        if std::env::var("DST_VERBOSE").is_ok() {
            let brief = answer.as_ref().map(|o| (o.run_id.clone(), o.stop_reason, o.messages.len()));
            eprintln!("boot {} turn {text:?} -> {brief:?}", self.ledger.boot);
        }
        match answer {
            Ok(outcome) if outcome.stop_reason == "end_turn" => {
                self.ledger.acked_runs.insert(text.clone(), outcome.run_id.clone());
                self.ledger.acked.insert(text, agent.to_string());
            }
            _ => self.ledger.retries.push((agent.to_string(), text)),
        }
    }

    async fn operation(&mut self, seen: &mut Seen) -> Result<(), Violation> {
        let service = self.service().await?;
        let Some((key, agent)) = self.pick_agent() else { return self.create(&service).await };
        match self.rng.index_below(100) {
            0..=14 => self.create(&service).await?,
            15..=34 => {
                let text = self.text("say", &key);
                self.turn(&service, &agent, text).await;
            }
            35..=44 => {
                seen.streamed += 1;
                self.streamed_turn(&service, &agent, &key).await?;
            }
            45..=54 => {
                // A failed turn sent again, or an answered one (its answer lost).
                let again = match self.ledger.retries.pop() {
                    Some(retry) => Some(retry),
                    None => {
                        let acked: Vec<_> = self.ledger.acked.iter().collect();
                        (!acked.is_empty()).then(|| {
                            let (text, agent) = acked[self.rng.index_below(acked.len())];
                            (agent.clone(), text.clone())
                        })
                    }
                };
                if let Some((agent, text)) = again {
                    self.turn(&service, &agent, text).await;
                }
            }
            55..=66 => {
                let text = self.text("remember", &key);
                self.turn(&service, &agent, text).await;
            }
            67..=70 => {
                let text = self.text("garbled", &key);
                self.turn(&service, &agent, text).await;
            }
            71..=74 => {
                let text = self.text("probe", &key);
                self.turn(&service, &agent, text).await;
            }
            75..=80 => {
                let text = self.text("later", &key);
                self.ledger.sent.insert(text.clone(), agent.clone());
                let service = Arc::clone(&service);
                let started = self
                    .on_node(async move { service.runs.start(&agent, vec![text], None, None).await })
                    .await;
                if let Some(Ok(run)) = started {
                    self.ledger.open_runs.insert(run["id"].as_str().unwrap_or_default().to_string());
                }
            }
            81..=88 => {
                seen.searches += 1;
                self.search(&service, &key, &agent).await?;
            }
            89..=93 => self.handle.crash_node(0),
            _ => {
                seen.shutdowns += 1;
                self.shutdown_under_load(&service).await?;
            }
        }
        Ok(())
    }

    /// A turn streamed token by token (its LLM answer streamed too, and
    /// maybe cut part-way): answered in full, its events carry the reply
    /// the agent stores; cut, it fails like any failed turn.
    async fn streamed_turn(
        &mut self,
        service: &Arc<AgentService>,
        agent: &str,
        key: &str,
    ) -> Result<(), Violation> {
        let text = self.text("say", key);
        self.ledger.sent.insert(text.clone(), agent.to_string());
        let (service, owned_agent, owned_text) = (Arc::clone(service), agent.to_string(), text.clone());
        let answer = self
            .on_node(async move {
                let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
                let events_out = Some(TurnEvents { sender, stream_tokens: true });
                let input = TurnInput::Texts(vec![owned_text.clone()]);
                let outcome =
                    service.runs.run_turn(&owned_agent, input, None, events_out, Some(owned_text)).await;
                let mut seen = Vec::new();
                while let Ok(event) = events.try_recv() {
                    seen.push(event);
                }
                (outcome, seen)
            })
            .await;
        let Some((Ok(outcome), events)) = answer else {
            self.ledger.retries.push((agent.to_string(), text));
            return Ok(());
        };
        if outcome.stop_reason != "end_turn" {
            self.ledger.retries.push((agent.to_string(), text));
            return Ok(());
        }
        let reply = format!("echo: {text}");
        let replied = events
            .iter()
            .any(|event| event["message_type"] == "assistant_message" && event["content"] == reply.as_str());
        if !replied {
            return violation(
                "AgentDataIntact",
                format!("streamed {text:?} was answered without its reply event: {events:?}"),
            );
        }
        self.ledger.acked.insert(text, agent.to_string());
        self.ledger.streamed_acked += 1;
        Ok(())
    }

    async fn search(&self, service: &Arc<AgentService>, key: &str, agent: &str) -> Result<(), Violation> {
        let boot = self.ledger.boot;
        let search = PassageSearch {
            query: Some(format!("remember {key}")),
            agent_id: Some(agent.to_string()),
            limit: Some(20),
            ..PassageSearch::default()
        };
        let Read::Done(hits) = self
            .read(boot, "SearchIsolation", || {
                let (service, search) = (Arc::clone(service), search.clone());
                async move { service.archival.search_passages(search).await }
            })
            .await?
        else {
            return Ok(());
        };
        // A hit's owner is the agent whose key its text carries.
        let owner_of =
            |text: &str| KEYS.iter().find(|k| text.starts_with(&format!("remember {k} "))).copied();
        let hit_owners = hits
            .iter()
            .map(|hit| owner_of(hit["passage"]["text"].as_str().unwrap_or_default()).unwrap_or("?"))
            .collect();
        let observed = ObservedSearch { agent: key, hit_owners };
        search_isolation(&[observed]).or_else(|err| violation("SearchIsolation", err.to_string()))
    }

    /// Two turns in flight, then a clean shutdown: each answers, and then
    /// every request is refused as unavailable. The process then restarts.
    async fn shutdown_under_load(&mut self, service: &Arc<AgentService>) -> Result<(), Violation> {
        let picks: Vec<(String, String)> = (0..2).filter_map(|_| self.pick_agent()).collect();
        let texts: Vec<String> = picks.iter().map(|(key, _)| self.text("busy", key)).collect();
        for ((_, agent), text) in picks.iter().zip(&texts) {
            self.ledger.sent.insert(text.clone(), agent.clone());
        }
        let turns = picks.iter().zip(&texts).map(|((_, agent), text)| {
            self.on_node(send_turn(Arc::clone(service), agent.clone(), text.clone()))
        });
        let pause = Duration::from_millis(self.rng.between_inclusive(1, 600));
        let stopping = Arc::clone(service);
        let stop = async {
            self.handle.sleep(pause).await;
            self.on_node(async move { stopping.shutdown().await }).await;
        };
        let all = futures::future::join(futures::future::join_all(turns), stop);
        let limit = self.handle.sleep(Duration::from_millis(SHUTDOWN_ANSWER_MS_MAX));
        let answers = match select(Box::pin(all), limit).await {
            Either::Left(((answers, ()), _)) => answers,
            Either::Right(_) => {
                return violation(
                    "ShutdownAnswersEveryRequest",
                    format!("a turn in flight at shutdown had no answer after {SHUTDOWN_ANSWER_MS_MAX} ms"),
                )
            }
        };
        for (((_, agent), text), answer) in picks.iter().zip(texts).zip(answers) {
            if let Some(Ok(outcome)) = answer {
                if outcome.stop_reason == "end_turn" {
                    self.ledger.acked.insert(text, agent.clone());
                }
            }
        }
        if self.node.is_up() {
            if let Some((key, agent)) = self.pick_agent() {
                // A read, a list and a turn: each refused as unavailable.
                let all = Page { before: None, after: None, limit: 10, descending: false };
                let (first, second) = (Arc::clone(service), Arc::clone(service));
                let (read_agent, list_agent) = (agent.clone(), agent.clone());
                let text = self.text("late", &key);
                let answers = [
                    self.on_node(async move { first.agents.get(&read_agent).await.map(drop) }).await,
                    self.on_node(
                        async move { second.agents.list_messages(&list_agent, &all).await.map(drop) },
                    )
                    .await,
                    self.on_node(send_turn(Arc::clone(service), agent, text))
                        .await
                        .map(|answer| answer.map(drop)),
                ];
                for answer in answers {
                    match answer {
                        // The node crashed meanwhile: nothing was asked.
                        None => {}
                        Some(Err(err)) if err.is_unavailable() => {}
                        Some(other) => {
                            return violation(
                                "ShutdownAnswersEveryRequest",
                                format!("a request after shutdown answered {other:?}, not unavailable"),
                            )
                        }
                    }
                }
            }
        }
        // The process exits; the node starts it again.
        self.handle.crash_node(0);
        Ok(())
    }

    /// Every invariant, read through the current boot.
    async fn check(&mut self) -> Result<(), Violation> {
        let service = self.service().await?;
        let boot = self.ledger.boot;
        // NoDuplicateAgents: one agent per key, the key's.
        let all = Page { before: None, after: None, limit: 1_000, descending: false };
        let Read::Done(listed) = self
            .read(boot, "NoDuplicateAgents", || {
                let (service, all) = (Arc::clone(&service), all.clone());
                async move { service.agents.list(None, &[], false, &all).await }
            })
            .await?
        else {
            return Ok(());
        };
        let observed: Vec<ObservedAgent<String, String>> = listed
            .iter()
            .map(|agent| ObservedAgent {
                id: agent["id"].as_str().unwrap_or_default().to_string(),
                create_key: agent["name"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        no_duplicate_agents(&observed).or_else(|err| violation("NoDuplicateAgents", err.to_string()))?;
        // CreatedAgentRetrievable: every acknowledged create reads back.
        let mut found = BTreeSet::new();
        for (key, id) in &self.ledger.agents {
            let read = self.read(boot, "CreatedAgentRetrievable", || {
                let (service, id) = (Arc::clone(&service), id.clone());
                async move {
                    match service.agents.get(&id).await {
                        Ok(_) => Ok(true),
                        Err(ServiceError::AgentNotFound(_)) => Ok(false),
                        Err(err) => Err(err),
                    }
                }
            });
            match read.await? {
                Read::Done(true) => {
                    found.insert(key.clone());
                }
                Read::Done(false) => {}
                Read::Interrupted => return Ok(()),
            }
        }
        let acked: BTreeSet<String> = self.ledger.agents.keys().cloned().collect();
        created_agent_retrievable(&acked, &found)
            .or_else(|err| violation("CreatedAgentRetrievable", err.to_string()))?;
        let ids: Vec<String> = self.ledger.agents.values().cloned().collect();
        for id in &ids {
            if !self.check_agent(&service, boot, id).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// AgentDataIntact and NoRunRunningPastRecovery for agent `id`; false
    /// when the node went down meanwhile.
    async fn check_agent(
        &mut self,
        service: &Arc<AgentService>,
        boot: u64,
        id: &str,
    ) -> Result<bool, Violation> {
        let all = Page { before: None, after: None, limit: 1_000, descending: false };
        let Read::Done(messages) = self
            .read(boot, "AgentDataIntact", || {
                let (service, id, all) = (Arc::clone(service), id.to_string(), all.clone());
                async move { service.agents.list_messages(&id, &all).await }
            })
            .await?
        else {
            return Ok(false);
        };
        let mut stored: BTreeMap<String, usize> = BTreeMap::new();
        for message in messages.iter().filter(|m| m["message_type"] == "user_message") {
            *stored.entry(message["content"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        for (text, count) in &stored {
            if *count > 1 {
                return violation("AgentDataIntact", format!("{text:?} is stored {count} times in {id}"));
            }
            if self.ledger.sent.get(text).map(String::as_str) != Some(id) {
                return violation(
                    "AgentDataIntact",
                    format!("{text:?} is stored in {id}, which it was not sent to"),
                );
            }
        }
        for (text, agent) in &self.ledger.acked {
            if agent == id && !stored.contains_key(text) {
                return violation(
                    "AgentDataIntact",
                    format!("acknowledged {text:?} is not stored in {id}, which holds {:?}", stored.keys()),
                );
            }
        }
        let query = RunQuery {
            agent_ids: vec![id.to_string()],
            filter: RunFilter::default(),
            active: false,
            page: all.clone(),
        };
        let Read::Done(runs) = self
            .read(boot, "NoRunRunningPastRecovery", || {
                let (service, query) = (Arc::clone(service), query.clone());
                async move { service.runs.list(query).await }
            })
            .await?
        else {
            return Ok(false);
        };
        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for run in &runs {
            let run_id = run["id"].as_str().unwrap_or_default().to_string();
            if run["status"] == "running" {
                if !self.ledger.open_runs.contains(&run_id) {
                    return violation(
                        "NoRunRunningPastRecovery",
                        format!("run {run_id} of {id} is running, and no task of this boot runs it"),
                    );
                }
                continue;
            }
            self.ledger.open_runs.remove(&run_id);
            let Read::Done(run_messages) = self
                .read(boot, "AgentDataIntact", || {
                    let (service, run_id, all) = (Arc::clone(service), run_id.clone(), all.clone());
                    async move { service.runs.messages(&run_id, &all).await }
                })
                .await?
            else {
                return Ok(false);
            };
            for message in run_messages.iter().filter(|m| m["message_type"] == "user_message") {
                *held.entry(message["content"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            }
        }
        // Runs still going hold what they stored so far: compare only when none is.
        if runs.iter().all(|run| run["status"] != "running") && held != stored {
            return violation(
                "AgentDataIntact",
                format!("{id}: the runs hold {held:?}, the agent {stored:?}"),
            );
        }
        Ok(true)
    }
}

/// A turn of `agent` with the text `text`, sent under the idempotency key `text`.
async fn send_turn(
    service: Arc<AgentService>,
    agent: String,
    text: String,
) -> Result<kelpie_agent::service::turn::TurnOutcome, ServiceError> {
    let input = TurnInput::Texts(vec![text.clone()]);
    service.runs.run_turn(&agent, input, None, None, Some(text)).await
}

fn run_seed(seed: u64, bug: Option<Bug>) -> (Result<Seen, Violation>, u64) {
    let mut builder =
        Simulation::builder().seed(seed).nodes(1).restart_crashed_nodes_after(Duration::from_millis(50));
    for rule in [
        FaultRule::new(Fault::StorageWriteFail, 0.003),
        FaultRule::new(Fault::StorageReadFail, 0.01),
        FaultRule::new(Fault::LlmFailure, 0.05),
        FaultRule::new(Fault::LlmTimeout, 0.02),
        FaultRule::new(Fault::LlmRateLimited { retry_after_ms: 200 }, 0.02),
        FaultRule::new(Fault::LlmStreamCut, 0.15),
        FaultRule::new(Fault::SandboxBootFailure, 0.05),
        FaultRule::new(Fault::SandboxCrash, 0.05),
        FaultRule::new(Fault::SandboxExecFailure, 0.05),
        FaultRule::new(Fault::SandboxExecTimeout, 0.05),
    ] {
        builder = builder.fault(rule);
    }
    let sim = builder.build().expect("a valid simulation");
    let slot: Slot = Arc::default();
    let boots = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (handle, slot, boots) = (sim.handle(), Arc::clone(&slot), Arc::clone(&boots));
        sim.on_boot(0, move |node| {
            let (handle, slot, boots) = (handle.clone(), Arc::clone(&slot), Arc::clone(&boots));
            async move {
                let boot = boots.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                // Its disk refuses every call once this task is dropped.
                let process = Process { alive: Arc::new(std::sync::atomic::AtomicBool::new(true)) };
                let fatal_handle = handle.clone();
                let fatal = Box::new(move || fatal_handle.crash_node(0));
                let Ok(disk) = SimDiskBackend::open(node.storage().clone(), fatal).await else {
                    // The disk could not be read back: nothing starts; the node restarts.
                    handle.crash_node(0);
                    return;
                };
                let backend_bug = match bug {
                    Some(Bug::Backend(bug)) => Some(bug),
                    _ => None,
                };
                let disk = Disk { inner: disk, bug: backend_bug, alive: Arc::clone(&process.alive) };
                let storage = Storage::from_backend(Arc::new(disk));
                let Ok(service) = build_service(&node, &storage, bug) else {
                    handle.crash_node(0);
                    return;
                };
                // Every boot registers the custom tool (an idempotent upsert).
                if service.tools.upsert_record(support::probe_tool()).await.is_err() {
                    handle.crash_node(0);
                    return;
                }
                // As `kelpie serve` starts: runs left in flight are ended
                // before requests are served (a failure leaves them to
                // their agents' next command).
                let _ = service.runs.recover().await;
                *slot.lock().unwrap() = Some(Boot { service: Arc::new(service), number: boot });
                // The process runs until the node crashes.
                futures::future::pending::<()>().await;
                drop(process);
            }
        });
    }
    let outcome = Arc::new(Mutex::new(None));
    let mut client = Client {
        node: sim.node(0).clone(),
        handle: sim.handle(),
        slot: Arc::clone(&slot),
        rng: DeterministicRng::new(seed).fork("client"),
        ledger: Ledger::default(),
        next_text: 0,
    };
    let result = Arc::clone(&outcome);
    sim.spawn_control("client", async move {
        let mut seen = Seen::default();
        let run = async {
            for _ in 0..OPERATIONS_COUNT {
                client.operation(&mut seen).await?;
                client.check().await?;
            }
            seen.acked_turns = client.ledger.acked.len();
            seen.streamed_acked = client.ledger.streamed_acked;
            Ok::<(), Violation>(())
        };
        let ran = run.await;
        // Let the last boot stop cleanly before the simulation ends.
        let last = client.slot.lock().unwrap().take();
        if let Some(boot) = last {
            client.on_node(async move { boot.service.shutdown().await }).await;
        }
        *result.lock().unwrap() = Some(ran.map(|()| seen));
    });
    let mut sim = sim;
    let report = sim.run_until_idle(Duration::from_secs(SIM_LIMIT_SECS));
    let boots_count = boots.load(std::sync::atomic::Ordering::SeqCst);
    let streams_cut = sim.fault_count(FaultKind::LlmStreamCut);
    let sandbox_faults: u64 = [
        FaultKind::SandboxBootFailure,
        FaultKind::SandboxCrash,
        FaultKind::SandboxExecFailure,
        FaultKind::SandboxExecTimeout,
    ]
    .into_iter()
    .map(|kind| sim.fault_count(kind))
    .sum();
    let result = match report {
        Err(failure) => violation("Simulation", format!("{failure:?}")),
        Ok(_) => outcome.lock().unwrap().take().unwrap_or_else(|| {
            violation(
                "ShutdownAnswersEveryRequest",
                "the client never finished: a request never answered".into(),
            )
        }),
    };
    (
        result.map(|mut seen| {
            seen.boots = boots_count;
            seen.streams_cut = streams_cut;
            seen.sandbox_faults = sandbox_faults;
            seen
        }),
        boots_count,
    )
}

#[test]
fn the_service_keeps_every_invariant_through_faults_crashes_and_shutdowns() {
    let mut totals = Seen::default();
    for seed in seeds_to_run(0..SEEDS_COUNT).unwrap() {
        let (result, _) = run_seed(seed, None);
        match result {
            Ok(seen) => {
                totals.acked_turns += seen.acked_turns;
                totals.boots += seen.boots;
                totals.shutdowns += seen.shutdowns;
                totals.searches += seen.searches;
                totals.streamed += seen.streamed;
                totals.streamed_acked += seen.streamed_acked;
                totals.streams_cut += seen.streams_cut;
                totals.sandbox_faults += seen.sandbox_faults;
            }
            Err(broken) => panic!(
                "seed {seed}: {} violated: {}\nreplay: {}",
                broken.invariant,
                broken.detail,
                replay_command(seed)
            ),
        }
    }
    println!("over the sweep: {totals:?}");
    if std::env::var(kelpie_dst::DST_SEED_ENV).is_err() {
        assert!(totals.acked_turns > 1_000, "turns were answered: {totals:?}");
        assert!(totals.boots > 2 * SEEDS_COUNT, "restarts were exercised: {totals:?}");
        assert!(totals.shutdowns > 100 && totals.searches > 500, "{totals:?}");
        assert!(
            totals.streams_cut > 50 && totals.streamed_acked > 500,
            "streams were cut and answered: {totals:?}"
        );
        assert!(totals.sandbox_faults > 50, "sandboxed tools failed: {totals:?}");
    }
}

/// The first seed of the sweep whose run breaks an invariant with `bug`
/// planted, and the invariant it broke.
fn first_catch(bug: Bug) -> (u64, Violation) {
    for seed in 0..SEEDS_COUNT {
        if let (Err(broken), _) = run_seed(seed, Some(bug)) {
            return (seed, broken);
        }
    }
    panic!("{bug:?} was not caught in {SEEDS_COUNT} seeds");
}

fn assert_caught(bug: Bug, invariant: &str) {
    let (seed, broken) = first_catch(bug);
    println!("{bug:?} caught at seed {seed}: {}: {}", broken.invariant, broken.detail);
    assert_eq!(broken.invariant, invariant, "{bug:?} at seed {seed}: {}", broken.detail);
}

#[test]
fn a_create_that_ignores_its_key_is_caught_as_a_duplicate_agent() {
    assert_caught(Bug::Service(PlantedBug::CreateIgnoresIdempotencyKey), "NoDuplicateAgents");
}

#[test]
fn a_create_answered_before_its_commit_is_caught_as_a_lost_agent() {
    assert_caught(Bug::Service(PlantedBug::CreateAnswersBeforeCommit), "CreatedAgentRetrievable");
}

#[test]
fn a_turn_that_forgets_its_key_is_caught_as_a_message_stored_twice() {
    assert_caught(Bug::Service(PlantedBug::TurnIgnoresIdempotencyKey), "AgentDataIntact");
}

#[test]
fn archival_rows_shared_between_agents_are_caught_by_search_isolation() {
    assert_caught(Bug::Backend(BackendBug::ArchivalKeysShared), "SearchIsolation");
}

#[test]
fn a_turn_stopped_by_shutdown_that_never_answers_is_caught() {
    assert_caught(Bug::Service(PlantedBug::StoppedTurnNeverAnswers), "ShutdownAnswersEveryRequest");
}

#[test]
fn skipping_the_recovery_of_stale_runs_is_caught() {
    assert_caught(Bug::Service(PlantedBug::SkipStaleRunRecovery), "NoRunRunningPastRecovery");
}

#[test]
fn agents_serving_after_shutdown_are_caught() {
    assert_caught(Bug::Service(PlantedBug::ShutdownLeavesAgentsServing), "ShutdownAnswersEveryRequest");
}
