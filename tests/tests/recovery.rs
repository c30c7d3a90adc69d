//! End to end: wasmop recovers from what a real cluster does to it (issue 20, "How we will
//! know", the recovery parts). Real control plane, real `wasmop`, the misbehave plugin
//! (`mode: marker`: one ConfigMap `<parent>-marker`, status `phase: Marked`; `mode: config`:
//! the children listed in its config, status `phase: Configured`).
//!
//! Every WasmController here has `resyncPeriod: 1h`, so no assertion can be met by a resync:
//! what converges, converges because watches resume or relist.
//!
//! Each test restarts the API server or the operator, so each starts a control plane and an
//! operator of its own ([`RestartableOperator`]), and the tests run one at a time (a lock),
//! so their timings are not each other's load.
//!
//! - `parents_created_around_apiserver_outages_are_reconciled_once_it_is_back`: five
//!   outages (graceful restart, SIGKILL and down for seconds, each with or without an etcd
//!   compaction so the resumed watch gets 410 Gone), parents created before, during and right
//!   after each; every parent gets its child and status within 30 s of the API server's return.
//! - `operator_restarts_under_load_end_with_every_controller_running_and_reconciling`: up
//!   to 40 SIGTERM restarts of wasmop with three controllers in two namespaces and a background
//!   writer; every cycle ends with the three running, Ready and reconciling new parents;
//!   `/readyz` against `wasmop_controllers` is sampled throughout.
//! - `a_fault_soak_ends_in_exactly_the_desired_world_and_then_writes_nothing`: 200 parents,
//!   three controllers, 60 s of 500/429 bursts, latency and cut watches from the fault proxy,
//!   API server restarts (one after a compaction), wasmop SIGKILLed in the middle of a prune,
//!   finalized deletions; then exactly the desired children and statuses, and no more writes.
//!
//! Run: `cargo test -p wasmop-e2e --test recovery -- --nocapture` (figures are printed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use localcp::{ControlPlane, FaultConfig, FaultProxy, Options};
use serde_json::{Value, json};
use wasmop_e2e::website::{
    MISBEHAVE_MODE, apply_controller, condition, create_website_in_mode, namespace_with,
    put_plugin, sample_rbac, website_resource,
};
use wasmop_e2e::{RestartableOperator, StopWith, install_crds, kubectl, kubectl_stdin, plugin};

/// One test at a time: each runs a control plane and an operator of its own, and their
/// timings are what is reported.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// Setup

/// A second parent kind, so two controllers can share a namespace without wanting the same
/// parents' status.
const BLOG_CRD: &str = r"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: { name: blogs.example.com }
spec:
  group: example.com
  names: { kind: Blog, listKind: BlogList, plural: blogs, singular: blog }
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      subresources: { status: {} }
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: { type: object, x-kubernetes-preserve-unknown-fields: true }
            status: { type: object, x-kubernetes-preserve-unknown-fields: true }
";

fn blog_resource() -> ApiResource {
    ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Blog".into(),
        plural: "blogs".into(),
    }
}

/// A control plane of this test's own with the CRDs installed; `None` when `KUBECONFIG`
/// names an existing cluster (restarts and compaction need our own processes).
async fn control_plane() -> Result<Option<ControlPlane>> {
    let cp = ControlPlane::start(Options::default()).await?;
    if cp.is_external() {
        eprintln!(
            "skipped: API server restarts and compaction need the local control plane (KUBECONFIG is set)"
        );
        return Ok(None);
    }
    install_crds(&cp)?;
    kubectl_stdin(&cp, &["apply", "--server-side", "-f", "-"], Some(BLOG_CRD))?;
    kubectl(
        &cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/blogs.example.com",
        ],
    )?;
    Ok(Some(cp))
}

/// Runs `test` on a control plane of its own, one test at a time ([`SERIAL`]), and stops the
/// control plane after it.
async fn on_own_control_plane(test: impl AsyncFnOnce(&ControlPlane) -> Result<()>) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let Some(cp) = control_plane().await? else {
        return Ok(());
    };
    let result = test(&cp).await;
    cp.stop().await;
    result
}

/// A namespace with the sample's ServiceAccount, its Role extended to Blogs, and the
/// misbehave plugin.
async fn team(cp: &ControlPlane, client: &Client, prefix: &str) -> Result<String> {
    let mut rbac = sample_rbac()?;
    for (from, to) in [
        ("[websites]", "[websites, blogs]"),
        ("[websites/status]", "[websites/status, blogs/status]"),
        (
            "[websites/finalizers]",
            "[websites/finalizers, blogs/finalizers]",
        ),
    ] {
        ensure!(
            rbac.contains(from),
            "samples/website/rbac.yaml no longer has {from}"
        );
        rbac = rbac.replace(from, to);
    }
    let ns = namespace_with(cp, client, prefix, &rbac).await?;
    put_plugin(client, &ns, "misbehave", plugin("misbehave")).await?;
    Ok(ns)
}

/// A WasmController running the misbehave plugin with `config` over `parent`, ConfigMap
/// children, `resyncPeriod: 1h`.
async fn controller(
    client: &Client,
    ns: &str,
    name: &str,
    parent: &ApiResource,
    config: Value,
    finalize: bool,
) -> Result<()> {
    let spec = json!({
        "parent": {"apiVersion": parent.api_version, "kind": parent.kind},
        "children": [{"apiVersion": "v1", "kind": "ConfigMap"}],
        "plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                   "config": config, "finalize": finalize,
                   // Generous: two cores run the control plane, the operator and the test.
                   "limits": {"timeoutMs": 3000, "memoryMiB": 32}},
        "resyncPeriod": "1h",
    });
    apply_controller(client, ns, name, "misbehave", Value::Null, spec).await
}

fn marker() -> Value {
    json!({"mode": "marker", "finalize": "done"})
}

/// `mode: config` with children `{parent}-c0` .. `{parent}-c<n-1>`.
fn numbered(n: usize) -> Value {
    let children: Vec<Value> = (0..n)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": format!("{{parent}}-c{i}")}, "data": {"i": i.to_string()}})
        })
        .collect();
    json!({"mode": "config", "children": children})
}

async fn create_parent(client: &Client, ns: &str, ar: &ApiResource, name: &str) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name}, "spec": {}
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

/// Creates a parent, retrying while the API server is away; a create that timed out but
/// happened (409 on the retry) counts as done.
async fn create_parent_retrying(
    client: &Client,
    ns: &str,
    ar: &ApiResource,
    name: &str,
) -> Result<u32> {
    let mut failures = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), create_parent(client, ns, ar, name))
            .await
        {
            Ok(Ok(())) => return Ok(failures),
            Ok(Err(e))
                if e.downcast_ref::<kube::Error>()
                    .is_some_and(|k| matches!(k, kube::Error::Api(s) if s.code == 409)) =>
            {
                return Ok(failures);
            }
            Ok(Err(_)) | Err(_) => failures += 1,
        }
        if failures > 200 {
            bail!("could not create {} {ns}/{name} in 200 attempts", ar.kind);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for the WasmController's `Ready=True`.
async fn wait_wc_ready(
    client: &Client,
    ns: &str,
    name: &str,
    op: &RestartableOperator,
) -> Result<()> {
    let began = Instant::now();
    loop {
        if let Ok(Some((s, _, _))) = condition(client, ns, name, "Ready").await
            && s == "True"
        {
            return Ok(());
        }
        if began.elapsed() > Duration::from_secs(60) {
            bail!(
                "WasmController {ns}/{name} not Ready=True after 60s; operator log:\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `wasmop_controllers` is `n`; returns how long that took.
async fn wait_controllers(op: &RestartableOperator, n: f64, timeout: Duration) -> Result<Duration> {
    let began = Instant::now();
    loop {
        if op.metric("wasmop_controllers", &[]).await.ok() == Some(n) {
            return Ok(began.elapsed());
        }
        if began.elapsed() > timeout {
            bail!(
                "wasmop_controllers did not reach {n} in {timeout:?}; operator log:\n{}",
                op.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn apiserver_pid(cp: &ControlPlane) -> Result<u32> {
    cp.processes()
        .into_iter()
        .find(|p| p.name == "kube-apiserver")
        .map(|p| p.pid)
        .context("no kube-apiserver process")
}

/// SIGKILLs a process this test's control plane started.
fn sigkill(pid: u32) -> Result<()> {
    let status = std::process::Command::new("/bin/sh")
        .args(["-c", "kill -KILL \"$1\"", "kill", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -KILL {pid} failed");
    Ok(())
}

/// Writes `n` unwatched ConfigMaps in `ns`, so etcd's revision moves past every
/// resourceVersion the operator's watches have seen (a compaction there makes them 410).
async fn advance_revision(client: &Client, ns: &str, tag: &str, n: usize) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for i in 0..n {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("advance-{tag}-{i}")}}))?;
        api.create(&PostParams::default(), &cm).await?;
    }
    Ok(())
}

/// Lines of the operator's log after byte `from` that report a 410 on a watch.
fn gone_lines(op: &RestartableOperator, from: usize) -> usize {
    let log = std::fs::read(&op.log).unwrap_or_default();
    String::from_utf8_lossy(log.get(from..).unwrap_or_default())
        .lines()
        .filter(|l| {
            l.contains("watch error")
                && (l.contains("410") || l.contains("Expired") || l.contains("too old"))
        })
        .count()
}

/// When the operator's log (after byte `from`) first shows the plugin marking one of
/// `parents` (its timestamps are UTC; `marking <name> ` is the misbehave plugin's line).
fn first_marked(
    op: &RestartableOperator,
    from: usize,
    parents: &[String],
) -> Option<k8s_openapi::jiff::Timestamp> {
    let log = std::fs::read(&op.log).unwrap_or_default();
    String::from_utf8_lossy(log.get(from..).unwrap_or_default())
        .lines()
        .filter(|l| parents.iter().any(|p| l.contains(&format!("marking {p} "))))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
}

fn log_len(op: &RestartableOperator) -> usize {
    std::fs::metadata(&op.log).map_or(0, |m| usize::try_from(m.len()).unwrap_or(0))
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// The desired world, and how far the real one is from it

/// What one controller should have made in its namespace: for every parent of its kind,
/// exactly the ConfigMaps `<parent>-<suffix>`, its status phase, its finalizer (or none).
#[derive(Clone, Debug)]
struct Desired {
    ns: String,
    controller: String,
    parent: ApiResource,
    suffixes: Vec<String>,
    phase: &'static str,
    finalizer: bool,
}

impl Desired {
    fn marker(ns: &str, controller: &str, parent: ApiResource, finalizer: bool) -> Self {
        Desired {
            ns: ns.into(),
            controller: controller.into(),
            parent,
            suffixes: vec!["marker".into()],
            phase: "Marked",
            finalizer,
        }
    }
}

/// How the world compares with a [`Desired`].
#[derive(Debug, Default)]
struct Census {
    parents: usize,
    children: usize,
    /// Parent name → resourceVersion, and child name → resourceVersion (to see writes).
    versions: BTreeMap<String, String>,
    problems: Vec<String>,
}

async fn census(client: &Client, d: &Desired) -> Result<Census> {
    let parents: Api<DynamicObject> = Api::namespaced_with(client.clone(), &d.ns, &d.parent);
    let parents = parents.list(&ListParams::default()).await?.items;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &d.ns);
    let children = configmaps
        .list(&ListParams::default().labels(&format!("wasmop.dev/controller={}", d.controller)))
        .await?
        .items;
    let kind = &d.parent.kind;
    let mut c = Census {
        parents: parents.len(),
        children: children.len(),
        ..Census::default()
    };
    let mut by_owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for cm in &children {
        c.versions.insert(
            format!("ConfigMap/{}", cm.name_any()),
            cm.resource_version().unwrap_or_default(),
        );
        match cm
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == *kind)
        {
            Some(o) => {
                by_owner
                    .entry(o.uid.clone())
                    .or_default()
                    .insert(cm.name_any());
            }
            None => c.problems.push(format!(
                "{}/{}: ConfigMap {} is labelled for {} but has no {kind} controller",
                d.ns,
                d.controller,
                cm.name_any(),
                d.controller
            )),
        }
    }
    let finalizer = format!("wasmop.dev/{}", d.controller);
    let mut live = BTreeSet::new();
    for p in &parents {
        let name = p.name_any();
        let uid = p.uid().unwrap_or_default();
        live.insert(uid.clone());
        c.versions.insert(
            format!("{kind}/{name}"),
            p.resource_version().unwrap_or_default(),
        );
        if p.metadata.deletion_timestamp.is_some() {
            c.problems.push(format!(
                "{kind} {name}: still being deleted, finalizers {:?}",
                p.finalizers()
            ));
            continue;
        }
        let want: BTreeSet<String> = d.suffixes.iter().map(|s| format!("{name}-{s}")).collect();
        let have = by_owner.get(&uid).cloned().unwrap_or_default();
        let missing: Vec<&String> = want.difference(&have).collect();
        let extra: Vec<&String> = have.difference(&want).collect();
        if !missing.is_empty() {
            c.problems
                .push(format!("{}: {kind} {name}: missing {missing:?}", d.ns));
        }
        if !extra.is_empty() {
            c.problems.push(format!(
                "{}: {kind} {name}: children no longer desired {extra:?}",
                d.ns
            ));
        }
        let phase = p.data["status"]["phase"].as_str().unwrap_or("<none>");
        if phase != d.phase {
            c.problems.push(format!(
                "{}: {kind} {name}: status phase {phase}, want {}",
                d.ns, d.phase
            ));
        }
        if p.finalizers().contains(&finalizer) != d.finalizer {
            c.problems.push(format!(
                "{}: {kind} {name}: finalizers {:?}, want {}",
                d.ns,
                p.finalizers(),
                if d.finalizer { &finalizer } else { "none" }
            ));
        }
    }
    for (uid, names) in &by_owner {
        if !live.contains(uid) {
            c.problems.push(format!(
                "{}: orphans of a {kind} ({uid}) that is gone: {names:?}",
                d.ns
            ));
        }
    }
    Ok(c)
}

/// Polls until every [`Desired`] holds; returns how long that took and the last census.
async fn converge(
    client: &Client,
    desired: &[Desired],
    timeout: Duration,
    op: &RestartableOperator,
) -> Result<(Duration, Vec<Census>)> {
    let began = Instant::now();
    loop {
        let mut all = Vec::new();
        let mut error = None;
        for d in desired {
            match census(client, d).await {
                Ok(c) => all.push(c),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none() && all.iter().all(|c| c.problems.is_empty()) {
            return Ok((began.elapsed(), all));
        }
        if began.elapsed() > timeout {
            let problems: Vec<&String> = all.iter().flat_map(|c| &c.problems).collect();
            bail!(
                "not converged after {timeout:?}: {} problem(s), e.g.:\n  {}\nlast error: {error:?}\noperator log (last 60 lines):\n{}",
                problems.len(),
                problems
                    .iter()
                    .take(15)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n  "),
                op.log_tail(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 1. API server outages

#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `restart_apiserver`: SIGTERM, graceful stop, start.
    Restart,
    /// SIGKILL, down for a few seconds, start.
    KillAndHold,
    /// Unwatched writes, an etcd compaction, then a restart: resumed watches get 410.
    CompactAndRestart,
    /// SIGKILL, a compaction while it is down, down for a few seconds, start.
    KillCompactAndHold,
}

const HOLD: Duration = Duration::from_secs(3);

/// A background task creating parents `<prefix>-<i>` round-robin in `namespaces`, one
/// every ~100 ms, until told to stop (at most `max`). Returns what it created and when.
fn spawn_creator(
    client: Client,
    namespaces: Vec<String>,
    prefix: String,
    stop: Arc<AtomicBool>,
    max: usize,
) -> tokio::task::JoinHandle<(Vec<(Instant, String)>, usize)> {
    tokio::spawn(async move {
        let mut created = Vec::new();
        let mut failed = 0;
        for i in 0..max {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let ns = &namespaces[i % namespaces.len()];
            let name = format!("{prefix}-{i}");
            match tokio::time::timeout(
                Duration::from_secs(3),
                create_parent(&client, ns, &website_resource(), &name),
            )
            .await
            {
                Ok(Ok(())) => created.push((Instant::now(), format!("{ns}/{name}"))),
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (created, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_created_around_apiserver_outages_are_reconciled_once_it_is_back() -> Result<()> {
    on_own_control_plane(outages).await
}

async fn outages(cp: &ControlPlane) -> Result<()> {
    let began = Instant::now();
    let client = cp.client().await?;
    let ns_a = team(cp, &client, "outage-a").await?;
    let ns_b = team(cp, &client, "outage-b").await?;
    let unwatched = localcp::create_test_namespace(&client, "outage-advance").await?;
    let op = RestartableOperator::start(cp.kubeconfig()).await?;
    let desired: Vec<Desired> = [&ns_a, &ns_b]
        .iter()
        .map(|ns| Desired::marker(ns, "ctl", website_resource(), false))
        .collect();
    for ns in [&ns_a, &ns_b] {
        controller(&client, ns, "ctl", &website_resource(), marker(), false).await?;
    }
    for ns in [&ns_a, &ns_b] {
        wait_wc_ready(&client, ns, "ctl", &op).await?;
        create_parent(&client, ns, &website_resource(), "before").await?;
    }
    converge(&client, &desired, Duration::from_secs(60), &op).await?;

    let rounds = [
        Outage::Restart,
        Outage::KillAndHold,
        Outage::CompactAndRestart,
        Outage::KillCompactAndHold,
        Outage::CompactAndRestart,
    ];
    let mut recoveries = Vec::new();
    let mut total_created = 0;
    for (round, outage) in rounds.into_iter().enumerate() {
        let round = round + 1;
        op.note(&format!("round {round}: {outage:?}"));
        let from = log_len(&op);
        let errors_before = op.metric("wasmop_watch_errors_total", &[]).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let compacting = matches!(
            outage,
            Outage::CompactAndRestart | Outage::KillCompactAndHold
        );
        if compacting {
            advance_revision(&client, &unwatched, &format!("r{round}"), 20).await?;
        }
        let creator = spawn_creator(
            client.clone(),
            vec![ns_a.clone(), ns_b.clone()],
            format!("r{round}"),
            stop.clone(),
            600,
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let down_at = Instant::now();
        let mut compacted = None;
        match outage {
            Outage::Restart => cp.restart_apiserver().await?,
            Outage::CompactAndRestart => {
                compacted = Some(cp.compact_etcd().await?);
                cp.restart_apiserver().await?;
            }
            Outage::KillAndHold | Outage::KillCompactAndHold => {
                sigkill(apiserver_pid(cp)?)?;
                if compacting {
                    compacted = Some(cp.compact_etcd().await?);
                }
                tokio::time::sleep(HOLD).await;
                cp.restart_apiserver().await?;
            }
        }
        let back_at = Instant::now();
        let back_ts = k8s_openapi::jiff::Timestamp::now();
        // Keep creating for a while: these parents arrive before the operator's watches,
        // which back off while the API server is away, are back.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::SeqCst);
        let (created, failed) = creator.await?;
        let before = created.iter().filter(|(t, _)| *t < down_at).count();
        let during = created
            .iter()
            .filter(|(t, _)| *t >= down_at && *t < back_at)
            .count();
        let after = created.len() - before - during;
        let created_after: Vec<String> = created
            .iter()
            .filter(|(t, _)| *t >= back_at)
            .filter_map(|(_, n)| n.split('/').nth(1).map(str::to_string))
            .collect();
        total_created += created.len();
        // 30 s from the API server's return, whatever the creating took.
        let budget = Duration::from_secs(30).saturating_sub(back_at.elapsed());
        let converged = converge(&client, &desired, budget, &op)
            .await
            .map_err(|e| {
                anyhow!("round {round} ({outage:?}): parents not reconciled after the API server came back: {e}")
            })?;
        let since_back = Instant::now() - back_at;
        let watch_errors = op.metric("wasmop_watch_errors_total", &[]).await? - errors_before;
        let gone = gone_lines(&op, from);
        // The first parent created after the outage that the operator reconciled: its
        // watches were back by then.
        let watch_back = first_marked(&op, from, &created_after).map_or_else(
            || "-".to_string(),
            |t| {
                format!(
                    "{:.1}s",
                    (t - back_ts)
                        .total(k8s_openapi::jiff::Unit::Second)
                        .unwrap_or(f64::NAN)
                )
            },
        );
        eprintln!(
            "round {round}: {outage:?}{}: API server away {}; {} parents created ({before} before, {during} while it went down, {after} after it was back; {failed} creates refused); first parent created after its return reconciled after {watch_back}, all {} parents reconciled {} after it was ready (creating went on for 1.5s of that); {watch_errors} watch errors, {gone} of them 410 Gone",
            compacted.map_or(String::new(), |r| format!(" (compacted at revision {r})")),
            secs(back_at - down_at),
            created.len(),
            converged.1.iter().map(|c| c.parents).sum::<usize>(),
            secs(since_back),
        );
        if compacting {
            ensure!(
                gone > 0,
                "round {round}: a compaction before the restart should make a resumed watch 410; operator log:\n{}",
                op.log_tail(40)
            );
        }
        recoveries.push(since_back);
    }
    let parents: usize = {
        let mut n = 0;
        for d in &desired {
            n += census(&client, d).await?.parents;
        }
        n
    };
    ensure!(
        parents >= total_created + 2,
        "{parents} parents, created {total_created} + 2"
    );
    recoveries.sort();
    eprintln!(
        "outages: {} rounds, {parents} parents each with its child and status, recovery after the API server was ready: best {}, worst {}; test took {}",
        rounds.len(),
        secs(recoveries[0]),
        secs(recoveries[recoveries.len() - 1]),
        secs(began.elapsed())
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. Operator restarts

/// One sample of the operator's health endpoints.
struct Sample {
    at: Instant,
    /// `/readyz`'s status code; `None` when nothing answers (no process).
    readyz: Option<u16>,
    /// `wasmop_controllers`, read just after `/readyz` (it only grows while starting, so a
    /// value below the count was below it when `/readyz` answered too).
    controllers: Option<f64>,
}

/// Samples `/readyz` and `wasmop_controllers` every ~20 ms until told to stop.
fn spawn_sampler(
    metrics_url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        // Bounded: 20 ms apart, at most ~15 minutes.
        for _ in 0..45_000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let at = Instant::now();
            let readyz = wasmop_e2e::http_get(&format!("{metrics_url}/readyz"))
                .await
                .ok()
                .map(|(code, _)| code);
            let controllers = match readyz {
                Some(_) => wasmop_e2e::http_get(&format!("{metrics_url}/metrics"))
                    .await
                    .ok()
                    .map(|(_, text)| wasmop_e2e::metric_in(&text, "wasmop_controllers", &[])),
                None => None,
            };
            samples.push(Sample {
                at,
                readyz,
                controllers,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples
    })
}

/// Spans of consecutive samples where `/readyz` said ok while fewer than `n` controllers
/// ran: (while starting, while shutting down). A span that ends with no answer at all was
/// the old process stopping its controllers after SIGTERM; any other, a new one starting.
fn ready_but_not_running(samples: &[Sample], n: f64) -> (Vec<Duration>, Vec<Duration>) {
    let (mut starting, mut stopping) = (Vec::new(), Vec::new());
    let mut open: Option<Instant> = None;
    for s in samples {
        let bad = s.readyz == Some(200) && s.controllers.is_some_and(|c| c < n);
        match (bad, open) {
            (true, None) => open = Some(s.at),
            (false, Some(from)) => {
                if s.readyz.is_none() {
                    stopping.push(s.at - from);
                } else {
                    starting.push(s.at - from);
                }
                open = None;
            }
            _ => {}
        }
    }
    if let (Some(from), Some(last)) = (open, samples.last()) {
        starting.push(last.at - from);
    }
    (starting, stopping)
}

/// Background API load: creates, then keeps updating, 50 ConfigMaps in `ns` at ~20 writes
/// a second until told to stop (at most 20 000 writes). Returns (writes, failures).
fn spawn_load(
    client: Client,
    ns: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(client, &ns);
        let (mut ok, mut failed) = (0u64, 0u64);
        for i in 0..20_000u64 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let name = format!("load-{}", i % 50);
            let result = if i < 50 {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": name}, "data": {"n": i.to_string()}}),
                )
                .expect("a valid ConfigMap");
                api.create(&PostParams::default(), &cm).await.map(drop)
            } else {
                let patch = json!({"data": {"n": i.to_string()}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(drop)
            };
            if result.is_ok() {
                ok += 1;
            } else {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, failed)
    })
}

/// Waits until each (namespace, kind, name) parent has its marker child (controlled by it)
/// and status `Marked`; returns how long that took.
async fn wait_marked(
    client: &Client,
    parents: &[(String, ApiResource, String)],
    timeout: Duration,
    op: &RestartableOperator,
) -> Result<Duration> {
    let began = Instant::now();
    let mut pending: Vec<&(String, ApiResource, String)> = parents.iter().collect();
    loop {
        let mut still = Vec::new();
        for p in pending {
            let (ns, ar, name) = p;
            let parent = Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
                .get_opt(name)
                .await?;
            let child = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&format!("{name}-marker"))
                .await?;
            let done = match (parent, child) {
                (Some(parent), Some(child)) => {
                    parent.data["status"]["phase"] == "Marked"
                        && child
                            .owner_references()
                            .iter()
                            .any(|o| Some(&o.uid) == parent.uid().as_ref())
                }
                _ => false,
            };
            if !done {
                still.push(p);
            }
        }
        if still.is_empty() {
            return Ok(began.elapsed());
        }
        if began.elapsed() > timeout {
            let names: Vec<String> = still
                .iter()
                .map(|(ns, ar, n)| format!("{ns}/{} {n}", ar.kind))
                .collect();
            bail!(
                "not reconciled after {timeout:?}: {names:?}; operator log:\n{}",
                op.log_tail(60)
            );
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Figures of one restart cycle.
struct Cycle {
    /// SIGTERM to exit.
    stop: Duration,
    /// Start to `/readyz` ok.
    ready: Duration,
    /// Start to `wasmop_controllers` = 3.
    running: Duration,
    /// Start to every new parent of the cycle reconciled.
    reconciled: Duration,
    /// The whole cycle.
    total: Duration,
}

fn spread(mut values: Vec<Duration>) -> String {
    values.sort();
    let pick = |q: f64| {
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        values[i].as_secs_f64()
    };
    format!(
        "min {:.2}s, median {:.2}s, p90 {:.2}s, max {:.2}s",
        pick(0.0),
        pick(0.5),
        pick(0.9),
        pick(1.0)
    )
}

/// Restart cycles wanted, and the time they may take (the test stops early, saying so).
const CYCLES: usize = 40;
const CYCLES_BUDGET: Duration = Duration::from_secs(150);
/// The longest `/readyz` may say ok while fewer than every controller runs.
const READY_AHEAD_MAX: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restarts_under_load_end_with_every_controller_running_and_reconciling()
-> Result<()> {
    on_own_control_plane(restarts).await
}

async fn restarts(cp: &ControlPlane) -> Result<()> {
    let began = Instant::now();
    let client = cp.client().await?;
    let ns1 = team(cp, &client, "restart-1").await?;
    let ns2 = team(cp, &client, "restart-2").await?;
    let load_ns = localcp::create_test_namespace(&client, "restart-load").await?;
    let op = RestartableOperator::start(cp.kubeconfig()).await?;
    // (namespace, WasmController, parent kind, parent name prefix)
    let controllers = [
        (ns1.clone(), "sites", website_resource(), "w"),
        (ns1.clone(), "blogs", blog_resource(), "b"),
        (ns2.clone(), "sites", website_resource(), "w"),
    ];
    let n = controllers.len() as f64;
    for (ns, name, ar, _) in &controllers {
        controller(&client, ns, name, ar, marker(), false).await?;
    }
    for (ns, name, _, _) in &controllers {
        wait_wc_ready(&client, ns, name, &op).await?;
    }
    wait_controllers(&op, n, Duration::from_secs(60)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(client.clone(), load_ns, stop.clone());
    let sampler = spawn_sampler(op.metrics_url.clone(), stop.clone());
    let cycles_began = Instant::now();
    let mut cycles: Vec<Cycle> = Vec::new();
    let outcome: Result<()> = async {
        for cycle in 1..=CYCLES {
            if cycles_began.elapsed() > CYCLES_BUDGET {
                eprintln!(
                    "restarts: stopping after {} cycles: the {CYCLES_BUDGET:?} budget is spent",
                    cycles.len()
                );
                break;
            }
            let cycle_began = Instant::now();
            op.note(&format!("cycle {cycle}"));
            let stopped = op.stop(StopWith::Term, Duration::from_secs(30)).await?;
            ensure!(
                !stopped.forced,
                "cycle {cycle}: wasmop did not exit within 30s of SIGTERM; log:\n{}",
                op.log_tail(40)
            );
            // Parents created while no operator runs, and right after the new one is ready.
            let mut fresh = Vec::new();
            for (ns, _, ar, prefix) in &controllers {
                let name = format!("{prefix}-down-{cycle}");
                create_parent(&client, ns, ar, &name).await?;
                fresh.push((ns.clone(), ar.clone(), name));
            }
            let started = Instant::now();
            op.spawn()?;
            let ready = op.wait_ready(Duration::from_secs(60)).await?;
            for (ns, _, ar, prefix) in &controllers {
                let name = format!("{prefix}-up-{cycle}");
                create_parent(&client, ns, ar, &name).await?;
                fresh.push((ns.clone(), ar.clone(), name));
            }
            wait_controllers(&op, n, Duration::from_secs(60))
                .await
                .map_err(|e| anyhow!("cycle {cycle}: {e}"))?;
            let running = started.elapsed();
            for (ns, name, _, _) in &controllers {
                wait_wc_ready(&client, ns, name, &op).await?;
            }
            wait_marked(&client, &fresh, Duration::from_secs(60), &op)
                .await
                .map_err(|e| anyhow!("cycle {cycle}: {e}"))?;
            cycles.push(Cycle {
                stop: stopped.after,
                ready,
                running,
                reconciled: started.elapsed(),
                total: cycle_began.elapsed(),
            });
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await?;
    let (writes, write_failures) = load.await?;
    outcome?;

    let desired: Vec<Desired> = controllers
        .iter()
        .map(|(ns, name, ar, _)| Desired::marker(ns, name, ar.clone(), false))
        .collect();
    let (_, census) = converge(&client, &desired, Duration::from_secs(30), &op).await?;
    let (spans, stopping) = ready_but_not_running(&samples, n);
    let longest = spans.iter().max().copied().unwrap_or_default();
    let down = samples.iter().filter(|s| s.readyz.is_none()).count();
    let not_ready = samples.iter().filter(|s| s.readyz == Some(503)).count();
    let ahead = samples
        .iter()
        .filter(|s| s.readyz == Some(200) && s.controllers.is_some_and(|c| c < n))
        .count();
    eprintln!(
        "restarts: {} SIGTERM restart cycles in {} (cycle {}); every cycle ended with {n} controllers running, each Ready, and its {} new parents reconciled",
        cycles.len(),
        secs(cycles_began.elapsed()),
        spread(cycles.iter().map(|c| c.total).collect()),
        controllers.len() * 2,
    );
    eprintln!(
        "restarts: SIGTERM to exit {}; start to /readyz ok {}; start to {n} controllers {}; start to new parents reconciled {}",
        spread(cycles.iter().map(|c| c.stop).collect()),
        spread(cycles.iter().map(|c| c.ready).collect()),
        spread(cycles.iter().map(|c| c.running).collect()),
        spread(cycles.iter().map(|c| c.reconciled).collect()),
    );
    eprintln!(
        "restarts: {} samples of /readyz + wasmop_controllers: {down} no answer, {not_ready} 503, {ahead} ok while fewer than {n} controllers ran: {} spans while starting (longest {:.2}s, total {:.2}s), {} while shutting down after SIGTERM (longest {:.2}s)",
        samples.len(),
        spans.len(),
        longest.as_secs_f64(),
        spans.iter().sum::<Duration>().as_secs_f64(),
        stopping.len(),
        stopping
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
    );
    eprintln!(
        "restarts: background load {writes} ConfigMap writes ({write_failures} failed); {} parents, {} children, all as desired; operator started {} times; test took {}",
        census.iter().map(|c| c.parents).sum::<usize>(),
        census.iter().map(|c| c.children).sum::<usize>(),
        op.starts(),
        secs(began.elapsed())
    );
    ensure!(
        longest <= READY_AHEAD_MAX,
        "/readyz answered ok for {:.2}s while fewer than {n} controllers ran (starting)",
        longest.as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. A fault soak

/// What the soak did, when (printed as it happens and again at the end).
struct Timeline {
    t0: Instant,
    lines: Vec<String>,
}

impl Timeline {
    fn record(&mut self, what: impl Into<String>) {
        let line = format!("t+{:5.1}s {}", self.t0.elapsed().as_secs_f64(), what.into());
        eprintln!("soak: {line}");
        self.lines.push(line);
    }

    async fn at(&self, secs: f64) {
        let when = self.t0 + Duration::from_secs_f64(secs);
        tokio::time::sleep_until(when.into()).await;
    }
}

/// The proxy's background faults: a few 500s and 429s, some latency, watches cut after 8 s.
/// (A reconcile makes about a dozen requests and each failure doubles its parent's backoff,
/// so the background rate stays low and the bursts are short.)
fn low_faults() -> FaultConfig {
    FaultConfig {
        seed: 20,
        error_500_per_mille: 20,
        error_429_per_mille: 10,
        latency_ms: 0..=20,
        cut_watch_after: Some(Duration::from_secs(8)),
        max_faults: 3000,
        only_paths_containing: None,
    }
}

fn describe(c: &FaultConfig) -> String {
    format!(
        "fault proxy: {}‰ 500s, {}‰ 429s, {}-{} ms latency, watches cut after {:?}",
        c.error_500_per_mille,
        c.error_429_per_mille,
        c.latency_ms.start(),
        c.latency_ms.end(),
        c.cut_watch_after.unwrap_or_default()
    )
}

fn burst_faults() -> FaultConfig {
    FaultConfig {
        error_500_per_mille: 250,
        error_429_per_mille: 150,
        ..low_faults()
    }
}

fn slow_faults() -> FaultConfig {
    FaultConfig {
        latency_ms: 100..=300,
        ..low_faults()
    }
}

/// Starts the operator again as a kubelet would: when it exits at start-up (its first
/// requests meet an injected fault), start it again after a short pause.
async fn restart_like_a_kubelet(
    op: &RestartableOperator,
    crashes: &mut Vec<String>,
) -> Result<Duration> {
    let began = Instant::now();
    for attempt in 1..=10u32 {
        op.spawn()?;
        match op.wait_ready(Duration::from_secs(60)).await {
            Ok(_) => return Ok(began.elapsed()),
            Err(e) if e.to_string().contains("exited") => {
                let tail = op.log_tail(2);
                crashes.push(format!(
                    "exited at start-up: {}",
                    tail.lines().last().unwrap_or_default()
                ));
                tokio::time::sleep(Duration::from_millis(300) * attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
    bail!(
        "wasmop kept exiting at start-up: {crashes:?}; log:\n{}",
        op.log_tail(40)
    )
}

/// Sum of the write counters the quiet check watches.
async fn writes(op: &RestartableOperator) -> Result<(f64, f64)> {
    let text = op.metrics().await?;
    Ok((
        wasmop_e2e::metric_in(&text, "wasmop_applies_total", &[]),
        wasmop_e2e::metric_in(&text, "wasmop_prunes_total", &[]),
    ))
}

/// Parents per controller.
const SITES: usize = 80;
const BLOGS: usize = 60;
const PRUNED: usize = 60;
/// Blogs deleted during the soak (their controller finalizes).
const DELETED_BLOGS: usize = 12;
/// The soak's faults last at least this long.
const SOAK: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_soak_ends_in_exactly_the_desired_world_and_then_writes_nothing() -> Result<()> {
    on_own_control_plane(soak).await
}

#[allow(clippy::too_many_lines)] // one timeline, read top to bottom
async fn soak(cp: &ControlPlane) -> Result<()> {
    let began = Instant::now();
    let client = cp.client().await?;
    let ns1 = team(cp, &client, "soak-1").await?;
    let ns2 = team(cp, &client, "soak-2").await?;
    let unwatched = localcp::create_test_namespace(&client, "soak-advance").await?;
    // The operator talks to the API server only through the proxy; the test does not.
    let proxy = FaultProxy::start(cp, FaultConfig::default()).await?;
    let op = RestartableOperator::start(proxy.kubeconfig()).await?;
    controller(&client, &ns1, "sites", &website_resource(), marker(), false).await?;
    controller(&client, &ns1, "blogs", &blog_resource(), marker(), true).await?;
    controller(
        &client,
        &ns2,
        "pruner",
        &website_resource(),
        numbered(5),
        false,
    )
    .await?;
    for (ns, name) in [(&ns1, "sites"), (&ns1, "blogs"), (&ns2, "pruner")] {
        wait_wc_ready(&client, ns, name, &op).await?;
    }
    wait_controllers(&op, 3.0, Duration::from_secs(60)).await?;
    let pruner = |n: usize| Desired {
        ns: ns2.clone(),
        controller: "pruner".into(),
        parent: website_resource(),
        suffixes: (0..n).map(|i| format!("c{i}")).collect(),
        phase: "Configured",
        finalizer: false,
    };
    let desired = vec![
        Desired::marker(&ns1, "sites", website_resource(), false),
        Desired::marker(&ns1, "blogs", blog_resource(), true),
        pruner(2),
    ];

    let mut tl = Timeline {
        t0: Instant::now(),
        lines: Vec::new(),
    };
    let mut crashes = Vec::new();
    let mut kills = 0;
    let soak_from = log_len(&op);
    proxy.set_config(low_faults());
    tl.record(describe(&low_faults()));

    // 200 parents, created (as the admin, not through the proxy) over the first part of the
    // soak, through the API server's outages.
    let creator = {
        let (client, ns1, ns2) = (client.clone(), ns1.clone(), ns2.clone());
        tokio::spawn(async move {
            let (mut w, mut b, mut s, mut retries) = (0, 0, 0, 0);
            for i in 0..(SITES + BLOGS + PRUNED) {
                let (ns, ar, name) = match i % 10 {
                    0..=3 if w < SITES => {
                        w += 1;
                        (&ns1, website_resource(), format!("w-{}", w - 1))
                    }
                    4..=6 if b < BLOGS => {
                        b += 1;
                        (&ns1, blog_resource(), format!("b-{}", b - 1))
                    }
                    _ if s < PRUNED => {
                        s += 1;
                        (&ns2, website_resource(), format!("s-{}", s - 1))
                    }
                    _ => {
                        w += 1;
                        (&ns1, website_resource(), format!("w-{}", w - 1))
                    }
                };
                retries += create_parent_retrying(&client, ns, &ar, &name).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(retries)
        })
    };

    tl.at(3.0).await;
    proxy.set_config(burst_faults());
    tl.record(format!("burst for 2 s: {}", describe(&burst_faults())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_config(low_faults());

    tl.at(7.0).await;
    sigkill(apiserver_pid(cp)?)?;
    tl.record("kube-apiserver SIGKILLed; down for 2 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cp.restart_apiserver().await?;
    tl.record("kube-apiserver back (restarted in place)");

    tl.at(15.0).await;
    proxy.set_config(burst_faults());
    tl.record(format!("burst for 2 s: {}", describe(&burst_faults())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_config(low_faults());

    tl.at(19.0).await;
    advance_revision(&client, &unwatched, "soak", 20).await?;
    let revision = cp.compact_etcd().await?;
    tl.record(format!(
        "etcd compacted at revision {revision}; kube-apiserver restarting (graceful)"
    ));
    cp.restart_apiserver().await?;
    tl.record("kube-apiserver back: resumed watches get 410 Gone");

    let retries = creator.await??;
    tl.record(format!(
        "{} parents created ({retries} create attempts refused during outages)",
        SITES + BLOGS + PRUNED
    ));

    // The prune: wait until the pruner's parents have their 5 children, ask for 2, and
    // SIGKILL wasmop once some of the 3 x PRUNED deletions are done.
    let (took, _) = converge(&client, &[pruner(5)], Duration::from_secs(120), &op).await?;
    tl.record(format!(
        "pruner: {PRUNED} parents with 5 children each ({} to get there)",
        secs(took)
    ));
    let prunes_before = op.metric("wasmop_prunes_total", &[]).await?;
    controller(
        &client,
        &ns2,
        "pruner",
        &website_resource(),
        numbered(2),
        false,
    )
    .await?;
    tl.record(format!(
        "pruner's config now returns 2 children: {} prunes to do",
        PRUNED * 3
    ));
    let watching = Instant::now();
    let pruned = loop {
        let pruned = op.metric("wasmop_prunes_total", &[]).await? - prunes_before;
        if pruned >= 15.0 || watching.elapsed() > Duration::from_secs(60) {
            break pruned;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let stopped = op.stop(StopWith::Kill, Duration::ZERO).await?;
    kills += 1;
    let left = census(&client, &pruner(2)).await?;
    tl.record(format!(
        "wasmop SIGKILLed mid-prune ({pruned} of {} prunes done, {} pruner children left, {:?})",
        PRUNED * 3,
        left.children,
        stopped.status
    ));
    ensure!(
        (pruned as usize) < PRUNED * 3,
        "the prune finished before the kill ({pruned} prunes): nothing was interrupted"
    );
    let up = restart_like_a_kubelet(&op, &mut crashes).await?;
    tl.record(format!("wasmop started again, ready after {}", secs(up)));

    let blogs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns1, &blog_resource());
    for i in 0..DELETED_BLOGS {
        blogs
            .delete(&format!("b-{i}"), &DeleteParams::default())
            .await?;
    }
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns1, &website_resource());
    for i in 0..20 {
        let touch = json!({"metadata": {"annotations": {"e2e/touched": "yes"}}});
        websites
            .patch(
                &format!("w-{i}"),
                &PatchParams::default(),
                &Patch::Merge(&touch),
            )
            .await?;
    }
    tl.record(format!(
        "{DELETED_BLOGS} Blogs deleted (finalize runs), 20 Websites edited"
    ));

    proxy.set_config(burst_faults());
    tl.record(format!("burst for 2 s: {}", describe(&burst_faults())));
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_config(slow_faults());
    tl.record(format!("slow for 5 s: {}", describe(&slow_faults())));
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_config(low_faults());

    let soak_end = SOAK.as_secs_f64().max(tl.t0.elapsed().as_secs_f64() + 5.0);
    tl.at(soak_end).await;
    proxy.set_config(FaultConfig::default());
    let counts = proxy.counts();
    tl.record(format!(
        "faults off. Proxy: {} requests, {} x 500, {} x 429, {} watches cut, {} delayed",
        counts.requests, counts.errors_500, counts.errors_429, counts.watch_cuts, counts.delayed
    ));

    let (took, world) = converge(&client, &desired, Duration::from_secs(120), &op)
        .await
        .map_err(|e| anyhow!("the soak did not converge: {e}"))?;
    tl.record(format!(
        "converged {} after the faults stopped: {} parents, {} children, every one as desired",
        secs(took),
        world.iter().map(|c| c.parents).sum::<usize>(),
        world.iter().map(|c| c.children).sum::<usize>(),
    ));
    let parents: Vec<usize> = world.iter().map(|c| c.parents).collect();
    ensure!(
        parents == [SITES, BLOGS - DELETED_BLOGS, PRUNED],
        "parents per controller {parents:?}"
    );

    // Converged also means the operator knows it: no parent is left with a failed reconcile
    // waiting out its backoff (whose retry would send applies, unchanged but requests).
    let settled = Instant::now();
    for d in &desired {
        loop {
            let degraded = condition(&client, &d.ns, &d.controller, "Degraded").await?;
            if degraded.as_ref().is_some_and(|(s, _, _)| s == "False") {
                break;
            }
            ensure!(
                settled.elapsed() < Duration::from_secs(120),
                "{}/{} still Degraded 120 s after converging: {degraded:?}\n{}",
                d.ns,
                d.controller,
                op.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tl.record(format!(
        "every controller Degraded=False {} later",
        secs(settled.elapsed())
    ));

    // And then nothing more is written.
    let before = writes(&op).await?;
    let versions_before: Vec<BTreeMap<String, String>> =
        world.into_iter().map(|c| c.versions).collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = writes(&op).await?;
    let mut versions_after = Vec::new();
    for d in &desired {
        versions_after.push(census(&client, d).await?.versions);
    }
    let changed: Vec<&String> = versions_before
        .iter()
        .zip(&versions_after)
        .flat_map(|(b, a)| {
            a.iter()
                .filter(move |(k, v)| b.get(*k) != Some(*v))
                .map(|(k, _)| k)
        })
        .collect();
    tl.record(format!(
        "quiet for 5 s: wasmop_applies_total {} -> {}, wasmop_prunes_total {} -> {}, {} objects changed",
        before.0,
        after.0,
        before.1,
        after.1,
        changed.len()
    ));
    ensure!(
        before == after && changed.is_empty(),
        "writes after convergence: applies {before:?} -> {after:?}, changed {changed:?}; log:\n{}",
        op.log_tail(40)
    );

    let text = op.metrics().await?;
    eprintln!("soak: summary");
    for line in &tl.lines {
        eprintln!("  {line}");
    }
    eprintln!(
        "  faults survived: {} x 500 and {} x 429 injected, {} watches cut, 2 API server restarts (1 SIGKILL, 1 after a compaction), {} x 410 Gone in the operator's log, {kills} wasmop SIGKILL mid-prune, {} start-up crash(es) {crashes:?}",
        counts.errors_500,
        counts.errors_429,
        counts.watch_cuts,
        gone_lines(&op, soak_from),
        crashes.len(),
    );
    eprintln!(
        "  last wasmop process: {} reconciles ({} failed), {} applies, {} prunes, {} watch errors; converged {} after the faults stopped; test took {}",
        wasmop_e2e::metric_in(&text, "wasmop_reconciles_total", &[]),
        wasmop_e2e::metric_in(&text, "wasmop_reconciles_total", &[])
            - wasmop_e2e::metric_in(&text, "wasmop_reconciles_total", &[("result", "success")]),
        after.0,
        after.1,
        wasmop_e2e::metric_in(&text, "wasmop_watch_errors_total", &[]),
        secs(took),
        secs(began.elapsed()),
    );
    Ok(())
}

/// A status write of the WasmController that the API server refuses is written again later:
/// the `Degraded` condition catches up with a parent that recovered while every status write
/// failed, with no further event to prompt it. (It used to be written once per change, so such
/// a condition stayed `True` for good; the soak above saw that once.)
#[tokio::test]
async fn a_refused_status_write_of_the_wasmcontroller_is_retried() -> Result<()> {
    on_own_control_plane(status_retry).await
}

async fn status_retry(cp: &ControlPlane) -> Result<()> {
    let client = cp.client().await?;
    let ns = team(cp, &client, "status-retry").await?;
    let proxy = FaultProxy::start(cp, FaultConfig::default()).await?;
    let op = RestartableOperator::start(proxy.kubeconfig()).await?;
    controller(&client, &ns, "sites", &website_resource(), marker(), false).await?;
    wait_wc_ready(&client, &ns, "sites", &op).await?;
    let degraded = async |want: &str| -> Result<()> {
        wasmop_e2e::eventually(
            Duration::from_secs(60),
            &format!("Degraded={want}"),
            || async {
                let got = condition(&client, &ns, "sites", "Degraded").await?;
                Ok(got.filter(|(s, _, _)| s == want).map(|_| ()))
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", op.log_tail(20)))
    };
    // A parent whose plugin call fails: Degraded=True.
    create_website_in_mode(&client, &ns, "w", "error").await?;
    degraded("True").await?;

    // From now on the API server (through the proxy) refuses every status write of it.
    proxy.set_config(FaultConfig {
        error_500_per_mille: 1000,
        max_faults: u64::MAX,
        only_paths_containing: Some(format!("/namespaces/{ns}/wasmcontrollers/sites/status")),
        ..FaultConfig::default()
    });
    // The parent recovers, and the operator's status write for it is refused.
    let refused = proxy.counts().errors_500;
    Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &website_resource())
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {MISBEHAVE_MODE: null}}})),
        )
        .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let what = "a reconcile that writes the marker and a refused status write";
    wasmop_e2e::eventually(Duration::from_secs(60), what, || async {
        let marked = configmaps.get_opt("w-marker").await?.is_some();
        Ok((marked && proxy.counts().errors_500 > refused).then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(20)))?;
    // Nothing else happens, but once the API server answers again the condition catches up.
    proxy.set_config(FaultConfig::default());
    degraded("False").await
}
