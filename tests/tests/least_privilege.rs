//! End to end with the operator running as a ServiceAccount that has exactly the rights
//! `samples/operator/rbac.yaml` documents (plus `samples/website/operator-rbac.yaml` for the
//! Website kinds), not as the cluster admin: namespaces holding finalizing parents still go,
//! because releasing a finalizer after the team's Role is gone takes only `get`/`patch` on
//! the parent kind, aggregated into `wasmop-release-finalizers`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, DynamicObject};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use wasmop_e2e::website::{
    WAIT, apply_controller, condition, create_website, put_plugin, team_namespace, wait_ready,
    website_resource,
};
use wasmop_e2e::{Operator, cluster, eventually, kubectl, kubectl_stdin, plugin, root};

/// The operator's documented RBAC in a namespace of its own, and a kubeconfig with a token
/// of its ServiceAccount.
async fn least_privileged_operator(
    cp: &'static localcp::ControlPlane,
    client: &Client,
    with_release_role: bool,
) -> Result<Operator> {
    let ns = localcp::create_test_namespace(client, "wasmop-system").await?;
    let rbac = std::fs::read_to_string(root().join("samples/operator/rbac.yaml"))?
        .replace("wasmop-system", &ns);
    kubectl_stdin(cp, &["apply", "-f", "-"], Some(&rbac))?;
    let mut kinds = std::fs::read_to_string(root().join("samples/website/operator-rbac.yaml"))?;
    if !with_release_role {
        kinds = kinds
            .split("\n---\n")
            .filter(|doc| !doc.contains("aggregate-to-release-finalizers"))
            .collect::<Vec<_>>()
            .join("\n---\n");
    }
    kubectl_stdin(cp, &["apply", "-f", "-"], Some(&kinds))?;
    wait_aggregated(client, "wasmop-watch").await?;

    let token = kubectl(
        cp,
        &["create", "token", "wasmop", "-n", &ns, "--duration=2h"],
    )?;
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig())?)?;
    let mut config = admin.clone();
    config["users"] = json!([{"name": "wasmop", "user": {"token": token.trim()}}]);
    config["contexts"][0]["context"]["user"] = json!("wasmop");
    let path = std::env::temp_dir().join(format!("wasmop-least-privilege-{ns}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    wasmop_e2e::start_operator(&path).await
}

/// Waits until kube-controller-manager has aggregated rules into `name`.
async fn wait_aggregated(client: &Client, name: &str) -> Result<()> {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    eventually(WAIT, &format!("ClusterRole {name} aggregated"), || async {
        Ok(roles
            .get(name)
            .await?
            .rules
            .is_some_and(|r| !r.is_empty())
            .then_some(()))
    })
    .await
}

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
    let op = least_privileged_operator(cp, &client, false).await?;
    let nss: Api<Namespace> = Api::all(client.clone());

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
    wait_aggregated(&client, "wasmop-release-finalizers").await?;
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
