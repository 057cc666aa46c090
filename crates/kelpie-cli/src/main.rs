//! The `kelpie` binary: parses the command line and hands off to the crates
//! that do the work. `kelpie serve` runs the Letta-compatible server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kelpie_core::config::{ConfigError, ConfigLayers, KelpieConfig, Origin};

mod dst;
mod people;

/// mimalloc instead of glibc's malloc: the server allocates and frees from
/// many threads at once, where glibc's arenas spent a fifth of a loaded
/// server's time (docs/benchmarks.md, the load generator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "kelpie",
    version,
    about = "Kelpie: a runtime and Letta-compatible server for stateful AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent server (Letta REST API, default 127.0.0.1:8283).
    Serve(ServeArgs),
    /// Inspect a cluster through one of its nodes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Serve Kelpie's agents as an MCP server on stdin/stdout (tools:
    /// list_agents, create_agent, send_message, read_memory), through the
    /// server at --url. Servers also answer MCP over HTTP at /mcp.
    Mcp(McpArgs),
    /// List, create, show and delete agents on a server.
    #[command(subcommand)]
    Agents(people::AgentsCommand),
    /// Chat with an agent: each line you type is a message, the answer
    /// streams back as it is written.
    Chat(people::ChatArgs),
    /// The deterministic simulator.
    #[command(subcommand)]
    Dst(DstCommand),
}

#[derive(Debug, Subcommand)]
enum DstCommand {
    /// Run the reference scenario (3 nodes under every non-agent fault)
    /// over a range of seeds, with a progress bar; a failing seed is
    /// printed with the command that replays it.
    Run(dst::DstRunArgs),
}

#[derive(Debug, Args)]
struct McpArgs {
    /// Base URL of the Kelpie server's HTTP API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8283")]
    url: String,
    /// Bearer token, when the server requires one [env: KELPIE_API_KEY].
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Print every node of the cluster as the node at --url sees it.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Base URL of any node's HTTP API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8283")]
    url: String,
    /// Bearer token, when the server requires one [env: KELPIE_API_KEY].
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Flags override environment variables, which override the config file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the embedded store [default: ./kelpie-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8283].
    #[arg(long, value_name = "IP:PORT", conflicts_with_all = ["host", "port"])]
    bind: Option<String>,
    /// Host to listen on, as Letta's server takes it (with --port; the
    /// other part defaults to 127.0.0.1 or 8283).
    #[arg(long, value_name = "IP")]
    host: Option<String>,
    /// Port to listen on, as Letta's server takes it.
    #[arg(long)]
    port: Option<u16>,
    /// This node's name [default: node-1].
    #[arg(long)]
    node_id: Option<String>,
    /// Storage backend: memory, redb or postgres [default: redb].
    #[arg(long, value_name = "BACKEND")]
    storage: Option<String>,
    /// PostgreSQL URL; implies --storage postgres.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Join a cluster (needs --database-url and --advertise).
    #[arg(long)]
    cluster: bool,
    /// Address other nodes reach this node on.
    #[arg(long, value_name = "IP:PORT")]
    advertise: Option<String>,
    /// Address the cluster transport listens on [default: the advertise address].
    #[arg(long, value_name = "IP:PORT")]
    cluster_listen: Option<String>,
    /// Run the cluster transport without a shared secret (KELPIE_CLUSTER_SECRET):
    /// only where nothing but the cluster's nodes can reach it.
    #[arg(long)]
    cluster_trusted_network: bool,
    /// Model handle used when an agent names none.
    #[arg(long, value_name = "HANDLE")]
    default_model: Option<String>,
    /// Log lines as text or json (one object a line, with the request id) [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
}

impl ServeArgs {
    fn load_config(&self) -> Result<KelpieConfig, ConfigError> {
        let mut layers = ConfigLayers::new();
        if let Some(path) = &self.config {
            layers.add_file(path)?;
        }
        layers.add_env(std::env::vars());
        let host_port = self.host_port();
        let bind = self.bind.as_deref().or(host_port.as_deref());
        let bind_flag = if self.bind.is_some() { "--bind" } else { "--host/--port" };
        let flags: [(&str, &str, Option<&str>); 11] = [
            ("data_dir", "--data-dir", self.data_dir.as_deref()),
            ("bind", bind_flag, bind),
            ("node_id", "--node-id", self.node_id.as_deref()),
            ("storage.backend", "--storage", self.storage.as_deref()),
            ("storage.database_url", "--database-url", self.database_url.as_deref()),
            ("cluster.enabled", "--cluster", self.cluster.then_some("true")),
            ("cluster.advertise", "--advertise", self.advertise.as_deref()),
            ("cluster.listen", "--cluster-listen", self.cluster_listen.as_deref()),
            (
                "cluster.trusted_network",
                "--cluster-trusted-network",
                self.cluster_trusted_network.then_some("true"),
            ),
            ("llm.default_model", "--default-model", self.default_model.as_deref()),
            ("log.format", "--log-format", self.log_format.as_deref()),
        ];
        for (field, flag, value) in flags {
            if let Some(value) = value {
                layers.set(field, value, Origin::Flag(flag.to_string()))?;
            }
        }
        layers.resolve()
    }

    /// The listen address `--host` and `--port` name (either may be left
    /// out), as `IP:PORT`; an IPv6 host is bracketed.
    fn host_port(&self) -> Option<String> {
        if self.host.is_none() && self.port.is_none() {
            return None;
        }
        let host = self.host.as_deref().unwrap_or(DEFAULT_HOST);
        let port = self.port.unwrap_or(DEFAULT_PORT);
        Some(match host.contains(':') && !host.starts_with('[') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        })
    }
}

/// The host `--port` alone listens on.
const DEFAULT_HOST: &str = "127.0.0.1";
/// The port `--host` alone listens on (Letta's).
const DEFAULT_PORT: u16 = 8283;

/// Logs to stderr in `format`, filtered by `KELPIE_LOG` (default `info`).
fn init_logs(format: kelpie_core::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KELPIE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = kelpie_server::telemetry::log_subscriber(format, filter, std::io::stderr);
    if let Err(err) = tracing::subscriber::set_global_default(subscriber) {
        eprintln!("kelpie: cannot set up logging: {err}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up its logs once its configuration (log.format) is read.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logs(kelpie_core::config::LogFormat::Text);
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Cluster(ClusterCommand::Status(args)) => cluster_status(args),
        Command::Mcp(args) => mcp(args),
        Command::Agents(command) => people_result(people::agents(command, &mut std::io::stdout())),
        Command::Chat(args) => {
            people_result(people::chat(args, std::io::stdin().lock(), &mut std::io::stdout()))
        }
        Command::Dst(DstCommand::Run(args)) => {
            match dst::run(&args, &mut std::io::stdout(), &mut std::io::stderr()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => {
                    eprintln!("kelpie dst run: {err}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn people_result(result: Result<(), people::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kelpie: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Kelpie's REST API over HTTP, for `kelpie mcp`.
struct HttpGateway {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl kelpie_server::mcp_server::ApiGateway for HttpGateway {
    fn call<'a>(
        &'a self,
        method: reqwest::Method,
        path: &'a str,
        body: Option<serde_json::Value>,
    ) -> kelpie_server::mcp_server::GatewayFuture<'a> {
        Box::pin(async move {
            let mut request = self.http.request(method, format!("{}{path}", self.base));
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.map_err(|e| format!("cannot reach {}: {e}", self.base))?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await.map_err(|e| e.to_string())?;
            if bytes.len() > kelpie_server::mcp_server::MCP_GATEWAY_BODY_BYTES_MAX {
                return Err(format!("the answer is {} bytes, over MCP_GATEWAY_BODY_BYTES_MAX", bytes.len()));
            }
            kelpie_server::mcp_server::answer(status, &bytes)
        })
    }
}

fn mcp(args: McpArgs) -> ExitCode {
    let api_key = args.api_key.or_else(|| std::env::var("KELPIE_API_KEY").ok()).filter(|key| !key.is_empty());
    let gateway = HttpGateway {
        http: reqwest::Client::new(),
        base: args.url.trim_end_matches('/').to_string(),
        api_key,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kelpie: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kelpie_server::mcp_server::serve_stdio(std::sync::Arc::new(gateway))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kelpie mcp: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.load_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("kelpie: {err}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.observability.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kelpie: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let server = kelpie_server::bind(config.clone()).await?;
        eprintln!(
            "kelpie {} listening on http://{} (storage: {}, data dir: {})",
            env!("CARGO_PKG_VERSION"),
            server.local_addr(),
            config.storage,
            config.data_dir.display()
        );
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => {
            eprintln!("kelpie: stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kelpie: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Longest wait for a node to answer `kelpie cluster status`.
const STATUS_TIMEOUT_MS: u64 = 10_000;

fn cluster_status(args: StatusArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("kelpie: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let api_key = args.api_key.clone().or_else(|| std::env::var("KELPIE_API_KEY").ok());
    let url = format!("{}/v1/cluster/nodes", args.url.trim_end_matches('/'));
    let fetched = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(STATUS_TIMEOUT_MS))
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = client.get(&url);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = response.status();
        let body: serde_json::Value =
            response.json().await.map_err(|e| format!("{url} answered no JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url} answered {status}: {}", body["detail"].as_str().unwrap_or("")));
        }
        Ok(body)
    });
    match fetched {
        Ok(body) if args.json => {
            println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(body) => {
            print!("{}", status_table(&body));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kelpie: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The cluster view as a fixed-width table, one node per line.
fn status_table(body: &serde_json::Value) -> String {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut out = format!(
        "answered by {} ({})\n",
        text(&body["node_id"]),
        if body["cluster"] == serde_json::Value::Bool(true) { "cluster" } else { "single node" }
    );
    out.push_str(&format!(
        "{:<20} {:<22} {:<9} {:<7} {:>12} {}\n",
        "NODE", "ADVERTISE", "STATUS", "LIVE", "HEARTBEAT_MS", "ROUTABLE"
    ));
    for node in body["nodes"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push_str(&format!(
            "{:<20} {:<22} {:<9} {:<7} {:>12} {}\n",
            text(&node["node_id"]),
            text(&node["advertise"]),
            text(&node["status"]),
            text(&node["liveness"]),
            text(&node["heartbeat_age_ms"]),
            text(&node["routable"]),
        ));
    }
    out
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        biased;
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    eprintln!("kelpie: shutting down");
}
