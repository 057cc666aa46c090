//! The shared world of the runtime's and the cluster's DST scenarios: one
//! "database" (a memory backend) seen by every node through a per-node
//! wrapper that injects the node's storage faults and its cut-offs from the
//! database, one placement store whose changes are recorded, and the
//! observations the invariants read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::FutureExt;
use kelpie_core::env::BoxFuture;
use kelpie_core::{ActorId, Clock, Error, NodeId, Result, RngSource};
use kelpie_dst::properties::{
    LeaseEvent, ObservedActivation, ObservedCommit, ObservedFence, ObservedPlacement, Phase, VersionedValue,
};
use kelpie_dst::SimNode;
use kelpie_registry::{CasResult, PlacementRecord, PlacementStore, StoragePlacementStore};
use kelpie_storage::types::{CommitRequest, StoredRows};
use kelpie_storage::{
    Backend, BoxFut, ClaimOutcome, CommitInfo, MemoryBackend, Placement, ScanPage, Storage, Versioned,
};

/// Key under which the runtime stores an actor's serialized state.
const RUNTIME_STATE_KEY: &[u8] = b"s";

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// What the scenario records as it runs; read by the invariants.
#[derive(Default)]
pub struct Observations {
    /// `(actor, node index)` -> the epoch and phase of that node's latest activation.
    pub activations: BTreeMap<(ActorId, usize), (u64, Phase)>,
    pub lease_events: Vec<LeaseEvent<ActorId, NodeId>>,
    /// The directory's latest record per actor.
    pub directory: BTreeMap<ActorId, PlacementRecord>,
    pub commits: Vec<ObservedCommit<ActorId, NodeId>>,
    /// `(actor, request)` -> `(node, epoch)` of the activation that acknowledged it.
    pub acknowledged: BTreeMap<(ActorId, u64), VersionedValue<(String, u64)>>,
    /// Invocations refused because their activation had been fenced off (zombies caught).
    pub fenced_count: u64,
    /// `(actor, request)` answered with a definite failure: fenced off, or
    /// its handler panicked. None of them may be in durable state.
    pub failed: BTreeSet<(ActorId, u64)>,
    /// `(actor, request)` accepted by an activation that finished without
    /// answering it.
    pub unanswered: BTreeSet<(ActorId, u64)>,
    /// Acknowledged invocations served on another node than the client's (forwarded).
    pub forwarded_count: u64,
}

/// The database every node shares, recording each accepted fenced commit.
pub struct SharedDatabase {
    backend: MemoryBackend,
    observations: Arc<Mutex<Observations>>,
    /// Commits that reached the database, accepted or refused.
    commit_attempts: AtomicU64,
}

impl SharedDatabase {
    pub fn new(observations: Arc<Mutex<Observations>>) -> Arc<Self> {
        Self::on_backend(observations, MemoryBackend::new())
    }

    /// The database on `backend` (one with a planted defect, say).
    pub fn on_backend(observations: Arc<Mutex<Observations>>, backend: MemoryBackend) -> Arc<Self> {
        Arc::new(SharedDatabase { backend, observations, commit_attempts: AtomicU64::new(0) })
    }

    /// How many commits reached the database so far, accepted or refused.
    pub fn commit_attempts(&self) -> u64 {
        self.commit_attempts.load(Ordering::SeqCst)
    }

    /// A backend on the database that no node's faults touch.
    pub fn direct(database: &Arc<Self>) -> Arc<DirectBackend> {
        Arc::new(DirectBackend(Arc::clone(database)))
    }

    /// The fencing record of `actor` (the memory backend answers at once).
    pub fn fence(&self, actor: &ActorId) -> Option<ObservedFence<ActorId, NodeId>> {
        let placement = self.backend.get_placement(actor).now_or_never()?.ok()??;
        Some(ObservedFence { actor: placement.actor_id, node: placement.node_id, epoch: placement.epoch })
    }

    /// The `(node, epoch)` log the probe actor keeps, as durable entries.
    pub fn durable_log(&self, actor: &ActorId) -> BTreeMap<(ActorId, u64), VersionedValue<(String, u64)>> {
        let stored = self.backend.get(actor, RUNTIME_STATE_KEY).now_or_never().and_then(|r| r.ok()).flatten();
        let Some(stored) = stored else { return BTreeMap::new() };
        let log: super::probe::ProbeLog = serde_json::from_slice(&stored.value).expect("state decodes");
        let entries = log.entries.into_iter();
        entries
            .map(|(node, epoch, request)| {
                ((actor.clone(), request), VersionedValue { seq: 0, value: (node, epoch) })
            })
            .collect()
    }

    fn record_commit(&self, request: &CommitRequest, info: &CommitInfo) {
        let Some(fence) = &request.fence else { return };
        if request.writes.is_empty() {
            return;
        }
        let commit = ObservedCommit {
            actor: fence.actor_id.clone(),
            node: fence.node_id.clone(),
            epoch: fence.epoch,
            seq: info.version,
        };
        lock(&self.observations).commits.push(commit);
    }
}

/// One node's connection to the database: while cut, every call the node
/// makes to it (storage, placements, node table) fails, as across a
/// network partition between the node and the database.
#[derive(Clone, Default)]
pub struct DatabaseLink(Arc<AtomicBool>);

impl DatabaseLink {
    pub fn set_cut(&self, cut: bool) {
        self.0.store(cut, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Fails with a retriable storage error while the link is cut.
    pub fn check(&self, operation: &'static str) -> Result<()> {
        if self.is_cut() {
            return Err(Error::StorageIo { operation, reason: "cut off from the database".to_string() });
        }
        Ok(())
    }
}

/// One node's view of the shared database: every call first passes the
/// node's link and simulated disk, so the node's cut-offs, storage faults
/// (read failures, latency) and crashes hit its database calls too.
pub struct NodeBackend {
    pub database: Arc<SharedDatabase>,
    pub node: SimNode,
    pub link: DatabaseLink,
}

impl NodeBackend {
    async fn probe(&self, operation: &'static str) -> Result<()> {
        self.link.check(operation)?;
        let outcome = self.node.storage().get(b"db-link").await;
        outcome.map(|_| ()).map_err(|e| Error::StorageIo { operation, reason: e.to_string() })
    }
}

impl Backend for NodeBackend {
    fn name(&self) -> &'static str {
        "sim-shared-memory"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            self.probe("get").await?;
            self.database.backend.get(actor, key).await
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>> {
        Box::pin(async move {
            self.probe("scan").await?;
            self.database.backend.scan(actor, page).await
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>> {
        Box::pin(async move {
            self.probe("commit").await?;
            let observed = request_shape(&request);
            self.database.commit_attempts.fetch_add(1, Ordering::SeqCst);
            let info = self.database.backend.commit(request).await?;
            // Recorded in the same poll as the commit, so in commit order.
            self.database.record_commit(&observed, &info);
            Ok(info)
        })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.database.backend.get_placement(actor).await
        })
    }

    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.database.backend.put_placement(placement).await
        })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.database.backend.claim_placement(actor, node, expected_epoch).await
        })
    }
}

/// The database's own view of itself (used by the directory). It injects
/// no faults, but every call is an await point where the simulator runs
/// other tasks first, as a real database round trip is: without it a
/// claim's read and write would always run in one poll, and no other
/// node could ever act between them.
pub struct DirectBackend(Arc<SharedDatabase>);

impl Backend for DirectBackend {
    fn name(&self) -> &'static str {
        "sim-shared-memory-direct"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.0.backend.get(actor, key).await
        })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.0.backend.scan(actor, page).await
        })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.0.backend.commit(request).await
        })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.0.backend.get_placement(actor).await
        })
    }

    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.0.backend.put_placement(placement).await
        })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>> {
        Box::pin(async move {
            kelpie_dst::yield_now().await;
            self.0.backend.claim_placement(actor, node, expected_epoch).await
        })
    }
}

/// The parts of a request the commit record needs (fence and written keys).
fn request_shape(request: &CommitRequest) -> CommitRequest {
    CommitRequest {
        actor_id: request.actor_id.clone(),
        reads: BTreeMap::new(),
        scans: Vec::new(),
        writes: request.writes.keys().map(|key| (key.clone(), None)).collect(),
        fence: request.fence.clone(),
    }
}

/// The directory shared by every node's registry, recording each change it
/// applies as a lease event (grant or release) in application order.
pub struct RecordingPlacementStore {
    pub inner: Arc<dyn PlacementStore>,
    pub observations: Arc<Mutex<Observations>>,
    pub lease_ms: u64,
    /// The clock lease events are stamped with: `None` for the deciding
    /// registry's own clock (the record's instants), or the true time, so a
    /// lease decided on a skewed clock shows up as overlapping in truth.
    pub truth: Option<Arc<dyn Clock>>,
}

impl RecordingPlacementStore {
    /// The placement table of `database`, written through an unfaulted
    /// handle (it stands for the database's own table, the one fenced
    /// commits check), recording into the database's observations.
    pub fn on(database: &Arc<SharedDatabase>, lease_ms: u64, truth: Option<Arc<dyn Clock>>) -> Arc<Self> {
        Self::on_store(database, lease_ms, truth, StoragePlacementStore::new)
    }

    /// As [`RecordingPlacementStore::on`], the store made by `store` (which
    /// may plant a defect in it).
    pub fn on_store(
        database: &Arc<SharedDatabase>,
        lease_ms: u64,
        truth: Option<Arc<dyn Clock>>,
        store: impl FnOnce(Storage) -> StoragePlacementStore,
    ) -> Arc<Self> {
        let direct = Storage::from_backend(SharedDatabase::direct(database));
        let inner: Arc<dyn PlacementStore> = Arc::new(store(direct));
        let observations = Arc::clone(&database.observations);
        Arc::new(RecordingPlacementStore { inner, observations, lease_ms, truth })
    }
}

impl PlacementStore for RecordingPlacementStore {
    fn get(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        self.inner.get(actor_id)
    }

    fn compare_and_set(
        &self,
        expected: Option<PlacementRecord>,
        next: PlacementRecord,
    ) -> BoxFuture<Result<CasResult>> {
        let inner = Arc::clone(&self.inner);
        let observations = Arc::clone(&self.observations);
        let lease_ms = self.lease_ms;
        let truth = self.truth.clone();
        Box::pin(async move {
            let result = inner.compare_and_set(expected.clone(), next.clone()).await?;
            if result == CasResult::Applied {
                let granted_at_ms = truth.map(|clock| clock.wall_ms());
                let event = lease_event(expected.as_ref(), &next, lease_ms, granted_at_ms);
                let mut observed = lock(&observations);
                observed.lease_events.push(event);
                observed.directory.insert(next.actor_id.clone(), next);
            }
            Ok(result)
        })
    }
}

/// One node's path to the shared directory: every call first passes the
/// node's simulated disk, so its read failures, latency and crash reach the
/// directory too; and now and then (`lost_reply_probability`) a change the
/// directory applied is answered as a failure, as when the reply is lost
/// after the database committed: the node then holds a lease it does not
/// know of.
pub struct NodeDirectory {
    pub inner: Arc<dyn PlacementStore>,
    pub node: SimNode,
    pub lost_reply_probability: f64,
}

impl NodeDirectory {
    async fn probe(node: &SimNode, operation: &'static str) -> Result<()> {
        let outcome = node.storage().get(b"directory-link").await;
        outcome.map(|_| ()).map_err(|e| Error::StorageIo { operation, reason: e.to_string() })
    }
}

impl PlacementStore for NodeDirectory {
    fn get(&self, actor_id: &ActorId) -> BoxFuture<Result<Option<PlacementRecord>>> {
        let (inner, node, actor_id) = (Arc::clone(&self.inner), self.node.clone(), actor_id.clone());
        Box::pin(async move {
            Self::probe(&node, "directory get").await?;
            inner.get(&actor_id).await
        })
    }

    fn compare_and_set(
        &self,
        expected: Option<PlacementRecord>,
        next: PlacementRecord,
    ) -> BoxFuture<Result<CasResult>> {
        let (inner, node, lost) = (Arc::clone(&self.inner), self.node.clone(), self.lost_reply_probability);
        Box::pin(async move {
            Self::probe(&node, "directory compare-and-set").await?;
            let result = inner.compare_and_set(expected, next).await?;
            if node.rng().gen_bool(lost) {
                return Err(Error::StorageIo {
                    operation: "directory compare-and-set",
                    reason: format!("reply lost after the directory answered {result:?}"),
                });
            }
            Ok(result)
        })
    }
}

/// The lease event of an applied change; a grant is stamped `granted_at_ms`
/// if given, else at the instant the record's own expiry implies.
fn lease_event(
    expected: Option<&PlacementRecord>,
    next: &PlacementRecord,
    lease_ms: u64,
    granted_at_ms: Option<u64>,
) -> LeaseEvent<ActorId, NodeId> {
    let actor = next.actor_id.clone();
    match &next.holder {
        Some(holder) => {
            let granted_at_ms = granted_at_ms.unwrap_or(holder.lease_expires_at_ms - lease_ms);
            LeaseEvent::Granted {
                actor,
                node: holder.node_id.clone(),
                epoch: next.epoch,
                granted_at_ms,
                expires_at_ms: granted_at_ms + lease_ms,
            }
        }
        None => {
            let holder = expected.and_then(|r| r.holder.as_ref()).expect("a release had a holder");
            LeaseEvent::Released { actor, node: holder.node_id.clone(), epoch: next.epoch }
        }
    }
}

impl Observations {
    /// Activations whose node is up and whose runtime still has a slot for the actor.
    pub fn live_activations(
        &self,
        is_live: impl Fn(&ActorId, usize) -> bool,
        node_ids: &[NodeId],
    ) -> Vec<ObservedActivation<ActorId, NodeId>> {
        let live = self.activations.iter().filter(|((actor, node), _)| is_live(actor, *node));
        live.map(|((actor, node), (epoch, phase))| ObservedActivation {
            actor: actor.clone(),
            node: node_ids[*node].clone(),
            epoch: *epoch,
            phase: *phase,
        })
        .collect()
    }

    pub fn placements(&self) -> Vec<ObservedPlacement<ActorId, NodeId>> {
        let records = self.directory.values();
        records
            .map(|r| ObservedPlacement {
                actor: r.actor_id.clone(),
                holder: r.holder.as_ref().map(|h| h.node_id.clone()),
                epoch: r.epoch,
            })
            .collect()
    }

    pub fn actors(&self) -> BTreeSet<ActorId> {
        self.directory.keys().cloned().collect()
    }
}
