//! The writes wasmop sends, read from the API server's audit log (every write request, dry runs
//! included, by the team's account wasmop impersonates):
//! - a new parent's children are created by one apply each (no POST, no managedFields
//!   rewrite), and a reconcile dry-runs every write but its first;
//! - a restarted operator, which remembers nothing, writes nothing where nothing changed, and
//!   still puts back a field someone edited while it was down (decided from the live objects'
//!   managedFields, `operator/src/reconcile/unchanged.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use wasmop_e2e::shards::Cluster;
use wasmop_e2e::website::{WAIT, create_website, get_website};
use wasmop_e2e::{RestartableOperator, StopWith, account_kubeconfig, eventually};

const SITES: usize = 3;

/// One write request to a parent or a child, as the audit log has it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Write {
    verb: String,
    /// `configmaps`, `deployments`, `websites/status`, …
    resource: String,
    name: String,
    dry_run: bool,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dry = if self.dry_run { " (dry run)" } else { "" };
        write!(f, "{} {} {}{dry}", self.verb, self.resource, self.name)
    }
}

/// The completed write requests wasmop made as a team's account in `ns` to Websites, ConfigMaps
/// and Deployments, from line `from` of the audit log on; and the log's length.
fn writes(audit: &Path, ns: &str, from: usize) -> Result<(Vec<Write>, usize)> {
    let text = std::fs::read_to_string(audit)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for line in &lines[from.min(lines.len())..] {
        let event: Value = serde_json::from_str(line)?;
        let object = &event["objectRef"];
        let resource = object["resource"].as_str().unwrap_or_default();
        if event["stage"] != "ResponseComplete"
            || event["impersonatedUser"].is_null()
            || object["namespace"] != ns
            || !matches!(resource, "websites" | "configmaps" | "deployments")
        {
            continue;
        }
        let subresource = object["subresource"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        out.push(Write {
            verb: event["verb"].as_str().unwrap_or_default().into(),
            resource: format!("{resource}{subresource}"),
            name: object["name"].as_str().unwrap_or_default().into(),
            dry_run: event["requestURI"]
                .as_str()
                .is_some_and(|uri| uri.contains("dryRun=All")),
        });
    }
    Ok((out, lines.len()))
}

fn shown(writes: &[Write]) -> String {
    writes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Every site's resourceVersion, by name.
async fn site_versions(cluster: &Cluster, ns: &str) -> Result<BTreeMap<String, String>> {
    let mut versions = BTreeMap::new();
    for i in 0..SITES {
        let name = format!("site{i}");
        let site = get_website(&cluster.client, ns, &name).await?;
        versions.insert(name, site.metadata.resource_version.unwrap_or_default());
    }
    Ok(versions)
}

/// Waits until every site shows both children in its status and no write came for 3 s.
async fn converged(cluster: &Cluster, ns: &str) -> Result<usize> {
    for i in 0..SITES {
        let name = format!("site{i}");
        eventually(WAIT, &format!("{name}'s status"), || async {
            let site = get_website(&cluster.client, ns, &name).await?;
            Ok((site.data["status"]["children"]
                == json!([
                    format!("ConfigMap/{name}-content"),
                    format!("Deployment/{name}")
                ]))
            .then_some(()))
        })
        .await?;
    }
    let mut seen = writes(&cluster.audit, ns, 0)?.1;
    let mut quiet = 0;
    while quiet < 3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (new, len) = writes(&cluster.audit, ns, seen)?;
        quiet = if new.is_empty() { quiet + 1 } else { 0 };
        seen = len;
    }
    Ok(seen)
}

#[tokio::test]
async fn new_children_take_one_apply_each_and_a_restart_writes_only_what_drifted() -> Result<()> {
    let cluster = Cluster::start("writes").await?;
    let ns = cluster.teams(1).await?.remove(0);
    let kubeconfig = account_kubeconfig(&cluster.cp, &cluster.op_ns, "wasmop")?;
    let op = RestartableOperator::start(&kubeconfig).await?;
    for i in 0..SITES {
        let spec = json!({"content": format!("<p>{i}</p>"), "replicas": 2});
        create_website(&cluster.client, &ns, &format!("site{i}"), spec).await?;
    }
    let mark = converged(&cluster, &ns)
        .await
        .with_context(|| op.log_tail(30))?;

    // Converging: each child is created by one apply (no POST, no managedFields PATCH); fewer
    // dry runs than real writes (the first write of a reconcile needs none). A second real
    // write of a child is allowed: a reconcile that ran before the child's watch event arrived
    // tries the create again, finds the name taken by its own child and applies to it.
    let (made, _) = writes(&cluster.audit, &ns, 0)?;
    for i in 0..SITES {
        for (resource, name) in [
            ("configmaps", format!("site{i}-content")),
            ("deployments", format!("site{i}")),
        ] {
            let real: Vec<&Write> = made
                .iter()
                .filter(|w| w.resource == resource && w.name == name && !w.dry_run)
                .collect();
            assert!(
                (1..=2).contains(&real.len()),
                "{resource}/{name} should be created by one apply; wasmop sent:\n  {}",
                shown(&made)
            );
        }
    }
    assert!(
        made.iter().all(|w| w.verb == "patch"),
        "only applies (creates are applies too):\n  {}",
        shown(&made)
    );
    let dry = made.iter().filter(|w| w.dry_run).count();
    assert!(
        dry < made.len() - dry,
        "fewer dry runs ({dry}) than real writes:\n  {}",
        shown(&made)
    );

    // Down for a while; meanwhile someone edits site1's page.
    op.stop(StopWith::Term, Duration::from_secs(20)).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
    configmaps
        .patch(
            "site1-content",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"index.html": "<p>edited</p>"}})),
        )
        .await?;
    let before = site_versions(&cluster, &ns).await?;

    // A new process: it reconciles every parent, puts site1's page back, and writes nothing else.
    op.spawn()?;
    op.wait_ready(Duration::from_secs(60)).await?;
    eventually(WAIT, "site1's page put back", || async {
        let cm = configmaps.get("site1-content").await?;
        Ok((cm
            .data
            .unwrap_or_default()
            .get("index.html")
            .map(String::as_str)
            == Some("<p>1</p>"))
        .then_some(()))
    })
    .await
    .with_context(|| op.log_tail(30))?;
    let controller = format!("{ns}/website");
    eventually(WAIT, "every site reconciled after the restart", || async {
        let done = op
            .metric(
                "wasmop_reconciles_total",
                &[("controller", &controller), ("result", "success")],
            )
            .await?;
        Ok((done >= SITES as f64).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // anything those reconciles send is sent
    let (after_restart, _) = writes(&cluster.audit, &ns, mark)?;
    let expected = vec![Write {
        verb: "patch".into(),
        resource: "configmaps".into(),
        name: "site1-content".into(),
        dry_run: false,
    }];
    assert_eq!(
        after_restart,
        expected,
        "after the restart wasmop should write only the drifted ConfigMap, once; it sent:\n  {}\nlog:\n{}",
        shown(&after_restart),
        op.log_tail(30)
    );
    let after = site_versions(&cluster, &ns).await?;
    assert_eq!(before, after, "no parent was written");
    let skipped = op
        .metric(
            "wasmop_applies_skipped_total",
            &[("controller", &controller)],
        )
        .await?;
    assert!(
        skipped >= (SITES * 3 - 1) as f64,
        "every unchanged apply counted as skipped: {skipped}"
    );
    Ok(())
}
