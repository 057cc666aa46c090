//! A database that accepts connections and never answers (a silently
//! dropping network, a hung server) makes calls fail with a storage error
//! after the pool's bounded waits, instead of hanging them.

// A raw listener and real time stand in for the unresponsive server.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use kelpie_core::Error;
use kelpie_storage::limits::POSTGRES_POOL_WAIT_TIMEOUT_MS;
use kelpie_storage::PostgresBackend;

/// Generous bound that turns a hang into a failure; not a timing assertion.
const HANG_GUARD_MS: u64 = 10 * POSTGRES_POOL_WAIT_TIMEOUT_MS;

#[tokio::test]
async fn a_silent_database_fails_calls_instead_of_hanging_them() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds every connection, never sending a byte.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://kelpie@{addr}/kelpie");
    let outcome = tokio::time::timeout(Duration::from_millis(HANG_GUARD_MS), PostgresBackend::connect(&url))
        .await
        .expect("connect must fail on its own, not hang");
    match outcome {
        Err(Error::StorageIo { operation, reason }) => {
            assert_eq!(operation, "connect", "{reason}");
            assert!(reason.to_lowercase().contains("timeout"), "the pool's wait ran out: {reason}");
        }
        Err(other) => panic!("expected a storage I/O error, got {other}"),
        Ok(_) => panic!("a silent server cannot complete the startup handshake"),
    }
}
