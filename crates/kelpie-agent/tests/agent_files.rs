//! Agent files with several agents, groups and conversations, through the
//! agent service over a real redb file: a Letta file of three agents
//! sharing a block, in a round robin and a supervisor group, checked value
//! by value after import; files that fail before or while their agents
//! appear leave nothing visible; a file past `AGENT_FILE_AGENTS_COUNT_MAX`
//! is refused; an export of an agent with two conversations imports with
//! both, their summaries, messages and windows; a group manager's export
//! round-trips every agent's passages, working memory and conversations;
//! a Letta file's source becomes a folder of processed, searchable files
//! attached to its agents and its MCP server a record whose tools the
//! agents get; a file that cannot be imported whole, or fails at its
//! decision, leaves no folder or MCP server behind, and one killed before
//! its decision leaves them to the reclaimer, which deletes them once
//! their lease is out; an MCP server of the file's name here takes the
//! file's config with the decision, kill or not.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use kelpie_agent::actors::folder_store::{FOLDERS_COUNT_MAX, FOLDER_NAME_BYTES_MAX};
use kelpie_agent::actors::reclaim::{MadeKind, PendingKind};
use kelpie_agent::actors::tool_store::McpServerRecord;
use kelpie_agent::letta_af::{AGENT_FILE_AGENTS_COUNT_MAX, AGENT_FILE_SOURCES_COUNT_MAX};
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_agent::page::Page;
use kelpie_agent::requests::{CreateAgent, CreatePassage, SummarizeRequest, UpdateBlock};
use kelpie_agent::service::conversations::{ConversationInput, ConversationOrder, ConversationQuery, Target};
use kelpie_agent::service::folders::FolderInput;
use kelpie_agent::service::groups::GroupFilter;
use kelpie_agent::service::mcp_clients::{McpConnector, McpFuture};
use kelpie_agent::service::reclaim::IMPORT_LEASE_MS;
use kelpie_agent::service::runs::TurnInput;
use kelpie_agent::service::transfer::ImportOptions;
use kelpie_agent::{AgentService, ServiceError};
use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_core::env::{BoxFuture, Clock, TokioClock};
use kelpie_core::{ActorId, Env, NodeId, Result as CoreResult};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::fake::FakeLlm;
use kelpie_llm::LlmClients;
use kelpie_runtime::RuntimeConfig;
use kelpie_sandbox::unsandboxed::UnsandboxedBackend;
use kelpie_storage::types::{CommitRequest, StoredRows};
use kelpie_storage::{
    Backend, BoxFut, ClaimOutcome, CommitInfo, Placement as StoredPlacement, RedbBackend, ScanPage, Storage,
    Versioned,
};
use kelpie_tools::mcp::{McpCallResult, McpError, McpTool};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::{json, Value};

fn service(storage: &Storage, dir: &std::path::Path, llm_base_url: &str) -> AgentService {
    service_at(storage, dir, llm_base_url, 0)
}

/// The clock of a process started `ahead_ms` from now: past the leases of
/// the imports of a process killed before it.
struct AheadClock {
    inner: TokioClock,
    ahead_ms: u64,
}

impl Clock for AheadClock {
    fn monotonic_ns(&self) -> u64 {
        self.inner.monotonic_ns()
    }

    fn wall_ms(&self) -> u64 {
        self.inner.wall_ms() + self.ahead_ms
    }

    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<()> {
        self.inner.sleep(duration)
    }
}

/// [`service`] in a process whose wall clock is `ahead_ms` ahead.
fn service_at(storage: &Storage, dir: &std::path::Path, llm_base_url: &str, ahead_ms: u64) -> AgentService {
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("test".into());
    layers.set("llm.openai_base_url", llm_base_url, flag.clone()).unwrap();
    layers.set("llm.default_model", "openai-proxy/fake-gpt", flag).unwrap();
    let llm_config = layers.resolve().unwrap().llm;
    let llm = LlmClients::from_config(&llm_config).unwrap();
    let catalog = ModelCatalog::new(llm_config, llm.clone());
    let runner = ToolRunner::new(
        std::sync::Arc::new(UnsandboxedBackend::open(dir.join("run"))),
        RunnerSettings::new("/usr/bin/python3", dir.join("pip")),
    );
    let mut env = Env::production();
    env.clock = Arc::new(AheadClock { inner: TokioClock::new(), ahead_ms });
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    let runtimes = agent_runtimes(storage, &Placement::Local, &env, &config).unwrap();
    AgentService::new(runtimes, env, std::sync::Arc::new(llm), catalog, std::sync::Arc::new(runner))
}

const SHOUT: &str = "def shout(text: str) -> str:\n    \"\"\"Says text loudly.\n\n    Args:\n        text: what to say\n    \"\"\"\n    return text.upper()\n";

fn text(content: &str) -> Value {
    json!([{"type": "text", "text": content}])
}

/// Agent `n` of a Letta file: the shared `human` block, a persona of its
/// own, the shared custom tool, and two messages of its own.
fn letta_agent(n: usize, name: &str) -> Value {
    json!({
        "id": format!("agent-{n}"), "name": name, "system": format!("You are {name}."),
        "agent_type": "letta_v1_agent", "block_ids": ["block-0", format!("block-{}", n + 1)],
        "tool_ids": ["tool-0"], "tool_rules": [], "tags": [format!("team-{n}")],
        "description": format!("member {n}"), "metadata": {"n": n},
        "llm_config": {"model": "fake-gpt", "model_endpoint_type": "openai", "context_window": 32000,
                       "handle": "openai-proxy/fake-gpt"},
        "embedding_config": {"handle": "local/hash-embedding"},
        "messages": [
            {"id": format!("message-{}", 2 * n), "role": "user", "content": text(&format!("hello {name}")),
             "created_at": "2025-01-01T00:00:00Z"},
            {"id": format!("message-{}", 2 * n + 1), "role": "assistant",
             "content": text(&format!("{name} here")), "created_at": "2025-01-01T00:00:01Z"},
        ],
        "in_context_message_ids": [format!("message-{}", 2 * n), format!("message-{}", 2 * n + 1)],
    })
}

/// A Letta file: three agents sharing `block-0`, a round robin group of
/// all three and a supervisor group agent-0 manages over the other two.
fn three_agent_file() -> Value {
    let names = ["ada", "bob", "cy"];
    json!({
        "agents": names.iter().enumerate().map(|(n, name)| letta_agent(n, name)).collect::<Vec<_>>(),
        "groups": [
            {"id": "group-0", "agent_ids": ["agent-0", "agent-1", "agent-2"], "description": "everyone",
             "manager_config": {"manager_type": "round_robin", "max_turns": 3}, "shared_block_ids": []},
            {"id": "group-1", "agent_ids": ["agent-1", "agent-2"], "description": "ada leads",
             "manager_config": {"manager_type": "supervisor", "manager_agent_id": "agent-0"},
             "shared_block_ids": []},
        ],
        "blocks": [
            {"id": "block-0", "label": "human", "value": "The team's user.", "limit": 5000},
            {"id": "block-1", "label": "persona", "value": "I am ada.", "limit": 5000},
            {"id": "block-2", "label": "persona", "value": "I am bob.", "limit": 5000},
            {"id": "block-3", "label": "persona", "value": "I am cy.", "limit": 5000, "read_only": true},
        ],
        "tools": [{"id": "tool-0", "name": "shout", "tool_type": "custom", "source_type": "python",
                   "source_code": SHOUT, "description": "Says text loudly.",
                   "json_schema": {"name": "shout", "description": "Says text loudly.",
                                   "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                                  "required": ["text"]}}}],
        "files": [], "sources": [], "mcp_servers": [], "metadata": {}, "created_at": "2025-01-01T00:00:00Z",
    })
}

fn everything() -> Page {
    Page { before: None, after: None, limit: 1000, descending: false }
}

fn no_suffix() -> ImportOptions {
    ImportOptions { append_copy_suffix: false, ..ImportOptions::default() }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|item| item.as_str().unwrap().to_string()).collect()
}

/// `(message_type, content)` of each message.
fn said(messages: &[Value]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|m| (m["message_type"].as_str().unwrap().into(), m["content"].as_str().unwrap_or("").into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_a_shared_block_and_two_groups_import_with_every_reference_remapped() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    let file = serde_json::to_vec(&three_agent_file()).unwrap();
    let answer = service.transfer.import_bytes(&file, no_suffix()).await.unwrap();
    let ids = strings(&answer["agent_ids"]);
    assert_eq!(ids.len(), 3, "{answer}");
    let mut agents = Vec::new();
    for id in &ids {
        assert!(id.starts_with("agent-") && id.len() > "agent-2".len(), "a new id: {id}");
        agents.push(service.agents.get(id).await.unwrap());
    }
    // File order, every field the file gave.
    for (n, (agent, name)) in agents.iter().zip(["ada", "bob", "cy"]).enumerate() {
        assert_eq!(agent["name"], name);
        assert_eq!(agent["system"], format!("You are {name}."));
        assert_eq!(agent["description"], format!("member {n}"));
        assert_eq!(agent["tags"], json!([format!("team-{n}")]));
        let blocks = agent["blocks"].as_array().unwrap();
        let labels: Vec<&str> = blocks.iter().map(|b| b["label"].as_str().unwrap()).collect();
        assert_eq!(labels, vec!["human", "persona"]);
        assert_eq!(blocks[0]["value"], "The team's user.");
        assert_eq!(blocks[1]["value"], format!("I am {name}."));
        assert_eq!(blocks[1]["read_only"], n == 2);
        let tools: Vec<&str> =
            agent["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(tools, vec!["shout"]);
        let messages = service.agents.list_messages(&ids[n], &everything()).await.unwrap();
        assert_eq!(
            said(&messages),
            vec![
                ("user_message".to_string(), format!("hello {name}")),
                ("assistant_message".to_string(), format!("{name} here")),
            ]
        );
        for message in &messages {
            let id = message["id"].as_str().unwrap();
            assert!(
                id.starts_with("message-") && id.len() > "message-10".len(),
                "a new message id: {message}"
            );
        }
    }
    // One custom tool for the three, not one each.
    let tool_ids: Vec<&Value> = agents.iter().map(|agent| &agent["tools"][0]["id"]).collect();
    assert!(tool_ids.iter().all(|id| *id == tool_ids[0]), "{tool_ids:?}");
    // The human block is one shared block: same id in the three, listed, linked to all.
    let human: Vec<String> =
        agents.iter().map(|a| a["blocks"][0]["id"].as_str().unwrap().to_string()).collect();
    assert!(human.iter().all(|id| *id == human[0]) && human[0] != "block-0", "{human:?}");
    let personas: Vec<&Value> = agents.iter().map(|a| &a["blocks"][1]["id"]).collect();
    assert!(personas[0] != personas[1] && personas[1] != personas[2], "{personas:?}");
    let shared = service.blocks.list(None, &everything()).await.unwrap();
    assert_eq!(shared.len(), 1, "only the shared block is standalone: {shared:?}");
    assert_eq!(
        (shared[0]["id"].as_str(), shared[0]["value"].as_str()),
        (Some(human[0].as_str()), Some("The team's user."))
    );
    let holders: Vec<String> = service
        .blocks
        .agents(&human[0], &everything())
        .await
        .unwrap()
        .iter()
        .map(|agent| agent["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(holders, ids);
    // It stays shared: a change reaches every agent.
    let update = UpdateBlock { value: Some("Likes tea.".into()), ..UpdateBlock::default() };
    service.blocks.update(&human[0], update).await.unwrap();
    for id in &ids {
        assert_eq!(service.agents.get_block(id, "human").await.unwrap()["value"], "Likes tea.");
    }
    // The groups, their members and manager remapped to the new agents.
    let groups = service.groups.list(&GroupFilter::default(), &everything()).await.unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let round_robin = groups.iter().find(|g| g["manager_type"] == "round_robin").unwrap();
    assert_eq!(strings(&round_robin["agent_ids"]), ids);
    assert_eq!(
        (round_robin["description"].as_str(), round_robin["max_turns"].as_u64()),
        (Some("everyone"), Some(3))
    );
    assert_eq!(round_robin["manager_agent_id"], Value::Null);
    let supervisor = groups.iter().find(|g| g["manager_type"] == "supervisor").unwrap();
    assert_eq!(strings(&supervisor["agent_ids"]), ids[1..].to_vec());
    assert_eq!(supervisor["manager_agent_id"].as_str(), Some(ids[0].as_str()));
    assert_eq!(supervisor["description"], "ada leads");
    let of_bob = service.groups.of_agent(&ids[1], &GroupFilter::default(), &everything()).await.unwrap();
    assert_eq!(of_bob.len(), 2);
    // Three agents listed, nothing else.
    let listed = service.agents.list(None, &[], false, &everything()).await.unwrap();
    let mut listed: Vec<String> = listed.iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
    let mut expected = ids.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(service.reclaimer.pending().await.unwrap().is_empty(), "an import that finished leaves no entry");
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_fails_before_or_while_its_agents_appear_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    // The third agent's name is blank: refused once the first two are written.
    let mut invalid = three_agent_file();
    invalid["agents"][2]["name"] = json!("   ");
    let file = serde_json::to_vec(&invalid).unwrap();
    match service.transfer.import_bytes(&file, no_suffix()).await {
        Err(ServiceError::Invalid(why)) => assert!(why.contains("name"), "{why}"),
        other => panic!("a blank name: {other:?}"),
    }
    // A group the agents cannot join (its shared block's label is one they
    // hold already): refused once all are written, before any appears.
    let mut clash = three_agent_file();
    clash["blocks"].as_array_mut().unwrap().push(json!({"id": "block-4", "label": "human", "value": "x"}));
    clash["groups"][0]["shared_block_ids"] = json!(["block-4"]);
    let file = serde_json::to_vec(&clash).unwrap();
    match service.transfer.import_bytes(&file, no_suffix()).await {
        Err(ServiceError::Invalid(why)) => {
            assert!(why.contains("already has a block labelled \"human\""), "{why}")
        }
        other => panic!("a clashing shared block: {other:?}"),
    }
    // Nothing of either is listed, found or left in the stores.
    assert_eq!(service.agents.list(None, &[], false, &everything()).await.unwrap(), Vec::<Value>::new());
    assert_eq!(
        service.groups.list(&GroupFilter::default(), &everything()).await.unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(service.blocks.list(None, &everything()).await.unwrap(), Vec::<Value>::new());
    let pending = service.reclaimer.pending().await.unwrap();
    assert_eq!(pending.len(), 2 + 3, "two written agents, then three, all to reclaim: {pending:?}");
    for entry in &pending {
        match service.agents.get(&entry.agent_id).await {
            Err(ServiceError::AgentNotFound(id)) => assert_eq!(id, entry.agent_id),
            other => panic!("agent {} of a failed import: {other:?}", entry.agent_id),
        }
    }
    service.reclaimer.run_once().await.unwrap();
    assert!(service.reclaimer.pending().await.unwrap().is_empty());
    // The same file, fixed, imports whole.
    let file = serde_json::to_vec(&three_agent_file()).unwrap();
    let answer = service.transfer.import_bytes(&file, no_suffix()).await.unwrap();
    assert_eq!(strings(&answer["agent_ids"]).len(), 3);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_past_the_agent_count_max_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    let mut file = three_agent_file();
    file["groups"] = json!([]);
    file["agents"] =
        (0..=AGENT_FILE_AGENTS_COUNT_MAX).map(|n| letta_agent(n % 3, &format!("a{n}"))).collect();
    for (n, agent) in file["agents"].as_array_mut().unwrap().iter_mut().enumerate() {
        agent["id"] = json!(format!("agent-{n}"));
        agent["messages"] = json!([]);
    }
    let bytes = serde_json::to_vec(&file).unwrap();
    match service.transfer.import_bytes(&bytes, no_suffix()).await {
        Err(ServiceError::Invalid(why)) => assert!(
            why.contains(&format!(
                "{} agents, over AGENT_FILE_AGENTS_COUNT_MAX = {AGENT_FILE_AGENTS_COUNT_MAX}",
                AGENT_FILE_AGENTS_COUNT_MAX + 1
            )),
            "{why}"
        ),
        other => panic!("past the max: {other:?}"),
    }
    assert!(service.reclaimer.pending().await.unwrap().is_empty(), "nothing was begun");
    // At the max it imports, every agent in file order.
    file["agents"].as_array_mut().unwrap().pop();
    let bytes = serde_json::to_vec(&file).unwrap();
    let answer = service.transfer.import_bytes(&bytes, no_suffix()).await.unwrap();
    let ids = strings(&answer["agent_ids"]);
    assert_eq!(ids.len(), AGENT_FILE_AGENTS_COUNT_MAX);
    for (n, id) in ids.iter().enumerate().step_by(33) {
        assert_eq!(service.agents.get(id).await.unwrap()["name"], format!("a{n}"));
    }
    service.shutdown().await;
}

fn query(agent_id: &str) -> ConversationQuery {
    ConversationQuery {
        agent_id: Some(agent_id.to_string()),
        after: None,
        limit: 100,
        summary_search: None,
        descending: false,
        order_by: ConversationOrder::CreatedAt,
    }
}

/// What a conversation is, without its ids: summary, model, messages,
/// in-context count, compaction summary.
async fn conversation_view(service: &AgentService, agent_id: &str, id: &str) -> Value {
    let located = service.conversations.locate(id).await.unwrap();
    assert_eq!(located.agent_id, agent_id);
    let messages = service.agents.list_history_messages((agent_id, Some(id)), &everything()).await.unwrap();
    json!({
        "summary": located.record.summary, "model": located.record.model,
        "messages": said(&messages).iter().map(|(kind, content)| format!("{kind}: {content}")).collect::<Vec<_>>(),
        "in_context": located.in_context.len(), "held": located.record.messages,
        "compaction": located.record.context.summary,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_and_import_keeps_two_conversations_with_their_messages_and_windows() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), &fake.base_url());
    let request = CreateAgent { name: Some("tutor".into()), ..CreateAgent::default() };
    let agent = service.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string();
    let mut originals = Vec::new();
    for (summary, turns) in [("algebra", 4), ("poetry", 2)] {
        let input = ConversationInput { summary: Some(summary.into()), ..ConversationInput::default() };
        let id =
            service.conversations.create(&agent, input).await.unwrap()["id"].as_str().unwrap().to_string();
        for i in 0..turns {
            let turn = TurnInput::Texts(vec![format!("{summary} {i}")]);
            service.runs.run_turn_in((&agent, Some(id.clone())), turn, None, None, None).await.unwrap();
        }
        originals.push(id);
    }
    // The first conversation's window is compacted: part of it is summarized.
    service
        .conversations
        .compact(&Target::Conversation(originals[0].clone()), SummarizeRequest::default())
        .await
        .unwrap();
    let mut before = Vec::new();
    for id in &originals {
        before.push(conversation_view(&service, &agent, id).await);
    }
    assert!(before[0]["compaction"].is_string(), "compacted: {}", before[0]);
    assert!(
        before[0]["in_context"].as_u64().unwrap() < before[0]["held"].as_u64().unwrap(),
        "the window lost messages: {}",
        before[0]
    );
    assert_eq!(before[1]["messages"].as_array().unwrap().len(), 4, "{}", before[1]);

    let exported = service.transfer.export_value(&agent).await.unwrap();
    assert_eq!(exported["kelpie_conversations"].as_array().unwrap().len(), 2);
    let file = serde_json::to_vec(&exported).unwrap();
    let answer = service.transfer.import_bytes(&file, ImportOptions::default()).await.unwrap();
    let copy = answer["agent_ids"][0].as_str().unwrap().to_string();
    assert_eq!(service.agents.get(&copy).await.unwrap()["name"], "tutor");
    let listed = service.conversations.list(query(&copy)).await.unwrap();
    let copies: Vec<String> = listed.iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(copies.len(), 2, "{listed:?}");
    for (copy_id, original) in copies.iter().zip(&originals) {
        assert!(copy_id.starts_with("conv-") && copy_id != original, "a new id: {copy_id}");
    }
    for (n, copy_id) in copies.iter().enumerate() {
        assert_eq!(conversation_view(&service, &copy, copy_id).await, before[n], "conversation {n}");
    }
    // The originals are untouched, and a file without conversations imports with none.
    assert_eq!(service.conversations.list(query(&agent)).await.unwrap().len(), 2);
    let mut without = exported.clone();
    without.as_object_mut().unwrap().retain(|key, _| !key.contains("conversations"));
    let answer = service
        .transfer
        .import_bytes(&serde_json::to_vec(&without).unwrap(), ImportOptions::default())
        .await
        .unwrap();
    let bare = answer["agent_ids"][0].as_str().unwrap();
    assert_eq!(service.conversations.list(query(bare)).await.unwrap(), Vec::<Value>::new());
    service.shutdown().await;
}

/// Where the process under [`DyingDisk`] dies, counted from the import's
/// decision.
#[derive(Debug, Clone, Copy)]
enum DeathAt {
    /// The decision's own commit fails: the import never decided.
    Decision,
    /// The decision's own commit fails once and the disk lives on: the
    /// import fails before its decision with everything else working.
    DecisionRefused,
    /// After the decision and `n` more commits of actors in `namespace`.
    After { namespace: &'static str, commits: usize },
}

/// The redb file under a process killed at `death`: from then on every
/// read and write fails, as for a process that is gone; what was
/// committed before stays in the file for the next process.
struct DyingDisk {
    inner: Arc<RedbBackend>,
    death: DeathAt,
    decided: AtomicBool,
    commits_left: AtomicUsize,
    dead: AtomicBool,
}

impl DyingDisk {
    fn new(inner: Arc<RedbBackend>, death: DeathAt) -> Self {
        let commits = match death {
            DeathAt::Decision | DeathAt::DecisionRefused => 0,
            DeathAt::After { commits, .. } => commits,
        };
        DyingDisk {
            inner,
            death,
            decided: AtomicBool::new(false),
            commits_left: AtomicUsize::new(commits),
            dead: AtomicBool::new(false),
        }
    }

    fn alive(&self) -> CoreResult<()> {
        match self.dead.load(Ordering::SeqCst) {
            false => Ok(()),
            true => Err(kelpie_core::Error::StorageIo { operation: "dying disk", reason: "killed".into() }),
        }
    }

    fn is_decision(request: &CommitRequest) -> bool {
        request.actor_id.namespace() == "reclaim"
            // The runtime keeps an actor's own keys under `u/`.
            && request.writes.iter().any(|(key, value)| key.starts_with(b"u/d/") && value.is_some())
    }

    fn die(&self) -> CoreResult<CommitInfo> {
        self.dead.store(true, Ordering::SeqCst);
        self.alive().map(|()| unreachable!("a dead disk answers errors"))
    }
}

impl Backend for DyingDisk {
    fn name(&self) -> &'static str {
        "dying-disk"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, CoreResult<Option<Versioned>>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.get(actor, key).await
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, CoreResult<StoredRows>> {
        Box::pin(async move {
            self.alive()?;
            self.inner.scan(actor, page).await
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, CoreResult<CommitInfo>> {
        Box::pin(async move {
            self.alive()?;
            let decision = Self::is_decision(&request);
            match self.death {
                DeathAt::Decision if decision => return self.die(),
                DeathAt::DecisionRefused if decision => {
                    let reason = "the decision's commit refused".into();
                    return Err(kelpie_core::Error::StorageIo { operation: "dying disk", reason });
                }
                DeathAt::After { namespace, .. }
                    if self.decided.load(Ordering::SeqCst)
                        && request.actor_id.namespace() == namespace
                        && !request.is_read_only() =>
                {
                    if self.commits_left.load(Ordering::SeqCst) == 0 {
                        return self.die();
                    }
                    self.commits_left.fetch_sub(1, Ordering::SeqCst);
                }
                _ => {}
            }
            let info = self.inner.commit(request).await?;
            if decision {
                self.decided.store(true, Ordering::SeqCst);
                if matches!(self.death, DeathAt::After { namespace: "reclaim", commits: 0 }) {
                    self.dead.store(true, Ordering::SeqCst);
                }
            }
            Ok(info)
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

/// The agents listed, by name, each with its id.
async fn listed_by_name(service: &AgentService) -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for agent in service.agents.list(None, &[], false, &everything()).await.unwrap() {
        let name = agent["name"].as_str().unwrap().to_string();
        by_name.entry(name).or_default().push(agent["id"].as_str().unwrap().to_string());
    }
    by_name
}

/// Checks the three agents of [`three_agent_file`] are there once each,
/// sharing one `human` block, in one round robin and one supervisor group.
async fn assert_three_agent_file_whole(service: &AgentService, death: DeathAt) {
    let listed = listed_by_name(service).await;
    let names: Vec<&str> = listed.keys().map(String::as_str).collect();
    assert_eq!(names, vec!["ada", "bob", "cy"], "{death:?}: {listed:?}");
    assert!(listed.values().all(|ids| ids.len() == 1), "{death:?}: each agent once: {listed:?}");
    let ids: Vec<String> = ["ada", "bob", "cy"].iter().map(|name| listed[*name][0].clone()).collect();
    let mut human = Vec::new();
    for (id, name) in ids.iter().zip(["ada", "bob", "cy"]) {
        let agent = service.agents.get(id).await.unwrap();
        assert_eq!(agent["blocks"][0]["label"], "human", "{death:?}");
        human.push(agent["blocks"][0]["id"].as_str().unwrap().to_string());
        let messages = service.agents.list_messages(id, &everything()).await.unwrap();
        assert_eq!(said(&messages).len(), 2, "{death:?}: {name}'s two messages");
    }
    assert!(human.iter().all(|id| *id == human[0]), "{death:?}: one shared block: {human:?}");
    let shared = service.blocks.list(None, &everything()).await.unwrap();
    assert_eq!(shared.len(), 1, "{death:?}: the shared block once: {shared:?}");
    let holders = service.blocks.agents(&human[0], &everything()).await.unwrap();
    let mut holders: Vec<&str> = holders.iter().map(|agent| agent["id"].as_str().unwrap()).collect();
    holders.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(holders, expected, "{death:?}: the shared block is attached to each");
    let groups = service.groups.list(&GroupFilter::default(), &everything()).await.unwrap();
    assert_eq!(groups.len(), 2, "{death:?}: each group once: {groups:?}");
    let round_robin = groups.iter().find(|g| g["manager_type"] == "round_robin").unwrap();
    assert_eq!(strings(&round_robin["agent_ids"]), ids, "{death:?}");
    let supervisor = groups.iter().find(|g| g["manager_type"] == "supervisor").unwrap();
    assert_eq!(strings(&supervisor["agent_ids"]), ids[1..].to_vec(), "{death:?}");
    assert_eq!(supervisor["manager_agent_id"].as_str(), Some(ids[0].as_str()), "{death:?}");
    // The manager knows its group: its export carries it.
    let exported = service.transfer.export_value(&ids[0]).await.unwrap();
    assert_eq!(exported["groups"][0]["manager_config"]["manager_type"], "supervisor", "{death:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_after_its_decision_appears_whole_and_once_after_the_restart() {
    let deaths = [
        DeathAt::After { namespace: "reclaim", commits: 0 },
        DeathAt::After { namespace: "agents", commits: 1 },
        DeathAt::After { namespace: "agents", commits: 2 },
        DeathAt::After { namespace: "agent-directory", commits: 2 },
        DeathAt::After { namespace: "block-store", commits: 0 },
        DeathAt::After { namespace: "group-store", commits: 1 },
    ];
    for death in deaths {
        let dir = tempfile::tempdir().unwrap();
        let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
        let dying = Storage::from_backend(Arc::new(DyingDisk::new(Arc::clone(&redb), death)));
        let killed = service(&dying, dir.path(), "http://127.0.0.1:9/v1");
        let file = serde_json::to_vec(&three_agent_file()).unwrap();
        let outcome = killed.transfer.import_bytes(&file, no_suffix()).await;
        assert!(outcome.is_err(), "{death:?}: the process died under the import: {outcome:?}");
        killed.shutdown().await;
        drop(killed);

        let storage = Storage::from_backend(Arc::clone(&redb) as Arc<dyn Backend>);
        let restarted = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
        assert_eq!(restarted.decided_imports.run_once().await.unwrap(), 1, "{death:?}: one decided import");
        assert_three_agent_file_whole(&restarted, death).await;
        // Done once: another pass finds nothing, and nothing is left to reclaim.
        assert_eq!(restarted.decided_imports.run_once().await.unwrap(), 0, "{death:?}");
        assert_three_agent_file_whole(&restarted, death).await;
        assert_eq!(restarted.reclaimer.pending().await.unwrap(), Vec::new(), "{death:?}");
        restarted.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_before_its_decision_shows_nothing_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let dying = Storage::from_backend(Arc::new(DyingDisk::new(Arc::clone(&redb), DeathAt::Decision)));
    let killed = service(&dying, dir.path(), "http://127.0.0.1:9/v1");
    let file = serde_json::to_vec(&three_agent_file()).unwrap();
    assert!(killed.transfer.import_bytes(&file, no_suffix()).await.is_err());
    killed.shutdown().await;
    drop(killed);

    let storage = Storage::from_backend(Arc::clone(&redb) as Arc<dyn Backend>);
    let restarted = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    assert_eq!(restarted.decided_imports.run_once().await.unwrap(), 0, "nothing was decided");
    assert_eq!(listed_by_name(&restarted).await, BTreeMap::new());
    assert_eq!(
        restarted.groups.list(&GroupFilter::default(), &everything()).await.unwrap(),
        Vec::<Value>::new()
    );
    assert_eq!(restarted.blocks.list(None, &everything()).await.unwrap(), Vec::<Value>::new());
    // The three written agents wait on the reclaim list, invisible, as any
    // import that never decided.
    let pending = restarted.reclaimer.pending().await.unwrap();
    assert_eq!(pending.len(), 3, "{pending:?}");
    for entry in &pending {
        assert!(matches!(entry.kind, PendingKind::Import { .. }), "{entry:?}");
        match restarted.agents.get(&entry.agent_id).await {
            Err(ServiceError::AgentNotFound(id)) => assert_eq!(id, entry.agent_id),
            other => panic!("agent {} of an undecided import: {other:?}", entry.agent_id),
        }
    }
    restarted.shutdown().await;
}

/// What an agent holds besides its blocks: messages, passages (text and
/// tags), and each conversation's summary and messages, without ids.
async fn held(service: &AgentService, id: &str) -> Value {
    let messages = said(&service.agents.list_messages(id, &everything()).await.unwrap());
    let passages = service.archival.list(id, &everything()).await.unwrap();
    let passages: Vec<Value> = passages.iter().map(|p| json!([p["text"], p["tags"]])).collect();
    let mut conversations = Vec::new();
    for conversation in service.conversations.list(query(id)).await.unwrap() {
        let id_of = conversation["id"].as_str().unwrap();
        let view = conversation_view(service, id, id_of).await;
        conversations.push(json!([view["summary"], view["messages"], view["in_context"]]));
    }
    json!({"messages": messages, "passages": passages, "conversations": conversations})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisors_export_carries_its_group_and_members_and_imports_as_a_new_group() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeLlm::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), &fake.base_url());
    let file = serde_json::to_vec(&three_agent_file()).unwrap();
    let ids = strings(&service.transfer.import_bytes(&file, no_suffix()).await.unwrap()["agent_ids"]);
    // Kelpie's state of the manager and of each member: passages on ada
    // and bob, a conversation with two turns on cy, one without on bob.
    for (agent, text) in [(0, "ada keeps the plan"), (1, "bob knows the numbers"), (1, "bob's second note")] {
        let passage = CreatePassage { text: text.into(), tags: Some(vec![format!("from-{agent}")]) };
        service.archival.insert(&ids[agent], passage).await.unwrap();
    }
    for (agent, summary, turns) in [(2, "cy's errand", 2), (1, "bob idle", 0)] {
        let input = ConversationInput { summary: Some(summary.into()), ..ConversationInput::default() };
        let created = service.conversations.create(&ids[agent], input).await.unwrap();
        let conversation = created["id"].as_str().unwrap().to_string();
        for turn in 0..turns {
            let input = TurnInput::Texts(vec![format!("{summary} {turn}")]);
            let target = (ids[agent].as_str(), Some(conversation.clone()));
            service.runs.run_turn_in(target, input, None, None, None).await.unwrap();
        }
    }
    // ada manages the supervisor group over bob and cy; all three are in a
    // round robin, which no agent manages.
    let mut raw = Vec::new();
    let mut export = service.transfer.export(&ids[0]).await.unwrap();
    while let Some(chunk) = export.next_chunk().await.unwrap() {
        raw.extend(chunk);
    }
    let exported: Value = serde_json::from_slice(&raw).unwrap();
    let agents = exported["agents"].as_array().unwrap();
    let names: Vec<&str> = agents.iter().map(|agent| agent["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["ada", "bob", "cy"]);
    let file_ids: Vec<&str> = agents.iter().map(|agent| agent["id"].as_str().unwrap()).collect();
    assert_eq!(file_ids, vec!["agent-0", "agent-1", "agent-2"]);
    assert_eq!(
        exported["groups"],
        json!([{"id": "group-0", "agent_ids": ["agent-1", "agent-2"], "description": "ada leads",
                "manager_config": {"manager_type": "supervisor", "manager_agent_id": "agent-0"},
                "project_id": null, "shared_block_ids": [], "hidden": null}])
    );
    // The shared human block is one block of the file, named by all three.
    let blocks = exported["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 4, "human and three personas: {blocks:?}");
    for agent in agents {
        assert_eq!(agent["block_ids"][0], "block-0");
        assert_eq!(agent["group_ids"], json!(["group-0"]));
        let messages = agent["messages"].as_array().unwrap();
        assert!(messages.len() >= 2, "{messages:?}");
        assert!(messages.iter().all(|message| message["agent_id"] == agent["id"]));
    }
    assert_eq!(exported["tools"].as_array().unwrap().len(), 1, "the shared custom tool once");
    // Kelpie's part holds every agent: the manager under the plain keys,
    // each member keyed by its id in the file, and the group by this
    // server's ids.
    assert_eq!(exported["kelpie_agent_file_version"], 1);
    assert_eq!(exported["kelpie_agent"]["id"].as_str(), Some(ids[0].as_str()));
    for n in 1..3 {
        assert_eq!(exported[format!("kelpie_agent@agent-{n}")]["id"].as_str(), Some(ids[n].as_str()));
    }
    assert_eq!(exported["kelpie_passages"].as_array().unwrap().len(), 1);
    assert_eq!(exported["kelpie_passages@agent-1"].as_array().unwrap().len(), 2);
    assert_eq!(exported["kelpie_conversations@agent-1"].as_array().unwrap().len(), 1);
    // Two turns: each a user message, the assistant's tool call and its result (the
    // conversation view shows the user and assistant messages of each).
    assert_eq!(exported["kelpie_messages_of_conversations@agent-2"].as_array().unwrap().len(), 6);
    let kelpie_groups = exported["kelpie_groups"].as_array().unwrap();
    assert_eq!(kelpie_groups.len(), 1);
    assert_eq!(kelpie_groups[0]["agent_ids"], json!(ids[1..]));
    assert_eq!(kelpie_groups[0]["manager_config"]["manager_agent_id"].as_str(), Some(ids[0].as_str()));
    // A member's export is the member alone, as Letta's, with no group.
    let bob = service.transfer.export_value(&ids[1]).await.unwrap();
    assert_eq!((bob["agents"].as_array().unwrap().len(), &bob["groups"]), (1, &json!([])));
    assert!(bob.get("kelpie_groups").is_none() && bob.get("kelpie_agent@agent-1").is_none());

    // cy's copy must keep a working-memory entry its record carries.
    let mut with_working = exported.clone();
    let cy_record = &mut with_working["kelpie_agent@agent-2"];
    let mut working: kelpie_memory::WorkingMemory =
        serde_json::from_value(cy_record["working"].clone()).unwrap();
    let now = Env::production().clock.wall_ms();
    working.put("errand", "buy stamps".into(), 3_600_000, now).unwrap();
    cy_record["working"] = serde_json::to_value(&working).unwrap();

    // Imported back, as written (the parts in export order) and
    // re-serialized (keys sorted: every member's parts interleaved): three
    // new agents each time, with every agent's state, and a new supervisor
    // group over the new members.
    let sorted = serde_json::to_vec(&with_working).unwrap();
    let mut groups_before = service.groups.list(&GroupFilter::default(), &everything()).await.unwrap().len();
    for bytes in [raw.clone(), sorted] {
        let answer = service.transfer.import_bytes(&bytes, ImportOptions::default()).await.unwrap();
        assert!(answer.get("warnings").is_none(), "{answer}");
        let copies = strings(&answer["agent_ids"]);
        assert_eq!(copies.len(), 3);
        assert!(copies.iter().all(|copy| !ids.contains(copy)), "new agents: {copies:?}");
        for (copy, original) in copies.iter().zip(&ids) {
            let copy_agent = service.agents.get(copy).await.unwrap();
            let original_agent = service.agents.get(original).await.unwrap();
            assert_eq!(copy_agent["name"], original_agent["name"]);
            let values = |agent: &Value| -> Vec<(Value, Value)> {
                let blocks = agent["blocks"].as_array().unwrap();
                blocks.iter().map(|block| (block["label"].clone(), block["value"].clone())).collect()
            };
            assert_eq!(values(&copy_agent), values(&original_agent));
            assert_eq!(held(&service, copy).await, held(&service, original).await, "{original_agent}");
        }
        assert_eq!(held(&service, &copies[1]).await["passages"].as_array().unwrap().len(), 2);
        let errand = &held(&service, &copies[2]).await["conversations"][0];
        assert_eq!((&errand[0], errand[1].as_array().unwrap().len()), (&json!("cy's errand"), 4), "{errand}");
        // The human block the three hold is one block of the copies, shared.
        let human_of = |agent: &Value| -> Value {
            agent["blocks"].as_array().unwrap().iter().find(|b| b["label"] == "human").unwrap()["id"].clone()
        };
        let humans: Vec<Value> = {
            let mut humans = Vec::new();
            for copy in &copies {
                humans.push(human_of(&service.agents.get(copy).await.unwrap()));
            }
            humans
        };
        assert!(humans.iter().all(|human| human == &humans[0]), "{humans:?}");
        let groups = service.groups.list(&GroupFilter::default(), &everything()).await.unwrap();
        let new_supervisor = groups
            .iter()
            .find(|group| group["manager_agent_id"].as_str() == Some(copies[0].as_str()))
            .expect("a new supervisor group managed by ada's copy");
        assert_eq!(new_supervisor["manager_type"], "supervisor");
        assert_eq!(new_supervisor["description"], "ada leads");
        assert_eq!(strings(&new_supervisor["agent_ids"]), copies[1..].to_vec());
        groups_before += 1;
        assert_eq!(groups.len(), groups_before, "one group more: {groups:?}");
        // The copy's export carries the working-memory entry (second file only).
        let again = service.transfer.export_value(&copies[0]).await.unwrap();
        let cy_working = again["kelpie_agent@agent-2"]["working"].clone();
        let working: kelpie_memory::WorkingMemory = serde_json::from_value(cy_working).unwrap();
        let expected = (groups_before == 4).then_some("buy stamps");
        assert_eq!(working.get("errand", Env::production().clock.wall_ms()), expected);
    }
    // A manager's file without Kelpie's part (as this server wrote them
    // before, or as Letta writes them) still imports through Letta's.
    let mut letta_only = exported.clone();
    letta_only.as_object_mut().unwrap().retain(|key, _| !key.starts_with("kelpie_"));
    let answer =
        service.transfer.import_bytes(&serde_json::to_vec(&letta_only).unwrap(), no_suffix()).await.unwrap();
    let copies = strings(&answer["agent_ids"]);
    assert_eq!(copies.len(), 3);
    assert_eq!(service.archival.list(&copies[1], &everything()).await.unwrap(), Vec::<Value>::new());
    let groups = service.groups.list(&GroupFilter::default(), &everything()).await.unwrap();
    assert!(groups.iter().any(|group| group["manager_agent_id"].as_str() == Some(copies[0].as_str())));
    service.shutdown().await;
}

/// A Kelpie file of several agents whose parts name an agent the file does
/// not hold, or one twice, is refused with the reason and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managers_file_with_broken_member_parts_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    let file = serde_json::to_vec(&three_agent_file()).unwrap();
    let ids = strings(&service.transfer.import_bytes(&file, no_suffix()).await.unwrap()["agent_ids"]);
    let exported = service.transfer.export_value(&ids[0]).await.unwrap();
    let before = listed_by_name(&service).await;
    let mut orphan = exported.clone();
    orphan.as_object_mut().unwrap().remove("kelpie_agent@agent-2");
    let mut bad_key = exported.clone();
    let cy = bad_key.as_object_mut().unwrap().remove("kelpie_agent@agent-2").unwrap();
    bad_key["kelpie_agent@cy"] = cy;
    let mut twice = exported.clone();
    twice["kelpie_agent@agent-3"] = exported["kelpie_agent@agent-1"].clone();
    let mut far = exported.clone();
    let cy = far.as_object_mut().unwrap().remove("kelpie_agent@agent-2").unwrap();
    far[format!("kelpie_agent@agent-{AGENT_FILE_AGENTS_COUNT_MAX}")] = cy;
    for (file, why) in [
        (orphan, "of agent-2 before its agent".to_string()),
        (bad_key, "agent key \"cy\" is not agent-<n>".to_string()),
        (twice, format!("agent {} twice", ids[1])),
        (far, format!("1 <= n < AGENT_FILE_AGENTS_COUNT_MAX = {AGENT_FILE_AGENTS_COUNT_MAX}")),
    ] {
        let bytes = serde_json::to_vec(&file).unwrap();
        let outcome = service.transfer.import_bytes(&bytes, ImportOptions::default()).await;
        let err = outcome.expect_err(&why);
        assert!(matches!(&err, ServiceError::Invalid(reason) if reason.contains(&why)), "{why}: {err:?}");
        assert_eq!(listed_by_name(&service).await, before, "{why}");
    }
    service.shutdown().await;
}

/// [`three_agent_file`] with a source of two files (one named as a PDF,
/// its content the text Letta extracted) that ada names in `source_ids` and
/// bob through `files_agents`, and an MCP server.
fn file_with_a_source() -> Value {
    let mut file = three_agent_file();
    file["sources"] = json!([{"id": "source-0", "name": "handbook", "description": "the team's rules",
        "instructions": "cite the rule", "metadata": {"team": "a"}, "embedding": "kelpie/local-hash-256"}]);
    file["files"] = json!([
        {"id": "file-0", "source_id": "source-0", "file_name": "rules.md",
         "content": "# Rules\n\nAlways pack an umbrella when the sky is grey.\n"},
        {"id": "file-1", "source_id": "source-0", "file_name": "report.pdf",
         "content": "Quarterly revenue rose to 42 zorkmids.\n"},
    ]);
    file["agents"][0]["source_ids"] = json!(["source-0"]);
    file["agents"][1]["files_agents"] = json!([{"agent_id": "agent-1", "file_id": "file-0",
        "source_id": "source-0", "file_name": "rules.md", "is_open": true}]);
    // ada and bob take `forecast` from the weather server; cy `radar`, which it does not list.
    file["mcp_servers"] = json!([{"id": "mcp_server-0", "server_type": "stdio", "server_name": "weather",
        "stdio_config": {"command": "/bin/cat", "args": ["--weather"], "env": {}}}]);
    let mcp_tool = |id: &str, name: &str| {
        json!({"id": id, "name": name, "tool_type": "external_mcp",
               "metadata_": {"mcp": {"server_name": "weather", "server_id": "mcp_server-0"}}})
    };
    file["tools"]
        .as_array_mut()
        .unwrap()
        .extend([mcp_tool("tool-1", "forecast"), mcp_tool("tool-2", "radar")]);
    for (agent, tool) in [(0, "tool-1"), (1, "tool-1"), (2, "tool-2")] {
        file["agents"][agent]["tool_ids"].as_array_mut().unwrap().push(json!(tool));
    }
    file
}

/// An MCP server that lists `forecast` and `alerts` whatever it is asked.
struct WeatherMcp;

impl McpConnector for WeatherMcp {
    fn list_tools<'a>(&'a self, _: &'a McpServerRecord) -> McpFuture<'a, Result<Vec<McpTool>, McpError>> {
        Box::pin(async {
            let tool = |name: &str| McpTool {
                name: name.into(),
                description: Some(format!("The {name}.")),
                input_schema: json!({"type": "object", "properties": {}}),
                annotations: None,
            };
            Ok(vec![tool("forecast"), tool("alerts")])
        })
    }

    fn call_tool<'a>(
        &'a self,
        _: &'a McpServerRecord,
        tool: &'a str,
        _: &'a Value,
    ) -> McpFuture<'a, Result<McpCallResult, McpError>> {
        Box::pin(async move { Ok(McpCallResult { is_error: false, text: format!("{tool}: sunny") }) })
    }

    fn forget<'a>(&'a self, _: &'a str) -> McpFuture<'a, ()> {
        Box::pin(async {})
    }

    fn shutdown(&self) -> McpFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The names of agent `id`'s tools.
async fn tool_names(service: &AgentService, id: &str) -> Vec<String> {
    let agent = service.agents.get(id).await.unwrap();
    let mut names: Vec<String> =
        agent["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

/// The MCP servers listed: (name, id, command, args).
async fn mcp_listed(service: &AgentService) -> Vec<(String, String, Value, Value)> {
    let servers = service.mcp_servers.list().await.unwrap();
    servers
        .iter()
        .map(|s| {
            let name = s["server_name"].as_str().unwrap().to_string();
            (name, s["id"].as_str().unwrap().to_string(), s["command"].clone(), s["args"].clone())
        })
        .collect()
}

/// The folders listed, by name, with their files' names, oldest first.
async fn folders_by_name(service: &AgentService) -> BTreeMap<String, Vec<String>> {
    let mut by_name = BTreeMap::new();
    for folder in service.folders.list(None, &everything(), false).await.unwrap() {
        let id = folder["id"].as_str().unwrap();
        let files = service.folders.list_files(id, &everything(), false).await.unwrap();
        let names = files.iter().map(|file| file["file_name"].as_str().unwrap().to_string()).collect();
        by_name.insert(folder["name"].as_str().unwrap().to_string(), names);
    }
    by_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letta_files_source_imports_as_a_folder_of_processed_files_attached_to_its_agents() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    service.tools.set_mcp_connector(Arc::new(WeatherMcp));
    // A folder of the same name is here already: as Letta, the file's gets
    // a suffix and the one here is left alone.
    let input = FolderInput { name: Some("handbook".into()), ..FolderInput::default() };
    let existing = service.folders.create(input, false).await.unwrap()["id"].as_str().unwrap().to_string();
    let file = serde_json::to_vec(&file_with_a_source()).unwrap();
    let answer = service.transfer.import_bytes(&file, no_suffix()).await.unwrap();
    let ids = strings(&answer["agent_ids"]);
    // Left out: cy's MCP tool its server does not list (and the embedding
    // the file names, not offered here).
    let warnings = strings(&answer["warnings"]);
    let radar = "MCP tool \"radar\" was not attached: server \"weather\" does not list it (refresh the server, then attach it)";
    assert_eq!(warnings.last().unwrap(), radar, "{warnings:?}");
    assert!(warnings[..warnings.len() - 1].iter().all(|w| w.starts_with("embedding ")), "{warnings:?}");
    // The MCP server is a record of this server, its tools listed and
    // `forecast` attached to ada and bob.
    let servers = mcp_listed(&service).await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    let (name, server_id, command, args) = &servers[0];
    assert_eq!((name.as_str(), command, args), ("weather", &json!("/bin/cat"), &json!(["--weather"])));
    let listed = service.mcp_servers.tools(server_id).await.unwrap();
    let forecast = listed.iter().find(|t| t["name"] == "forecast").unwrap()["id"].clone();
    // (and the file tools, with the folder)
    let with_folder = vec!["forecast", "grep_files", "open_files", "semantic_search_files", "shout"];
    assert_eq!(tool_names(&service, &ids[0]).await, with_folder);
    assert_eq!(tool_names(&service, &ids[1]).await, with_folder);
    assert_eq!(tool_names(&service, &ids[2]).await, vec!["shout"]);
    let ada = service.agents.get(&ids[0]).await.unwrap();
    assert!(ada["tools"].as_array().unwrap().iter().any(|t| t["id"] == forecast), "{forecast}");
    let listed = folders_by_name(&service).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed["handbook"], Vec::<String>::new(), "the folder here is untouched");
    let (name, files) = listed.iter().find(|(name, _)| name.as_str() != "handbook").unwrap();
    assert!(name.starts_with("handbook_") && name.len() == "handbook_".len() + 8, "{name}");
    assert_eq!(files, &vec!["rules.md".to_string(), "report.pdf.md".to_string()]);
    let folder_id = service.folders.id_by_name(name).await.unwrap();
    assert_ne!(folder_id, existing);
    let folder = service.folders.get(&folder_id, false).await.unwrap();
    assert_eq!(
        (&folder["description"], &folder["instructions"], &folder["metadata"]),
        (&json!("the team's rules"), &json!("cite the rule"), &json!({"team": "a"}))
    );
    // Attached to ada (source_ids) and bob (files_agents), not to cy.
    let mut attached = service.folders.agents(&folder_id, &everything()).await.unwrap();
    attached.sort_by_key(|id| id.to_string());
    let mut expected = vec![json!(ids[0]), json!(ids[1])];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(attached, expected);
    // Processed by the document pipeline, then found by an agent's file search.
    for _ in 0..20 {
        service.documents.run_once().await.unwrap();
    }
    let files = service.folders.list_files(&folder_id, &everything(), false).await.unwrap();
    let statuses: Vec<&Value> = files.iter().map(|file| &file["processing_status"]).collect();
    assert_eq!(statuses, vec!["completed", "completed"]);
    let passages = service.folders.passages(&folder_id, &everything()).await.unwrap();
    assert!(passages.iter().any(|p| p["text"].as_str().unwrap().contains("42 zorkmids")), "{passages:?}");
    let found = service
        .turns
        .run_tool(&ids[1], "semantic_search_files", json!({"query": "quarterly revenue zorkmids"}))
        .await
        .unwrap();
    assert!(found.to_string().contains("42 zorkmids"), "{found}");
    let refused = service.turns.run_tool(&ids[2], "semantic_search_files", json!({"query": "revenue"})).await;
    assert!(refused.is_err(), "cy has no folder, so no file tools: {refused:?}");
    // Imported again: as Letta, the server of that name is the one used
    // (no second record), and the new agents take its tool.
    let again = service.transfer.import_bytes(&file, no_suffix()).await.unwrap();
    let again = strings(&again["agent_ids"]);
    assert_eq!(
        mcp_listed(&service).await.iter().map(|s| s.1.clone()).collect::<Vec<_>>(),
        vec![server_id.clone()]
    );
    assert_eq!(tool_names(&service, &again[0]).await, with_folder);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_sources_cannot_all_be_made_is_refused_and_leaves_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    service.tools.set_mcp_connector(Arc::new(WeatherMcp));
    let source = |n: usize| json!({"id": format!("source-{n}"), "name": format!("s{n}")});
    let mut too_many = file_with_a_source();
    too_many["sources"] = json!((0..=AGENT_FILE_SOURCES_COUNT_MAX).map(source).collect::<Vec<_>>());
    too_many["files"] = json!([]);
    too_many["agents"][1]["files_agents"] = json!([]);
    // Fits the file, not the server: one folder is here already.
    let mut past_server = too_many.clone();
    past_server["sources"] = json!((0..FOLDERS_COUNT_MAX).map(source).collect::<Vec<_>>());
    let mut dangling = file_with_a_source();
    dangling["files"][1]["source_id"] = json!("source-7");
    let mut hidden_name = file_with_a_source();
    hidden_name["files"][0]["file_name"] = json!(".env");
    let mut long_name = file_with_a_source();
    long_name["sources"][0]["name"] = json!("n".repeat(FOLDER_NAME_BYTES_MAX + 1));
    // A failure after the folder would be made: an agent's name is refused
    // when the import settles its agents.
    let mut bad_agent = file_with_a_source();
    bad_agent["agents"][2]["name"] = json!("");
    // An MCP server on a private address is refused (SSRF), as the routes
    // refuse it, after an earlier server of the file was made: that one is
    // taken back.
    let mut private = file_with_a_source();
    private["mcp_servers"].as_array_mut().unwrap().push(json!({"id": "mcp_server-1",
        "server_type": "streamable_http", "server_name": "inside", "server_url": "http://127.0.0.1:9/mcp"}));
    let mut no_server = file_with_a_source();
    no_server["tools"][2]["metadata_"]["mcp"] = json!({"server_name": "elsewhere"});
    let input = FolderInput { name: Some("here".into()), ..FolderInput::default() };
    service.folders.create(input, false).await.unwrap();
    let before = (listed_by_name(&service).await, folders_by_name(&service).await);
    for (file, why) in [
        (
            too_many,
            format!("1001 sources, over AGENT_FILE_SOURCES_COUNT_MAX = {AGENT_FILE_SOURCES_COUNT_MAX}"),
        ),
        (past_server, format!("would make 1001 folders, over FOLDERS_COUNT_MAX = {FOLDERS_COUNT_MAX}")),
        (dangling, "file file-1 names source \"source-7\", not in the file".to_string()),
        (hidden_name, "file file-0's name \".env\" is empty or starts with a dot".to_string()),
        (long_name, format!("over FOLDER_NAME_BYTES_MAX = {FOLDER_NAME_BYTES_MAX}")),
        (bad_agent, "name".to_string()),
        (private, "127.0.0.1".to_string()),
        (no_server, "MCP tool \"radar\" names a server not in the file's mcp_servers".to_string()),
    ] {
        let bytes = serde_json::to_vec(&file).unwrap();
        let err = service.transfer.import_bytes(&bytes, no_suffix()).await.expect_err(&why);
        assert!(err.to_string().contains(&why), "{why}: {err:?}");
        assert_eq!((listed_by_name(&service).await, folders_by_name(&service).await), before, "{why}");
        assert_eq!(mcp_listed(&service).await, Vec::new(), "{why}");
    }
    service.shutdown().await;
}

/// A file whose import fails at its decision, after its folder, files and
/// MCP server were made, leaves none of them (nor an agent) behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_failing_at_its_decision_takes_back_its_folders_and_mcp_servers() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let disk = Storage::from_backend(Arc::new(DyingDisk::new(Arc::clone(&redb), DeathAt::DecisionRefused)));
    let service = service(&disk, dir.path(), "http://127.0.0.1:9/v1");
    service.tools.set_mcp_connector(Arc::new(WeatherMcp));
    let file = serde_json::to_vec(&file_with_a_source()).unwrap();
    let err = service.transfer.import_bytes(&file, no_suffix()).await.unwrap_err();
    assert!(err.to_string().contains("the decision's commit refused"), "{err:?}");
    assert_eq!(listed_by_name(&service).await, BTreeMap::new());
    assert_eq!(folders_by_name(&service).await, BTreeMap::new());
    assert_eq!(mcp_listed(&service).await, Vec::new());
    // The MCP server's tools went with it.
    let custom = service.tools.custom_tools().await.unwrap();
    assert!(custom.iter().all(|tool| tool.mcp.is_none()), "{custom:?}");
    // Taken back by the import itself: nothing is left to the reclaimer.
    assert_eq!(service.reclaimer.made().await.unwrap(), Vec::new());
    service.shutdown().await;
}

/// Killed right after its decision, an import with a source comes back
/// whole: the background pass makes the agents appear and attaches the
/// folder made before the decision to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_after_its_decision_attaches_its_folder_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let death = DeathAt::After { namespace: "reclaim", commits: 0 };
    let dying = Storage::from_backend(Arc::new(DyingDisk::new(Arc::clone(&redb), death)));
    let killed = service(&dying, dir.path(), "http://127.0.0.1:9/v1");
    killed.tools.set_mcp_connector(Arc::new(WeatherMcp));
    let file = serde_json::to_vec(&file_with_a_source()).unwrap();
    assert!(killed.transfer.import_bytes(&file, no_suffix()).await.is_err());
    killed.shutdown().await;
    drop(killed);

    let storage = Storage::from_backend(Arc::clone(&redb) as Arc<dyn Backend>);
    let restarted = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    assert_eq!(restarted.decided_imports.run_once().await.unwrap(), 1);
    let agents = listed_by_name(&restarted).await;
    assert_eq!(agents.keys().collect::<Vec<_>>(), vec!["ada", "bob", "cy"]);
    let folder_id = restarted.folders.id_by_name("handbook").await.unwrap();
    let mut attached = restarted.folders.agents(&folder_id, &everything()).await.unwrap();
    attached.sort_by_key(|id| id.to_string());
    let mut expected = vec![json!(agents["ada"][0]), json!(agents["bob"][0])];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(attached, expected);
    // Once: a second pass finds nothing left to do.
    assert_eq!(restarted.decided_imports.run_once().await.unwrap(), 0);
    restarted.shutdown().await;
}

/// What the reclaim list holds of what imports made: (id, kind), by id.
async fn made(service: &AgentService) -> Vec<(String, MadeKind)> {
    let made = service.reclaimer.made().await.unwrap();
    made.into_iter().map(|entry| (entry.id, entry.kind)).collect()
}

/// Killed after its folder and MCP server were made, before its decision:
/// they are visible, but on the reclaim list; a restart past their lease
/// deletes them (not listed, their names free, a get not found), and the
/// file imported again keeps its own, once, through any later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_before_its_decision_leaves_its_folder_and_mcp_server_to_the_reclaimer() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
    let dying = Storage::from_backend(Arc::new(DyingDisk::new(Arc::clone(&redb), DeathAt::Decision)));
    let killed = service(&dying, dir.path(), "http://127.0.0.1:9/v1");
    killed.tools.set_mcp_connector(Arc::new(WeatherMcp));
    let file = serde_json::to_vec(&file_with_a_source()).unwrap();
    assert!(killed.transfer.import_bytes(&file, no_suffix()).await.is_err());
    killed.shutdown().await;
    drop(killed);

    // Restarted within the leases: both wait on the list, each once.
    let storage = Storage::from_backend(Arc::clone(&redb) as Arc<dyn Backend>);
    let restarted = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    let folder_id = restarted.folders.id_by_name("handbook").await.unwrap();
    let servers = mcp_listed(&restarted).await;
    assert_eq!(servers.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), vec!["weather"]);
    let server_id = servers[0].1.clone();
    let mut expected = vec![(folder_id.clone(), MadeKind::Folder), (server_id.clone(), MadeKind::McpServer)];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(made(&restarted).await, expected);
    assert_eq!(restarted.reclaimer.run_once().await.unwrap(), 0, "within their leases");
    assert_eq!(made(&restarted).await, expected);
    restarted.shutdown().await;
    drop(restarted);

    // Restarted past them: no decision, so the pass deletes both (and the
    // three agents' history).
    let later = service_at(&storage, dir.path(), "http://127.0.0.1:9/v1", IMPORT_LEASE_MS + 60_000);
    later.tools.set_mcp_connector(Arc::new(WeatherMcp));
    assert_eq!(later.decided_imports.run_once().await.unwrap(), 0, "nothing was decided");
    assert_eq!(later.reclaimer.run_once().await.unwrap(), 3 + 2);
    assert_eq!(later.reclaimer.run_once().await.unwrap(), 0, "once");
    assert_eq!(made(&later).await, Vec::new());
    assert_eq!(later.reclaimer.pending().await.unwrap(), Vec::new());
    assert_eq!(folders_by_name(&later).await, BTreeMap::new());
    match later.folders.get(&folder_id, false).await {
        Err(ServiceError::FolderNotFound(id)) => assert_eq!(id, folder_id),
        other => panic!("the reclaimed folder: {other:?}"),
    }
    match later.folders.id_by_name("handbook").await {
        Err(ServiceError::FolderNotFound(name)) => assert_eq!(name, "handbook"),
        other => panic!("the reclaimed folder's name: {other:?}"),
    }
    assert_eq!(mcp_listed(&later).await, Vec::new());
    match later.mcp_servers.get(&server_id).await {
        Err(ServiceError::McpServerNotFound(id)) => assert_eq!(id, server_id),
        other => panic!("the reclaimed MCP server: {other:?}"),
    }
    let custom = later.tools.custom_tools().await.unwrap();
    assert_eq!(custom.iter().filter(|tool| tool.mcp.is_some()).count(), 0, "{custom:?}");
    // Deleted as a user's delete does: its files go with it.
    match later.folders.list_files(&folder_id, &everything(), false).await {
        Err(ServiceError::FolderNotFound(id)) => assert_eq!(id, folder_id),
        other => panic!("the reclaimed folder's files: {other:?}"),
    }
    assert_eq!(listed_by_name(&later).await, BTreeMap::new());

    // The names are free: imported again, the file's folder and server
    // take them as they are, and the decision keeps them.
    let answer = later.transfer.import_bytes(&file, no_suffix()).await.unwrap();
    assert_eq!(strings(&answer["agent_ids"]).len(), 3, "{answer}");
    let files = vec!["rules.md".to_string(), "report.pdf.md".to_string()];
    let kept_folders = BTreeMap::from([("handbook".to_string(), files)]);
    assert_eq!(folders_by_name(&later).await, kept_folders);
    let kept_servers = mcp_listed(&later).await;
    assert_eq!(kept_servers.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), vec!["weather"]);
    assert_ne!(kept_servers[0].1, server_id, "a new record");
    assert_eq!(made(&later).await, Vec::new(), "the decision took them off the list");
    later.shutdown().await;
    drop(later);

    // Kept through any later pass, once each.
    let much_later = service_at(&storage, dir.path(), "http://127.0.0.1:9/v1", 3 * IMPORT_LEASE_MS);
    assert_eq!(much_later.decided_imports.run_once().await.unwrap(), 0);
    assert_eq!(much_later.reclaimer.run_once().await.unwrap(), 0);
    assert_eq!(folders_by_name(&much_later).await, kept_folders);
    assert_eq!(mcp_listed(&much_later).await, kept_servers);
    assert_eq!(listed_by_name(&much_later).await.keys().collect::<Vec<_>>(), vec!["ada", "bob", "cy"]);
    much_later.shutdown().await;
}

/// As Letta (`create_or_update_mcp_server`), an MCP server of the file's
/// name here is the one used and takes the file's config: with the
/// decision, so a kill before it leaves the old config (and the server:
/// the import did not make it), and a kill right after it still sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_of_the_files_name_takes_its_config_with_the_decision_kill_or_not() {
    // (how the import ends, whether it decided)
    let cases = [
        (None, true),
        (Some(DeathAt::Decision), false),
        (Some(DeathAt::After { namespace: "reclaim", commits: 0 }), true),
    ];
    for (death, decided) in cases {
        let dir = tempfile::tempdir().unwrap();
        let redb = Arc::new(RedbBackend::open(&dir.path().join("kelpie.redb")).unwrap());
        let storage = Storage::from_backend(Arc::clone(&redb) as Arc<dyn Backend>);
        let before = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
        before.tools.set_mcp_connector(Arc::new(WeatherMcp));
        let config = json!({"command": "/bin/cat", "args": ["--old"]});
        let create = serde_json::from_value(json!({"server_name": "weather", "config": config})).unwrap();
        let server_id = before.mcp_servers.create(create).await.unwrap()["id"].as_str().unwrap().to_string();
        before.shutdown().await;
        drop(before);

        let disk = match death {
            Some(death) => Storage::from_backend(Arc::new(DyingDisk::new(Arc::clone(&redb), death))),
            None => storage.clone(),
        };
        let importing = service(&disk, dir.path(), "http://127.0.0.1:9/v1");
        importing.tools.set_mcp_connector(Arc::new(WeatherMcp));
        let file = serde_json::to_vec(&file_with_a_source()).unwrap();
        let outcome = importing.transfer.import_bytes(&file, no_suffix()).await;
        assert_eq!(outcome.is_ok(), death.is_none(), "{death:?}: {outcome:?}");
        importing.shutdown().await;
        drop(importing);

        let later = service_at(&storage, dir.path(), "http://127.0.0.1:9/v1", IMPORT_LEASE_MS + 60_000);
        later.tools.set_mcp_connector(Arc::new(WeatherMcp));
        let rolled = usize::from(matches!(death, Some(DeathAt::After { .. })));
        assert_eq!(later.decided_imports.run_once().await.unwrap(), rolled, "{death:?}");
        later.reclaimer.run_once().await.unwrap();
        let args = match decided {
            true => json!(["--weather"]),
            false => json!(["--old"]),
        };
        let expected = vec![("weather".to_string(), server_id.clone(), json!("/bin/cat"), args)];
        assert_eq!(mcp_listed(&later).await, expected, "{death:?}");
        assert_eq!(made(&later).await, Vec::new(), "{death:?}: the import made no server");
        let agents = listed_by_name(&later).await;
        match decided {
            true => {
                assert_eq!(agents.keys().collect::<Vec<_>>(), vec!["ada", "bob", "cy"], "{death:?}");
                // ada took `forecast` from the server here.
                let forecast = later.mcp_servers.tools(&server_id).await.unwrap();
                let forecast = forecast.iter().find(|t| t["name"] == "forecast").unwrap()["id"].clone();
                let ada = later.agents.get(&agents["ada"][0]).await.unwrap();
                assert!(ada["tools"].as_array().unwrap().iter().any(|t| t["id"] == forecast), "{death:?}");
            }
            false => assert_eq!(agents, BTreeMap::new(), "{death:?}"),
        }
        later.shutdown().await;
    }
}

/// A file whose groups share `groups_count` blocks of a million characters
/// that no agent of the file holds: each group has one member of its own,
/// so every agent stays within its core-memory total (and, with a window of
/// `context_window` tokens, within its context), and the decision carries
/// every block whole.
fn file_sharing_big_blocks(groups_count: usize, context_window: u64) -> Value {
    let mut file = three_agent_file();
    let agents: Vec<Value> = (0..groups_count)
        .map(|n| {
            let mut agent = letta_agent(n, &format!("keeper{n}"));
            agent["block_ids"] = json!([format!("block-{}", n + 1)]);
            agent["llm_config"]["context_window"] = json!(context_window);
            agent
        })
        .collect();
    file["agents"] = json!(agents);
    let mut blocks: Vec<Value> = (0..groups_count)
        .map(|n| json!({"id": format!("block-{}", n + 1), "label": "persona", "value": format!("I keep {n}."), "limit": 5000}))
        .collect();
    blocks.extend((0..groups_count).map(|n| {
        json!({"id": format!("big-{n}"), "label": format!("notes{n}"), "value": "n".repeat(1_000_000), "limit": 1_000_000})
    }));
    file["blocks"] = json!(blocks);
    file["groups"] = (0..groups_count)
        .map(|n| {
            json!({"id": format!("group-{n}"), "agent_ids": [format!("agent-{n}")], "description": format!("keeper {n}"),
                   "manager_config": {"manager_type": "round_robin"}, "shared_block_ids": [format!("big-{n}")]})
        })
        .collect();
    file
}

/// A window that holds a block of a million characters (about 250 000 tokens).
const BIG_WINDOW_TOKENS: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_past_its_byte_max_is_refused_and_leaves_nothing_visible() {
    use kelpie_agent::service::transfer::IMPORT_DECISION_BYTES_MAX;
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_redb(dir.path().join("kelpie.redb")).unwrap();
    let service = service(&storage, dir.path(), "http://127.0.0.1:9/v1");
    // A shared block that would not fit its member's context window is
    // refused before the decision, not by the attach after it.
    let bytes = serde_json::to_vec(&file_sharing_big_blocks(1, 32_000)).unwrap();
    match service.transfer.import_bytes(&bytes, no_suffix()).await {
        Err(ServiceError::Invalid(why)) => {
            assert!(why.contains("with its groups' shared blocks") && why.contains("context window"), "{why}")
        }
        other => panic!("a block past the window: {other:?}"),
    }
    // Six blocks of a million characters: about 6 MB to record, past 5 MiB.
    const { assert!(6_000_000 > IMPORT_DECISION_BYTES_MAX && 5_000_000 + 100_000 < IMPORT_DECISION_BYTES_MAX) };
    let bytes = serde_json::to_vec(&file_sharing_big_blocks(6, BIG_WINDOW_TOKENS)).unwrap();
    match service.transfer.import_bytes(&bytes, no_suffix()).await {
        Err(ServiceError::Invalid(why)) => {
            assert!(why.contains("over IMPORT_DECISION_BYTES_MAX"), "{why}")
        }
        other => panic!("past the decision max: {other:?}"),
    }
    assert!(
        service.agents.list(None, &[], false, &everything()).await.unwrap().is_empty(),
        "no agent appeared"
    );
    assert!(
        service.groups.list(&GroupFilter::default(), &everything()).await.unwrap().is_empty(),
        "no group"
    );
    assert!(service.reclaimer.decisions(None).await.unwrap().is_empty(), "no decision was recorded");
    // Five fit: every keeper appears holding its group's big block.
    let bytes = serde_json::to_vec(&file_sharing_big_blocks(5, BIG_WINDOW_TOKENS)).unwrap();
    let answer = service.transfer.import_bytes(&bytes, no_suffix()).await.unwrap();
    let ids = strings(&answer["agent_ids"]);
    assert_eq!(ids.len(), 5);
    for (n, id) in ids.iter().enumerate() {
        let agent = service.agents.get(id).await.unwrap();
        let blocks = agent["memory"]["blocks"].as_array().unwrap();
        let big = blocks.iter().find(|b| b["label"] == format!("notes{n}")).expect("the group's block");
        assert_eq!(big["value"].as_str().unwrap().len(), 1_000_000);
    }
    assert_eq!(service.groups.list(&GroupFilter::default(), &everything()).await.unwrap().len(), 5);
    service.shutdown().await;
}
