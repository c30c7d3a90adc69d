//! Shared harness for the end-to-end tests in `tests/tests/`: the real control plane
//! (`localcp`), the real `wasmop` binary, real plugins built by `make plugins`.
//!
//! One control plane and one operator per test binary (both torn down by localcp's watchdog
//! when the binary exits, however it exits); one namespace per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use localcp::ControlPlane;
use localcp::supervisor::{Proc, Supervisor};
use tokio::sync::OnceCell;

pub mod shards;
pub mod website;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// A plugin built by `make plugins` (`target/plugins/<name>.wasm`).
pub fn plugin(name: &str) -> Vec<u8> {
    let path = target_dir().join("plugins").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first with `make plugins`",
            path.display()
        )
    })
}

/// The running operator of this test binary.
pub struct Operator {
    pub metrics_url: String,
    pub log: PathBuf,
    _supervisor: Supervisor,
    _proc: std::sync::Mutex<Proc>,
}

static OPERATOR: OnceCell<Operator> = OnceCell::const_new();
static CRDS: OnceCell<()> = OnceCell::const_new();

/// The shared control plane, with the WasmController and sample CRDs installed.
pub async fn cluster() -> Result<&'static ControlPlane> {
    let cp = ControlPlane::shared().await?;
    CRDS.get_or_try_init(|| async { install_crds(cp) }).await?;
    Ok(cp)
}

/// The `wasmop` binary under test: `$WASMOP_BIN`, else `<target dir>/debug/wasmop`.
///
/// # Errors
/// It has not been built.
pub fn wasmop_bin() -> Result<PathBuf> {
    let bin = std::env::var_os("WASMOP_BIN")
        .map_or_else(|| target_dir().join("debug/wasmop"), PathBuf::from);
    if !bin.exists() {
        bail!(
            "{} not found: build it first (`make build`, or `cargo build -p wasmop`)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The shared control plane and the real `wasmop` binary running against it, as a
/// ServiceAccount with only the operator's documented rights (`samples/operator/rbac.yaml`,
/// plus `samples/website/operator-rbac.yaml` for the Website parent kind).
/// `WASMOP_E2E_ADMIN=1` runs it with the admin kubeconfig instead (to tell an RBAC problem
/// from another).
pub async fn operator() -> Result<(&'static ControlPlane, &'static Operator)> {
    let cp = cluster().await?;
    let op = OPERATOR
        .get_or_try_init(|| async {
            if std::env::var_os("WASMOP_E2E_ADMIN").is_some() {
                return start_operator(cp.kubeconfig()).await;
            }
            start_operator_as_account(cp, true).await
        })
        .await?;
    Ok((cp, op))
}

/// Starts `wasmop run` as its documented account ([`operator_account`]); the kubeconfig
/// with the account's token is deleted once wasmop has read it.
///
/// # Errors
/// As [`operator_account`] and [`start_operator`].
pub async fn start_operator_as_account(
    cp: &'static ControlPlane,
    release_websites: bool,
) -> Result<Operator> {
    let kubeconfig = operator_account(cp, release_websites).await?;
    let started = start_operator(&kubeconfig).await;
    if let Some(dir) = kubeconfig.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    started
}

/// The operator's account as documented: a namespace of its own with `samples/operator/rbac.yaml`
/// applied, and (with `release_websites`) `samples/website/operator-rbac.yaml`, aggregated.
/// Returns a kubeconfig with a token of that ServiceAccount.
///
/// # Errors
/// Applying the RBAC, aggregation not happening within a minute, or minting the token.
pub async fn operator_account(
    cp: &'static ControlPlane,
    release_websites: bool,
) -> Result<PathBuf> {
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, "wasmop-system").await?;
    let rbac = std::fs::read_to_string(root().join("samples/operator/rbac.yaml"))?
        .replace("wasmop-system", &ns);
    kubectl_stdin(cp, &["apply", "-f", "-"], Some(&rbac))?;
    if release_websites {
        let kinds = std::fs::read_to_string(root().join("samples/website/operator-rbac.yaml"))?;
        kubectl_stdin(cp, &["apply", "-f", "-"], Some(&kinds))?;
        wait_aggregated(&client, "wasmop-release-finalizers").await?;
    }
    account_kubeconfig(cp, &ns, "wasmop")
}

/// A kubeconfig for `cp` with a fresh 4 h token of ServiceAccount `ns/account` (each call a
/// token of its own: the API server's audit log tells them apart by credential id), whose
/// default namespace is `ns`, as in a Pod (where the operator's leader Lease lives).
///
/// # Errors
/// Minting the token or writing the file.
pub fn account_kubeconfig(cp: &ControlPlane, ns: &str, account: &str) -> Result<PathBuf> {
    let token = kubectl(cp, &["create", "token", account, "-n", ns, "--duration=4h"])?;
    let mut config: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig())?)?;
    config["users"] = serde_json::json!([{"name": account, "user": {"token": token.trim()}}]);
    config["contexts"][0]["context"]["user"] = serde_json::json!(account);
    config["contexts"][0]["context"]["namespace"] = serde_json::json!(ns);
    // A directory per call: tempdir's names may repeat within a process, and
    // start_operator_as_account deletes the directory once wasmop has read the file.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = tempdir(&format!("wasmop-account-{n}"))?.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// A pinned tool built by `hack/tools.sh` (helm, promtool, crane, cosign): built on first use (a no-op
/// when its stamp is current), so a test never runs against an unpinned one from PATH.
///
/// # Errors
/// The build fails (its output is in the error).
pub fn tool(name: &str) -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg(root().join("hack/tools.sh"))
        .arg(name)
        .output()
        .context("running hack/tools.sh")?;
    if !out.status.success() {
        bail!(
            "hack/tools.sh {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(dir.lines().last().unwrap_or_default().trim()).join(name))
}

/// Waits until kube-controller-manager has aggregated rules into the ClusterRole `name`.
///
/// # Errors
/// It has no rules after a minute.
pub async fn wait_aggregated(client: &kube::Client, name: &str) -> Result<()> {
    let roles: kube::Api<k8s_openapi::api::rbac::v1::ClusterRole> = kube::Api::all(client.clone());
    eventually(
        Duration::from_secs(60),
        &format!("ClusterRole {name} aggregated"),
        || async {
            Ok(roles
                .get(name)
                .await?
                .rules
                .is_some_and(|r| !r.is_empty())
                .then_some(()))
        },
    )
    .await
}

/// The arguments of `wasmop run` in a test: metrics on `port`, the plugin cache in `dir`.
fn run_args(port: u16, dir: &Path, kubeconfig: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
        "--cache-dir".into(),
        dir.join("cache").to_string_lossy().into(),
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into(),
        // Test namespaces are not deleted, so a binary's controllers add up over its tests:
        // a budget that never bites here (the budget itself is tested in plugin_host.rs).
        "--plugin-memory-budget-mib".into(),
        "65536".into(),
        // url and oci plugin sources from the tests' own servers on loopback (plain HTTP).
        "--plugin-host".into(),
        "127.0.0.1".into(),
        "--insecure-plugin-host".into(),
        "127.0.0.1".into(),
    ]
}

/// Starts another `wasmop run` with the credentials of `kubeconfig` (e.g. a ServiceAccount
/// token with only the operator's documented rights); stopped when the returned value drops.
///
/// # Errors
/// It cannot be started or does not become ready within 60 s (the error has its log).
pub async fn start_operator(kubeconfig: &Path) -> Result<Operator> {
    let bin = wasmop_bin()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempdir("wasmop-e2e")?;
    // WASMOP_E2E_KEEP=1 keeps the operator's log and cache for a post-mortem.
    let keep = std::env::var_os("WASMOP_E2E_KEEP").is_some();
    if keep {
        eprintln!("wasmop-e2e: keeping {}", dir.display());
    }
    let supervisor = Supervisor::start((!keep).then_some(dir.as_path()))?;
    let log = dir.join("wasmop.log");
    let args = run_args(port, &dir, kubeconfig);
    let proc = supervisor.spawn("wasmop", &bin, &args, &log)?;
    let metrics_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&format!("{metrics_url}/readyz"))
        .await
        .ok()
        .map(|(code, _)| code)
        != Some(200)
    {
        if Instant::now() > deadline {
            bail!(
                "wasmop did not become ready in 60 s; log {}:\n{}",
                log.display(),
                localcp::supervisor::log_tail(&log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Operator {
        metrics_url,
        log,
        _supervisor: supervisor,
        _proc: std::sync::Mutex::new(proc),
    })
}

impl Operator {
    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(http_get(&format!("{}/metrics", self.metrics_url)).await?.1)
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_in(&self.metrics().await?, name, labels))
    }

    /// The last lines of the operator's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        localcp::supervisor::log_tail(&self.log, lines)
    }
}

/// Runs kubectl against `cp`; fails with its stderr.
pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    kubectl_stdin(cp, args, None)
}

/// Runs kubectl with `stdin` piped in (e.g. `apply -f -`).
pub fn kubectl_stdin(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut cmd: Command = cp.kubectl();
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting kubectl")?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `probe` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A minimal HTTP/1.0 GET over loopback (the operator's metrics endpoint): status and body.
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http:// URL")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("HTTP status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Installs the WasmController CRD (with its admission policy) and the Website sample CRD on
/// `cp` and waits until they are served: what [`cluster`] does for the shared control plane,
/// for tests that start a control plane of their own (restarts, compaction).
///
/// # Errors
/// kubectl fails or the CRDs are not Established within 60 s.
pub fn install_crds(cp: &ControlPlane) -> Result<()> {
    let root = root();
    for file in ["crds/wasmcontroller.yaml", "samples/website/crd.yaml"] {
        kubectl(
            cp,
            &[
                "apply",
                "--server-side",
                "-f",
                &root.join(file).to_string_lossy(),
            ],
        )?;
    }
    kubectl(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/wasmcontrollers.wasmop.dev",
            "crd/websites.example.com",
        ],
    )?;
    Ok(())
}

/// The real third-party CRDs pinned in hack/versions.env (Cluster API's Machine, Gateway API's
/// GatewayClass, Gateway and HTTPRoute), fetched by `hack/crds.sh` on first use (a no-op when
/// stamped), applied to `cp` as they ship, and served.
///
/// # Errors
/// The fetch or kubectl fails, or the CRDs are not Established within 60 s.
pub fn install_real_crds(cp: &ControlPlane) -> Result<()> {
    let out = Command::new("bash")
        .arg(root().join("hack/crds.sh"))
        .output()
        .context("running hack/crds.sh")?;
    if !out.status.success() {
        bail!(
            "hack/crds.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut files: Vec<PathBuf> = Vec::new();
    for module in std::fs::read_dir(&dir)? {
        for file in std::fs::read_dir(module?.path())? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "yaml") {
                files.push(file);
            }
        }
    }
    files.sort();
    for file in &files {
        kubectl(
            cp,
            &["apply", "--server-side", "-f", &file.to_string_lossy()],
        )?;
    }
    kubectl(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/machines.cluster.x-k8s.io",
            "crd/httproutes.gateway.networking.k8s.io",
            "crd/gateways.gateway.networking.k8s.io",
        ],
    )?;
    Ok(())
}

/// Sum of a metric's samples in Prometheus text `text` whose label set contains every
/// `labels` pair (what [`Operator::metric`] computes, for any metrics text).
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// How [`RestartableOperator::stop`] ends the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWith {
    /// SIGTERM: a graceful shutdown (SIGKILL only if it outlives the grace period).
    Term,
    /// SIGKILL: a crash, mid-whatever it was doing.
    Kill,
}

/// How a [`RestartableOperator::stop`] went.
#[derive(Clone, Copy, Debug)]
pub struct Stopped {
    /// From the signal to the process having exited.
    pub after: Duration,
    /// The grace period passed after SIGTERM and the process had to be SIGKILLed.
    pub forced: bool,
    pub status: Option<std::process::ExitStatus>,
}

/// A `wasmop run` that a test can stop (SIGTERM or SIGKILL) and start again with the same
/// flags, the same metrics address, the same log (appended) and the same compiled-plugin
/// cache, as a Deployment restarting its pod would. Never shares a control plane with
/// [`operator`]'s (two operators would fight). Stopped when dropped.
pub struct RestartableOperator {
    /// `http://127.0.0.1:<port>`: the same for every start.
    pub metrics_url: String,
    /// Every start's output, appended, with a `=== e2e: ...` line where the test noted
    /// something ([`RestartableOperator::note`]).
    pub log: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    proc: std::sync::Mutex<Option<Proc>>,
    starts: std::sync::atomic::AtomicU32,
    // Last: dropped after the process, so it deletes the directory last.
    supervisor: Supervisor,
}

impl RestartableOperator {
    /// Starts `wasmop run --kubeconfig <kubeconfig>` and waits for `/readyz` (60 s).
    ///
    /// # Errors
    /// It cannot be started or does not become ready (the error has its log's tail).
    pub async fn start(kubeconfig: &Path) -> Result<Self> {
        Self::start_with(kubeconfig, &[]).await
    }

    /// [`RestartableOperator::start`] with extra `wasmop run` arguments (e.g. `--leader-elect`),
    /// kept for every restart.
    ///
    /// # Errors
    /// As [`RestartableOperator::start`].
    pub async fn start_with(kubeconfig: &Path, extra: &[&str]) -> Result<Self> {
        let bin = wasmop_bin()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // A name of its own (tempdir's may repeat within one process).
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wasmop-e2e-restartable-{}-{}-{port}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let keep = std::env::var_os("WASMOP_E2E_KEEP").is_some();
        if keep {
            eprintln!("wasmop-e2e: keeping {}", dir.display());
        }
        let supervisor = Supervisor::start((!keep).then_some(dir.as_path()))?;
        // Every start runs this copy: the same build, even when target/debug/wasmop is
        // rebuilt (or half-written) meanwhile.
        let copy = dir.join("wasmop");
        std::fs::copy(&bin, &copy)
            .with_context(|| format!("copying {} to {}", bin.display(), copy.display()))?;
        let bin = copy;
        let mut args = run_args(port, &dir, kubeconfig);
        args.extend(extra.iter().map(|a| (*a).to_string()));
        let op = Self {
            metrics_url: format!("http://127.0.0.1:{port}"),
            log: dir.join("wasmop.log"),
            bin,
            args,
            proc: std::sync::Mutex::new(None),
            starts: std::sync::atomic::AtomicU32::new(0),
            supervisor,
        };
        op.spawn()?;
        op.wait_ready(Duration::from_secs(60)).await?;
        Ok(op)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Proc>> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new process (when none runs); does not wait for it.
    ///
    /// # Errors
    /// One is still running, or it cannot be spawned.
    pub fn spawn(&self) -> Result<()> {
        let mut slot = self.lock();
        if let Some(proc) = slot.as_mut()
            && proc.exited().is_none()
        {
            bail!("wasmop (pid {}) is still running", proc.pid());
        }
        if let Some(mut old) = slot.take() {
            self.supervisor.stop_proc(&mut old, Duration::ZERO);
        }
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.append_log(&format!("=== e2e: start {} ===", n + 1));
        *slot = Some(
            self.supervisor
                .spawn("wasmop", &self.bin, &self.args, &self.log)?,
        );
        Ok(())
    }

    /// Waits until `/readyz` answers 200; returns how long that took.
    ///
    /// # Errors
    /// The process exits or `timeout` passes (with the log's tail).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let began = Instant::now();
        loop {
            if self.readyz().await == Some(200) {
                return Ok(began.elapsed());
            }
            if let Some(status) = self.lock().as_mut().and_then(Proc::exited) {
                bail!(
                    "wasmop exited ({status}) before becoming ready; log {}:\n{}",
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            if began.elapsed() > timeout {
                bail!(
                    "wasmop did not become ready in {timeout:?}; log {}:\n{}",
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/readyz`'s status code, `None` when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        http_get(&format!("{}/readyz", self.metrics_url))
            .await
            .ok()
            .map(|(code, _)| code)
    }

    /// Stops the running process: SIGTERM (SIGKILL after `grace`) or SIGKILL at once.
    ///
    /// # Errors
    /// No process runs.
    pub async fn stop(&self, how: StopWith, grace: Duration) -> Result<Stopped> {
        let mut proc = self.lock().take().context("no wasmop process is running")?;
        self.append_log(&format!("=== e2e: stopping with {how:?} ==="));
        let began = Instant::now();
        let mut forced = false;
        let status = match how {
            StopWith::Kill => proc.kill_now(),
            StopWith::Term => {
                proc.terminate();
                loop {
                    if let Some(status) = proc.exited() {
                        break Some(status);
                    }
                    if began.elapsed() > grace {
                        forced = true;
                        break proc.kill_now();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let after = began.elapsed();
        self.supervisor.stop_proc(&mut proc, Duration::ZERO);
        Ok(Stopped {
            after,
            forced,
            status,
        })
    }

    /// The running process's PID.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Proc::pid)
    }

    /// How many processes were started so far.
    pub fn starts(&self) -> u32 {
        self.starts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The `/metrics` text of the running process.
    ///
    /// # Errors
    /// Nothing answers.
    pub async fn metrics(&self) -> Result<String> {
        Ok(http_get(&format!("{}/metrics", self.metrics_url)).await?.1)
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    ///
    /// # Errors
    /// Nothing answers.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_in(&self.metrics().await?, name, labels))
    }

    /// Appends `=== e2e: <what> ===` to the log, so a post-mortem sees what the test did when.
    pub fn note(&self, what: &str) {
        self.append_log(&format!("=== e2e: {what} ==="));
    }

    fn append_log(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// The last lines of the log (every start's).
    pub fn log_tail(&self, lines: usize) -> String {
        localcp::supervisor::log_tail(&self.log, lines)
    }
}

impl Drop for RestartableOperator {
    fn drop(&mut self) {
        if let Some(mut proc) = self.lock().take() {
            self.supervisor.stop_proc(&mut proc, Duration::ZERO);
        }
    }
}
