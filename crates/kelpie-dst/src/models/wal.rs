//! The write-ahead log: clients submit "create agent" operations under an
//! idempotency key; the node appends a Pending entry, applies the effect and
//! marks the entry Complete in one atomic commit (or marks it Failed),
//! answers the client, crashes, restarts and recovers by applying whatever
//! is still Pending. Clients resubmit after a crash until answered.
//!
//! This mirrors `kelpie_storage::wal`: entries are durable, in-flight work
//! is not, and an entry's status only moves Pending -> Complete | Failed.

use stateright::{Model, Property};

use crate::properties::{
    self, ObservedAgent, ObservedWalEntry, WalPhase, CREATED_AGENT_RETRIEVABLE, NO_DUPLICATE_AGENTS,
    WAL_IDEMPOTENCY, WAL_STATUS_MONOTONIC,
};

/// Distinct operations (idempotency keys) submitted.
pub const OPERATIONS_COUNT: u8 = 2;
/// Most crashes explored.
pub const CRASHES_COUNT_MAX: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalBug {
    /// The effect is applied first and the entry appended afterwards, in a
    /// separate step, so a crash in between forgets the operation happened.
    ApplyBeforeAppend,
}

#[derive(Debug, Clone, Copy)]
pub struct WalModel {
    pub bug: Option<WalBug>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    Idle,
    Waiting,
    Answered(WalPhase),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalState {
    pub up: bool,
    pub crashes: u8,
    /// Durable: each operation's entry.
    pub entries: Vec<Option<WalPhase>>,
    /// Durable: agents each operation's effect created.
    pub effects: Vec<u8>,
    /// Volatile (buggy variant only): effect applied, entry not yet written.
    pub unlogged: Vec<bool>,
    pub clients: Vec<Client>,
    /// Every status an entry took, in order.
    pub history: Vec<(u8, WalPhase)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalAction {
    Submit(u8),
    AppendAfterApply(u8),
    Apply(u8),
    Fail(u8),
    Answer(u8),
    Crash,
    Restart,
}

impl WalState {
    fn set_status(&mut self, op: u8, status: WalPhase) {
        self.entries[usize::from(op)] = Some(status);
        self.history.push((op, status));
    }

    fn observed_entries(&self) -> Vec<ObservedWalEntry<u8>> {
        (0..OPERATIONS_COUNT)
            .map(|op| ObservedWalEntry {
                key: op,
                status: self.entries[usize::from(op)],
                effects_applied_count: u64::from(self.effects[usize::from(op)]),
            })
            .collect()
    }

    /// Agents are `(operation, n)`: the n-th agent operation `op` created.
    fn observed_agents(&self) -> Vec<ObservedAgent<(u8, u8), u8>> {
        let per_op = self.effects.iter().enumerate();
        per_op
            .flat_map(|(op, count)| {
                (0..*count).map(move |n| ObservedAgent { id: (op as u8, n), create_key: op as u8 })
            })
            .collect()
    }
}

impl WalModel {
    fn submit(&self, state: &mut WalState, op: u8) -> bool {
        let index = usize::from(op);
        let was_idle = state.clients[index] == Client::Idle;
        state.clients[index] = Client::Waiting;
        if state.entries[index].is_some() || state.unlogged[index] {
            // Idempotent: the existing entry answers (or recovery finishes it).
            return was_idle;
        }
        match self.bug {
            Some(WalBug::ApplyBeforeAppend) => {
                state.effects[index] += 1;
                state.unlogged[index] = true;
            }
            None => state.set_status(op, WalPhase::Pending),
        }
        true
    }
}

impl Model for WalModel {
    type State = WalState;
    type Action = WalAction;

    fn init_states(&self) -> Vec<Self::State> {
        let count = usize::from(OPERATIONS_COUNT);
        vec![WalState {
            up: true,
            crashes: 0,
            entries: vec![None; count],
            effects: vec![0; count],
            unlogged: vec![false; count],
            clients: vec![Client::Idle; count],
            history: Vec::new(),
        }]
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        if !state.up {
            actions.push(WalAction::Restart);
            return;
        }
        for op in 0..OPERATIONS_COUNT {
            let index = usize::from(op);
            match state.clients[index] {
                Client::Answered(_) => {}
                _ => actions.push(WalAction::Submit(op)),
            }
            if state.unlogged[index] {
                actions.push(WalAction::AppendAfterApply(op));
            }
            if state.entries[index] == Some(WalPhase::Pending) {
                actions.extend([WalAction::Apply(op), WalAction::Fail(op)]);
            }
            let finished = matches!(state.entries[index], Some(WalPhase::Complete | WalPhase::Failed));
            if finished && state.clients[index] == Client::Waiting {
                actions.push(WalAction::Answer(op));
            }
        }
        if state.crashes < CRASHES_COUNT_MAX {
            actions.push(WalAction::Crash);
        }
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        let mut state = last.clone();
        let changed = match action {
            WalAction::Submit(op) => self.submit(&mut state, op),
            WalAction::AppendAfterApply(op) => {
                state.unlogged[usize::from(op)] = false;
                state.set_status(op, WalPhase::Pending);
                state.set_status(op, WalPhase::Complete);
                true
            }
            WalAction::Apply(op) => {
                // Effect and status change in one atomic commit.
                state.effects[usize::from(op)] += 1;
                state.set_status(op, WalPhase::Complete);
                true
            }
            WalAction::Fail(op) => {
                state.set_status(op, WalPhase::Failed);
                true
            }
            WalAction::Answer(op) => {
                let status = state.entries[usize::from(op)]?;
                state.clients[usize::from(op)] = Client::Answered(status);
                true
            }
            WalAction::Crash => {
                state.up = false;
                state.crashes += 1;
                state.unlogged.iter_mut().for_each(|u| *u = false);
                true
            }
            WalAction::Restart => {
                state.up = true;
                true
            }
        };
        changed.then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(WAL_STATUS_MONOTONIC, |_, s: &WalState| {
                properties::wal_status_monotonic(&s.history).is_ok()
            }),
            Property::always(WAL_IDEMPOTENCY, |_, s: &WalState| {
                properties::wal_idempotency(&s.observed_entries()).is_ok()
            }),
            Property::always(NO_DUPLICATE_AGENTS, |_, s: &WalState| {
                properties::no_duplicate_agents(&s.observed_agents()).is_ok()
            }),
            Property::always(CREATED_AGENT_RETRIEVABLE, |_, s: &WalState| {
                let acked = (0..OPERATIONS_COUNT)
                    .filter(|op| s.clients[usize::from(*op)] == Client::Answered(WalPhase::Complete));
                let found = s.observed_agents().into_iter().map(|agent| agent.create_key);
                properties::created_agent_retrievable(&acked.collect(), &found.collect()).is_ok()
            }),
        ]
    }
}
