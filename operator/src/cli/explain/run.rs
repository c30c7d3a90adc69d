//! The plugin run on what was gathered, through the same path as a live reconcile, and the
//! plan it returns.

use std::sync::Arc;

use kube::{Client, ResourceExt};
use serde_json::Value;
use wasmop_abi::{FINALIZE_EXPORT, RECONCILE_EXPORT};

use super::gather::Gathered;
use super::report::Options;
use super::report::{Report, Result, compact};
use crate::cli::eval::logs::PluginLogs;
use crate::cli::eval::{self, Inputs};
use crate::crd::WasmController;
use crate::plugin::LoadedPlugin;
use crate::plugin::source;
use crate::reconcile::plan::{self, Identity};

/// Runs the plugin on what was gathered, through the same path as a live reconcile
/// ([`eval::evaluate`]), and reports its logs, run time and plan. Returns the plan, or None
/// (and blocks) when the plugin cannot be loaded or fails.
#[allow(clippy::too_many_arguments)] // what one plugin call needs
pub(super) async fn run_plugin(
    client: &Client,
    opts: &Options,
    logs: &PluginLogs,
    ns: &str,
    wc: &WasmController,
    identity: &Identity,
    gathered: &Gathered,
    report: &mut Report,
) -> Option<eval::Planned> {
    let spec = &wc.spec;
    let limits = &spec.plugin.limits;
    let plugin = load_plugin(client, opts, ns, wc).await;
    let export = if gathered.finalizing {
        FINALIZE_EXPORT
    } else {
        RECONCILE_EXPORT
    };
    report.heading(format!(
        "Plugin {export} ({} MiB, {} ms{})",
        limits.memory_mib(),
        limits.timeout_ms(),
        limits.fuel.map_or(String::new(), |f| format!(", fuel {f}"))
    ));
    let plugin = match plugin {
        Ok(p) => p,
        Err(e) => {
            report.line(&e);
            report.block(e);
            return None;
        }
    };
    report.line(format!("sha256 {}", plugin.sha256));
    let inputs = Inputs {
        identity: identity.clone(),
        controller: wasmop_abi::ControllerInfo {
            name: wc.name_any(),
            namespace: ns.into(),
            config: spec.plugin.config.clone().unwrap_or(Value::Null),
        },
        parent: gathered.parent.clone(),
        child_kinds: Some(spec.children.clone()),
        children: gathered.children.owned.values().cloned().collect(),
        related: gathered.related.values.clone(),
        related_targets: gathered.related.targets.clone(),
        finalizing: gathered.finalizing,
    };
    let evaluation = eval::evaluate(&plugin, &inputs, logs).await;
    for line in &evaluation.logs {
        report.line(format!("log {line}"));
    }
    if let Some(d) = evaluation.elapsed {
        report.line(format!("ran in {:.1} ms", d.as_secs_f64() * 1e3));
    }
    let planned = match evaluation.result {
        Ok(p) => p,
        Err(e) => {
            report.line(format!("failed ({}): {e}", e.reason()));
            report.block(format!("the plugin fails ({}): {e}", e.reason()));
            return None;
        }
    };
    report_plan(&planned.plan, gathered.finalizing, report);
    Some(planned)
}

/// Loads the plugin to run, with the controller's limits: the `--plugin` file, else the
/// controller's source.
///
/// # Errors
/// The message the report shows: the file, the source or the plugin cannot be loaded.
pub(super) async fn load_plugin(
    client: &Client,
    opts: &Options,
    ns: &str,
    wc: &WasmController,
) -> Result<Arc<LoadedPlugin>, String> {
    let limits = &wc.spec.plugin.limits;
    match &opts.plugin {
        Some(path) => eval::load_plugin(path, limits, opts.cache_dir.clone())
            .await
            .map_err(|e| e.to_string()),
        None => match source::load(client, ns, &wc.spec.plugin.source, &loader(opts)).await {
            Ok(bytes) => match crate::plugin::Host::new(opts.cache_dir.clone()) {
                Ok(host) => host
                    .load(&bytes, limits, 1)
                    .await
                    .map_err(|e| format!("plugin: {e}")),
                Err(e) => Err(format!("plugin cache: {e}")),
            },
            Err(e) => Err(format!("plugin source: {e}")),
        },
    }
}

/// Explain loads sources as the operator does; file sources are the user's own files, and
/// JavaScript is built with the runtime `wasmop js build` uses.
pub(super) fn loader(opts: &Options) -> source::Loader {
    source::Loader::new(
        true,
        wasmop_js_build::default_runtime_path(),
        opts.cache_dir.clone(),
    )
}

/// Reports what the plan wants written. When `finalizing`, also whether the plugin has
/// finalized; blocks while it has not (wasmop keeps its finalizer).
pub(super) fn report_plan(plan: &plan::Plan, finalizing: bool, report: &mut Report) {
    report.line("wants:");
    for a in &plan.children {
        report.line(format!(
            "  apply  {}/{} ({})",
            a.target.kind, a.target.name, a.target.api_version
        ));
    }
    for a in &plan.patches {
        report.line(format!(
            "  patch  {}/{} ({})",
            a.target.kind, a.target.name, a.target.api_version
        ));
    }
    if let Some(s) = &plan.status {
        report.line(format!("  status {}", compact(&s.body["status"])));
    }
    for o in &plan.prune {
        report.line(format!(
            "  prune  {}/{} ({})",
            o.target.kind, o.target.name, o.target.api_version
        ));
    }
    for e in &plan.events {
        report.line(format!(
            "  event  {:?} {}: {}",
            e.type_, e.reason, e.message
        ));
    }
    if let Some(r) = plan.requeue_after {
        report.line(format!("  requeue after {}s", r.as_secs()));
    }
    if finalizing {
        report.line(format!("  finalized: {}", plan.finalized));
        if !plan.finalized {
            report.block("the plugin's finalize has not returned finalized: true yet, so wasmop keeps its finalizer");
        }
    }
}
