//! The local control plane itself (`localcp`, issue 10): real etcd, kube-apiserver and
//! kube-controller-manager behave as Kubernetes does, faults are real, nothing outlives the
//! test binary. One shared control plane per test binary, a namespace per test; the tests
//! that restart or compact start their own.
//!
//! Run: `cargo test -p wasmop-e2e --test control_plane` (after `make control-plane`). With
//! `KUBECONFIG` set the kubectl and kube-rs tests run against that cluster instead; the tests
//! that need our own processes then say so and pass without running.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use localcp::{ControlPlane, FaultConfig, FaultProxy, Options, create_test_namespace};

// ---------------------------------------------------------------------------------------
// Helpers

/// Runs kubectl against `cp` with optional stdin; returns the output whatever the exit code.
async fn kubectl(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut cmd = tokio::process::Command::from(cp.kubectl());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", cp.kubectl_path().display()))?;
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).await?;
    }
    Ok(child.wait_with_output().await?)
}

/// kubectl that must succeed; returns stdout.
async fn kubectl_ok(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = kubectl(cp, args, stdin).await?;
    ensure!(
        out.status.success(),
        "kubectl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Polls `check` every 250 ms until it returns `Ok(true)` or `timeout` passes.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let began = Instant::now();
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!(" (last error: {e:#})"),
        }
        if began.elapsed() > timeout {
            bail!("{what}: not true after {timeout:?}{last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes what a test made when it ends, pass or fail (synchronously: Drop cannot await, and
/// kubectl needs no runtime).
struct Cleanup {
    kubectl: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
    targets: Vec<Vec<String>>,
}

impl Cleanup {
    fn new(cp: &ControlPlane) -> Self {
        Self {
            kubectl: cp.kubectl_path(),
            kubeconfig: cp.kubeconfig().to_path_buf(),
            targets: Vec::new(),
        }
    }

    /// `kubectl delete <what...> --wait=false --ignore-not-found` on drop.
    fn delete(&mut self, what: &[&str]) {
        self.targets
            .push(what.iter().map(|s| (*s).to_string()).collect());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for target in self.targets.iter().rev() {
            let _ = std::process::Command::new(&self.kubectl)
                .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                .arg("delete")
                .args(target)
                .args(["--wait=false", "--ignore-not-found"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A namespaced custom resource kind of its own for one test (CRDs are cluster-wide, tests run
/// in parallel and may share a cluster), deleted by the test's [`Cleanup`].
struct TestCrd {
    group: String,
    kind: String,
    plural: String,
}

impl TestCrd {
    fn new(ns: &str) -> Self {
        // The namespace name is unique per test run: reuse its suffix.
        let suffix = ns.rsplit('-').next().expect("namespace has a suffix");
        Self {
            group: format!("t{suffix}.e2e.wasmop.dev"),
            kind: "Widget".into(),
            plural: "widgets".into(),
        }
    }

    fn name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: "v1".into(),
            api_version: format!("{}/v1", self.group),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// Applies the CRD and waits until it is Established.
    async fn apply(&self, cp: &ControlPlane, cleanup: &mut Cleanup) -> Result<()> {
        let yaml = format!(
            r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {name}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: {kind}, plural: {plural}, singular: widget, listKind: {kind}List}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
              color: {{type: string}}
"#,
            name = self.name(),
            group = self.group,
            kind = self.kind,
            plural = self.plural,
        );
        cleanup.delete(&["crd", &self.name()]);
        kubectl_ok(cp, &["apply", "-f", "-"], Some(&yaml)).await?;
        kubectl_ok(
            cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{}", self.name()),
            ],
            None,
        )
        .await?;
        Ok(())
    }

    fn object(&self, ns: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: {}/v1\nkind: {}\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec: {spec}\n",
            self.group, self.kind
        )
    }
}

/// The shared control plane, a fresh namespace (deleted when the returned guard drops).
async fn setup(prefix: &str) -> Result<(&'static ControlPlane, kube::Client, String, Cleanup)> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client().await?;
    let ns = create_test_namespace(&client, prefix).await?;
    let mut cleanup = Cleanup::new(cp);
    cleanup.delete(&["namespace", &ns]);
    Ok((cp, client, ns, cleanup))
}

fn owner_reference(
    owner: &ConfigMap,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner
            .metadata
            .name
            .clone()
            .expect("created objects have names"),
        uid: owner
            .metadata
            .uid
            .clone()
            .expect("created objects have uids"),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// kubectl against the real apiserver

#[tokio::test]
async fn a_crd_is_applied_and_its_kind_becomes_served() -> Result<()> {
    let (cp, _client, ns, mut cleanup) = setup("crd-served").await?;
    let crd = TestCrd::new(&ns);
    crd.apply(cp, &mut cleanup).await?;

    let resources = kubectl_ok(
        cp,
        &["api-resources", "--api-group", &crd.group, "-o", "name"],
        None,
    )
    .await?;
    assert_eq!(resources.trim(), crd.name());
    kubectl_ok(
        cp,
        &["apply", "-f", "-"],
        Some(&crd.object(&ns, "first", "{size: 1}")),
    )
    .await?;
    let got = kubectl_ok(
        cp,
        &[
            "get",
            &crd.name(),
            "-n",
            &ns,
            "first",
            "-o",
            "jsonpath={.spec.size}",
        ],
        None,
    )
    .await?;
    assert_eq!(got, "1");
    Ok(())
}

#[tokio::test]
async fn server_side_apply_records_managed_fields_for_the_field_manager() -> Result<()> {
    let (cp, _client, ns, mut cleanup) = setup("ssa-fields").await?;
    let crd = TestCrd::new(&ns);
    crd.apply(cp, &mut cleanup).await?;

    kubectl_ok(
        cp,
        &["apply", "--server-side", "--field-manager=alice", "-f", "-"],
        Some(&crd.object(&ns, "w", "{size: 3, color: red}")),
    )
    .await?;
    let json = kubectl_ok(
        cp,
        &[
            "get",
            &crd.name(),
            "w",
            "-n",
            &ns,
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    )
    .await?;
    let obj: serde_json::Value = serde_json::from_str(&json)?;
    let managed = obj["metadata"]["managedFields"]
        .as_array()
        .context("managedFields present")?;
    let alice = managed
        .iter()
        .find(|m| m["manager"] == "alice")
        .with_context(|| format!("no entry for alice in {managed:#?}"))?;
    assert_eq!(alice["operation"], "Apply");
    let spec = &alice["fieldsV1"]["f:spec"];
    assert!(
        spec.get("f:size").is_some() && spec.get("f:color").is_some(),
        "{alice:#}"
    );
    Ok(())
}

#[tokio::test]
async fn two_field_managers_conflict_and_force_conflicts_resolves_it() -> Result<()> {
    let (cp, _client, ns, mut cleanup) = setup("ssa-conflict").await?;
    let crd = TestCrd::new(&ns);
    crd.apply(cp, &mut cleanup).await?;

    kubectl_ok(
        cp,
        &["apply", "--server-side", "--field-manager=alice", "-f", "-"],
        Some(&crd.object(&ns, "w", "{size: 1}")),
    )
    .await?;
    let bob = crd.object(&ns, "w", "{size: 2}");
    let refused = kubectl(
        cp,
        &["apply", "--server-side", "--field-manager=bob", "-f", "-"],
        Some(&bob),
    )
    .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "bob's apply should conflict");
    assert!(
        stderr.contains("conflict") && stderr.contains("alice"),
        "{stderr}"
    );

    kubectl_ok(
        cp,
        &[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&bob),
    )
    .await?;
    let json = kubectl_ok(
        cp,
        &[
            "get",
            &crd.name(),
            "w",
            "-n",
            &ns,
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    )
    .await?;
    let obj: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(obj["spec"]["size"], 2);
    let owners: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .context("managedFields present")?
        .iter()
        .filter(|m| m["fieldsV1"]["f:spec"].get("f:size").is_some())
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(owners, ["bob"], "spec.size now belongs to bob alone");
    Ok(())
}

#[tokio::test]
async fn delete_without_wait_leaves_a_deletion_timestamp_until_the_finalizer_is_removed()
-> Result<()> {
    let (cp, _client, ns, mut cleanup) = setup("finalizer").await?;
    let crd = TestCrd::new(&ns);
    crd.apply(cp, &mut cleanup).await?;
    let yaml = format!(
        "apiVersion: {}/v1\nkind: Widget\nmetadata:\n  name: held\n  namespace: {ns}\n  finalizers: [e2e.wasmop.dev/hold]\nspec: {{size: 1}}\n",
        crd.group
    );
    kubectl_ok(cp, &["apply", "-f", "-"], Some(&yaml)).await?;

    kubectl_ok(
        cp,
        &["delete", &crd.name(), "held", "-n", &ns, "--wait=false"],
        None,
    )
    .await?;
    let ts = kubectl_ok(
        cp,
        &[
            "get",
            &crd.name(),
            "held",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        None,
    )
    .await?;
    assert!(
        !ts.is_empty(),
        "the object is still there, marked for deletion"
    );
    // Still there a moment later: only the finalizer's removal lets it go.
    tokio::time::sleep(Duration::from_secs(1)).await;
    kubectl_ok(cp, &["get", &crd.name(), "held", "-n", &ns], None).await?;

    kubectl_ok(
        cp,
        &[
            "patch",
            &crd.name(),
            "held",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ],
        None,
    )
    .await?;
    eventually("the object is gone", Duration::from_secs(30), || async {
        let out = kubectl(cp, &["get", &crd.name(), "held", "-n", &ns], None).await?;
        Ok(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
    })
    .await
}

#[tokio::test]
async fn deleting_an_owner_removes_its_dependents() -> Result<()> {
    let (cp, client, ns, _cleanup) = setup("gc").await?;
    if !cp.has_controller_manager() {
        eprintln!(
            "skipped: no kube-controller-manager (envtest binaries), so no garbage collector"
        );
        return Ok(());
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let owner = configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let owned = ObjectMeta {
        owner_references: Some(vec![owner_reference(&owner)]),
        ..Default::default()
    };
    configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("dependent".into()),
                    ..owned.clone()
                },
                ..Default::default()
            },
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("dependent".into()),
                    ..owned
                },
                ..Default::default()
            },
        )
        .await?;
    // An unrelated object must survive.
    configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("bystander".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;

    kubectl_ok(cp, &["delete", "configmap", "owner", "-n", &ns], None).await?;
    eventually(
        "the garbage collector deletes both dependents",
        Duration::from_secs(90),
        || async {
            Ok(configmaps.get_opt("dependent").await?.is_none()
                && secrets.get_opt("dependent").await?.is_none())
        },
    )
    .await?;
    assert!(configmaps.get_opt("bystander").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_objects() -> Result<()> {
    let (cp, client, ns, mut cleanup) = setup("ns-delete").await?;
    if !cp.has_controller_manager() {
        eprintln!(
            "skipped: no kube-controller-manager (envtest binaries), so namespaces never finish deleting"
        );
        return Ok(());
    }
    let crd = TestCrd::new(&ns);
    crd.apply(cp, &mut cleanup).await?;
    kubectl_ok(
        cp,
        &[
            "create",
            "configmap",
            "doomed",
            "-n",
            &ns,
            "--from-literal=a=b",
        ],
        None,
    )
    .await?;
    kubectl_ok(
        cp,
        &["apply", "-f", "-"],
        Some(&crd.object(&ns, "doomed", "{size: 1}")),
    )
    .await?;

    kubectl_ok(cp, &["delete", "namespace", &ns, "--wait=false"], None).await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    eventually(
        "the namespace controller empties and removes the namespace",
        Duration::from_secs(120),
        || async { Ok(namespaces.get_opt(&ns).await?.is_none()) },
    )
    .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &crd.resource());
    assert!(configmaps.get_opt("doomed").await?.is_none());
    assert!(widgets.get_opt("doomed").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn impersonating_a_service_account_is_forbidden_without_a_role_binding_and_allowed_with_one()
-> Result<()> {
    let (cp, _client, ns, _cleanup) = setup("rbac").await?;
    kubectl_ok(cp, &["create", "serviceaccount", "robot", "-n", &ns], None).await?;
    let robot = format!("--as=system:serviceaccount:{ns}:robot");
    let list = ["get", "configmaps", "-n", &ns, &robot];

    let denied = kubectl(cp, &list, None).await?;
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("Forbidden") || stderr.contains("forbidden"),
        "{stderr}"
    );

    kubectl_ok(
        cp,
        &[
            "create",
            "role",
            "read-configmaps",
            "-n",
            &ns,
            "--verb=get,list",
            "--resource=configmaps",
        ],
        None,
    )
    .await?;
    kubectl_ok(
        cp,
        &[
            "create",
            "rolebinding",
            "robot-reads",
            "-n",
            &ns,
            "--role=read-configmaps",
            &format!("--serviceaccount={ns}:robot"),
        ],
        None,
    )
    .await?;
    eventually(
        "the RoleBinding lets the service account list",
        Duration::from_secs(30),
        || async { Ok(kubectl(cp, &list, None).await?.status.success()) },
    )
    .await?;
    // The binding grants reading, nothing more.
    let write = kubectl(cp, &["create", "configmap", "x", "-n", &ns, &robot], None).await?;
    assert!(!write.status.success());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// kube-rs against real faults

#[tokio::test]
async fn a_reflector_survives_an_apiserver_restart_and_a_compaction_induced_410() -> Result<()> {
    // Restarting and compacting would disturb the shared control plane's other tests.
    let cp = ControlPlane::start(Options::default()).await?;
    if cp.is_external() {
        eprintln!(
            "skipped: restarts and compaction need the local control plane (KUBECONFIG is set)"
        );
        return Ok(());
    }
    let result = reflector_scenario(&cp).await;
    cp.stop().await;
    result
}

async fn reflector_scenario(cp: &ControlPlane) -> Result<()> {
    let client = cp.client().await?;
    let ns = create_test_namespace(&client, "reflector").await?;
    let mut cleanup = Cleanup::new(cp);
    let crd = TestCrd::new(&ns);
    crd.apply(cp, &mut cleanup).await?;
    let ar = crd.resource();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let store = writer.as_reader();
    let gone_410 = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let other_errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reflect = {
        let (gone_410, other_errors) = (gone_410.clone(), other_errors.clone());
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        gone_410.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(_) => {
                        other_errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                }
            }
        })
    };
    let names = |store: &reflector::Store<DynamicObject>| -> BTreeSet<String> {
        store
            .state()
            .iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect()
    };
    let create = |name: &'static str| {
        let api = api.clone();
        let object: DynamicObject = serde_yaml::from_str(&crd.object(&ns, name, "{size: 1}"))
            .expect("test objects are valid YAML");
        async move { api.create(&PostParams::default(), &object).await }
    };
    let converge = |want: &'static [&'static str], what: &'static str| {
        let store = store.clone();
        async move {
            let want: BTreeSet<String> = want.iter().map(|s| (*s).to_string()).collect();
            eventually(what, Duration::from_secs(90), || {
                let got = names(&store);
                let want = want.clone();
                async move { Ok(got == want) }
            })
            .await
        }
    };

    for name in ["a", "b", "c"] {
        create(name).await?;
    }
    converge(&["a", "b", "c"], "the store lists the first objects").await?;

    // 1. Restart: every watch drops; the watcher reconnects and resumes.
    cp.restart_apiserver().await?;
    create("d").await?;
    api.delete("a", &Default::default()).await?;
    converge(
        &["b", "c", "d"],
        "the store follows changes after a restart",
    )
    .await?;

    // 2. Compaction: move etcd past the watcher's resourceVersion with writes it does not
    // watch, compact there, and restart so the watch cache cannot serve the old version: the
    // watcher's resume gets 410 Gone and it must re-list.
    let last_seen = api
        .get("d")
        .await?
        .metadata
        .resource_version
        .context("objects have resourceVersions")?;
    for i in 0..5 {
        configmaps
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("advance-{i}")),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
    }
    let compacted = cp.compact_etcd().await?;
    ensure!(
        compacted > last_seen.parse::<i64>()?,
        "compacted at {compacted}, not past {last_seen}"
    );
    cp.restart_apiserver().await?;

    // The apiserver really answers a watch from before the compaction with 410.
    let mut old_watch = api
        .watch(&WatchParams::default(), &last_seen)
        .await?
        .boxed();
    match tokio::time::timeout(Duration::from_secs(30), old_watch.next()).await {
        Ok(Some(Ok(WatchEvent::Error(status)))) => assert_eq!(status.code, 410, "{status:?}"),
        other => {
            bail!("expected a 410 watch event from resourceVersion {last_seen}, got {other:?}")
        }
    }
    drop(old_watch);

    create("e").await?;
    api.delete("b", &Default::default()).await?;
    converge(&["c", "d", "e"], "the store re-lists after 410 Gone").await?;
    eventually(
        "the watcher saw the 410",
        Duration::from_secs(30),
        || async { Ok(gone_410.load(std::sync::atomic::Ordering::SeqCst) > 0) },
    )
    .await?;
    eprintln!(
        "reflector: {} x 410 Gone, {} other watch errors (restarts)",
        gone_410.load(std::sync::atomic::Ordering::SeqCst),
        other_errors.load(std::sync::atomic::Ordering::SeqCst)
    );
    reflect.abort();
    Ok(())
}

#[tokio::test]
async fn the_fault_proxy_injects_seeded_bounded_errors_and_cuts_watches() -> Result<()> {
    let (cp, _client, ns, _cleanup) = setup("proxy").await?;
    let proxy = FaultProxy::start(
        cp,
        FaultConfig {
            seed: 42,
            error_500_per_mille: 400,
            latency_ms: 1..=5,
            cut_watch_after: Some(Duration::from_secs(1)),
            max_faults: 4,
            ..FaultConfig::default()
        },
    )
    .await?;
    let through = proxy.client().await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(through, &ns);

    let mut errors = 0;
    for _ in 0..40 {
        match configmaps.list(&Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 500 => errors += 1,
            Err(e) => bail!("unexpected error through the proxy: {e}"),
        }
    }
    let counts = proxy.counts();
    assert_eq!(counts.errors_500, errors, "{counts:?}");
    assert!(errors > 0, "a 40% rate over 40 requests injects something");
    assert!(counts.faults() <= 4, "{counts:?}");
    assert_eq!(counts.delayed, counts.requests);

    // Once the budget is spent the proxy is transparent, and kubectl works through it too.
    proxy.set_config(FaultConfig {
        max_faults: 100,
        cut_watch_after: Some(Duration::from_secs(1)),
        ..FaultConfig::default()
    });
    let began = Instant::now();
    let mut watch = configmaps
        .watch(&WatchParams::default().timeout(60), "0")
        .await?
        .boxed();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), watch.next()).await? {
        event?;
    }
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the watch asked for 60 s and was cut after ~1 s"
    );
    assert_eq!(proxy.counts().watch_cuts, 1);

    // Blocking on purpose: the proxy has a thread of its own and must not need this one.
    let out = std::process::Command::new(cp.kubectl_path())
        .arg(format!("--kubeconfig={}", proxy.kubeconfig().display()))
        .args([
            "get",
            "configmaps",
            "-n",
            &ns,
            "-o",
            "name",
            "--request-timeout=30s",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn tight_fault_options_shrink_apf_seats_and_end_watches_early() -> Result<()> {
    let cp = ControlPlane::start(Options {
        fault: localcp::FaultOptions::tight(),
        ..Options::default()
    })
    .await?;
    if cp.is_external() {
        eprintln!("skipped: apiserver flags need the local control plane (KUBECONFIG is set)");
        return Ok(());
    }
    let result = async {
        // Priority and fairness splits --max-requests-inflight + --max-mutating-requests-inflight
        // (2 + 1 here, 600 by default) among the priority levels.
        let metrics = kubectl_ok(&cp, &["get", "--raw", "/metrics"], None).await?;
        let seats: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("apiserver_flowcontrol_nominal_limit_seats{"))
            .filter(|l| !l.contains("priority_level=\"exempt\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        eprintln!("tight: {seats} nominal seats over all non-exempt priority levels");
        ensure!(
            seats > 0.0 && seats < 20.0,
            "nominal seats {seats}, expected a handful"
        );

        // kubectl's watch sends no timeoutSeconds, so --min-request-timeout=5 ends it in 5-10 s.
        let began = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            kubectl(
                &cp,
                &["get", "configmaps", "-n", "default", "--watch"],
                None,
            ),
        )
        .await
        .context("the watch did not end within 60 s")??;
        let took = began.elapsed();
        eprintln!(
            "tight: kubectl get --watch ended after {took:?} ({})",
            out.status
        );
        ensure!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(30),
            "watch lasted {took:?}"
        );
        Ok(())
    }
    .await;
    cp.stop().await;
    result
}

#[tokio::test]
async fn a_failing_apiserver_start_reports_the_tail_of_its_log() -> Result<()> {
    if localcp::Binaries::locate().is_err() && std::env::var_os("KUBECONFIG").is_some() {
        eprintln!("skipped: no local binaries (using KUBECONFIG's cluster)");
        return Ok(());
    }
    let err = ControlPlane::start(Options {
        reuse_from_env: false,
        extra_apiserver_args: vec!["--no-such-flag=1".into()],
        ..Options::default()
    })
    .await
    .expect_err("kube-apiserver refuses an unknown flag");
    let msg = err.to_string();
    assert!(
        matches!(err, localcp::control_plane::Error::Exited { ref name, .. } if name == "kube-apiserver"),
        "{msg}"
    );
    assert!(msg.contains("unknown flag: --no-such-flag"), "{msg}");
    assert!(msg.contains("kube-apiserver.log"), "{msg}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// No orphans

const ORPHAN_HELPER_ENV: &str = "LOCALCP_ORPHAN_HELPER";
const READY_MARKER: &str = "LOCALCP-READY";

/// Not a test of its own: the child process of
/// `a_sigkilled_test_process_leaves_no_control_plane_process_behind`. Without its environment
/// variable it returns at once.
#[tokio::test]
#[ignore = "helper process for the no-orphan test"]
async fn orphan_helper_starts_a_control_plane_and_waits() -> Result<()> {
    if std::env::var_os(ORPHAN_HELPER_ENV).is_none() {
        return Ok(());
    }
    let cp = ControlPlane::start(Options {
        reuse_from_env: false,
        ..Options::default()
    })
    .await?;
    let pids: Vec<String> = cp
        .processes()
        .iter()
        .map(|p| format!("{}={}", p.name, p.pid))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{READY_MARKER} dir={} {}",
        cp.dir().expect("local").display(),
        pids.join(" ")
    )?;
    out.flush()?;
    drop(out);
    // Wait to be SIGKILLed; never drop `cp`.
    tokio::time::sleep(Duration::from_secs(600)).await;
    std::mem::forget(cp);
    Ok(())
}

/// `true` while `pid` is a process that has not exited (zombies waiting for a reaper count as
/// gone: they run nothing and hold no ports).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines().any(|l| {
            l.starts_with("State:") && (l.contains("Z (zombie)") || l.contains("X (dead)"))
        })
    })
}

#[tokio::test]
async fn a_sigkilled_test_process_leaves_no_control_plane_process_behind() -> Result<()> {
    if localcp::Binaries::locate().is_err() && std::env::var_os("KUBECONFIG").is_some() {
        eprintln!("skipped: no local binaries (using KUBECONFIG's cluster)");
        return Ok(());
    }
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "orphan_helper_starts_a_control_plane_and_waits",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest may print "test <name> ... " before it on the same line.
            .find_map(|l| l.find(READY_MARKER).map(|at| l[at..].to_string()))
    });
    let line = match tokio::time::timeout(Duration::from_secs(180), ready).await {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the helper did not report a ready control plane: {other:?}");
        }
    };
    let mut dir = None;
    let mut pids = Vec::new();
    for field in line.split_whitespace().skip(1) {
        let (k, v) = field.split_once('=').context("key=value")?;
        if k == "dir" {
            dir = Some(std::path::PathBuf::from(v));
        } else {
            pids.push((k.to_string(), v.parse::<u32>()?));
        }
    }
    let dir = dir.context("dir reported")?;
    ensure!(
        pids.iter().any(|(n, _)| n == "kube-apiserver") && pids.iter().any(|(n, _)| n == "etcd"),
        "{line}"
    );
    for (name, pid) in &pids {
        ensure!(running(*pid), "{name} ({pid}) should run before the kill");
    }

    child.kill()?; // SIGKILL: no destructor, no atexit, nothing.
    child.wait()?;
    let killed = Instant::now();
    eventually(
        "every control-plane process and the state directory are gone",
        Duration::from_secs(10),
        || {
            let alive: Vec<_> = pids.iter().filter(|(_, pid)| running(*pid)).collect();
            let dir_exists = dir.exists();
            async move { Ok(alive.is_empty() && !dir_exists) }
        },
    )
    .await
    .with_context(|| {
        let alive: Vec<_> = pids.iter().filter(|(_, pid)| running(*pid)).collect();
        format!(
            "still running: {alive:?}; {} exists: {}",
            dir.display(),
            dir.exists()
        )
    })?;
    eprintln!(
        "no-orphan: everything gone {:?} after SIGKILL",
        killed.elapsed()
    );
    Ok(())
}
