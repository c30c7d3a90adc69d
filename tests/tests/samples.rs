//! End to end: one sample per pattern (issue 16), each run the way its README's kubectl
//! session runs it, with the plugins `make plugins` built from source: Cluster API's real
//! Machine (v1beta2, the pinned CRD) whose contract serves two infrastructure versions (Go),
//! a decorator (TypeScript), two controllers with finalizers on one object and a
//! selector-related ConfigMap (Rust), and
//! `wasmop graph` of them all. Every controller has `resyncPeriod: 1h`, so whatever happens
//! within seconds happened because a watch said so.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use wasmop_e2e::website::{condition_of, wait_ready};
use wasmop_e2e::{Operator, eventually, kubectl, operator, root};

/// How soon a change must reach the parents.
const REACT: Duration = Duration::from_secs(15);

fn machines() -> ApiResource {
    ApiResource {
        group: "cluster.x-k8s.io".into(),
        version: "v1beta2".into(),
        api_version: "cluster.x-k8s.io/v1beta2".into(),
        kind: "Machine".into(),
        plural: "machines".into(),
    }
}

fn sample(path: &str) -> String {
    root().join("samples").join(path).display().to_string()
}

fn plugin_file(name: &str) -> String {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), std::path::PathBuf::from);
    dir.join("plugins").join(name).display().to_string()
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// A namespace as the samples' READMEs set it up: the kinds (once: the real Machine CRD and
/// the infrastructure CRDs), the team's account and the three plugins as ConfigMaps.
async fn sample_namespace(
    cp: &localcp::ControlPlane,
    client: &Client,
    prefix: &str,
) -> Result<String> {
    CRDS.get_or_try_init(|| async {
        wasmop_e2e::install_real_crds(cp)?;
        kubectl(
            cp,
            &["apply", "--server-side", "-f", &sample("machine/crds.yaml")],
        )?;
        kubectl(
            cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "-f",
                &sample("machine/crds.yaml"),
            ],
        )?;
        anyhow::Ok(())
    })
    .await?;
    let ns = localcp::create_test_namespace(client, prefix).await?;
    kubectl(
        cp,
        &["-n", &ns, "apply", "-f", &sample("machine/rbac.yaml")],
    )?;
    for (name, file) in [
        ("machine-plugin", "machine-go.wasm.gz"),
        ("decorator-plugin", "decorator-ts.wasm"),
        ("patterns-plugin", "patterns-rust.wasm"),
    ] {
        let from = format!("--from-file=plugin.wasm={}", plugin_file(file));
        kubectl(cp, &["-n", &ns, "create", "configmap", name, &from])?;
    }
    Ok(ns)
}

/// `kubectl -n ns apply -f samples/<file>`, then every WasmController it holds is Ready.
async fn apply(
    cp: &localcp::ControlPlane,
    client: &Client,
    ns: &str,
    file: &str,
    op: &Operator,
) -> Result<()> {
    let out = kubectl(cp, &["-n", ns, "apply", "-f", &sample(file)])?;
    for line in out.lines() {
        if let Some(name) = line
            .strip_prefix("wasmcontroller.wasmop.dev/")
            .and_then(|rest| rest.split_whitespace().next())
        {
            wait_ready(client, ns, name, op).await?;
        }
    }
    Ok(())
}

async fn machine(client: &Client, ns: &str, name: &str) -> Result<DynamicObject> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &machines());
    Ok(api.get(name).await?)
}

/// Waits until `probe` of Machine `name` holds.
async fn wait_machine(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    op: &Operator,
    probe: impl Fn(&DynamicObject) -> bool,
) -> Result<DynamicObject> {
    eventually(REACT, &format!("Machine {name}: {what}"), || async {
        let m = machine(client, ns, name).await?;
        Ok(probe(&m).then_some(m))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(40)))
}

fn status(m: &DynamicObject) -> &Value {
    &m.data["status"]
}

/// The Machine's `InfrastructureReady` condition: status, reason, message.
fn infrastructure_ready(m: &DynamicObject) -> (String, String, String) {
    condition_of(&m.data, "InfrastructureReady").unwrap_or_default()
}

/// The data of ConfigMap `name` (empty when it has none), or `None` when it does not exist.
async fn config_map_data(client: &Client, ns: &str, name: &str) -> Result<Option<Value>> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .map(|cm| json!(cm.data.unwrap_or_default())))
}

/// Waits until ConfigMap `name`'s data is `want`.
async fn wait_data(
    client: &Client,
    ns: &str,
    name: &str,
    want: Value,
    op: &Operator,
) -> Result<()> {
    eventually(REACT, &format!("ConfigMap {name} data {want}"), || async {
        Ok((config_map_data(client, ns, name).await? == Some(want.clone())).then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(40)))
}

/// samples/machine: one contract, two infrastructure versions; readiness reacts at once.
#[tokio::test]
async fn a_machine_contract_serves_both_infrastructure_versions() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = sample_namespace(cp, &client, "machine").await?;
    apply(cp, &client, &ns, "machine/wasmcontroller.yaml", op).await?;
    apply(cp, &client, &ns, "machine/infrastructure.yaml", op).await?;
    apply(cp, &client, &ns, "machine/machines.yaml", op).await?;
    for (m, infra) in [
        ("m-docker", "DockerMachine/docker-0"),
        ("m-cloud", "CloudMachine/cloud-0"),
    ] {
        let got = wait_machine(&client, &ns, m, "Provisioning", op, |m| {
            status(m)["phase"] == "Provisioning"
        })
        .await?;
        assert_eq!(
            status(&got)["initialization"]["infrastructureProvisioned"],
            false
        );
        let (ready, reason, message) = infrastructure_ready(&got);
        assert_eq!((ready.as_str(), reason.as_str()), ("False", "NotReady"));
        assert!(message.starts_with(&format!("{infra} (")), "{message}");
    }
    let cm = kubectl(
        cp,
        &[
            "-n",
            &ns,
            "get",
            "configmap",
            "m-docker-bootstrap",
            "-o",
            "jsonpath={.data.infrastructure}",
        ],
    )?;
    assert_eq!(cm, "DockerMachine/docker-0");

    // README: mark each infrastructure object ready the way its contract version says.
    kubectl(
        cp,
        &[
            "-n",
            &ns,
            "patch",
            "dockermachine",
            "docker-0",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":true}}"#,
        ],
    )?;
    let got = wait_machine(&client, &ns, "m-docker", "Provisioned", op, |m| {
        status(m)["phase"] == "Provisioned"
    })
    .await?;
    assert_eq!(
        infrastructure_ready(&got),
        (
            "True".into(),
            "Ready".into(),
            "DockerMachine/docker-0 (infra.example.com/v1beta1, $.status.ready)".into()
        ),
        "v1beta1 shape, read at the version the CRD's contract label names"
    );
    assert_eq!(
        status(&got)["initialization"]["infrastructureProvisioned"],
        true
    );
    assert_eq!(
        status(&machine(&client, &ns, "m-cloud").await?)["phase"],
        "Provisioning"
    );
    kubectl(
        cp,
        &[
            "-n",
            &ns,
            "patch",
            "cloudmachine",
            "cloud-0",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"initialization":{"provisioned":true}}}"#,
        ],
    )?;
    let got = wait_machine(&client, &ns, "m-cloud", "Provisioned", op, |m| {
        status(m)["phase"] == "Provisioned"
    })
    .await?;
    assert_eq!(
        infrastructure_ready(&got).2,
        "CloudMachine/cloud-0 (infra.example.com/v1beta2, $.status.initialization.provisioned)",
        "v1beta2 shape"
    );

    // And back: readiness lost is seen as quickly.
    kubectl(
        cp,
        &[
            "-n",
            &ns,
            "patch",
            "dockermachine",
            "docker-0",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":false}}"#,
        ],
    )?;
    wait_machine(&client, &ns, "m-docker", "Provisioning again", op, |m| {
        status(m)["phase"] == "Provisioning"
    })
    .await?;

    // `wasmop explain` names the contract field that holds the Machine back, the path it was
    // read from and the infrastructure object.
    let kubeconfig = cp.kubeconfig().display().to_string();
    let out = Command::new(wasmop_e2e::wasmop_bin()?)
        .args([
            "explain",
            "machine/m-docker",
            "-n",
            &ns,
            "--kubeconfig",
            &kubeconfig,
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "something blocks:\n{stdout}");
    assert!(
        stdout.contains("  ready = false (from $.status.ready of DockerMachine docker-0)"),
        "{stdout}"
    );
    let blocking = stdout.split("\nBlocking:\n").nth(1).unwrap_or_default();
    assert!(
        blocking.contains("related infrastructureRef: contract field ready is false (from $.status.ready of DockerMachine docker-0); the parent waits for it"),
        "{stdout}"
    );
    Ok(())
}

/// samples/decorator: labels on objects the decorator does not own, with its own field
/// manager, next to the machine controller's status (neither strips the other's fields).
#[tokio::test]
async fn a_decorator_patches_objects_it_does_not_own_with_its_own_field_manager() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = sample_namespace(cp, &client, "decorator").await?;
    apply(cp, &client, &ns, "machine/wasmcontroller.yaml", op).await?;
    apply(cp, &client, &ns, "decorator/wasmcontroller.yaml", op).await?;
    apply(cp, &client, &ns, "machine/infrastructure.yaml", op).await?;
    apply(cp, &client, &ns, "machine/machines.yaml", op).await?;
    let got = wait_machine(
        &client,
        &ns,
        "m-docker",
        "decorated and provisioning",
        op,
        |m| {
            m.labels()
                .get("infra.example.com/provider")
                .map(String::as_str)
                == Some("dockermachine")
                && status(m)["phase"] == "Provisioning"
        },
    )
    .await?;
    let manager = format!("wasmop.dev/{ns}.decorator-patch");
    let managers = |o: &DynamicObject| -> Vec<String> {
        o.metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect()
    };
    assert!(managers(&got).contains(&manager), "{:?}", managers(&got));
    let infra = eventually(REACT, "docker-0 labelled with its Machine", || async {
        let out = kubectl(
            cp,
            &[
                "-n",
                &ns,
                "get",
                "dockermachine",
                "docker-0",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        )?;
        let obj: DynamicObject = serde_json::from_str(&out)?;
        Ok((obj
            .labels()
            .get("cluster.example.com/machine")
            .map(String::as_str)
            == Some("m-docker"))
        .then_some(obj))
    })
    .await?;
    assert!(
        managers(&infra).contains(&manager),
        "{:?}",
        managers(&infra)
    );
    Ok(())
}

/// samples/finalizers: two controllers' finalizers on one Machine; deletion waits for both.
#[tokio::test]
async fn two_controllers_finalizers_hold_a_machine_until_both_let_go() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = sample_namespace(cp, &client, "finalizers").await?;
    apply(cp, &client, &ns, "finalizers/wasmcontrollers.yaml", op).await?;
    kubectl(
        cp,
        &["-n", &ns, "apply", "-f", &sample("machine/machines.yaml")],
    )?;
    wait_machine(&client, &ns, "m-docker", "both finalizers", op, |m| {
        m.finalizers().contains(&"wasmop.dev/audit".to_string())
            && m.finalizers().contains(&"wasmop.dev/backup".to_string())
    })
    .await?;

    kubectl(
        cp,
        &["-n", &ns, "delete", "machine", "m-docker", "--wait=false"],
    )?;
    let held = wait_machine(
        &client,
        &ns,
        "m-docker",
        "audit let go, backup holds",
        op,
        |m| m.finalizers() == ["wasmop.dev/backup".to_string()],
    )
    .await?;
    assert!(held.metadata.deletion_timestamp.is_some());
    let events = |reason: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, &ns);
            let list = api
                .list(&ListParams::default().fields("regarding.name=m-docker"))
                .await?;
            anyhow::Ok(
                list.items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some(reason))
                    .filter_map(|e| e.note)
                    .collect::<Vec<_>>(),
            )
        }
    };
    let cleaned = eventually(REACT, "audit's CleanedUp event", || async {
        Ok(Some(events("CleanedUp").await?).filter(|e| !e.is_empty()))
    })
    .await?;
    assert_eq!(cleaned, ["audit: cleaned up Machine m-docker"]);
    let waiting = eventually(REACT, "backup's WaitingForCleanup event", || async {
        Ok(Some(events("WaitingForCleanup").await?).filter(|e| !e.is_empty()))
    })
    .await?;
    assert!(
        waiting[0].contains("backup.example.com/done"),
        "{waiting:?}"
    );

    kubectl(
        cp,
        &[
            "-n",
            &ns,
            "annotate",
            "machine",
            "m-docker",
            "backup.example.com/done=yes",
        ],
    )?;
    eventually(REACT, "m-docker gone", || async {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &machines());
        Ok(api.get_opt("m-docker").await?.is_none().then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(40)))?;
    let mut cleaned = events("CleanedUp").await?;
    cleaned.sort();
    assert_eq!(
        cleaned,
        [
            "audit: cleaned up Machine m-docker",
            "backup: cleaned up Machine m-docker"
        ]
    );
    Ok(())
}

/// samples/selector: a change to a selected ConfigMap re-reconciles exactly this controller's
/// parents; another namespace's controller of the same plugin is not called.
#[tokio::test]
async fn a_selected_config_map_re_triggers_exactly_its_parents() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = sample_namespace(cp, &client, "selector").await?;
    let other = sample_namespace(cp, &client, "selector-other").await?;
    for ns in [&ns, &other] {
        apply(cp, &client, ns, "selector/wasmcontroller.yaml", op).await?;
        kubectl(
            cp,
            &["-n", ns, "apply", "-f", &sample("machine/machines.yaml")],
        )?;
    }
    kubectl(
        cp,
        &["-n", &ns, "apply", "-f", &sample("selector/defaults.yaml")],
    )?;
    for m in ["m-docker", "m-cloud"] {
        let want = json!({"region": "eu-west", "size": "small"});
        wait_data(&client, &ns, &format!("{m}-defaults"), want, op).await?;
    }
    let reconciles = async |ns: &str| {
        op.metric(
            "wasmop_reconciles_total",
            &[("controller", &format!("{ns}/defaults"))],
        )
        .await
    };
    eventually(
        REACT,
        "the other namespace's Machines reconciled",
        || async { Ok((reconciles(&other).await? >= 2.0).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the status writes' reconciles settle
    let other_before = reconciles(&other).await?;

    kubectl(
        cp,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "defaults-size",
            "--type=merge",
            "-p",
            r#"{"data":{"size":"large"}}"#,
        ],
    )?;
    for m in ["m-docker", "m-cloud"] {
        let want = json!({"region": "eu-west", "size": "large"});
        wait_data(&client, &ns, &format!("{m}-defaults"), want, op).await?;
    }
    // A new selected ConfigMap counts too; one that loses the label stops counting.
    kubectl(
        cp,
        &[
            "-n",
            &ns,
            "label",
            "configmap",
            "defaults-region",
            "cluster.example.com/defaults-",
        ],
    )?;
    wait_data(
        &client,
        &ns,
        "m-cloud-defaults",
        json!({"size": "large"}),
        op,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reconciles(&other).await?,
        other_before,
        "the other namespace's controller was not reconciled by this namespace's ConfigMaps"
    );
    assert_eq!(
        config_map_data(&client, &other, "m-docker-defaults").await?,
        Some(json!({})),
        "nor did it see them"
    );
    Ok(())
}

/// Every sample in one namespace, and `wasmop graph` of it: text and Graphviz dot.
#[tokio::test]
async fn graph_draws_every_sample_and_flags_what_couples_them() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = sample_namespace(cp, &client, "graph").await?;
    for file in [
        "machine/wasmcontroller.yaml",
        "decorator/wasmcontroller.yaml",
        "finalizers/wasmcontrollers.yaml",
        "selector/wasmcontroller.yaml",
        "selector/defaults.yaml",
        "machine/infrastructure.yaml",
        "machine/machines.yaml",
    ] {
        apply(cp, &client, &ns, file, op).await?;
    }
    // `patches` is what the controllers were seen writing: wait for every writer.
    let wcs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &wasmop_e2e::website::wasmcontroller_resource(),
    );
    for name in ["machine", "decorator"] {
        eventually(
            REACT,
            &format!("{name} reports what it patches"),
            || async {
                let wc = wcs.get(name).await?;
                Ok(wc.data["status"]["dependencies"]["patches"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
                    .then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n{}", op.log_tail(40)))?;
    }
    // The decorator has labelled both infrastructure kinds by now, once each Machine's done.
    eventually(
        REACT,
        "the decorator patched both infrastructure kinds",
        || async {
            let wc = wcs.get("decorator").await?;
            Ok((wc.data["status"]["dependencies"]["patches"]
                .as_array()
                .map_or(0, Vec::len)
                == 3)
                .then_some(()))
        },
    )
    .await?;

    let kubeconfig = cp.kubeconfig().display().to_string();
    let text = wasmop(&["graph", "-n", &ns, "--kubeconfig", &kubeconfig])?;
    let machine = "Machine.cluster.x-k8s.io";
    for line in [
        format!("namespace {ns}"),
        "  WasmController machine (ServiceAccount machine-team, Ready True Running)".into(),
        "    owns       ConfigMap".into(),
        "    reads      *.infra.example.com via infrastructureRef".into(),
        "                 contract ready: $.status.initialization.provisioned | $.status.ready [boolean]".into(),
        format!("    patches    {machine}: .status.conditions, .status.initialization.infrastructureProvisioned, .status.phase"),
        format!("    patches    {machine}: .metadata.labels.infra.example.com/provider"),
        "    patches    CloudMachine.infra.example.com: .metadata.labels.cluster.example.com/machine".into(),
        "    reads      ConfigMap via defaults".into(),
        format!("    finalizes  {machine}"),
        format!("  ! {machine} carries finalizers of audit and backup: deleting one waits for all of them"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    assert_eq!(
        text.matches(" ! ").count(),
        1,
        "only the finalizers couple them:\n{text}"
    );

    let dot = wasmop(&["graph", "-n", &ns, "--kubeconfig", &kubeconfig, "-o", "dot"])?;
    assert!(
        dot.contains(&format!(
            r#""{ns}/machine" -> "{ns}|ConfigMap" [label="owns"];"#
        )),
        "{dot}"
    );
    let svg = graphviz(&dot)?;
    assert!(
        svg.contains("<svg") && svg.contains("finalizes"),
        "Graphviz drew it"
    );
    Ok(())
}

fn wasmop(args: &[&str]) -> Result<String> {
    let out = Command::new(wasmop_e2e::wasmop_bin()?)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "wasmop {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `dot -Tsvg` of `dot` (Graphviz is installed by `make setup`).
fn graphviz(dot: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running Graphviz `dot` (make setup installs it)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(dot.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "dot refused the graph: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
