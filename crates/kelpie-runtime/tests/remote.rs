//! Two clustered runtimes sharing one store and one placement directory,
//! joined by an in-process [`Remote`]: invocations reach the owner wherever
//! they are sent, errors cross unchanged, a draining node hands new
//! activations to its peer, and a planned move (deactivate, then touch on
//! the target) keeps every message exactly once.

// Real tokio tasks on purpose; seeded interleavings are the simulator's job.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::{PlacementDirectory, Registry, StoragePlacementStore};
use kelpie_runtime::{Actor, ActorContext, EncodedInvoker, Remote, Runtime, RuntimeConfig};
use kelpie_storage::Storage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Log {
    entries: Vec<(u64, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Append(u64),
    Refuse,
    Read,
}

/// What served the request, and the log after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reply {
    node: String,
    epoch: u64,
    values: Vec<u64>,
}

struct LogActor;

impl Actor for LogActor {
    type State = Log;
    type Message = Msg;
    type Reply = Reply;

    async fn handle(&self, ctx: &mut ActorContext<'_, Log>, message: Msg) -> Result<Reply> {
        match message {
            Msg::Append(value) => ctx.state.entries.push((value, ctx.node_id.to_string())),
            Msg::Refuse => {
                return Err(Error::LimitExceeded {
                    what: "appetite".into(),
                    actual: 2,
                    limit_name: "APPETITE_COUNT_MAX",
                    limit: 1,
                })
            }
            Msg::Read => {}
        }
        Ok(Reply {
            node: ctx.node_id.to_string(),
            epoch: ctx.epoch,
            values: ctx.state.entries.iter().map(|(value, _)| *value).collect(),
        })
    }
}

/// Routes forwarded invocations to the peers' runtimes in this process.
#[derive(Default)]
struct Loopback {
    peers: Mutex<BTreeMap<NodeId, Arc<dyn EncodedInvoker>>>,
    accepting: AtomicBool,
    forwarded: AtomicUsize,
    self_id: Mutex<Option<NodeId>>,
}

impl Remote for Loopback {
    fn accepts_activations(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    fn forward(
        &self,
        target: Option<NodeId>,
        actor_id: ActorId,
        payload: Vec<u8>,
    ) -> BoxFuture<Result<Vec<u8>>> {
        self.forwarded.fetch_add(1, Ordering::SeqCst);
        let peers = self.peers.lock().unwrap();
        let me = self.self_id.lock().unwrap().clone();
        let peer = match target {
            Some(node) => peers.get(&node).cloned(),
            None => peers.iter().find(|(node, _)| Some(*node) != me.as_ref()).map(|(_, p)| p.clone()),
        };
        Box::pin(async move {
            match peer {
                Some(peer) => Ok(peer.invoke_encoded(actor_id, payload).await),
                None => Err(Error::Internal("no such peer".into())),
            }
        })
    }
}

struct Cluster {
    a: Runtime<LogActor>,
    b: Runtime<LogActor>,
    remote_a: Arc<Loopback>,
    remote_b: Arc<Loopback>,
    directory: Arc<dyn PlacementDirectory>,
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn id(name: &str) -> ActorId {
    ActorId::new("logs", name).unwrap()
}

fn cluster() -> Cluster {
    let env = Env::production();
    let storage = Storage::memory();
    let directory: Arc<dyn PlacementDirectory> =
        Arc::new(Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone()));
    let runtime = |name: &str, remote: Arc<Loopback>| {
        *remote.self_id.lock().unwrap() = Some(node(name));
        remote.accepting.store(true, Ordering::SeqCst);
        Runtime::clustered(
            LogActor,
            storage.clone(),
            directory.clone(),
            env.clone(),
            RuntimeConfig::new(node(name)),
            remote,
        )
        .unwrap()
    };
    let (remote_a, remote_b) = (Arc::new(Loopback::default()), Arc::new(Loopback::default()));
    let a = runtime("node-a", remote_a.clone());
    let b = runtime("node-b", remote_b.clone());
    for remote in [&remote_a, &remote_b] {
        let mut peers = remote.peers.lock().unwrap();
        peers.insert(node("node-a"), Arc::new(a.clone()) as Arc<dyn EncodedInvoker>);
        peers.insert(node("node-b"), Arc::new(b.clone()) as Arc<dyn EncodedInvoker>);
    }
    Cluster { a, b, remote_a, remote_b, directory }
}

#[tokio::test]
async fn an_owned_actor_is_served_by_its_owner_from_either_node() {
    let c = cluster();
    let actor = id("owned");
    let first = c.a.invoke(&actor, Msg::Append(1)).await.unwrap();
    assert_eq!((first.node.as_str(), first.epoch), ("node-a", 1));
    let second = c.b.invoke(&actor, Msg::Append(2)).await.unwrap();
    assert_eq!(second, Reply { node: "node-a".into(), epoch: 1, values: vec![1, 2] });
    assert_eq!(c.remote_b.forwarded.load(Ordering::SeqCst), 1, "node-b forwarded once");
    assert_eq!(c.remote_a.forwarded.load(Ordering::SeqCst), 0, "node-a ran its own");
    assert!(!c.b.is_active(&actor), "no second activation on node-b");
    assert_eq!(c.directory.live_owner(&actor).await.unwrap().unwrap().node_id, node("node-a"));
}

#[tokio::test]
async fn an_error_crosses_the_wire_as_the_same_variant() {
    let c = cluster();
    let actor = id("refuses");
    c.a.invoke(&actor, Msg::Read).await.unwrap();
    let err = c.b.invoke(&actor, Msg::Refuse).await.unwrap_err();
    assert_eq!(
        err,
        Error::LimitExceeded {
            what: "appetite".into(),
            actual: 2,
            limit_name: "APPETITE_COUNT_MAX",
            limit: 1
        }
    );
}

#[tokio::test]
async fn an_unowned_actor_is_claimed_where_the_request_arrives() {
    let c = cluster();
    let actor = id("unowned");
    let reply = c.b.invoke(&actor, Msg::Append(7)).await.unwrap();
    assert_eq!((reply.node.as_str(), reply.epoch), ("node-b", 1));
    assert_eq!(c.remote_b.forwarded.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_draining_node_sends_new_activations_to_a_peer() {
    let c = cluster();
    c.remote_b.accepting.store(false, Ordering::SeqCst);
    let actor = id("drained");
    let reply = c.b.invoke(&actor, Msg::Append(3)).await.unwrap();
    assert_eq!(reply.node, "node-a");
    assert!(!c.b.is_active(&actor));
    assert!(c.a.is_active(&actor));
}

#[tokio::test]
async fn invoke_local_never_forwards() {
    let c = cluster();
    let actor = id("pinned");
    c.a.invoke(&actor, Msg::Read).await.unwrap();
    let err = c.b.invoke_local(&actor, Msg::Append(1)).await.unwrap_err();
    assert!(matches!(err, Error::NodeUnavailable { .. }), "got {err:?}");
    assert_eq!(c.remote_b.forwarded.load(Ordering::SeqCst), 0);
    let log = c.a.invoke(&actor, Msg::Read).await.unwrap();
    assert!(log.values.is_empty(), "the refused append left nothing");
}

#[tokio::test]
async fn a_planned_move_keeps_every_message_once() {
    let c = cluster();
    let actor = id("moving");
    for value in 0..10 {
        c.a.invoke(&actor, Msg::Append(value)).await.unwrap();
    }
    // Requests keep arriving at both nodes while the actor moves a -> b.
    let senders: Vec<_> = (10..40)
        .map(|value| {
            let runtime = if value % 2 == 0 { c.a.clone() } else { c.b.clone() };
            let actor = actor.clone();
            tokio::spawn(async move {
                loop {
                    match runtime.invoke(&actor, Msg::Append(value)).await {
                        Ok(_) => return,
                        Err(err) if err.is_retriable() => tokio::task::yield_now().await,
                        Err(err) => panic!("append {value} failed: {err}"),
                    }
                }
            })
        })
        .collect();
    c.a.deactivate(&actor).await;
    c.b.touch(&actor).await.unwrap_or_else(|err| assert!(err.is_retriable(), "touch: {err}"));
    for sender in senders {
        sender.await.unwrap();
    }
    let log = c.b.invoke(&actor, Msg::Read).await.unwrap();
    let mut values = log.values.clone();
    values.sort_unstable();
    assert_eq!(values, (0..40).collect::<Vec<_>>(), "every append exactly once");
    let owner = c.directory.live_owner(&actor).await.unwrap().unwrap();
    assert!(owner.epoch >= 2, "the move made a new epoch, got {}", owner.epoch);
}
