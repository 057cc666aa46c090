//! The properties every runtime and cluster DST scenario checks after each
//! step, read off the shared world: SingleActivation and ConsistentHolder
//! (activations against the directory), PlacementConsistency (directory
//! against the fencing record), LeaseUniqueness and FencingTokenMonotonic
//! (the directory's lease events and the accepted commits), NoSplitBrain
//! (commits per actor and epoch), Durability (acknowledged invocations in
//! the database), FailureAtomicity (failed ones not in it) and
//! GracefulDeactivation (no accepted invocation left unanswered).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kelpie_core::{ActorId, NodeId};
use kelpie_dst::properties;
use kelpie_dst::{SimView, Simulation};
use kelpie_runtime::runtime::Runtime;

use super::probe::ProbeActor;
use super::world::{lock, Observations, SharedDatabase};

/// What the checks read; every field is shared with the running scenario.
#[derive(Clone)]
pub struct Checked {
    pub observations: Arc<Mutex<Observations>>,
    pub database: Arc<SharedDatabase>,
    /// Each node's current runtime (`None` before its first boot).
    pub runtimes: Arc<Mutex<Vec<Option<Runtime<ProbeActor>>>>>,
    pub node_ids: Vec<NodeId>,
    pub actors: Vec<ActorId>,
}

/// Registers every property as a named invariant of `sim`.
pub fn register_properties(sim: &mut Simulation, checked: &Checked) {
    register_activation_invariants(sim, checked);
    register_lease_invariants(sim, checked);
    register_durability(sim, checked);
}

fn register_activation_invariants(sim: &mut Simulation, checked: &Checked) {
    let snapshot = move |checked: &Checked, view: &SimView<'_>| {
        let runtimes = lock(&checked.runtimes).clone();
        let is_live = |actor: &ActorId, node: usize| {
            view.node(node).is_up() && runtimes[node].as_ref().is_some_and(|rt| rt.is_active(actor))
        };
        let observed = lock(&checked.observations);
        (observed.live_activations(is_live, &checked.node_ids), observed.placements())
    };
    let c = checked.clone();
    sim.invariant(properties::SINGLE_ACTIVATION, move |view| {
        let (activations, placements) = snapshot(&c, view);
        properties::single_activation(&activations, &placements).map_err(|v| v.to_string())
    });
    let c = checked.clone();
    sim.invariant(properties::CONSISTENT_HOLDER, move |view| {
        let (activations, placements) = snapshot(&c, view);
        properties::consistent_holder(&activations, &placements).map_err(|v| v.to_string())
    });
}

fn register_lease_invariants(sim: &mut Simulation, checked: &Checked) {
    let c = checked.clone();
    sim.invariant(properties::PLACEMENT_CONSISTENCY, move |_| {
        let observed = lock(&c.observations);
        let fences: Vec<_> = observed.actors().iter().filter_map(|actor| c.database.fence(actor)).collect();
        properties::placement_consistency(&observed.placements(), &fences).map_err(|v| v.to_string())
    });
    let c = checked.clone();
    sim.invariant(properties::LEASE_UNIQUENESS, move |_| {
        properties::lease_uniqueness(&lock(&c.observations).lease_events).map_err(|v| v.to_string())
    });
    let c = checked.clone();
    sim.invariant(properties::FENCING_TOKEN_MONOTONIC, move |_| {
        let observed = lock(&c.observations);
        properties::fencing_token_monotonic(&observed.lease_events, &observed.commits)
            .map_err(|v| v.to_string())
    });
    let c = checked.clone();
    sim.invariant(properties::NO_SPLIT_BRAIN, move |_| {
        properties::no_split_brain(&lock(&c.observations).commits).map_err(|v| v.to_string())
    });
}

/// Durability of acknowledged invocations and FailureAtomicity of failed
/// ones, re-read only when a commit reached the database or a failure was
/// answered; GracefulDeactivation over the invocations left unanswered.
fn register_durability(sim: &mut Simulation, checked: &Checked) {
    let durable_log = |c: &Checked| {
        let mut durable = BTreeMap::new();
        for actor in &c.actors {
            durable.extend(c.database.durable_log(actor));
        }
        durable
    };
    let c = checked.clone();
    let checked_at = Mutex::new(u64::MAX);
    sim.invariant(properties::DURABILITY, move |_| {
        let observed = lock(&c.observations);
        let attempts = c.database.commit_attempts();
        if std::mem::replace(&mut *lock(&checked_at), attempts) == attempts {
            return Ok(());
        }
        properties::durability(&observed.acknowledged, &durable_log(&c)).map_err(|v| v.to_string())
    });
    let c = checked.clone();
    let checked_at = Mutex::new((u64::MAX, usize::MAX));
    sim.invariant(properties::FAILURE_ATOMICITY, move |_| {
        let observed = lock(&c.observations);
        let now = (c.database.commit_attempts(), observed.failed.len());
        if std::mem::replace(&mut *lock(&checked_at), now) == now {
            return Ok(());
        }
        properties::failure_atomicity(&observed.failed, &durable_log(&c)).map_err(|v| v.to_string())
    });
    let c = checked.clone();
    sim.invariant(properties::GRACEFUL_DEACTIVATION, move |_| {
        properties::graceful_deactivation(&lock(&c.observations).unanswered).map_err(|v| v.to_string())
    });
}
