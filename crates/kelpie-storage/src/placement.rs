//! Placement rules (sans-IO), applied by every backend inside its atomic
//! section: epochs never go backwards, and a claim is a compare-and-set that
//! raises the epoch by exactly one. Because commits are fenced on
//! `(node, epoch)`, a successful claim cuts off every earlier activation.

use kelpie_core::{ActorId, Error, NodeId, Result};

use crate::types::{ClaimOutcome, Placement};

/// Checks that `new` may replace `current` (epochs are monotonic).
pub(crate) fn check_put(current: Option<&Placement>, new: &Placement) -> Result<()> {
    assert!(current.is_none_or(|current| current.actor_id == new.actor_id), "same actor");
    let current_epoch = current.map_or(0, |current| current.epoch);
    if new.epoch < current_epoch || new.epoch == 0 {
        return Err(Error::validation(
            "placement.epoch",
            format!(
                "epoch {} for actor {} is below the stored epoch {current_epoch} or zero; epochs never go backwards",
                new.epoch, new.actor_id
            ),
        ));
    }
    Ok(())
}

/// Decides a claim: the new placement when `expected_epoch` matches.
pub(crate) fn decide_claim(
    current: Option<Placement>,
    actor: ActorId,
    node: NodeId,
    expected_epoch: u64,
) -> ClaimOutcome {
    let current_epoch = current.as_ref().map_or(0, |current| current.epoch);
    if current_epoch != expected_epoch {
        return ClaimOutcome::Stale { current };
    }
    let epoch = expected_epoch.checked_add(1).expect("placement epoch overflow");
    assert!(epoch > current_epoch);
    ClaimOutcome::Claimed(Placement { actor_id: actor, node_id: node, epoch })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(epoch: u64) -> Placement {
        Placement { actor_id: ActorId::new("a", "1").unwrap(), node_id: NodeId::new("n1").unwrap(), epoch }
    }

    #[test]
    fn epochs_never_go_backwards() {
        assert_eq!(check_put(None, &placement(1)), Ok(()));
        assert_eq!(check_put(Some(&placement(3)), &placement(3)), Ok(()));
        let err = check_put(Some(&placement(3)), &placement(2)).unwrap_err();
        assert!(err.to_string().contains("below the stored epoch 3"), "{err}");
        assert!(check_put(None, &placement(0)).is_err());
    }

    #[test]
    fn claim_is_compare_and_set_plus_one() {
        let actor = placement(0).actor_id;
        let node = NodeId::new("n2").unwrap();
        let claimed = decide_claim(Some(placement(4)), actor.clone(), node.clone(), 4);
        assert_eq!(
            claimed,
            ClaimOutcome::Claimed(Placement { actor_id: actor.clone(), node_id: node.clone(), epoch: 5 })
        );
        let stale = decide_claim(Some(placement(4)), actor.clone(), node.clone(), 3);
        assert_eq!(stale, ClaimOutcome::Stale { current: Some(placement(4)) });
        let first = decide_claim(None, actor, node, 0);
        assert!(matches!(first, ClaimOutcome::Claimed(Placement { epoch: 1, .. })));
    }
}
