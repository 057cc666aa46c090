//! A simulated point-to-point network between the nodes of a simulation.
//!
//! `send` is fire-and-forget, like a datagram: the sender learns nothing of
//! the message's fate. Each copy that survives the fault points travels as a
//! delivery task on the receiver's node that sleeps for the sampled latency
//! and then appends the message to the receiver's inbox, so messages
//! naturally overtake each other when their latencies differ. Partitions are
//! checked at send and again at delivery (a link cut while a message is in
//! flight loses it). An inbox lives in its node's memory: a crash empties it.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use kelpie_core::{NodeId, RngSource};
use thiserror::Error;

use crate::executor::{Executor, Sleep};
use crate::fault::{Fault, FaultKind};
use crate::rng::DeterministicRng;
use crate::trace::{DropReason, TraceEventKind};

/// Deepest an inbox may grow; later messages are dropped as on a full socket buffer.
pub const SIM_NETWORK_QUEUE_DEPTH_MAX: usize = 4_096;

/// Largest payload one message may carry: 16 MiB.
pub const SIM_NETWORK_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Longest a reordered message waits to be overtaken before it is delivered anyway.
pub const SIM_NETWORK_REORDER_HOLD_MS_MAX: u64 = 20;

/// Largest latency a configuration may ask for.
pub const SIM_NETWORK_LATENCY_MS_MAX: u64 = 60_000;

/// Latency and capacity of the simulated links.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Each message's latency is uniform in `[latency_us_min, latency_us_max]`...
    pub latency_us_min: u64,
    pub latency_us_max: u64,
    /// ...except with this probability, when it is uniform up to `tail_latency_ms_max`.
    pub tail_latency_probability: f64,
    pub tail_latency_ms_max: u64,
    pub inbox_depth_max: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            latency_us_min: 200,
            latency_us_max: 2_000,
            tail_latency_probability: 0.01,
            tail_latency_ms_max: 50,
            inbox_depth_max: SIM_NETWORK_QUEUE_DEPTH_MAX,
        }
    }
}

impl NetworkConfig {
    fn validate(&self) {
        assert!(self.latency_us_min <= self.latency_us_max, "latency range is empty");
        assert!(self.latency_us_max <= SIM_NETWORK_LATENCY_MS_MAX * 1_000, "latency over the maximum");
        assert!(self.tail_latency_ms_max <= SIM_NETWORK_LATENCY_MS_MAX, "tail latency over the maximum");
        assert!((0.0..=1.0).contains(&self.tail_latency_probability), "tail probability outside [0, 1]");
        assert!((1..=SIM_NETWORK_QUEUE_DEPTH_MAX).contains(&self.inbox_depth_max), "bad inbox depth");
    }
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique per send; both copies of a duplicated message share it.
    pub id: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetworkError {
    #[error("node {node} is not part of this simulation")]
    UnknownNode { node: NodeId },
    #[error(
        "message of {bytes} bytes is over SIM_NETWORK_PAYLOAD_BYTES_MAX = {SIM_NETWORK_PAYLOAD_BYTES_MAX}"
    )]
    PayloadTooLarge { bytes: usize },
}

/// What happened to messages so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped_partitioned: u64,
    pub dropped_lost: u64,
    pub dropped_inbox_full: u64,
    pub dropped_destination_down: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delayed: u64,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Envelope>,
    waiters: Vec<Waker>,
    incarnation: u64,
}

struct NetState {
    inboxes: Vec<Inbox>,
    /// A cut link `(from, to)` and when it heals (`None`: when told to).
    cut: BTreeMap<(usize, usize), Option<u64>>,
    /// Reordered messages per link, waiting to be overtaken.
    held: BTreeMap<(usize, usize), Vec<(u64, Envelope)>>,
    next_hold_token: u64,
    next_message_id: u64,
    stats: NetworkStats,
}

struct NetInner {
    executor: Arc<Executor>,
    rng: DeterministicRng,
    config: NetworkConfig,
    index: BTreeMap<NodeId, usize>,
    state: Mutex<NetState>,
}

/// The network of one simulation. Cheap to clone.
#[derive(Clone)]
pub struct SimNetwork {
    inner: Arc<NetInner>,
}

/// How a message copy travels: the fault decisions taken at send time.
struct Route {
    copies: u32,
    extra_ns: u64,
    reorder: bool,
}

impl SimNetwork {
    pub(crate) fn new(executor: Arc<Executor>, rng: DeterministicRng, config: NetworkConfig) -> Self {
        config.validate();
        let ids: Vec<NodeId> = executor.lock().nodes.iter().map(|node| node.id.clone()).collect();
        let index = ids.iter().cloned().enumerate().map(|(i, id)| (id, i)).collect();
        let inboxes = ids.iter().map(|_| Inbox::default()).collect();
        let state = NetState {
            inboxes,
            cut: BTreeMap::new(),
            held: BTreeMap::new(),
            next_hold_token: 0,
            next_message_id: 0,
            stats: NetworkStats::default(),
        };
        SimNetwork { inner: Arc::new(NetInner { executor, rng, config, index, state: Mutex::new(state) }) }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.inner.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn resolve(&self, node: &NodeId) -> Result<usize, NetworkError> {
        self.inner.index.get(node).copied().ok_or_else(|| NetworkError::UnknownNode { node: node.clone() })
    }

    /// Sends `payload` from `from` to `to`; returns the message id. Loss,
    /// partitions and a down receiver are silent, as on a real network.
    pub fn send(&self, from: &NodeId, to: &NodeId, payload: Vec<u8>) -> Result<u64, NetworkError> {
        let (source, target) = (self.resolve(from)?, self.resolve(to)?);
        if payload.len() > SIM_NETWORK_PAYLOAD_BYTES_MAX {
            return Err(NetworkError::PayloadTooLarge { bytes: payload.len() });
        }
        let id = {
            let mut state = self.lock();
            let id = state.next_message_id;
            state.next_message_id += 1;
            state.stats.sent += 1;
            id
        };
        let bytes = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.inner.executor.record(TraceEventKind::MessageSent {
            message: id,
            from: source as u32,
            to: target as u32,
            bytes,
        });
        if let Some(route) = self.route(id, source, target) {
            let envelope = Envelope { id, from: from.clone(), to: to.clone(), payload };
            self.dispatch(envelope, target, route);
        }
        Ok(id)
    }

    /// Applies partitions and the network faults; `None` when the message is dropped.
    fn route(&self, id: u64, source: usize, target: usize) -> Option<Route> {
        let executor = &self.inner.executor;
        let now = executor.now_ns();
        if self.link_cut(source, target, now) {
            self.drop_message(id, DropReason::Partitioned);
            return None;
        }
        if let Some(Fault::NetworkPartition { duration_ms }) =
            executor.fault(FaultKind::NetworkPartition, Some(source))
        {
            let heal_at = Some(now.saturating_add(duration_ms.saturating_mul(1_000_000)));
            let mut state = self.lock();
            state.cut.insert((source, target), heal_at);
            state.cut.insert((target, source), heal_at);
            drop(state);
            self.drop_message(id, DropReason::Partitioned);
            return None;
        }
        if executor.fault(FaultKind::NetworkPacketLoss, Some(source)).is_some() {
            self.drop_message(id, DropReason::Lost);
            return None;
        }
        let mut route = Route { copies: 1, extra_ns: 0, reorder: false };
        if let Some(Fault::NetworkDelay { extra_ms_max }) =
            executor.fault(FaultKind::NetworkDelay, Some(source))
        {
            route.extra_ns = self.inner.rng.between_inclusive(1, extra_ms_max.max(1)) * 1_000_000;
            self.lock().stats.delayed += 1;
        }
        if executor.fault(FaultKind::NetworkDuplicate, Some(source)).is_some() {
            route.copies = 2;
            self.lock().stats.duplicated += 1;
        }
        route.reorder = executor.fault(FaultKind::NetworkReorder, Some(source)).is_some();
        Some(route)
    }

    fn dispatch(&self, envelope: Envelope, target: usize, route: Route) {
        debug_assert!((1..=2).contains(&route.copies));
        for _ in 0..route.copies {
            let latency_ns = self.sample_latency_ns().saturating_add(route.extra_ns);
            let network = self.clone();
            let copy = envelope.clone();
            let reorder = route.reorder;
            let executor = self.inner.executor.clone();
            let sleep = Sleep::new(executor.clone(), latency_ns);
            let delivery = Box::pin(async move {
                sleep.await;
                if reorder {
                    let token = network.hold_back(copy, target);
                    Sleep::new(executor, SIM_NETWORK_REORDER_HOLD_MS_MAX * 1_000_000).await;
                    network.release_held(target, token);
                } else {
                    network.deliver(copy, target);
                }
            });
            if !self.inner.executor.spawn(Some(target), "net-deliver", delivery) {
                self.drop_message(envelope.id, DropReason::DestinationDown);
            }
        }
    }

    fn sample_latency_ns(&self) -> u64 {
        let config = &self.inner.config;
        let rng = &self.inner.rng;
        if rng.gen_bool(config.tail_latency_probability) {
            return rng.between_inclusive(config.latency_us_max, config.tail_latency_ms_max.max(1) * 1_000)
                * 1_000;
        }
        rng.between_inclusive(config.latency_us_min, config.latency_us_max) * 1_000
    }

    /// Parks a reordered message until the next message on its link overtakes
    /// it (or the hold time runs out); returns the token to release it by.
    fn hold_back(&self, envelope: Envelope, target: usize) -> u64 {
        let source = self.inner.index[&envelope.from];
        let mut state = self.lock();
        let token = state.next_hold_token;
        state.next_hold_token += 1;
        state.stats.reordered += 1;
        state.held.entry((source, target)).or_default().push((token, envelope));
        token
    }

    fn release_held(&self, target: usize, token: u64) {
        let released = {
            let mut state = self.lock();
            let link = state
                .held
                .iter()
                .find(|(_, parked)| parked.iter().any(|(t, _)| *t == token))
                .map(|(l, _)| *l);
            link.and_then(|link| {
                let parked = state.held.get_mut(&link)?;
                let position = parked.iter().position(|(t, _)| *t == token)?;
                Some(parked.remove(position).1)
            })
        };
        // Already overtaken and delivered otherwise.
        if let Some(envelope) = released {
            self.enqueue(vec![envelope], target);
        }
    }

    /// Delivers `envelope`, then whatever was held back on its link behind it.
    fn deliver(&self, envelope: Envelope, target: usize) {
        let source = self.inner.index[&envelope.from];
        let overtaken = self.lock().held.remove(&(source, target)).unwrap_or_default();
        let mut batch = Vec::with_capacity(1 + overtaken.len());
        batch.push(envelope);
        batch.extend(overtaken.into_iter().map(|(_, held)| held));
        self.enqueue(batch, target);
    }

    fn enqueue(&self, envelopes: Vec<Envelope>, target: usize) {
        let now = self.inner.executor.now_ns();
        let incarnation = self.inner.executor.lock().nodes[target].incarnation;
        for envelope in envelopes {
            let source = self.inner.index[&envelope.from];
            if self.link_cut(source, target, now) {
                self.drop_message(envelope.id, DropReason::Partitioned);
                continue;
            }
            let mut state = self.lock();
            let inbox = &mut state.inboxes[target];
            refresh_inbox(inbox, incarnation);
            if inbox.queue.len() >= self.inner.config.inbox_depth_max {
                drop(state);
                self.drop_message(envelope.id, DropReason::InboxFull);
                continue;
            }
            let id = envelope.id;
            inbox.queue.push_back(envelope);
            let waiters = std::mem::take(&mut inbox.waiters);
            state.stats.delivered += 1;
            drop(state);
            self.inner.executor.record(TraceEventKind::MessageDelivered { message: id, to: target as u32 });
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    fn drop_message(&self, id: u64, reason: DropReason) {
        {
            let mut state = self.lock();
            let stats = &mut state.stats;
            match reason {
                DropReason::Partitioned => stats.dropped_partitioned += 1,
                DropReason::Lost => stats.dropped_lost += 1,
                DropReason::InboxFull => stats.dropped_inbox_full += 1,
                DropReason::DestinationDown => stats.dropped_destination_down += 1,
            }
        }
        self.inner.executor.record(TraceEventKind::MessageDropped { message: id, reason });
    }

    fn link_cut(&self, from: usize, to: usize, now_ns: u64) -> bool {
        let mut state = self.lock();
        match state.cut.get(&(from, to)) {
            Some(None) => true,
            Some(Some(heal_at)) if now_ns < *heal_at => true,
            Some(Some(_)) => {
                state.cut.remove(&(from, to));
                false
            }
            None => false,
        }
    }

    /// The next message for `node`, waiting for one to arrive.
    pub fn recv(&self, node: &NodeId) -> Result<Recv, NetworkError> {
        Ok(Recv { network: self.clone(), node: self.resolve(node)? })
    }

    /// The next message for `node` if one has arrived.
    pub fn try_recv(&self, node: &NodeId) -> Result<Option<Envelope>, NetworkError> {
        let index = self.resolve(node)?;
        let incarnation = self.inner.executor.lock().nodes[index].incarnation;
        let mut state = self.lock();
        let inbox = &mut state.inboxes[index];
        refresh_inbox(inbox, incarnation);
        Ok(inbox.queue.pop_front())
    }

    /// Cuts every link between group `a` and group `b`, both ways, until healed.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) -> Result<(), NetworkError> {
        for left in a {
            for right in b {
                self.partition_one_way(left, right)?;
                self.partition_one_way(right, left)?;
            }
        }
        Ok(())
    }

    /// Cuts the link from `from` to `to` only: `to` can still reach `from`.
    pub fn partition_one_way(&self, from: &NodeId, to: &NodeId) -> Result<(), NetworkError> {
        let (source, target) = (self.resolve(from)?, self.resolve(to)?);
        assert_ne!(source, target, "a node cannot be partitioned from itself");
        self.lock().cut.insert((source, target), None);
        Ok(())
    }

    /// Cuts `node` off from every other node, both ways.
    pub fn isolate(&self, node: &NodeId) -> Result<(), NetworkError> {
        let others: Vec<NodeId> = self.inner.index.keys().filter(|other| *other != node).cloned().collect();
        self.partition(std::slice::from_ref(node), &others)
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Whether a message sent now from `from` would pass the partitions.
    pub fn link_up(&self, from: &NodeId, to: &NodeId) -> Result<bool, NetworkError> {
        let (source, target) = (self.resolve(from)?, self.resolve(to)?);
        Ok(!self.link_cut(source, target, self.inner.executor.now_ns()))
    }

    pub fn stats(&self) -> NetworkStats {
        self.lock().stats
    }
}

/// Empties an inbox whose node crashed since it was last touched.
fn refresh_inbox(inbox: &mut Inbox, incarnation: u64) {
    if inbox.incarnation != incarnation {
        debug_assert!(inbox.incarnation < incarnation);
        inbox.queue.clear();
        inbox.waiters.clear();
        inbox.incarnation = incarnation;
    }
}

/// The future returned by [`SimNetwork::recv`].
pub struct Recv {
    network: SimNetwork,
    node: usize,
}

impl Future for Recv {
    type Output = Envelope;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Envelope> {
        let incarnation = self.network.inner.executor.lock().nodes[self.node].incarnation;
        let mut state = self.network.lock();
        let inbox = &mut state.inboxes[self.node];
        refresh_inbox(inbox, incarnation);
        if let Some(envelope) = inbox.queue.pop_front() {
            return Poll::Ready(envelope);
        }
        if !inbox.waiters.iter().any(|waiter| waiter.will_wake(context.waker())) {
            inbox.waiters.push(context.waker().clone());
        }
        Poll::Pending
    }
}
