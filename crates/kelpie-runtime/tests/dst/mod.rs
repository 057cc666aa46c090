//! Building blocks of the runtime's DST scenarios.

pub mod probe;
pub mod world;
