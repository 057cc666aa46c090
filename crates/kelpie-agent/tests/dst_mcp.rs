//! DST of the agent loop calling an MCP tool: the real agent service (its
//! actors, the tool store holding the MCP server and its tool, the loop)
//! runs on one simulated node with kelpie-dst's simulated model and a
//! simulated MCP server ([`SimMcp`], over `SimTool`) in place of the MCP
//! client. The server crashes (and is started again before the next call,
//! as the client does), starts too slowly, times out and fails calls at
//! random. After every turn:
//! - the turn completed, with one tool return for the MCP call;
//! - a fault reached the model as an error tool return naming what went
//!   wrong (the model's next request carries that same text), and a call
//!   without a fault returned the server's answer;
//! - the agent's state is exactly as before the turn (an MCP tool never
//!   edits it), and the server and its tool are still registered.
//!
//! Every kind of MCP fault must have fired over the seed sweep.
//!
//! Replay one seed: `DST_SEED=<seed> cargo test -p kelpie-agent --test dst_mcp`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_agent::actors::tool_store::McpServerRecord;
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_agent::requests::{CreateAgent, CreateMcpServer, McpServerConfigIn};
use kelpie_agent::service::mcp_clients::{McpConnector, McpFuture};
use kelpie_agent::service::runs::TurnInput;
use kelpie_agent::AgentService;
use kelpie_core::config::{ConfigLayers, Origin};
use kelpie_dst::agent::ToolError as SimToolError;
use kelpie_dst::{
    replay_command, seeds_to_run, Fault, FaultKind, FaultRule, LlmRequest, LlmResponse, SimLlmClient,
    SimNode, SimTool, Simulation,
};
use kelpie_llm::catalog::ModelCatalog;
use kelpie_llm::sim::SimChatModel;
use kelpie_llm::LlmClients;
use kelpie_runtime::RuntimeConfig;
use kelpie_sandbox::sim::SimBackend;
use kelpie_storage::Storage;
use kelpie_tools::mcp::{McpCallResult, McpError, McpTool};
use kelpie_tools::{RunnerSettings, ToolRunner};
use serde_json::{json, Value};

const SEEDS_COUNT: u64 = 200;
const TURNS_COUNT: usize = 12;
const FAULT_PROBABILITY: f64 = 0.12;
const MCP_TIMEOUT_MS: u64 = 5_000;
const SIM_LIMIT_SECS: u64 = 3_600;
const MCP_FAULTS: [Fault; 4] =
    [Fault::McpServerCrash, Fault::McpServerSlowStart, Fault::ToolTimeout, Fault::ToolFailure];
/// What the tool return says for each fault, as the loop reports it.
const FAULT_TEXTS: [&str; 4] =
    ["is down", "did not finish connecting", "did not finish tool lookup", "injected tool failure"];
const TOOL: &str = "lookup";

/// The MCP server of the simulation: one tool, `lookup`, answering its
/// argument upper-cased, behind the simulated faults.
struct SimMcp {
    tool: SimTool,
}

impl SimMcp {
    async fn call(&self, args: &Value) -> Result<McpCallResult, McpError> {
        if !self.tool.server_up() {
            // A crashed server is started again before the next call.
            self.tool
                .start_mcp_server()
                .await
                .map_err(|_| McpError::Timeout { what: "connecting".into(), timeout_ms: MCP_TIMEOUT_MS })?;
        }
        match self.tool.call(args["text"].as_str().unwrap_or_default()).await {
            Ok(text) => Ok(McpCallResult { is_error: false, text }),
            // The server answered with an error result.
            Err(SimToolError::Failed { reason, .. }) => Ok(McpCallResult { is_error: true, text: reason }),
            Err(SimToolError::Timeout { .. }) => {
                Err(McpError::Timeout { what: format!("tool {TOOL}"), timeout_ms: MCP_TIMEOUT_MS })
            }
            Err(down @ SimToolError::McpServerDown { .. }) => Err(McpError::Connect(down.to_string())),
        }
    }
}

impl McpConnector for SimMcp {
    fn list_tools<'a>(&'a self, _: &'a McpServerRecord) -> McpFuture<'a, Result<Vec<McpTool>, McpError>> {
        Box::pin(async {
            Ok(vec![McpTool {
                name: TOOL.into(),
                description: Some("Looks a text up.".into()),
                input_schema: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
                annotations: None,
            }])
        })
    }

    fn call_tool<'a>(
        &'a self,
        _: &'a McpServerRecord,
        tool: &'a str,
        args: &'a Value,
    ) -> McpFuture<'a, Result<McpCallResult, McpError>> {
        Box::pin(async move {
            assert_eq!(tool, TOOL, "only the server's tool is called on it");
            self.call(args).await
        })
    }

    fn forget<'a>(&'a self, _: &'a str) -> McpFuture<'a, ()> {
        Box::pin(async {})
    }

    fn shutdown(&self) -> McpFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Answers a user message with a call of `lookup`, and a tool result with a reply.
fn responder(
    calls: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
) -> impl Fn(&LlmRequest) -> LlmResponse + Send + Sync {
    move |request: &LlmRequest| {
        let last = request.messages.last().expect("a request has messages");
        let id = format!("call-{}", calls.fetch_add(1, Ordering::SeqCst));
        if last.role == "tool" {
            seen.lock().unwrap().push(last.content.clone());
            return LlmResponse::tool_call(id, "send_message", json!({"message": "done"}).to_string());
        }
        LlmResponse::tool_call(id, TOOL, json!({"text": last.content}).to_string())
    }
}

fn service(node: &SimNode, seen: Arc<Mutex<Vec<String>>>) -> AgentService {
    let mut layers = ConfigLayers::new();
    let flag = Origin::Flag("dst".into());
    layers.set("llm.openai_base_url", "http://127.0.0.1:9/v1", flag.clone()).unwrap();
    layers.set("llm.default_model", "openai-proxy/sim-gpt", flag).unwrap();
    let llm_config = layers.resolve().unwrap().llm;
    let catalog = ModelCatalog::new(llm_config.clone(), LlmClients::from_config(&llm_config).unwrap());
    let model =
        SimChatModel::new(SimLlmClient::with_responder(node, responder(Arc::new(AtomicU64::new(0)), seen)));
    let mut settings = RunnerSettings::new("/usr/bin/python3", "/nonexistent/pip".into());
    settings.warm_sandboxes_count = 0;
    let runner = Arc::new(ToolRunner::new(Arc::new(SimBackend::new(node)) as _, settings));
    let env = node.env();
    let runtimes =
        agent_runtimes(&Storage::memory(), &Placement::Local, &env, &RuntimeConfig::new(node.id().clone()))
            .unwrap();
    let service = AgentService::new(runtimes, env, Arc::new(model), catalog, runner);
    let tool = SimTool::new(node, TOOL, |text: &str| Ok(text.to_uppercase()))
        .via_mcp_server("sim-mcp")
        .with_timeout_ms(MCP_TIMEOUT_MS);
    service.tools.set_mcp_connector(Arc::new(SimMcp { tool }));
    service
}

/// The agent as the API shows it, minus what every step changes.
fn state_of(agent: &Value) -> Value {
    let mut agent = agent.clone();
    agent.as_object_mut().unwrap().remove("updated_at");
    agent
}

async fn scenario(node: SimNode, seen: Arc<Mutex<Vec<String>>>) -> Result<usize, String> {
    let service = service(&node, Arc::clone(&seen));
    let config = McpServerConfigIn {
        mcp_server_type: Some("stdio".into()),
        command: Some("/usr/bin/sim-mcp".into()),
        ..McpServerConfigIn::default()
    };
    let server = service
        .mcp_servers
        .create(CreateMcpServer { server_name: "sim-mcp".into(), config })
        .await
        .map_err(|e| e.to_string())?;
    let server_id = server["id"].as_str().unwrap().to_string();
    let tools = service.mcp_servers.tools(&server_id).await.map_err(|e| e.to_string())?;
    let [tool] = tools.as_slice() else { return Err(format!("the server has {} stored tools", tools.len())) };
    let request = CreateAgent {
        name: Some("dst-mcp".into()),
        model: Some("openai-proxy/sim-gpt".into()),
        tool_ids: Some(vec![tool["id"].as_str().unwrap().to_string()]),
        ..CreateAgent::default()
    };
    let agent = service.agents.create(request, None).await.map_err(|e| e.to_string())?;
    let agent_id = agent["id"].as_str().unwrap().to_string();
    let mut faulted = 0;
    for turn in 0..TURNS_COUNT {
        let before = state_of(&service.agents.get(&agent_id).await.map_err(|e| e.to_string())?);
        let text = format!("kelp {turn}");
        let outcome =
            service.runs.run_turn(&agent_id, TurnInput::Texts(vec![text.clone()]), None, None, None).await;
        let outcome = outcome.map_err(|e| format!("turn {turn} failed: {e}"))?;
        let returns: Vec<&Value> =
            outcome.messages.iter().filter(|m| m["message_type"] == "tool_return_message").collect();
        let [lookup] = returns.as_slice() else {
            return Err(format!("turn {turn}: {} tool returns, expected the lookup's", returns.len()));
        };
        let result = lookup["tool_return"].as_str().unwrap_or_default().to_string();
        match lookup["status"].as_str() {
            Some("success") if result == text.to_uppercase() => {}
            Some("error") if FAULT_TEXTS.iter().any(|fault| result.contains(fault)) => faulted += 1,
            other => return Err(format!("turn {turn}: {other:?} tool return {result:?}")),
        }
        if seen.lock().unwrap().last() != Some(&result) {
            return Err(format!("turn {turn}: the model did not see the tool return {result:?}"));
        }
        let after = state_of(&service.agents.get(&agent_id).await.map_err(|e| e.to_string())?);
        if after != before {
            return Err(format!("turn {turn}: the agent's state changed: {before} -> {after}"));
        }
    }
    let still = service.mcp_servers.tools(&server_id).await.map_err(|e| e.to_string())?;
    if still.len() != 1 {
        return Err(format!("the server has {} tools after the faults", still.len()));
    }
    service.shutdown().await;
    Ok(faulted)
}

fn simulation(seed: u64) -> Simulation {
    let mut builder = Simulation::builder().seed(seed).nodes(1);
    for fault in MCP_FAULTS {
        builder = builder.fault(FaultRule::new(fault, FAULT_PROBABILITY));
    }
    builder.build().unwrap()
}

fn run_seed(seed: u64) -> (Result<usize, String>, BTreeMap<FaultKind, u64>) {
    let mut sim = simulation(seed);
    let outcome = Arc::new(Mutex::new(None));
    let (slot, node) = (Arc::clone(&outcome), sim.node(0).clone());
    sim.spawn(0, "agent-turns", async move {
        *slot.lock().unwrap() = Some(scenario(node, Arc::new(Mutex::new(Vec::new()))).await);
    });
    let run = sim.run_until_idle(Duration::from_secs(SIM_LIMIT_SECS));
    let fired = MCP_FAULTS.iter().map(|fault| (fault.kind(), sim.fault_count(fault.kind()))).collect();
    let result = match run {
        Err(failure) => Err(format!("simulation failed: {failure:?}")),
        Ok(_) => outcome.lock().unwrap().take().unwrap_or_else(|| Err("the scenario never finished".into())),
    };
    (result, fired)
}

#[test]
fn mcp_faults_reach_the_model_as_error_returns_and_leave_the_agent_as_it_was() {
    let mut fired_total: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut faulted_turns = 0;
    for seed in seeds_to_run(0..SEEDS_COUNT).unwrap() {
        let (result, fired) = run_seed(seed);
        match result {
            Ok(faulted) => faulted_turns += faulted,
            Err(broken) => panic!("seed {seed}: {broken}\nreplay: {}", replay_command(seed)),
        }
        for (kind, count) in fired {
            *fired_total.entry(kind).or_default() += count;
        }
    }
    if std::env::var(kelpie_dst::DST_SEED_ENV).is_err() {
        for fault in MCP_FAULTS {
            assert!(fired_total[&fault.kind()] > 0, "{:?} never fired over the sweep", fault.kind());
        }
        assert!(faulted_turns > 0, "no turn met a fault");
    }
}

#[test]
fn one_seed_replays_one_execution() {
    let trace = |seed| {
        let mut sim = simulation(seed);
        let node = sim.node(0).clone();
        sim.spawn(0, "agent-turns", async move {
            let _ = scenario(node, Arc::new(Mutex::new(Vec::new()))).await;
        });
        sim.run_until_idle(Duration::from_secs(SIM_LIMIT_SECS)).unwrap();
        sim.trace_hash()
    };
    assert_eq!(trace(11), trace(11));
    assert_ne!(trace(11), trace(12));
}
