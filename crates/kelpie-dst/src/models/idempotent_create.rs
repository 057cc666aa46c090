//! Idempotent agent creation as the agent service does it: a create with an
//! idempotency key names its agent by the key (`kelpie_agent::ids::
//! id_from_key`), and the agent's actor stores the agent in one commit that
//! answers the existing agent unchanged when the id is already taken. The
//! node crashes at any point and loses what is in flight; clients resubmit
//! until answered. Nothing but the agents themselves is durable: no log of
//! requests is kept or replayed.

use std::collections::BTreeSet;

use stateright::{Model, Property};

use crate::properties::{self, ObservedAgent, CREATED_AGENT_RETRIEVABLE, NO_DUPLICATE_AGENTS};

/// Distinct idempotency keys submitted.
pub const KEYS_COUNT: u8 = 2;
/// Most crashes explored.
pub const CRASHES_COUNT_MAX: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateBug {
    /// Each attempt draws a fresh random id instead of deriving it from the
    /// key, so a retry after a crash makes a second agent.
    RandomIdPerAttempt,
    /// The client is answered before the agent's commit, so a crash in
    /// between acknowledges an agent that was never stored.
    AnswerBeforeCommit,
}

#[derive(Debug, Clone, Copy)]
pub struct IdempotentCreateModel {
    pub bug: Option<CreateBug>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    Idle,
    Waiting,
    Answered,
}

/// Where the node is with a key's request (volatile: lost in a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InFlight {
    Received,
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CreateState {
    pub up: bool,
    pub crashes: u8,
    /// Durable: the stored agents, as (key, id drawn for it).
    pub agents: BTreeSet<(u8, u8)>,
    /// Ids drawn per key so far (the buggy variant draws one per attempt).
    pub ids_drawn: Vec<u8>,
    pub in_flight: Vec<Option<InFlight>>,
    pub clients: Vec<Client>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateAction {
    /// The client sends (or resends) its create.
    Submit(u8),
    /// The agent's actor stores the agent (or finds it stored).
    Commit(u8),
    Answer(u8),
    Crash,
    Restart,
}

impl CreateState {
    fn observed_agents(&self) -> Vec<ObservedAgent<(u8, u8), u8>> {
        self.agents.iter().map(|&(key, id)| ObservedAgent { id: (key, id), create_key: key }).collect()
    }
}

impl Model for IdempotentCreateModel {
    type State = CreateState;
    type Action = CreateAction;

    fn init_states(&self) -> Vec<Self::State> {
        let count = usize::from(KEYS_COUNT);
        vec![CreateState {
            up: true,
            crashes: 0,
            agents: BTreeSet::new(),
            ids_drawn: vec![0; count],
            in_flight: vec![None; count],
            clients: vec![Client::Idle; count],
        }]
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        if !state.up {
            actions.push(CreateAction::Restart);
            return;
        }
        for key in 0..KEYS_COUNT {
            let index = usize::from(key);
            match (state.clients[index], state.in_flight[index]) {
                (Client::Answered, _) => {}
                (_, None) => actions.push(CreateAction::Submit(key)),
                (_, Some(InFlight::Received)) => {
                    actions.push(CreateAction::Commit(key));
                    if self.bug == Some(CreateBug::AnswerBeforeCommit) {
                        actions.push(CreateAction::Answer(key));
                    }
                }
                (_, Some(InFlight::Committed)) => actions.push(CreateAction::Answer(key)),
            }
        }
        if state.crashes < CRASHES_COUNT_MAX {
            actions.push(CreateAction::Crash);
        }
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        let mut state = last.clone();
        match action {
            CreateAction::Submit(key) => {
                state.clients[usize::from(key)] = Client::Waiting;
                state.in_flight[usize::from(key)] = Some(InFlight::Received);
            }
            CreateAction::Commit(key) => {
                let index = usize::from(key);
                let id = match self.bug {
                    Some(CreateBug::RandomIdPerAttempt) => {
                        state.ids_drawn[index] += 1;
                        state.ids_drawn[index]
                    }
                    // The id is the key's: a stored agent under it is the
                    // answer, and the set does not grow.
                    _ => 0,
                };
                state.agents.insert((key, id));
                state.in_flight[index] = Some(InFlight::Committed);
            }
            CreateAction::Answer(key) => {
                state.clients[usize::from(key)] = Client::Answered;
                state.in_flight[usize::from(key)] = None;
            }
            CreateAction::Crash => {
                state.up = false;
                state.crashes += 1;
                state.in_flight.iter_mut().for_each(|in_flight| *in_flight = None);
            }
            CreateAction::Restart => state.up = true,
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(NO_DUPLICATE_AGENTS, |_, s: &CreateState| {
                properties::no_duplicate_agents(&s.observed_agents()).is_ok()
            }),
            Property::always(CREATED_AGENT_RETRIEVABLE, |_, s: &CreateState| {
                let acked = (0..KEYS_COUNT).filter(|key| s.clients[usize::from(*key)] == Client::Answered);
                let found = s.agents.iter().map(|(key, _)| *key);
                properties::created_agent_retrievable(&acked.collect(), &found.collect()).is_ok()
            }),
        ]
    }
}
