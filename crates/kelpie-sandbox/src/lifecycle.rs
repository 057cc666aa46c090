//! The lifecycle every sandbox follows, whatever its backend, as a pure
//! state machine:
//!
//! ```text
//! Stopped ──create──▶ Creating ──ok──▶ Running ◀──resume── Paused
//!    ▲                   │ failed/cancelled │ ──pause──────▶  │
//!    └───────────────────┘                  │                 │
//!    ▲◀──────────────── Stopping ◀──stop────┴─────────────────┘
//! any but Destroying/Destroyed ──destroy──▶ Destroying ──▶ Destroyed
//! ```
//!
//! A long transition (create, stop, destroy) takes an intermediate state
//! while its work runs, so a second caller sees `Creating` or `Destroying`
//! and is refused instead of starting the same work again. [`begin`] checks
//! and takes the intermediate state in one step (the caller holds the
//! sandbox's lock for that step only); [`complete`] ends it. A destroy may
//! begin while a create or stop is under way: the create then completes into
//! a state it no longer owns and must tear down what it built.

use std::fmt;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SandboxState {
    Stopped,
    Creating,
    Running,
    Paused,
    Stopping,
    Destroying,
    Destroyed,
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            SandboxState::Stopped => "stopped",
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopping => "stopping",
            SandboxState::Destroying => "destroying",
            SandboxState::Destroyed => "destroyed",
        };
        f.write_str(name)
    }
}

/// What a caller asks of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transition {
    Create,
    Exec,
    Pause,
    Resume,
    Stop,
    Destroy,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Transition::Create => "create",
            Transition::Exec => "exec",
            Transition::Pause => "pause",
            Transition::Resume => "resume",
            Transition::Stop => "stop",
            Transition::Destroy => "destroy",
        };
        f.write_str(name)
    }
}

/// A transition the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub from: SandboxState,
    pub transition: Transition,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} a sandbox that is {}", self.transition, self.from)
    }
}

/// Checks `transition` from `state`; the state to hold while it runs (the
/// final state for the instant ones: exec leaves the state as it is, pause
/// and resume take effect at once).
pub fn begin(state: SandboxState, transition: Transition) -> Result<SandboxState, Refused> {
    use SandboxState as S;
    use Transition as T;
    let next = match (state, transition) {
        (S::Stopped, T::Create) => S::Creating,
        (S::Running, T::Exec) => S::Running,
        (S::Running, T::Pause) => S::Paused,
        (S::Paused, T::Resume) => S::Running,
        (S::Running | S::Paused, T::Stop) => S::Stopping,
        (S::Destroying | S::Destroyed, T::Destroy) => return Err(Refused { from: state, transition }),
        (_, T::Destroy) => S::Destroying,
        _ => return Err(Refused { from: state, transition }),
    };
    Ok(next)
}

/// The state after `transition`'s work finished (`succeeded` or not), given
/// the state found when it finished. `None` when the transition no longer
/// owns the sandbox (a destroy began meanwhile): its caller must undo its
/// own work, and the state stays as it is.
pub fn complete(found: SandboxState, transition: Transition, succeeded: bool) -> Option<SandboxState> {
    use SandboxState as S;
    use Transition as T;
    match (found, transition) {
        (S::Creating, T::Create) => Some(if succeeded { S::Running } else { S::Stopped }),
        // A stop that failed still released what it could; the sandbox can be created again.
        (S::Stopping, T::Stop) => Some(S::Stopped),
        (S::Destroying, T::Destroy) => Some(S::Destroyed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [SandboxState; 7] = [
        SandboxState::Stopped,
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Stopping,
        SandboxState::Destroying,
        SandboxState::Destroyed,
    ];
    const TRANSITIONS: [Transition; 6] = [
        Transition::Create,
        Transition::Exec,
        Transition::Pause,
        Transition::Resume,
        Transition::Stop,
        Transition::Destroy,
    ];

    #[test]
    fn every_state_and_transition_has_exactly_the_documented_outcome() {
        use SandboxState as S;
        use Transition as T;
        let allowed = [
            (S::Stopped, T::Create, S::Creating),
            (S::Running, T::Exec, S::Running),
            (S::Running, T::Pause, S::Paused),
            (S::Paused, T::Resume, S::Running),
            (S::Running, T::Stop, S::Stopping),
            (S::Paused, T::Stop, S::Stopping),
            (S::Stopped, T::Destroy, S::Destroying),
            (S::Creating, T::Destroy, S::Destroying),
            (S::Running, T::Destroy, S::Destroying),
            (S::Paused, T::Destroy, S::Destroying),
            (S::Stopping, T::Destroy, S::Destroying),
        ];
        for state in STATES {
            for transition in TRANSITIONS {
                let expected = allowed.iter().find(|(s, t, _)| *s == state && *t == transition).map(|a| a.2);
                match (begin(state, transition), expected) {
                    (Ok(next), Some(want)) => assert_eq!(next, want, "{state} {transition}"),
                    (Err(refused), None) => assert_eq!(refused, Refused { from: state, transition }),
                    (got, want) => panic!("{state} {transition}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn two_callers_cannot_both_create_or_both_destroy() {
        let creating = begin(SandboxState::Stopped, Transition::Create).unwrap();
        assert_eq!(begin(creating, Transition::Create).unwrap_err().from, SandboxState::Creating);
        let destroying = begin(SandboxState::Running, Transition::Destroy).unwrap();
        assert_eq!(begin(destroying, Transition::Destroy).unwrap_err().from, SandboxState::Destroying);
    }

    #[test]
    fn a_create_overtaken_by_a_destroy_owns_nothing_when_it_completes() {
        let creating = begin(SandboxState::Stopped, Transition::Create).unwrap();
        let destroying = begin(creating, Transition::Destroy).unwrap();
        assert_eq!(complete(destroying, Transition::Create, true), None);
        assert_eq!(complete(destroying, Transition::Destroy, true), Some(SandboxState::Destroyed));
        assert_eq!(complete(creating, Transition::Create, false), Some(SandboxState::Stopped));
        assert_eq!(complete(creating, Transition::Create, true), Some(SandboxState::Running));
    }
}
