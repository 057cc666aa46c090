//! The virtual actors of the agent domain. Each owns its state in
//! kelpie-storage and handles one command per transaction:
//! - [`agent`]: one per agent (`agents/<agent id>`): record, core and working
//!   memory, messages, passages; a step of the agent loop commits here;
//! - [`directory`]: the agent listing in shards (`agent-directory/shard-<k>`);
//! - [`block_store`]: every shared block and the agents holding it;
//! - [`tool_store`]: every custom tool;
//! - [`sandbox_config_store`]: the sandbox configuration and its variables;
//! - [`run_store`]: one per run (`runs/<run id>`), its record;
//! - [`reclaim`]: the agents whose storage awaits reclaiming;
//! - [`provider_store`]: every LLM provider a user registered, with its key;
//! - [`folder_store`]: every folder's record and the agents it is attached to;
//! - [`group_store`]: every multi-agent group, its members and its runs;
//! - [`folder`]: one per folder (`folder/<folder id>`): its files, their
//!   text and passages;
//! - [`batch`]: one per message batch (`batch/<job id>`), and the index of
//!   the running ones.
//! - [`archive_store`]: every archive's record and the agents it is
//!   attached to;
//! - [`archive`]: one per archive (`archive/<archive id>`): its passages.
//!
//! None of them calls another actor or the network: the agent service
//! composes them.

pub mod agent;
pub mod archive;
pub mod archive_store;
pub mod batch;
pub mod block_store;
pub mod directory;
pub mod folder;
pub mod folder_store;
pub mod group_store;
pub mod identity_store;
pub mod provider_store;
pub mod reclaim;
pub mod run_store;
pub mod sandbox_config_store;
pub mod tool_store;
