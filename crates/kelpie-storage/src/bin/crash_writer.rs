//! Crash-test writer: commits multi-key transactions as fast as it can from
//! several concurrent writers and prints `ack <writer> <seq>` once each
//! commit is acknowledged. The crash test kills it with SIGKILL at a random
//! moment and then checks the store against the printed acknowledgements.
//!
//! Usage: `kelpie-storage-crash-writer redb <path> <tag>` or
//! `kelpie-storage-crash-writer postgres <url> <tag>`.

// A test binary, outside the deterministic boundary: it spawns real tasks.
#![allow(clippy::disallowed_methods)]

use std::io::Write;

use kelpie_core::ActorId;
use kelpie_storage::Storage;

/// Concurrent writers, each on its own actor (so group commit batches them).
const WRITERS_COUNT: usize = 4;

/// Keys each transaction writes; all or none must be visible after a crash.
const KEYS_PER_COMMIT_COUNT: usize = 3;

/// Bound on each writer's loop; the test kills the process long before.
const COMMITS_PER_WRITER_COUNT_MAX: u64 = 10_000_000;

async fn open(backend: &str, location: &str) -> Result<Storage, String> {
    match backend {
        "redb" => Storage::open_redb(location).map_err(|err| err.to_string()),
        "postgres" => Storage::connect_postgres(location).await.map_err(|err| err.to_string()),
        other => Err(format!("unknown backend {other:?}: expected redb or postgres")),
    }
}

async fn write_forever(storage: Storage, actor: ActorId, writer: usize) -> Result<(), String> {
    for seq in 0..COMMITS_PER_WRITER_COUNT_MAX {
        let mut txn = storage.begin(actor.clone());
        for part in 0..KEYS_PER_COMMIT_COUNT {
            txn.put(format!("t/{seq:010}/{part}"), format!("w{writer}-{seq}-{part}"))
                .map_err(|e| e.to_string())?;
        }
        txn.put("head", seq.to_string()).map_err(|e| e.to_string())?;
        txn.commit(None).await.map_err(|err| err.to_string())?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ack {writer} {seq}").and_then(|()| out.flush()).map_err(|err| err.to_string())?;
    }
    Ok(())
}

async fn run(args: &[String]) -> Result<(), String> {
    let [backend, location, tag] = args else {
        return Err("usage: kelpie-storage-crash-writer <redb|postgres> <path|url> <tag>".into());
    };
    let storage = open(backend, location).await?;
    let mut writers = Vec::new();
    for writer in 0..WRITERS_COUNT {
        let actor =
            ActorId::new(format!("crash-{tag}"), format!("w{writer}")).map_err(|err| err.to_string())?;
        writers.push(tokio::spawn(write_forever(storage.clone(), actor, writer)));
    }
    for writer in writers {
        writer.await.map_err(|err| err.to_string())??;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(&args)),
        Err(err) => Err(err.to_string()),
    };
    if let Err(err) = result {
        eprintln!("crash writer: {err}");
        std::process::exit(1);
    }
}
