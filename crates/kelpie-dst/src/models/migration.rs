//! The three-phase migration of one actor from a source node to a target
//! node: (1) prepare: the source stops taking requests and drains; (2) the
//! source deactivates, flushing its state; (3) ownership moves to the target
//! with one compare-and-set on the placement (new epoch) and the target
//! activates. Before the transfer the migration may abort, and the source
//! resumes. Either node may crash at any point; the owner reactivates when
//! no migration is in flight.

use stateright::{Model, Property};

use crate::properties::{
    self, ObservedActivation, ObservedMigration, ObservedPlacement, Phase, MIGRATION_OWNERSHIP_CONSISTENCY,
    SINGLE_ACTIVATION,
};

pub const SOURCE: u8 = 0;
pub const TARGET: u8 = 1;
/// Most crashes explored.
pub const CRASHES_COUNT_MAX: u8 = 2;
/// Highest epoch explored (every claim, by transfer or reactivation, adds one).
pub const EPOCH_MAX: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationBug {
    /// The target activates while the source is still active (and owner).
    ActivateTargetBeforeSourceDeactivates,
}

#[derive(Debug, Clone, Copy)]
pub struct MigrationModel {
    pub bug: Option<MigrationBug>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Idle,
    Preparing,
    SourceFlushed,
    Transferred,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MigrationState {
    pub stage: Stage,
    pub owner: u8,
    pub epoch: u8,
    /// Epoch of each node's running activation, if it runs one.
    pub active: [Option<u8>; 2],
    pub crashes: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationAction {
    Prepare,
    DeactivateSource,
    Transfer,
    ActivateTarget,
    Abort,
    Crash(u8),
    ReactivateOwner,
}

impl MigrationState {
    fn observed(&self) -> ObservedMigration<u8> {
        ObservedMigration {
            source: SOURCE,
            target: TARGET,
            owner: Some(self.owner),
            source_active: self.active[usize::from(SOURCE)].is_some(),
            target_active: self.active[usize::from(TARGET)].is_some(),
        }
    }

    fn activations(&self) -> Vec<ObservedActivation<u8, u8>> {
        [SOURCE, TARGET]
            .into_iter()
            .filter_map(|node| self.active[usize::from(node)].map(|epoch| (node, epoch)))
            .map(|(node, epoch)| ObservedActivation {
                actor: 0,
                node,
                epoch: u64::from(epoch),
                phase: Phase::Active,
            })
            .collect()
    }
}

impl MigrationModel {
    fn activate_target(&self, state: &mut MigrationState) -> bool {
        let early = self.bug == Some(MigrationBug::ActivateTargetBeforeSourceDeactivates);
        let ready = state.stage == Stage::Transferred || (early && state.stage == Stage::Preparing);
        if !ready || state.active[usize::from(TARGET)].is_some() {
            return false;
        }
        state.active[usize::from(TARGET)] = Some(state.epoch);
        state.stage = Stage::Done;
        true
    }
}

impl Model for MigrationModel {
    type State = MigrationState;
    type Action = MigrationAction;

    fn init_states(&self) -> Vec<Self::State> {
        vec![MigrationState {
            stage: Stage::Idle,
            owner: SOURCE,
            epoch: 1,
            active: [Some(1), None],
            crashes: 0,
        }]
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        match state.stage {
            Stage::Idle => actions.push(MigrationAction::Prepare),
            Stage::Preparing => actions.push(MigrationAction::DeactivateSource),
            Stage::SourceFlushed if state.epoch < EPOCH_MAX => actions.push(MigrationAction::Transfer),
            Stage::SourceFlushed => {}
            Stage::Transferred | Stage::Done => {}
        }
        actions.push(MigrationAction::ActivateTarget);
        if state.crashes < CRASHES_COUNT_MAX {
            actions.extend([MigrationAction::Crash(SOURCE), MigrationAction::Crash(TARGET)]);
        }
        let settled = matches!(state.stage, Stage::Idle | Stage::Done);
        if matches!(state.stage, Stage::Preparing | Stage::SourceFlushed) {
            actions.push(MigrationAction::Abort);
        }
        if settled && state.epoch < EPOCH_MAX && state.active[usize::from(state.owner)].is_none() {
            actions.push(MigrationAction::ReactivateOwner);
        }
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        let mut state = last.clone();
        let changed = match action {
            MigrationAction::Prepare => {
                state.stage = Stage::Preparing;
                true
            }
            MigrationAction::DeactivateSource => {
                state.active[usize::from(SOURCE)] = None;
                state.stage = Stage::SourceFlushed;
                true
            }
            MigrationAction::Transfer => {
                // One compare-and-set: owner and epoch change together.
                state.owner = TARGET;
                state.epoch += 1;
                state.stage = Stage::Transferred;
                true
            }
            MigrationAction::ActivateTarget => self.activate_target(&mut state),
            MigrationAction::Abort => {
                state.stage = Stage::Idle;
                true
            }
            MigrationAction::Crash(node) => {
                let was_active = state.active[usize::from(node)].take().is_some();
                state.crashes += 1;
                was_active
            }
            MigrationAction::ReactivateOwner => {
                // A fresh activation claims again: a new epoch.
                state.epoch += 1;
                state.active[usize::from(state.owner)] = Some(state.epoch);
                true
            }
        };
        changed.then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(MIGRATION_OWNERSHIP_CONSISTENCY, |_, s: &MigrationState| {
                properties::migration_ownership_consistency(&s.observed()).is_ok()
            }),
            Property::always(SINGLE_ACTIVATION, |_, s: &MigrationState| {
                let placement =
                    [ObservedPlacement { actor: 0, holder: Some(s.owner), epoch: u64::from(s.epoch) }];
                properties::single_activation(&s.activations(), &placement).is_ok()
            }),
        ]
    }
}
