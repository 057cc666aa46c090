//! Isolated execution of tool code: process sandbox, gVisor and VM-backed
//! sandboxes. Never depends on the server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
