//! End to end on the real local control plane: wasmop (real binary, Rust plugin) against the
//! native kube-runtime controller (`native-controller`), same control plane, same run.
//!
//! - **Converge**: N Websites created at once in a fresh namespace; the time until every one
//!   carries the status its reconcile writes (written after its children), and the API
//!   requests that took (from kube-apiserver's `apiserver_request_total`).
//! - **Resync**: with every parent converged, the periodic resync (`resyncPeriod`) reconciles
//!   each again with nothing to change, in a warm process: API requests and the controller's
//!   CPU time per reconcile.
//! - **Restart**: the controller restarted with the N parents converged: every parent is
//!   reconciled at once from a cold process; reconciles per second and requests.
//! - **Memory and scale**: one operator with 1, 10, 100 WasmControllers (the same plugin, then
//!   distinct plugins), one namespace and one Website each; RSS, watches held, and the latency
//!   of a new parent's reconcile; against as many native controller processes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use localcp::ControlPlane;
use localcp::supervisor::{Proc, Supervisor};
use serde_json::{Value, json};
use wasmop_e2e::website::{self, website_resource};
use wasmop_e2e::{RestartableOperator, StopWith, metric_in};

use crate::stats::Runs;

/// The WasmController's name in every benchmark namespace.
const CONTROLLER: &str = "website";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Wasmop,
    Native,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Wasmop => "wasmop (Rust plugin)",
            System::Native => "native kube-runtime",
        }
    }
}

/// API requests by (verb, resource/subresource, dry run), summed; and under keys starting
/// with [`SECONDS`], the seconds kube-apiserver spent serving them.
pub type Requests = BTreeMap<String, f64>;

/// The prefix of [`Requests`] keys that hold seconds rather than counts.
pub const SECONDS: &str = "seconds:";

#[derive(Clone, Debug, Default)]
pub struct SystemRuns {
    /// Seconds from the first create to the last parent converged.
    pub converge_s: Runs,
    /// Parents per second over that time.
    pub converge_rate: Runs,
    /// Reconciles counted by the controller while converging.
    pub converge_reconciles: Runs,
    /// API requests (excluding watches and the benchmark's own creates) per parent.
    pub converge_requests_per_parent: Runs,
    pub converge_requests_per_reconcile: Runs,
    /// The first run's request breakdown while converging.
    pub converge_breakdown: Requests,
    /// CPU time of the controller process per parent converged (ms).
    pub converge_cpu_ms: Runs,
    /// kube-apiserver's CPU time per parent converged (ms).
    pub converge_apiserver_cpu_ms: Runs,
    /// The resync wave (warm process): reconciles per second as they came, requests and CPU
    /// per reconcile.
    pub resync_rate: Runs,
    pub resync_requests_per_reconcile: Runs,
    pub resync_cpu_ms: Runs,
    pub resync_apiserver_cpu_ms: Runs,
    pub resync_breakdown: Requests,
    /// Seconds from the restart to every parent reconciled.
    pub restart_s: Runs,
    /// Parents per second from the first to the last reconcile counted after the restart.
    pub restart_rate: Runs,
    /// Reconciles counted by then (a parent may be reconciled more than once: the child
    /// watches' initial lists trigger their parents too).
    pub restart_reconciles: Runs,
    pub restart_requests_per_parent: Runs,
    /// Writes to parents and children (dry runs included) per parent after the restart.
    pub restart_writes_per_parent: Runs,
    pub restart_cpu_ms: Runs,
    pub restart_breakdown: Requests,
    /// wasmop's reconciles after the restart by result (first run).
    pub restart_results: String,
    /// RSS (MiB) before the parents, after converging, and of the restarted process after
    /// reconciling them all.
    pub rss_before_mib: Runs,
    pub rss_after_mib: Runs,
    pub rss_restarted_mib: Runs,
}

#[derive(Clone, Debug, Default)]
pub struct E2eReport {
    pub parents: usize,
    pub runs: usize,
    /// The `resyncPeriod` (s).
    pub resync_s: u64,
    pub create_s: Runs,
    pub wasmop: SystemRuns,
    pub native: SystemRuns,
}

/// The control plane and what every phase needs.
pub struct Bench {
    pub cp: &'static ControlPlane,
    pub admin: kube::Client,
    pub native_bin: PathBuf,
    pub supervisor: Supervisor,
    pub log_dir: PathBuf,
}

impl Bench {
    pub async fn start(native_bin: PathBuf) -> Result<Self> {
        let cp = wasmop_e2e::cluster().await?;
        let admin = cp.client().await?;
        let log_dir = std::env::temp_dir().join(format!("wasmop-bench-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir)?;
        Ok(Bench {
            cp,
            admin,
            native_bin,
            supervisor: Supervisor::start(None)?,
            log_dir,
        })
    }

    /// kube-apiserver's process id (0 for an existing cluster).
    pub fn apiserver_pid(&self) -> u32 {
        self.cp
            .processes()
            .into_iter()
            .find(|p| p.name == "kube-apiserver")
            .map_or(0, |p| p.pid)
    }

    /// kube-apiserver's `/metrics` text.
    pub async fn apiserver_metrics(&self) -> Result<String> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        Ok(self.admin.request_text(req).await?)
    }

    /// `apiserver_request_total` by verb and resource (not WATCH: long-running, counted when
    /// it ends).
    pub async fn requests(&self) -> Result<Requests> {
        let text = self.apiserver_metrics().await?;
        let mut out = Requests::new();
        for line in text.lines() {
            // Counts, and (as `seconds:` keys) the time kube-apiserver spent serving them.
            let (rest, seconds) = match line.strip_prefix("apiserver_request_total{") {
                Some(rest) => (rest, false),
                None => match line.strip_prefix("apiserver_request_duration_seconds_sum{") {
                    Some(rest) => (rest, true),
                    None => continue,
                },
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .unwrap_or("")
                    .to_string()
            };
            let verb = label("verb");
            if verb == "WATCH" {
                continue;
            }
            let mut resource = label("resource");
            let sub = label("subresource");
            if !sub.is_empty() {
                resource = format!("{resource}/{sub}");
            }
            let dry = if label("dry_run").is_empty() {
                ""
            } else {
                " (dry run)"
            };
            let what = if seconds { SECONDS } else { "" };
            *out.entry(format!("{what}{verb} {resource}{dry}"))
                .or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
        }
        Ok(out)
    }

    /// Watches open on kube-apiserver now (`apiserver_longrunning_requests{verb="WATCH"}`).
    pub async fn watches(&self) -> Result<f64> {
        Ok(metric_in(
            &self.apiserver_metrics().await?,
            "apiserver_longrunning_requests",
            &[("verb", "WATCH")],
        ))
    }

    /// A namespace for one controller: the sample's ServiceAccount and Role in it.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        website::team_namespace(self.cp, &self.admin, prefix).await
    }

    /// Many namespaces with the sample's RBAC at once (one kubectl call).
    pub async fn namespaces(&self, prefix: &str, n: usize) -> Result<Vec<String>> {
        let rbac = website::sample_rbac()?;
        let tag = std::process::id();
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{tag}-{i}")).collect();
        let mut yaml = String::new();
        for ns in &names {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns} }}\n---\n"
            ));
        }
        for ns in &names {
            yaml.push_str(&rbac.replace("metadata: {", &format!("metadata: {{ namespace: {ns},")));
            yaml.push_str("\n---\n");
        }
        wasmop_e2e::kubectl_stdin(self.cp, &["apply", "-f", "-"], Some(&yaml))?;
        Ok(names)
    }

    /// The operator, as its documented least-privilege account; its kubeconfig (a token)
    /// stays until the returned guard drops, since a restart reads it again.
    pub async fn operator(&self) -> Result<(RestartableOperator, RemoveOnDrop)> {
        let kubeconfig = wasmop_e2e::operator_account(self.cp, true).await?;
        let guard = RemoveOnDrop(kubeconfig.parent().map(Path::to_path_buf));
        Ok((RestartableOperator::start(&kubeconfig).await?, guard))
    }

    /// A native controller process for `ns`, serving its count on `port`.
    pub fn native(&self, ns: &str, port: u16, resync: u64) -> Result<Proc> {
        let args: Vec<String> = vec![
            "--kubeconfig".into(),
            self.cp.kubeconfig().to_string_lossy().into(),
            "--namespace".into(),
            ns.into(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
            "--resync-seconds".into(),
            resync.to_string(),
        ];
        Ok(self.supervisor.spawn(
            "native-controller",
            &self.native_bin,
            &args,
            &self.log_dir.join(format!("native-{ns}.log")),
        )?)
    }
}

/// Removes a directory when dropped.
pub struct RemoveOnDrop(pub Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident set size of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// User plus system CPU time of `pid` so far, in ms.
pub fn cpu_ms(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat(5); `rest` starts at field 3.
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        });
    // USER_HZ is 100 on Linux.
    ticks.map_or(f64::NAN, |t| t * 10.0)
}

fn delta(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// The requests a controller made: everything but the benchmark's own parent creates and
/// list calls (the benchmark's and the control plane's own housekeeping are small).
fn controller_requests(d: &Requests, creates: usize) -> f64 {
    d.iter()
        .filter(|(k, _)| !k.starts_with(SECONDS))
        .map(|(k, v)| {
            if k == "POST websites" {
                (v - creates as f64).max(0.0)
            } else {
                *v
            }
        })
        .sum()
}

/// A Website spec with a 1 KB page: a ConfigMap and a Deployment child.
fn parent_spec() -> Value {
    json!({"replicas": 1, "content": crate::fixture::page(1000)})
}

/// Creates `names` in `ns`, 16 at a time.
async fn create_parents(client: &kube::Client, ns: &str, names: &[String]) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    futures::stream::iter(names.iter().map(|name| {
        let api = api.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "example.com/v1", "kind": "Website",
                "metadata": {"name": name}, "spec": parent_spec(),
            }))?;
            api.create(&PostParams::default(), &obj).await?;
            Ok::<_, anyhow::Error>(())
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await?;
    Ok(())
}

/// Whether a Website carries the status of a finished reconcile.
fn converged(obj: &DynamicObject) -> bool {
    let status = &obj.data["status"];
    status["observedGeneration"].as_i64().is_some()
        && status["observedGeneration"].as_i64() == obj.metadata.generation
        && status["children"].as_array().is_some_and(|c| c.len() == 2)
}

/// Watches `ns` until `n` Websites have converged; returns when the last did.
fn watch_converged(
    client: &kube::Client,
    ns: &str,
    n: usize,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Instant>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    tokio::spawn(async move {
        let mut done = HashSet::new();
        let stream = watcher(api, watcher::Config::default()).applied_objects();
        let mut stream = std::pin::pin!(stream);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, stream.next()).await;
            match next {
                Err(_) => bail!(
                    "only {} of {n} parents converged within {timeout:?}",
                    done.len()
                ),
                Ok(None) => bail!("the watch ended"),
                Ok(Some(Err(e))) => tracing::debug!("bench watch: {e}"),
                Ok(Some(Ok(obj))) => {
                    if converged(&obj) {
                        done.insert(obj.metadata.name.clone().unwrap_or_default());
                        if done.len() >= n {
                            return Ok(Instant::now());
                        }
                    }
                }
            }
        }
    })
}

/// How a controller under test is reached.
enum Running<'a> {
    Wasmop {
        op: &'a RestartableOperator,
        ns: String,
    },
    Native {
        proc: Proc,
        port: u16,
        ns: String,
    },
}

impl Running<'_> {
    async fn reconciles(&self) -> Result<f64> {
        match self {
            Running::Wasmop { op, ns } => Ok(op
                .metric(
                    "wasmop_reconciles_total",
                    &[("controller", &format!("{ns}/{CONTROLLER}"))],
                )
                .await?),
            Running::Native { port, .. } => {
                let (_, body) =
                    wasmop_e2e::http_get(&format!("http://127.0.0.1:{port}/metrics")).await?;
                Ok(metric_in(&body, "native_reconciles_total", &[]))
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Wasmop { op, .. } => op.pid().unwrap_or(0),
            Running::Native { proc, .. } => proc.pid(),
        }
    }
}

/// Waits until the restarted controller has counted `n` reconciles (each parent's first
/// after a restart; whether it writes anything is the controller's business): returns when the
/// first and the `n`th were seen.
async fn wait_reconciled(
    running: &Running<'_>,
    n: f64,
    timeout: Duration,
) -> Result<(Instant, Instant)> {
    let started = Instant::now();
    let mut first = None;
    loop {
        // A process still starting serves no metrics yet: count that as none.
        let count = running.reconciles().await.unwrap_or(0.0);
        let now = Instant::now();
        if count > 0.0 && first.is_none() {
            first = Some(now);
        }
        if count >= n {
            return Ok((first.unwrap_or(now), now));
        }
        if started.elapsed() > timeout {
            bail!("{count} of {n} parents reconciled after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a request key (`VERB resource[/subresource][ (dry run)]`, also with the
/// [`SECONDS`] prefix) is a write.
pub fn is_write(key: &str) -> bool {
    let key = key.strip_prefix(SECONDS).unwrap_or(key);
    matches!(
        key.split_whitespace().next(),
        Some("APPLY" | "POST" | "PATCH" | "PUT" | "DELETE")
    )
}

/// Writes (dry runs included) to Websites, their status, ConfigMaps and Deployments in `d`.
fn object_writes(d: &Requests) -> f64 {
    d.iter()
        .filter(|(k, _)| {
            let resource = k.split_whitespace().nth(1).unwrap_or_default();
            is_write(k)
                && matches!(
                    resource.split('/').next(),
                    Some("websites" | "configmaps" | "deployments")
                )
        })
        .map(|(_, v)| v)
        .sum()
}

/// One system, one run: converge N parents, their resync (`resync` seconds after their last
/// reconcile; only when `wave`), then restart the controller.
#[allow(clippy::too_many_arguments)] // one caller, the loop in `run`
async fn run_one(
    bench: &Bench,
    op: &RestartableOperator,
    system: System,
    parents: usize,
    resync: u64,
    wave: bool,
    runs: &mut SystemRuns,
    create_s: &mut Runs,
) -> Result<()> {
    let client = &bench.admin;
    let prefix = match system {
        System::Wasmop => "bench-wasm",
        System::Native => "bench-native",
    };
    let ns = bench.namespace(prefix).await?;
    let apiserver = bench.apiserver_pid();
    let mut running = match system {
        System::Wasmop => {
            website::put_plugin(
                client,
                &ns,
                "website-plugin",
                crate::plugin_bytes("website-rust")?,
            )
            .await?;
            website::apply_controller(
                client,
                &ns,
                CONTROLLER,
                "website-plugin",
                json!({"replicas": 2}),
                json!({"resyncPeriod": format!("{resync}s")}),
            )
            .await?;
            wait_wc_ready(client, &ns, CONTROLLER).await?;
            Running::Wasmop { op, ns: ns.clone() }
        }
        System::Native => {
            let port = free_port()?;
            let proc = bench.native(&ns, port, resync)?;
            let running = Running::Native {
                proc,
                port,
                ns: ns.clone(),
            };
            wasmop_e2e::eventually(Duration::from_secs(30), "native controller up", || async {
                Ok(running.reconciles().await.ok().map(|_| ()))
            })
            .await?;
            running
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = running.pid();
    runs.rss_before_mib.push(rss_mib(pid));

    // Converge.
    let names: Vec<String> = (0..parents).map(|i| format!("site-{i:05}")).collect();
    let timeout = Duration::from_secs(60 + parents as u64 / 2);
    let watch = watch_converged(client, &ns, parents, timeout);
    tokio::time::sleep(Duration::from_millis(300)).await; // the watch's initial list
    let reconciles_before = running.reconciles().await?;
    let before = bench.requests().await?;
    let (cpu, api_cpu) = (cpu_ms(pid), cpu_ms(apiserver));
    let started = Instant::now();
    create_parents(client, &ns, &names).await?;
    create_s.push(started.elapsed().as_secs_f64());
    let done = watch.await??;
    let took = done.duration_since(started).as_secs_f64();
    runs.converge_s.push(took);
    runs.converge_rate.push(parents as f64 / took);
    // Trailing writes (events) of the last reconciles, and the reconcile each status write
    // triggers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = bench.requests().await?;
    let n = parents as f64;
    runs.converge_cpu_ms.push((cpu_ms(pid) - cpu) / n);
    runs.converge_apiserver_cpu_ms
        .push((cpu_ms(apiserver) - api_cpu) / n);
    let reconciles = running.reconciles().await? - reconciles_before;
    let mut d = delta(&before, &after);
    let total = controller_requests(&d, parents);
    // The benchmark's own creates are not the controller's.
    if let Some(creates) = d.get_mut("POST websites") {
        *creates -= n;
    }
    d.retain(|_, v| *v > 0.0);
    runs.converge_reconciles.push(reconciles);
    runs.converge_requests_per_parent.push(total / n);
    runs.converge_requests_per_reconcile
        .push(total / reconciles.max(1.0));
    if runs.converge_breakdown.is_empty() {
        runs.converge_breakdown = d;
    }
    runs.rss_after_mib.push(rss_mib(pid));

    // The resync wave, in the warm process.
    if wave {
        let base = running.reconciles().await?;
        let wait = Duration::from_secs(resync + 60 + parents as u64 / 5);
        let (mut first_at, mut first) = (None, 0.0);
        let (mut before, mut cpu, mut api_cpu) = (Requests::new(), 0.0, 0.0);
        let began = Instant::now();
        loop {
            let count = running.reconciles().await? - base;
            if count > 0.0 && first_at.is_none() {
                before = bench.requests().await?;
                (cpu, api_cpu) = (cpu_ms(pid), cpu_ms(apiserver));
                first_at = Some(Instant::now());
                first = count;
            }
            if count >= n {
                break;
            }
            if began.elapsed() > wait {
                bail!("{count} of {parents} parents resynced after {wait:?}");
            }
            // Not faster: rendering wasmop's /metrics costs the process CPU too.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let span = first_at.map_or(0.05, |t| t.elapsed().as_secs_f64().max(0.05));
        let counted = n - first;
        runs.resync_rate.push(counted / span);
        runs.resync_cpu_ms
            .push((cpu_ms(pid) - cpu) / counted.max(1.0));
        runs.resync_apiserver_cpu_ms
            .push((cpu_ms(apiserver) - api_cpu) / counted.max(1.0));
        let d = delta(&before, &bench.requests().await?);
        runs.resync_requests_per_reconcile
            .push(controller_requests(&d, 0) / counted.max(1.0));
        if runs.resync_breakdown.is_empty() {
            runs.resync_breakdown = d;
        }
    }

    // Restart with everything converged: every parent at once, from a cold process.
    let before = bench.requests().await?;
    let timeout = Duration::from_secs(60 + parents as u64 / 5);
    let restarted = match &mut running {
        Running::Wasmop { op, .. } => {
            op.stop(StopWith::Term, Duration::from_secs(10)).await?;
            let t = Instant::now();
            op.spawn()?;
            t
        }
        Running::Native { proc, port, ns } => {
            bench.supervisor.stop_proc(proc, Duration::from_secs(5));
            let t = Instant::now();
            *proc = bench.native(ns, *port, resync)?;
            t
        }
    };
    let (first_seen, last) = wait_reconciled(&running, n, timeout).await?;
    runs.restart_s
        .push(last.duration_since(restarted).as_secs_f64());
    let span = last.duration_since(first_seen).as_secs_f64().max(0.05);
    runs.restart_rate.push(n / span);
    runs.restart_cpu_ms.push(cpu_ms(running.pid()) / n);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = delta(&before, &bench.requests().await?);
    let reconciles = running.reconciles().await?;
    runs.restart_reconciles.push(reconciles);
    runs.restart_requests_per_parent
        .push(controller_requests(&d, 0) / n);
    runs.restart_writes_per_parent
        .push(object_writes(&d) / n + 0.0); // + 0.0: no "-0.00"
    if runs.restart_breakdown.is_empty() {
        runs.restart_breakdown = d;
        if let Running::Wasmop { op, ns } = &running {
            let text = op.metrics().await?;
            let prefix =
                format!("wasmop_reconciles_total{{controller=\"{ns}/{CONTROLLER}\",result=\"");
            runs.restart_results = text
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .map(|l| l.replace("\"} ", " "))
                .collect::<Vec<_>>()
                .join(", ");
        }
    }
    runs.rss_restarted_mib.push(rss_mib(running.pid()));

    // Leave nothing running on these parents.
    match running {
        Running::Wasmop { ns, .. } => {
            delete_wc(client, &ns, CONTROLLER).await?;
            op.wait_ready(Duration::from_secs(60)).await?;
        }
        Running::Native { mut proc, .. } => {
            bench
                .supervisor
                .stop_proc(&mut proc, Duration::from_secs(5));
        }
    }
    Ok(())
}

pub async fn wait_wc_ready(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    wasmop_e2e::eventually(
        Duration::from_secs(120),
        &format!("WasmController {ns}/{name} Ready"),
        || async {
            Ok(website::condition(client, ns, name, "Ready")
                .await?
                .filter(|(s, _, _)| s == "True")
                .map(|_| ()))
        },
    )
    .await
}

pub async fn delete_wc(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &website::wasmcontroller_resource());
    api.delete(name, &DeleteParams::default()).await?;
    wasmop_e2e::eventually(
        Duration::from_secs(60),
        &format!("WasmController {ns}/{name} gone"),
        || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

/// `runs` runs of each system, alternating which goes first; the resync wave (which waits
/// `resync` seconds) in the first run only.
pub async fn run(bench: &Bench, parents: usize, runs: usize, resync: u64) -> Result<E2eReport> {
    let (op, _kubeconfig) = bench.operator().await?;
    let mut report = E2eReport {
        parents,
        runs,
        resync_s: resync,
        ..Default::default()
    };
    for r in 0..runs {
        let order = if r % 2 == 0 {
            [System::Wasmop, System::Native]
        } else {
            [System::Native, System::Wasmop]
        };
        for system in order {
            eprintln!(
                "bench: end to end, run {}/{runs}, {}",
                r + 1,
                system.label()
            );
            let runs = match system {
                System::Wasmop => &mut report.wasmop,
                System::Native => &mut report.native,
            };
            let wave = r == 0;
            run_one(
                bench,
                &op,
                system,
                parents,
                resync,
                wave,
                runs,
                &mut report.create_s,
            )
            .await
            .with_context(|| format!("{} run {}", system.label(), r + 1))?;
        }
    }
    Ok(report)
}
