//! The agent domain: what an agent is, how it is stored and how it thinks.
//!
//! Layers, each using only the ones before it:
//! - [`limits`], [`ids`], [`model`], [`model_settings`], [`page`], [`letta`],
//!   [`requests`], [`error`], [`agent_file`], [`context`], [`files`],
//!   [`documents`]: the agent domain's limits, ids and times, the persisted
//!   records, the shape of Letta's model settings, cursor pages, Letta's
//!   wire shapes, the request bodies the service takes, the
//!   errors, the export file format with its streaming reader, the context
//!   window (token estimates, compaction's decisions and texts), an agent's
//!   view of its folders' files, and the parsing and chunking of uploads;
//! - [`actors`]: the virtual actors and their commands — one per agent, the
//!   agent directory shards, the shared block store, the custom tool store,
//!   one per run, the folder store and one per folder. Each command is one
//!   transaction;
//! - [`service`]: [`service::AgentService`], the one entry point of the HTTP
//!   layer, made of small services (agents, shared blocks, archival memory,
//!   turns, runs, transfer, tools, folders) that route each operation to actors;
//! - [`cluster`] and [`node`]: this node's part in a cluster (membership,
//!   planned moves of agents) and the wiring of storage, placement and runtimes
//!   into a running service.
//!
//! It knows nothing of HTTP: kelpie-server parses requests, calls the
//! service and maps [`error::ServiceError`] to status codes.

pub mod actors;
pub mod agent_file;
pub mod cluster;
pub mod context;
pub mod documents;
pub mod error;
pub mod files;
pub mod ids;
pub mod letta;
pub mod letta_af;
pub mod limits;
pub mod model;
pub mod model_settings;
pub mod node;
pub mod page;
pub mod planted;
pub mod requests;
pub mod service;
pub mod tool_rules;

pub use error::{ServiceError, ServiceResult};
pub use service::AgentService;
