//! [`SimTransport`]: the cluster's [`Transport`] over kelpie-dst's
//! `SimNetwork`, so forwarding between simulated nodes suffers the
//! network's latency, loss and partitions. A request is one message, its
//! answer another; the wait for the answer is bounded by a timeout on the
//! node's own `Env` clock, as `TcpTransport` bounds it, and at most
//! `IN_FLIGHT_REQUESTS_COUNT_MAX` requests of the node wait at once (TCP
//! bounds each peer; one node here never comes near). Incoming requests go
//! to the node's `RequestHandler` (a real `NodeHandler`), one task each.
//!
//! Message layout: a kind byte ([`REQUEST`], [`ANSWER_OK`], [`ANSWER_ERR`]),
//! the request id (u64, big-endian), then the payload. Request ids come
//! from one counter for the whole simulation, so a late answer from before a
//! crash never completes a newer request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_cluster::transport::IN_FLIGHT_REQUESTS_COUNT_MAX;
use kelpie_cluster::{ClusterError, ClusterResult, RequestHandler, Transport};
use kelpie_core::env::BoxFuture;
use kelpie_core::{Env, NodeId};
use kelpie_dst::{Envelope, SimNode};
use tokio::sync::oneshot;

const REQUEST: u8 = 0;
const ANSWER_OK: u8 = 1;
const ANSWER_ERR: u8 = 2;
const HEADER_SIZE_BYTES: usize = 1 + 8;

type Pending = BTreeMap<u64, oneshot::Sender<Result<Vec<u8>, String>>>;

/// The loopback address a simulated node advertises: one port per node.
pub fn advertise(index: usize) -> SocketAddr {
    const SIM_PORT_BASE: u16 = 7_000;
    SocketAddr::from(([127, 0, 0, 1], SIM_PORT_BASE + u16::try_from(index).expect("few nodes")))
}

fn encode(kind: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_SIZE_BYTES + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn decode(bytes: &[u8]) -> (u8, u64, &[u8]) {
    assert!(bytes.len() >= HEADER_SIZE_BYTES, "simulated messages always carry a header");
    let id = u64::from_be_bytes(bytes[1..HEADER_SIZE_BYTES].try_into().expect("8 bytes"));
    (bytes[0], id, &bytes[HEADER_SIZE_BYTES..])
}

/// One node's end of the simulated transport. Cheap to clone.
#[derive(Clone)]
pub struct SimTransport {
    node: SimNode,
    env: Env,
    /// Node ids by advertised address.
    peers: Arc<BTreeMap<SocketAddr, NodeId>>,
    request_ids: Arc<AtomicU64>,
    pending: Arc<Mutex<Pending>>,
}

impl SimTransport {
    pub fn new(node: SimNode, peers: Arc<BTreeMap<SocketAddr, NodeId>>, request_ids: Arc<AtomicU64>) -> Self {
        let env = node.env();
        SimTransport { node, env, peers, request_ids, pending: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts the node's receive loop: requests go to `handler`, answers to
    /// the requests waiting for them. The loop dies with the node.
    pub fn serve(&self, handler: Arc<dyn RequestHandler>) {
        let this = self.clone();
        self.node.spawn("sim-transport-recv", async move {
            loop {
                let envelope = this.node.recv().await;
                this.receive(envelope, &handler);
            }
        });
    }

    fn receive(&self, envelope: Envelope, handler: &Arc<dyn RequestHandler>) {
        let (kind, id, payload) = decode(&envelope.payload);
        match kind {
            REQUEST => {
                let (node, handler, payload) = (self.node.clone(), Arc::clone(handler), payload.to_vec());
                self.node.spawn("sim-transport-handle", async move {
                    let answer = match handler.handle(payload).await {
                        Ok(body) => encode(ANSWER_OK, id, &body),
                        Err(reason) => encode(ANSWER_ERR, id, reason.as_bytes()),
                    };
                    // A lost answer is the requester's timeout.
                    let _ = node.send(&envelope.from, answer);
                });
            }
            ANSWER_OK | ANSWER_ERR => {
                let answer = match kind {
                    ANSWER_OK => Ok(payload.to_vec()),
                    _ => Err(String::from_utf8_lossy(payload).into_owned()),
                };
                // No waiter: the request timed out already.
                if let Some(waiter) = self.lock().remove(&id) {
                    let _ = waiter.send(answer);
                }
            }
            other => panic!("unknown simulated message kind {other}"),
        }
    }

    async fn exchange(&self, peer: SocketAddr, payload: Vec<u8>, timeout_ms: u64) -> ClusterResult<Vec<u8>> {
        let node_id = self
            .peers
            .get(&peer)
            .cloned()
            .ok_or_else(|| ClusterError::Connect { peer, reason: "no such simulated node".to_string() })?;
        let id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut pending = self.lock();
            if pending.len() >= IN_FLIGHT_REQUESTS_COUNT_MAX {
                return Err(ClusterError::TooManyInFlight { peer, in_flight: pending.len() });
            }
            pending.insert(id, answer_tx);
        }
        let sent = self.node.send(&node_id, encode(REQUEST, id, &payload));
        sent.map_err(|err| ClusterError::Io { peer, reason: err.to_string() })?;
        let timeout = self.env.clock.sleep(Duration::from_millis(timeout_ms));
        let outcome = tokio::select! {
            biased;
            answer = answer_rx => match answer {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(reason)) => Err(ClusterError::Remote { peer, reason }),
                Err(_) => Err(ClusterError::Io { peer, reason: "transport gone".to_string() }),
            },
            () = timeout => Err(ClusterError::Timeout { peer, timeout_ms }),
        };
        self.lock().remove(&id);
        outcome
    }
}

impl Transport for SimTransport {
    fn request(
        &self,
        peer: SocketAddr,
        payload: Vec<u8>,
        timeout_ms: u64,
    ) -> BoxFuture<ClusterResult<Vec<u8>>> {
        let this = self.clone();
        Box::pin(async move { this.exchange(peer, payload, timeout_ms).await })
    }
}
