//! VM backends (QEMU microvm, Firecracker where installed) with snapshot and
//! restore verified by SHA-256. Never depends on the server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
