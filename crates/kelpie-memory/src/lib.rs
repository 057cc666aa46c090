//! Agent memory tiers: ordered core blocks with byte limits, working memory
//! with TTL, archival passages with embeddings and search, atomic checkpoints.
//! Never depends on the server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
