//! Placement directory: claim/renew/release of actor placements with leases
//! and fencing epochs, plus the node table. Never depends on the runtime or
//! server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
