//! The in-memory backend: for unit tests, DST and single-process use.
//!
//! All state sits behind one mutex. A commit observes, validates and applies
//! while holding it, and validation finishes before the first write is
//! applied, so a rejected commit leaves no trace and an accepted one is
//! visible whole: there is no partial application of a write buffer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use kelpie_core::{ActorId, NodeId, Result};

use crate::backend::{Backend, BoxFut};
use crate::commit_check::{check_commit, observe, CommitView};
use crate::limits::SCAN_ROWS_COUNT_MAX;
use crate::placement::{check_put, decide_claim};
use crate::types::{
    ClaimOutcome, CommitInfo, CommitRequest, KeyRange, Placement, ScanOrder, ScanPage, StoredRows, Versioned,
};

#[derive(Debug, Default)]
struct MemoryState {
    kv: BTreeMap<ActorId, BTreeMap<Vec<u8>, Versioned>>,
    placements: BTreeMap<ActorId, Placement>,
    last_version: u64,
}

/// A backend that keeps everything in process memory.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
    /// A planted defect (see [`MemoryBackend::plant_apply_before_validation`]).
    apply_before_validation: bool,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plants a defect for the DST to find: a commit applies its writes
    /// first and validates (fence, read versions) after, so a refused
    /// commit, a zombie's included, still leaves its writes behind. Only
    /// tests call it.
    pub fn plant_apply_before_validation(mut self) -> Self {
        self.apply_before_validation = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // Every mutation validates before it changes anything, so a panic
        // while locked cannot leave a half-applied commit behind.
        self.state.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

fn scan_rows(rows: Option<&BTreeMap<Vec<u8>, Versioned>>, page: &ScanPage) -> StoredRows {
    let Some(rows) = rows else { return Vec::new() };
    let range = &page.range;
    let bounds = (as_slice_bound(&range.start), as_slice_bound(&range.end));
    if bounds_are_empty(range) {
        return Vec::new();
    }
    let clone = |(key, stored): (&Vec<u8>, &Versioned)| (key.clone(), stored.clone());
    let inside = rows.range::<[u8], _>(bounds);
    match page.order {
        ScanOrder::Ascending => inside.take(page.limit).map(clone).collect(),
        ScanOrder::Descending => inside.rev().take(page.limit).map(clone).collect(),
    }
}

fn as_slice_bound(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// `BTreeMap::range` panics on inverted or empty-excluded bounds; such a
/// range simply holds no keys.
fn bounds_are_empty(range: &KeyRange) -> bool {
    match (&range.start, &range.end) {
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Included(start), Bound::Excluded(end))
        | (Bound::Excluded(start), Bound::Included(end))
        | (Bound::Excluded(start), Bound::Excluded(end)) => start >= end,
        _ => false,
    }
}

struct StateView<'a> {
    state: &'a MemoryState,
    actor: &'a ActorId,
}

impl CommitView for StateView<'_> {
    fn version_of(&self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.state.kv.get(self.actor).and_then(|rows| rows.get(key)).map(|stored| stored.version))
    }

    fn scan_versions(&self, range: &KeyRange) -> Result<Vec<(Vec<u8>, u64)>> {
        let page = ScanPage::new(range.clone(), ScanOrder::Ascending, SCAN_ROWS_COUNT_MAX + 1);
        let rows = scan_rows(self.state.kv.get(self.actor), &page);
        Ok(rows.into_iter().map(|(key, stored)| (key, stored.version)).collect())
    }

    fn placement(&self) -> Result<Option<Placement>> {
        Ok(self.state.placements.get(self.actor).cloned())
    }
}

impl MemoryBackend {
    fn commit_locked(&self, request: CommitRequest) -> Result<CommitInfo> {
        let mut state = self.lock();
        let observation = observe(&request, &StateView { state: &state, actor: &request.actor_id })?;
        if self.apply_before_validation && !request.is_read_only() {
            state.last_version += 1;
            let version = state.last_version;
            apply_writes(&mut state, request.actor_id.clone(), request.writes.clone(), version);
            check_commit(&request, &observation)?;
            return Ok(CommitInfo { version });
        }
        check_commit(&request, &observation)?;
        if request.is_read_only() {
            return Ok(CommitInfo { version: 0 });
        }
        state.last_version += 1;
        let version = state.last_version;
        apply_writes(&mut state, request.actor_id, request.writes, version);
        assert!(version > 0);
        Ok(CommitInfo { version })
    }
}

fn apply_writes(
    state: &mut MemoryState,
    actor: ActorId,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    version: u64,
) {
    let rows = state.kv.entry(actor).or_default();
    for (key, value) in writes {
        match value {
            Some(value) => rows.insert(key, Versioned { value, version }),
            None => rows.remove(&key),
        };
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, actor: &'a ActorId, key: &'a [u8]) -> BoxFut<'a, Result<Option<Versioned>>> {
        let found = self.lock().kv.get(actor).and_then(|rows| rows.get(key)).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn scan<'a>(&'a self, actor: &'a ActorId, page: &'a ScanPage) -> BoxFut<'a, Result<StoredRows>> {
        let rows = scan_rows(self.lock().kv.get(actor), page);
        Box::pin(async move { Ok(rows) })
    }

    fn commit(&self, request: CommitRequest) -> BoxFut<'_, Result<CommitInfo>> {
        let result = self.commit_locked(request);
        Box::pin(async move { result })
    }

    fn get_placement<'a>(&'a self, actor: &'a ActorId) -> BoxFut<'a, Result<Option<Placement>>> {
        let found = self.lock().placements.get(actor).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put_placement(&self, placement: Placement) -> BoxFut<'_, Result<()>> {
        let mut state = self.lock();
        let result = check_put(state.placements.get(&placement.actor_id), &placement).map(|()| {
            state.placements.insert(placement.actor_id.clone(), placement);
        });
        Box::pin(async move { result })
    }

    fn claim_placement(
        &self,
        actor: ActorId,
        node: NodeId,
        expected_epoch: u64,
    ) -> BoxFut<'_, Result<ClaimOutcome>> {
        let mut state = self.lock();
        let outcome = decide_claim(state.placements.get(&actor).cloned(), actor, node, expected_epoch);
        if let ClaimOutcome::Claimed(placement) = &outcome {
            state.placements.insert(placement.actor_id.clone(), placement.clone());
        }
        Box::pin(async move { Ok(outcome) })
    }
}
