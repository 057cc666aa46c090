//! Optimistic transactions with conflict detection, as in
//! `kelpie_storage`'s commit check: two concurrent transactions each read
//! `x`, write `x := x + 1`, read `x` back, write `y := x + 1` and commit.
//! A commit validates that every key it read still has the version it saw
//! and then applies all its writes at once with the next commit sequence
//! number; otherwise it aborts.

use std::collections::BTreeMap;

use stateright::{Model, Property};

use crate::properties::{
    self, ObservedRead, ObservedTxn, VersionedValue, ATOMIC_VISIBILITY, DURABILITY, READ_YOUR_WRITES,
    SERIALIZABLE_ISOLATION,
};

/// Concurrent transactions.
pub const TXNS_COUNT: usize = 2;
const KEY_X: usize = 0;
const KEY_Y: usize = 1;
const KEYS_COUNT: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnBug {
    /// Commit applies the writes without validating the read versions.
    CommitWithoutValidation,
    /// Commit applies one key per step, so a half-applied commit is visible.
    NonAtomicApply,
}

#[derive(Debug, Clone, Copy)]
pub struct TransactionsModel {
    pub bug: Option<TxnBug>,
}

/// Program counter of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pc {
    ReadX,
    WriteX,
    ReadBack,
    WriteY,
    Commit,
    /// Buggy variant: `x` applied, `y` not yet.
    ApplyingY(u8),
    Committed(u8),
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Txn {
    pub pc: Pc,
    /// Value and version of `x` as read.
    pub read_x: Option<(u8, u8)>,
    pub writes: [Option<u8>; KEYS_COUNT],
    pub reads: Vec<ObservedRead<u8, u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TxnState {
    pub values: [u8; KEYS_COUNT],
    /// Commit sequence number of each key's writer (0: initial value).
    pub versions: [u8; KEYS_COUNT],
    pub last_seq: u8,
    pub txns: Vec<Txn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step(pub usize);

impl TxnState {
    fn observed_txns(&self) -> Vec<ObservedTxn<u8>> {
        let observe = |txn: &Txn| {
            let commit_seq = match txn.pc {
                // A commit that has started applying has its number already.
                Pc::Committed(seq) | Pc::ApplyingY(seq) => Some(u64::from(seq)),
                _ => None,
            };
            let reads = txn.read_x.iter().map(|(_, version)| (KEY_X as u8, u64::from(*version))).collect();
            let writes = (0..KEYS_COUNT).filter(|k| txn.writes[*k].is_some()).map(|k| k as u8).collect();
            ObservedTxn { reads, writes, commit_seq }
        };
        self.txns.iter().map(observe).collect()
    }

    fn visible_versions(&self) -> BTreeMap<u8, u64> {
        (0..KEYS_COUNT).map(|k| (k as u8, u64::from(self.versions[k]))).collect()
    }

    /// Last committed write per key, as acknowledged to the committers.
    fn acknowledged(&self) -> BTreeMap<u8, VersionedValue<u8>> {
        let mut acked = BTreeMap::new();
        let mut committed: Vec<(u8, &Txn)> = self
            .txns
            .iter()
            .filter_map(|t| match t.pc {
                Pc::Committed(seq) => Some((seq, t)),
                _ => None,
            })
            .collect();
        committed.sort_by_key(|(seq, _)| *seq);
        for (seq, txn) in committed {
            for key in 0..KEYS_COUNT {
                if let Some(value) = txn.writes[key] {
                    acked.insert(key as u8, VersionedValue { seq: u64::from(seq), value });
                }
            }
        }
        acked
    }

    fn durable(&self) -> BTreeMap<u8, VersionedValue<u8>> {
        (0..KEYS_COUNT)
            .filter(|k| self.versions[*k] > 0)
            .map(|k| (k as u8, VersionedValue { seq: u64::from(self.versions[k]), value: self.values[k] }))
            .collect()
    }

    fn apply(&mut self, index: usize, key: usize, seq: u8) {
        if let Some(value) = self.txns[index].writes[key] {
            self.values[key] = value;
            self.versions[key] = seq;
        }
    }
}

impl TransactionsModel {
    fn commit(&self, state: &mut TxnState, index: usize) {
        let txn = &state.txns[index];
        let valid = txn.read_x.is_none_or(|(_, version)| version == state.versions[KEY_X]);
        if !valid && self.bug != Some(TxnBug::CommitWithoutValidation) {
            state.txns[index].pc = Pc::Aborted;
            return;
        }
        state.last_seq += 1;
        let seq = state.last_seq;
        state.apply(index, KEY_X, seq);
        if self.bug == Some(TxnBug::NonAtomicApply) {
            state.txns[index].pc = Pc::ApplyingY(seq);
            return;
        }
        state.apply(index, KEY_Y, seq);
        state.txns[index].pc = Pc::Committed(seq);
    }
}

fn read_x(state: &TxnState, txn: &Txn) -> ObservedRead<u8, u8> {
    let own_write = txn.writes[KEY_X].map(Some);
    let returned = txn.writes[KEY_X].unwrap_or(state.values[KEY_X]);
    ObservedRead { key: KEY_X as u8, own_write, returned: Some(returned) }
}

impl Model for TransactionsModel {
    type State = TxnState;
    type Action = Step;

    fn init_states(&self) -> Vec<Self::State> {
        let txn = Txn { pc: Pc::ReadX, read_x: None, writes: [None; KEYS_COUNT], reads: Vec::new() };
        vec![TxnState {
            values: [0; KEYS_COUNT],
            versions: [0; KEYS_COUNT],
            last_seq: 0,
            txns: vec![txn; TXNS_COUNT],
        }]
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        let running = state.txns.iter().enumerate();
        actions.extend(
            running.filter(|(_, t)| !matches!(t.pc, Pc::Committed(_) | Pc::Aborted)).map(|(i, _)| Step(i)),
        );
    }

    fn next_state(&self, last: &Self::State, Step(index): Self::Action) -> Option<Self::State> {
        let mut state = last.clone();
        let txn = &last.txns[index];
        let read_value = txn.read_x.map_or(0, |(value, _)| value);
        match txn.pc {
            Pc::ReadX => {
                let read = read_x(last, txn);
                let txn = &mut state.txns[index];
                txn.read_x = Some((last.values[KEY_X], last.versions[KEY_X]));
                txn.reads.push(read);
                txn.pc = Pc::WriteX;
            }
            Pc::WriteX => {
                state.txns[index].writes[KEY_X] = Some(read_value + 1);
                state.txns[index].pc = Pc::ReadBack;
            }
            Pc::ReadBack => {
                let read = read_x(last, txn);
                state.txns[index].reads.push(read);
                state.txns[index].pc = Pc::WriteY;
            }
            Pc::WriteY => {
                state.txns[index].writes[KEY_Y] = Some(read_value + 1);
                state.txns[index].pc = Pc::Commit;
            }
            Pc::Commit => self.commit(&mut state, index),
            Pc::ApplyingY(seq) => {
                state.apply(index, KEY_Y, seq);
                state.txns[index].pc = Pc::Committed(seq);
            }
            Pc::Committed(_) | Pc::Aborted => return None,
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(SERIALIZABLE_ISOLATION, |_, s: &TxnState| {
                properties::serializable_isolation(&s.observed_txns()).is_ok()
            }),
            Property::always(ATOMIC_VISIBILITY, |_, s: &TxnState| {
                properties::atomic_visibility(&s.observed_txns(), &s.visible_versions()).is_ok()
            }),
            Property::always(READ_YOUR_WRITES, |_, s: &TxnState| {
                let reads: Vec<ObservedRead<u8, u8>> =
                    s.txns.iter().flat_map(|t| t.reads.iter().cloned()).collect();
                properties::read_your_writes(&reads).is_ok()
            }),
            Property::always(DURABILITY, |_, s: &TxnState| {
                properties::durability(&s.acknowledged(), &s.durable()).is_ok()
            }),
        ]
    }
}
