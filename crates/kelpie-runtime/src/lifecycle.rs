//! The activation lifecycle of one actor, as a pure state machine.
//!
//! ```text
//! Deactivated --activate--> Activating --loaded--> Active --deactivate--> Deactivating --flushed--> Deactivated
//!                           Activating --failed--> Deactivated
//! ```
//!
//! Every transition goes through [`Lifecycle::apply`]; an event that is not
//! allowed in the current state is refused with [`IllegalTransition`] and
//! leaves the state unchanged, so an illegal sequence can never be observed.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActivationState {
    Deactivated,
    Activating,
    Active,
    Deactivating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A request arrived for an actor that is not active: claim and load.
    Activate,
    /// Placement claimed and state loaded; `on_activate` succeeded.
    Loaded,
    /// Claiming, loading or `on_activate` failed.
    ActivationFailed,
    /// Idle timeout, eviction, lease loss or shutdown.
    Deactivate,
    /// `on_deactivate` ran and the placement was released.
    Flushed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal lifecycle transition: {event:?} in state {state:?}")]
pub struct IllegalTransition {
    pub state: ActivationState,
    pub event: LifecycleEvent,
}

/// The lifecycle of one actor's activation, counting completed activations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    state: ActivationState,
    activations_count: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { state: ActivationState::Deactivated, activations_count: 0 }
    }
}

impl fmt::Display for ActivationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The successor of `state` under `event`, or `None` if not allowed.
pub fn next_state(state: ActivationState, event: LifecycleEvent) -> Option<ActivationState> {
    use ActivationState::*;
    use LifecycleEvent::*;
    match (state, event) {
        (Deactivated, Activate) => Some(Activating),
        (Activating, Loaded) => Some(Active),
        (Activating, ActivationFailed) => Some(Deactivated),
        (Active, Deactivate) => Some(Deactivating),
        (Deactivating, Flushed) => Some(Deactivated),
        _ => None,
    }
}

impl Lifecycle {
    pub fn state(&self) -> ActivationState {
        self.state
    }

    pub fn activations_count(&self) -> u64 {
        self.activations_count
    }

    pub fn apply(&mut self, event: LifecycleEvent) -> Result<ActivationState, IllegalTransition> {
        let next = next_state(self.state, event).ok_or(IllegalTransition { state: self.state, event })?;
        if next == ActivationState::Active {
            self.activations_count += 1;
        }
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActivationState::*;
    use LifecycleEvent::*;

    const STATES: [ActivationState; 4] = [Deactivated, Activating, Active, Deactivating];
    const EVENTS: [LifecycleEvent; 5] = [Activate, Loaded, ActivationFailed, Deactivate, Flushed];

    #[test]
    fn full_cycle_counts_activations() {
        let mut life = Lifecycle::default();
        for _ in 0..2 {
            assert_eq!(life.apply(Activate), Ok(Activating));
            assert_eq!(life.apply(Loaded), Ok(Active));
            assert_eq!(life.apply(Deactivate), Ok(Deactivating));
            assert_eq!(life.apply(Flushed), Ok(Deactivated));
        }
        assert_eq!(life.activations_count(), 2);
    }

    #[test]
    fn states_display_as_their_names() {
        let names: Vec<String> = STATES.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["Deactivated", "Activating", "Active", "Deactivating"]);
    }

    #[test]
    fn failed_activation_returns_to_deactivated_without_counting() {
        let mut life = Lifecycle::default();
        life.apply(Activate).unwrap();
        assert_eq!(life.apply(ActivationFailed), Ok(Deactivated));
        assert_eq!(life.activations_count(), 0);
    }

    #[test]
    fn exactly_five_transitions_are_legal_and_illegal_ones_change_nothing() {
        let mut legal = 0;
        for state in STATES {
            for event in EVENTS {
                let mut life = Lifecycle { state, activations_count: 0 };
                match life.apply(event) {
                    Ok(next) => {
                        legal += 1;
                        assert_eq!(life.state(), next);
                    }
                    Err(err) => {
                        assert_eq!(err, IllegalTransition { state, event });
                        assert_eq!(life.state(), state, "refused event must not move the state");
                    }
                }
            }
        }
        assert_eq!(legal, 5);
    }
}
