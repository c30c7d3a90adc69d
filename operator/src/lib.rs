//! wasmop: a Kubernetes operator whose reconcile logic is user-supplied WebAssembly.
//!
//! A team `kubectl apply`s a [`crd::WasmController`] naming a parent kind, child kinds and an
//! Extism plugin; wasmop runs a dynamic controller for it that feeds each parent (with its
//! children and related objects) to the plugin and server-side-applies what comes back, as
//! the team's own ServiceAccount.
//!
//! Where things are (folders by role; the reconcile path reads top-down from
//! `reconcile/controller.rs`):
//! - [`manager`]: watches WasmControllers; starts, hot-reloads and stops their controllers.
//! - [`reconcile`]: one parent's reconcile: gather → plugin call → plan → execute, with
//!   related objects, finalizers and field conflicts.
//! - [`plugin`]: the Extism host (the only module naming extism/wasmtime) and where plugin
//!   bytes come from (ConfigMap, JavaScript, URL, OCI, file).
//! - [`cluster`]: watches, impersonated access, RBAC rules, discovery, API errors, the Leases
//!   (leader election, shards and their ring).
//! - [`metrics`]: Prometheus metrics and health endpoints.
//! - [`crd`]: the WasmController type and its CRD.
//! - [`cli`]: `wasmop eval`, `explain`, `graph`, `init`.

pub mod cli;
pub mod cluster;
pub mod crd;
pub mod manager;
pub mod metrics;
pub mod plugin;
pub mod reconcile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Why no client configuration could be found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("finding a kubeconfig (KUBECONFIG, ~/.kube/config, in-cluster): {0}")]
    Infer(#[from] kube::config::InferConfigError),
}

/// The client configuration: the `kubeconfig` file when given, else KUBECONFIG,
/// `~/.kube/config` or the in-cluster configuration (what `kubectl` would use).
///
/// # Errors
/// The file cannot be read or names no usable context; nothing can be inferred.
pub async fn client_config(
    kubeconfig: Option<&std::path::Path>,
) -> Result<kube::Config, ConfigError> {
    Ok(match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    })
}

/// Makes ring the process's TLS crypto provider (the one kube uses), for the HTTP client of
/// `url` and `oci` plugin sources. Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Settings of `wasmop run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// A kubeconfig file to use instead of KUBECONFIG / in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Compiled-plugin cache across restarts (None: no on-disk cache).
    pub cache_dir: Option<PathBuf>,
    /// Allow `spec.plugin.source.file` (development only).
    pub allow_file_plugins: bool,
    /// The JavaScript runtime `spec.plugin.source.javaScript` sources are built with.
    pub js_runtime: PathBuf,
    /// Hosts `url` and `oci` plugin sources may name, plain-HTTP hosts, required signers.
    pub remote: plugin::remote::Policy,
    /// Operator-wide limits on one plugin response.
    pub response_limits: reconcile::plan::ResponseLimits,
    /// Operator-wide plugin memory budget, call slots and idle-instance expiry.
    pub plugin_budget: plugin::Budget,
    /// Leader election (None: this process always leads).
    pub leader_election: Option<LeaderElection>,
    /// Sharding (None: this process runs every WasmController, or none as a standby).
    pub sharding: Option<Sharding>,
}

/// `--leader-elect` and its settings; the namespace defaults to the client's (in a Pod: its own).
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub namespace: Option<String>,
    pub identity: String,
    pub lease_duration: std::time::Duration,
    pub renew_deadline: std::time::Duration,
    pub retry_period: std::time::Duration,
}

/// `--shard` and its settings; the namespace defaults to the client's (in a Pod: its own).
#[derive(Clone, Debug)]
pub struct Sharding {
    /// This replica's shard name (its Lease's name and holder identity).
    pub name: String,
    /// The ring's name (the shard Leases' `wasmop.dev/ring` label).
    pub ring: String,
    pub namespace: Option<String>,
    pub lease_duration: std::time::Duration,
    pub renew_deadline: std::time::Duration,
    pub retry_period: std::time::Duration,
}

/// Runs the operator until `shutdown` resolves. With leader election, it waits as a standby
/// (serving `/metrics`, `/healthz` and `/readyz`, writing nothing) until it holds the Lease.
/// With sharding, it holds a shard Lease of its own and runs the WasmControllers assigned to
/// it (`manager/assign.rs`).
///
/// # Errors
/// No usable kubeconfig / in-cluster config, the metrics address cannot be bound, the plugin
/// cache directory cannot be created, Lease settings that allow two writers, or the leader
/// Lease was lost (the process must then exit: it may no longer write).
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    install_crypto();
    let mut config = client_config(opts.kubeconfig.as_deref()).await?;
    // Who wrote what, in the API server's audit log: the version and, with --shard, the shard.
    let agent = match &opts.sharding {
        Some(s) => format!("wasmop/{} shard/{}", env!("CARGO_PKG_VERSION"), s.name),
        None => format!("wasmop/{}", env!("CARGO_PKG_VERSION")),
    };
    config.headers.push((
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_str(&agent)?,
    ));
    let client = kube::Client::try_from(config.clone())?;
    let version = client.apiserver_version().await?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    let mut elector = leader_elector(opts.leader_election.clone(), &config, &client)?;
    let sharding = shard_settings(opts.sharding.clone(), &config)?;
    let metrics = metrics::Metrics::new();
    let host = plugin::Host::with_budget(opts.cache_dir.clone(), opts.plugin_budget)?;
    let readiness = metrics::Readiness::default();
    let bound = metrics::serve(
        opts.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        refresh_from(&host),
    )
    .await?;
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    let mut shutdown = std::pin::pin!(shutdown);
    if let Some(elector) = &mut elector {
        readiness.standby();
        let s = elector.settings();
        tracing::info!(lease = %format!("{}/{}", s.namespace, s.lease_name), identity = %s.identity, "standby: waiting for the leader Lease");
        tokio::select! {
            () = elector.acquire() => {}
            () = &mut shutdown => return Ok(()),
        }
    }
    let membership = sharding.map(|settings| {
        tracing::info!(shard = %settings.name, ring = %settings.ring, namespace = %settings.namespace, "sharding: holding a shard Lease of its own");
        metrics
            .shard
            .lease_duration_seconds
            .set(settings.lease_duration.as_secs_f64());
        let membership =
            cluster::shard::Membership::start(client.clone(), settings, metrics.clone());
        readiness.shard(membership.tenures());
        membership
    });
    if membership.is_none() {
        readiness.leader();
        metrics.leader.set(1);
    }
    let ctx = Arc::new(manager::Context {
        watches: Arc::new(cluster::watches::Watches::new(metrics.clone())),
        host,
        loader: Arc::new(
            plugin::source::Loader::new(opts.allow_file_plugins, opts.js_runtime, opts.cache_dir)
                .with_remote(opts.remote),
        ),
        access: Arc::new(cluster::access::Access::new(client.clone())),
        client,
        config,
        metrics,
        response_limits: opts.response_limits,
        board: Arc::new(reconcile::conflicts::Board::default()),
        shard: membership.clone(),
    });
    let Some(elector) = &mut elector else {
        manager::run(ctx, readiness.synced, shutdown).await;
        if let Some(membership) = membership {
            // Every controller has stopped: the others take its WasmControllers at once.
            membership.release().await;
        }
        return Ok(());
    };
    tokio::select! {
        () = manager::run(ctx, readiness.synced, shutdown) => {}
        () = elector.hold() => anyhow::bail!(
            "lost the leader Lease: exiting so that nothing is written without it (a new process starts as a standby)"
        ),
    }
    // Every controller has stopped: hand the Lease over now rather than at its expiry.
    if let Err(error) = elector.release().await {
        tracing::warn!(%error, "could not release the leader Lease; a standby takes over when it expires");
    }
    Ok(())
}

/// The leader elector of `--leader-elect`.
fn leader_elector(
    le: Option<LeaderElection>,
    config: &kube::Config,
    client: &kube::Client,
) -> Result<Option<cluster::leader::Elector>, cluster::leader::SettingsError> {
    let Some(le) = le else {
        return Ok(None);
    };
    let settings = cluster::leader::Settings {
        namespace: le
            .namespace
            .unwrap_or_else(|| config.default_namespace.clone()),
        lease_name: le.lease_name,
        identity: le.identity,
        lease_duration: le.lease_duration,
        renew_deadline: le.renew_deadline,
        retry_period: le.retry_period,
        labels: Default::default(),
        process: None,
    };
    settings.validate()?;
    Ok(Some(cluster::leader::Elector::new(
        client.clone(),
        settings,
    )))
}

/// The shard settings of `--shard`.
fn shard_settings(
    sharding: Option<Sharding>,
    config: &kube::Config,
) -> Result<Option<cluster::shard::Settings>, cluster::shard::SettingsError> {
    let Some(s) = sharding else {
        return Ok(None);
    };
    let settings = cluster::shard::Settings {
        name: s.name,
        ring: s.ring,
        namespace: s
            .namespace
            .unwrap_or_else(|| config.default_namespace.clone()),
        lease_duration: s.lease_duration,
        renew_deadline: s.renew_deadline,
        retry_period: s.retry_period,
    };
    settings.validate()?;
    Ok(Some(settings))
}

/// Gauges read from the plugin host at each scrape.
fn refresh_from(host: &plugin::Host) -> metrics::Refresh {
    let host = host.clone();
    Arc::new(move |m: &metrics::Metrics| {
        const MIB: u64 = 1024 * 1024;
        let bytes = |mib: u64| i64::try_from(mib.saturating_mul(MIB)).unwrap_or(i64::MAX);
        m.plugin_memory_reserved_bytes
            .set(bytes(host.memory_reserved_mib()));
        m.plugin_memory_budget_bytes
            .set(bytes(host.budget().memory_mib));
        m.plugin_calls_running
            .set(i64::try_from(host.calls_running()).unwrap_or(i64::MAX));
        m.plugin_call_slots
            .set(i64::try_from(host.budget().max_calls).unwrap_or(i64::MAX));
    })
}
