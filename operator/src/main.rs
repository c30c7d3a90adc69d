//! The `wasmop` command: CLI parsing and wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wasmop", version, about = "A Kubernetes operator whose reconcile logic is WebAssembly")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster named by KUBECONFIG (or in-cluster config).
    Run {
        /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "WASMOP_METRICS_ADDR", default_value = "127.0.0.1:8080")]
        metrics_addr: SocketAddr,
        /// Compiled-plugin cache directory, kept across restarts.
        #[arg(long, env = "WASMOP_CACHE_DIR", default_value_os_t = default_cache_dir())]
        cache_dir: PathBuf,
        /// Disable the on-disk compiled-plugin cache.
        #[arg(long)]
        no_cache: bool,
        /// Allow spec.plugin.source.file (development only: it reads the operator's filesystem).
        #[arg(long, env = "WASMOP_ALLOW_FILE_PLUGINS")]
        allow_file_plugins: bool,
        /// Log format.
        #[arg(long, env = "WASMOP_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Print the WasmController CRD (YAML), as committed in crds/.
    Crd,
    /// Print the plugin ABI's JSON Schema.
    Schema,
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmop/plugins")
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,extism=warn,cranelift=warn,wasmtime=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { kubeconfig, metrics_addr, cache_dir, no_cache, allow_file_plugins, log_format } => {
            init_logging(&log_format);
            let opts = wasmop::RunOptions {
                kubeconfig,
                metrics_addr,
                cache_dir: (!no_cache).then_some(cache_dir),
                allow_file_plugins,
            };
            wasmop::run(opts, shutdown_signal()).await
        }
        Command::Crd => {
            print!("{}", wasmop::crd::crd_yaml());
            Ok(())
        }
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&wasmop_abi::schema())?);
            Ok(())
        }
    }
}
