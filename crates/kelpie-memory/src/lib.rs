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
//!   (feature-hashed bag of words);
//! - [`index`]: the archival search index (quantized codes, scanned whole).
//!
//! Never depends on the server.

pub mod archival;
pub mod core;
pub mod index;
pub mod working;

pub use archival::{
    embed_local, Passage, ARCHIVAL_SEARCH_RESULTS_COUNT_MAX, LOCAL_EMBEDDING_DIMENSIONS_COUNT,
};
pub use core::{Block, CoreMemory, MemoryError};
pub use index::{cosine, Code, PassageIndex};
pub use working::{WorkingEntry, WorkingLimits, WorkingMemory, WorkingMemoryError};
