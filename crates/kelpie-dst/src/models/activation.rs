//! Single activation with leases and fencing: nodes claim one actor through
//! the directory, renew and release their leases, commit state under their
//! epoch, crash, and time passes. The directory record and the fencing
//! record are one record here, as in storage placements.
//!
//! The rules are those of `kelpie_registry::lease` and of the storage fence
//! check: a claim succeeds when no other node holds a live lease and bumps
//! the epoch; a renewal needs the current holder, epoch and a live lease; a
//! commit needs the record to still name the committing node and epoch.

use stateright::{Model, Property};

use crate::properties::{
    self, LeaseEvent, ObservedActivation, ObservedCommit, ObservedPlacement, Phase, CONSISTENT_HOLDER,
    FENCING_TOKEN_MONOTONIC, LEASE_UNIQUENESS, NO_SPLIT_BRAIN, SINGLE_ACTIVATION,
};

/// Nodes competing for the actor.
pub const NODES_COUNT: u8 = 2;
/// Last tick of model time.
pub const TIME_TICKS_MAX: u8 = 3;
/// Length of a lease, in ticks.
pub const LEASE_TICKS: u8 = 2;
/// Most claims explored (each raises the epoch by one).
pub const EPOCH_MAX: u8 = 3;
/// Most commits explored.
pub const COMMITS_COUNT_MAX: usize = 2;

/// A planted bug, to prove the properties can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationBug {
    /// Storage applies a commit without checking the fence.
    CommitWithoutFencing,
    /// A claim ignores another node's live lease.
    ClaimIgnoresLiveLease,
}

#[derive(Debug, Clone, Copy)]
pub struct ActivationModel {
    pub bug: Option<ActivationBug>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActivationState {
    pub now: u8,
    pub holder: Option<u8>,
    pub epoch: u8,
    pub expires: u8,
    /// Per node: the epoch of the activation it runs, if any.
    pub activations: Vec<Option<u8>>,
    pub events: Vec<LeaseEvent<u8, u8>>,
    pub commits: Vec<(u8, u8)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationAction {
    Claim(u8),
    Renew(u8),
    Commit(u8),
    Release(u8),
    Crash(u8),
    Tick,
}

impl ActivationState {
    fn observed_activations(&self) -> Vec<ObservedActivation<u8, u8>> {
        let running = self.activations.iter().enumerate();
        running
            .filter_map(|(node, epoch)| epoch.map(|e| (node, e)))
            .map(|(node, epoch)| ObservedActivation {
                actor: 0,
                node: node as u8,
                epoch: u64::from(epoch),
                phase: Phase::Active,
            })
            .collect()
    }

    fn observed_placement(&self) -> [ObservedPlacement<u8, u8>; 1] {
        [ObservedPlacement { actor: 0, holder: self.holder, epoch: u64::from(self.epoch) }]
    }

    fn observed_commits(&self) -> Vec<ObservedCommit<u8, u8>> {
        let numbered = self.commits.iter().enumerate();
        numbered
            .map(|(seq, (node, epoch))| ObservedCommit {
                actor: 0,
                node: *node,
                epoch: u64::from(*epoch),
                seq: seq as u64 + 1,
            })
            .collect()
    }

    fn live_lease_of_other(&self, node: u8) -> bool {
        self.holder.is_some_and(|h| h != node) && self.now < self.expires
    }

    fn grant(&mut self, node: u8) {
        self.expires = self.now + LEASE_TICKS;
        let event = LeaseEvent::Granted {
            actor: 0,
            node,
            epoch: u64::from(self.epoch),
            granted_at_ms: u64::from(self.now),
            expires_at_ms: u64::from(self.expires),
        };
        self.events.push(event);
    }
}

impl ActivationModel {
    fn claim(&self, state: &mut ActivationState, node: u8) -> bool {
        let ignores_lease = self.bug == Some(ActivationBug::ClaimIgnoresLiveLease);
        if state.epoch >= EPOCH_MAX || (state.live_lease_of_other(node) && !ignores_lease) {
            return false;
        }
        state.epoch += 1;
        state.holder = Some(node);
        state.grant(node);
        state.activations[usize::from(node)] = Some(state.epoch);
        true
    }

    fn commit(&self, state: &mut ActivationState, node: u8, epoch: u8) -> bool {
        let fence_holds = state.holder == Some(node) && state.epoch == epoch;
        if fence_holds || self.bug == Some(ActivationBug::CommitWithoutFencing) {
            state.commits.push((node, epoch));
        } else {
            // A fenced commit stops the activation at once.
            state.activations[usize::from(node)] = None;
        }
        true
    }
}

impl Model for ActivationModel {
    type State = ActivationState;
    type Action = ActivationAction;

    fn init_states(&self) -> Vec<Self::State> {
        vec![ActivationState {
            now: 0,
            holder: None,
            epoch: 0,
            expires: 0,
            activations: vec![None; usize::from(NODES_COUNT)],
            events: Vec::new(),
            commits: Vec::new(),
        }]
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        for node in 0..NODES_COUNT {
            match state.activations[usize::from(node)] {
                None => actions.push(ActivationAction::Claim(node)),
                Some(_) => {
                    actions.extend([ActivationAction::Renew(node), ActivationAction::Release(node)]);
                    actions.push(ActivationAction::Crash(node));
                    if state.commits.len() < COMMITS_COUNT_MAX {
                        actions.push(ActivationAction::Commit(node));
                    }
                }
            }
        }
        if state.now < TIME_TICKS_MAX {
            actions.push(ActivationAction::Tick);
        }
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        let mut state = last.clone();
        let running = |node: u8| last.activations[usize::from(node)];
        let applied = match action {
            ActivationAction::Claim(node) => self.claim(&mut state, node),
            ActivationAction::Renew(node) => {
                let epoch = running(node)?;
                let owns = state.holder == Some(node) && state.epoch == epoch && state.now < state.expires;
                let extends = state.now + LEASE_TICKS > state.expires;
                match (owns, extends) {
                    (true, true) => state.grant(node),
                    (true, false) => return None,
                    (false, _) => state.activations[usize::from(node)] = None,
                }
                true
            }
            ActivationAction::Commit(node) => self.commit(&mut state, node, running(node)?),
            ActivationAction::Release(node) => {
                let epoch = running(node)?;
                if state.holder == Some(node) && state.epoch == epoch {
                    state.holder = None;
                    state.events.push(LeaseEvent::Released { actor: 0, node, epoch: u64::from(epoch) });
                }
                state.activations[usize::from(node)] = None;
                true
            }
            ActivationAction::Crash(node) => {
                state.activations[usize::from(node)] = None;
                true
            }
            ActivationAction::Tick => {
                state.now += 1;
                true
            }
        };
        applied.then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(SINGLE_ACTIVATION, |_, s: &ActivationState| {
                properties::single_activation(&s.observed_activations(), &s.observed_placement()).is_ok()
            }),
            Property::always(CONSISTENT_HOLDER, |_, s: &ActivationState| {
                properties::consistent_holder(&s.observed_activations(), &s.observed_placement()).is_ok()
            }),
            Property::always(LEASE_UNIQUENESS, |_, s: &ActivationState| {
                properties::lease_uniqueness(&s.events).is_ok()
            }),
            Property::always(FENCING_TOKEN_MONOTONIC, |_, s: &ActivationState| {
                properties::fencing_token_monotonic(&s.events, &s.observed_commits()).is_ok()
            }),
            Property::always(NO_SPLIT_BRAIN, |_, s: &ActivationState| {
                properties::no_split_brain(&s.observed_commits()).is_ok()
            }),
        ]
    }
}
