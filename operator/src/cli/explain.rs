//! `wasmop explain KIND/NAME`: why an object is (or is not) progressing, answered by a dry-run
//! reconcile against the live cluster with the user's own kubeconfig. Writes nothing.
//!
//! For each WasmController in the namespace whose `spec.parent` is KIND, it reads what the
//! controller reads (the parent, the children this controller owns, related objects, the
//! plugin from its source), runs the plugin locally with the controller's limits through the
//! same path as a live reconcile ([`crate::cli::eval::evaluate`]: plugin host, `plan::plan`), and
//! prints the plan, how it differs from the live objects, and what blocks progress: the
//! WasmController's conditions, deletion and foreign finalizers, related objects or contract
//! fields that are missing, RBAC the controller's ServiceAccount lacks, and plugin errors.
//!
//! # Caveats
//! - The comparison is client-side: each field the plugin sets is compared with the live
//!   object's value. Values the API server normalises (quantities like `0.5` vs `500m`) can
//!   show as differences although an apply would change nothing.
//! - Objects are read with the user's credentials, not the ServiceAccount's; what the
//!   ServiceAccount may do is checked separately with SubjectAccessReviews (when the user may
//!   create them).
mod compare;
mod gather;
mod permissions;
mod report;
mod run;

pub use report::{Error, Options, Result};

use std::io::Write;

use kube::api::{ApiResource, ListParams};
use kube::{Api, Client, ResourceExt};

use crate::cli::eval::logs::PluginLogs;
use crate::cluster::api_error::readable;
use crate::crd::{KindRef, WasmController};
use crate::reconcile::plan::Identity;
use compare::compare;
use gather::gather;
use permissions::check_access;
use report::{Report, discover};
use run::run_plugin;

/// Explains `opts.target`, printing the report on `out`. Returns true when nothing blocks
/// progress.
///
/// # Errors
/// The target is malformed, the cluster cannot be reached or read, no WasmController in the
/// namespace reconciles KIND, or the object does not exist.
pub async fn explain(opts: &Options, logs: &PluginLogs, out: &mut dyn Write) -> Result<bool> {
    let (kind, name) = opts
        .target
        .split_once('/')
        .filter(|(k, n)| !k.is_empty() && !n.is_empty())
        .ok_or_else(|| Error::Target(opts.target.clone()))?;
    let config = crate::client_config(opts.kubeconfig.as_deref()).await?;
    let namespace = opts
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|source| Error::Api {
        action: "building a client".into(),
        source,
    })?;
    let controllers = Api::<WasmController>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Api {
            action: format!("listing WasmControllers in {namespace}"),
            source,
        })?;
    let mut matched = Vec::new();
    let mut seen = Vec::new();
    for wc in controllers.items {
        let parent = wc.spec.parent.clone();
        let resource = discover(&client, &parent).await;
        seen.push(format!("{} → {}", wc.name_any(), parent.kind));
        if kind_matches(kind, &parent, resource.as_ref().ok()) {
            matched.push((wc, resource));
        }
    }
    if matched.is_empty() {
        let found = if seen.is_empty() {
            " (there are no WasmControllers there)".to_string()
        } else {
            format!(" (found: {})", seen.join(", "))
        };
        return Err(Error::NoController {
            namespace,
            kind: kind.into(),
            found,
        });
    }
    let several = matched.len() > 1;
    let mut blocking = Vec::new();
    let mut unchecked = Vec::new();
    for (i, (wc, resource)) in matched.into_iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        let mut report = Report::default();
        explain_one(
            &client,
            opts,
            logs,
            &namespace,
            name,
            &wc,
            resource,
            &mut report,
        )
        .await?;
        out.write_all(report.text.as_bytes())?;
        let prefix = if several {
            format!("[{}] ", wc.name_any())
        } else {
            String::new()
        };
        blocking.extend(report.blocking.into_iter().map(|b| format!("{prefix}{b}")));
        unchecked.extend(report.unchecked.into_iter().map(|u| format!("{prefix}{u}")));
    }
    writeln!(out)?;
    for u in &unchecked {
        writeln!(out, "Not checked: {u}")?;
    }
    if blocking.is_empty() {
        writeln!(out, "Nothing blocks progress")?;
    } else {
        writeln!(out, "Blocking:")?;
        for b in &blocking {
            writeln!(out, "  - {b}")?;
        }
    }
    Ok(blocking.is_empty())
}

/// `website`, `websites`, `Website`, `website.example.com`, `websites.example.com`.
fn kind_matches(arg: &str, parent: &KindRef, resource: Option<&ApiResource>) -> bool {
    let arg = arg.to_ascii_lowercase();
    let kind = parent.kind.to_ascii_lowercase();
    let group = parent.group().to_ascii_lowercase();
    let mut names = vec![kind.clone()];
    if let Some(r) = resource {
        names.push(r.plural.to_ascii_lowercase());
    }
    if !group.is_empty() {
        names.extend(names.clone().into_iter().map(|n| format!("{n}.{group}")));
    }
    names.contains(&arg)
}

/// Explains one parent for one WasmController: the controller's conditions, then a dry-run
/// reconcile (gathering what the controller reads, running the plugin, comparing its plan with
/// the live objects) and the permissions of the controller's ServiceAccount, each step adding
/// its section and what blocks to `report`.
///
/// # Errors
/// The parent does not exist or cannot be read, or a served child kind cannot be listed.
#[allow(clippy::too_many_arguments)] // the one caller passes what it resolved
async fn explain_one(
    client: &Client,
    opts: &Options,
    logs: &PluginLogs,
    ns: &str,
    name: &str,
    wc: &WasmController,
    parent_resource: Result<ApiResource, kube::Error>,
    report: &mut Report,
) -> Result<()> {
    let identity = Identity::new(ns, &wc.name_any());
    report.heading(title(opts, ns, name, wc));

    // The operator's own view: the WasmController's conditions.
    report_conditions(wc, ns, name, report);

    let parent_resource = match parent_resource {
        Ok(r) => r,
        Err(e) => {
            report.block(format!(
                "spec.parent: {} is not served by the API server: {}",
                wc.spec.parent,
                readable(&e)
            ));
            return Ok(());
        }
    };

    // What the controller reads: the parent, its children, related objects.
    let gathered = gather(client, ns, name, wc, &identity, &parent_resource, report).await?;

    // The plugin, run locally with the controller's limits.
    let planned = if gathered.plugin_runs {
        run_plugin(client, opts, logs, ns, wc, &identity, &gathered, report).await
    } else {
        None
    };

    // Differences between the plan and the live objects.
    if let Some(planned) = &planned {
        compare(client, ns, &planned.plan, &identity, &gathered, report).await;
    }

    // What the ServiceAccount may do.
    let plan = planned.as_ref().map(|p| &p.plan);
    check_access(client, ns, wc, &parent_resource, &gathered, plan, report).await;
    Ok(())
}

/// The first line of one controller's explanation: the parent, the WasmController, its
/// ServiceAccount and where the plugin comes from.
fn title(opts: &Options, ns: &str, name: &str, wc: &WasmController) -> String {
    let spec = &wc.spec;
    let source_text = match (
        &opts.plugin,
        &spec.plugin.source.config_map_key(),
        &spec.plugin.source.file,
    ) {
        (Some(local), _, _) => format!("local file {} (--plugin)", local.display()),
        (None, Some(cm), _) if spec.plugin.source.java_script.is_some() => {
            format!("JavaScript in ConfigMap {} key {}", cm.name, cm.key)
        }
        (None, Some(cm), _) => format!("ConfigMap {} key {}", cm.name, cm.key),
        (None, None, Some(file)) => format!("file {file} on the operator"),
        (None, None, None) => "no source".into(),
    };
    format!(
        "{} {name} in {ns}: WasmController {} (ServiceAccount {}, plugin {source_text})",
        spec.parent.kind,
        wc.name_any(),
        spec.service_account_name
    )
}

/// Reports the WasmController's conditions. Blocks when it has none (is the operator running
/// and watching `ns`?), is not Ready, or is Degraded by a failed reconcile of the parent
/// `name`.
fn report_conditions(wc: &WasmController, ns: &str, name: &str, report: &mut Report) {
    let spec = &wc.spec;
    let wc_name = wc.name_any();
    report.heading("Controller conditions");
    let conditions = wc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    if conditions.is_empty() {
        report.line("none yet");
        report.block(format!("WasmController {wc_name} has no status: is the wasmop operator running and watching namespace {ns}?"));
    }
    for c in &conditions {
        report.line(format!(
            "{:<9} {:<6} {}: {}",
            c.type_, c.status, c.reason, c.message
        ));
        match (c.type_.as_str(), c.status.as_str()) {
            ("Ready", "True") => {}
            ("Ready", _) => report.block(format!(
                "WasmController {wc_name} is not Ready ({}): {}",
                c.reason, c.message
            )),
            // manager.rs writes "<Kind> <parent>: <message>" for the first failing parent.
            ("Degraded", "True")
                if c.message
                    .starts_with(&format!("{} {name}: ", spec.parent.kind)) =>
            {
                report.block(format!(
                    "the operator's last reconcile of {} {name} failed ({}): {}",
                    spec.parent.kind, c.reason, c.message
                ));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::compare::{differences, join, same};
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_match_by_kind_plural_and_group_case_insensitively() {
        let parent = KindRef {
            api_version: "example.com/v1".into(),
            kind: "Website".into(),
        };
        let resource = ApiResource {
            group: "example.com".into(),
            version: "v1".into(),
            api_version: "example.com/v1".into(),
            kind: "Website".into(),
            plural: "websites".into(),
        };
        for arg in [
            "website",
            "Website",
            "websites",
            "website.example.com",
            "WEBSITES.example.com",
        ] {
            assert!(kind_matches(arg, &parent, Some(&resource)), "{arg}");
        }
        for arg in ["site", "website.example.org", "deployment"] {
            assert!(!kind_matches(arg, &parent, Some(&resource)), "{arg}");
        }
        assert!(
            !kind_matches("websites", &parent, None),
            "the plural needs discovery"
        );
    }

    #[test]
    fn differences_name_each_changed_field_and_ignore_server_defaults() {
        let desired = json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "site"}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "ports": [{"containerPort": 80}]}]}}},
            "data": {"removed": null},
        });
        let live = json!({
            "metadata": {"labels": {"app.kubernetes.io/name": "site"}, "uid": "x"},
            "spec": {"replicas": 1, "progressDeadlineSeconds": 600,
                     "template": {"spec": {"containers": [{"name": "web", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}},
        });
        let mut out = Vec::new();
        differences(&desired, Some(&live), "", &mut out);
        assert_eq!(out, vec!["spec.replicas: live 1, desired 3".to_string()]);

        let mut out = Vec::new();
        differences(
            &json!({"metadata": {"labels": {"a.b/c": "x"}}, "list": [1, 2]}),
            Some(&json!({"list": [1]})),
            "",
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "list: live [1], desired [1,2]".to_string(),
                "metadata.labels[\"a.b/c\"]: live unset, desired \"x\"".to_string(),
            ]
        );
        assert_eq!(
            join("metadata.labels", "a.b/c"),
            "metadata.labels[\"a.b/c\"]"
        );
    }

    #[test]
    fn integral_floats_equal_integers() {
        assert!(same(&json!(2), &json!(2.0)));
        assert!(!same(&json!(2), &json!("2")));
    }
}
