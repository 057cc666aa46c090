//! Runs written through the agent actor's own commands (no LLM), on the
//! real agent service over the memory store:
//! - an agent with more runs than one filtered list reads
//!   (`RUN_SCAN_ROWS_COUNT_MAX`): the list pages through all of them, and a
//!   filter that only a run past the cap passes answers a short page rather
//!   than reading the whole history;
//! - the reminder of a node failure (`Runs::recover_orphans`): the run
//!   index entries of a gone node are ended and taken out, a run still
//!   running stays.

use std::collections::BTreeSet;

use kelpie_agent::actors::agent::{
    AgentActor, AgentCommand, AgentReply, RunFilter, RUN_LOST_ERROR, RUN_SCAN_ROWS_COUNT_MAX,
};
use kelpie_agent::actors::run_store::{
    run_pointer_shard, InFlightRun, RunIndexActor, RunIndexCommand, RunIndexReply, RunPointerActor,
    RunPointerCommand, RUN_INDEX_ACTOR, RUN_POINTER_NAMESPACE,
};
use kelpie_agent::model::{LiveRuns, RunEnd, RunStart, RunStatus};
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_agent::page::Page;
use kelpie_agent::requests::CreateAgent;
use kelpie_agent::service::runs::RunQuery;
use kelpie_agent::AgentService;
use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_core::{ActorId, Env, NodeId};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::LlmClients;
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_sandbox::unsandboxed::UnsandboxedBackend;
use kelpie_storage::Storage;
use kelpie_tools::{RunnerSettings, ToolRunner};

const RUNS_COUNT: usize = RUN_SCAN_ROWS_COUNT_MAX + 1;

struct Setup {
    service: AgentService,
    agents: Runtime<AgentActor>,
    index: Runtime<RunIndexActor>,
    pointers: Runtime<RunPointerActor>,
    live: std::sync::Arc<LiveRuns>,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("test".into());
    // Never called: runs are written through the agent's commands.
    layers.set("llm.openai_base_url", "http://127.0.0.1:9/v1", flag.clone()).unwrap();
    layers.set("llm.default_model", "openai-proxy/fake-gpt", flag).unwrap();
    let llm_config = layers.resolve().unwrap().llm;
    let llm = LlmClients::from_config(&llm_config).unwrap();
    let catalog = ModelCatalog::new(llm_config, llm.clone());
    let runner = ToolRunner::new(
        std::sync::Arc::new(UnsandboxedBackend::open(dir.path().join("run"))),
        RunnerSettings::new("/usr/bin/python3", dir.path().join("pip")),
    );
    let env = Env::production();
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    let runtimes = agent_runtimes(&Storage::memory(), &Placement::Local, &env, &config).unwrap();
    let (agents, index) = (runtimes.agents.clone(), runtimes.run_index.clone());
    let (pointers, live) = (runtimes.run_pointers.clone(), std::sync::Arc::clone(&runtimes.live_runs));
    let service =
        AgentService::new(runtimes, env, std::sync::Arc::new(llm), catalog, std::sync::Arc::new(runner));
    Setup { service, agents, index, pointers, live, _dir: dir }
}

fn start(n: usize) -> RunStart {
    RunStart {
        run_id: format!("run-{n:08x}-0000-4000-8000-000000000000"),
        background: true,
        created_ms: 1_000 + n as u64,
        idempotency_key: None,
        conversation_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_past_the_scan_cap_page_to_the_end_and_a_filter_answers_a_short_page() {
    let Setup { service, agents, .. } = setup();
    let request = CreateAgent { name: Some("busy".into()), ..CreateAgent::default() };
    let agent_id = service.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string();
    let actor = ActorId::new("agents", &agent_id).unwrap();
    // Every run completed but the newest, which failed.
    let mut made = Vec::with_capacity(RUNS_COUNT);
    for n in 0..RUNS_COUNT {
        let start = start(n);
        let end = if n + 1 == RUNS_COUNT {
            RunEnd::failed("the last one".into())
        } else {
            RunEnd::completed("end_turn")
        };
        let reply = agents.invoke(&actor, AgentCommand::EndRun { start: start.clone(), end }).await.unwrap();
        let AgentReply::Run(Some(run)) = reply else { panic!("end run answers the run") };
        assert_ne!(run.status, RunStatus::Running);
        made.push(start.run_id);
    }
    let query = |filter: RunFilter, after: Option<String>, limit: usize, descending: bool| RunQuery {
        agent_ids: vec![agent_id.clone()],
        filter,
        active: false,
        page: Page { before: None, after, limit, descending },
    };
    // The whole list, a page at a time.
    let mut walked = Vec::new();
    loop {
        let page = service
            .runs
            .list(query(RunFilter::default(), walked.last().cloned(), 1_000, false))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        walked.extend(page.iter().map(|run| run["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(walked, made);
    // Only the newest run failed: newest first it is found at once; oldest
    // first it lies past RUN_SCAN_ROWS_COUNT_MAX rows and the page is short.
    let failed = RunFilter { statuses: Some(vec![RunStatus::Failed]), ..RunFilter::default() };
    let newest = service.runs.list(query(failed.clone(), None, 10, true)).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["id"].as_str(), made.last().map(String::as_str));
    let oldest = service.runs.list(query(failed.clone(), None, 10, false)).await.unwrap();
    assert!(oldest.is_empty(), "{} runs read past the scan cap", oldest.len());
    // Paged past the first RUN_SCAN_ROWS_COUNT_MAX runs, the filter reaches it.
    let after = made[RUNS_COUNT - 2].clone();
    let past = service.runs.list(query(failed, Some(after), 10, false)).await.unwrap();
    assert_eq!(past.len(), 1);
    service.shutdown().await;
}

async fn indexed(index: &Runtime<RunIndexActor>) -> Vec<String> {
    let actor = ActorId::new(RUN_INDEX_ACTOR.0, RUN_INDEX_ACTOR.1).unwrap();
    let RunIndexReply::Runs(runs) = index.invoke(&actor, RunIndexCommand::List).await.unwrap() else {
        panic!("the index lists its runs")
    };
    runs.into_iter().map(|run| run.run_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reminder_ends_the_runs_of_a_gone_node_and_leaves_running_ones() {
    let Setup { service, agents, index, pointers, live, .. } = setup();
    let request = CreateAgent { name: Some("orphans".into()), ..CreateAgent::default() };
    let agent_id = service.agents.create(request, None).await.unwrap()["id"].as_str().unwrap().to_string();
    let actor = ActorId::new("agents", &agent_id).unwrap();
    let index_actor = ActorId::new(RUN_INDEX_ACTOR.0, RUN_INDEX_ACTOR.1).unwrap();
    let point = |n: usize| {
        let shard = ActorId::new(RUN_POINTER_NAMESPACE, run_pointer_shard(&start(n).run_id)).unwrap();
        (shard, RunPointerCommand::Put { run_id: start(n).run_id, agent_id: agent_id.clone() })
    };
    // 0: stored and open, its task gone (not among the live runs);
    // 1: never stored; 2: in the index under a live node;
    // 3: stored, open and live here (its task still runs).
    live.insert(&start(3).run_id);
    for n in [0, 3] {
        let (shard, put) = point(n);
        pointers.invoke(&shard, put).await.unwrap();
        agents.invoke(&actor, AgentCommand::StartRun(start(n))).await.unwrap();
    }
    for (n, node) in [(0, "node-gone"), (1, "node-gone"), (2, "node-live"), (3, "node-gone")] {
        let entry = InFlightRun {
            run_id: start(n).run_id,
            agent_id: agent_id.clone(),
            node_id: node.to_string(),
            created_ms: 1_000,
        };
        index.invoke(&index_actor, RunIndexCommand::Add(entry)).await.unwrap();
    }
    let gone: BTreeSet<String> = ["node-gone".to_string()].into();
    assert_eq!(service.runs.recover_orphans(&gone).await.unwrap(), 2);
    assert_eq!(indexed(&index).await, vec![start(2).run_id, start(3).run_id]);
    let ended = service.runs.get(&start(0).run_id).await.unwrap();
    assert_eq!(
        (ended["status"].as_str(), ended["metadata"]["error"].as_str()),
        (Some("failed"), Some(RUN_LOST_ERROR))
    );
    assert_eq!(service.runs.get(&start(3).run_id).await.unwrap()["status"], "running");
    // Its task ends: the next round ends it too and empties the index of the gone node.
    live.remove(&start(3).run_id);
    assert_eq!(service.runs.recover_orphans(&gone).await.unwrap(), 1);
    assert_eq!(indexed(&index).await, vec![start(2).run_id]);
    assert_eq!(service.runs.get(&start(3).run_id).await.unwrap()["status"], "failed");
    service.shutdown().await;
}
