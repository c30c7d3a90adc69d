//! End-to-end: `wasmop explain` against the real control plane, with the real operator running
//! the Website example. Each test works in its own namespace and asserts on what a user reads.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use wasmop_e2e::website::*;
use wasmop_e2e::{eventually, operator, plugin};

static INFRA_REF: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The operator, with the Website CRD widened once (see [`allow_infra_ref`]).
async fn setup() -> Result<(
    &'static localcp::ControlPlane,
    &'static wasmop_e2e::Operator,
)> {
    let (cp, op) = operator().await?;
    INFRA_REF
        .get_or_try_init(|| async { wasmop_e2e::website::allow_infra_ref(cp) })
        .await?;
    Ok((cp, op))
}

/// The output and exit code of `wasmop explain` as a user runs it (admin kubeconfig).
struct Explained {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn explain(cp: &localcp::ControlPlane, target: &str, ns: &str) -> Result<Explained> {
    explain_as(cp.kubeconfig(), target, ns).await
}

/// `wasmop explain` with the credentials of `kubeconfig`.
async fn explain_as(kubeconfig: &std::path::Path, target: &str, ns: &str) -> Result<Explained> {
    let bin = wasmop_e2e::wasmop_bin()?;
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explain-cache");
    let out = tokio::process::Command::new(&bin)
        .args(["explain", target, "-n", ns, "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .await?;
    let explained = Explained {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("wasmop explain {target} -n {ns}\n{explained}");
    Ok(explained)
}

/// A namespace with `rbac`, the Rust Website plugin and a ready WasmController `website` over
/// Websites (`replicas: 2`), its spec extended with `extra`.
async fn website_controller(
    cp: &localcp::ControlPlane,
    op: &wasmop_e2e::Operator,
    prefix: &str,
    rbac: &str,
    extra: serde_json::Value,
) -> Result<String> {
    let client = cp.client().await?;
    let ns = namespace_with(cp, &client, prefix, rbac).await?;
    put_plugin(&client, &ns, "website-plugin", plugin("website-rust")).await?;
    apply_controller(
        &client,
        &ns,
        "website",
        "website-plugin",
        json!({"replicas": 2}),
        extra,
    )
    .await?;
    wait_ready(&client, &ns, "website", op).await?;
    Ok(ns)
}

/// Creates a Website whose `spec.infraRef` names ConfigMap `infra`, retrying until the API
/// server serves the widened schema (it keeps the field).
async fn website_referring_to(client: &Client, ns: &str, name: &str, infra: &str) -> Result<()> {
    create_website(client, ns, name, json!({})).await?;
    let reference = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": infra});
    wasmop_e2e::website::set_infra_ref(client, ns, name, &reference, WAIT).await
}

#[tokio::test]
async fn explain_names_a_missing_contract_field_and_a_missing_related_object() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    let related = json!({"related": [{"name": "infra", "ref": "$.spec.infraRef", "allowedKinds": [{"group": "", "kind": "ConfigMap"}], "contract": {"ready": "$.status.ready"}}]});
    let ns = website_controller(cp, op, "explain-related", &sample_rbac()?, related).await?;

    // The referenced object exists but lacks the contract field (a ConfigMap has no status).
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let infra: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "infra"}, "data": {"kind": "network"}}),
    )?;
    configmaps.create(&PostParams::default(), &infra).await?;
    website_referring_to(&client, &ns, "site", "infra").await?;
    let out = explain(cp, "website/site", &ns).await?;
    assert_eq!(out.code, Some(1), "something blocks: {out}");
    assert!(
        out.stdout.contains(
            "infra: ConfigMap/infra (v1) does not set contract field(s) ready (at $.status.ready)"
        ),
        "names the field and where it was looked for: {out}"
    );
    let blocking = out
        .stdout
        .split("\nBlocking:\n")
        .nth(1)
        .ok_or_else(|| anyhow!("no Blocking: list: {out}"))?;
    assert!(
        blocking
            .contains("related infra: ConfigMap/infra (v1) does not set contract field(s) ready"),
        "{out}"
    );
    assert!(
        out.stdout.contains("Plugin reconcile"),
        "the plugin still ran: {out}"
    );

    // The referenced object does not exist at all.
    website_referring_to(&client, &ns, "lost", "absent").await?;
    let out = explain(cp, "websites.example.com/lost", &ns).await?;
    assert_eq!(out.code, Some(1), "{out}");
    let blocking = out
        .stdout
        .split("\nBlocking:\n")
        .nth(1)
        .ok_or_else(|| anyhow!("no Blocking: list: {out}"))?;
    assert!(
        blocking.contains("related infra: ConfigMap/absent (v1) does not exist"),
        "{out}"
    );
    Ok(())
}

/// A field this controller's last apply set and the plugin no longer returns is a difference:
/// the next apply removes it (read from the object's managedFields, as the operator decides in
/// `reconcile/unchanged.rs`). The ConfigMap is written here as the controller's field manager
/// would have left it, plus a label; the controller's account may not write ConfigMaps, so the
/// operator cannot remove the label before explain looks.
#[tokio::test]
async fn explain_lists_a_field_the_next_apply_removes() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    // The sample's account, but it may only read ConfigMaps.
    let rbac = sample_rbac_with(
        "resources: [configmaps]",
        "verbs: [get, list, watch, create, patch, delete]",
        "verbs: [get, list, watch]",
    )?;
    let ns = website_controller(cp, op, "explain-removed", &rbac, json!({})).await?;
    create_website(&client, &ns, "site", json!({"content": "<p>x</p>"})).await?;
    let uid = get_website(&client, &ns, "site")
        .await?
        .metadata
        .uid
        .ok_or_else(|| anyhow!("the Website has no uid"))?;
    let child = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "site-content",
            "labels": {"wasmop.dev/controller": "website", "app.kubernetes.io/name": "site",
                       "app.kubernetes.io/managed-by": "wasmop", "stale": "yes"},
            "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Website", "name": "site",
                                 "uid": uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "data": {"index.html": "<p>x</p>"},
    });
    let manager = format!("wasmop.dev/{ns}.website");
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(
            "site-content",
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&child),
        )
        .await?;

    let out = explain(cp, "Website/site", &ns).await?;
    assert!(
        out.stdout.contains(
            "ConfigMap/site-content: metadata.labels.stale: set by this controller before, no longer returned: the apply removes it"
        ),
        "{out}"
    );
    assert!(
        !out.stdout.contains("a reconcile now writes nothing"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn explain_names_the_permission_the_service_account_lacks() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    // May read what it is shown and write ConfigMaps and status, but not create Deployments.
    let rbac = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: limited }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: limited }
rules:
  - { apiGroups: [example.com], resources: [websites], verbs: [get, list, watch] }
  - { apiGroups: [example.com], resources: [websites/status], verbs: [patch] }
  - { apiGroups: [""], resources: [configmaps], verbs: [get, list, watch, create, patch, delete] }
  - { apiGroups: [apps], resources: [deployments], verbs: [get, list, watch, patch, delete] }
  - { apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: limited }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited }
subjects: [ { kind: ServiceAccount, name: limited } ]
"#;
    let ns = website_controller(
        cp,
        op,
        "explain-rbac",
        rbac,
        json!({"serviceAccountName": "limited"}),
    )
    .await?;
    create_website(&client, &ns, "site", json!({"content": "<p>x</p>"})).await?;

    let out = explain(cp, "Website/site", &ns).await?;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("DENIED create deployments"), "{out}");
    let blocking = out
        .stdout
        .split("\nBlocking:\n")
        .nth(1)
        .ok_or_else(|| anyhow!("no Blocking: list: {out}"))?;
    assert!(
        blocking.contains(&format!(
            "ServiceAccount {ns}/limited may not create deployments in namespace {ns}"
        )),
        "{out}"
    );
    // The plan is still shown: what the controller would do once allowed.
    assert!(
        out.stdout
            .contains("Deployment/site: missing, will be created"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn explain_finds_nothing_blocking_once_a_website_has_converged() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    let ns = website_controller(cp, op, "explain-ok", &sample_rbac()?, json!({})).await?;
    create_website(&client, &ns, "hello", json!({"content": "<h1>hi</h1>"})).await?;

    // Once the operator has applied everything, explain's plan matches the live objects.
    let last = std::sync::Mutex::new(String::new());
    let converged = eventually(WAIT, "explain reporting nothing to do", || async {
        let out = explain(cp, "website/hello", &ns).await?;
        *last.lock().unwrap() = out.to_string();
        let quiet = out.stdout.contains("a reconcile now writes nothing");
        Ok((out.code == Some(0) && quiet).then_some(out))
    })
    .await;
    let out = converged.map_err(|e| anyhow!("{e}\nlast explain:\n{}", last.lock().unwrap()))?;
    assert!(
        out.stdout.trim_end().ends_with("Nothing blocks progress"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("none: the live objects match the plan, a reconcile now writes nothing"),
        "{out}"
    );
    assert!(
        out.stdout.contains("ConfigMap/hello-content\n")
            && out.stdout.contains("Deployment/hello\n"),
        "current children listed: {out}"
    );

    // An object no controller reconciles is an error, not an explanation.
    let out = explain(cp, "deployment/hello", &ns).await?;
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("no WasmController in namespace")
            && out.stderr.contains("website → Website"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn explain_says_so_when_the_user_may_not_review_the_accounts_access() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    // A user who may read what explain reads, but not create SubjectAccessReviews.
    let rbac = format!(
        "{}\n---\n{}",
        sample_rbac()?,
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: viewer }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: viewer }
rules:
  - { apiGroups: [wasmop.dev], resources: [wasmcontrollers], verbs: [get, list] }
  - { apiGroups: [example.com], resources: [websites], verbs: [get, list] }
  - { apiGroups: [""], resources: [configmaps], verbs: [get, list] }
  - { apiGroups: [apps], resources: [deployments], verbs: [get, list] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: viewer }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: viewer }
subjects: [ { kind: ServiceAccount, name: viewer } ]
"#
    );
    let ns = website_controller(cp, op, "explain-viewer", &rbac, json!({})).await?;
    create_website(&client, &ns, "site", json!({})).await?;

    // The admin kubeconfig, impersonating the viewer (kubeconfig `as`).
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig())?)?;
    let user = format!("system:serviceaccount:{ns}:viewer");
    for entry in kubeconfig["users"]
        .as_sequence_mut()
        .ok_or_else(|| anyhow!("kubeconfig without users"))?
    {
        entry["user"]["as"] = serde_yaml::Value::String(user.clone());
    }
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;

    let out = explain_as(&path, "website/site", &ns).await?;
    assert!(
        matches!(out.code, Some(0 | 1)),
        "explain still explains: {out}"
    );
    assert!(
        out.stdout
            .contains("not checked: you may not create SubjectAccessReviews"),
        "{out}"
    );
    assert!(
        out.stdout.contains("Plugin reconcile") && out.stdout.contains("Deployment/site"),
        "the rest is still shown: {out}"
    );
    Ok(())
}

/// The sample Role with one rule's verbs replaced (`resources: [what]` → `verbs: [verbs]`);
/// fails when the rule is not there, so the test cannot pass on an unchanged Role.
fn sample_rbac_with(resources_line: &str, old_verbs: &str, new_verbs: &str) -> Result<String> {
    let sample = sample_rbac()?;
    let start = sample
        .find(resources_line)
        .ok_or_else(|| anyhow!("{resources_line} not in the sample Role"))?;
    let (head, tail) = sample.split_at(start);
    let changed = tail.replacen(old_verbs, new_verbs, 1);
    if changed == tail {
        return Err(anyhow!("{old_verbs} not after {resources_line}"));
    }
    Ok(format!("{head}{changed}"))
}

#[tokio::test]
async fn explain_reports_events_that_may_be_created_but_not_patched() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    // A repeated event is a patch of the first one (its count grows): create alone is not enough.
    let rbac = sample_rbac_with(
        "resources: [events]",
        "verbs: [create, patch]",
        "verbs: [create]",
    )?;
    let ns = website_controller(cp, op, "explain-events", &rbac, json!({})).await?;
    create_website(&client, &ns, "site", json!({})).await?;

    let out = explain(cp, "website/site", &ns).await?;
    assert_eq!(out.code, Some(1), "a missing verb blocks: {out}");
    assert!(out.stdout.contains("DENIED patch events"), "{out}");
    assert!(out.stdout.contains("allowed events: create"), "{out}");
    let blocking = out
        .stdout
        .split("\nBlocking:\n")
        .nth(1)
        .ok_or_else(|| anyhow!("no Blocking: list: {out}"))?;
    assert!(
        blocking.contains(&format!(
            "ServiceAccount {ns}/website-controller may not patch events in namespace {ns}"
        )) && blocking.contains("apiGroups [\"events.k8s.io\"]"),
        "{out}"
    );
    assert!(!out.stdout.contains("Nothing blocks progress"), "{out}");
    Ok(())
}

/// Events (events.k8s.io/v1) in `ns` with `reason`: their notes.
async fn event_notes(client: &Client, ns: &str, reason: &str) -> Result<Vec<String>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect())
}

#[tokio::test]
async fn a_forbidden_write_shows_the_api_servers_message_not_a_debug_dump() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    // The account may do everything with ConfigMaps but create them.
    let rbac = sample_rbac_with(
        "resources: [configmaps]",
        "verbs: [get, list, watch, create, patch, delete]",
        "verbs: [get, list, watch, patch, delete]",
    )?;
    let ns = website_controller(cp, op, "forbidden-write", &rbac, json!({})).await?;
    create_website(&client, &ns, "site", json!({"content": "<p>x</p>"})).await?;

    // A new child is created by an apply: the API server names the object and checks `create`.
    let server_says = format!(
        "Forbidden: configmaps \"site-content\" is forbidden: User \"system:serviceaccount:{ns}:website-controller\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"{ns}\""
    );
    let no_dump = |text: &str| {
        !text.contains("Status {") && !text.contains("Some(Failure)") && !text.contains("ApiError")
    };
    // The WasmController's Degraded condition.
    let (_, reason, message) = eventually(WAIT, "Degraded=True", || async {
        Ok(condition(&client, &ns, "website", "Degraded")
            .await?
            .filter(|(s, _, _)| s == "True"))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    assert_eq!(reason, "WriteRejected", "{message}");
    assert!(message.contains(&server_says), "{message}");
    assert!(no_dump(&message), "{message}");
    // The Warning Event on the parent.
    let notes = eventually(WAIT, "a WriteRejected event", || async {
        let notes = event_notes(&client, &ns, "WriteRejected").await?;
        Ok((!notes.is_empty()).then_some(notes))
    })
    .await?;
    assert!(
        notes.iter().all(|n| n.contains(&server_says) && no_dump(n)),
        "{notes:?}"
    );
    // The operator's log line for this namespace.
    let log = std::fs::read_to_string(&op.log)?;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&ns) && l.contains("WriteRejected"))
        .collect();
    assert!(!lines.is_empty(), "no log line for {ns}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("cannot create resource") && no_dump(l)),
        "{lines:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_role_wasmop_rbac_prints_is_enough_and_explain_agrees() -> Result<()> {
    let (cp, op) = setup().await?;
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, "rbac-printed").await?;
    // Secrets, not ConfigMaps, are the children: the plugin's ConfigMap is granted by name only.
    let controller = format!(
        r#"apiVersion: wasmop.dev/v1alpha1
kind: WasmController
metadata: {{ name: tokens, namespace: {ns} }}
spec:
  parent: {{ apiVersion: example.com/v1, kind: Website }}
  children: [ {{ apiVersion: v1, kind: Secret }} ]
  plugin:
    source: {{ configMap: {{ name: misbehave, key: plugin.wasm }} }}
    config:
      mode: config
      children: [ {{ apiVersion: v1, kind: Secret, metadata: {{ name: "{{parent}}-token" }}, stringData: {{ token: t }} }} ]
  serviceAccountName: tokens
"#
    );
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}.yaml"));
    std::fs::write(&file, &controller)?;
    let printed = tokio::process::Command::new(wasmop_e2e::wasmop_bin()?)
        .arg("rbac")
        .arg("-f")
        .arg(&file)
        .output()
        .await?;
    assert!(printed.status.success(), "{printed:?}");
    let role = String::from_utf8(printed.stdout)?;
    assert!(
        role.contains("resourceNames: [misbehave]")
            && !role.contains("resources: [configmaps]\n    verbs: [get, list, watch, create"),
        "{role}"
    );
    wasmop_e2e::kubectl_stdin(cp, &["apply", "-f", "-"], Some(&role))?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    wasmop_e2e::kubectl_stdin(cp, &["apply", "-f", "-"], Some(&controller))?;
    wait_ready(&client, &ns, "tokens", op).await?;
    create_website(&client, &ns, "site", json!({})).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the Secret child", || async {
        Ok(secrets.get_opt("site-token").await?)
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;

    // explain checks the same list: nothing it needs is missing.
    let last = std::sync::Mutex::new(String::new());
    eventually(WAIT, "explain: nothing blocks", || async {
        let out = explain(cp, "website/site", &ns).await?;
        *last.lock().unwrap() = out.to_string();
        Ok((out.code == Some(0)).then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\nlast explain:\n{}", last.lock().unwrap()))?;
    let out = last.lock().unwrap().clone();
    assert!(
        out.contains("Nothing blocks progress") && !out.contains("DENIED"),
        "{out}"
    );
    assert!(
        out.contains("allowed configmaps misbehave: get, list, watch"),
        "{out}"
    );

    // The plugin ConfigMap is watched by name with only that grant: a new version loads. The
    // same module with a custom section appended (other bytes, same behaviour), gzipped.
    let controllers: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &wasmcontroller_resource());
    let first = controllers.get("tokens").await?.data["status"]["plugin"]["sha256"].clone();
    let mut wasm = plugin("misbehave");
    wasm.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &wasm)?;
    put_plugin(&client, &ns, "misbehave", gz.finish()?).await?;
    eventually(WAIT, "the new plugin loaded", || async {
        let plugin = &controllers.get("tokens").await?.data["status"]["plugin"];
        Ok((plugin["encoding"] == "gzip" && plugin["sha256"] != first).then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    Ok(())
}
