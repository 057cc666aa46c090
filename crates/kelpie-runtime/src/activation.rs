//! One activation of one actor: a task that claims the placement, loads the
//! state, handles messages one at a time in mailbox order, and finishes by
//! running `on_deactivate`, saving and releasing the placement.
//!
//! Every invocation is one transaction committed under the activation's
//! fencing epoch. If the handler fails or panics, or the commit fails, the
//! in-memory state goes back to its value before the message, so memory and
//! storage never disagree. A `Fenced` commit or a failed lease renewal means
//! another activation may exist: this one stops at once, committing nothing.
//! An invocation that changed nothing commits nothing; its reply comes from
//! this activation's memory. So that such a read is never stale by more
//! than a lease, an activation answers only while its lease is proven: the
//! last claim or renewal the registry granted was sent less than
//! `LEASE_SERVE_PERCENT` of a lease ago (the registry stamped the lease no
//! earlier than it was sent, so no other node can have claimed the actor
//! before then). Past that (the registry cannot be reached) the activation
//! ends without saving, and the request answers `NodeUnavailable`.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kelpie_core::limits::ACTOR_STATE_SIZE_BYTES_MAX;
use kelpie_core::metrics::{self, ACTOR_ACTIVATIONS, ACTOR_DEACTIVATIONS, LEASE_OPERATIONS};
use kelpie_core::{ActorId, Error, Result};
use kelpie_registry::LeaseOutcome;
use kelpie_storage::{FenceCondition, Transaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::actor::{Actor, ActorContext, STATE_KEY};
use crate::lifecycle::{Lifecycle, LifecycleEvent};
use crate::runtime::{PlantedDefect, Shared};

/// Share of a lease (percent) after a granted claim or renewal was sent
/// during which an activation answers; the rest is margin for clock rates.
pub const LEASE_SERVE_PERCENT: u64 = 90;

/// Renewals fall due on a grid of this many parts of the renewal interval
/// (shared by every activation of the process), so a node's renewals go
/// out together and the registry can send them as one batch. A renewal is
/// thus up to a quarter interval late: at most 1.25 intervals after the
/// last, well inside the `LEASE_SERVE_PERCENT` window of 3 intervals.
const RENEW_GRID_PARTS_COUNT: u64 = 4;

pub(crate) enum Command<A: Actor> {
    Invoke {
        message: A::Message,
        reply: oneshot::Sender<Result<A::Reply>>,
    },
    /// Answers once the activation is loaded: activates without a message.
    Touch {
        reply: oneshot::Sender<Result<()>>,
    },
    Deactivate,
}

struct Active<S> {
    epoch: u64,
    state: S,
    saved: Vec<u8>,
    last_activity_ms: u64,
    /// When the last renewal was tried (granted or not).
    last_renewal_ms: u64,
    /// When the last claim or renewal that the registry granted was sent.
    lease_proven_ms: u64,
    /// Set when ownership was lost: nothing more may be committed.
    lost: bool,
}

pub(crate) async fn run<A: Actor>(
    shared: Arc<Shared<A>>,
    actor_id: ActorId,
    generation: u64,
    mut inbox: mpsc::Receiver<Command<A>>,
    done: watch::Sender<bool>,
) {
    let mut lifecycle = Lifecycle::default();
    transition(&mut lifecycle, LifecycleEvent::Activate);
    match activate(&shared, &actor_id).await {
        Ok(mut active) => {
            metrics::increment(&ACTOR_ACTIVATIONS, &["activated"], 1);
            transition(&mut lifecycle, LifecycleEvent::Loaded);
            let ended = serve(&shared, &actor_id, &mut active, &mut inbox).await;
            metrics::increment(&ACTOR_DEACTIVATIONS, &[ended.as_label()], 1);
            transition(&mut lifecycle, LifecycleEvent::Deactivate);
            inbox.close();
            while let Ok(command) = inbox.try_recv() {
                if shared.config.planted_defect == Some(PlantedDefect::DropQueuedOnDeactivate) {
                    continue;
                }
                match command {
                    Command::Invoke { message, reply } => {
                        let _ = reply.send(invoke(&shared, &actor_id, &mut active, message).await);
                    }
                    Command::Touch { reply } => {
                        let _ = reply.send(if active.lost {
                            Err(fenced(&shared, &actor_id, &active))
                        } else {
                            Ok(())
                        });
                    }
                    Command::Deactivate => {}
                }
            }
            deactivate(&shared, &actor_id, &mut active).await;
            transition(&mut lifecycle, LifecycleEvent::Flushed);
        }
        Err(err) => {
            metrics::increment(&ACTOR_ACTIVATIONS, &["failed"], 1);
            transition(&mut lifecycle, LifecycleEvent::ActivationFailed);
            inbox.close();
            while let Ok(command) = inbox.try_recv() {
                match command {
                    Command::Invoke { reply, .. } => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Command::Touch { reply } => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Command::Deactivate => {}
                }
            }
        }
    }
    shared.remove_slot(&actor_id, generation);
    let _ = done.send(true);
}

fn transition(lifecycle: &mut Lifecycle, event: LifecycleEvent) {
    if let Err(illegal) = lifecycle.apply(event) {
        panic!("activation bug: {illegal}");
    }
}

async fn activate<A: Actor>(shared: &Shared<A>, actor_id: &ActorId) -> Result<Active<A::State>> {
    let node_id = &shared.config.node_id;
    let claim_sent_ms = shared.env.clock.monotonic_ms();
    let claimed = shared.directory.claim(actor_id, node_id).await;
    let outcome = match &claimed {
        Ok(LeaseOutcome::Claimed(_)) => "granted",
        Ok(LeaseOutcome::HeldByOther(_)) => "held_by_other",
        Ok(_) => "refused",
        Err(_) => "error",
    };
    metrics::increment(&LEASE_OPERATIONS, &["claim", outcome], 1);
    let epoch = match claimed? {
        LeaseOutcome::Claimed(record) => record.epoch,
        LeaseOutcome::HeldByOther(record) => {
            let holder = record.holder.map(|h| h.node_id.to_string()).unwrap_or_default();
            return Err(Error::NodeUnavailable {
                node_id: node_id.clone(),
                reason: format!("actor {actor_id} is active on node {holder}"),
            });
        }
        other => return Err(Error::Internal(format!("claim answered {other:?}"))),
    };
    let mut txn = shared.storage.begin(actor_id.clone());
    let saved = txn.get(STATE_KEY).await?.unwrap_or_default();
    let mut state: A::State = decode_state::<A>(actor_id, &saved)?.unwrap_or_default();
    let now_ms = shared.env.clock.monotonic_ms();
    let mut active = Active {
        epoch,
        state: A::State::default(),
        saved,
        last_activity_ms: now_ms,
        last_renewal_ms: now_ms,
        lease_proven_ms: claim_sent_ms,
        lost: false,
    };
    let before = state.clone();
    let hook = {
        let who = (actor_id, node_id, epoch);
        let mut ctx = ActorContext::new(who, &mut state, &shared.env, &mut txn);
        AssertUnwindSafe(shared.actor.on_activate(&mut ctx)).catch_unwind().await
    };
    active.state = state;
    finish_invocation(shared, actor_id, &mut active, txn, before, hook).await?;
    Ok(active)
}

/// The state saved as `saved`; `None` when nothing was (no bytes).
pub(crate) fn decode_state<A: Actor>(actor_id: &ActorId, saved: &[u8]) -> Result<Option<A::State>> {
    if saved.is_empty() {
        return Ok(None);
    }
    let state = serde_json::from_slice(saved).map_err(|e| Error::Corruption {
        location: format!("state of actor {actor_id}"),
        reason: e.to_string(),
    })?;
    Ok(Some(state))
}

/// Why an activation stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// No message for the idle timeout.
    Idle,
    /// Asked to deactivate (eviction, shutdown, a move) or its mailbox closed.
    Requested,
    /// Ownership lost or unproven: it must not commit again.
    LeaseLost,
}

impl Ended {
    fn as_label(self) -> &'static str {
        match self {
            Ended::Idle => "idle",
            Ended::Requested => "requested",
            Ended::LeaseLost => "lease_lost",
        }
    }
}

/// Handles messages until asked to deactivate, idle too long, or ownership is lost.
async fn serve<A: Actor>(
    shared: &Shared<A>,
    actor_id: &ActorId,
    active: &mut Active<A::State>,
    inbox: &mut mpsc::Receiver<Command<A>>,
) -> Ended {
    let idle_ms = shared.config.idle_timeout_ms;
    let renew_ms = (shared.directory.lease_ms() / 3).max(1);
    while !active.lost {
        let now_ms = shared.env.clock.monotonic_ms();
        let idle_left_ms = (active.last_activity_ms + idle_ms).saturating_sub(now_ms);
        let renew_left_ms = renew_due_ms(active.last_renewal_ms, renew_ms).saturating_sub(now_ms);
        let proven_left_ms = (active.lease_proven_ms + serve_window_ms(shared)).saturating_sub(now_ms);
        if idle_left_ms == 0 {
            return Ended::Idle;
        }
        if proven_left_ms == 0 {
            // The registry has not confirmed the lease for most of a lease:
            // another node may own the actor by now. Stop, saving nothing.
            active.lost = true;
            return Ended::LeaseLost;
        }
        if renew_left_ms == 0 {
            renew(shared, actor_id, active).await;
            continue;
        }
        let wake_ms = idle_left_ms.min(renew_left_ms).min(proven_left_ms);
        let wake = shared.env.clock.sleep(Duration::from_millis(wake_ms));
        tokio::select! {
            biased;
            command = inbox.recv() => match command {
                Some(Command::Invoke { message, reply }) => {
                    // A node that was paused or cut off wakes with the renewal
                    // overdue and this message already queued: renew first, so
                    // a lost lease stops it here rather than at the fence.
                    if shared.env.clock.monotonic_ms() >= renew_due_ms(active.last_renewal_ms, renew_ms) {
                        renew(shared, actor_id, active).await;
                    }
                    if !active.lost && !lease_proven(shared, active) {
                        active.lost = true;
                        let _ = reply.send(Err(unproven(shared, actor_id, active)));
                        return Ended::LeaseLost;
                    }
                    let _ = reply.send(invoke(shared, actor_id, active, message).await);
                    active.last_activity_ms = shared.env.clock.monotonic_ms();
                }
                Some(Command::Touch { reply }) => {
                    let _ = reply.send(Ok(()));
                }
                Some(Command::Deactivate) | None => return Ended::Requested,
            },
            () = wake => {}
        }
    }
    Ended::LeaseLost
}

/// When the renewal after one at `last_ms` falls due: an interval later,
/// rounded up to the process-wide grid (see `RENEW_GRID_PARTS_COUNT`).
fn renew_due_ms(last_ms: u64, renew_ms: u64) -> u64 {
    let grid_ms = (renew_ms / RENEW_GRID_PARTS_COUNT).max(1);
    let due_ms = (last_ms + renew_ms).div_ceil(grid_ms) * grid_ms;
    assert!(due_ms >= last_ms + renew_ms && due_ms < last_ms + renew_ms + grid_ms);
    due_ms
}

/// How long after a granted claim or renewal was sent an activation still
/// answers, in ms.
fn serve_window_ms<A: Actor>(shared: &Shared<A>) -> u64 {
    (shared.directory.lease_ms() * LEASE_SERVE_PERCENT / 100).max(1)
}

fn lease_proven<A: Actor>(shared: &Shared<A>, active: &Active<A::State>) -> bool {
    shared.env.clock.monotonic_ms().saturating_sub(active.lease_proven_ms) < serve_window_ms(shared)
}

fn unproven<A: Actor>(shared: &Shared<A>, actor_id: &ActorId, active: &Active<A::State>) -> Error {
    let unconfirmed_ms = shared.env.clock.monotonic_ms().saturating_sub(active.lease_proven_ms);
    Error::NodeUnavailable {
        node_id: shared.config.node_id.clone(),
        reason: format!("the lease on actor {actor_id} has not been confirmed for {unconfirmed_ms} ms"),
    }
}

async fn renew<A: Actor>(shared: &Shared<A>, actor_id: &ActorId, active: &mut Active<A::State>) {
    let node_id = &shared.config.node_id;
    let sent_ms = shared.env.clock.monotonic_ms();
    match shared.directory.renew(actor_id, node_id, active.epoch).await {
        Ok(LeaseOutcome::Renewed(_)) => {
            metrics::increment(&LEASE_OPERATIONS, &["renew", "renewed"], 1);
            active.last_renewal_ms = shared.env.clock.monotonic_ms();
            active.lease_proven_ms = sent_ms;
        }
        Ok(_) => {
            metrics::increment(&LEASE_OPERATIONS, &["renew", "lost"], 1);
            active.lost = true;
        }
        // A storage hiccup: try again at the next interval; the lease has
        // two more intervals before it runs out.
        Err(_) => {
            metrics::increment(&LEASE_OPERATIONS, &["renew", "error"], 1);
            active.last_renewal_ms = shared.env.clock.monotonic_ms();
        }
    }
}

async fn invoke<A: Actor>(
    shared: &Shared<A>,
    actor_id: &ActorId,
    active: &mut Active<A::State>,
    message: A::Message,
) -> Result<A::Reply> {
    if active.lost {
        return Err(fenced(shared, actor_id, active));
    }
    let before = active.state.clone();
    let mut txn = shared.storage.begin(actor_id.clone());
    let outcome = {
        let who = (actor_id, &shared.config.node_id, active.epoch);
        let mut ctx = ActorContext::new(who, &mut active.state, &shared.env, &mut txn);
        AssertUnwindSafe(shared.actor.handle(&mut ctx, message)).catch_unwind().await
    };
    finish_invocation(shared, actor_id, active, txn, before, outcome).await
}

/// Commits a handler's work, or rolls the in-memory state back to `before`.
async fn finish_invocation<A: Actor, R>(
    shared: &Shared<A>,
    actor_id: &ActorId,
    active: &mut Active<A::State>,
    mut txn: Transaction,
    before: A::State,
    outcome: std::result::Result<Result<R>, Box<dyn Any + Send>>,
) -> Result<R> {
    let result = match outcome {
        Ok(Ok(reply)) => save(actor_id, active, &mut txn).map(|bytes| (reply, bytes)),
        Ok(Err(err)) => Err(err),
        Err(panic) => {
            let failed = Error::ActorFailed { actor_id: actor_id.clone(), reason: panic_message(&panic) };
            if shared.config.planted_defect == Some(PlantedDefect::KeepStateAfterPanic) {
                // Planted: returns before the state is put back below.
                return Err(failed);
            }
            Err(failed)
        }
    };
    let (reply, bytes) = match result {
        Ok(ok) => ok,
        Err(err) => {
            active.state = before;
            return Err(err);
        }
    };
    if bytes.is_none() && !txn.has_writes() {
        // Nothing to persist. Reads need no validation: while this
        // activation holds the epoch it is the actor's only writer.
        return Ok(reply);
    }
    let fence = FenceCondition {
        actor_id: actor_id.clone(),
        node_id: shared.config.node_id.clone(),
        epoch: active.epoch,
    };
    match txn.commit(Some(fence)).await {
        Ok(_) => {
            if let Some(bytes) = bytes {
                active.saved = bytes;
            }
            Ok(reply)
        }
        Err(err) => {
            active.lost |= matches!(err, Error::Fenced { .. });
            active.state = before;
            Err(err)
        }
    }
}

/// Buffers the state if it changed; `Some(bytes)` is what will be saved.
fn save<S: serde::Serialize>(
    actor_id: &ActorId,
    active: &Active<S>,
    txn: &mut Transaction,
) -> Result<Option<Vec<u8>>> {
    let bytes = serde_json::to_vec(&active.state).map_err(|e| Error::ActorFailed {
        actor_id: actor_id.clone(),
        reason: format!("state does not serialize: {e}"),
    })?;
    if bytes.len() > ACTOR_STATE_SIZE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: format!("state of actor {actor_id}"),
            actual: bytes.len() as u64,
            limit_name: "ACTOR_STATE_SIZE_BYTES_MAX",
            limit: ACTOR_STATE_SIZE_BYTES_MAX as u64,
        });
    }
    if bytes == active.saved {
        return Ok(None);
    }
    txn.put(STATE_KEY.to_vec(), bytes.clone())?;
    Ok(Some(bytes))
}

async fn deactivate<A: Actor>(shared: &Shared<A>, actor_id: &ActorId, active: &mut Active<A::State>) {
    if active.lost {
        return;
    }
    let before = active.state.clone();
    let mut txn = shared.storage.begin(actor_id.clone());
    let hook = {
        let who = (actor_id, &shared.config.node_id, active.epoch);
        let mut ctx = ActorContext::new(who, &mut active.state, &shared.env, &mut txn);
        AssertUnwindSafe(shared.actor.on_deactivate(&mut ctx)).catch_unwind().await
    };
    // A failing hook loses only its own changes; the last saved state stands.
    let _ = finish_invocation(shared, actor_id, active, txn, before, hook).await;
    if !active.lost {
        let released = shared.directory.release(actor_id, &shared.config.node_id, active.epoch).await;
        let outcome = if released.is_ok() { "released" } else { "error" };
        metrics::increment(&LEASE_OPERATIONS, &["release", outcome], 1);
    }
}

fn fenced<A: Actor>(shared: &Shared<A>, actor_id: &ActorId, active: &Active<A::State>) -> Error {
    Error::Fenced { actor_id: actor_id.clone(), node_id: shared.config.node_id.clone(), epoch: active.epoch }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown payload".to_string());
    format!("handler panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_fall_due_on_the_shared_grid_at_most_a_quarter_interval_late() {
        // Interval 3 300 ms: grid 825 ms.
        assert_eq!(renew_due_ms(0, 3_300), 3_300);
        assert_eq!(renew_due_ms(1, 3_300), 4_125);
        assert_eq!(renew_due_ms(700, 3_300), 4_125, "two activations a grid step apart renew together");
        assert_eq!(renew_due_ms(826, 3_300), 4_950);
        // A tiny interval still has a grid of 1 ms.
        assert_eq!(renew_due_ms(5, 3), 8);
    }
}
