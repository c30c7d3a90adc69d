//! End to end with the operator running as a ServiceAccount that has exactly the rights
//! `samples/operator/rbac.yaml` documents (plus `samples/website/operator-rbac.yaml` for the
//! Website kind), not as the cluster admin. It has no read of any team kind: every watch is
//! made as the team's account in its namespace. Namespaces holding finalizing parents still
//! go, because releasing a finalizer after the team's Role is gone takes only `get`, `list`
//! and `patch` on the parent kind, aggregated into `wasmop-release-finalizers`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject};
use kube::{Client, ResourceExt};
use serde_json::json;
use wasmop_e2e::website::{
    WAIT, apply_controller, condition, create_website, put_plugin, team_namespace, wait_ready,
    website_resource,
};
use wasmop_e2e::{Operator, cluster, eventually, kubectl, kubectl_stdin, plugin, root};

async fn finalizing_team(
    cp: &'static localcp::ControlPlane,
    client: &Client,
    op: &Operator,
    prefix: &str,
) -> Result<String> {
    let ns = team_namespace(cp, client, prefix).await?;
    put_plugin(client, &ns, "misbehave", plugin("misbehave")).await?;
    let spec = json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                                 "config": {"mode": "marker", "finalize": "done"}, "finalize": true}});
    apply_controller(client, &ns, "ctl", "misbehave", json!({}), spec).await?;
    wait_ready(client, &ns, "ctl", op).await?;
    for site in ["a", "b"] {
        create_website(client, &ns, site, json!({})).await?;
    }
    let websites: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &website_resource());
    for site in ["a", "b"] {
        eventually(WAIT, "the finalizer on the parent", || async {
            Ok(websites
                .get(site)
                .await?
                .finalizers()
                .contains(&"wasmop.dev/ctl".to_string())
                .then_some(()))
        })
        .await
        .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    }
    Ok(ns)
}

async fn gone(
    client: &Client,
    namespaces: &[String],
    within: Duration,
    op: &Operator,
) -> Result<()> {
    let nss: Api<Namespace> = Api::all(client.clone());
    eventually(within, "the namespaces gone", || async {
        for ns in namespaces {
            if nss.get_opt(ns).await?.is_some() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(40)))
}

/// Both scenarios share one operator process (it runs as one ServiceAccount); they run in
/// order inside one test so the release role can be added in the middle.
#[tokio::test]
async fn namespaces_with_finalizing_parents_go_with_only_the_documented_rights() -> Result<()> {
    let cp = cluster().await?;
    let client = cp.client().await?;
    let op = wasmop_e2e::start_operator_as_account(cp, false).await?;
    let nss: Api<Namespace> = Api::all(client.clone());

    // 0. A team naming Secret as a child kind: the operator (which may read no Secret at all)
    //    watches only the Secrets its controller made, in that namespace, as the team.
    secrets_are_watched_only_as_the_team_in_its_namespace(cp, &client, &op).await?;

    // 1. Without the release role, a team whose RoleBinding is gone first (as the namespace
    //    controller may do) leaves the namespace Terminating, and the WasmController's status
    //    names the missing right.
    let ns = finalizing_team(cp, &client, &op, "norole").await?;
    kubectl(
        cp,
        &["delete", "rolebinding", "website-controller", "-n", &ns],
    )?;
    nss.delete(&ns, &DeleteParams::default()).await?;
    let (_, reason, message) =
        eventually(WAIT, "the missing right on the WasmController", || async {
            Ok(condition(&client, &ns, "ctl", "Ready")
                .await?
                .filter(|(_, r, _)| r == "FinalizerNotReleased"))
        })
        .await
        .map_err(|e| anyhow!("{e}\n{}", op.log_tail(40)))?;
    assert!(
        message.contains("wasmop.dev/aggregate-to-release-finalizers")
            && message.contains("websites.example.com"),
        "{reason}: {message}"
    );
    assert!(nss.get_opt(&ns).await?.is_some(), "held in Terminating");

    // 2. The admin adds the documented per-kind ClusterRole: the release goes through (the
    //    WasmController's start is retried with backoff, at most a minute apart).
    let kinds = std::fs::read_to_string(root().join("samples/website/operator-rbac.yaml"))?;
    kubectl_stdin(cp, &["apply", "-f", "-"], Some(&kinds))?;
    wasmop_e2e::wait_aggregated(&client, "wasmop-release-finalizers").await?;
    gone(
        &client,
        std::slice::from_ref(&ns),
        Duration::from_secs(90),
        &op,
    )
    .await?;

    // 3. Three namespaces deleted at once, each with a finalizing controller and parents.
    let mut namespaces = Vec::new();
    for i in 0..3 {
        namespaces.push(finalizing_team(cp, &client, &op, &format!("nsdel{i}")).await?);
    }
    let started = Instant::now();
    for ns in &namespaces {
        nss.delete(ns, &DeleteParams::default()).await?;
    }
    gone(&client, &namespaces, Duration::from_secs(60), &op)
        .await
        .context("three namespaces with finalizing parents, deleted at once")?;
    eprintln!("three namespaces deleted in {:?}", started.elapsed());
    Ok(())
}

async fn secrets_are_watched_only_as_the_team_in_its_namespace(
    cp: &'static localcp::ControlPlane,
    client: &Client,
    op: &Operator,
) -> Result<()> {
    let rbac = wasmop_e2e::website::sample_rbac()?.replace(
        "  - apiGroups: [events.k8s.io]",
        "  - apiGroups: [\"\"]\n    resources: [secrets]\n    verbs: [get, list, watch, create, patch, delete]\n  - apiGroups: [events.k8s.io]",
    );
    let ns = wasmop_e2e::website::namespace_with(cp, client, "secrets", &rbac).await?;
    let elsewhere = localcp::create_test_namespace(client, "other-secrets").await?;
    for (namespace, name) in [(&ns, "not-a-child"), (&elsewhere, "someone-elses")] {
        kubectl(
            cp,
            &[
                "create",
                "secret",
                "generic",
                name,
                "-n",
                namespace,
                "--from-literal=k=v",
            ],
        )?;
    }
    put_plugin(client, &ns, "misbehave", plugin("misbehave")).await?;
    let children = json!([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "{parent}-token"},
                           "stringData": {"token": "t"}}]);
    let spec = json!({"children": [{"apiVersion": "v1", "kind": "Secret"}]});
    apply_controller(
        client,
        &ns,
        "ctl",
        "misbehave",
        json!({"mode": "config", "children": children}),
        spec,
    )
    .await?;
    wait_ready(client, &ns, "ctl", op).await?;
    create_website(client, &ns, "site", json!({})).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the Secret child", || async {
        Ok(secrets.get_opt("site-token").await?)
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    let cached = eventually(WAIT, "the child in the operator's cache", || async {
        let n = op
            .metric("wasmop_cached_objects", &[("kind", "Secret.v1")])
            .await?;
        Ok((n >= 1.0).then_some(n))
    })
    .await?;
    assert_eq!(
        cached, 1.0,
        "only the controller's own Secret is cached, nothing else anywhere"
    );
    let watches = op.metrics().await?;
    let secret_watches: Vec<&str> = watches
        .lines()
        .filter(|l| l.starts_with("wasmop_watches{") && l.contains("kind=\"Secret.v1\""))
        .collect();
    assert!(
        !secret_watches.is_empty()
            && secret_watches
                .iter()
                .all(|l| l.contains(&format!("namespace=\"{ns}\""))),
        "{secret_watches:?}"
    );
    Ok(())
}
