//! The provider store against a real redb file: a provider and its key
//! survive reopening the file, names stay unique, a model listing past
//! `PROVIDER_MODELS_COUNT_MAX` or an id past `PROVIDER_MODEL_ID_BYTES_MAX`
//! is refused with the old listing kept, texts past their byte limits are
//! refused (name, keys, region), and the store holds at most `PROVIDERS_COUNT_MAX` providers.

use kelpie_agent::actors::provider_store::{
    ProviderCommand, ProviderRecord, ProviderReply, ProviderStoreActor, PROVIDERS_COUNT_MAX,
    PROVIDER_MODELS_COUNT_MAX, PROVIDER_MODEL_ID_BYTES_MAX, PROVIDER_NAME_BYTES_MAX,
    PROVIDER_SECRET_BYTES_MAX, PROVIDER_STORE_ACTOR, PROVIDER_TEXT_BYTES_MAX,
};
use kelpie_agent::node::{agent_runtimes, Placement};
use kelpie_core::{ActorId, Env, Error, NodeId};
use kelpie_runtime::{Runtime, RuntimeConfig};
use kelpie_storage::Storage;

const T0_MS: u64 = 1_000_000;

fn store(storage: &Storage) -> Runtime<ProviderStoreActor> {
    let config = RuntimeConfig::new(NodeId::new("node-1").unwrap());
    agent_runtimes(storage, &Placement::Local, &Env::production(), &config).unwrap().providers
}

async fn send(
    runtime: &Runtime<ProviderStoreActor>,
    command: ProviderCommand,
) -> kelpie_core::Result<ProviderReply> {
    let actor = ActorId::new(PROVIDER_STORE_ACTOR.0, PROVIDER_STORE_ACTOR.1).unwrap();
    runtime.invoke(&actor, command).await
}

fn record(n: usize, name: &str) -> ProviderRecord {
    ProviderRecord {
        id: format!("provider-00000000-0000-4000-8000-{n:012}"),
        name: name.to_string(),
        provider_type: "openai".into(),
        api_key: Some(format!("sk-key-{n}")),
        access_key: None,
        base_url: "https://llm.example/v1".into(),
        region: None,
        api_version: None,
        models: Vec::new(),
        last_synced_ms: None,
        created_ms: T0_MS,
        updated_ms: T0_MS,
    }
}

async fn get(runtime: &Runtime<ProviderStoreActor>, id: &str) -> ProviderRecord {
    match send(runtime, ProviderCommand::Get { id: id.to_string() }).await.unwrap() {
        ProviderReply::Provider(provider) => *provider,
        _ => panic!("a provider"),
    }
}

fn refused_reason(result: kelpie_core::Result<ProviderReply>) -> String {
    match result {
        Err(Error::Validation { reason, .. }) => reason,
        Err(other) => panic!("expected a validation error, got {other}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[tokio::test]
async fn a_provider_its_key_and_models_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kelpie.redb");
    {
        let runtime = store(&Storage::open_redb(&path).unwrap());
        send(&runtime, ProviderCommand::Create(Box::new(record(1, "mine")))).await.unwrap();
        let models = vec!["fake-embed".to_string(), "fake-gpt".to_string()];
        let command = ProviderCommand::SetModels { id: record(1, "").id, models, synced_ms: T0_MS + 5 };
        send(&runtime, command).await.unwrap();
        let mut changed = get(&runtime, &record(1, "").id).await;
        changed.api_key = Some("sk-rotated".into());
        send(&runtime, ProviderCommand::Replace(Box::new(changed))).await.unwrap();
        runtime.shutdown().await;
    }
    let runtime = store(&Storage::open_redb(&path).unwrap());
    let found = match send(&runtime, ProviderCommand::Named { name: "mine".into() }).await.unwrap() {
        ProviderReply::Found(found) => found.expect("still there"),
        _ => panic!("a lookup"),
    };
    assert_eq!(found.api_key.as_deref(), Some("sk-rotated"));
    assert_eq!(found.models, ["fake-embed", "fake-gpt"]);
    assert_eq!((found.last_synced_ms, found.updated_ms), (Some(T0_MS + 5), T0_MS + 5));
    assert!(!format!("{found:?}").contains("sk-rotated"), "Debug hides the key");
    // A name is unique; a deleted one is free again.
    let taken = refused_reason(send(&runtime, ProviderCommand::Create(Box::new(record(2, "mine")))).await);
    assert!(taken.contains("a provider named \"mine\" exists"), "{taken}");
    send(&runtime, ProviderCommand::Delete { id: record(1, "").id }).await.unwrap();
    let gone = send(&runtime, ProviderCommand::Get { id: record(1, "").id }).await;
    assert!(matches!(gone, Err(Error::NotFound { kind: "provider", .. })));
    send(&runtime, ProviderCommand::Create(Box::new(record(2, "mine")))).await.unwrap();
    runtime.shutdown().await;
}

#[tokio::test]
async fn listings_and_texts_past_their_limits_are_refused_and_the_old_listing_kept() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = store(&Storage::open_redb(dir.path().join("kelpie.redb")).unwrap());
    send(&runtime, ProviderCommand::Create(Box::new(record(1, "mine")))).await.unwrap();
    let id = record(1, "").id;
    let ok = vec!["m".to_string(); 1];
    send(&runtime, ProviderCommand::SetModels { id: id.clone(), models: ok, synced_ms: T0_MS })
        .await
        .unwrap();

    let too_many: Vec<String> = (0..=PROVIDER_MODELS_COUNT_MAX).map(|n| format!("model-{n}")).collect();
    let command = ProviderCommand::SetModels { id: id.clone(), models: too_many, synced_ms: T0_MS + 1 };
    let reason = refused_reason(send(&runtime, command).await);
    assert!(reason.contains("PROVIDER_MODELS_COUNT_MAX"), "{reason}");
    let too_long = vec!["x".repeat(PROVIDER_MODEL_ID_BYTES_MAX + 1)];
    let command = ProviderCommand::SetModels { id: id.clone(), models: too_long, synced_ms: T0_MS + 2 };
    let reason = refused_reason(send(&runtime, command).await);
    assert!(reason.contains("PROVIDER_MODEL_ID_BYTES_MAX"), "{reason}");
    let kept = get(&runtime, &id).await;
    assert_eq!((kept.models, kept.last_synced_ms), (vec!["m".to_string()], Some(T0_MS)));

    let long_name = record(2, &"n".repeat(PROVIDER_NAME_BYTES_MAX + 1));
    let reason = refused_reason(send(&runtime, ProviderCommand::Create(Box::new(long_name))).await);
    assert!(reason.contains("PROVIDER_NAME_BYTES_MAX"), "{reason}");
    let mut long_key = record(3, "long-key");
    long_key.api_key = Some("k".repeat(PROVIDER_SECRET_BYTES_MAX + 1));
    let reason = refused_reason(send(&runtime, ProviderCommand::Create(Box::new(long_key))).await);
    assert!(reason.contains("PROVIDER_SECRET_BYTES_MAX") && !reason.contains("kkkk"), "{reason}");
    let mut long_region = record(5, "long-region");
    long_region.region = Some("r".repeat(PROVIDER_TEXT_BYTES_MAX + 1));
    let reason = refused_reason(send(&runtime, ProviderCommand::Create(Box::new(long_region))).await);
    assert!(reason.contains("region") && reason.contains("PROVIDER_TEXT_BYTES_MAX"), "{reason}");
    let slashed = refused_reason(send(&runtime, ProviderCommand::Create(Box::new(record(4, "a/b")))).await);
    assert!(slashed.contains("without '/'"), "{slashed}");
    runtime.shutdown().await;
}

#[tokio::test]
async fn the_store_holds_at_most_providers_count_max() {
    let runtime = store(&Storage::memory());
    for n in 0..PROVIDERS_COUNT_MAX {
        send(&runtime, ProviderCommand::Create(Box::new(record(n, &format!("p{n}"))))).await.unwrap();
    }
    let over =
        send(&runtime, ProviderCommand::Create(Box::new(record(PROVIDERS_COUNT_MAX, "one-more")))).await;
    match over {
        Err(Error::LimitExceeded { limit_name, actual, limit, .. }) => {
            assert_eq!((limit_name, actual, limit), ("PROVIDERS_COUNT_MAX", 1_001, 1_000));
        }
        Err(other) => panic!("expected the limit, got {other}"),
        Ok(_) => panic!("expected the limit"),
    }
    let ProviderReply::Providers(all) = send(&runtime, ProviderCommand::List).await.unwrap() else {
        panic!("a list")
    };
    assert_eq!(all.len(), PROVIDERS_COUNT_MAX);
    assert_eq!(all[0].name, "p0", "creation order");
    runtime.shutdown().await;
}
