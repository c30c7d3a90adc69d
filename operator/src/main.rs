//! The `wasmop` command: CLI parsing and wiring only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wasmop::plugin::Budget;
use wasmop::reconcile::plan::ResponseLimits;

#[derive(Parser)]
#[command(
    name = "wasmop",
    version,
    about = "A Kubernetes operator whose reconcile logic is WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster named by KUBECONFIG (or in-cluster config).
    Run(Box<RunArgs>),
    /// Print what installs wasmop's API (YAML, as committed in crds/): the WasmController CRD
    /// and the admission policy that lets only those who may impersonate a ServiceAccount
    /// name it in spec.serviceAccountName.
    Crd,
    /// Print the plugin ABI's JSON Schema.
    Schema,
    /// Create a plugin project in DIR (Rust, Go or TypeScript) that builds and tests on its own:
    /// the language kit vendored from this wasmop, a Makefile, fixtures for `wasmop eval
    /// --test`, the parent CRD, the WasmController and its RBAC. See docs/from-zero.md.
    Init(InitArgs),
    /// Print the ServiceAccount, Role and RoleBinding a WasmController's account needs for
    /// exactly what its spec declares (the rights `wasmop explain` checks). Apply with
    /// `wasmop rbac -f wasmcontroller.yaml | kubectl apply -f -`.
    Rbac(RbacArgs),
    /// JavaScript plugins.
    Js {
        #[command(subcommand)]
        command: JsCommand,
    },
    /// Plugins in OCI registries.
    Oci {
        #[command(subcommand)]
        command: OciCommand,
    },
    /// Run a plugin locally against a case file, with the operator's limits: print its logs,
    /// its response and the writes the operator would make. Exit 1 when the call fails (or, with
    /// --test, when a case fails), 2 when the inputs are unusable. See docs/eval-and-explain.md.
    Eval(EvalArgs),
    /// Explain one live object: a dry-run reconcile with your kubeconfig, what differs from the
    /// live objects, and what blocks progress. Writes nothing. Exit 0 when nothing blocks, 1
    /// when something does, 2 when it cannot explain.
    Explain(ExplainArgs),
    /// Print the controllers and the kinds they watch, own, read (with the contract fields
    /// they rely on), patch and finalize, from the WasmControllers' status, and flag what
    /// couples them: two writing one field, two holding finalizers on one kind, a contested
    /// field.
    Graph {
        /// Only this namespace (default: every namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// `text`, or `dot` for Graphviz (`wasmop graph -o dot | dot -Tsvg > graph.svg`).
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: wasmop::cli::graph::Format,
    },
}

/// `wasmop run`'s arguments.
#[derive(clap::Args)]
struct RunArgs {
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz (the Helm chart sets 0.0.0.0:8080).
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
    /// The JavaScript runtime (wasmop_js_runtime.wasm) that spec.plugin.source.javaScript
    /// sources are built with (`make plugins` builds it; the image ships it).
    #[arg(long, env = "WASMOP_JS_RUNTIME", default_value_os_t = wasmop_js_build::default_runtime_path())]
    js_runtime: PathBuf,
    /// A host (`host`, `host:port` or `*.domain`) that spec.plugin.source.url and .oci may
    /// fetch plugins from. Repeatable or comma-separated; none: no network sources.
    #[arg(
        long = "plugin-host",
        env = "WASMOP_PLUGIN_HOSTS",
        value_delimiter = ','
    )]
    plugin_hosts: Vec<String>,
    /// A plugin host reached over plain HTTP (a development registry). Also needs
    /// --plugin-host.
    #[arg(
        long = "insecure-plugin-host",
        env = "WASMOP_INSECURE_PLUGIN_HOSTS",
        value_delimiter = ','
    )]
    insecure_plugin_hosts: Vec<String>,
    /// A cosign public key (PEM file): every oci plugin must carry a signature by one of
    /// these. Repeatable.
    #[arg(
        long = "plugin-public-key",
        env = "WASMOP_PLUGIN_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    plugin_public_keys: Vec<PathBuf>,
    /// Log format.
    #[arg(long, env = "WASMOP_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(flatten)]
    response_limits: ResponseLimitArgs,
    #[command(flatten)]
    plugin_budget: PluginBudgetArgs,
    #[command(flatten)]
    leader_election: LeaderElectionArgs,
    #[command(flatten)]
    sharding: ShardArgs,
}

/// `wasmop run`.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        kubeconfig,
        metrics_addr,
        cache_dir,
        no_cache,
        allow_file_plugins,
        js_runtime,
        plugin_hosts,
        insecure_plugin_hosts,
        plugin_public_keys,
        log_format,
        response_limits,
        plugin_budget,
        leader_election,
        sharding,
    } = args;
    init_logging(&log_format);
    let mut keys = Vec::new();
    for path in &plugin_public_keys {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--plugin-public-key {}: {e}", path.display()))?;
        keys.push(wasmop::plugin::remote::PublicKey::from_pem(
            &format!("--plugin-public-key {}", path.display()),
            &pem,
        )?);
    }
    let remote = wasmop::plugin::remote::Policy {
        hosts: plugin_hosts,
        insecure_hosts: insecure_plugin_hosts,
        keys,
    };
    let opts = wasmop::RunOptions {
        kubeconfig,
        metrics_addr,
        cache_dir: (!no_cache).then_some(cache_dir),
        allow_file_plugins,
        js_runtime,
        remote,
        response_limits: response_limits.into(),
        plugin_budget: plugin_budget.into(),
        sharding: sharding.into_options(&leader_election),
        leader_election: leader_election.into(),
    };
    wasmop::run(opts, shutdown_signal()).await
}

/// `wasmop eval`'s arguments.
#[derive(clap::Args)]
struct EvalArgs {
    /// The plugin (.wasm, optionally gzip- or zstd-compressed).
    plugin: PathBuf,
    /// A case file: the parent, current children, related objects, config.
    #[arg(required_unless_present = "test", conflicts_with = "test")]
    case: Option<PathBuf>,
    /// Run every case file (*.yaml) in DIR that has an `expect` block and compare.
    #[arg(long, value_name = "DIR")]
    test: Option<PathBuf>,
    /// A WasmController YAML: its name, namespace, spec.children, spec.plugin.config and
    /// limits apply.
    #[arg(long, value_name = "FILE")]
    controller: Option<PathBuf>,
    /// The export to call (default: `finalize` when the case says `finalizing: true`).
    #[arg(long, value_parser = ["reconcile", "finalize"])]
    export: Option<String>,
    /// Linear memory cap in MiB (default: the controller's, else 64).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    memory_mib: Option<u32>,
    /// Wall-clock cap per call in ms (default: the controller's, else 1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60000))]
    timeout_ms: Option<u32>,
    /// Instruction budget per call (default: the controller's, else none).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    fuel: Option<u64>,
    /// Output format of a single case.
    #[arg(short, long, value_parser = ["yaml", "json"], default_value = "yaml")]
    output: String,
    /// Compiled-plugin cache directory.
    #[arg(long, env = "WASMOP_CACHE_DIR", default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// Disable the on-disk compiled-plugin cache.
    #[arg(long)]
    no_cache: bool,
}

/// `wasmop eval`.
async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        plugin,
        case,
        test,
        controller,
        export,
        memory_mib,
        timeout_ms,
        fuel,
        output,
        cache_dir,
        no_cache,
    } = args;
    let logs = wasmop::cli::eval::logs::PluginLogs::install();
    let opts = wasmop::cli::eval::Options {
        plugin,
        controller,
        finalizing: export.map(|e| e == "finalize"),
        memory_mib,
        timeout_ms,
        fuel,
        format: if output == "json" {
            wasmop::cli::eval::Format::Json
        } else {
            wasmop::cli::eval::Format::Yaml
        },
        cache_dir: (!no_cache).then_some(cache_dir),
    };
    let mut out = std::io::stdout().lock();
    let result = match (test, case) {
        (Some(dir), _) => wasmop::cli::eval::test_dir(&opts, &dir, &logs, &mut out).await,
        (None, Some(case)) => wasmop::cli::eval::eval_case(&opts, &case, &logs, &mut out).await,
        (None, None) => unreachable!("clap requires a case or --test"),
    };
    exit_with(result)
}

/// `wasmop explain`'s arguments.
#[derive(clap::Args)]
struct ExplainArgs {
    /// KIND/NAME, KIND being a kind, plural or kind.group, e.g. website/hello.
    target: String,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Run this local plugin file instead of the controller's plugin source.
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// Compiled-plugin cache directory.
    #[arg(long, env = "WASMOP_CACHE_DIR", default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// Disable the on-disk compiled-plugin cache.
    #[arg(long)]
    no_cache: bool,
}

/// `wasmop explain`.
async fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let ExplainArgs {
        target,
        namespace,
        kubeconfig,
        plugin,
        cache_dir,
        no_cache,
    } = args;
    let logs = wasmop::cli::eval::logs::PluginLogs::install();
    wasmop::install_crypto();
    let opts = wasmop::cli::explain::Options {
        target,
        namespace,
        kubeconfig,
        plugin,
        cache_dir: (!no_cache).then_some(cache_dir),
    };
    exit_with(wasmop::cli::explain::explain(&opts, &logs, &mut std::io::stdout().lock()).await)
}

#[derive(Subcommand)]
enum OciCommand {
    /// Push a plugin to an OCI registry as a Wasm artifact (one application/wasm layer) and
    /// print `registry/repository@sha256:<digest>` for spec.plugin.source.oci.image.
    /// Anonymous: for a registry that needs credentials, push with oras or wkg.
    Push {
        /// The plugin (.wasm).
        plugin: PathBuf,
        /// `registry/repository:tag`, e.g. registry.example.com/team-a/website:v1.
        reference: String,
        /// Talk plain HTTP to the registry (a local development registry).
        #[arg(long)]
        plain_http: bool,
    },
}

/// `wasmop init`'s arguments.
#[derive(clap::Args)]
struct InitArgs {
    /// The project directory (created; must be empty). Its name is the controller's.
    dir: PathBuf,
    /// The plugin language.
    #[arg(long, value_parser = ["rust", "go", "ts"])]
    lang: String,
    /// The controller's name (default: DIR's name).
    #[arg(long)]
    name: Option<String>,
    /// The parent kind (default: the name in UpperCamelCase).
    #[arg(long)]
    kind: Option<String>,
    /// The parent kind's API group.
    #[arg(long, default_value = "example.com")]
    group: String,
    /// The parent kind's version.
    #[arg(long, default_value = "v1")]
    version: String,
    /// A child kind as APIVERSION/KIND, e.g. v1/ConfigMap or apps/v1/Deployment
    /// (repeatable; default v1/ConfigMap).
    #[arg(long = "child", value_name = "APIVERSION/KIND")]
    children: Vec<String>,
}

/// `wasmop rbac`'s arguments.
#[derive(clap::Args)]
struct RbacArgs {
    /// A YAML file with one or more WasmControllers (other documents are skipped).
    #[arg(short, long, value_name = "FILE")]
    file: PathBuf,
    /// Namespace of the printed objects (default: the WasmController's, else none, for
    /// `kubectl apply -n`).
    #[arg(short, long)]
    namespace: Option<String>,
}

#[derive(Subcommand)]
enum JsCommand {
    /// Build a self-contained, pre-initialised plugin from one JavaScript file (bundle
    /// TypeScript or npm imports first, e.g. with esbuild). Like extism-js, without it.
    Build {
        /// The JavaScript source: `export function reconcile(request) { ... }`.
        source: PathBuf,
        /// Where to write the plugin.
        #[arg(short, long)]
        output: PathBuf,
        /// The wasmop JS runtime (built by `make plugins`).
        #[arg(long, env = "WASMOP_JS_RUNTIME", default_value_os_t = wasmop_js_build::default_runtime_path())]
        runtime: PathBuf,
        /// Shrink the result with binaryen's wasm-opt when it is installed.
        #[arg(long)]
        wasm_opt: bool,
    },
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("wasmop/plugins")
}

/// Plugin log calls arrive as events of target [`wasmop::plugin::PLUGIN_LOG_TARGET`] inside
/// the reconcile span, so they carry the controller and parent fields; the rest of extism and
/// wasmtime is quiet.
fn default_log_filter() -> String {
    format!(
        "info,extism=warn,{}=info,cranelift=warn,wasmtime=warn",
        wasmop::plugin::PLUGIN_LOG_TARGET
    )
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WASMOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_filter()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested");
}

/// Operator-wide limits on one plugin response: over any of them nothing is written and the
/// parent reports `ResponseTooLarge`.
#[derive(clap::Args, Debug)]
struct ResponseLimitArgs {
    /// Most children one response may return.
    #[arg(long, env = "WASMOP_MAX_RESPONSE_CHILDREN", default_value_t = ResponseLimits::default().children)]
    max_response_children: usize,
    /// Most Events one response may record.
    #[arg(long, env = "WASMOP_MAX_RESPONSE_EVENTS", default_value_t = ResponseLimits::default().events)]
    max_response_events: usize,
    /// Most `apply` patches one response may send.
    #[arg(long, env = "WASMOP_MAX_RESPONSE_APPLY", default_value_t = ResponseLimits::default().apply)]
    max_response_apply: usize,
    /// Most bytes of output one plugin call may return.
    #[arg(long, env = "WASMOP_MAX_RESPONSE_BYTES", default_value_t = ResponseLimits::default().output_bytes)]
    max_response_bytes: usize,
}

impl From<ResponseLimitArgs> for ResponseLimits {
    fn from(a: ResponseLimitArgs) -> Self {
        ResponseLimits {
            children: a.max_response_children,
            events: a.max_response_events,
            apply: a.max_response_apply,
            output_bytes: a.max_response_bytes,
        }
    }
}

/// The operator-wide plugin budget (see `wasmop::plugin::Budget` and docs/security.md).
#[derive(clap::Args, Debug)]
struct PluginBudgetArgs {
    /// Memory budget of all plugins in MiB: each WasmController reserves memoryMiB × its
    /// instances (maxConcurrentReconciles, at most --max-concurrent-plugin-calls) while its plugin
    /// is loaded; a plugin that does not fit is refused (PluginOverBudget).
    #[arg(long, env = "WASMOP_PLUGIN_MEMORY_BUDGET_MIB", default_value_t = Budget::DEFAULT_MEMORY_MIB, value_parser = clap::value_parser!(u64).range(1..))]
    plugin_memory_budget_mib: u64,
    /// Plugin calls running at once, all controllers together, shared round-robin between
    /// controllers (default: twice the CPUs available, at least 4; at most 256: each running
    /// call holds a thread of tokio's blocking pool of 512).
    #[arg(long, env = "WASMOP_MAX_CONCURRENT_PLUGIN_CALLS", default_value_t = Budget::default_max_calls(), value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=Budget::MAX_CALLS as u64))]
    max_concurrent_plugin_calls: usize,
}

impl From<PluginBudgetArgs> for Budget {
    fn from(a: PluginBudgetArgs) -> Self {
        Budget {
            memory_mib: a.plugin_memory_budget_mib,
            max_calls: a.max_concurrent_plugin_calls,
            ..Budget::default()
        }
    }
}

/// Leader election between replicas (see `wasmop::cluster::leader`).
#[derive(clap::Args, Debug)]
struct LeaderElectionArgs {
    /// Take part in leader election with a Lease: only the holder runs controllers; the others
    /// wait as standbys (on in the Helm chart, which runs 2 replicas).
    #[arg(long, env = "WASMOP_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "WASMOP_LEADER_ELECT_LEASE_NAME", default_value = "wasmop")]
    leader_elect_lease_name: String,
    /// Namespace of the Lease, and of the shard Leases with --shard (default: the kubeconfig
    /// context's; in a Pod, its own).
    #[arg(long, env = "WASMOP_LEADER_ELECT_NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// How long a standby waits after the Lease last changed before taking it (with --shard:
    /// before a shard whose Lease has not changed is taken over).
    #[arg(long, env = "WASMOP_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader tries to renew before giving up (and exiting); shorter than the
    /// lease duration.
    #[arg(long, env = "WASMOP_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    leader_elect_renew_deadline: Duration,
    /// How often the leader renews and a standby tries to take the Lease.
    #[arg(long, env = "WASMOP_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = duration)]
    leader_elect_retry_period: Duration,
}

/// Sharding between replicas (see `wasmop::cluster::shard`); the Lease durations and namespace
/// are the `--leader-elect-*` ones.
#[derive(clap::Args, Debug)]
struct ShardArgs {
    /// Share the WasmControllers between replicas: each holds a shard Lease of its own and runs
    /// the WasmControllers a consistent-hash ring assigns to it (instead of --leader-elect).
    #[arg(long, env = "WASMOP_SHARD", conflicts_with = "leader_elect")]
    shard: bool,
    /// This replica's shard name: its Lease's name and holder identity (default: POD_NAME,
    /// else the host name).
    #[arg(long, env = "WASMOP_SHARD_NAME")]
    shard_name: Option<String>,
    /// The ring's name, the shard Leases' `wasmop.dev/ring` label (installations that share a
    /// namespace need different ones).
    #[arg(long, env = "WASMOP_SHARD_RING", default_value = "wasmop")]
    shard_ring: String,
}

impl ShardArgs {
    fn into_options(self, le: &LeaderElectionArgs) -> Option<wasmop::Sharding> {
        self.shard.then(|| wasmop::Sharding {
            name: self
                .shard_name
                .unwrap_or_else(wasmop::cluster::leader::host_name),
            ring: self.shard_ring,
            namespace: le.leader_elect_namespace.clone(),
            lease_duration: le.leader_elect_lease_duration,
            renew_deadline: le.leader_elect_renew_deadline,
            retry_period: le.leader_elect_retry_period,
        })
    }
}

impl From<LeaderElectionArgs> for Option<wasmop::LeaderElection> {
    fn from(a: LeaderElectionArgs) -> Self {
        a.leader_elect.then(|| wasmop::LeaderElection {
            lease_name: a.leader_elect_lease_name,
            namespace: a.leader_elect_namespace,
            identity: wasmop::cluster::leader::default_identity(),
            lease_duration: a.leader_elect_lease_duration,
            renew_deadline: a.leader_elect_renew_deadline,
            retry_period: a.leader_elect_retry_period,
        })
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    wasmop::manager::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 500ms, 15s or 1m"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Oci {
            command:
                OciCommand::Push {
                    plugin,
                    reference,
                    plain_http,
                },
        } => {
            wasmop::install_crypto();
            let wasm = std::fs::read(&plugin)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", plugin.display()))?;
            if !wasm.starts_with(b"\0asm") {
                anyhow::bail!(
                    "{}: not an uncompressed WebAssembly module (the layer is application/wasm; decompress it first)",
                    plugin.display()
                );
            }
            println!(
                "{}",
                wasmop::plugin::remote::push(&reference, wasm, plain_http).await?
            );
            Ok(())
        }
        Command::Crd => {
            print!("{}", wasmop::crd::install_yaml());
            Ok(())
        }
        Command::Js {
            command:
                JsCommand::Build {
                    source,
                    output,
                    runtime,
                    wasm_opt,
                },
        } => js_build(&source, &output, &runtime, wasm_opt).await,
        Command::Init(args) => init_project(args),
        Command::Rbac(args) => print_rbac(&args),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&wasmop_abi::schema())?);
            Ok(())
        }
        Command::Eval(args) => eval(args).await,
        Command::Explain(args) => explain(args).await,
        Command::Graph {
            namespace,
            kubeconfig,
            output,
        } => {
            let opts = wasmop::cli::graph::Options {
                namespace,
                kubeconfig,
                format: output,
            };
            wasmop::cli::graph::graph(&opts, &mut std::io::stdout().lock()).await
        }
    }
}

/// `wasmop init`: writes the project and lists its files; exit 2 with the reason otherwise.
fn init_project(args: InitArgs) -> anyhow::Result<()> {
    let opts = wasmop::cli::init::Options {
        lang: wasmop::cli::init::Lang::parse(&args.lang)?,
        dir: args.dir,
        name: args.name,
        kind: args.kind,
        group: args.group,
        version: args.version,
        children: args.children,
    };
    match wasmop::cli::init::init(&opts) {
        Ok(files) => {
            for file in files {
                println!("wrote {}", opts.dir.join(file).display());
            }
            print!("{}", wasmop::cli::init::next_steps(&opts));
            Ok(())
        }
        Err(e) => exit_with::<wasmop::cli::init::Error>(Err(e)),
    }
}

/// `wasmop rbac`: the RBAC of every WasmController in the file; exit 2 with the reason otherwise.
fn print_rbac(args: &RbacArgs) -> anyhow::Result<()> {
    let controllers = match wasmop::cluster::rbac::read_controllers(&args.file) {
        Ok(c) => c,
        Err(e) => exit_with::<wasmop::cluster::rbac::Error>(Err(e)),
    };
    let docs: Vec<String> = controllers
        .iter()
        .map(|wc| wasmop::cluster::rbac::role_yaml(wc, args.namespace.as_deref()))
        .collect();
    print!("{}", docs.join("---\n"));
    Ok(())
}

/// `wasmop js build`: pre-initialises a JavaScript plugin into a wasm module.
async fn js_build(
    source: &std::path::Path,
    output: &std::path::Path,
    runtime: &std::path::Path,
    wasm_opt: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let js =
        std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
    let runtime = wasmop_js_build::load_runtime(runtime)?;
    let name = source
        .file_name()
        .map_or_else(|| "plugin.js".into(), |n| n.to_string_lossy().into_owned());
    let opt = if wasm_opt {
        wasmop_js_build::WasmOpt::IfInstalled
    } else {
        wasmop_js_build::WasmOpt::Off
    };
    let started = std::time::Instant::now();
    // wasmtime-wasi's synchronous API drives its own runtime: keep it off tokio's threads.
    let plugin = tokio::task::spawn_blocking(move || {
        wasmop_js_build::Builder::new(&runtime)
            .file_name(name)
            .wasm_opt(opt)
            .build(&js)
    })
    .await??;
    if !plugin.console.is_empty() {
        eprint!("{}", plugin.console);
    }
    std::fs::write(output, &plugin.wasm)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote {} ({} bytes{}{}) in {:.1}s",
        output.display(),
        plugin.wasm.len(),
        if plugin.has_finalize {
            ", exports finalize"
        } else {
            ""
        },
        if plugin.wasm_opt_ran {
            ", wasm-opt"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Exit codes of the local tools: 0 success, 1 a failed or blocked result, 2 could not run
/// (printed without a backtrace: these are user-facing messages).
fn exit_with<E: std::fmt::Display>(result: Result<bool, E>) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    match result {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn plugin_call_slots_are_capped_below_the_blocking_pool() {
        let parse =
            |n: &str| Cli::try_parse_from(["wasmop", "run", "--max-concurrent-plugin-calls", n]);
        assert!(parse("256").is_ok());
        let err = parse("257").err().expect("over the cap").to_string();
        assert!(err.contains("--max-concurrent-plugin-calls"), "{err}");
        assert!(err.contains("1..=256"), "{err}");
    }
}
