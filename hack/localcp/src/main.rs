//! `localcp`: run the local Kubernetes control plane in the foreground (`localcp up`) or
//! build its binaries (`localcp build`). See docs/local-control-plane.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use localcp::{ControlPlane, FaultOptions, Options};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The real Kubernetes control plane on loopback, for wasmop's dev loop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver and kube-controller-manager and wait for Ctrl-C/SIGTERM.
    Up {
        /// Keep state (etcd data, certificates, logs, kubeconfig) here instead of a temporary
        /// directory that is deleted on exit.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Tight API priority-and-fairness limits and a short --min-request-timeout
        /// (FaultOptions::tight()).
        #[arg(long)]
        tight: bool,
        /// --min-request-timeout in seconds (overrides --tight's).
        #[arg(long, value_name = "SECONDS")]
        min_request_timeout: Option<u64>,
        /// Do not start kube-controller-manager.
        #[arg(long)]
        no_controller_manager: bool,
        /// Extra kube-apiserver flag (repeatable), e.g. --apiserver-arg=--v=4.
        #[arg(
            long = "apiserver-arg",
            value_name = "FLAG",
            allow_hyphen_values = true
        )]
        apiserver_args: Vec<String>,
    },
    /// Build the binaries (runs hack/build-control-plane.sh; a no-op when up to date).
    Build {
        /// Arguments for the script, e.g. --force or --bump v1.36.4.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "localcp=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Build { args } => build(&args),
        Command::Up {
            dir,
            tight,
            min_request_timeout,
            no_controller_manager,
            apiserver_args,
        } => {
            let mut fault = if tight {
                FaultOptions::tight()
            } else {
                FaultOptions::default()
            };
            if let Some(secs) = min_request_timeout {
                fault.min_request_timeout = Some(Duration::from_secs(secs));
            }
            up(Options {
                fault,
                dir,
                reuse_from_env: false,
                controller_manager: !no_controller_manager,
                extra_apiserver_args: apiserver_args,
                ..Options::default()
            })
            .await
        }
    }
}

fn build(args: &[String]) -> anyhow::Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build-control-plane.sh");
    let status = std::process::Command::new(&script)
        .args(args)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

async fn up(opts: Options) -> anyhow::Result<()> {
    eprintln!("localcp: starting the control plane ...");
    let cp = ControlPlane::start(opts)
        .await
        .context("starting the control plane")?;
    let started = cp.started_in().unwrap_or_default();
    println!(
        "# Kubernetes {} ready in {:.1}s",
        cp.server_version().unwrap_or("?"),
        started.as_secs_f64()
    );
    for p in cp.processes() {
        match &p.log {
            Some(log) => println!("# {:<24} pid {:<7} log {}", p.name, p.pid, log.display()),
            None => println!("# {:<24} pid {}", p.name, p.pid),
        }
    }
    println!("# kubectl: {}", cp.kubectl_path().display());
    println!("export KUBECONFIG={}", cp.kubeconfig().display());
    eprintln!("localcp: running; Ctrl-C or SIGTERM stops it");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    eprintln!("localcp: stopping ...");
    cp.stop().await;
    eprintln!("localcp: stopped");
    Ok(())
}
