//! The server configuration.
//!
//! Values come in layers, later ones overriding earlier ones: built-in
//! defaults, a TOML file, environment variables, command-line flags. Every
//! value is kept as text with its [`Origin`] until [`ConfigLayers::resolve`]
//! parses and cross-checks them all at once, so a bad value or an invalid
//! combination (the postgres backend without a URL, say) is reported at
//! start-up with the field's name and where it came from, never later at
//! first use.
//!
//! Fields (TOML keys; nested tables use the part before the dot):
//!
//! | field | env | default |
//! |---|---|---|
//! | `data_dir` | `KELPIE_DATA_DIR` | `./kelpie-data` |
//! | `bind` | `KELPIE_BIND` | `127.0.0.1:8283` |
//! | `node_id` | `KELPIE_NODE_ID` | `node-1` |
//! | `api_key` | `KELPIE_API_KEY` | none (no auth) |
//! | `storage.backend` | `KELPIE_STORAGE` | `redb`, or `postgres` when a URL is given |
//! | `storage.database_url` | `KELPIE_DATABASE_URL` | none |
//! | `storage.pool_size` | `KELPIE_DATABASE_POOL_SIZE` | 12 |
//! | `cluster.enabled` | `KELPIE_CLUSTER` | `false` |
//! | `cluster.advertise` | `KELPIE_ADVERTISE` | none |
//! | `cluster.listen` | `KELPIE_CLUSTER_LISTEN` | the advertise address |
//! | `cluster.secret` | `KELPIE_CLUSTER_SECRET` | none: required in a cluster unless trusted_network |
//! | `cluster.trusted_network` | `KELPIE_CLUSTER_TRUSTED_NETWORK` | `false` |
//! | `cluster.tls_cert` | `KELPIE_CLUSTER_TLS_CERT` | none: the transport runs without TLS |
//! | `cluster.tls_key` | `KELPIE_CLUSTER_TLS_KEY` | none |
//! | `cluster.tls_ca` | `KELPIE_CLUSTER_TLS_CA` | none |
//! | `llm.openai_base_url` | `OPENAI_BASE_URL` | `https://api.openai.com/v1` |
//! | `llm.openai_api_key` | `OPENAI_API_KEY` | none |
//! | `llm.anthropic_base_url` | `ANTHROPIC_BASE_URL` | `https://api.anthropic.com` |
//! | `llm.anthropic_api_key` | `ANTHROPIC_API_KEY` | none |
//! | `llm.default_model` | `KELPIE_DEFAULT_MODEL` | none |
//! | `llm.allow_internal_provider_urls` | `KELPIE_ALLOW_INTERNAL_PROVIDER_URLS` | `false`: base URLs of providers created through `/v1/providers` on loopback, private or link-local addresses are refused |
//! | `sandbox.backend` | `KELPIE_SANDBOX` | `process` (`gvisor`; `none` only when asked for) |
//! | `sandbox.dir` | `KELPIE_SANDBOX_DIR` | `<temp dir>/kelpie-sandbox-<hash of the data dir>` |
//! | `sandbox.python` | `KELPIE_SANDBOX_PYTHON` | `/usr/bin/python3` |
//! | `sandbox.pip_index_url` | `KELPIE_PIP_INDEX_URL` | none (pip's default index) |
//! | `sandbox.warm_count` | `KELPIE_SANDBOX_WARM` | 2 |
//! | `sandbox.fork_server_calls` | `KELPIE_SANDBOX_FORK_CALLS` | 1000: calls one fork server serves on `process` (0: a sandbox per call) |
//! | `mcp.allow_internal_urls` | `KELPIE_MCP_ALLOW_INTERNAL_URLS` | `false`: MCP server URLs on loopback, private or link-local addresses are refused |
//! | `mcp.stdio_network` | `KELPIE_MCP_STDIO_NETWORK` | `false`: stdio MCP servers run without network |
//! | `log.format` | `KELPIE_LOG_FORMAT` | `text`; `json`: one JSON object a line |
//! | `metrics.public` | `KELPIE_METRICS_PUBLIC` | `false`: `GET /metrics` needs the bearer token like the API |

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::id::NodeId;
use crate::limits::CONFIG_FILE_SIZE_BYTES_MAX;

/// Most connections one node keeps to PostgreSQL.
pub const DATABASE_POOL_SIZE_COUNT_MAX: u32 = 256;
/// Connections one node keeps to PostgreSQL when not told: with the 4 of
/// its membership heartbeats, 16 a node, so PostgreSQL's default
/// `max_connections` (100) holds six nodes.
const DATABASE_POOL_SIZE_COUNT_DEFAULT: u32 = 12;
/// Most sandboxes kept started ahead of the tool calls that will use them.
pub const SANDBOX_WARM_COUNT_MAX: usize = 64;
const SANDBOX_WARM_COUNT_DEFAULT: usize = 2;
/// Calls one fork server may serve (`sandbox.fork_server_calls`).
pub const SANDBOX_FORK_SERVER_CALLS_MAX: u64 = 100_000;
const SANDBOX_FORK_SERVER_CALLS_DEFAULT: u64 = 1_000;

/// Every known field, with the environment variable that sets it.
pub const FIELDS: &[(&str, &str)] = &[
    ("data_dir", "KELPIE_DATA_DIR"),
    ("bind", "KELPIE_BIND"),
    ("node_id", "KELPIE_NODE_ID"),
    ("api_key", "KELPIE_API_KEY"),
    ("storage.backend", "KELPIE_STORAGE"),
    ("storage.database_url", "KELPIE_DATABASE_URL"),
    ("storage.pool_size", "KELPIE_DATABASE_POOL_SIZE"),
    ("cluster.enabled", "KELPIE_CLUSTER"),
    ("cluster.advertise", "KELPIE_ADVERTISE"),
    ("cluster.listen", "KELPIE_CLUSTER_LISTEN"),
    ("cluster.secret", "KELPIE_CLUSTER_SECRET"),
    ("cluster.trusted_network", "KELPIE_CLUSTER_TRUSTED_NETWORK"),
    ("cluster.tls_cert", "KELPIE_CLUSTER_TLS_CERT"),
    ("cluster.tls_key", "KELPIE_CLUSTER_TLS_KEY"),
    ("cluster.tls_ca", "KELPIE_CLUSTER_TLS_CA"),
    ("llm.openai_base_url", "OPENAI_BASE_URL"),
    ("llm.openai_api_key", "OPENAI_API_KEY"),
    ("llm.anthropic_base_url", "ANTHROPIC_BASE_URL"),
    ("llm.anthropic_api_key", "ANTHROPIC_API_KEY"),
    ("llm.default_model", "KELPIE_DEFAULT_MODEL"),
    ("llm.allow_internal_provider_urls", "KELPIE_ALLOW_INTERNAL_PROVIDER_URLS"),
    ("sandbox.backend", "KELPIE_SANDBOX"),
    ("sandbox.dir", "KELPIE_SANDBOX_DIR"),
    ("sandbox.python", "KELPIE_SANDBOX_PYTHON"),
    ("sandbox.pip_index_url", "KELPIE_PIP_INDEX_URL"),
    ("sandbox.warm_count", "KELPIE_SANDBOX_WARM"),
    ("sandbox.fork_server_calls", "KELPIE_SANDBOX_FORK_CALLS"),
    ("mcp.allow_internal_urls", "KELPIE_MCP_ALLOW_INTERNAL_URLS"),
    ("mcp.stdio_network", "KELPIE_MCP_STDIO_NETWORK"),
    ("log.format", "KELPIE_LOG_FORMAT"),
    ("metrics.public", "KELPIE_METRICS_PUBLIC"),
];

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    EnvVar(&'static str),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::EnvVar(name) => write!(f, "environment variable {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("config field `{field}` (from {origin}): {reason}")]
    InvalidField { field: String, origin: Origin, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Which storage holds actor state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// Nothing survives a restart. For tests and experiments.
    Memory,
    /// The embedded default: one redb file under the data dir.
    Redb { path: PathBuf },
    /// Shared PostgreSQL, required for a cluster.
    Postgres { database_url: String, pool_size: u32 },
}

impl fmt::Display for StorageConfig {
    /// A description safe for logs: a database URL's credentials are hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Memory => f.write_str("memory (nothing survives a restart)"),
            StorageConfig::Redb { path } => write!(f, "redb at {}", path.display()),
            StorageConfig::Postgres { database_url, pool_size } => {
                let (scheme, rest) = database_url.split_once("://").unwrap_or(("postgres", database_url));
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                write!(f, "postgres at {scheme}://{host} (pool of {pool_size})")
            }
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The address other nodes reach this node's transport on.
    pub advertise: SocketAddr,
    /// The address the transport listens on; differs from `advertise`
    /// behind NAT or a proxy.
    pub listen: SocketAddr,
    /// What every node of the cluster shares to prove itself to the others
    /// on each transport connection; `None` only when the operator said the
    /// network is trusted (`cluster.trusted_network`).
    pub secret: Option<String>,
    /// TLS of the transport: all three files or none.
    pub tls: Option<ClusterTlsFiles>,
}

/// The PEM files of the cluster transport's TLS: this node's certificate
/// chain (naming `kelpie-cluster`), its private key, and the authority
/// that issued every node's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Shortest cluster secret accepted, in bytes.
pub const CLUSTER_SECRET_BYTES_MIN: usize = 16;

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("advertise", &self.advertise)
            .field("listen", &self.listen)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct LlmConfig {
    pub openai_base_url: String,
    pub openai_api_key: Option<String>,
    pub anthropic_base_url: String,
    pub anthropic_api_key: Option<String>,
    pub default_model: Option<String>,
    /// Whether a provider a user creates (`/v1/providers`) may have a base
    /// URL on a loopback, private or link-local address.
    pub allow_internal_provider_urls: bool,
}

impl fmt::Debug for LlmConfig {
    // Keys never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("openai_base_url", &self.openai_base_url)
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "<set>"))
            .field("anthropic_base_url", &self.anthropic_base_url)
            .field("anthropic_api_key", &self.anthropic_api_key.as_ref().map(|_| "<set>"))
            .field("default_model", &self.default_model)
            .field("allow_internal_provider_urls", &self.allow_internal_provider_urls)
            .finish()
    }
}

/// The sandbox dir of a data dir, unless configured: under the system's
/// temp dir (which every user may traverse, as a sandbox's user must reach
/// its directories), one per data dir.
pub fn default_sandbox_dir(data_dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash =
        absolute.as_os_str().as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    std::env::temp_dir().join(format!("kelpie-sandbox-{hash:016x}"))
}

/// Which isolation runs tool code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxBackend {
    /// bubblewrap namespaces and cgroups (the default).
    Process,
    /// gVisor's `runsc`.
    Gvisor,
    /// No isolation; only when chosen, with a warning at start.
    None,
}

/// Where and how tool code runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    pub backend: SandboxBackend,
    /// Sandboxes' working directories (emptied at start) and installed
    /// pip requirements (kept) live under here. The sandbox's user must be
    /// able to traverse every directory above it.
    pub dir: PathBuf,
    /// The Python interpreter tools run with, a path the sandbox can see.
    pub python: String,
    pub pip_index_url: Option<String>,
    /// Sandboxes kept started ahead of tool calls (0: every call starts one).
    pub warm_count: usize,
    /// Calls one fork server serves on the process backend (0: every
    /// Python call gets a sandbox of its own).
    pub fork_server_calls: u64,
    /// MCP server URLs may resolve to internal addresses (else refused).
    pub mcp_allow_internal_urls: bool,
    /// stdio MCP servers' sandboxes get the network.
    pub mcp_stdio_network: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, with the fields of the spans it was logged in.
    Json,
}

/// Logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservabilityConfig {
    pub log_format: LogFormat,
    /// `GET /metrics` answers without the bearer token.
    pub metrics_public: bool,
}

/// The validated configuration of one Kelpie server process.
#[derive(Clone, PartialEq, Eq)]
pub struct KelpieConfig {
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub node_id: NodeId,
    pub api_key: Option<String>,
    pub storage: StorageConfig,
    pub cluster: Option<ClusterConfig>,
    pub llm: LlmConfig,
    pub sandbox: SandboxConfig,
    pub observability: ObservabilityConfig,
}

impl fmt::Debug for KelpieConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KelpieConfig")
            .field("data_dir", &self.data_dir)
            .field("bind", &self.bind)
            .field("node_id", &self.node_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("storage", &self.storage.to_string())
            .field("cluster", &self.cluster)
            .field("llm", &self.llm)
            .field("sandbox", &self.sandbox)
            .field("observability", &self.observability)
            .finish()
    }
}

/// Raw values by field name, each with its origin; later layers win.
#[derive(Debug, Clone, Default)]
pub struct ConfigLayers {
    values: BTreeMap<&'static str, (String, Origin)>,
}

fn known_field(name: &str) -> Option<&'static str> {
    FIELDS.iter().map(|(field, _)| *field).find(|field| *field == name)
}

impl ConfigLayers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `field` to `value`, overriding any earlier layer.
    pub fn set(&mut self, field: &str, value: impl Into<String>, origin: Origin) -> Result<(), ConfigError> {
        let Some(field) = known_field(field) else {
            return Err(ConfigError::InvalidField {
                field: field.to_string(),
                origin,
                reason: "unknown field".to_string(),
            });
        };
        self.values.insert(field, (value.into(), origin));
        Ok(())
    }

    /// Adds a TOML file's values.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file_error = |reason: String| ConfigError::File { path: path.to_path_buf(), reason };
        let size = std::fs::metadata(path).map_err(|e| file_error(e.to_string()))?.len();
        if size > CONFIG_FILE_SIZE_BYTES_MAX {
            return Err(file_error(format!(
                "is {size} bytes, over the limit CONFIG_FILE_SIZE_BYTES_MAX = {CONFIG_FILE_SIZE_BYTES_MAX}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        self.add_toml(&text, path)
    }

    /// Adds values from TOML text; `path` names it in errors.
    pub fn add_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
        let mut flat = Vec::new();
        flatten_toml("", &table, &mut flat);
        for (field, value) in flat {
            self.set(&field, value, Origin::File(path.to_path_buf()))?;
        }
        Ok(())
    }

    /// Adds every known variable present in `vars` (pass `std::env::vars()`).
    pub fn add_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for (field, var) in FIELDS {
            if let Some(value) = vars.get(*var) {
                self.values.insert(field, (value.clone(), Origin::EnvVar(var)));
            }
        }
    }

    /// Parses and cross-checks every value into a [`KelpieConfig`].
    pub fn resolve(&self) -> Result<KelpieConfig, ConfigError> {
        let data_dir = PathBuf::from(self.text("data_dir", "./kelpie-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(self.invalid("data_dir", "must not be empty"));
        }
        let bind = self.parse("bind", "127.0.0.1:8283", |v| {
            v.parse::<SocketAddr>().map_err(|_| format!("{v:?} is not an address of the form IP:PORT"))
        })?;
        let node_id = self.parse("node_id", "node-1", |v| NodeId::new(v).map_err(|e| e.to_string()))?;
        let api_key = self.optional("api_key");
        if api_key.as_deref() == Some("") {
            return Err(self.invalid("api_key", "must not be empty when set"));
        }
        let storage = self.resolve_storage(&data_dir)?;
        let cluster = self.resolve_cluster(&storage)?;
        let llm = self.resolve_llm()?;
        let sandbox = self.resolve_sandbox(&data_dir)?;
        let observability = ObservabilityConfig {
            log_format: self.parse("log.format", "text", |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("{other:?} is not one of \"text\", \"json\"")),
            })?,
            metrics_public: self.boolean("metrics.public")?,
        };
        Ok(KelpieConfig { data_dir, bind, node_id, api_key, storage, cluster, llm, sandbox, observability })
    }

    fn resolve_storage(&self, data_dir: &Path) -> Result<StorageConfig, ConfigError> {
        let database_url = self.optional("storage.database_url");
        let default_backend = if database_url.is_some() { "postgres" } else { "redb" };
        let backend = self.text("storage.backend", default_backend);
        match backend.as_str() {
            "memory" | "redb" => {
                if database_url.is_some() {
                    return Err(self.invalid(
                        "storage.database_url",
                        &format!("is set but storage.backend is {backend:?}; use backend \"postgres\" or drop the URL"),
                    ));
                }
                Ok(if backend == "memory" {
                    StorageConfig::Memory
                } else {
                    StorageConfig::Redb { path: data_dir.join("kelpie.redb") }
                })
            }
            "postgres" => {
                let Some(database_url) = database_url else {
                    return Err(self.invalid(
                        "storage.database_url",
                        "is required when storage.backend is \"postgres\"",
                    ));
                };
                if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
                    return Err(
                        self.invalid("storage.database_url", "must start with postgres:// or postgresql://")
                    );
                }
                let pool_size = self.parse(
                    "storage.pool_size",
                    &DATABASE_POOL_SIZE_COUNT_DEFAULT.to_string(),
                    |v| match v.parse::<u32>() {
                        Ok(n) if (1..=DATABASE_POOL_SIZE_COUNT_MAX).contains(&n) => Ok(n),
                        _ => Err(format!(
                            "{v:?} is not a whole number from 1 to {DATABASE_POOL_SIZE_COUNT_MAX}"
                        )),
                    },
                )?;
                Ok(StorageConfig::Postgres { database_url, pool_size })
            }
            other => Err(self.invalid(
                "storage.backend",
                &format!("{other:?} is not one of \"memory\", \"redb\", \"postgres\""),
            )),
        }
    }

    fn resolve_cluster(&self, storage: &StorageConfig) -> Result<Option<ClusterConfig>, ConfigError> {
        let enabled = self.boolean("cluster.enabled")?;
        if !enabled {
            return Ok(None);
        }
        if !matches!(storage, StorageConfig::Postgres { .. }) {
            return Err(self.invalid(
                "cluster.enabled",
                "a cluster needs storage.backend \"postgres\" with storage.database_url",
            ));
        }
        if self.optional("cluster.advertise").is_none() {
            return Err(self.invalid("cluster.advertise", "is required when cluster.enabled is true"));
        }
        let address = |v: &str| {
            v.parse::<SocketAddr>().map_err(|_| format!("{v:?} is not an address of the form IP:PORT"))
        };
        let advertise = self.parse("cluster.advertise", "", address)?;
        let listen = match self.optional("cluster.listen") {
            Some(_) => self.parse("cluster.listen", "", address)?,
            None => advertise,
        };
        let trusted = self.boolean("cluster.trusted_network")?;
        let secret = match self.optional("cluster.secret") {
            Some(secret) if secret.len() < CLUSTER_SECRET_BYTES_MIN => {
                return Err(self.invalid(
                    "cluster.secret",
                    &format!("is {} bytes; at least {CLUSTER_SECRET_BYTES_MIN} are needed", secret.len()),
                ))
            }
            Some(secret) => Some(secret),
            None if trusted => None,
            None => {
                return Err(self.invalid(
                    "cluster.secret",
                    "is required in a cluster: every node must share it (KELPIE_CLUSTER_SECRET), or set \
                     cluster.trusted_network = true if nothing else can reach the cluster transport",
                ))
            }
        };
        let files =
            ["cluster.tls_cert", "cluster.tls_key", "cluster.tls_ca"].map(|field| self.optional(field));
        let tls = match files {
            [Some(cert), Some(key), Some(ca)] => Some(ClusterTlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
                ca: PathBuf::from(ca),
            }),
            [None, None, None] => None,
            _ => return Err(self.invalid(
                "cluster.tls_cert",
                "cluster.tls_cert, cluster.tls_key and cluster.tls_ca go together: give all three or none",
            )),
        };
        Ok(Some(ClusterConfig { advertise, listen, secret, tls }))
    }

    fn resolve_llm(&self) -> Result<LlmConfig, ConfigError> {
        let url = |field: &'static str, default: &str| {
            self.parse(field, default, |v| {
                if v.starts_with("http://") || v.starts_with("https://") {
                    Ok(v.trim_end_matches('/').to_string())
                } else {
                    Err(format!("{v:?} must start with http:// or https://"))
                }
            })
        };
        Ok(LlmConfig {
            openai_base_url: url("llm.openai_base_url", "https://api.openai.com/v1")?,
            openai_api_key: self.optional("llm.openai_api_key").filter(|k| !k.is_empty()),
            anthropic_base_url: url("llm.anthropic_base_url", "https://api.anthropic.com")?,
            anthropic_api_key: self.optional("llm.anthropic_api_key").filter(|k| !k.is_empty()),
            default_model: self.optional("llm.default_model").filter(|m| !m.is_empty()),
            allow_internal_provider_urls: self.boolean("llm.allow_internal_provider_urls")?,
        })
    }

    fn resolve_sandbox(&self, data_dir: &Path) -> Result<SandboxConfig, ConfigError> {
        let backend = self.parse("sandbox.backend", "process", |v| match v {
            "process" => Ok(SandboxBackend::Process),
            "gvisor" => Ok(SandboxBackend::Gvisor),
            "none" => Ok(SandboxBackend::None),
            other => Err(format!("{other:?} is not one of \"process\", \"gvisor\", \"none\"")),
        })?;
        let dir = match self.optional("sandbox.dir") {
            Some(dir) if dir.is_empty() => return Err(self.invalid("sandbox.dir", "must not be empty")),
            Some(dir) => PathBuf::from(dir),
            None => default_sandbox_dir(data_dir),
        };
        let python = self.text("sandbox.python", "/usr/bin/python3");
        if !python.starts_with('/') {
            return Err(self.invalid("sandbox.python", &format!("{python:?} must be an absolute path")));
        }
        let pip_index_url = self.optional("sandbox.pip_index_url").filter(|url| !url.is_empty());
        if let Some(url) = &pip_index_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(self.invalid(
                    "sandbox.pip_index_url",
                    &format!("{url:?} must start with http:// or https://"),
                ));
            }
        }
        let warm_count = self.parse("sandbox.warm_count", &SANDBOX_WARM_COUNT_DEFAULT.to_string(), |v| {
            match v.parse::<usize>() {
                Ok(n) if n <= SANDBOX_WARM_COUNT_MAX => Ok(n),
                _ => Err(format!("{v:?} is not a whole number from 0 to {SANDBOX_WARM_COUNT_MAX}")),
            }
        })?;
        let fork_server_calls =
            self.parse("sandbox.fork_server_calls", &SANDBOX_FORK_SERVER_CALLS_DEFAULT.to_string(), |v| {
                match v.parse::<u64>() {
                    Ok(n) if n <= SANDBOX_FORK_SERVER_CALLS_MAX => Ok(n),
                    _ => {
                        Err(format!("{v:?} is not a whole number from 0 to {SANDBOX_FORK_SERVER_CALLS_MAX}"))
                    }
                }
            })?;
        Ok(SandboxConfig {
            backend,
            dir,
            python,
            pip_index_url,
            warm_count,
            fork_server_calls,
            mcp_allow_internal_urls: self.boolean("mcp.allow_internal_urls")?,
            mcp_stdio_network: self.boolean("mcp.stdio_network")?,
        })
    }

    /// A boolean field, `false` when not set.
    fn boolean(&self, field: &'static str) -> Result<bool, ConfigError> {
        self.parse(field, "false", |v| match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("{v:?} is not a boolean (true/false)")),
        })
    }

    fn optional(&self, field: &'static str) -> Option<String> {
        self.values.get(field).map(|(value, _)| value.clone())
    }

    fn text(&self, field: &'static str, default: &str) -> String {
        self.optional(field).unwrap_or_else(|| default.to_string())
    }

    fn origin(&self, field: &'static str) -> Origin {
        self.values.get(field).map(|(_, origin)| origin.clone()).unwrap_or(Origin::Default)
    }

    fn invalid(&self, field: &'static str, reason: &str) -> ConfigError {
        ConfigError::InvalidField {
            field: field.to_string(),
            origin: self.origin(field),
            reason: reason.to_string(),
        }
    }

    fn parse<T>(
        &self,
        field: &'static str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.text(field, default);
        parse(&value).map_err(|reason| self.invalid(field, &reason))
    }
}

fn flatten_toml(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match value {
            toml::Value::Table(inner) => flatten_toml(&name, inner, out),
            toml::Value::String(s) => out.push((name, s.clone())),
            toml::Value::Integer(n) => out.push((name, n.to_string())),
            toml::Value::Boolean(b) => out.push((name, b.to_string())),
            toml::Value::Float(f) => out.push((name, f.to_string())),
            other => out.push((name, format!("{other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn log_format_and_public_metrics_come_from_file_env_and_flags() {
        let mut layers = ConfigLayers::new();
        layers.add_toml("[log]\nformat = \"json\"\n[metrics]\npublic = true\n", Path::new("k.toml")).unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(
            config.observability,
            ObservabilityConfig { log_format: LogFormat::Json, metrics_public: true }
        );
        layers.add_env([("KELPIE_LOG_FORMAT".to_string(), "text".to_string())]);
        assert_eq!(layers.resolve().unwrap().observability.log_format, LogFormat::Text);
        layers.set("log.format", "yaml", Origin::Flag("--log-format".into())).unwrap();
        assert_eq!(
            layers.resolve().unwrap_err().to_string(),
            "config field `log.format` (from flag --log-format): \"yaml\" is not one of \"text\", \"json\""
        );
    }

    #[test]
    fn defaults_need_nothing() {
        let config = ConfigLayers::new().resolve().unwrap();
        assert_eq!(config.data_dir, PathBuf::from("./kelpie-data"));
        assert_eq!(config.bind, "127.0.0.1:8283".parse().unwrap());
        assert_eq!(config.node_id.as_str(), "node-1");
        assert_eq!(config.storage, StorageConfig::Redb { path: PathBuf::from("./kelpie-data/kelpie.redb") });
        assert_eq!(config.cluster, None);
        assert_eq!(config.api_key, None);
        assert_eq!(config.llm.openai_base_url, "https://api.openai.com/v1");
        assert_eq!(config.llm.openai_api_key, None);
        assert!(!config.llm.allow_internal_provider_urls);
        assert_eq!(
            config.observability,
            ObservabilityConfig { log_format: LogFormat::Text, metrics_public: false }
        );
        assert_eq!(
            config.sandbox,
            SandboxConfig {
                backend: SandboxBackend::Process,
                dir: default_sandbox_dir(Path::new("./kelpie-data")),
                python: "/usr/bin/python3".into(),
                pip_index_url: None,
                warm_count: 2,
                fork_server_calls: 1_000,
                mcp_allow_internal_urls: false,
                mcp_stdio_network: false,
            }
        );
        let mut layers = ConfigLayers::new();
        layers.add_toml("[mcp]\nallow_internal_urls = true\n", Path::new("k.toml")).unwrap();
        layers.add_env(env(&[("KELPIE_MCP_STDIO_NETWORK", "1")]));
        let sandbox = layers.resolve().unwrap().sandbox;
        assert_eq!((sandbox.mcp_allow_internal_urls, sandbox.mcp_stdio_network), (true, true));
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[("KELPIE_ALLOW_INTERNAL_PROVIDER_URLS", "true")]));
        assert!(layers.resolve().unwrap().llm.allow_internal_provider_urls);
    }

    #[test]
    fn layers_override_in_order_file_env_flag() {
        let mut layers = ConfigLayers::new();
        layers
            .add_toml("bind = \"127.0.0.1:9000\"\ndata_dir = \"/var/kelpie\"\n[llm]\nopenai_base_url = \"http://127.0.0.1:1/v1/\"\n", Path::new("k.toml"))
            .unwrap();
        layers.add_env(env(&[("KELPIE_BIND", "127.0.0.1:9001"), ("UNRELATED", "x")]));
        layers.set("bind", "127.0.0.1:9002", Origin::Flag("--bind".into())).unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(config.bind, "127.0.0.1:9002".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/var/kelpie"));
        assert_eq!(config.llm.openai_base_url, "http://127.0.0.1:1/v1", "trailing slash trimmed");
        assert_eq!(config.storage, StorageConfig::Redb { path: PathBuf::from("/var/kelpie/kelpie.redb") });
    }

    #[test]
    fn postgres_backend_without_url_is_rejected_naming_the_field() {
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[("KELPIE_STORAGE", "postgres")]));
        let err = layers.resolve().unwrap_err();
        assert_eq!(
            err.to_string(),
            "config field `storage.database_url` (from the default): is required when storage.backend is \"postgres\""
        );
    }

    #[test]
    fn database_url_alone_selects_postgres() {
        let mut layers = ConfigLayers::new();
        layers
            .set(
                "storage.database_url",
                "postgres://u@127.0.0.1:5432/kelpie",
                Origin::Flag("--database-url".into()),
            )
            .unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(
            config.storage,
            StorageConfig::Postgres {
                database_url: "postgres://u@127.0.0.1:5432/kelpie".into(),
                pool_size: DATABASE_POOL_SIZE_COUNT_DEFAULT
            }
        );
    }

    #[test]
    fn url_with_embedded_backend_is_a_conflict() {
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[("KELPIE_STORAGE", "redb"), ("KELPIE_DATABASE_URL", "postgres://x")]));
        let err = layers.resolve().unwrap_err();
        assert!(err.to_string().starts_with("config field `storage.database_url` (from environment variable KELPIE_DATABASE_URL): is set but storage.backend is \"redb\""), "{err}");
    }

    #[test]
    fn bad_values_name_field_and_origin() {
        let cases: &[(&str, &str, &str)] = &[
            ("bind", "localhost", "config field `bind` (from flag --bind): \"localhost\" is not an address of the form IP:PORT"),
            ("storage.backend", "sqlite", "config field `storage.backend` (from flag --bind): \"sqlite\" is not one of \"memory\", \"redb\", \"postgres\""),
            ("node_id", "bad node", "config field `node_id` (from flag --bind): invalid node id \"bad node\": node id contains ' '; allowed are ASCII letters, digits and - _ . : @"),
            ("llm.openai_base_url", "ftp://x", "config field `llm.openai_base_url` (from flag --bind): \"ftp://x\" must start with http:// or https://"),
            ("cluster.enabled", "maybe", "config field `cluster.enabled` (from flag --bind): \"maybe\" is not a boolean (true/false)"),
            ("sandbox.backend", "docker", "config field `sandbox.backend` (from flag --bind): \"docker\" is not one of \"process\", \"gvisor\", \"none\""),
            ("sandbox.python", "python3", "config field `sandbox.python` (from flag --bind): \"python3\" must be an absolute path"),
            ("sandbox.pip_index_url", "file:///x", "config field `sandbox.pip_index_url` (from flag --bind): \"file:///x\" must start with http:// or https://"),
            ("sandbox.warm_count", "65", "config field `sandbox.warm_count` (from flag --bind): \"65\" is not a whole number from 0 to 64"),
        ];
        for (field, value, message) in cases {
            let mut layers = ConfigLayers::new();
            layers.set(field, *value, Origin::Flag("--bind".into())).unwrap();
            assert_eq!(layers.resolve().unwrap_err().to_string(), *message);
        }
    }

    #[test]
    fn pool_size_is_bounded() {
        for (value, ok) in [("0", false), ("1", true), ("256", true), ("257", false), ("x", false)] {
            let mut layers = ConfigLayers::new();
            layers.add_env(env(&[
                ("KELPIE_DATABASE_URL", "postgresql://h/db"),
                ("KELPIE_DATABASE_POOL_SIZE", value),
            ]));
            let result = layers.resolve();
            assert_eq!(result.is_ok(), ok, "{value}: {result:?}");
            if let Err(err) = result {
                assert!(err.to_string().contains("storage.pool_size"), "{err}");
            }
        }
    }

    #[test]
    fn cluster_requires_postgres_and_advertise() {
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[("KELPIE_CLUSTER", "true")]));
        let err = layers.resolve().unwrap_err();
        assert!(err.to_string().starts_with("config field `cluster.enabled`"), "{err}");

        layers.add_env(env(&[("KELPIE_DATABASE_URL", "postgres://h/db")]));
        let err = layers.resolve().unwrap_err();
        assert!(
            err.to_string().starts_with("config field `cluster.advertise` (from the default): is required"),
            "{err}"
        );

        layers.add_env(env(&[("KELPIE_ADVERTISE", "127.0.0.1:7001")]));
        let err = layers.resolve().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config field `cluster.secret` (from the default): is required in a cluster"),
            "{err}"
        );
        layers.add_env(env(&[("KELPIE_CLUSTER_SECRET", "too short")]));
        let err = layers.resolve().unwrap_err();
        assert_eq!(
            err.to_string(),
            "config field `cluster.secret` (from environment variable KELPIE_CLUSTER_SECRET): is 9 bytes; at least 16 are needed"
        );
        let secret = "a secret of 24 bytes....";
        layers.add_env(env(&[("KELPIE_CLUSTER_SECRET", secret)]));
        let config = layers.resolve().unwrap();
        let advertise: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let secret = Some(secret.to_string());
        assert_eq!(
            config.cluster,
            Some(ClusterConfig { advertise, listen: advertise, secret: secret.clone(), tls: None })
        );
        assert!(!format!("{config:?}").contains("a secret of"), "the secret is never printed");

        layers.add_env(env(&[("KELPIE_CLUSTER_LISTEN", "0.0.0.0:7101")]));
        let config = layers.resolve().unwrap();
        let listen: SocketAddr = "0.0.0.0:7101".parse().unwrap();
        assert_eq!(config.cluster, Some(ClusterConfig { advertise, listen, secret, tls: None }));
        layers.add_env(env(&[("KELPIE_CLUSTER_LISTEN", "nowhere")]));
        let err = layers.resolve().unwrap_err();
        assert!(err.to_string().starts_with("config field `cluster.listen`"), "{err}");
    }

    #[test]
    fn cluster_tls_takes_its_three_files_together() {
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[
            ("KELPIE_CLUSTER", "true"),
            ("KELPIE_DATABASE_URL", "postgres://h/db"),
            ("KELPIE_ADVERTISE", "127.0.0.1:7001"),
            ("KELPIE_CLUSTER_TRUSTED_NETWORK", "true"),
            ("KELPIE_CLUSTER_TLS_CERT", "/etc/kelpie/node.pem"),
            ("KELPIE_CLUSTER_TLS_KEY", "/etc/kelpie/node.key"),
        ]));
        let err = layers.resolve().unwrap_err();
        assert!(err.to_string().contains("give all three or none"), "{err}");
        layers.add_env(env(&[("KELPIE_CLUSTER_TLS_CA", "/etc/kelpie/ca.pem")]));
        let cluster = layers.resolve().unwrap().cluster.unwrap();
        let files = ClusterTlsFiles {
            cert: PathBuf::from("/etc/kelpie/node.pem"),
            key: PathBuf::from("/etc/kelpie/node.key"),
            ca: PathBuf::from("/etc/kelpie/ca.pem"),
        };
        assert_eq!(cluster.tls, Some(files));
    }

    #[test]
    fn a_trusted_network_needs_no_cluster_secret() {
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[
            ("KELPIE_CLUSTER", "true"),
            ("KELPIE_DATABASE_URL", "postgres://h/db"),
            ("KELPIE_ADVERTISE", "127.0.0.1:7001"),
            ("KELPIE_CLUSTER_TRUSTED_NETWORK", "true"),
        ]));
        let advertise: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let config = layers.resolve().unwrap();
        assert_eq!(
            config.cluster,
            Some(ClusterConfig { advertise, listen: advertise, secret: None, tls: None })
        );
        layers.add_env(env(&[("KELPIE_CLUSTER_TRUSTED_NETWORK", "perhaps")]));
        let err = layers.resolve().unwrap_err();
        assert!(err.to_string().starts_with("config field `cluster.trusted_network`"), "{err}");
    }

    #[test]
    fn unknown_file_keys_and_bad_toml_are_rejected() {
        let mut layers = ConfigLayers::new();
        let err = layers.add_toml("[storage]\nbakend = \"redb\"\n", Path::new("k.toml")).unwrap_err();
        assert_eq!(err.to_string(), "config field `storage.bakend` (from config file k.toml): unknown field");
        let err = layers.add_toml("bind = ", Path::new("k.toml")).unwrap_err();
        assert!(err.to_string().starts_with("config file k.toml: "), "{err}");
    }

    #[test]
    fn file_loading_reports_missing_and_reads_values() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = ConfigLayers::new().add_file(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");

        let path = dir.path().join("kelpie.toml");
        std::fs::write(&path, "[storage]\nbackend = \"memory\"\n[cluster]\nenabled = false\n").unwrap();
        let mut layers = ConfigLayers::new();
        layers.add_file(&path).unwrap();
        assert_eq!(layers.resolve().unwrap().storage, StorageConfig::Memory);
    }

    #[test]
    fn storage_description_hides_database_credentials() {
        let postgres = StorageConfig::Postgres {
            database_url: "postgres://kelpie:pw@127.0.0.1:5432/db".into(),
            pool_size: 4,
        };
        assert_eq!(postgres.to_string(), "postgres at postgres://127.0.0.1:5432/db (pool of 4)");
        let redb = StorageConfig::Redb { path: PathBuf::from("./kelpie-data/kelpie.redb") };
        assert_eq!(redb.to_string(), "redb at ./kelpie-data/kelpie.redb");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut layers = ConfigLayers::new();
        layers.add_env(env(&[
            ("OPENAI_API_KEY", "sk-secret"),
            ("KELPIE_API_KEY", "hunter2"),
            ("KELPIE_DATABASE_URL", "postgres://u:dbpass@127.0.0.1/k"),
        ]));
        let config = layers.resolve().unwrap();
        assert_eq!(config.llm.openai_api_key.as_deref(), Some("sk-secret"));
        let debug = format!("{config:?}");
        for secret in ["sk-secret", "hunter2", "dbpass"] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
    }
}
