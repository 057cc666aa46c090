//! The `kelpie` binary: parses the command line and hands off to the crates
//! that do the work. `kelpie serve` runs the Letta-compatible server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kelpie_core::config::{ConfigError, ConfigLayers, KelpieConfig, Origin};

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
    #[arg(long, value_name = "IP:PORT")]
    bind: Option<String>,
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
    /// Model handle used when an agent names none.
    #[arg(long, value_name = "HANDLE")]
    default_model: Option<String>,
}

impl ServeArgs {
    fn load_config(&self) -> Result<KelpieConfig, ConfigError> {
        let mut layers = ConfigLayers::new();
        if let Some(path) = &self.config {
            layers.add_file(path)?;
        }
        layers.add_env(std::env::vars());
        let flags: [(&str, &str, Option<&str>); 8] = [
            ("data_dir", "--data-dir", self.data_dir.as_deref()),
            ("bind", "--bind", self.bind.as_deref()),
            ("node_id", "--node-id", self.node_id.as_deref()),
            ("storage.backend", "--storage", self.storage.as_deref()),
            ("storage.database_url", "--database-url", self.database_url.as_deref()),
            ("cluster.enabled", "--cluster", self.cluster.then_some("true")),
            ("cluster.advertise", "--advertise", self.advertise.as_deref()),
            ("llm.default_model", "--default-model", self.default_model.as_deref()),
        ];
        for (field, flag, value) in flags {
            if let Some(value) = value {
                layers.set(field, value, Origin::Flag(flag.to_string()))?;
            }
        }
        layers.resolve()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KELPIE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
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
