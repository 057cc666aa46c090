//! Tool registry, built-in tools, custom tools and the MCP client. Never
//! depends on the server.
//!
//! This crate is not built out yet: it only marks its place in the dependency
//! order of `ARCHITECTURE.md`.
