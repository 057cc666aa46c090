//! The probe actor: it appends `(node, epoch, request)` to its state on
//! every invocation, so durable state says which activation served what, and
//! it reports its lifecycle to the scenario's observations through its hooks.
//! [`client`] is the workload that drives it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::{ActorId, Clock as _, Error, Result};
use kelpie_dst::properties::{Phase, VersionedValue};
use kelpie_dst::SimNode;
use kelpie_runtime::runtime::Runtime;
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

use super::world::{lock, Observations};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeLog {
    pub entries: Vec<(String, u64, u64)>,
}

/// The `(node, epoch)` of the activation that served a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub node: String,
    pub epoch: u64,
}

pub struct ProbeActor {
    pub node_index: usize,
    pub observations: Arc<Mutex<Observations>>,
    /// Every request whose number is a multiple of this panics in the
    /// handler after changing the state (`None`: none panics).
    pub panic_every: Option<u64>,
}

/// What a planned panic of the probe says; the panic hook keeps it quiet.
const PLANNED_PANIC: &str = "the probe panics on request";
/// The start of the reason of an invocation whose handler panicked.
const PANICKED_REASON_PREFIX: &str = "handler panicked";
/// The reason of an invocation its activation finished without answering.
const UNANSWERED_REASON: &str = "the activation stopped before replying";

/// Silences the probe's planned panics (thousands per sweep) and lets
/// every other panic print as usual.
pub fn quiet_planned_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let planned =
                info.payload().downcast_ref::<String>().is_some_and(|text| text.starts_with(PLANNED_PANIC));
            if !planned {
                default(info);
            }
        }));
    });
}

impl ProbeActor {
    fn note(&self, ctx: &ActorContext<'_, ProbeLog>, phase: Phase) {
        let key = (ctx.actor_id.clone(), self.node_index);
        lock(&self.observations).activations.insert(key, (ctx.epoch, phase));
    }
}

impl Actor for ProbeActor {
    type State = ProbeLog;
    type Message = u64;
    type Reply = Served;

    async fn on_activate(&self, ctx: &mut ActorContext<'_, ProbeLog>) -> Result<()> {
        self.note(ctx, Phase::Activating);
        Ok(())
    }

    async fn handle(&self, ctx: &mut ActorContext<'_, ProbeLog>, request: u64) -> Result<Served> {
        // Handling implies the activation loaded and claimed: it is Active.
        self.note(ctx, Phase::Active);
        ctx.state.entries.push((ctx.node_id.to_string(), ctx.epoch, request));
        if self.panic_every.is_some_and(|every| request.is_multiple_of(every)) {
            panic!("{PLANNED_PANIC} {request}");
        }
        Ok(Served { node: ctx.node_id.to_string(), epoch: ctx.epoch })
    }

    async fn on_deactivate(&self, ctx: &mut ActorContext<'_, ProbeLog>) -> Result<()> {
        self.note(ctx, Phase::Deactivating);
        Ok(())
    }
}

/// One client on `node`: after a pause of up to `pause_ms_max`, invokes a
/// random actor of `actors` with a fresh request number, and records the
/// outcome: an acknowledged invocation (with the `(node, epoch)` that served
/// it, and whether it was served elsewhere), or a zombie refused by fencing.
pub async fn client(
    node: SimNode,
    runtime: Runtime<ProbeActor>,
    observations: Arc<Mutex<Observations>>,
    next_request: Arc<AtomicU64>,
    actors: Vec<ActorId>,
    pause_ms_max: u64,
) {
    assert!(!actors.is_empty() && pause_ms_max > 0, "a client needs actors and a pause");
    loop {
        let pause = node.rng().between_inclusive(1, pause_ms_max);
        node.clock().sleep(Duration::from_millis(pause)).await;
        let actor = actors[node.rng().index_below(actors.len())].clone();
        let request = next_request.fetch_add(1, Ordering::Relaxed);
        match runtime.invoke(&actor, request).await {
            Ok(served) => {
                let mut observed = lock(&observations);
                observed.forwarded_count += u64::from(served.node != node.id().as_str());
                let value = VersionedValue { seq: 0, value: (served.node, served.epoch) };
                observed.acknowledged.insert((actor, request), value);
            }
            Err(Error::Fenced { .. }) => {
                let mut observed = lock(&observations);
                observed.fenced_count += 1;
                observed.failed.insert((actor, request));
            }
            Err(Error::ActorFailed { reason, .. }) if reason.starts_with(PANICKED_REASON_PREFIX) => {
                lock(&observations).failed.insert((actor, request));
            }
            Err(Error::ActorFailed { reason, .. }) if reason == UNANSWERED_REASON => {
                lock(&observations).unanswered.insert((actor, request));
            }
            Err(_) => {}
        }
    }
}
