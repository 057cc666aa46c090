//! The limit on an actor's saved state is inclusive: a state whose JSON is
//! exactly `ACTOR_STATE_SIZE_BYTES_MAX` bytes is saved (with its key, within
//! one transaction); one byte more is refused, names the limit, and leaves
//! the saved state as it was.

use std::sync::Arc;

use kelpie_core::limits::ACTOR_STATE_SIZE_BYTES_MAX;
use kelpie_core::{ActorId, Env, Error, NodeId, Result};
use kelpie_registry::{Registry, StoragePlacementStore};
use kelpie_runtime::{Actor, ActorContext, Runtime, RuntimeConfig};
use kelpie_storage::Storage;

/// State: a string. `Some(n)` sets it to n letters; `None` reads its length.
struct Text;

impl Actor for Text {
    type State = String;
    type Message = Option<usize>;
    type Reply = usize;

    async fn handle(&self, ctx: &mut ActorContext<'_, String>, letters: Option<usize>) -> Result<usize> {
        if let Some(letters) = letters {
            *ctx.state = "a".repeat(letters);
        }
        Ok(ctx.state.len())
    }
}

fn runtime(storage: &Storage) -> Runtime<Text> {
    let env = Env::production();
    let registry = Registry::new(Arc::new(StoragePlacementStore::new(storage.clone())), env.clock.clone());
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    Runtime::new(Text, storage.clone(), Arc::new(registry), env, config).unwrap()
}

async fn saved_bytes(storage: &Storage, actor: &ActorId) -> usize {
    // The runtime keeps an actor's state under the key "s".
    storage.begin(actor.clone()).get(b"s").await.unwrap().map_or(0, |saved| saved.len())
}

#[tokio::test]
async fn a_state_of_exactly_the_size_limit_is_saved_and_one_byte_more_is_refused() {
    // A JSON string is its letters and two quotes.
    let fits = ACTOR_STATE_SIZE_BYTES_MAX - 2;
    let actor = ActorId::new("texts", "big").unwrap();
    let storage = Storage::memory();
    let runtime = runtime(&storage);
    assert_eq!(runtime.invoke(&actor, Some(fits)).await, Ok(fits));
    assert_eq!(saved_bytes(&storage, &actor).await, ACTOR_STATE_SIZE_BYTES_MAX);

    let err = runtime.invoke(&actor, Some(fits + 1)).await.unwrap_err();
    assert_eq!(
        err,
        Error::LimitExceeded {
            what: format!("state of actor {actor}"),
            actual: ACTOR_STATE_SIZE_BYTES_MAX as u64 + 1,
            limit_name: "ACTOR_STATE_SIZE_BYTES_MAX",
            limit: ACTOR_STATE_SIZE_BYTES_MAX as u64,
        }
    );
    assert_eq!(saved_bytes(&storage, &actor).await, ACTOR_STATE_SIZE_BYTES_MAX, "the saved state stands");
}
