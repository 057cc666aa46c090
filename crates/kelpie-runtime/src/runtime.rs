//! The dispatcher: routes each invocation to its actor's activation,
//! activating on demand, with bounded mailboxes, a cap on active actors with
//! least-recently-used eviction, invocation timeouts and graceful shutdown.
//!
//! The table of activations maps an actor id to the sender side of its
//! mailbox. Each activation is one task (see [`crate::activation`]) that owns
//! the actor's state and handles one message at a time, in arrival order.
//! An activation that is deactivating closes its mailbox; a caller that finds
//! it closed waits for it to finish (so the next activation can never race
//! the old one's last commits) and then starts a fresh one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelpie_core::limits::{
    ACTOR_IDLE_TIMEOUT_MS_DEFAULT, ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT, ACTOR_INVOCATION_TIMEOUT_MS_MAX,
    MAILBOX_DEPTH_MAX,
};
use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::Registry;
use kelpie_storage::Storage;
use tokio::sync::{mpsc, oneshot, watch};

use crate::activation::{self, Command};
use crate::actor::Actor;

/// Active actors kept in memory by default before the least recently used
/// one is deactivated.
pub const ACTIVE_ACTORS_COUNT_MAX_DEFAULT: usize = 100_000;

/// Times one invocation may find its activation closing and start over.
const DISPATCH_ATTEMPTS_COUNT_MAX: u32 = 4;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub node_id: NodeId,
    pub idle_timeout_ms: u64,
    pub active_actors_count_max: usize,
    pub invocation_timeout_ms: u64,
    pub mailbox_depth_max: usize,
}

impl RuntimeConfig {
    pub fn new(node_id: NodeId) -> Self {
        RuntimeConfig {
            node_id,
            idle_timeout_ms: ACTOR_IDLE_TIMEOUT_MS_DEFAULT,
            active_actors_count_max: ACTIVE_ACTORS_COUNT_MAX_DEFAULT,
            invocation_timeout_ms: ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT,
            mailbox_depth_max: MAILBOX_DEPTH_MAX,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(Error::validation(field, reason));
        if self.invocation_timeout_ms == 0 || self.invocation_timeout_ms > ACTOR_INVOCATION_TIMEOUT_MS_MAX {
            return bad(
                "invocation_timeout_ms",
                format!("{} is outside 1..={ACTOR_INVOCATION_TIMEOUT_MS_MAX}", self.invocation_timeout_ms),
            );
        }
        if self.mailbox_depth_max == 0 || self.mailbox_depth_max > MAILBOX_DEPTH_MAX {
            return bad(
                "mailbox_depth_max",
                format!("{} is outside 1..={MAILBOX_DEPTH_MAX}", self.mailbox_depth_max),
            );
        }
        if self.active_actors_count_max == 0 {
            return bad("active_actors_count_max", "must be at least 1".into());
        }
        if self.idle_timeout_ms == 0 {
            return bad("idle_timeout_ms", "must be at least 1".into());
        }
        Ok(())
    }
}

struct Slot<A: Actor> {
    mailbox: mpsc::Sender<Command<A>>,
    done: watch::Receiver<bool>,
    generation: u64,
    last_used_tick: u64,
}

struct Table<A: Actor> {
    slots: BTreeMap<ActorId, Slot<A>>,
    /// last-used tick -> actor, oldest first.
    recency: BTreeMap<u64, ActorId>,
    tick: u64,
    generation: u64,
}

pub(crate) struct Shared<A: Actor> {
    pub(crate) actor: A,
    pub(crate) storage: Storage,
    pub(crate) registry: Registry,
    pub(crate) env: Env,
    pub(crate) config: RuntimeConfig,
    table: Mutex<Table<A>>,
    shutting_down: AtomicBool,
}

/// A node's runtime for one actor type. Cheap to clone.
pub struct Runtime<A: Actor> {
    shared: Arc<Shared<A>>,
}

impl<A: Actor> Clone for Runtime<A> {
    fn clone(&self) -> Self {
        Runtime { shared: Arc::clone(&self.shared) }
    }
}

/// A location-transparent handle to one actor. Cheap to clone.
pub struct ActorRef<A: Actor> {
    actor_id: ActorId,
    runtime: Runtime<A>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef { actor_id: self.actor_id.clone(), runtime: self.runtime.clone() }
    }
}

impl<A: Actor> ActorRef<A> {
    pub fn id(&self) -> &ActorId {
        &self.actor_id
    }

    pub async fn invoke(&self, message: A::Message) -> Result<A::Reply> {
        self.runtime.invoke(&self.actor_id, message).await
    }
}

impl<A: Actor> Runtime<A> {
    pub fn new(
        actor: A,
        storage: Storage,
        registry: Registry,
        env: Env,
        config: RuntimeConfig,
    ) -> Result<Self> {
        config.validate()?;
        let table = Table { slots: BTreeMap::new(), recency: BTreeMap::new(), tick: 0, generation: 0 };
        let shared = Shared {
            actor,
            storage,
            registry,
            env,
            config,
            table: Mutex::new(table),
            shutting_down: AtomicBool::new(false),
        };
        Ok(Runtime { shared: Arc::new(shared) })
    }

    pub fn actor_ref(&self, actor_id: ActorId) -> ActorRef<A> {
        ActorRef { actor_id, runtime: self.clone() }
    }

    /// How many activations are in the table (active or finishing).
    pub fn active_count(&self) -> usize {
        self.shared.lock_table().slots.len()
    }

    pub fn is_active(&self, actor_id: &ActorId) -> bool {
        self.shared.lock_table().slots.contains_key(actor_id)
    }

    /// Sends `message` to `actor_id`, activating it if needed, and waits for
    /// the reply up to the configured invocation timeout.
    pub async fn invoke(&self, actor_id: &ActorId, message: A::Message) -> Result<A::Reply> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut command = Command::Invoke { message, reply: reply_tx };
        for _ in 0..DISPATCH_ATTEMPTS_COUNT_MAX {
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                return Err(Error::ShuttingDown { component: "actor runtime" });
            }
            let (mailbox, mut done, generation) = self.slot_for(actor_id);
            match mailbox.try_send(command) {
                Ok(()) => return self.await_reply(actor_id, reply_rx).await,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Error::MailboxFull {
                        actor_id: actor_id.clone(),
                        depth: self.shared.config.mailbox_depth_max,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    command = returned;
                    // The activation is finishing: let it, then start afresh.
                    let _ = done.wait_for(|finished| *finished).await;
                    self.shared.remove_slot(actor_id, generation);
                }
            }
        }
        Err(Error::NodeUnavailable {
            node_id: self.shared.config.node_id.clone(),
            reason: format!("actor {actor_id} kept deactivating; try again"),
        })
    }

    async fn await_reply(
        &self,
        actor_id: &ActorId,
        reply: oneshot::Receiver<Result<A::Reply>>,
    ) -> Result<A::Reply> {
        let timeout_ms = self.shared.config.invocation_timeout_ms;
        let timeout = self.shared.env.clock.sleep(Duration::from_millis(timeout_ms));
        tokio::select! {
            biased;
            answer = reply => answer.unwrap_or_else(|_| Err(Error::ActorFailed {
                actor_id: actor_id.clone(),
                reason: "the activation stopped before replying".to_string(),
            })),
            () = timeout => Err(Error::InvocationTimeout { actor_id: actor_id.clone(), timeout_ms }),
        }
    }

    /// The mailbox of `actor_id`'s activation, starting one if there is none.
    fn slot_for(&self, actor_id: &ActorId) -> (mpsc::Sender<Command<A>>, watch::Receiver<bool>, u64) {
        let mut table = self.shared.lock_table();
        table.tick += 1;
        let tick = table.tick;
        if let Some(slot) = table.slots.get_mut(actor_id) {
            let previous = std::mem::replace(&mut slot.last_used_tick, tick);
            let found = (slot.mailbox.clone(), slot.done.clone(), slot.generation);
            table.recency.remove(&previous);
            table.recency.insert(tick, actor_id.clone());
            return found;
        }
        if table.slots.len() >= self.shared.config.active_actors_count_max {
            evict_least_recently_used(&mut table);
        }
        table.generation += 1;
        let generation = table.generation;
        let (mailbox, inbox) = mpsc::channel(self.shared.config.mailbox_depth_max);
        let (done_tx, done) = watch::channel(false);
        table.slots.insert(
            actor_id.clone(),
            Slot { mailbox: mailbox.clone(), done: done.clone(), generation, last_used_tick: tick },
        );
        table.recency.insert(tick, actor_id.clone());
        drop(table);
        let task = activation::run(Arc::clone(&self.shared), actor_id.clone(), generation, inbox, done_tx);
        self.shared.env.spawner.spawn("actor-activation", Box::pin(task));
        (mailbox, done, generation)
    }

    /// Stops taking new invocations, lets every activation finish what its
    /// mailbox holds, runs `on_deactivate`, saves state and releases
    /// placements. Returns once every activation has finished.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        let slots: Vec<(mpsc::Sender<Command<A>>, watch::Receiver<bool>)> = {
            let table = self.shared.lock_table();
            table.slots.values().map(|slot| (slot.mailbox.clone(), slot.done.clone())).collect()
        };
        for (mailbox, mut done) in slots {
            // A closed mailbox means the activation is already finishing.
            let _ = mailbox.send(Command::Deactivate).await;
            let _ = done.wait_for(|finished| *finished).await;
        }
        assert_eq!(self.active_count(), 0, "every activation removes itself when it finishes");
    }
}

/// Asks the least recently used activation to deactivate. Its mailbox keeps
/// the messages queued before the request; they are handled first.
fn evict_least_recently_used<A: Actor>(table: &mut Table<A>) {
    // Walks from the oldest entry and stops at the first that accepts the
    // request, so the usual cost is one step, not one per active actor.
    let mut evicted = None;
    for (tick, actor_id) in &table.recency {
        let Some(slot) = table.slots.get(actor_id) else { continue };
        if slot.mailbox.try_send(Command::Deactivate).is_ok() {
            evicted = Some(*tick);
            break;
        }
    }
    if let Some(tick) = evicted {
        table.recency.remove(&tick);
    }
}

impl<A: Actor> Shared<A> {
    fn lock_table(&self) -> std::sync::MutexGuard<'_, Table<A>> {
        self.table.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Removes `actor_id`'s slot if it still belongs to `generation`.
    pub(crate) fn remove_slot(&self, actor_id: &ActorId, generation: u64) {
        let mut table = self.lock_table();
        let Some(slot) = table.slots.get(actor_id) else { return };
        if slot.generation != generation {
            return;
        }
        let tick = slot.last_used_tick;
        table.slots.remove(actor_id);
        if table.recency.get(&tick) == Some(actor_id) {
            table.recency.remove(&tick);
        }
    }
}
