//! Forwarding between two in-process nodes sharing one real PostgreSQL:
//! each node has its own connection pools, membership, TCP server and
//! transport. An unowned actor is claimed by the node that receives the
//! request; a request arriving at the other node is forwarded to the owner
//! and runs there; after the owner crashes and its lease runs out, the
//! surviving node claims the actor with a newer epoch.

// Real time must pass for heartbeats and leases judged by the database.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::transport::REQUEST_TIMEOUT_MS_DEFAULT;
use kelpie_cluster::{
    ClusterError, ForwardHandler, Forwarder, LocalInvoker, Member, MembershipConfig, NodeTable, TcpServer,
    TcpTransport, TransportConfig,
};
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Env, NodeId};
use kelpie_registry::PostgresRegistry;
use kelpie_storage::test_support::PostgresServer;
use kelpie_storage::PostgresBackend;

const TEST_LEASE_MS: u64 = 600;
const TEST_HEARTBEAT_INTERVAL_MS: u64 = 50;
const TEST_HEARTBEAT_TIMEOUT_MS: u64 = 300;

/// Records every invocation it runs: (actor, epoch, payload).
struct RecordingInvoker {
    name: String,
    runs: Mutex<Vec<(String, u64, String)>>,
}

impl LocalInvoker for RecordingInvoker {
    fn invoke(&self, actor_id: ActorId, epoch: u64, payload: Vec<u8>) -> BoxFuture<Result<Vec<u8>, String>> {
        let text = String::from_utf8_lossy(&payload).into_owned();
        self.runs.lock().unwrap().push((actor_id.to_string(), epoch, text.clone()));
        let answer = format!("{} ran {text} at epoch {epoch}", self.name).into_bytes();
        Box::pin(async move { Ok(answer) })
    }
}

struct Node {
    forwarder: Forwarder,
    member: Member,
    invoker: Arc<RecordingInvoker>,
    server: TcpServer,
}

fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn start_node(url: &str, name: &str) -> Node {
    let env = Env::production();
    let backend = Arc::new(PostgresBackend::connect(url).await.expect("storage"));
    let directory = Arc::new(PostgresRegistry::with_lease(backend, TEST_LEASE_MS));
    let table = NodeTable::connect(url).await.expect("node table");
    let advertise = free_loopback_addr();
    let config = MembershipConfig::new(TEST_HEARTBEAT_INTERVAL_MS, TEST_HEARTBEAT_TIMEOUT_MS);
    let member =
        Member::join(table, env.clone(), NodeId::new(name).unwrap(), advertise, config).await.expect("join");
    let transport = Arc::new(TcpTransport::new(env.clone(), TransportConfig::default()));
    let invoker = Arc::new(RecordingInvoker { name: name.to_string(), runs: Mutex::new(Vec::new()) });
    let forwarder =
        Forwarder::new(member.clone(), directory, transport, invoker.clone(), REQUEST_TIMEOUT_MS_DEFAULT);
    let handler = Arc::new(ForwardHandler::new(forwarder.clone()));
    let server = TcpServer::bind(advertise, handler, env, TransportConfig::default()).await.expect("bind");
    Node { forwarder, member, invoker, server }
}

fn runs(node: &Node) -> Vec<(String, u64, String)> {
    node.invoker.runs.lock().unwrap().clone()
}

async fn send(node: &Node, actor: &ActorId, text: &str) -> Result<String, ClusterError> {
    let answer = node.forwarder.dispatch(actor, text.as_bytes().to_vec()).await?;
    Ok(String::from_utf8(answer).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_on_the_owner_and_move_after_it_fails() {
    let Some(server) = PostgresServer::start().expect("start PostgreSQL") else { return };
    let url = server.create_database("forwarding").expect("create database");
    let n1 = start_node(&url, "n1").await;
    let n2 = start_node(&url, "n2").await;
    let actor = ActorId::new("agents", "forwarded").unwrap();

    assert_eq!(
        send(&n1, &actor, "m1").await.unwrap(),
        "n1 ran m1 at epoch 1",
        "unowned: claimed where received"
    );
    assert_eq!(send(&n2, &actor, "m2").await.unwrap(), "n1 ran m2 at epoch 1", "owned by n1: forwarded");
    assert_eq!(send(&n1, &actor, "m3").await.unwrap(), "n1 ran m3 at epoch 1");
    assert_eq!(runs(&n1).len(), 3);
    assert!(runs(&n2).is_empty(), "nothing ran on the node that forwarded");

    // n1 crashes: no heartbeats, no server, and (this primitive renews nothing) its lease runs out.
    n1.member.halt();
    n1.server.shutdown();
    tokio::time::sleep(Duration::from_millis(TEST_HEARTBEAT_TIMEOUT_MS + 2 * TEST_HEARTBEAT_INTERVAL_MS))
        .await;
    let start = std::time::Instant::now();
    let answer = loop {
        match send(&n2, &actor, "m4").await {
            Ok(answer) => break answer,
            Err(ClusterError::NodeNotLive { node_id }) => {
                assert_eq!(node_id.as_str(), "n1", "only the failed owner blocks, until its lease expires");
                assert!(start.elapsed() < Duration::from_millis(TEST_LEASE_MS * 2), "lease never expired");
                tokio::time::sleep(Duration::from_millis(TEST_HEARTBEAT_INTERVAL_MS)).await;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(answer, "n2 ran m4 at epoch 2", "the survivor claims with a newer epoch");
    assert_eq!(runs(&n2), vec![("agents/forwarded".to_string(), 2, "m4".to_string())]);
    n2.member.halt();
}
