//! End-to-end: the real control plane, the real `wasmop` binary, real plugins from source.
//! Each test works in its own namespace and asserts on what a user would see.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use wasmop_e2e::website::*;
use wasmop_e2e::{eventually, kubectl_stdin, operator, plugin};

#[tokio::test]
async fn website_children_follow_the_plugin_from_create_to_delete() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "website").await?;
    put_plugin(&client, &ns, "website-plugin", plugin("website-rust")).await?;
    apply_controller(
        &client,
        &ns,
        "website",
        "website-plugin",
        json!({"replicas": 2}),
        json!({}),
    )
    .await?;
    wait_ready(&client, &ns, "website", op).await?;

    // Children appear, owned by the parent, managed by this controller's field manager.
    create_website(&client, &ns, "hello", json!({"content": "<h1>hi</h1>"})).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let dep = eventually(WAIT, "Deployment hello", || async {
        Ok(deployments.get_opt("hello").await?)
    })
    .await?;
    let cm = eventually(WAIT, "ConfigMap hello-content", || async {
        Ok(configmaps.get_opt("hello-content").await?)
    })
    .await?;
    let parent = get_website(&client, &ns, "hello").await?;
    for (kind, owners, managed) in [
        (
            "Deployment",
            dep.owner_references().to_vec(),
            dep.managed_fields().to_vec(),
        ),
        (
            "ConfigMap",
            cm.owner_references().to_vec(),
            cm.managed_fields().to_vec(),
        ),
    ] {
        assert_eq!(owners.len(), 1, "{kind} has one owner");
        assert_eq!(
            owners[0].uid,
            parent.uid().unwrap(),
            "{kind} is owned by the parent"
        );
        assert_eq!(owners[0].controller, Some(true));
        let manager = format!("wasmop.dev/{ns}.website");
        assert!(
            managed
                .iter()
                .any(|m| m.manager.as_deref() == Some(manager.as_str())
                    && m.operation.as_deref() == Some("Apply")),
            "{kind} has managedFields under {manager}: {managed:?}"
        );
    }
    assert_eq!(
        dep.spec.as_ref().unwrap().replicas,
        Some(2),
        "replicas come from spec.plugin.config"
    );
    assert_eq!(cm.data.as_ref().unwrap()["index.html"], "<h1>hi</h1>");

    // Status is set on the parent's status subresource.
    let status = eventually(WAIT, "Website status", || async {
        let w = get_website(&client, &ns, "hello").await?;
        Ok(w.data
            .get("status")
            .filter(|s| s["phase"].is_string())
            .cloned())
    })
    .await?;
    assert_eq!(status["phase"], "Progressing");
    assert_eq!(
        status["children"],
        json!(["ConfigMap/hello-content", "Deployment/hello"])
    );

    // Changing the parent updates the children.
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    websites
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await?;
    eventually(WAIT, "Deployment hello scaled to 5", || async {
        Ok(deployments
            .get("hello")
            .await?
            .spec
            .and_then(|s| s.replicas)
            .filter(|r| *r == 5))
    })
    .await?;

    // Removing a child from the desired set deletes it.
    websites
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"content": null}})),
        )
        .await?;
    eventually(WAIT, "ConfigMap hello-content pruned", || async {
        Ok(configmaps
            .get_opt("hello-content")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;

    // After convergence nothing is written for 5 seconds.
    eventually(WAIT, "status reflecting the last change", || async {
        let w = get_website(&client, &ns, "hello").await?;
        Ok((w.data["status"]["replicas"] == 5
            && w.data["status"]["children"] == json!(["Deployment/hello"]))
        .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the last watch events settle
    let before = (
        get_website(&client, &ns, "hello").await?.resource_version(),
        deployments.get("hello").await?.resource_version(),
        op.metric(
            "wasmop_applies_total",
            &[("controller", &format!("{ns}/website"))],
        )
        .await?,
        op.metric(
            "wasmop_reconciles_total",
            &[("controller", &format!("{ns}/website"))],
        )
        .await?,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = (
        get_website(&client, &ns, "hello").await?.resource_version(),
        deployments.get("hello").await?.resource_version(),
        op.metric(
            "wasmop_applies_total",
            &[("controller", &format!("{ns}/website"))],
        )
        .await?,
        op.metric(
            "wasmop_reconciles_total",
            &[("controller", &format!("{ns}/website"))],
        )
        .await?,
    );
    assert_eq!(
        (&before.0, &before.1, before.2),
        (&after.0, &after.1, after.2),
        "no writes at steady state"
    );
    assert_eq!(before.3, after.3, "no reconcile loop at steady state");

    // Deleting the parent removes its children (the garbage collector follows ownerReferences).
    websites.delete("hello", &Default::default()).await?;
    eventually(WAIT, "Deployment hello garbage-collected", || async {
        Ok(deployments.get_opt("hello").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn editing_the_plugin_configmap_hot_reloads_and_deleting_the_controller_stops_it()
-> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "reload").await?;
    put_plugin(&client, &ns, "plugin", plugin("website-rust")).await?;
    apply_controller(&client, &ns, "site", "plugin", json!({}), json!({})).await?;
    wait_ready(&client, &ns, "site", op).await?;
    create_website(&client, &ns, "one", json!({})).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "Deployment one", || async {
        Ok(deployments.get_opt("one").await?)
    })
    .await?;

    // New plugin bytes (zstd-compressed, to prove compressed ConfigMaps load): new logic, no restart.
    let compressed = zstd_compress(&plugin("misbehave"));
    put_plugin(&client, &ns, "plugin", compressed).await?;
    eventually(
        WAIT,
        "ConfigMap one-marker from the reloaded plugin",
        || async { Ok(configmaps.get_opt("one-marker").await?) },
    )
    .await?;
    eventually(WAIT, "Deployment one pruned by the new logic", || async {
        Ok(deployments.get_opt("one").await?.is_none().then_some(()))
    })
    .await?;
    let wc = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &wasmcontroller_resource())
        .get("site")
        .await?;
    assert_eq!(wc.data["status"]["plugin"]["encoding"], "zstd");

    // The plugin's log call reached the operator's log inside the reconcile span.
    let logged = std::fs::read_to_string(&op.log)?;
    let line = logged
        .lines()
        .find(|l| l.contains("marking one"))
        .context("plugin log line `marking one` in the operator log")?;
    assert!(
        line.contains(&format!("controller={ns}/site")) && line.contains("parent=one"),
        "{line}"
    );

    // Deleting the WasmController stops reconciliation.
    Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &wasmcontroller_resource())
        .delete("site", &Default::default())
        .await?;
    eventually(WAIT, "controller stopped", || async {
        let text = op.metrics().await?;
        Ok((!text.contains(&format!("controller=\"{ns}/site\",sha256"))).then_some(()))
    })
    .await?;
    create_website(&client, &ns, "two", json!({})).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        configmaps.get_opt("two-marker").await?.is_none(),
        "no reconcile after the WasmController is gone"
    );
    Ok(())
}

#[tokio::test]
async fn bad_plugins_are_contained_reported_and_write_nothing() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "bad").await?;
    put_plugin(&client, &ns, "bad", plugin("misbehave")).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // Each bad behaviour gets its own controller over its own parent, all at once.
    let cases = [
        ("loop", "PluginTimeout"),
        ("oom", "PluginOutOfMemory"),
        ("garbage", "InvalidResponse"),
        ("undeclared", "InvalidResponse"),
        ("error", "PluginError"),
        ("panic", "PluginTrap"),
    ];
    for (mode, _) in cases {
        // Running out of memory must be what stops `oom`, not its timeout: on two cores shared
        // with several control planes, allocating 32 MiB can take longer than the usual 500 ms.
        let extra = match mode {
            "oom" => json!({"plugin": {
                "source": {"configMap": {"name": "bad", "key": "plugin.wasm"}},
                "config": {"mode": mode},
                "limits": {"timeoutMs": 10_000, "memoryMiB": 32}}}),
            _ => json!({}),
        };
        apply_controller(&client, &ns, mode, "bad", json!({"mode": mode}), extra).await?;
    }
    // A well-behaved controller in the same namespace keeps working throughout.
    apply_controller(
        &client,
        &ns,
        "good",
        "bad",
        json!({"mode": "marker"}),
        json!({}),
    )
    .await?;
    for (mode, _) in cases {
        wait_ready(&client, &ns, mode, op).await?;
    }
    create_website(&client, &ns, "target", json!({})).await?;

    for (mode, reason) in cases {
        let (_, got, message) =
            eventually(WAIT, &format!("Degraded condition of {mode}"), || async {
                Ok(condition(&client, &ns, mode, "Degraded")
                    .await?
                    .filter(|(s, _, _)| s == "True"))
            })
            .await?;
        assert_eq!(got, reason, "{mode}: {message}");
        assert!(
            message.contains("target"),
            "{mode}: the message names the parent: {message}"
        );
    }
    let (_, _, message) = condition(&client, &ns, "undeclared", "Degraded")
        .await?
        .context("undeclared")?;
    assert!(
        message.contains("Secret v1 is not declared in spec.children"),
        "{message}"
    );

    // Nothing half-applied: the undeclared plugin's valid marker ConfigMap was never written,
    // and the Secret it asked for does not exist.
    assert!(secrets.get_opt("stolen").await?.is_none());
    // The good controller made its marker (proving the parent is reconcilable at all); the
    // undeclared one would have made the same marker name, so check it is owned by "good".
    let marker = eventually(WAIT, "marker from the good controller", || async {
        Ok(configmaps.get_opt("target-marker").await?)
    })
    .await?;
    assert_eq!(
        marker
            .labels()
            .get("wasmop.dev/controller")
            .map(String::as_str),
        Some("good")
    );

    // Seven controllers of one account in one namespace over the same three kinds share one
    // watch per kind, opened in that namespace.
    for kind in [
        "Website.example.com/v1",
        "ConfigMap.v1",
        "Deployment.apps/v1",
    ] {
        let open = op
            .metric("wasmop_watches", &[("kind", kind), ("namespace", &ns)])
            .await?;
        assert_eq!(open, 1.0, "one shared watch for {kind} in {ns}");
    }

    // The operator is alive and counted the failures by kind.
    for kind in [
        "timeout",
        "out_of_memory",
        "invalid_output",
        "plugin_error",
        "trap",
    ] {
        let n = op
            .metric("wasmop_plugin_failures_total", &[("reason", kind)])
            .await?;
        assert!(
            n >= 1.0,
            "wasmop_plugin_failures_total{{reason={kind}}} = {n}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_controller_never_writes_more_than_its_service_account_may() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, "rbac").await?;
    // May read everything it is shown and write ConfigMaps, but not create Deployments.
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
  - { apiGroups: [apps], resources: [deployments], verbs: [get, list, watch] }
  - { apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: limited }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited }
subjects: [ { kind: ServiceAccount, name: limited } ]
"#;
    kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(rbac))?;
    put_plugin(&client, &ns, "website-plugin", plugin("website-rust")).await?;
    apply_controller(
        &client,
        &ns,
        "website",
        "website-plugin",
        json!({}),
        json!({"serviceAccountName": "limited"}),
    )
    .await?;
    wait_ready(&client, &ns, "website", op).await?;
    create_website(&client, &ns, "site", json!({"content": "<p>x</p>"})).await?;

    let (_, reason, message) = eventually(WAIT, "Degraded=True", || async {
        Ok(condition(&client, &ns, "website", "Degraded")
            .await?
            .filter(|(s, _, _)| s == "True"))
    })
    .await?;
    assert_eq!(reason, "WriteRejected", "{message}");
    assert!(
        message.contains("Deployment/site") && message.contains("forbidden"),
        "{message}"
    );
    // All or nothing: the dry run was refused, so not even the allowed ConfigMap was written.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(
        configmaps.get_opt("site-content").await?.is_none(),
        "nothing half-applied"
    );

    // A controller whose account cannot even read the parent kind never starts.
    apply_controller(
        &client,
        &ns,
        "nobody",
        "website-plugin",
        json!({}),
        json!({"serviceAccountName": "nobody"}),
    )
    .await?;
    let (status, reason, message) = eventually(WAIT, "Ready condition of nobody", || async {
        Ok(condition(&client, &ns, "nobody", "Ready")
            .await?
            .filter(|(_, r, _)| r != "Starting"))
    })
    .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Forbidden"),
        "{message}"
    );
    assert!(
        message.contains(&format!("ServiceAccount {ns}/nobody may not get websites")),
        "{message}"
    );

    // Fixing the cause is enough: once the account is granted the Role, the controller starts
    // (retried with backoff), without any edit to the WasmController.
    let grant = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: nobody }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: nobody-limited }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited }
subjects: [ { kind: ServiceAccount, name: nobody } ]
"#;
    kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(grant))?;
    wait_ready(&client, &ns, "nobody", op).await?;
    Ok(())
}

#[tokio::test]
async fn the_rust_js_and_go_examples_make_the_same_children_and_status() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let spec = json!({"content": "<h1>same</h1>", "image": "nginx:1.27-alpine"});
    let mut seen = Vec::new();
    for lang in ["rust", "js", "go"] {
        let ns = team_namespace(cp, &client, &format!("parity-{lang}")).await?;
        put_plugin(
            &client,
            &ns,
            "website-plugin",
            gzip(&plugin(&format!("website-{lang}"))),
        )
        .await?;
        apply_controller(
            &client,
            &ns,
            "website",
            "website-plugin",
            json!({"replicas": 3}),
            json!({}),
        )
        .await?;
        wait_ready(&client, &ns, "website", op)
            .await
            .context(lang)?;
        create_website(&client, &ns, "site", spec.clone()).await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let dep = eventually(WAIT, &format!("{lang}: Deployment site"), || async {
            Ok(deployments.get_opt("site").await?)
        })
        .await?;
        let cm = eventually(WAIT, &format!("{lang}: ConfigMap site-content"), || async {
            Ok(configmaps.get_opt("site-content").await?)
        })
        .await?;
        let status = eventually(WAIT, &format!("{lang}: status"), || async {
            Ok(get_website(&client, &ns, "site")
                .await?
                .data
                .get("status")
                .filter(|s| s["phase"].is_string())
                .cloned())
        })
        .await?;
        let labels = cm.labels().clone();
        seen.push((
            lang,
            serde_json::to_value(dep.spec)?,
            cm.data,
            labels,
            status,
        ));
    }
    for other in &seen[1..] {
        assert_eq!(
            other.1, seen[0].1,
            "Deployment spec: {} vs {}",
            other.0, seen[0].0
        );
        assert_eq!(
            other.2, seen[0].2,
            "ConfigMap data: {} vs {}",
            other.0, seen[0].0
        );
        assert_eq!(
            other.3, seen[0].3,
            "ConfigMap labels: {} vs {}",
            other.0, seen[0].0
        );
        assert_eq!(other.4, seen[0].4, "status: {} vs {}", other.0, seen[0].0);
    }
    assert_eq!(seen[0].1["replicas"], 3);
    Ok(())
}

#[tokio::test]
async fn with_finalize_the_parent_waits_for_the_plugin_before_it_goes() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "finalize").await?;
    put_plugin(&client, &ns, "website-plugin", plugin("website-rust")).await?;
    let finalize = json!({"plugin": {"source": {"configMap": {"name": "website-plugin", "key": "plugin.wasm"}}, "finalize": true}});
    apply_controller(
        &client,
        &ns,
        "website",
        "website-plugin",
        json!({}),
        finalize,
    )
    .await?;
    wait_ready(&client, &ns, "website", op).await?;
    create_website(&client, &ns, "site", json!({})).await?;

    let finalizers = eventually(WAIT, "the controller's finalizer on the parent", || async {
        let w = get_website(&client, &ns, "site").await?;
        Ok((!w.finalizers().is_empty()).then(|| w.finalizers().to_vec()))
    })
    .await?;
    assert_eq!(finalizers, vec!["wasmop.dev/website".to_string()]);
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    websites.delete("site", &Default::default()).await?;
    eventually(
        WAIT,
        "the parent gone once finalize returned finalized: true",
        || async { Ok(websites.get_opt("site").await?.is_none().then_some(())) },
    )
    .await
    .map_err(|e| anyhow!("{e}\noperator log:\n{}", op.log_tail(30)))?;
    Ok(())
}

/// Regression: several controllers needing a kind nobody watched yet all waited on
/// kube-runtime's `Store::wait_until_ready`, which wakes only the last waiter; the others
/// stalled until the 60 s watch-readiness timeout. They must all start promptly.
#[tokio::test]
async fn controllers_starting_together_on_a_new_kind_do_not_wait_for_the_readiness_timeout()
-> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, "together").await?;
    let rbac = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: secrets-controller }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: secrets-controller }
rules:
  - { apiGroups: [example.com], resources: [websites, websites/status], verbs: [get, list, watch, patch] }
  - { apiGroups: [""], resources: [secrets, configmaps], verbs: [get, list, watch] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: secrets-controller }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: secrets-controller }
subjects: [ { kind: ServiceAccount, name: secrets-controller } ]
"#;
    kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(rbac))?;
    put_plugin(&client, &ns, "plugin", plugin("misbehave")).await?;
    // Secrets: a kind no other test in this binary watches, so its watch starts now.
    let children = json!({"children": [{"apiVersion": "v1", "kind": "Secret"}], "serviceAccountName": "secrets-controller"});
    let names = ["a", "b", "c", "d"];
    for name in names {
        apply_controller(&client, &ns, name, "plugin", json!({}), children.clone()).await?;
    }
    // Well inside the 60 s timeout the bug waited for, yet generous for a loaded machine.
    for name in names {
        eventually(
            Duration::from_secs(30),
            &format!("{name} Ready"),
            || async {
                Ok(condition(&client, &ns, name, "Ready")
                    .await?
                    .filter(|(s, _, _)| s == "True"))
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\noperator log:\n{}", op.log_tail(30)))?;
    }
    Ok(())
}

#[tokio::test]
async fn the_api_server_rejects_bad_wasmcontrollers_at_apply_time_naming_the_field() -> Result<()> {
    let cp = wasmop_e2e::cluster().await?;
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, "reject").await?;
    let good = json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController", "metadata": {"name": "x"},
        "spec": {
            "parent": {"apiVersion": "example.com/v1", "kind": "Website"},
            "plugin": {"source": {"configMap": {"name": "p", "key": "plugin.wasm"}}},
            "serviceAccountName": "sa",
        }
    });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "two sources",
            json!({"plugin": {"source": {"configMap": {"name": "p", "key": "k"}, "file": "/x.wasm"}}}),
            "spec.plugin.source: set exactly one of configMap, javaScript, url, oci or file",
        ),
        (
            "no source",
            json!({"plugin": {"source": {}}}),
            "spec.plugin.source: set exactly one of configMap, javaScript, url, oci or file",
        ),
        (
            "an oci image by tag",
            json!({"plugin": {"source": {"oci": {"image": "registry.example.com/team/website:v1"}}}}),
            "spec.plugin.source.oci.image",
        ),
        (
            "a url without a proper sha256",
            json!({"plugin": {"source": {"url": {"url": "https://example.com/p.wasm", "sha256": "abc"}}}}),
            "spec.plugin.source.url.sha256",
        ),
        (
            "memory out of range",
            json!({"plugin": {"source": {"file": "/x"}, "limits": {"memoryMiB": 0}}}),
            "spec.plugin.limits.memoryMiB",
        ),
        (
            "bad resync",
            json!({"resyncPeriod": "5 minutes"}),
            "spec.resyncPeriod",
        ),
        (
            "ref and selector",
            json!({"related": [{"name": "r", "ref": "$.spec.x", "apiVersion": "v1", "kind": "Secret", "selector": {}}]}),
            "set either ref (API contract) or selector",
        ),
        (
            "ref not a JSONPath",
            json!({"related": [{"name": "r", "ref": "spec.x"}]}),
            "must be a JSONPath starting with '$'",
        ),
        (
            "duplicate children",
            json!({"children": [{"apiVersion": "v1", "kind": "ConfigMap"}, {"apiVersion": "v1", "kind": "ConfigMap"}]}),
            "spec.children: each kind may be listed once",
        ),
        (
            "no service account",
            json!({"serviceAccountName": ""}),
            "spec.serviceAccountName",
        ),
    ];
    kubectl_stdin(
        cp,
        &["apply", "-n", &ns, "-f", "-"],
        Some(&good.to_string()),
    )
    .context("the good spec is accepted")?;
    for (what, patch, expected) in cases {
        let mut bad = good.clone();
        bad["metadata"]["name"] = json!("bad");
        for (k, v) in patch.as_object().unwrap() {
            bad["spec"][k] = v.clone();
        }
        let err = kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(&bad.to_string()))
            .err()
            .with_context(|| format!("{what}: the API server accepted {bad}"))?;
        assert!(
            err.to_string().contains(expected),
            "{what}: expected {expected:?} in: {err}"
        );
    }
    Ok(())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, bytes).expect("compress");
    encoder.finish().expect("finish")
}

fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
    // zstd frame via the `zstd` CLI-free path: the operator decodes by magic bytes.
    let mut out = Vec::new();
    let mut encoder = zstd::stream::write::Encoder::new(&mut out, 19).expect("zstd encoder");
    std::io::Write::write_all(&mut encoder, bytes).expect("compress");
    encoder.finish().expect("finish");
    out
}
