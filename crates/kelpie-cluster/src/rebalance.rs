//! Planned moves (pure): which of this node's actors go where when a node
//! joins (rebalancing) or when this node leaves (drain).
//!
//! A move is carried out by the caller in three steps: *prepare* (new
//! invocations of the actor wait here), *transfer* (the activation finishes
//! what its mailbox holds, saves and releases its lease: see
//! `kelpie_runtime::Runtime::deactivate`) and *complete* (the target claims
//! and activates it: a [`crate::RequestKind::Touch`] request). Invocations
//! that waited then route to the new owner. If anything claims the actor in
//! between, the touch fails and the actor simply lives where it was
//! claimed; a move never creates a second owner because every step goes
//! through the lease.

use std::collections::BTreeSet;

use kelpie_core::{ActorId, NodeId};

use crate::member::MemberView;

/// Most actors one rebalancing round moves, so a join never stalls a node.
pub const REBALANCE_MOVES_PER_ROUND_COUNT_MAX: usize = 256;
/// How often a node compares the membership view for newcomers.
pub const REBALANCE_INTERVAL_MS: u64 = 1_000;

/// Routable nodes (active and live), in id order.
pub fn routable_nodes(members: &[MemberView]) -> BTreeSet<NodeId> {
    members.iter().filter(|view| view.routable).map(|view| view.row.node_id.clone()).collect()
}

/// Moves that give the `newcomers` their share of this node's actors.
///
/// With `n` routable nodes after the join and `k` of them new, this node
/// keeps `(n - k) / n` of its `own` actors and hands the rest round-robin
/// to the newcomers; every old node doing the same evens the load out
/// without any node knowing the others' counts. `own` is least recently
/// used first, and the least recently used actors move (the busy ones stay
/// where their callers are). At most [`REBALANCE_MOVES_PER_ROUND_COUNT_MAX`].
pub fn plan_join_moves(
    self_node: &NodeId,
    own: &[ActorId],
    routable: &BTreeSet<NodeId>,
    newcomers: &BTreeSet<NodeId>,
) -> Vec<(ActorId, NodeId)> {
    let targets: Vec<&NodeId> =
        newcomers.iter().filter(|n| *n != self_node && routable.contains(*n)).collect();
    if targets.is_empty() || !routable.contains(self_node) {
        return Vec::new();
    }
    let nodes_count = routable.len();
    assert!(nodes_count > targets.len(), "this node and the newcomers are all routable");
    let moving_count = (own.len() * targets.len() / nodes_count).min(REBALANCE_MOVES_PER_ROUND_COUNT_MAX);
    own.iter()
        .take(moving_count)
        .enumerate()
        .map(|(index, actor_id)| (actor_id.clone(), targets[index % targets.len()].clone()))
        .collect()
}

/// Moves that hand every one of this node's actors to the other routable
/// nodes, round-robin, before it leaves. Empty when no other node takes
/// activations (the actors are then released and claimed on demand).
pub fn plan_drain_moves(
    self_node: &NodeId,
    own: &[ActorId],
    routable: &BTreeSet<NodeId>,
) -> Vec<(ActorId, NodeId)> {
    let targets: Vec<&NodeId> = routable.iter().filter(|n| *n != self_node).collect();
    if targets.is_empty() {
        return Vec::new();
    }
    own.iter()
        .enumerate()
        .map(|(index, actor_id)| (actor_id.clone(), targets[index % targets.len()].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn nodes(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|n| node(n)).collect()
    }

    fn actors(count: usize) -> Vec<ActorId> {
        (0..count).map(|i| ActorId::new("agents", format!("a{i}")).unwrap()).collect()
    }

    #[test]
    fn a_second_node_gets_half_the_least_recently_used() {
        let own = actors(10);
        let moves = plan_join_moves(&node("n1"), &own, &nodes(&["n1", "n2"]), &nodes(&["n2"]));
        assert_eq!(moves.len(), 5);
        assert_eq!(moves.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(), own[..5].to_vec());
        assert!(moves.iter().all(|(_, target)| target == &node("n2")));
    }

    #[test]
    fn a_third_node_gets_a_third_and_two_newcomers_share_round_robin() {
        let own = actors(9);
        let one = plan_join_moves(&node("n1"), &own, &nodes(&["n1", "n2", "n3"]), &nodes(&["n3"]));
        assert_eq!(one.len(), 3);
        let two = plan_join_moves(&node("n1"), &own, &nodes(&["n1", "n2", "n3"]), &nodes(&["n2", "n3"]));
        assert_eq!(two.len(), 6);
        let to_n2 = two.iter().filter(|(_, t)| t == &node("n2")).count();
        assert_eq!((to_n2, two.len() - to_n2), (3, 3));
    }

    #[test]
    fn nothing_moves_without_a_routable_newcomer_or_when_this_node_is_not_routable() {
        let own = actors(8);
        assert!(plan_join_moves(&node("n1"), &own, &nodes(&["n1", "n2"]), &nodes(&[])).is_empty());
        assert!(
            plan_join_moves(&node("n1"), &own, &nodes(&["n1"]), &nodes(&["n2"])).is_empty(),
            "n2 not routable"
        );
        assert!(plan_join_moves(&node("n1"), &own, &nodes(&["n2"]), &nodes(&["n2"])).is_empty(), "draining");
        assert!(
            plan_join_moves(&node("n1"), &own, &nodes(&["n1", "n2"]), &nodes(&["n1"])).is_empty(),
            "self"
        );
    }

    #[test]
    fn a_round_is_bounded() {
        let own = actors(2 * REBALANCE_MOVES_PER_ROUND_COUNT_MAX + 10);
        let moves = plan_join_moves(&node("n1"), &own, &nodes(&["n1", "n2"]), &nodes(&["n2"]));
        assert_eq!(moves.len(), REBALANCE_MOVES_PER_ROUND_COUNT_MAX);
    }

    #[test]
    fn drain_hands_everything_to_the_others_round_robin() {
        let own = actors(5);
        let moves = plan_drain_moves(&node("n2"), &own, &nodes(&["n1", "n2", "n3"]));
        let targets: Vec<&str> = moves.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(targets, ["n1", "n3", "n1", "n3", "n1"]);
        assert!(plan_drain_moves(&node("n1"), &own, &nodes(&["n1"])).is_empty());
    }
}
