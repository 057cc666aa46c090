//! Building blocks of the runtime's DST scenarios, shared with the
//! cluster's (`crates/kelpie-cluster/tests/dst_cluster.rs` includes this
//! module by path).

pub mod checks;
pub mod probe;
pub mod world;
