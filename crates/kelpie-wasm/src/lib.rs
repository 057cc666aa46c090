//! WASM tools and actors on wasmtime with fuel and memory limits. Never
//! depends on the server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
