//! Model checking of the registry's claim/renew/release protocol, driving the
//! real [`kelpie_registry::lease::step`]: each node reads the record, decides
//! with `step` at the current time, and writes with a compare-and-set that
//! fails (and re-reads) if another node wrote in between, exactly as
//! `Registry::apply` does. Two planted bugs show the properties can fail.

use kelpie_core::{ActorId, NodeId};
use kelpie_dst::models::{check_exhaustively, find_counterexample};
use kelpie_dst::properties::{
    self, LeaseEvent, ObservedActivation, ObservedPlacement, Phase, FENCING_TOKEN_MONOTONIC,
    LEASE_UNIQUENESS, SINGLE_ACTIVATION,
};
use kelpie_registry::lease::{self, Holder, LeaseCommand, LeaseOutcome, PlacementRecord};
use stateright::{Model, Property};

const NODES_COUNT: u8 = 2;
/// Last instant of model time, in ms.
const TIME_MS_MAX: u8 = 3;
const LEASE_MS: u8 = 2;
/// Claims explored (each raises the epoch).
const EPOCH_MAX: u8 = 3;
/// Directory changes explored (grants and releases).
const EVENTS_COUNT_MAX: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// The decided record is written without comparing with what was read.
    ClaimWithoutCas,
    /// A renewal refused by `step` is applied anyway, for whoever asked.
    RenewWithoutOwnerCheck,
}

#[derive(Clone)]
struct RegistryModel {
    actor: ActorId,
    nodes: Vec<NodeId>,
    bug: Option<Bug>,
}

/// A placement record in compact form: epoch and `(holder, expires_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Rec {
    epoch: u8,
    holder: Option<(u8, u8)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Claim,
    Renew,
    Release,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Client {
    /// The lease this node believes it holds: `(epoch, expires_ms)`.
    holds: Option<(u8, u8)>,
    /// An operation in flight and the record it read.
    pending: Option<(Op, Option<Rec>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RegState {
    now: u8,
    record: Option<Rec>,
    clients: Vec<Client>,
    events: Vec<LeaseEvent<u8, u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Start(u8, Op),
    Decide(u8),
    Crash(u8),
    Tick,
}

impl RegistryModel {
    fn new(bug: Option<Bug>) -> Self {
        let nodes = (0..NODES_COUNT).map(|n| NodeId::new(format!("n{n}")).unwrap()).collect();
        RegistryModel { actor: ActorId::new("agents", "a1").unwrap(), nodes, bug }
    }

    fn to_record(&self, rec: Rec) -> PlacementRecord {
        let holder = rec.holder.map(|(node, expires)| Holder {
            node_id: self.nodes[usize::from(node)].clone(),
            lease_expires_at_ms: u64::from(expires),
        });
        PlacementRecord { actor_id: self.actor.clone(), epoch: u64::from(rec.epoch), holder }
    }

    fn compact(&self, record: &PlacementRecord) -> Rec {
        let holder = record.holder.as_ref().map(|h| {
            let node = self.nodes.iter().position(|n| *n == h.node_id).expect("known node");
            (node as u8, u8::try_from(h.lease_expires_at_ms).expect("small time"))
        });
        Rec { epoch: u8::try_from(record.epoch).expect("small epoch"), holder }
    }

    fn command(&self, node: u8, op: Op, client: &Client, now: u8) -> LeaseCommand {
        let node_id = self.nodes[usize::from(node)].clone();
        let (now_ms, lease_ms) = (u64::from(now), u64::from(LEASE_MS));
        let epoch = client.holds.map_or(0, |(epoch, _)| u64::from(epoch));
        match op {
            Op::Claim => LeaseCommand::Claim { node_id, now_ms, lease_ms },
            Op::Renew => LeaseCommand::Renew { node_id, epoch, now_ms, lease_ms },
            Op::Release => LeaseCommand::Release { node_id, epoch },
        }
    }

    /// The real state machine, or the planted renewal bug around it.
    fn decide(
        &self,
        node: u8,
        snapshot: Option<Rec>,
        command: &LeaseCommand,
        now: u8,
    ) -> (Option<Rec>, LeaseOutcome) {
        let current = snapshot.map(|rec| self.to_record(rec));
        let (next, outcome) = lease::step(&self.actor, current.as_ref(), command);
        let refused_renewal = matches!(command, LeaseCommand::Renew { .. }) && next.is_none();
        if self.bug == Some(Bug::RenewWithoutOwnerCheck) && refused_renewal {
            if let Some(rec) = snapshot {
                let stolen = Rec { epoch: rec.epoch, holder: Some((node, now + LEASE_MS)) };
                return (Some(stolen), LeaseOutcome::Renewed(self.to_record(stolen)));
            }
        }
        (next.map(|record| self.compact(&record)), outcome)
    }

    fn apply_decision(&self, state: &mut RegState, node: u8, op: Op, snapshot: Option<Rec>) {
        let client = state.clients[usize::from(node)];
        let command = self.command(node, op, &client, state.now);
        let (next, outcome) = self.decide(node, snapshot, &command, state.now);
        let client = &mut state.clients[usize::from(node)];
        let Some(next) = next else {
            client.pending = None;
            if matches!(outcome, LeaseOutcome::NotHolder { .. }) {
                client.holds = None;
            }
            return;
        };
        if state.record != snapshot && self.bug != Some(Bug::ClaimWithoutCas) {
            client.pending = Some((op, state.record)); // lost the race: read again, decide again
            return;
        }
        state.record = Some(next);
        client.pending = None;
        let holder_expires = next.holder.map(|(_, expires)| expires);
        client.holds = match outcome {
            LeaseOutcome::Claimed(_) => Some((next.epoch, holder_expires.expect("a claim has a holder"))),
            LeaseOutcome::Renewed(_) => {
                client.holds.map(|(epoch, _)| (epoch, holder_expires.expect("renewed")))
            }
            _ => None,
        };
        let event = match holder_expires {
            Some(expires) => LeaseEvent::Granted {
                actor: 0,
                node,
                epoch: u64::from(next.epoch),
                granted_at_ms: u64::from(state.now),
                expires_at_ms: u64::from(expires),
            },
            None => LeaseEvent::Released { actor: 0, node, epoch: u64::from(next.epoch) },
        };
        state.events.push(event);
    }
}

impl RegState {
    /// Nodes that believe they hold a live lease, as activations.
    fn believed(&self) -> Vec<ObservedActivation<u8, u8>> {
        let holders =
            self.clients.iter().enumerate().filter_map(|(node, c)| c.holds.map(|h| (node as u8, h)));
        holders
            .filter(|(_, (_, expires))| self.now < *expires)
            .map(|(node, (epoch, _))| ObservedActivation {
                actor: 0,
                node,
                epoch: u64::from(epoch),
                phase: Phase::Active,
            })
            .collect()
    }

    fn placement(&self) -> Vec<ObservedPlacement<u8, u8>> {
        let rec = self.record.iter();
        rec.map(|r| ObservedPlacement {
            actor: 0,
            holder: r.holder.map(|(n, _)| n),
            epoch: u64::from(r.epoch),
        })
        .collect()
    }
}

impl Model for RegistryModel {
    type State = RegState;
    type Action = Action;

    fn init_states(&self) -> Vec<RegState> {
        let client = Client { holds: None, pending: None };
        vec![RegState {
            now: 0,
            record: None,
            clients: vec![client; usize::from(NODES_COUNT)],
            events: Vec::new(),
        }]
    }

    fn actions(&self, state: &RegState, actions: &mut Vec<Action>) {
        let epoch = state.record.map_or(0, |r| r.epoch);
        let room = state.events.len() < EVENTS_COUNT_MAX;
        for node in 0..NODES_COUNT {
            let client = state.clients[usize::from(node)];
            match (client.pending, client.holds) {
                (Some(_), _) => actions.push(Action::Decide(node)),
                (None, None) if room && epoch < EPOCH_MAX => actions.push(Action::Start(node, Op::Claim)),
                (None, None) => {}
                (None, Some((_, expires))) if room => {
                    // Renewing only makes sense once it would extend the lease.
                    if state.now + LEASE_MS > expires {
                        actions.push(Action::Start(node, Op::Renew));
                    }
                    actions.push(Action::Start(node, Op::Release));
                }
                (None, Some(_)) => {}
            }
            if client.holds.is_some() || client.pending.is_some() {
                actions.push(Action::Crash(node));
            }
        }
        if state.now < TIME_MS_MAX {
            actions.push(Action::Tick);
        }
    }

    fn next_state(&self, last: &RegState, action: Action) -> Option<RegState> {
        let mut state = last.clone();
        match action {
            Action::Start(node, op) => state.clients[usize::from(node)].pending = Some((op, state.record)),
            Action::Decide(node) => {
                let (op, snapshot) = last.clients[usize::from(node)].pending?;
                self.apply_decision(&mut state, node, op, snapshot);
            }
            Action::Crash(node) => state.clients[usize::from(node)] = Client { holds: None, pending: None },
            Action::Tick => state.now += 1,
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(LEASE_UNIQUENESS, |_, s: &RegState| {
                properties::lease_uniqueness(&s.events).is_ok()
            }),
            Property::always(FENCING_TOKEN_MONOTONIC, |_, s: &RegState| {
                properties::fencing_token_monotonic::<u8, u8>(&s.events, &[]).is_ok()
            }),
            Property::always(SINGLE_ACTIVATION, |_, s: &RegState| {
                properties::single_activation(&s.believed(), &s.placement()).is_ok()
            }),
        ]
    }
}

#[test]
fn registry_model_over_the_real_lease_step_holds_every_property() {
    let explored = check_exhaustively("registry", RegistryModel::new(None));
    assert_eq!(explored.unique_states, 56_516);
}

#[test]
fn registry_claim_without_compare_and_set_grants_two_leases() {
    let model = RegistryModel::new(Some(Bug::ClaimWithoutCas));
    let trace = find_counterexample("registry/claim-without-cas", model, LEASE_UNIQUENESS);
    // Both nodes read the empty record, then both write epoch 1.
    let steps: Vec<&str> = trace.iter().take(4).map(|line| line.trim()).collect();
    assert_eq!(steps, ["1. Start(0, Claim)", "2. Start(1, Claim)", "3. Decide(0)", "4. Decide(1)"]);
}

#[test]
fn registry_renewal_without_owner_check_steals_a_live_lease() {
    let model = RegistryModel::new(Some(Bug::RenewWithoutOwnerCheck));
    let trace = find_counterexample("registry/renew-without-owner-check", model, LEASE_UNIQUENESS);
    assert_eq!(trace.len(), 9, "{trace:?}");
    assert_eq!(trace[6].trim(), "7. Start(1, Renew)");
}
