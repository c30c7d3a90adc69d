//! End to end: a controller never touches what it did not make, and its finalizers never
//! strand a parent, a WasmController or a namespace (issue 15). Real control plane, real
//! `wasmop`, the real misbehave plugin (`mode: config` returns `controller.config.children`,
//! `{parent}` replaced by the parent's name), real RBAC.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use wasmop_e2e::website::{
    WAIT, apply_controller, condition, create_website, get_website, put_plugin, sample_rbac,
    team_namespace, wait_ready, wasmcontroller_resource, website_resource,
};
use wasmop_e2e::{Operator, eventually, kubectl_stdin, operator, plugin};

/// A ConfigMap child named `{parent}-<suffix>` with `data.from`.
fn cm_child(name: &str, from: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"from": from}})
}

/// A WasmController over Websites running the misbehave plugin with `config`.
async fn misbehave_controller(
    client: &Client,
    ns: &str,
    name: &str,
    config: Value,
    extra: Value,
) -> Result<()> {
    apply_controller(client, ns, name, "misbehave", config, extra).await
}

/// Controller `ctl` in `mode: config` returning `children`, once it is Ready.
async fn configured_controller(
    client: &Client,
    ns: &str,
    op: &Operator,
    children: Value,
) -> Result<()> {
    misbehave_controller(
        client,
        ns,
        "ctl",
        json!({"mode": "config", "children": children}),
        json!({}),
    )
    .await?;
    wait_ready(client, ns, "ctl", op).await
}

async fn team(
    prefix: &str,
) -> Result<(
    &'static localcp::ControlPlane,
    &'static Operator,
    Client,
    String,
)> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, prefix).await?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    Ok((cp, op, client, ns))
}

async fn degraded(client: &Client, ns: &str, wc: &str) -> Result<Option<(String, String)>> {
    Ok(condition(client, ns, wc, "Degraded")
        .await?
        .filter(|(s, _, _)| s == "True")
        .map(|(_, r, m)| (r, m)))
}

/// Events (events.k8s.io/v1) regarding the Website `parent`: (type, reason, note).
async fn events_of(
    client: &Client,
    ns: &str,
    parent: &str,
) -> Result<Vec<(String, String, String)>> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().fields(&format!("regarding.name={parent}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

async fn wait_event(client: &Client, ns: &str, parent: &str, reason: &str) -> Result<String> {
    eventually(WAIT, &format!("a {reason} event on {parent}"), || async {
        Ok(events_of(client, ns, parent)
            .await?
            .into_iter()
            .find(|(_, r, _)| r == reason)
            .map(|(_, _, note)| note))
    })
    .await
}

fn controller_uid(obj: &impl ResourceExt) -> Option<String> {
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Creates a ConfigMap as the admin, with kubectl's field manager, like a person would.
async fn admin_configmap(client: &Client, ns: &str, name: &str, data: Value) -> Result<ConfigMap> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))?;
    let params = PostParams {
        field_manager: Some("kubectl-create".into()),
        ..Default::default()
    };
    Ok(api.create(&params, &cm).await?)
}

#[tokio::test]
async fn an_object_the_controller_did_not_create_is_never_written_reported_and_never_pruned()
-> Result<()> {
    let (_, op, client, ns) = team("foreign").await?;
    let before = admin_configmap(&client, &ns, "site-settings", json!({"owner": "admin"})).await?;
    let children = json!([
        cm_child("{parent}-own", "plugin"),
        cm_child("{parent}-settings", "plugin")
    ]);
    configured_controller(&client, &ns, op, children).await?;
    create_website(&client, &ns, "site", json!({})).await?;

    let (reason, message) = eventually(WAIT, "Degraded=True", || degraded(&client, &ns, "ctl"))
        .await
        .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    assert_eq!(reason, "ChildConflict", "{message}");
    assert!(
        message.contains("ConfigMap/site-settings") && message.contains("has no controller"),
        "{message}"
    );
    assert!(
        message.contains("kubectl-create"),
        "names who wrote it: {message}"
    );
    assert!(
        message.contains("wasmop.dev/adopt=ctl"),
        "says how to hand it over: {message}"
    );
    let note = wait_event(&client, &ns, "site", "ChildConflict").await?;
    assert!(note.contains("ConfigMap/site-settings"), "{note}");

    // Not written at all: same data, no owner, no label, same resourceVersion; and nothing
    // else of the response was written either.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let after = configmaps.get("site-settings").await?;
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "untouched"
    );
    assert!(after.owner_references().is_empty() && after.labels().is_empty());
    assert!(
        configmaps.get_opt("site-own").await?.is_none(),
        "all or nothing"
    );

    // The plugin stops asking for it: the rest is written, the admin's object stays.
    let children = json!([cm_child("{parent}-own", "plugin")]);
    misbehave_controller(
        &client,
        &ns,
        "ctl",
        json!({"mode": "config", "children": children}),
        json!({}),
    )
    .await?;
    eventually(WAIT, "site-own created", || async {
        Ok(configmaps.get_opt("site-own").await?.map(|_| ()))
    })
    .await?;
    eventually(WAIT, "Degraded cleared", || async {
        Ok(degraded(&client, &ns, "ctl").await?.is_none().then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = configmaps.get("site-settings").await?;
    assert_eq!(
        kept.resource_version(),
        before.resource_version(),
        "never pruned"
    );
    Ok(())
}

#[tokio::test]
async fn adoption_needs_the_annotation_and_then_the_object_is_a_normal_child() -> Result<()> {
    let (_, op, client, ns) = team("adopt").await?;
    admin_configmap(
        &client,
        &ns,
        "site-legacy",
        json!({"owner": "admin", "extra": "kept?"}),
    )
    .await?;
    let children = json!([cm_child("{parent}-legacy", "plugin")]);
    configured_controller(&client, &ns, op, children).await?;
    create_website(&client, &ns, "site", json!({})).await?;
    eventually(WAIT, "ChildConflict", || async {
        Ok(degraded(&client, &ns, "ctl")
            .await?
            .filter(|(r, _)| r == "ChildConflict"))
    })
    .await?;

    // Whoever may write the object hands it over.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let annotate = json!({"metadata": {"annotations": {"wasmop.dev/adopt": "ctl"}}});
    configmaps
        .patch(
            "site-legacy",
            &PatchParams::default(),
            &Patch::Merge(&annotate),
        )
        .await?;
    let site = get_website(&client, &ns, "site").await?;
    let adopted = eventually(WAIT, "site-legacy adopted", || async {
        let cm = configmaps.get("site-legacy").await?;
        Ok((controller_uid(&cm) == site.uid()).then_some(cm))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    assert_eq!(adopted.data.as_ref().unwrap()["from"], "plugin");
    assert_eq!(adopted.labels()["wasmop.dev/controller"], "ctl");
    wait_event(&client, &ns, "site", "Adopted").await?;
    eventually(WAIT, "Degraded cleared", || async {
        Ok(degraded(&client, &ns, "ctl").await?.is_none().then_some(()))
    })
    .await?;

    // Now it is ours: no longer desired means pruned.
    misbehave_controller(
        &client,
        &ns,
        "ctl",
        json!({"mode": "config", "children": []}),
        json!({}),
    )
    .await?;
    eventually(WAIT, "the adopted child pruned", || async {
        Ok(configmaps
            .get_opt("site-legacy")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn two_parents_asking_for_one_child_name_the_first_keeps_it_and_nothing_flips() -> Result<()>
{
    let (_, op, client, ns) = team("shared-name").await?;
    let children = json!([cm_child("shared", "{parent}")]);
    configured_controller(&client, &ns, op, children).await?;
    create_website(&client, &ns, "first", json!({})).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let first = get_website(&client, &ns, "first").await?;
    eventually(WAIT, "shared owned by first", || async {
        Ok(configmaps
            .get_opt("shared")
            .await?
            .filter(|cm| controller_uid(cm) == first.uid())
            .map(|_| ()))
    })
    .await?;
    let written = configmaps.get("shared").await?.resource_version();

    create_website(&client, &ns, "second", json!({})).await?;
    let (reason, message) = eventually(WAIT, "ChildConflict for second", || async {
        Ok(degraded(&client, &ns, "ctl")
            .await?
            .filter(|(r, _)| r == "ChildConflict"))
    })
    .await?;
    assert!(
        message.contains("Website second") || message.contains("second"),
        "{reason}: {message}"
    );
    assert!(
        message.contains("another parent of this controller"),
        "{message}"
    );
    for _ in 0..8 {
        let cm = configmaps.get("shared").await?;
        assert_eq!(controller_uid(&cm), first.uid(), "nothing flips");
        assert_eq!(cm.resource_version(), written, "not even rewritten");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// Two controllers start at the same moment and want the same 20 names: whichever creates a
/// name first keeps it, and the other is refused by the API server (create fails if the
/// object exists) or by its cache; never a shared or overwritten object.
#[tokio::test]
async fn racing_controllers_never_take_over_each_others_children() -> Result<()> {
    let (_, op, client, ns) = team("race").await?;
    let names: Vec<String> = (0..20).map(|i| format!("contested-{i}")).collect();
    for ctl in ["left", "right"] {
        let children: Vec<Value> = names.iter().map(|n| cm_child(n, ctl)).collect();
        misbehave_controller(
            &client,
            &ns,
            ctl,
            json!({"mode": "config", "children": children}),
            json!({}),
        )
        .await?;
    }
    wait_ready(&client, &ns, "left", op).await?;
    wait_ready(&client, &ns, "right", op).await?;
    let (a, b) = tokio::join!(create_website(&client, &ns, "site", json!({})), async {
        Ok::<_, anyhow::Error>(())
    });
    a?;
    b?;
    // One parent, two controllers: both reconcile it at once and race for every name.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "a controller reports the conflict", || async {
        let l = degraded(&client, &ns, "left").await?;
        let r = degraded(&client, &ns, "right").await?;
        Ok((l.is_some() || r.is_some()).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = |list: Vec<ConfigMap>| {
        list.into_iter()
            .filter(|cm| cm.name_any().starts_with("contested-"))
            .map(|cm| {
                let label = cm
                    .labels()
                    .get("wasmop.dev/controller")
                    .cloned()
                    .unwrap_or_default();
                let from = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get("from").cloned())
                    .unwrap_or_default();
                (
                    cm.name_any(),
                    label,
                    from,
                    cm.resource_version().unwrap_or_default(),
                )
            })
            .collect::<BTreeSet<_>>()
    };
    let first = snapshot(configmaps.list(&ListParams::default()).await?.items);
    for (name, label, from, _) in &first {
        assert_eq!(
            label, from,
            "{name}: written by the controller that labels it, never mixed"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = snapshot(configmaps.list(&ListParams::default()).await?.items);
    assert_eq!(first, later, "nothing flips or is rewritten");
    let raced = op
        .metric("wasmop_reconciles_total", &[("result", "child_conflict")])
        .await?;
    let log = std::fs::read_to_string(&op.log).unwrap_or_default();
    let lost_races = log.matches("taken after the cache was read").count();
    eprintln!(
        "{} contested children, {raced} conflicting reconciles, {lost_races} refused by the API server's create",
        first.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_plugin_echoing_its_children_back_stays_healthy() -> Result<()> {
    let (_, op, client, ns) = team("echo").await?;
    misbehave_controller(&client, &ns, "ctl", json!({"mode": "echo"}), json!({})).await?;
    wait_ready(&client, &ns, "ctl", op).await?;
    create_website(&client, &ns, "site", json!({})).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let marker = eventually(WAIT, "the marker child", || async {
        Ok(configmaps.get_opt("site-marker").await?)
    })
    .await?;
    // Reconciles echo it back with ownerReferences, uid, managedFields: all accepted. Each
    // edit of the parent is a reconcile.
    let label = format!("{ns}/ctl");
    let start = op
        .metric(
            "wasmop_reconciles_total",
            &[("controller", &label), ("result", "success")],
        )
        .await?;
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    for i in 0..3 {
        let touch = json!({"metadata": {"annotations": {"e2e/touch": i.to_string()}}});
        websites
            .patch("site", &PatchParams::default(), &Patch::Merge(&touch))
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually(WAIT, "three more successful reconciles", || async {
        let now = op
            .metric(
                "wasmop_reconciles_total",
                &[("controller", &label), ("result", "success")],
            )
            .await?;
        Ok((now >= start + 3.0).then_some(()))
    })
    .await?;
    assert!(degraded(&client, &ns, "ctl").await?.is_none(), "healthy");
    let failed = op
        .metric(
            "wasmop_reconciles_total",
            &[("controller", &label), ("result", "invalid_output")],
        )
        .await?;
    assert_eq!(failed, 0.0);
    assert_eq!(
        configmaps.get("site-marker").await?.uid(),
        marker.uid(),
        "the same child"
    );
    Ok(())
}

#[tokio::test]
async fn degraded_forgets_a_failing_parent_once_it_is_deleted() -> Result<()> {
    let (_, op, client, ns) = team("forget").await?;
    admin_configmap(&client, &ns, "bad-x", json!({})).await?;
    let children = json!([cm_child("{parent}-x", "plugin")]);
    configured_controller(&client, &ns, op, children).await?;
    create_website(&client, &ns, "good", json!({})).await?;
    create_website(&client, &ns, "bad", json!({})).await?;
    let (_, message) =
        eventually(WAIT, "Degraded for bad", || degraded(&client, &ns, "ctl")).await?;
    assert!(message.contains("bad"), "{message}");
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    websites.delete("bad", &DeleteParams::default()).await?;
    eventually(WAIT, "Degraded=False once bad is gone", || async {
        Ok(condition(&client, &ns, "ctl", "Degraded")
            .await?
            .filter(|(s, r, _)| s == "False" && r == "AllReconciled")
            .map(|_| ()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    Ok(())
}

#[tokio::test]
async fn a_service_account_and_a_pod_using_it_converge_from_one_response() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let rbac = sample_rbac()?.replace(
        "  - apiGroups: [events.k8s.io]",
        "  - apiGroups: [\"\"]\n    resources: [serviceaccounts, pods]\n    verbs: [get, list, watch, create, patch, delete]\n  - apiGroups: [events.k8s.io]",
    );
    let ns = wasmop_e2e::website::namespace_with(cp, &client, "deps", &rbac).await?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    // The Pod comes first in the response; the ServiceAccount admission plugin refuses a Pod
    // whose ServiceAccount does not exist yet, so a dry run of everything at once never passes.
    let children = json!([
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "{parent}-pod"},
         "spec": {"serviceAccountName": "{parent}-sa", "automountServiceAccountToken": false,
                  "containers": [{"name": "c", "image": "example.invalid/none:1"}]}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "{parent}-sa"}},
    ]);
    let kinds = json!({"children": [{"apiVersion": "v1", "kind": "Pod"}, {"apiVersion": "v1", "kind": "ServiceAccount"}]});
    misbehave_controller(
        &client,
        &ns,
        "ctl",
        json!({"mode": "config", "children": children}),
        kinds,
    )
    .await?;
    wait_ready(&client, &ns, "ctl", op).await?;
    create_website(&client, &ns, "app", json!({})).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the ServiceAccount and the Pod", || async {
        Ok(
            (sas.get_opt("app-sa").await?.is_some() && pods.get_opt("app-pod").await?.is_some())
                .then_some(()),
        )
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    eventually(WAIT, "Degraded=False", || async {
        Ok(condition(&client, &ns, "ctl", "Degraded")
            .await?
            .filter(|(s, _, _)| s == "False")
            .map(|_| ()))
    })
    .await?;
    Ok(())
}

/// The longest names Kubernetes allows: a 63-character namespace and a 253-character
/// WasmController name. Field managers, finalizers, labels and Event reporters still fit.
#[tokio::test]
async fn the_longest_namespace_and_controller_names_work_end_to_end() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let suffix = format!(
        "{:x}",
        std::process::id() ^ Instant::now().elapsed().subsec_nanos()
    );
    let ns = format!("{}{suffix}", "l".repeat(63 - suffix.len()));
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(&sample_rbac()?))?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    let name = format!("w{}", "x".repeat(252));
    let finalize = json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                          "config": {"mode": "config", "children": [cm_child("{parent}-long", "plugin")]},
                          "finalize": true}});
    misbehave_controller(&client, &ns, &name, json!({}), finalize).await?;
    wait_ready(&client, &ns, &name, op).await?;
    create_website(&client, &ns, "site", json!({})).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let child = eventually(WAIT, "the child", || async {
        Ok(configmaps.get_opt("site-long").await?)
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    let managers: Vec<String> = child
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    ensure!(
        managers
            .iter()
            .any(|m| m.starts_with("wasmop.dev/") && m.len() <= 128),
        "{managers:?}"
    );
    ensure!(child.labels()["wasmop.dev/controller"].len() <= 63);
    let site = eventually(WAIT, "the finalizer on the parent", || async {
        let w = get_website(&client, &ns, "site").await?;
        Ok((!w.finalizers().is_empty()).then_some(w))
    })
    .await?;
    ensure!(site.finalizers()[0].len() <= "wasmop.dev/".len() + 63);
    // A failure is recorded as an Event by the (shortened) reporting controller.
    admin_configmap(&client, &ns, "other-long", json!({})).await?;
    create_website(&client, &ns, "other", json!({})).await?;
    wait_event(&client, &ns, "other", "ChildConflict").await?;
    // And it finalizes and goes.
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    websites.delete("site", &DeleteParams::default()).await?;
    eventually(WAIT, "the parent finalized and gone", || async {
        Ok(websites.get_opt("site").await?.is_none().then_some(()))
    })
    .await?;
    nss.delete(&ns, &DeleteParams::default()).await?;
    Ok(())
}

async fn finalizers_of(client: &Client, ns: &str, name: &str) -> Result<Option<Vec<String>>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    Ok(api.get_opt(name).await?.map(|w| w.finalizers().to_vec()))
}

fn finalize_spec(mode: &str) -> Value {
    json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                      "config": {"mode": "marker", "finalize": mode}, "finalize": true}})
}

#[tokio::test]
async fn deleting_a_finalizing_wasmcontroller_releases_every_parent() -> Result<()> {
    let (_, op, client, ns) = team("release").await?;
    misbehave_controller(&client, &ns, "ctl", json!({}), finalize_spec("never")).await?;
    wait_ready(&client, &ns, "ctl", op).await?;
    let wcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &wasmcontroller_resource());
    let wc = wcs.get("ctl").await?;
    assert!(
        wc.finalizers()
            .contains(&"wasmop.dev/release-parents".to_string()),
        "{:?}",
        wc.finalizers()
    );
    for site in ["live", "doomed"] {
        create_website(&client, &ns, site, json!({})).await?;
    }
    for site in ["live", "doomed"] {
        eventually(WAIT, "finalizer on the parent", || async {
            Ok(finalizers_of(&client, &ns, site)
                .await?
                .filter(|f| f.contains(&"wasmop.dev/ctl".to_string())))
        })
        .await?;
    }
    // `finalize` never says done: the doomed parent waits.
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    websites.delete("doomed", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        finalizers_of(&client, &ns, "doomed").await?.is_some(),
        "held by finalize"
    );

    let started = Instant::now();
    wcs.delete("ctl", &DeleteParams::default()).await?;
    let (_, reason, message) = eventually(WAIT, "Ready reason Releasing", || async {
        Ok(condition(&client, &ns, "ctl", "Ready")
            .await?
            .filter(|(_, r, _)| r == "Releasing"))
    })
    .await?;
    assert!(message.contains("of 2 Website"), "{reason}: {message}");
    eventually(
        Duration::from_secs(90),
        "the WasmController gone",
        || async { Ok(wcs.get_opt("ctl").await?.is_none().then_some(())) },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    eprintln!("released in {:?}", started.elapsed());
    assert_eq!(
        finalizers_of(&client, &ns, "live").await?,
        Some(vec![]),
        "released, kept"
    );
    assert_eq!(
        finalizers_of(&client, &ns, "doomed").await?,
        None,
        "released, gone"
    );
    Ok(())
}

/// Controller `ctl` with `finalize` (the plugin's `finalize` answering as `mode` says), and
/// a parent `name` once it carries the controller's finalizer.
async fn parent_with_finalizer(
    client: &Client,
    ns: &str,
    op: &Operator,
    mode: &str,
    name: &str,
) -> Result<()> {
    misbehave_controller(client, ns, "ctl", json!({}), finalize_spec(mode)).await?;
    wait_ready(client, ns, "ctl", op).await?;
    create_website(client, ns, name, json!({})).await?;
    eventually(WAIT, "finalizer on the parent", || async {
        Ok(finalizers_of(client, ns, name)
            .await?
            .filter(|f| !f.is_empty()))
    })
    .await
    .map(|_| ())
}

#[tokio::test]
async fn turning_finalize_off_releases_the_parents() -> Result<()> {
    let (_, op, client, ns) = team("toggle").await?;
    parent_with_finalizer(&client, &ns, op, "done", "site").await?;
    let off = json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                                "config": {"mode": "marker"}, "finalize": false}});
    misbehave_controller(&client, &ns, "ctl", json!({}), off).await?;
    eventually(WAIT, "finalizer released", || async {
        Ok(finalizers_of(&client, &ns, "site")
            .await?
            .filter(|f| f.is_empty()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    let wcs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &wasmcontroller_resource());
    eventually(
        WAIT,
        "the WasmController's own finalizer removed",
        || async { Ok(wcs.get("ctl").await?.finalizers().is_empty().then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_parent_whose_finalize_always_fails_can_be_let_go_by_annotation() -> Result<()> {
    let (_, op, client, ns) = team("skip").await?;
    parent_with_finalizer(&client, &ns, op, "fail", "stuck").await?;
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    websites.delete("stuck", &DeleteParams::default()).await?;
    let (_, message) = eventually(WAIT, "the failing finalize reported", || {
        degraded(&client, &ns, "ctl")
    })
    .await?;
    assert!(message.contains("finalize refuses"), "{message}");
    assert!(
        finalizers_of(&client, &ns, "stuck").await?.is_some(),
        "held"
    );

    let annotate = json!({"metadata": {"annotations": {"wasmop.dev/skip-finalize": "ctl"}}});
    websites
        .patch("stuck", &PatchParams::default(), &Patch::Merge(&annotate))
        .await?;
    eventually(WAIT, "the parent gone", || async {
        Ok(finalizers_of(&client, &ns, "stuck")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    let note = wait_event(&client, &ns, "stuck", "FinalizeSkipped").await?;
    assert!(note.contains("wasmop.dev/skip-finalize=ctl"), "{note}");
    Ok(())
}
