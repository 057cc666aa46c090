//! Forwarding between two in-process nodes sharing one real PostgreSQL:
//! each node has its own storage pools, placement registry (leases on the
//! database's clock), membership, clustered runtime, TCP server and
//! transport. An unowned actor is claimed by the node that receives the
//! request; a request arriving at the other node is forwarded to the owner
//! and runs there, errors included; after the owner crashes (every task of
//! it aborted) and its lease runs out, the surviving node claims the actor
//! with a newer epoch and the history is intact.

// Real time must pass for heartbeats and leases judged by the database.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::transport::REQUEST_TIMEOUT_MS_DEFAULT;
use kelpie_cluster::{
    ClusterRemote, Member, MembershipConfig, NodeHandler, NodeTable, TcpServer, TcpTransport, TransportConfig,
};
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Env, Error, NodeId, Result, TaskSpawner};
use kelpie_registry::{PlacementDirectory, PostgresRegistry};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig};
use kelpie_storage::test_support::PostgresServer;
use kelpie_storage::{PostgresBackend, Storage};
use serde::{Deserialize, Serialize};

const TEST_LEASE_MS: u64 = 600;
const TEST_HEARTBEAT_INTERVAL_MS: u64 = 50;
const TEST_HEARTBEAT_TIMEOUT_MS: u64 = 300;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Log {
    entries: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Append(String),
    Refuse,
}

/// Which node and epoch served the request, and the log after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Served {
    node: String,
    epoch: u64,
    entries: Vec<String>,
}

struct LogActor;

impl Actor for LogActor {
    type State = Log;
    type Message = Msg;
    type Reply = Served;

    async fn handle(&self, ctx: &mut ActorContext<'_, Log>, message: Msg) -> Result<Served> {
        match message {
            Msg::Append(text) => ctx.state.entries.push(text),
            Msg::Refuse => return Err(Error::NotFound { kind: "entry", id: "missing".into() }),
        }
        Ok(Served { node: ctx.node_id.to_string(), epoch: ctx.epoch, entries: ctx.state.entries.clone() })
    }
}

/// Spawns on tokio and keeps every task's abort handle, so the test can
/// crash a node by aborting all of its tasks at once.
#[derive(Default)]
struct CrashableSpawner {
    handles: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TaskSpawner for CrashableSpawner {
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        self.handles.lock().unwrap().push(tokio::spawn(task).abort_handle());
    }
}

struct Node {
    runtime: Runtime<LogActor>,
    spawner: Arc<CrashableSpawner>,
    _server: TcpServer,
}

impl Node {
    fn crash(&self) {
        for handle in self.spawner.handles.lock().unwrap().drain(..) {
            handle.abort();
        }
    }
}

fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn start_node(url: &str, name: &str) -> Node {
    let spawner = Arc::new(CrashableSpawner::default());
    let mut env = Env::production();
    env.spawner = spawner.clone();
    let node_id = NodeId::new(name).unwrap();
    let backend = Arc::new(PostgresBackend::connect(url).await.expect("storage"));
    let storage = Storage::from_backend(backend.clone());
    let directory: Arc<dyn PlacementDirectory> =
        Arc::new(PostgresRegistry::with_lease(backend, TEST_LEASE_MS));
    let table = NodeTable::connect(url).await.expect("node table");
    let advertise = free_loopback_addr();
    let config = MembershipConfig::new(TEST_HEARTBEAT_INTERVAL_MS, TEST_HEARTBEAT_TIMEOUT_MS);
    let member = Member::join(table, env.clone(), node_id.clone(), advertise, config).await.expect("join");
    let transport = Arc::new(TcpTransport::new(env.clone(), TransportConfig::default()));
    let remote =
        Arc::new(ClusterRemote::new(Arc::new(member), transport, env.clone(), REQUEST_TIMEOUT_MS_DEFAULT));
    let runtime =
        Runtime::clustered(LogActor, storage, directory, env.clone(), RuntimeConfig::new(node_id), remote)
            .expect("runtime");
    let handler = NodeHandler::default().with_namespace("logs", Arc::new(runtime.clone()));
    let server =
        TcpServer::bind(advertise, Arc::new(handler), env, TransportConfig::default()).await.expect("bind");
    Node { runtime, spawner, _server: server }
}

fn append(text: &str) -> Msg {
    Msg::Append(text.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_on_the_owner_and_move_after_it_fails() {
    let Some(server) = PostgresServer::start_or_skip("forwarding") else { return };
    let url = server.create_database("forwarding").expect("create database");
    let n1 = start_node(&url, "n1").await;
    let n2 = start_node(&url, "n2").await;
    let actor = ActorId::new("logs", "forwarded").unwrap();

    let first = n1.runtime.invoke(&actor, append("m1")).await.unwrap();
    assert_eq!((first.node.as_str(), first.epoch), ("n1", 1), "unowned: claimed where received");
    let second = n2.runtime.invoke(&actor, append("m2")).await.unwrap();
    assert_eq!(second, Served { node: "n1".into(), epoch: 1, entries: vec!["m1".into(), "m2".into()] });
    assert!(!n2.runtime.is_active(&actor), "nothing ran on the node that forwarded");
    let refused = n2.runtime.invoke(&actor, Msg::Refuse).await.unwrap_err();
    assert_eq!(refused, Error::NotFound { kind: "entry", id: "missing".into() }, "errors cross unchanged");

    n1.crash();
    let crashed_at = std::time::Instant::now();
    let answer = loop {
        match n2.runtime.invoke(&actor, append("m3")).await {
            Ok(answer) => break answer,
            Err(err) => {
                assert!(err.is_retriable(), "only retriable errors while the dead owner's lease runs: {err}");
                assert!(
                    crashed_at.elapsed() < Duration::from_millis(TEST_LEASE_MS * 5),
                    "lease never expired"
                );
                tokio::time::sleep(Duration::from_millis(TEST_HEARTBEAT_INTERVAL_MS)).await;
            }
        }
    };
    assert_eq!(answer.node, "n2", "the survivor claims");
    assert_eq!(answer.epoch, 2, "with a newer epoch");
    assert_eq!(answer.entries, vec!["m1", "m2", "m3"], "the history is intact and in order");
    println!("failover took {} ms", crashed_at.elapsed().as_millis());
    n2.runtime.shutdown().await;
}
