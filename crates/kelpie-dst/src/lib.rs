//! Deterministic simulation testing: a seeded single-threaded executor,
//! virtual clocks, simulated network and storage, a fault injector, invariant
//! checking and trace hashing. Depends only on kelpie-core; never on the server
//! or CLI.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
