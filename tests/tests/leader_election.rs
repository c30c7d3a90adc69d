//! Leader election end to end: two `wasmop run --leader-elect` replicas on the real control
//! plane, as the operator's documented account, each with a token of its own. One reconciles;
//! the standby opens no controller and writes nothing; kill -9 of the leader hands over after
//! the lease duration (not before); SIGTERM hands over at once. The API server's audit log
//! (on a control plane of this test's own) shows the writes of the two replicas, told apart by
//! their tokens' credential ids, never interleave. A leader whose Lease is taken exits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use localcp::{ControlPlane, FaultConfig, FaultProxy, Options};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use wasmop_e2e::website::{
    WAIT, apply_controller, create_website, put_plugin, team_namespace, website_resource,
};
use wasmop_e2e::{
    RestartableOperator, StopWith, account_kubeconfig, eventually, http_get, install_crds,
    operator_account, plugin,
};

const LEASE: Duration = Duration::from_secs(8);
const RETRY: Duration = Duration::from_secs(1);
const ARGS: [&str; 4] = [
    "--leader-elect",
    "--leader-elect-lease-duration=8s",
    "--leader-elect-renew-deadline=5s",
    "--leader-elect-retry-period=1s",
];

/// Writes of the operator's ServiceAccount (any group), at Metadata level: who, what, when.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"#;

struct Audited {
    cp: ControlPlane,
    /// None when `KUBECONFIG` names an existing cluster (no audit log of ours).
    log: Option<PathBuf>,
}

static CP: OnceCell<Audited> = OnceCell::const_new();
/// The tests' timings must not depend on each other's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A control plane of this binary's own, with an audit log of service-account writes.
async fn control_plane() -> Result<&'static Audited> {
    CP.get_or_try_init(|| async {
        let dir = std::env::temp_dir().join(format!("wasmop-e2e-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (policy, log) = (dir.join("policy.yaml"), dir.join("audit.log"));
        std::fs::write(&policy, AUDIT_POLICY)?;
        let cp = ControlPlane::start(Options {
            extra_apiserver_args: vec![
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", log.display()),
            ],
            ..Options::default()
        })
        .await?;
        install_crds(&cp)?;
        let log = (!cp.is_external()).then_some(log);
        Ok(Audited { cp, log })
    })
    .await
}

async fn is_leader(op: &RestartableOperator) -> Result<bool> {
    Ok(op.metric("wasmop_leader", &[]).await? == 1.0)
}

/// Waits until `op` leads; returns how long that took.
async fn wait_leader(op: &RestartableOperator, timeout: Duration) -> Result<Duration> {
    let began = Instant::now();
    eventually(timeout, "the replica to lead", || async {
        Ok(is_leader(op).await?.then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    Ok(began.elapsed())
}

/// A standby: ready, says so, leads nothing, runs no controller, has reconciled and written
/// nothing.
async fn assert_idle_standby(op: &RestartableOperator) -> Result<()> {
    let (code, body) = http_get(&format!("{}/readyz", op.metrics_url)).await?;
    assert_eq!((code, body.contains("standby")), (200, true), "{body}");
    let metrics = op.metrics().await?;
    for name in [
        "wasmop_leader",
        "wasmop_controllers",
        "wasmop_reconciles_total",
        "wasmop_applies_total",
        "wasmop_watches",
    ] {
        assert_eq!(
            wasmop_e2e::metric_in(&metrics, name, &[]),
            0.0,
            "the standby's {name} is not 0"
        );
    }
    Ok(())
}

async fn set_content(client: &kube::Client, ns: &str, content: &str) -> Result<()> {
    let sites: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    sites
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"content": content}})),
        )
        .await?;
    Ok(())
}

async fn wait_content(client: &kube::Client, ns: &str, content: &str) -> Result<()> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    eventually(
        WAIT,
        &format!("site-content to say {content:?}"),
        || async {
            let page = configmaps
                .get_opt("site-content")
                .await?
                .and_then(|cm| cm.data?.get("index.html").cloned());
            Ok((page.as_deref() == Some(content)).then_some(()))
        },
    )
    .await
}

fn context_namespace(kubeconfig: &Path) -> Result<String> {
    let config: Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    config["contexts"][0]["context"]["namespace"]
        .as_str()
        .map(str::to_string)
        .context("the account's kubeconfig names no namespace")
}

#[tokio::test]
async fn one_replica_writes_and_a_standby_takes_over_on_crash_and_on_shutdown() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let audited = control_plane().await?;
    let cp: &'static ControlPlane = &audited.cp;
    let client = cp.client().await?;
    let kubeconfig_a = operator_account(cp, true).await?;
    let op_ns = context_namespace(&kubeconfig_a)?;
    let kubeconfig_b = account_kubeconfig(cp, &op_ns, "wasmop")?;

    let a = RestartableOperator::start_with(&kubeconfig_a, &ARGS).await?;
    wait_leader(&a, WAIT).await?;
    let b = RestartableOperator::start_with(&kubeconfig_b, &ARGS).await?;

    let ns = team_namespace(cp, &client, "leader").await?;
    put_plugin(&client, &ns, "website", plugin("website-rust")).await?;
    apply_controller(&client, &ns, "website", "website", json!({}), json!({})).await?;
    create_website(&client, &ns, "site", json!({"content": "one"})).await?;
    wait_content(&client, &ns, "one").await?;
    assert_idle_standby(&b).await?;

    // Crash: B waits out the lease (by its own clock) and no longer.
    a.note("kill -9 of the leader");
    a.stop(StopWith::Kill, Duration::ZERO).await?;
    let took = wait_leader(&b, LEASE * 3).await?;
    assert!(
        took >= LEASE - 2 * RETRY && took <= LEASE + 2 * RETRY + Duration::from_secs(2),
        "B took over {took:?} after A was killed; the lease is {LEASE:?}"
    );
    set_content(&client, &ns, "two").await?;
    wait_content(&client, &ns, "two").await?;

    // A comes back as a standby.
    a.spawn()?;
    a.wait_ready(WAIT).await?;
    assert_idle_standby(&a).await?;

    // Graceful shutdown: B stops its controllers, releases the Lease, A takes it at once.
    let stopped = b.stop(StopWith::Term, Duration::from_secs(40)).await?;
    assert!(!stopped.forced, "B needed SIGKILL: {}", b.log_tail(30));
    assert!(
        b.log_tail(200).contains("released the Lease"),
        "{}",
        b.log_tail(30)
    );
    let took = wait_leader(&a, LEASE).await?;
    assert!(
        took < 2 * RETRY + Duration::from_secs(1),
        "A took over {took:?} after B released the Lease (should be about one retry period)"
    );
    set_content(&client, &ns, "three").await?;
    wait_content(&client, &ns, "three").await?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &op_ns);
    let spec = leases.get("wasmop").await?.spec.context("Lease spec")?;
    assert!(spec.lease_transitions >= Some(2), "{spec:?}");

    // Someone else takes the Lease (as no replica would: without waiting for it to expire). A
    // notices at its next renewal and exits, rather than writing on without it.
    a.note("the Lease is taken by an intruder");
    leases
        .patch(
            "wasmop",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 60,
                                          "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())}}),
            ),
        )
        .await?;
    eventually(2 * LEASE, "A to exit", || async {
        Ok(a.readyz().await.is_none().then_some(()))
    })
    .await?;
    let exited = a.stop(StopWith::Term, Duration::from_secs(5)).await?;
    assert!(
        exited.status.is_some_and(|s| !s.success()),
        "A's exit: {exited:?}"
    );
    assert!(
        a.log_tail(400).contains("lost the leader Lease"),
        "{}",
        a.log_tail(40)
    );

    match &audited.log {
        Some(log) => {
            writers_never_interleave(log, &op_ns)?;
            if let Some(dir) = log.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
            Ok(())
        }
        None => {
            eprintln!("audit check skipped: KUBECONFIG names a cluster without our audit log");
            Ok(())
        }
    }
}

/// The operator account's writes (except to its Lease), in the order the API server received
/// them, come from A, then B, then A again: each replica's writes form one run, so the two
/// never wrote in the same period.
fn writers_never_interleave(log: &Path, op_ns: &str) -> Result<()> {
    let user = format!("system:serviceaccount:{op_ns}:wasmop");
    let mut writes: Vec<(String, String, String)> = Vec::new();
    for line in std::fs::read_to_string(log)?.lines() {
        let event: Value = serde_json::from_str(line)?;
        if event["stage"] != "ResponseComplete"
            || event["user"]["username"] != user.as_str()
            || event["objectRef"]["resource"] == "leases"
        {
            continue;
        }
        let credential = event["user"]["extra"]["authentication.kubernetes.io/credential-id"][0]
            .as_str()
            .context("audit events carry no credential id for the operator's tokens")?
            .to_string();
        let when = event["requestReceivedTimestamp"]
            .as_str()
            .context("requestReceivedTimestamp")?
            .to_string();
        let what = format!(
            "{} {}/{}",
            event["verb"].as_str().unwrap_or_default(),
            event["objectRef"]["resource"].as_str().unwrap_or_default(),
            event["objectRef"]["name"].as_str().unwrap_or_default()
        );
        writes.push((when, credential, what));
    }
    // RFC 3339 with a fixed number of fractional digits (microseconds) sorts as text.
    writes.sort();
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for (_, who, _) in &writes {
        match runs.last_mut() {
            Some((last, n)) if last == who => *n += 1,
            _ => runs.push((who, 1)),
        }
    }
    if runs.len() != 3 || runs[0].0 != runs[2].0 || runs[0].0 == runs[1].0 {
        let shown: Vec<String> = writes
            .iter()
            .map(|(w, c, what)| format!("{w} {c} {what}"))
            .collect();
        bail!(
            "expected the writes of A, then B, then A; got runs {runs:?}:\n{}",
            shown.join("\n")
        );
    }
    Ok(())
}

/// A leader cut off from the API server (every request through its proxy fails) gives up after
/// the renew deadline and exits; the standby, which still reaches the API server, takes the
/// Lease only after that, once the lease duration has passed: never two leaders at once.
#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_exits_before_the_standby_takes_over() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cp = &control_plane().await?.cp;
    let client = cp.client().await?;
    // A Lease of this test's own; both replicas run with the admin kubeconfig (the proxy
    // forwards as the admin anyway).
    let lease_ns = localcp::create_test_namespace(&client, "lease").await?;
    let namespace_arg = format!("--leader-elect-namespace={lease_ns}");
    let mut args = ARGS.to_vec();
    args.push(&namespace_arg);
    let proxy = FaultProxy::start(cp, FaultConfig::default()).await?;
    let a = RestartableOperator::start_with(proxy.kubeconfig(), &args).await?;
    wait_leader(&a, WAIT).await?;
    let b = RestartableOperator::start_with(cp.kubeconfig(), &args).await?;
    assert_idle_standby(&b).await?;

    a.note("every request through the proxy fails from now on");
    let cut = Instant::now();
    proxy.set_config(FaultConfig {
        error_500_per_mille: 1000,
        max_faults: u64::MAX,
        ..FaultConfig::default()
    });
    // Until A is gone, B must not lead.
    loop {
        if a.readyz().await.is_none() {
            break;
        }
        assert!(
            !is_leader(&b).await?,
            "B leads while A still runs ({:?} after the cut)",
            cut.elapsed()
        );
        assert!(
            cut.elapsed() < LEASE * 2,
            "A still runs {:?} after the cut:\n{}",
            cut.elapsed(),
            a.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited_after = cut.elapsed();
    let renew_deadline = Duration::from_secs(5);
    assert!(
        exited_after <= renew_deadline + 2 * RETRY + Duration::from_secs(2),
        "A exited {exited_after:?} after the cut; its renew deadline is {renew_deadline:?}"
    );
    let stopped = a.stop(StopWith::Term, Duration::from_secs(5)).await?;
    assert!(stopped.status.is_some_and(|s| !s.success()), "{stopped:?}");
    assert!(
        a.log_tail(400)
            .contains("could not renew the Lease in time"),
        "{}",
        a.log_tail(30)
    );
    wait_leader(&b, LEASE * 2).await?;
    let took = cut.elapsed();
    assert!(
        took > exited_after,
        "B took the Lease {took:?} after the cut, A exited {exited_after:?} after it"
    );
    eprintln!("A exited {exited_after:?} after the cut; B took over {took:?} after it");
    Ok(())
}
