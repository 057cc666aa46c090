//! Agent memory tiers, as pure data and functions: no I/O, no clock, no
//! randomness. The agent actor in the server owns these values inside its
//! state and persists them with each step, so a memory change is committed
//! atomically with the step that made it.
//!
//! - [`core`]: ordered core memory blocks, each with a character limit and
//!   the whole set with a total limit; edits over a limit are refused and
//!   leave the old value in place (never truncated).
//! - [`working`]: a key-value scratchpad whose entries expire after a TTL;
//!   time is passed in, and expired entries never count toward its limits.
//! - [`archival`]: archival passages and the local, network-free embedding
//!   (feature-hashed bag of words) with cosine-ranked search.
//!
//! Never depends on the server.

pub mod archival;
pub mod core;
pub mod working;

pub use archival::{embed_local, rank_passages, score_passages, Passage, LOCAL_EMBEDDING_DIMENSIONS_COUNT};
pub use core::{Block, CoreMemory, MemoryError};
pub use working::{WorkingEntry, WorkingLimits, WorkingMemory, WorkingMemoryError};
