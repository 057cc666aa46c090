//! Named safety properties, written once and checked twice: by the
//! stateright models in [`crate::models`] on every reachable state of a small
//! configuration, and by DST scenarios on the real code after every
//! simulation step.
//!
//! Each property is a plain function over *observations*: small structs that
//! say what an outside observer can see of the system (activations and their
//! epochs, placement records, the order of commits, agents and their create keys,
//! transactions and what they read). A model builds the observation from its
//! state; a scenario builds it from the real runtime, registry and storage.
//! The structs are generic over the actor and node identifiers (`A`, `N`) so a
//! model can use small integers and a scenario the real `ActorId`/`NodeId`.
//!
//! A property returns `Err(PropertyViolation)` naming itself and explaining
//! the counterexample; the names are the constants below, which the models
//! also use as their stateright property names.

pub mod activation;
pub mod server;
pub mod storage;

use std::fmt;

pub use activation::*;
pub use server::*;
pub use storage::*;

/// At most one activation per actor can still commit (holds the current epoch).
pub const SINGLE_ACTIVATION: &str = "SingleActivation";
/// The runtime and the registry agree on who holds a current activation.
pub const CONSISTENT_HOLDER: &str = "ConsistentHolder";
/// The placement directory and the fencing record agree on epoch and node.
pub const PLACEMENT_CONSISTENCY: &str = "PlacementConsistency";
/// No lease is granted to a node while another node's lease is still running.
pub const LEASE_UNIQUENESS: &str = "LeaseUniqueness";
/// Fencing epochs never go backwards, in grants or in commit order.
pub const FENCING_TOKEN_MONOTONIC: &str = "FencingTokenMonotonic";
/// No two nodes commit for one actor under one epoch.
pub const NO_SPLIT_BRAIN: &str = "NoSplitBrain";
/// Every acknowledged write is in durable state.
pub const DURABILITY: &str = "Durability";
/// A transaction's writes are visible all together or not at all.
pub const ATOMIC_VISIBILITY: &str = "AtomicVisibility";
/// A transaction reads its own buffered writes.
pub const READ_YOUR_WRITES: &str = "ReadYourWrites";
/// Conflicting transactions do not both commit.
pub const SERIALIZABLE_ISOLATION: &str = "SerializableIsolation";
/// During a migration exactly one of source and target owns the actor.
pub const MIGRATION_OWNERSHIP_CONSISTENCY: &str = "MigrationOwnershipConsistency";
/// Activation states follow the allowed transitions only.
pub const LIFECYCLE_ORDERING: &str = "LifecycleOrdering";
/// After shutdown completes, no accepted request is left unanswered.
pub const GRACEFUL_SHUTDOWN: &str = "GracefulShutdown";
/// An activation answers every request it accepted before it finishes.
pub const GRACEFUL_DEACTIVATION: &str = "GracefulDeactivation";
/// A request answered with a definite failure leaves nothing in durable state.
pub const FAILURE_ATOMICITY: &str = "FailureAtomicity";
/// A member declared failed or gone never comes back under the same incarnation.
pub const MEMBERSHIP_INCARNATION: &str = "MembershipIncarnation";
/// Concurrent creates with one request key make one agent.
pub const NO_DUPLICATE_AGENTS: &str = "NoDuplicateAgents";
/// Every acknowledged agent creation can be read back.
pub const CREATED_AGENT_RETRIEVABLE: &str = "CreatedAgentRetrievable";
/// A search by one agent never returns another agent's data.
pub const SEARCH_ISOLATION: &str = "SearchIsolation";

/// Every property name, for documentation and coverage checks.
pub const ALL_PROPERTIES: &[&str] = &[
    SINGLE_ACTIVATION,
    CONSISTENT_HOLDER,
    PLACEMENT_CONSISTENCY,
    LEASE_UNIQUENESS,
    FENCING_TOKEN_MONOTONIC,
    NO_SPLIT_BRAIN,
    DURABILITY,
    ATOMIC_VISIBILITY,
    READ_YOUR_WRITES,
    SERIALIZABLE_ISOLATION,
    MIGRATION_OWNERSHIP_CONSISTENCY,
    LIFECYCLE_ORDERING,
    GRACEFUL_SHUTDOWN,
    GRACEFUL_DEACTIVATION,
    FAILURE_ATOMICITY,
    MEMBERSHIP_INCARNATION,
    NO_DUPLICATE_AGENTS,
    CREATED_AGENT_RETRIEVABLE,
    SEARCH_ISOLATION,
];

/// Identifiers usable in observations: ordered (grouping uses `BTreeMap`),
/// cloneable and printable in explanations.
pub trait Ident: Ord + Clone + fmt::Debug {}

impl<T: Ord + Clone + fmt::Debug> Ident for T {}

/// A broken property: which one, and the counterexample in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyViolation {
    pub property: &'static str,
    pub detail: String,
}

impl fmt::Display for PropertyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

impl std::error::Error for PropertyViolation {}

/// The result of checking one property.
pub type PropertyResult = Result<(), PropertyViolation>;

pub(crate) fn violation(property: &'static str, detail: String) -> PropertyResult {
    assert!(ALL_PROPERTIES.contains(&property), "unknown property {property}");
    Err(PropertyViolation { property, detail })
}
