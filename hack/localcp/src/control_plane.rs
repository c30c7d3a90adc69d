//! [`ControlPlane`]: etcd, kube-apiserver and kube-controller-manager on loopback, or an
//! existing cluster named by `KUBECONFIG`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::Api;

use crate::binaries::{self, Binaries};
use crate::etcd::{self, Etcd};
use crate::kubeconfig::{self, User};
use crate::pki::{self, Pki};
use crate::supervisor::{self, Proc, Supervisor};

/// Errors starting, using or stopping a control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Binaries(#[from] binaries::Error),
    #[error(transparent)]
    Pki(#[from] pki::Error),
    #[error(transparent)]
    Supervisor(#[from] supervisor::Error),
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::Error),
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    #[error("creating the state directory {path}: {source}; set TMPDIR or pass a writable --dir")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("finding a free loopback port: {source}")]
    Port {
        #[source]
        source: std::io::Error,
    },
    /// A process died while the control plane was starting.
    #[error("{name} exited ({status}) while starting; last lines of {}:\n{tail}", log.display())]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// A readiness condition did not become true in time.
    #[error("{what} not ready after {waited:?} (last error: {last_error}); last lines of {}:\n{tail}\n\
             On a busy machine raise Options::start_timeout; see docs/local-control-plane.md (troubleshooting)", log.display())]
    NotReady {
        what: String,
        waited: Duration,
        last_error: String,
        log: PathBuf,
        tail: String,
    },
    /// A fault that needs our own processes was asked of an existing cluster.
    #[error("{operation} needs the local control plane, but this one is the existing cluster from {}; unset KUBECONFIG and WASMOP_USE_EXISTING_CLUSTER to start a local one", kubeconfig.display())]
    External {
        operation: &'static str,
        kubeconfig: PathBuf,
    },
    #[error("KUBECONFIG lists several files ({value}); name exactly one kubeconfig file")]
    KubeconfigList { value: String },
    #[error("the existing cluster's kubeconfig {} does not exist; set KUBECONFIG to a kubeconfig file, or unset it (and WASMOP_USE_EXISTING_CLUSTER) to start a local control plane", path.display())]
    NoKubeconfig { path: PathBuf },
    #[error("the control plane was stopped")]
    Stopped,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A process exited at start-up because its port was taken (the only error `start`
    /// retries). The children report it only in their logs, hence the text match.
    fn is_port_collision(&self) -> bool {
        matches!(self, Error::Exited { tail, .. } if tail.contains("address already in use"))
    }
}

/// Start attempts when a freshly picked port turns out to be taken.
const PORT_ATTEMPTS: u32 = 3;

/// Start-up options. `Options::default()` is what tests want: a fresh control plane (or the
/// cluster from `KUBECONFIG`), normal limits, state in a temporary directory.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server-side fault knobs.
    pub fault: FaultOptions,
    /// Keep state (etcd data, certificates, logs, kubeconfig) in this directory and leave it
    /// there on stop. `None`: a fresh temporary directory, deleted on stop.
    pub dir: Option<PathBuf>,
    /// Honour `KUBECONFIG` / `WASMOP_USE_EXISTING_CLUSTER=1` by starting nothing and using
    /// that cluster. `localcp up` turns this off: it always starts its own.
    pub reuse_from_env: bool,
    /// Start kube-controller-manager (when the binaries include it). Without it there is no
    /// garbage collection, namespace deletion never completes and no service accounts appear.
    pub controller_manager: bool,
    /// Extra kube-apiserver flags, appended last (so they win), e.g. `--v=4`.
    pub extra_apiserver_args: Vec<String>,
    /// How long start-up (and a restart) may take before failing with the logs' tails. A
    /// warm start takes a few seconds; this is generous because tests run on busy machines.
    pub start_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fault: FaultOptions::default(),
            dir: None,
            reuse_from_env: true,
            controller_manager: true,
            extra_apiserver_args: Vec::new(),
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// Faults kube-apiserver makes real when asked. `Default` is a normal server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultOptions {
    /// `--max-requests-inflight`: with API priority and fairness on (the default), this plus
    /// the mutating limit is the server's total concurrency, shared among priority levels;
    /// small values make the server queue and answer 429 under load. `system:masters` (the
    /// admin kubeconfig) is exempt: load must come from other identities (impersonation).
    pub max_requests_inflight: Option<u32>,
    /// `--max-mutating-requests-inflight` (see `max_requests_inflight`).
    pub max_mutating_requests_inflight: Option<u32>,
    /// `--min-request-timeout`: watches that do not ask for a `timeoutSeconds` of their own
    /// end after a random time between this and twice this. kube-rs watchers send
    /// `timeoutSeconds` (290 s by default), so for them use [`crate::FaultConfig::cut_watch_after`].
    pub min_request_timeout: Option<Duration>,
}

impl FaultOptions {
    /// The tightest settings that still let a small test pass: 2 read + 1 mutating seats,
    /// watches without their own timeout end after 5–10 s.
    pub fn tight() -> Self {
        Self {
            max_requests_inflight: Some(2),
            max_mutating_requests_inflight: Some(1),
            min_request_timeout: Some(Duration::from_secs(5)),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(n) = self.max_requests_inflight {
            args.push(format!("--max-requests-inflight={n}"));
        }
        if let Some(n) = self.max_mutating_requests_inflight {
            args.push(format!("--max-mutating-requests-inflight={n}"));
        }
        if let Some(t) = self.min_request_timeout {
            args.push(format!("--min-request-timeout={}", t.as_secs().max(1)));
        }
        args
    }
}

/// A running control-plane process, for diagnostics and the no-orphan guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `etcd`, `kube-apiserver`, `kube-controller-manager` or `watchdog`.
    pub name: String,
    pub pid: u32,
    /// Its combined stdout/stderr (`None` for the watchdog).
    pub log: Option<PathBuf>,
}

/// The Kubernetes control plane for the dev loop and tests.
///
/// # Guarantees
/// - Processes never outlive the launching process, however it ends ([`crate::supervisor`]).
/// - State lives in one directory, deleted on stop or launcher exit unless [`Options::dir`]
///   asked to keep it.
/// - `start` returns only when `/readyz` is OK, the `default` namespace exists and (with a
///   controller manager) the `default` service account has been created, i.e. the
///   controllers run.
///
/// # Caveats
/// kube clients are bound to the tokio runtime that creates them, and each `#[tokio::test]`
/// has its own runtime: call [`ControlPlane::client`] in each test rather than sharing one.
#[derive(Debug)]
pub struct ControlPlane {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Local(Box<Local>),
    External { kubeconfig: PathBuf },
}

#[derive(Debug)]
struct Local {
    dir: PathBuf,
    binaries: Binaries,
    etcd: Etcd,
    apiserver_port: u16,
    apiserver_args: Vec<String>,
    kubeconfig: PathBuf,
    start_timeout: Duration,
    started_in: Duration,
    server_version: String,
    // Processes, in start order. `None` once stopped (or, for the apiserver, mid-restart).
    etcd_proc: Mutex<Option<Proc>>,
    apiserver: Mutex<Option<Proc>>,
    controller_manager: Mutex<Option<Proc>>,
    // Serialises restarts (restart_apiserver from two tasks at once would race for the port).
    restart: tokio::sync::Mutex<()>,
    // Declared last: dropped after the processes, so it deletes the directory last.
    supervisor: Supervisor,
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

/// Environment variable that, set to `1`, makes [`ControlPlane::start`] use the cluster of
/// the default kubeconfig (`~/.kube/config`) when `KUBECONFIG` is unset.
pub const USE_EXISTING_CLUSTER: &str = "WASMOP_USE_EXISTING_CLUSTER";

impl ControlPlane {
    /// Starts a control plane (or adopts the existing cluster, see [`Options::reuse_from_env`]).
    ///
    /// # Errors
    /// Missing binaries (naming `make control-plane`), certificate or file errors, a process
    /// that exits or a condition that is not met within [`Options::start_timeout`] (with the
    /// tail of the relevant log).
    pub async fn start(opts: Options) -> Result<Self> {
        if opts.reuse_from_env
            && let Some(kubeconfig) = existing_cluster_kubeconfig()?
        {
            if opts.fault != FaultOptions::default() {
                tracing::warn!(
                    "FaultOptions are ignored for the existing cluster from {}",
                    kubeconfig.display()
                );
            }
            // Fail now, not in the first test, when the kubeconfig is unusable.
            kubeconfig::config(&kubeconfig).await?;
            return Ok(Self {
                mode: Mode::External { kubeconfig },
            });
        }
        // Ports are picked free but bound by the children a moment later; another process can
        // take one in between. Such a start fails fast, so try again with fresh ports.
        let mut attempt = 1;
        let local = loop {
            match Local::start(opts.clone()).await {
                Err(e) if e.is_port_collision() && attempt < PORT_ATTEMPTS => {
                    tracing::warn!("attempt {attempt}: {e}; retrying with other ports");
                    attempt += 1;
                }
                other => break other?,
            }
        };
        Ok(Self {
            mode: Mode::Local(Box::new(local)),
        })
    }

    /// One control plane per process (per test binary), started on first use with
    /// `Options::default()` and never dropped: the watchdog stops it when the process exits.
    /// Tests share it and isolate themselves with a namespace each
    /// ([`crate::create_test_namespace`]); tests that restart or compact start their own.
    ///
    /// # Errors
    /// As [`ControlPlane::start`]; a failed start is retried by the next caller.
    pub async fn shared() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_try_init(|| async {
                let cp = Self::start(Options::default()).await?;
                match cp.started_in() {
                    Some(t) => eprintln!(
                        "localcp: shared control plane ready in {:.1}s, KUBECONFIG={}{}",
                        t.as_secs_f64(),
                        cp.kubeconfig().display(),
                        if cp.has_controller_manager() {
                            ""
                        } else {
                            " (no kube-controller-manager: no garbage collection, namespace \
                             deletion or service accounts)"
                        }
                    ),
                    None => eprintln!(
                        "localcp: using the existing cluster from {}",
                        cp.kubeconfig().display()
                    ),
                }
                Ok(cp)
            })
            .await
    }

    /// The admin kubeconfig (for an existing cluster: its kubeconfig).
    pub fn kubeconfig(&self) -> &Path {
        match &self.mode {
            Mode::Local(l) => &l.kubeconfig,
            Mode::External { kubeconfig } => kubeconfig,
        }
    }

    /// A new admin client, bound to the calling tokio runtime.
    ///
    /// # Errors
    /// [`Error::Kubeconfig`] when the kubeconfig cannot be read.
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(kubeconfig::client(self.kubeconfig()).await?)
    }

    /// `kubectl --kubeconfig=<admin kubeconfig>`: add arguments and run it.
    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.kubectl_path());
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig().display()));
        cmd
    }

    /// The kubectl to use: the one built by `make control-plane` (or envtest's) when present,
    /// else `kubectl` from PATH.
    pub fn kubectl_path(&self) -> PathBuf {
        match &self.mode {
            Mode::Local(l) => l.binaries.kubectl.clone(),
            Mode::External { .. } => binaries::kubectl_in(binaries::build_dir().ok().as_deref()),
        }
    }

    /// `true` when this is an existing cluster (nothing was started).
    pub fn is_external(&self) -> bool {
        matches!(self.mode, Mode::External { .. })
    }

    /// `true` when a controller manager runs (garbage collection, namespace deletion, service
    /// accounts). Assumed for an existing cluster; `false` with envtest binaries.
    pub fn has_controller_manager(&self) -> bool {
        match &self.mode {
            Mode::Local(l) => lock(&l.controller_manager).is_some(),
            Mode::External { .. } => true,
        }
    }

    /// How long the local start took, from nothing to ready (`None` for an existing cluster).
    pub fn started_in(&self) -> Option<Duration> {
        match &self.mode {
            Mode::Local(l) => Some(l.started_in),
            Mode::External { .. } => None,
        }
    }

    /// `gitVersion` from the local apiserver's `/version` (`None` for an existing cluster).
    pub fn server_version(&self) -> Option<&str> {
        match &self.mode {
            Mode::Local(l) => Some(&l.server_version),
            Mode::External { .. } => None,
        }
    }

    /// `https://127.0.0.1:<port>` of the local apiserver.
    pub fn apiserver_url(&self) -> Option<String> {
        match &self.mode {
            Mode::Local(l) => Some(format!("https://127.0.0.1:{}", l.apiserver_port)),
            Mode::External { .. } => None,
        }
    }

    /// The state directory (certificates, etcd data, logs, kubeconfig).
    pub fn dir(&self) -> Option<&Path> {
        match &self.mode {
            Mode::Local(l) => Some(&l.dir),
            Mode::External { .. } => None,
        }
    }

    /// The running processes (the watchdog last). Empty for an existing cluster.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        let Mode::Local(l) = &self.mode else {
            return Vec::new();
        };
        let mut out: Vec<ProcessInfo> = [&l.etcd_proc, &l.apiserver, &l.controller_manager]
            .into_iter()
            .filter_map(|m| {
                lock(m).as_ref().map(|p| ProcessInfo {
                    name: p.name().to_string(),
                    pid: p.pid(),
                    log: Some(p.log().to_path_buf()),
                })
            })
            .collect();
        out.push(ProcessInfo {
            name: "watchdog".into(),
            pid: l.supervisor.watchdog_pid(),
            log: None,
        });
        out
    }

    /// Stops kube-apiserver and starts it again on the same port with the same etcd: every
    /// watch and connection drops, clients must re-list or resume. Returns once `/readyz` is
    /// OK again.
    ///
    /// # Errors
    /// [`Error::External`] for an existing cluster; start-up errors as for `start`.
    pub async fn restart_apiserver(&self) -> Result<()> {
        let l = self.local("restart_apiserver")?;
        let _serial = l.restart.lock().await;
        let old = lock(&l.apiserver).take();
        if let Some(mut old) = old {
            stop_gracefully(&l.supervisor, &mut old, Duration::from_secs(15)).await;
        }
        let proc = l.spawn_apiserver()?;
        *lock(&l.apiserver) = Some(proc);
        let client = kubeconfig::client(&l.kubeconfig).await?;
        l.wait_ready(&client, l.start_timeout).await?;
        Ok(())
    }

    /// Compacts etcd at its current revision and returns that revision: afterwards, reading or
    /// watching from an older `resourceVersion` that the apiserver cannot serve from its watch
    /// cache fails with 410 Gone (after [`ControlPlane::restart_apiserver`] the cache is
    /// empty, so every older version does).
    ///
    /// # Errors
    /// [`Error::External`] for an existing cluster, [`Error::Etcd`] when etcd refuses.
    pub async fn compact_etcd(&self) -> Result<i64> {
        let l = self.local("compact_etcd")?;
        let revision = l.etcd.revision().await?;
        l.etcd.compact(revision).await?;
        Ok(revision)
    }

    /// Stops everything (controller manager, apiserver, etcd; SIGTERM, then SIGKILL after a
    /// grace period) and deletes the state directory unless [`Options::dir`] kept it. Does
    /// nothing for an existing cluster.
    pub async fn stop(self) {
        let Mode::Local(l) = &self.mode else {
            return;
        };
        for slot in [&l.controller_manager, &l.apiserver, &l.etcd_proc] {
            let taken = lock(slot).take();
            if let Some(mut proc) = taken {
                stop_gracefully(&l.supervisor, &mut proc, Duration::from_secs(10)).await;
            }
        }
        l.supervisor.stop();
        // Drop finds nothing left to do.
    }

    fn local(&self, operation: &'static str) -> Result<&Local> {
        match &self.mode {
            Mode::Local(l) => Ok(l),
            Mode::External { kubeconfig } => Err(Error::External {
                operation,
                kubeconfig: kubeconfig.clone(),
            }),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Mode::Local(l) = &self.mode {
            // No awaiting in Drop: SIGKILL is immediate and the state is throw-away (or kept
            // on purpose, where `stop()` is the orderly way).
            for slot in [&l.controller_manager, &l.apiserver, &l.etcd_proc] {
                if let Some(mut proc) = lock(slot).take() {
                    l.supervisor.stop_proc(&mut proc, Duration::ZERO);
                }
            }
            l.supervisor.stop();
        }
    }
}

/// The kubeconfig of the existing cluster to use, if the environment asks for one.
fn existing_cluster_kubeconfig() -> Result<Option<PathBuf>> {
    let path = match std::env::var("KUBECONFIG") {
        Ok(v) if !v.is_empty() => {
            if v.contains(':') {
                return Err(Error::KubeconfigList { value: v });
            }
            PathBuf::from(v)
        }
        _ if std::env::var(USE_EXISTING_CLUSTER).is_ok_and(|v| v == "1" || v == "true") => {
            let home = std::env::var_os("HOME").ok_or(binaries::Error::NoHome)?;
            PathBuf::from(home).join(".kube/config")
        }
        _ => return Ok(None),
    };
    if !path.is_file() {
        return Err(Error::NoKubeconfig { path });
    }
    Ok(Some(path))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGTERM, wait up to `grace` without blocking the runtime, SIGKILL; then the watchdog
/// forgets the PID.
async fn stop_gracefully(supervisor: &Supervisor, proc: &mut Proc, grace: Duration) {
    if proc.exited().is_none() && proc.terminate() {
        let deadline = Instant::now() + grace;
        while proc.exited().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    supervisor.stop_proc(proc, Duration::ZERO);
}

fn free_port() -> Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Port { source })
}

/// A fresh state directory under the system temp dir, private to this user.
fn temp_state_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "localcp-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|source| Error::StateDir {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The service-account issuer (and default API audience) of local control planes.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The service network (no kube-proxy runs; services get cluster IPs from here).
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

impl Local {
    async fn start(opts: Options) -> Result<Self> {
        let began = Instant::now();
        let binaries = Binaries::locate()?;
        let (dir, keep) = match &opts.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::StateDir {
                    path: dir.clone(),
                    source,
                })?;
                (
                    std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
                    true,
                )
            }
            None => (temp_state_dir()?, false),
        };
        // From here on the watchdog owns the directory's deletion, even if we are killed.
        let supervisor = Supervisor::start((!keep).then_some(dir.as_path()))?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| Error::StateDir {
            path: logs.clone(),
            source,
        })?;
        let pki = Pki::generate(&dir.join("pki"))?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd = Etcd {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, etcd_port)),
        };
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = vec![
            "--name=localcp".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=localcp={peer_url}"),
            // Throw-away data on a dev machine: skip fsync, which dominates etcd's latency.
            "--unsafe-no-fsync".to_string(),
            "--log-level=warn".to_string(),
        ];
        let mut etcd_proc =
            supervisor.spawn("etcd", &binaries.etcd, &etcd_args, &logs.join("etcd.log"))?;
        wait_for(
            "etcd /health",
            opts.start_timeout,
            || exited_error(&mut etcd_proc),
            logs.join("etcd.log"),
            || async {
                etcd.healthy()
                    .await
                    .then_some(())
                    .ok_or_else(|| "unhealthy or not listening yet".to_string())
            },
        )
        .await?;

        let apiserver_port = free_port()?;
        let kubeconfig = dir.join("kubeconfig");
        kubeconfig::write(
            &kubeconfig,
            "localcp",
            &format!("https://127.0.0.1:{apiserver_port}"),
            Some(&pki.ca_cert),
            User::ClientCert {
                cert: &pki.admin_cert,
                key: &pki.admin_key,
            },
        )?;
        let mut apiserver_args = vec![
            format!("--etcd-servers={client_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_private_key.display()
            ),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            // No nodes, no kube-proxy: a loopback endpoint for the `kubernetes` service would
            // be invalid, so do not reconcile it.
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        apiserver_args.extend(opts.fault.args());
        apiserver_args.extend(opts.extra_apiserver_args.iter().cloned());

        let mut local = Self {
            dir,
            etcd,
            apiserver_port,
            apiserver_args,
            kubeconfig,
            start_timeout: opts.start_timeout,
            started_in: Duration::ZERO,
            server_version: String::new(),
            etcd_proc: Mutex::new(Some(etcd_proc)),
            apiserver: Mutex::new(None),
            controller_manager: Mutex::new(None),
            restart: tokio::sync::Mutex::new(()),
            binaries,
            supervisor,
        };
        let apiserver = local.spawn_apiserver()?;
        *lock(&local.apiserver) = Some(apiserver);
        let client = kubeconfig::client(&local.kubeconfig).await?;
        local.wait_ready(&client, opts.start_timeout).await?;

        let namespaces: Api<Namespace> = Api::all(client.clone());
        local
            .wait_api("the default namespace", opts.start_timeout, || async {
                match namespaces.get_opt("default").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err("not created yet".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await?;

        if let Some(kcm) = local
            .binaries
            .kube_controller_manager
            .clone()
            .filter(|_| opts.controller_manager)
        {
            let args = vec![
                format!("--kubeconfig={}", local.kubeconfig.display()),
                "--controllers=garbage-collector-controller,namespace-controller,\
                 serviceaccount-controller,serviceaccount-token-controller,\
                 clusterrole-aggregation-controller"
                    .into(),
                format!(
                    "--service-account-private-key-file={}",
                    pki.sa_private_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                "--leader-elect=false".into(),
                // Nothing scrapes it, and a fixed port would collide between control planes.
                "--secure-port=0".into(),
                "--use-service-account-credentials=false".into(),
                "--profiling=false".into(),
            ];
            let proc = local.supervisor.spawn(
                "kube-controller-manager",
                &kcm,
                &args,
                &logs.join("kube-controller-manager.log"),
            )?;
            *lock(&local.controller_manager) = Some(proc);
            // The service-account controller creating `default` proves the controllers run.
            let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            local
                .wait_api(
                    "kube-controller-manager (default service account)",
                    opts.start_timeout,
                    || async {
                        match accounts.get_opt("default").await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err("not created yet".to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    },
                )
                .await?;
        } else {
            tracing::warn!(
                "no kube-controller-manager ({}): no garbage collection, namespace deletion or service accounts",
                if opts.controller_manager {
                    local.binaries.source
                } else {
                    "disabled by Options::controller_manager"
                }
            );
        }

        local.server_version = client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();
        local.started_in = began.elapsed();
        tracing::info!(
            kubeconfig = %local.kubeconfig.display(),
            version = %local.server_version,
            "control plane ready in {:.1}s",
            local.started_in.as_secs_f64()
        );
        Ok(local)
    }

    fn spawn_apiserver(&self) -> Result<Proc> {
        Ok(self.supervisor.spawn(
            "kube-apiserver",
            &self.binaries.kube_apiserver,
            &self.apiserver_args,
            &self.dir.join("logs/kube-apiserver.log"),
        )?)
    }

    /// Waits for `/readyz` (which includes etcd, the RBAC bootstrap roles and the post-start
    /// hooks).
    async fn wait_ready(&self, client: &kube::Client, timeout: Duration) -> Result<()> {
        self.wait_api("kube-apiserver /readyz", timeout, || async {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request is valid");
            client
                .request_text(request)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Polls `check` until it succeeds, failing early when any process exits.
    async fn wait_api<F, Fut>(&self, what: &str, timeout: Duration, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let exited = || {
            [&self.etcd_proc, &self.apiserver, &self.controller_manager]
                .into_iter()
                .find_map(|slot| lock(slot).as_mut().and_then(exited_error))
        };
        wait_for(
            what,
            timeout,
            exited,
            self.dir.join("logs/kube-apiserver.log"),
            check,
        )
        .await
    }
}

/// [`Error::Exited`] when `proc` has exited.
fn exited_error(proc: &mut Proc) -> Option<Error> {
    proc.exited().map(|status| Error::Exited {
        name: proc.name().to_string(),
        status: status.to_string(),
        log: proc.log().to_path_buf(),
        tail: proc.log_tail(40),
    })
}

/// Polls `check` every 200 ms until it returns `Ok`, `timeout` passes (error with the tail of
/// `log`) or `exited` reports a process that died (its error carries that process's log).
async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<Error>,
    log: PathBuf,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let began = Instant::now();
    loop {
        if let Some(err) = exited() {
            return Err(err);
        }
        let last_error = match tokio::time::timeout(Duration::from_secs(5), check()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "check timed out after 5s".to_string(),
        };
        if began.elapsed() >= timeout {
            return Err(Error::NotReady {
                what: what.to_string(),
                waited: began.elapsed(),
                last_error,
                tail: supervisor::log_tail(&log, 40),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tight_faults_become_apiserver_flags() {
        assert_eq!(
            FaultOptions::tight().args(),
            [
                "--max-requests-inflight=2",
                "--max-mutating-requests-inflight=1",
                "--min-request-timeout=5"
            ]
        );
        assert!(FaultOptions::default().args().is_empty());
    }

    #[test]
    fn free_ports_are_real_ports() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
