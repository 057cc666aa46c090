//! The probe actor: it appends `(node, epoch, request)` to its state on
//! every invocation, so durable state says which activation served what, and
//! it reports its lifecycle to the scenario's observations through its hooks.

use std::sync::{Arc, Mutex};

use kelpie_core::Result;
use kelpie_dst::properties::Phase;
use kelpie_runtime::{Actor, ActorContext};
use serde::{Deserialize, Serialize};

use super::world::{lock, Observations};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeLog {
    pub entries: Vec<(String, u64, u64)>,
}

/// The `(node, epoch)` of the activation that served a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub node: String,
    pub epoch: u64,
}

pub struct ProbeActor {
    pub node_index: usize,
    pub observations: Arc<Mutex<Observations>>,
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
        Ok(Served { node: ctx.node_id.to_string(), epoch: ctx.epoch })
    }

    async fn on_deactivate(&self, ctx: &mut ActorContext<'_, ProbeLog>) -> Result<()> {
        self.note(ctx, Phase::Deactivating);
        Ok(())
    }
}
