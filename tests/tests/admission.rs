//! End-to-end: what the API server itself refuses about WasmControllers, with the CRD and the
//! admission policy from `crds/wasmcontroller.yaml` installed on the real control plane.
//! Real users act through impersonation (`alice`, `bob`, a team ServiceAccount); no operator
//! runs: every decision here is the API server's.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use wasmop_e2e::website::wasmcontroller_resource;
use wasmop_e2e::{cluster, eventually, kubectl_stdin};

/// The admission policy (and binding) installed with the CRD.
const POLICY: &str = "wasmop.dev-act-as-serviceaccount";

/// The policy is loaded and RBAC changes reach the authorizer asynchronously.
const SETTLE: Duration = Duration::from_secs(60);

/// A namespace with a ServiceAccount `privileged` (namespace admin), a ServiceAccount `team`,
/// and `authors` (users) plus `team` allowed to read and write WasmControllers and ConfigMaps,
/// but not to impersonate anyone.
async fn namespace(prefix: &str, authors: &[&str]) -> Result<String> {
    let cp = cluster().await?;
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, prefix).await?;
    let users: String = authors
        .iter()
        .map(|u| format!("\n  - {{ kind: User, name: {u}, apiGroup: rbac.authorization.k8s.io }}"))
        .collect();
    let rbac = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: privileged }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: privileged-is-admin }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin }}
subjects: [ {{ kind: ServiceAccount, name: privileged }} ]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{ name: team }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: wasmcontroller-author }}
rules:
  - {{ apiGroups: [wasmop.dev], resources: [wasmcontrollers], verbs: [get, list, create, update, patch] }}
  - {{ apiGroups: [""], resources: [configmaps], verbs: [get, list, create, update, patch] }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: wasmcontroller-author }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: wasmcontroller-author }}
subjects:
  - {{ kind: ServiceAccount, name: team }}{users}
"#
    );
    kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(&rbac))?;
    Ok(ns)
}

/// Lets `user` impersonate ServiceAccount `account` of `ns`.
async fn grant_impersonate(ns: &str, user: &str, account: &str) -> Result<()> {
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: act-as-{account} }}
rules:
  - {{ apiGroups: [""], resources: [serviceaccounts], resourceNames: [{account}], verbs: [impersonate] }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: act-as-{account} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: act-as-{account} }}
subjects: [ {{ kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io }} ]
"#
    );
    kubectl_stdin(
        cluster().await?,
        &["apply", "-n", ns, "-f", "-"],
        Some(&rbac),
    )?;
    Ok(())
}

/// The WasmControllers of `ns`, written as `user` (the admin kubeconfig impersonating them).
async fn wasmcontrollers_as(user: &str, ns: &str) -> Result<Api<DynamicObject>> {
    let cp = cluster().await?;
    let mut config = localcp::kubeconfig::config(cp.kubeconfig()).await?;
    config.auth_info.impersonate = Some(user.into());
    config.auth_info.impersonate_groups = None;
    Ok(Api::namespaced_with(
        Client::try_from(config)?,
        ns,
        &wasmcontroller_resource(),
    ))
}

/// A WasmController named `name` acting as ServiceAccount `account`; no plugin needs to run.
fn controller(name: &str, account: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController",
        "metadata": {"name": name},
        "spec": {
            "parent": {"apiVersion": "example.com/v1", "kind": "Website"},
            "children": [{"apiVersion": "v1", "kind": "ConfigMap"}],
            "plugin": {"source": {"configMap": {"name": "plugin", "key": "plugin.wasm"}}},
            "serviceAccountName": account,
        }
    }))
    .expect("static object")
}

/// The API server's refusal of a write: its HTTP code and message.
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(status)) => Ok((status.code, status.message)),
        Err(other) => bail!("expected the API server to refuse, got {other}"),
        Ok(accepted) => bail!("the API server accepted: {accepted:?}"),
    }
}

/// Waits until the policy refuses `api`'s author a dry-run create of `obj` (the policy is
/// loaded asynchronously after `kubectl apply`); returns the refusal message.
async fn policy_refuses(api: &Api<DynamicObject>, obj: &DynamicObject) -> Result<String> {
    let started = Instant::now();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let message = eventually(SETTLE, "the act-as policy to refuse a create", || async {
        match api.create(&dry_run, obj).await {
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(POLICY) => {
                Ok(Some(s.message))
            }
            Err(e) => Err(e.into()), // e.g. RBAC not yet in effect: retried, reported on timeout
            Ok(_) => Ok(None),       // the policy is not loaded yet
        }
    })
    .await?;
    eprintln!(
        "the policy refused after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(message)
}

#[tokio::test]
async fn naming_a_service_account_needs_the_right_to_impersonate_it() -> Result<()> {
    let ns = namespace("act-as", &["alice"]).await?;
    let alice = wasmcontrollers_as("alice", &ns).await?;
    let wc = controller("website", "privileged");

    // Refused, naming the account and the fix.
    let message = policy_refuses(&alice, &wc).await?;
    for expected in [
        format!("alice may not act as ServiceAccount {ns}/privileged"),
        "spec.serviceAccountName".to_string(),
        "resources: [serviceaccounts], resourceNames: [privileged], verbs: [impersonate]"
            .to_string(),
    ] {
        assert!(message.contains(&expected), "{expected:?} in: {message}");
    }
    let (code, message) = refusal(alice.create(&PostParams::default(), &wc).await)?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains(&format!("{ns}/privileged")), "{message}");

    // A team ServiceAccount (e.g. another controller's plugin writing a WasmController) too.
    let team = wasmcontrollers_as(&format!("system:serviceaccount:{ns}:team"), &ns).await?;
    let message = policy_refuses(&team, &wc).await?;
    assert!(
        message.contains(&format!(
            "system:serviceaccount:{ns}:team may not act as ServiceAccount {ns}/privileged"
        )),
        "{message}"
    );

    // Once alice may impersonate the account, the same create succeeds.
    grant_impersonate(&ns, "alice", "privileged").await?;
    let started = Instant::now();
    let created = eventually(SETTLE, "alice's create after the grant", || async {
        Ok(Some(alice.create(&PostParams::default(), &wc).await?))
    })
    .await?;
    eprintln!(
        "the grant took effect after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(created.data["spec"]["serviceAccountName"], "privileged");
    // Still only that account: another one in the namespace stays refused.
    let (code, message) = refusal(
        alice
            .create(&PostParams::default(), &controller("other", "team"))
            .await,
    )?;
    assert_eq!(code, 403, "{message}");
    assert!(message.contains(&format!("{ns}/team")), "{message}");
    Ok(())
}

#[tokio::test]
async fn changing_the_spec_needs_the_right_but_metadata_only_writes_do_not() -> Result<()> {
    let ns = namespace("act-as-update", &["bob"]).await?;
    // The admin (system:masters) may impersonate anyone: it creates the controller.
    let admin: Api<DynamicObject> = Api::namespaced_with(
        cluster().await?.client().await?,
        &ns,
        &wasmcontroller_resource(),
    );
    admin
        .create(&PostParams::default(), &controller("website", "privileged"))
        .await
        .context("the admin may name any account")?;
    let bob = wasmcontrollers_as("bob", &ns).await?;
    policy_refuses(&bob, &controller("probe", "privileged")).await?;

    // bob may write WasmControllers but not act as `privileged`: a spec change is refused...
    let spec_change = json!({"spec": {"resyncPeriod": "1m"}});
    let (code, message) = refusal(
        bob.patch(
            "website",
            &PatchParams::default(),
            &Patch::Merge(&spec_change),
        )
        .await,
    )?;
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains(&format!(
            "bob may not act as ServiceAccount {ns}/privileged"
        )),
        "{message}"
    );
    assert!(
        admin.get("website").await?.data["spec"]
            .get("resyncPeriod")
            .is_none(),
        "the refused change was not stored"
    );
    // ... and so is a full update (PUT) that changes it.
    let mut replaced = admin.get("website").await?;
    replaced.data["spec"]["resyncPeriod"] = json!("1m");
    let (code, message) = refusal(
        bob.replace("website", &PostParams::default(), &replaced)
            .await,
    )?;
    assert_eq!(code, 403, "{message}");

    // ... while metadata-only writes (labels here; finalizers and ownerReferences alike) pass.
    let label = json!({"metadata": {"labels": {"team": "web"}}});
    let labelled = bob
        .patch("website", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .context("a label-only patch by bob")?;
    assert_eq!(
        labelled.labels().get("team").map(String::as_str),
        Some("web")
    );
    let mut relabelled = labelled.clone();
    relabelled
        .labels_mut()
        .insert("tier".into(), "frontend".into());
    bob.replace("website", &PostParams::default(), &relabelled)
        .await
        .context("a metadata-only update (PUT) by bob")?;
    Ok(())
}

#[tokio::test]
async fn a_bad_service_account_name_and_an_unrestricted_ref_are_refused_naming_the_field()
-> Result<()> {
    let cp = cluster().await?;
    let ns = localcp::create_test_namespace(&cp.client().await?, "admission-fields").await?;
    let admin: Api<DynamicObject> =
        Api::namespaced_with(cp.client().await?, &ns, &wasmcontroller_resource());
    let with = |name: &str, spec: Value| -> DynamicObject {
        let mut wc = controller(name, "website-controller");
        for (k, v) in spec.as_object().expect("object") {
            wc.data["spec"][k] = v.clone();
        }
        wc
    };
    let refused: Vec<(&str, Value, &str)> = vec![
        (
            "an invalid ServiceAccount name",
            json!({"serviceAccountName": "Bad_Name"}),
            "spec.serviceAccountName: must be a ServiceAccount name",
        ),
        (
            "a ServiceAccount name ending in '-'",
            json!({"serviceAccountName": "team-"}),
            "spec.serviceAccountName: must be a ServiceAccount name",
        ),
        (
            "a ref without allowedKinds",
            json!({"related": [{"name": "infra", "ref": "$.spec.infraRef"}]}),
            "spec.related[].allowedKinds: a ref entry must list the kinds",
        ),
        (
            "a ref with empty allowedKinds",
            json!({"related": [{"name": "infra", "ref": "$.spec.infraRef", "allowedKinds": []}]}),
            "spec.related[].allowedKinds: a ref entry must list the kinds",
        ),
    ];
    for (what, spec, expected) in refused {
        let (code, message) = refusal(
            admin
                .create(&PostParams::default(), &with("bad", spec))
                .await,
        )
        .with_context(|| what.to_string())?;
        assert_eq!(code, 422, "{what}: {message}");
        assert!(
            message.contains(expected),
            "{what}: {expected:?} in: {message}"
        );
    }
    let accepted: Vec<(&str, Value)> = vec![
        (
            "a dotted ServiceAccount name",
            json!({"serviceAccountName": "web.controller-1"}),
        ),
        (
            "a ref with allowedKinds",
            json!({"related": [{"name": "infra", "ref": "$.spec.infraRef",
                                "allowedKinds": [{"group": "", "kind": "ConfigMap"}]}]}),
        ),
        (
            "a selector entry (no allowedKinds)",
            json!({"related": [{"name": "peers", "apiVersion": "v1", "kind": "ConfigMap",
                                "selector": {"matchLabels": {"app": "web"}}}]}),
        ),
    ];
    for (i, (what, spec)) in accepted.into_iter().enumerate() {
        admin
            .create(&PostParams::default(), &with(&format!("good-{i}"), spec))
            .await
            .with_context(|| format!("{what} is accepted"))?;
    }
    Ok(())
}
