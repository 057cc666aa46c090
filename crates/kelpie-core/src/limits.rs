//! Every bound of the system, as a named constant whose name ends in its unit.
//!
//! Relations between limits are checked at compile time below, so a change
//! that makes them inconsistent (a lease shorter than the failure detector's
//! timeout, say) does not build.

/// Longest namespace or id part of an [`crate::ActorId`], in bytes.
pub const ACTOR_ID_LENGTH_BYTES_MAX: usize = 256;

/// Largest serialized state one actor may hold: 10 MiB.
pub const ACTOR_STATE_SIZE_BYTES_MAX: usize = 10 * 1024 * 1024;

/// Longest an invocation of an actor may be allowed to run.
pub const ACTOR_INVOCATION_TIMEOUT_MS_MAX: u64 = 30_000;

/// Invocation timeout used when the caller does not choose one.
pub const ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Largest total of key and value bytes one transaction may write: room for
/// one largest value under one longest key (10 MiB + 1 KiB), so a state of
/// `ACTOR_STATE_SIZE_BYTES_MAX` bytes can be saved with its key.
pub const TRANSACTION_SIZE_BYTES_MAX: usize = STORAGE_VALUE_SIZE_BYTES_MAX + STORAGE_KEY_SIZE_BYTES_MAX;

/// Most put/delete operations one transaction may buffer.
pub const TRANSACTION_OPS_COUNT_MAX: usize = 10_000;

/// Longest storage key, in bytes (not counting the actor prefix).
pub const STORAGE_KEY_SIZE_BYTES_MAX: usize = 1024;

/// Largest single stored value: one actor's whole state must fit in one value.
pub const STORAGE_VALUE_SIZE_BYTES_MAX: usize = ACTOR_STATE_SIZE_BYTES_MAX;

/// How often a node renews its liveness.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;

/// Silence after which a node is declared failed.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 5_000;

/// How long a placement lease lasts without renewal.
pub const LEASE_DURATION_MS: u64 = 10_000;

/// How often an owner renews its leases: a third of their duration, so two
/// renewals can fail before a lease runs out.
pub const LEASE_RENEW_INTERVAL_MS: u64 = LEASE_DURATION_MS / 3;

/// Deepest a single actor's mailbox may grow before callers are told to back off.
pub const MAILBOX_DEPTH_MAX: usize = 1_024;

/// Most steps one simulation may run before it is stopped as runaway.
pub const DST_STEPS_COUNT_MAX: u64 = 10_000_000;

/// Idle time after which an active actor is deactivated, by default.
pub const ACTOR_IDLE_TIMEOUT_MS_DEFAULT: u64 = 300_000;

/// Largest config file read at start-up.
pub const CONFIG_FILE_SIZE_BYTES_MAX: u64 = 1024 * 1024;

/// Most commits merged into one durable write by group commit.
pub const GROUP_COMMIT_BATCH_COUNT_MAX: usize = 1_024;

const _: () = assert!(HEARTBEAT_TIMEOUT_MS > HEARTBEAT_INTERVAL_MS);
const _: () = assert!(HEARTBEAT_TIMEOUT_MS >= 3 * HEARTBEAT_INTERVAL_MS);
const _: () = assert!(LEASE_DURATION_MS > HEARTBEAT_TIMEOUT_MS);
const _: () = assert!(LEASE_RENEW_INTERVAL_MS < LEASE_DURATION_MS);
const _: () = assert!(LEASE_RENEW_INTERVAL_MS >= HEARTBEAT_INTERVAL_MS);
const _: () = assert!(ACTOR_INVOCATION_TIMEOUT_MS_DEFAULT <= ACTOR_INVOCATION_TIMEOUT_MS_MAX);
const _: () = assert!(ACTOR_STATE_SIZE_BYTES_MAX <= TRANSACTION_SIZE_BYTES_MAX);
const _: () =
    assert!(STORAGE_VALUE_SIZE_BYTES_MAX + STORAGE_KEY_SIZE_BYTES_MAX <= TRANSACTION_SIZE_BYTES_MAX);
const _: () = assert!(STORAGE_KEY_SIZE_BYTES_MAX < STORAGE_VALUE_SIZE_BYTES_MAX);
const _: () = assert!(ACTOR_ID_LENGTH_BYTES_MAX <= STORAGE_KEY_SIZE_BYTES_MAX);
const _: () = assert!(MAILBOX_DEPTH_MAX > 0 && TRANSACTION_OPS_COUNT_MAX > 0);
const _: () = assert!(GROUP_COMMIT_BATCH_COUNT_MAX > 1);
