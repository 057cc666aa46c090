//! Bounds owned by the storage crate, each a named constant with its unit.
//! The transaction limits themselves (key, value, ops, bytes) live in
//! `kelpie_core::limits`, shared with the runtime that fills transactions.

/// Most rows one scan may return; a larger range must be scanned in pieces.
pub const SCAN_ROWS_COUNT_MAX: usize = 10_000;

/// Connections in one PostgreSQL pool.
pub const POSTGRES_POOL_CONNECTIONS_COUNT_MAX: usize = 16;
/// Longest wait for a new PostgreSQL connection (TCP connect and startup).
pub const POSTGRES_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for a free pooled connection, or for creating one.
pub const POSTGRES_POOL_WAIT_TIMEOUT_MS: u64 = 5_000;
/// How long sent data may stay unacknowledged before the kernel drops the
/// connection (`TCP_USER_TIMEOUT`): a database behind a silently dropping
/// network fails calls in this time instead of hanging them.
pub const POSTGRES_TCP_USER_TIMEOUT_MS: u64 = 5_000;

/// Commit requests queued for the redb group committer before callers wait.
pub const GROUP_COMMIT_QUEUE_DEPTH_MAX: usize = 4 * kelpie_core::limits::GROUP_COMMIT_BATCH_COUNT_MAX;

const _: () = assert!(POSTGRES_POOL_CONNECTIONS_COUNT_MAX > 0);
