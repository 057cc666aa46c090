//! Transactional per-actor key-value storage (get/scan/put/delete/commit)
//! with fenced commits, a write-ahead log, and backends: memory, redb (embedded
//! default) and PostgreSQL. Never depends on the runtime or server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
