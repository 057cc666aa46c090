//! Model checking of the activation lifecycle and graceful shutdown, driving
//! the real [`kelpie_runtime::lifecycle::next_state`]: requests arrive in the
//! mailbox, an activation starts, loads or fails, serves, deactivates after
//! draining its mailbox and flushes; shutdown refuses new requests and
//! completes once the activation is gone. Two planted bugs show the
//! properties can fail.

use kelpie_dst::models::{check_exhaustively, find_counterexample};
use kelpie_dst::properties::{self, Phase, RequestFate, GRACEFUL_SHUTDOWN, LIFECYCLE_ORDERING};
use kelpie_runtime::lifecycle::next_state;
use kelpie_runtime::{ActivationState, LifecycleEvent};
use stateright::{Model, Property};

const REQUESTS_COUNT: usize = 2;
/// Activations explored (each starts with `Activate`).
const ACTIVATIONS_COUNT_MAX: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// Deactivation flushes and drops whatever is still in the mailbox.
    DropMailboxOnDeactivate,
    /// A lost lease re-activates in place, from Active straight to Activating.
    ReactivateInPlace,
}

#[derive(Clone, Copy)]
struct LifecycleModel {
    bug: Option<Bug>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LifeState {
    phase: ActivationState,
    last_transition: Option<(ActivationState, ActivationState)>,
    activations: u8,
    mailbox: Vec<usize>,
    /// `None`: not sent yet.
    fates: Vec<Option<RequestFate>>,
    shutting_down: bool,
    shutdown_complete: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Send(usize),
    Lifecycle(LifecycleEvent),
    Handle,
    Shutdown,
    ShutdownComplete,
}

fn phase(state: ActivationState) -> Phase {
    match state {
        ActivationState::Deactivated => Phase::Deactivated,
        ActivationState::Activating => Phase::Activating,
        ActivationState::Active => Phase::Active,
        ActivationState::Deactivating => Phase::Deactivating,
    }
}

impl LifecycleModel {
    /// The real transition function, or the planted bug around it.
    fn transition(&self, state: ActivationState, event: LifecycleEvent) -> Option<ActivationState> {
        let in_place = state == ActivationState::Active && event == LifecycleEvent::Activate;
        if self.bug == Some(Bug::ReactivateInPlace) && in_place {
            return Some(ActivationState::Activating);
        }
        next_state(state, event)
    }

    /// Whether the runtime would raise `event` now.
    fn may_raise(&self, s: &LifeState, event: LifecycleEvent) -> bool {
        let fresh_start = s.activations < ACTIVATIONS_COUNT_MAX && !s.mailbox.is_empty();
        match event {
            LifecycleEvent::Activate => {
                let in_place = self.bug == Some(Bug::ReactivateInPlace) && s.phase == ActivationState::Active;
                fresh_start && (s.phase == ActivationState::Deactivated || in_place)
            }
            LifecycleEvent::Flushed => s.mailbox.is_empty() || self.bug == Some(Bug::DropMailboxOnDeactivate),
            LifecycleEvent::Loaded | LifecycleEvent::ActivationFailed | LifecycleEvent::Deactivate => true,
        }
    }

    fn raise(&self, s: &mut LifeState, event: LifecycleEvent) -> Option<()> {
        let next = self.transition(s.phase, event)?;
        match event {
            LifecycleEvent::Activate => s.activations += 1,
            // A failed activation answers every queued request with its error.
            LifecycleEvent::ActivationFailed => answer_all(s),
            // The buggy flush forgets the queue without answering.
            LifecycleEvent::Flushed => s.mailbox.clear(),
            _ => {}
        }
        s.last_transition = Some((s.phase, next));
        s.phase = next;
        Some(())
    }
}

fn answer_all(s: &mut LifeState) {
    for request in s.mailbox.drain(..) {
        s.fates[request] = Some(RequestFate::Answered);
    }
}

const EVENTS: [LifecycleEvent; 5] = [
    LifecycleEvent::Activate,
    LifecycleEvent::Loaded,
    LifecycleEvent::ActivationFailed,
    LifecycleEvent::Deactivate,
    LifecycleEvent::Flushed,
];

impl Model for LifecycleModel {
    type State = LifeState;
    type Action = Action;

    fn init_states(&self) -> Vec<LifeState> {
        vec![LifeState {
            phase: ActivationState::Deactivated,
            last_transition: None,
            activations: 0,
            mailbox: Vec::new(),
            fates: vec![None; REQUESTS_COUNT],
            shutting_down: false,
            shutdown_complete: false,
        }]
    }

    fn actions(&self, s: &LifeState, actions: &mut Vec<Action>) {
        let accepting = s.phase != ActivationState::Deactivating;
        let unsent = (0..REQUESTS_COUNT).filter(|r| s.fates[*r].is_none());
        actions.extend(unsent.filter(|_| accepting).map(Action::Send));
        let enabled =
            EVENTS.into_iter().filter(|e| self.transition(s.phase, *e).is_some() && self.may_raise(s, *e));
        actions.extend(enabled.map(Action::Lifecycle));
        let serving = matches!(s.phase, ActivationState::Active | ActivationState::Deactivating);
        if serving && !s.mailbox.is_empty() {
            actions.push(Action::Handle);
        }
        if !s.shutting_down {
            actions.push(Action::Shutdown);
        }
        let idle = s.phase == ActivationState::Deactivated && s.mailbox.is_empty();
        if s.shutting_down && !s.shutdown_complete && idle {
            actions.push(Action::ShutdownComplete);
        }
    }

    fn next_state(&self, last: &LifeState, action: Action) -> Option<LifeState> {
        let mut s = last.clone();
        match action {
            Action::Send(request) if s.shutting_down => s.fates[request] = Some(RequestFate::Refused),
            Action::Send(request) => {
                s.fates[request] = Some(RequestFate::Waiting);
                s.mailbox.push(request);
            }
            Action::Lifecycle(event) => self.raise(&mut s, event)?,
            Action::Handle => {
                let request = s.mailbox.remove(0);
                s.fates[request] = Some(RequestFate::Answered);
            }
            Action::Shutdown => s.shutting_down = true,
            Action::ShutdownComplete => s.shutdown_complete = true,
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(LIFECYCLE_ORDERING, |_, s: &LifeState| {
                let observed: Vec<(Phase, Phase)> =
                    s.last_transition.iter().map(|(a, b)| (phase(*a), phase(*b))).collect();
                properties::lifecycle_ordering(&observed).is_ok()
            }),
            Property::always(GRACEFUL_SHUTDOWN, |_, s: &LifeState| {
                let fates: Vec<RequestFate> = s.fates.iter().flatten().copied().collect();
                properties::graceful_shutdown(s.shutdown_complete, &fates).is_ok()
            }),
        ]
    }
}

#[test]
fn lifecycle_model_over_the_real_transitions_holds_every_property() {
    let explored = check_exhaustively("lifecycle", LifecycleModel { bug: None });
    assert_eq!(explored.unique_states, 129);
}

#[test]
fn lifecycle_dropping_the_mailbox_on_deactivate_loses_a_request_at_shutdown() {
    let model = LifecycleModel { bug: Some(Bug::DropMailboxOnDeactivate) };
    let trace = find_counterexample("lifecycle/drop-mailbox-on-deactivate", model, GRACEFUL_SHUTDOWN);
    assert_eq!(trace.len(), 8, "{trace:?}");
    assert_eq!(trace[4].trim(), "5. Lifecycle(Flushed)");
    assert!(trace[7].contains("Some(Waiting)"), "{trace:?}");
}

#[test]
fn lifecycle_reactivating_in_place_is_an_illegal_transition() {
    let model = LifecycleModel { bug: Some(Bug::ReactivateInPlace) };
    let trace = find_counterexample("lifecycle/reactivate-in-place", model, LIFECYCLE_ORDERING);
    assert_eq!(trace.len(), 5, "{trace:?}");
    assert!(trace[4].contains("last_transition: Some((Active, Activating))"), "{trace:?}");
}
