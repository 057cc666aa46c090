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
use kelpie_registry::PlacementDirectory;
use kelpie_storage::Storage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::activation::{self, Command};
use crate::actor::{Actor, STATE_KEY};
use crate::remote::{self, Remote};

/// Active actors kept in memory by default before the least recently used
/// one is deactivated.
pub const ACTIVE_ACTORS_COUNT_MAX_DEFAULT: usize = 100_000;

/// Times one invocation may find its activation closing and start over.
const DISPATCH_ATTEMPTS_COUNT_MAX: u32 = 4;
/// Times a clustered invocation looks up an unowned actor's owner again
/// after another node won the claim.
const ROUTE_ATTEMPTS_COUNT_MAX: u32 = 4;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub node_id: NodeId,
    pub idle_timeout_ms: u64,
    pub active_actors_count_max: usize,
    pub invocation_timeout_ms: u64,
    pub mailbox_depth_max: usize,
    /// A defect planted for the DST to find (FoundationDB's BUGGIFY);
    /// `None` everywhere but in the tests that prove the DST finds it.
    pub planted_defect: Option<PlantedDefect>,
}

/// Defects the runtime can be told to have, each one a bug this runtime once
/// had or a design got wrong, so a test can show the simulator finds it
/// (`kelpie-runtime/tests/dst_single_activation.rs`). `kelpie serve` never
/// sets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedDefect {
    /// A handler that panics keeps the state it half-changed, so the next
    /// invocation's commit saves the failed one's changes.
    KeepStateAfterPanic,
    /// An activation that deactivates drops the invocations still queued
    /// in its mailbox instead of answering them first.
    DropQueuedOnDeactivate,
}

impl RuntimeConfig {
    pub fn new(node_id: NodeId) -> Self {
        RuntimeConfig {
            node_id,
            idle_timeout_ms: ACTOR_IDLE_TIMEOUT_MS_DEFAULT,
            active_actors_count_max: ACTIVE_ACTORS_COUNT_MAX_DEFAULT,
            invocation_timeout_ms: ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT,
            mailbox_depth_max: MAILBOX_DEPTH_MAX,
            planted_defect: None,
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

/// How a clustered runtime encodes what it forwards (set by
/// [`Runtime::clustered`], the one place the serde bounds are required).
pub(crate) struct Codec<A: Actor> {
    encode_message: fn(&ActorId, &A::Message) -> Result<Vec<u8>>,
    decode_reply: fn(&ActorId, &[u8]) -> Result<A::Reply>,
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
    pub(crate) directory: Arc<dyn PlacementDirectory>,
    pub(crate) env: Env,
    pub(crate) config: RuntimeConfig,
    /// How to reach actors owned by other nodes; `None` on a single node.
    remote: Option<(Arc<dyn Remote>, Codec<A>)>,
    table: Mutex<Table<A>>,
    /// Actors being moved away: invocations wait for the move, then route.
    moving: Mutex<BTreeMap<ActorId, watch::Receiver<bool>>>,
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

    /// Runs on this node's activation only (see [`Runtime::invoke_local`]).
    pub async fn invoke_local(&self, message: A::Message) -> Result<A::Reply> {
        self.runtime.invoke_local(&self.actor_id, message).await
    }
}

impl<A: Actor> Runtime<A> {
    /// A single-node runtime: every actor is activated here.
    pub fn new(
        actor: A,
        storage: Storage,
        directory: Arc<dyn PlacementDirectory>,
        env: Env,
        config: RuntimeConfig,
    ) -> Result<Self> {
        Self::build(actor, storage, directory, env, config, None)
    }

    /// A runtime in a cluster: an invocation of an actor that another live
    /// node owns is sent there through `remote`.
    pub fn clustered(
        actor: A,
        storage: Storage,
        directory: Arc<dyn PlacementDirectory>,
        env: Env,
        config: RuntimeConfig,
        remote: Arc<dyn Remote>,
    ) -> Result<Self>
    where
        A::Message: Serialize + DeserializeOwned,
        A::Reply: Serialize + DeserializeOwned,
    {
        let codec =
            Codec { encode_message: remote::encode_message::<A>, decode_reply: remote::decode_reply::<A> };
        Self::build(actor, storage, directory, env, config, Some((remote, codec)))
    }

    fn build(
        actor: A,
        storage: Storage,
        directory: Arc<dyn PlacementDirectory>,
        env: Env,
        config: RuntimeConfig,
        remote: Option<(Arc<dyn Remote>, Codec<A>)>,
    ) -> Result<Self> {
        config.validate()?;
        let table = Table { slots: BTreeMap::new(), recency: BTreeMap::new(), tick: 0, generation: 0 };
        let shared = Shared {
            actor,
            storage,
            directory,
            env,
            config,
            remote,
            table: Mutex::new(table),
            moving: Mutex::new(BTreeMap::new()),
            shutting_down: AtomicBool::new(false),
        };
        Ok(Runtime { shared: Arc::new(shared) })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.shared.config.node_id
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

    /// Sends `message` to `actor_id` wherever it lives and waits for the
    /// reply. On a single node, or when the actor is active here, it runs
    /// here (activating on demand); in a cluster, an actor a live node owns
    /// runs there, and an unowned one is claimed here, or, while this node
    /// takes no activations (draining, isolated), on another node.
    pub async fn invoke(&self, actor_id: &ActorId, message: A::Message) -> Result<A::Reply> {
        let Some((remote, codec)) = &self.shared.remote else {
            return self.invoke_local(actor_id, message).await;
        };
        self.wait_for_move(actor_id).await;
        if self.is_active(actor_id) {
            return self.invoke_local(actor_id, message).await;
        }
        let mut target = None;
        for _ in 0..ROUTE_ATTEMPTS_COUNT_MAX {
            let owner = self.shared.directory.live_owner(actor_id).await?;
            target = match owner {
                Some(owner) if &owner.node_id == self.node_id() => {
                    return self.invoke_local(actor_id, message).await
                }
                Some(owner) => Some(owner.node_id),
                None if remote.accepts_activations() && !self.is_shutting_down() => {
                    self.screen(actor_id, self.shared.actor.screens_activation(&message)).await?;
                    // Claim it here first, without the message: another
                    // node may claim it in between (nodes starting
                    // together ask for the same actors), and then the
                    // message goes to that node instead.
                    match self.touch(actor_id).await {
                        Ok(()) => return self.invoke_local(actor_id, message).await,
                        Err(Error::NodeUnavailable { .. }) if !self.is_active(actor_id) => continue,
                        Err(err) => return Err(err),
                    }
                }
                None => None,
            };
            break;
        }
        let payload = (codec.encode_message)(actor_id, &message)?;
        let reply = remote.forward(target.clone(), actor_id.clone(), payload).await?;
        (codec.decode_reply)(actor_id, &reply).map_err(|err| match err {
            // The receiver is leaving; the actor will live elsewhere next time.
            Error::ShuttingDown { component } => Error::NodeUnavailable {
                node_id: target.unwrap_or_else(|| self.node_id().clone()),
                reason: format!("{component} is shutting down"),
            },
            other => other,
        })
    }

    /// Runs `message` on this node's activation of `actor_id`, activating it
    /// here if needed; never forwards. Fails with `NodeUnavailable` while
    /// another node holds the actor's lease.
    pub async fn invoke_local(&self, actor_id: &ActorId, message: A::Message) -> Result<A::Reply> {
        self.screen(actor_id, self.shared.actor.screens_activation(&message)).await?;
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

    /// Refuses a message before it can activate `actor_id` here when the
    /// actor screens it (`screened`, from [`Actor::screens_activation`]),
    /// is not active here, and its stored state does not admit it: one
    /// read of the state, no claim, no activation. An active actor costs a
    /// table look. Once shutting down, nothing is read: the dispatch
    /// answers that.
    async fn screen(&self, actor_id: &ActorId, screened: bool) -> Result<()> {
        if !screened || self.is_active(actor_id) || self.is_shutting_down() {
            return Ok(());
        }
        let saved = self.shared.storage.begin(actor_id.clone()).get(STATE_KEY).await?.unwrap_or_default();
        let stored = activation::decode_state::<A>(actor_id, &saved)?;
        self.shared.actor.admit_activation(actor_id, stored.as_ref())
    }

    /// Activates `actor_id` here (claiming it) without a message; returns
    /// once it is loaded. The last step of a planned move.
    pub async fn touch(&self, actor_id: &ActorId) -> Result<()> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown { component: "actor runtime" });
        }
        for _ in 0..DISPATCH_ATTEMPTS_COUNT_MAX {
            let (reply_tx, reply_rx) = oneshot::channel();
            let (mailbox, mut done, generation) = self.slot_for(actor_id);
            match mailbox.try_send(Command::Touch { reply: reply_tx }) {
                Ok(()) => return self.await_reply(actor_id, reply_rx).await,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Error::MailboxFull {
                        actor_id: actor_id.clone(),
                        depth: self.shared.config.mailbox_depth_max,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
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

    /// Deactivates `actor_id` here: the messages already in its mailbox are
    /// handled first, then its state is saved and its placement released.
    /// Invocations arriving meanwhile wait (in a cluster) and then route to
    /// wherever the actor lives next. Returns once the activation is gone.
    pub async fn deactivate(&self, actor_id: &ActorId) {
        let (moved_tx, moved_rx) = watch::channel(false);
        self.lock_moving().insert(actor_id.clone(), moved_rx);
        let slot = {
            let table = self.shared.lock_table();
            table.slots.get(actor_id).map(|slot| (slot.mailbox.clone(), slot.done.clone()))
        };
        if let Some((mailbox, mut done)) = slot {
            let _ = mailbox.send(Command::Deactivate).await;
            let _ = done.wait_for(|finished| *finished).await;
        }
        self.lock_moving().remove(actor_id);
        let _ = moved_tx.send(true);
    }

    /// The actors active here, least recently used first.
    pub fn active_actors(&self) -> Vec<ActorId> {
        self.shared.lock_table().recency.values().cloned().collect()
    }

    fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }

    fn lock_moving(&self) -> std::sync::MutexGuard<'_, BTreeMap<ActorId, watch::Receiver<bool>>> {
        self.shared.moving.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    async fn wait_for_move(&self, actor_id: &ActorId) {
        let moving = self.lock_moving().get(actor_id).cloned();
        if let Some(mut moved) = moving {
            let _ = moved.wait_for(|finished| *finished).await;
        }
    }

    async fn await_reply<R>(&self, actor_id: &ActorId, reply: oneshot::Receiver<Result<R>>) -> Result<R> {
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
