//! Screened activation: a message the actor screens, sent to an actor not
//! active here, activates it only when the stored state admits it; refused,
//! it leaves no activation and no placement. Unscreened messages and active
//! actors go on as before.

use std::sync::Arc;

use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::{Registry, StoragePlacementStore};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig};
use kelpie_storage::Storage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Account {
    opened: bool,
    balance: u64,
}

enum Msg {
    /// Unscreened: may activate any account.
    Open,
    /// Screened: needs an opened account.
    Balance,
    Close,
}

struct AccountActor;

impl Actor for AccountActor {
    type State = Account;
    type Message = Msg;
    type Reply = u64;

    fn screens_activation(&self, message: &Msg) -> bool {
        !matches!(message, Msg::Open)
    }

    fn admit_activation(&self, actor_id: &ActorId, stored: Option<&Account>) -> Result<()> {
        match stored {
            Some(account) if account.opened => Ok(()),
            _ => Err(Error::NotFound { kind: "account", id: actor_id.id().to_string() }),
        }
    }

    async fn handle(&self, ctx: &mut ActorContext<'_, Account>, message: Msg) -> Result<u64> {
        let missing = Error::NotFound { kind: "account", id: ctx.actor_id.id().to_string() };
        match message {
            Msg::Open => ctx.state.opened = true,
            Msg::Balance if ctx.state.opened => {}
            Msg::Close if ctx.state.opened => ctx.state.opened = false,
            Msg::Balance | Msg::Close => return Err(missing),
        }
        Ok(ctx.state.balance)
    }
}

fn id(name: &str) -> ActorId {
    ActorId::new("accounts", name).unwrap()
}

fn runtime(storage: &Storage) -> Runtime<AccountActor> {
    let env = Env::production();
    let registry = Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone());
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    Runtime::new(AccountActor, storage.clone(), Arc::new(registry), env, config).unwrap()
}

fn not_found(name: &str) -> Error {
    Error::NotFound { kind: "account", id: name.to_string() }
}

async fn epoch(storage: &Storage, name: &str) -> Option<u64> {
    storage.get_placement(&id(name)).await.unwrap().map(|placement| placement.epoch)
}

#[tokio::test]
async fn a_screened_message_to_an_actor_with_nothing_stored_activates_and_claims_nothing() {
    let storage = Storage::memory();
    let runtime = runtime(&storage);
    for name in ["a", "b", "c"] {
        assert_eq!(runtime.invoke(&id(name), Msg::Balance).await, Err(not_found(name)));
        assert_eq!(runtime.invoke(&id(name), Msg::Close).await, Err(not_found(name)));
        assert_eq!(epoch(&storage, name).await, None, "{name}: no placement");
    }
    assert_eq!(runtime.active_count(), 0);
    runtime.shutdown().await;
}

#[tokio::test]
async fn an_admitted_actor_activates_and_a_refused_one_keeps_its_placement_unchanged() {
    let storage = Storage::memory();
    let runtime = runtime(&storage);
    assert_eq!(runtime.invoke(&id("a"), Msg::Open).await, Ok(0), "unscreened: activates");
    assert_eq!(epoch(&storage, "a").await, Some(1));
    runtime.deactivate(&id("a")).await;
    assert_eq!(runtime.active_count(), 0);

    assert_eq!(runtime.invoke(&id("a"), Msg::Balance).await, Ok(0), "admitted: the stored account");
    assert!(runtime.is_active(&id("a")));
    assert_eq!(epoch(&storage, "a").await, Some(2));
    // Active: answered by the activation, whatever it holds.
    assert_eq!(runtime.invoke(&id("a"), Msg::Close).await, Ok(0));
    assert_eq!(runtime.invoke(&id("a"), Msg::Balance).await, Err(not_found("a")));
    runtime.deactivate(&id("a")).await;

    assert_eq!(runtime.invoke(&id("a"), Msg::Balance).await, Err(not_found("a")), "closed: refused");
    assert_eq!(runtime.active_count(), 0);
    assert_eq!(epoch(&storage, "a").await, Some(2), "not claimed again");
    assert_eq!(runtime.invoke(&id("a"), Msg::Open).await, Ok(0), "opened again");
    assert_eq!(epoch(&storage, "a").await, Some(3));
    runtime.shutdown().await;
}
