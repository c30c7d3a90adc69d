//! `wasmop-bench`: the benchmarks behind BENCHMARKS.md (`make bench`, `make bench-smoke`).
//!
//! - [`calls`]: one reconcile's plugin call, native vs loopback HTTP hook vs Rust/JS/Go
//!   plugins, bare and through the operator's path (broken down by step).
//! - [`load`]: plugin load with and without the compiled cache.
//! - [`e2e`]: wasmop against a native kube-runtime controller on the real control plane.
//! - [`scale`]: memory and watches with 1, 10, 100 WasmControllers.
//! - [`scaleout`]: the same 60 WasmControllers on 1, 2, 3 `--shard` replicas: memory and
//!   watches per replica, convergence, the rebalance when one more joins.
//!
//! Figures are printed and written, never asserted: nothing here fails because a number is
//! slow. The smoke mode runs every phase with tiny sizes so the code cannot rot.

mod calls;
mod check;
mod e2e;
mod fixture;
mod hook;
mod load;
mod report;
mod scale;
mod scaleout;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the benchmarks, prints the tables and writes the report.
    Run {
        /// Tiny sizes: checks that every phase works (seconds, figures meaningless).
        #[arg(long)]
        smoke: bool,
        /// Where the Markdown report goes (a hand-written part after `<!-- hand-written -->`
        /// in an existing file is kept).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only these phases (calls, load, e2e, scale, scaleout); default all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Calls per variant and run.
        #[arg(long, default_value_t = 10_000)]
        iterations: usize,
        /// Runs of noisy figures (reported as median, min–max).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Parents in the end-to-end benchmark.
        #[arg(long, default_value_t = 1000)]
        parents: usize,
        /// `resyncPeriod` (s) in the end-to-end benchmark: the resync wave comes this long
        /// after each parent's last reconcile (wasmop's floor is 10 s).
        #[arg(long, default_value_t = 40)]
        resync_seconds: u64,
        /// WasmController counts of the scale benchmark.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        controllers: Vec<usize>,
        /// WasmControllers (each its own plugin) of the scale-out benchmark.
        #[arg(long, default_value_t = 60)]
        shard_controllers: usize,
        /// Parents per WasmController in the scale-out benchmark.
        #[arg(long, default_value_t = 2)]
        shard_parents: usize,
        /// Up to this many replicas in the scale-out benchmark (1, 2, … of them).
        #[arg(long, default_value_t = 3)]
        shard_replicas: usize,
        /// Seconds the release build took (hack/bench.sh measures it), for the report.
        #[arg(long)]
        build_seconds: Option<f64>,
    },
    /// The loopback HTTP hook (started by the call benchmark).
    HookServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: std::net::SocketAddr,
    },
}

/// A plugin built by `make plugins`.
pub fn plugin_bytes(name: &str) -> Result<Vec<u8>> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| wasmop_e2e::root().join("target"), PathBuf::from);
    let path = dir.join("plugins").join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "{}: build the plugins first (`make plugins`)",
            path.display()
        )
    })
}

/// The `native-controller` binary beside this one.
fn native_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("native-controller");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build -p wasmop-bench --bins` (same profile)",
        bin.display()
    );
    Ok(bin)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::HookServer { addr } => hook::serve(addr).await,
        Command::Run {
            smoke,
            out,
            only,
            iterations,
            runs,
            parents,
            resync_seconds,
            controllers,
            shard_controllers,
            shard_parents,
            shard_replicas,
            build_seconds,
        } => {
            let (iterations, runs, parents, resync, controllers) = if smoke {
                (200, 1, 10, 10, vec![1])
            } else {
                (iterations, runs, parents, resync_seconds, controllers)
            };
            let shards = if smoke {
                (3, 1, 2)
            } else {
                (shard_controllers, shard_parents, shard_replicas)
            };
            // The smoke run measures the Rust plugin only: the others take the same code path
            // and only add compile time.
            let plugins = if smoke {
                &calls::PLUGINS[..1]
            } else {
                &calls::PLUGINS[..]
            };
            let want = |phase: &str| only.is_empty() || only.iter().any(|o| o == phase);
            let started = Instant::now();
            let mut r = report::Report::new(smoke, build_seconds);
            let phase = |name: &str, since: Instant| {
                eprintln!("bench: {name} took {:.1} s", since.elapsed().as_secs_f64());
            };
            if want("calls") {
                eprintln!("bench: plugin calls ({iterations} per variant, {runs} runs)");
                let t = Instant::now();
                r.calls =
                    Some(calls::run(&std::env::current_exe()?, plugins, iterations, runs).await?);
                phase("plugin calls", t);
            }
            if want("load") {
                eprintln!("bench: plugin loads");
                let cache =
                    std::env::temp_dir().join(format!("wasmop-bench-cache-{}", std::process::id()));
                let (cold, warm) = if smoke { (1, 1) } else { (3, 5) };
                let t = Instant::now();
                r.load = Some(load::run(plugins, &cache, cold, warm).await?);
                phase("plugin loads", t);
                let _ = std::fs::remove_dir_all(&cache);
            }
            if want("e2e") || want("scale") || want("scaleout") {
                let t = Instant::now();
                let bench = e2e::Bench::start(native_bin()?).await?;
                phase("control plane start", t);
                r.kubernetes = bench.cp.server_version().map(str::to_string);
                if want("e2e") {
                    let t = Instant::now();
                    r.e2e = Some(e2e::run(&bench, parents, runs, resync).await?);
                    phase("end to end", t);
                }
                if want("scale") {
                    let t = Instant::now();
                    r.scale = Some(scale::run(&bench, &controllers).await?);
                    phase("memory and scale", t);
                }
                if want("scaleout") {
                    let t = Instant::now();
                    let (k, p, n) = shards;
                    r.scaleout = Some(scaleout::run(&bench, k, p, n).await?);
                    phase("scale-out", t);
                }
            }
            r.finish(started.elapsed());
            let text = r.markdown();
            println!("{text}");
            if let Some(out) = out {
                report::write(&out, &text)?;
                eprintln!("bench: wrote {}", out.display());
            }
            let problems = check::problems(&r, &want);
            if !problems.is_empty() {
                anyhow::bail!(
                    "{} figure(s) missing, zero or not a number (a phase measured nothing):\n  {}",
                    problems.len(),
                    problems.join("\n  ")
                );
            }
            Ok(())
        }
    }
}
