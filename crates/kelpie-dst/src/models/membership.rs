//! Cluster membership: nodes join with a fresh incarnation, heartbeat into a
//! shared node table, leave, crash, and are declared failed by a detector
//! once their last heartbeat is older than the timeout. A node that learns
//! from the table that it was declared failed stops, and may join again with
//! a new incarnation; it is never reinstated under the old one, because
//! other nodes may already have taken over its actors.

use stateright::{Model, Property};

use crate::properties::{self, MemberStatus, ObservedMember, MEMBERSHIP_INCARNATION};

pub const NODES_COUNT: usize = 2;
/// Last tick of model time.
pub const TIME_TICKS_MAX: u8 = 3;
/// Silence, in ticks, after which a member may be declared failed.
pub const HEARTBEAT_TIMEOUT_TICKS: u8 = 1;
/// Most incarnations a node may start.
pub const INCARNATION_MAX: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipBug {
    /// A heartbeat from a member declared failed puts it back Up as it was.
    ResurrectOnHeartbeat,
}

#[derive(Debug, Clone, Copy)]
pub struct MembershipModel {
    pub bug: Option<MembershipBug>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    pub status: MemberStatus,
    pub incarnation: u8,
    pub heartbeat_at: u8,
    pub retired: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MembershipState {
    pub now: u8,
    /// The incarnation each node's process runs, if it runs.
    pub processes: Vec<Option<u8>>,
    pub table: Vec<Row>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipAction {
    Join(usize),
    Heartbeat(usize),
    Leave(usize),
    Crash(usize),
    Detect(usize),
    Tick,
}

impl MembershipState {
    fn observed(&self) -> Vec<ObservedMember<usize>> {
        let rows = self.table.iter().enumerate();
        rows.map(|(node, row)| ObservedMember {
            node,
            status: row.status,
            incarnation: u64::from(row.incarnation),
            retired_incarnation: row.retired.map(u64::from),
        })
        .collect()
    }

    fn retire(&mut self, node: usize, status: MemberStatus) {
        let row = &mut self.table[node];
        row.status = status;
        row.retired = Some(row.incarnation);
    }
}

impl MembershipModel {
    fn heartbeat(&self, state: &mut MembershipState, node: usize, incarnation: u8) -> bool {
        let row = state.table[node];
        let current = row.status == MemberStatus::Up && row.incarnation == incarnation;
        if current {
            let fresher = row.heartbeat_at < state.now;
            state.table[node].heartbeat_at = state.now;
            return fresher;
        }
        if self.bug == Some(MembershipBug::ResurrectOnHeartbeat) && row.incarnation == incarnation {
            state.table[node].status = MemberStatus::Up;
            state.table[node].heartbeat_at = state.now;
        } else {
            // Declared failed (or replaced): stop, and rejoin later as new.
            state.processes[node] = None;
        }
        true
    }
}

impl Model for MembershipModel {
    type State = MembershipState;
    type Action = MembershipAction;

    fn init_states(&self) -> Vec<Self::State> {
        let row = Row { status: MemberStatus::Absent, incarnation: 0, heartbeat_at: 0, retired: None };
        vec![MembershipState { now: 0, processes: vec![None; NODES_COUNT], table: vec![row; NODES_COUNT] }]
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        for node in 0..NODES_COUNT {
            let row = state.table[node];
            match state.processes[node] {
                None if row.incarnation < INCARNATION_MAX => actions.push(MembershipAction::Join(node)),
                None => {}
                Some(_) => actions.extend([
                    MembershipAction::Heartbeat(node),
                    MembershipAction::Leave(node),
                    MembershipAction::Crash(node),
                ]),
            }
            let silent = state.now.saturating_sub(row.heartbeat_at) > HEARTBEAT_TIMEOUT_TICKS;
            if row.status == MemberStatus::Up && silent {
                actions.push(MembershipAction::Detect(node));
            }
        }
        if state.now < TIME_TICKS_MAX {
            actions.push(MembershipAction::Tick);
        }
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        let mut state = last.clone();
        let changed = match action {
            MembershipAction::Join(node) => {
                let row = &mut state.table[node];
                row.incarnation += 1;
                row.status = MemberStatus::Up;
                row.heartbeat_at = state.now;
                state.processes[node] = Some(row.incarnation);
                true
            }
            MembershipAction::Heartbeat(node) => self.heartbeat(&mut state, node, last.processes[node]?),
            MembershipAction::Leave(node) => {
                let incarnation = last.processes[node]?;
                if state.table[node].incarnation == incarnation
                    && state.table[node].status == MemberStatus::Up
                {
                    state.retire(node, MemberStatus::Left);
                }
                state.processes[node] = None;
                true
            }
            MembershipAction::Crash(node) => {
                state.processes[node] = None;
                true
            }
            MembershipAction::Detect(node) => {
                state.retire(node, MemberStatus::Failed);
                true
            }
            MembershipAction::Tick => {
                state.now += 1;
                true
            }
        };
        changed.then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![Property::always(MEMBERSHIP_INCARNATION, |_, s: &MembershipState| {
            properties::membership_incarnation(&s.observed()).is_ok()
        })]
    }
}
