//! Cluster membership (join, leave, heartbeat, failure detection), the TCP
//! transport between nodes, request forwarding to the owner node, migration and
//! rebalancing. Never depends on the server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
