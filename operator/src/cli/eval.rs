//! `wasmop eval`: runs a plugin locally against a case file, with the operator's limits, and
//! shows what the operator would do with its answer — no cluster involved.
//!
//! The call goes through the same code as a live reconcile: [`plugin::Host`] (limits, error
//! classification), [`plan::plan`] (validation, ownerReferences, labels, prune set). What is
//! printed is what the operator would send: each server-side apply body, the prunes, events
//! and requeue. `--test DIR` turns a folder of case files with `expect` blocks into a plugin
//! test suite ([`test_dir`]).
//!
//! [`evaluate`] is also the engine of `wasmop explain` (`explain.rs`), which gathers the
//! [`Inputs`] from a live cluster instead of a case file.
//!
//! Parts: [`case`] (the case file format and `expect` checks), [`logs`] (plugin log capture).

pub mod case;
pub mod logs;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize as _, Serialize};
use serde_json::Value;
use wasmop_abi::{
    ABI_VERSION, ControllerInfo, Event, FINALIZE_EXPORT, RECONCILE_EXPORT, ReconcileRequest,
    ReconcileResponse, Related,
};

use crate::crd::{KindRef, Limits, WasmController};
use crate::plugin::source;
use crate::plugin::{self, Host, LoadedPlugin};
use crate::reconcile::context;
use crate::reconcile::plan::{self, Identity, ObjRef, Owned, Plan};
use case::{Case, Verdict};
use logs::{LogLine, PluginLogs};

/// The parent's uid when a case does not give one (ownerReferences need a uid).
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";
/// The WasmController name when no `--controller` is given.
pub const DEFAULT_CONTROLLER: &str = "eval";

/// Why an evaluation could not even be attempted (exit code 2). A plugin that fails its call
/// is not an error here: that is the [`Evaluation`]'s result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("case {path}: {message}")]
    Case { path: String, message: String },
    #[error("--controller {path}: {message}")]
    Controller { path: String, message: String },
    #[error("plugin {path}: {source}")]
    Source {
        path: String,
        #[source]
        source: source::Error,
    },
    #[error("plugin {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: plugin::Error,
    },
    #[error("plugin cache {path}: {source}. Pass --no-cache or another --cache-dir")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir}: no case file (*.yaml) with an expect block; add `expect:` to a case (docs/eval-and-explain.md)"
    )]
    NoCases { dir: String },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Output format of a single evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// Settings of `wasmop eval`.
#[derive(Clone, Debug)]
pub struct Options {
    pub plugin: PathBuf,
    /// A WasmController YAML: its name, namespace, spec.children, spec.plugin.config,
    /// limits and resyncPeriod apply to every case.
    pub controller: Option<PathBuf>,
    /// `Some(true)`: call `finalize`; `Some(false)`: `reconcile`; `None`: as the case says.
    pub finalizing: Option<bool>,
    /// Overrides of the controller's (or the default) limits.
    pub memory_mib: Option<u32>,
    pub timeout_ms: Option<u32>,
    pub fuel: Option<u64>,
    pub format: Format,
    /// Compiled-plugin cache (None: compile every time).
    pub cache_dir: Option<PathBuf>,
}

/// What a WasmController contributes to a call, from `--controller` or defaults.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub name: String,
    pub namespace: Option<String>,
    pub child_kinds: Option<Vec<KindRef>>,
    pub config: Option<Value>,
    pub limits: Limits,
    /// `spec.related` entry names, when a controller is given.
    pub related: Option<Vec<String>>,
    pub resync: Option<Duration>,
}

impl Settings {
    /// Reads the first WasmController document of a YAML file.
    ///
    /// # Errors
    /// [`Error::Read`], or [`Error::Controller`] when there is no valid WasmController in it.
    pub fn load(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let bad = |message: String| Error::Controller {
            path: path.display().to_string(),
            message,
        };
        let mut found = None;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
            if value["kind"] == "WasmController" {
                found = Some(value);
                break;
            }
        }
        let value = found.ok_or_else(|| bad("no document of kind WasmController".into()))?;
        let wc: WasmController = serde_json::from_value(value)
            .map_err(|e| bad(format!("not a valid WasmController: {e}")))?;
        let spec = wc.spec;
        let resync = match &spec.resync_period {
            None => crate::manager::parse_duration(crate::crd::DEFAULT_RESYNC),
            Some(p) => Some(crate::manager::parse_duration(p).ok_or_else(|| {
                bad(format!(
                    "spec.resyncPeriod: {p:?} is not a duration like 30s, 5m or 1h"
                ))
            })?),
        };
        Ok(Settings {
            name: wc
                .metadata
                .name
                .ok_or_else(|| bad("metadata.name is required".into()))?,
            namespace: wc.metadata.namespace,
            child_kinds: Some(spec.children),
            config: spec.plugin.config,
            limits: spec.plugin.limits,
            related: Some(spec.related.into_iter().map(|r| r.name).collect()),
            resync,
        })
    }
}

/// Everything one plugin call is given: what the controller gathers for a parent.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub identity: Identity,
    pub controller: ControllerInfo,
    /// The parent, with metadata.namespace and metadata.uid.
    pub parent: Value,
    /// The declared child kinds; `None` accepts every kind the plugin returns (a case without
    /// `childKinds` and no `--controller`).
    pub child_kinds: Option<Vec<KindRef>>,
    /// The parent's current children owned by this controller.
    pub children: Vec<Value>,
    pub related: BTreeMap<String, Related>,
    /// Related objects an `apply` patch may target.
    pub related_targets: Vec<ObjRef>,
    pub finalizing: bool,
}

impl Inputs {
    /// Builds the inputs of a case, as the operator would for that parent.
    ///
    /// # Errors
    /// A message naming the case field and the fix.
    pub fn from_case(
        case: &Case,
        settings: &Settings,
        finalizing: Option<bool>,
    ) -> std::result::Result<Inputs, String> {
        let mut parent = case.object.clone();
        let meta = parent["metadata"]
            .as_object_mut()
            .ok_or("object.metadata: must be a mapping")?;
        let namespace = match (
            meta.get("namespace").and_then(Value::as_str),
            &settings.namespace,
        ) {
            (Some(ns), Some(wc)) if ns != wc => {
                return Err(format!(
                    "object.metadata.namespace: {ns:?} is not the WasmController's namespace {wc:?}: a controller only reconciles parents in its own namespace"
                ));
            }
            (Some(ns), _) => ns.to_string(),
            (None, Some(wc)) => wc.clone(),
            (None, None) => "default".into(),
        };
        meta.insert("namespace".into(), Value::String(namespace.clone()));
        meta.entry("uid")
            .or_insert_with(|| Value::String(PLACEHOLDER_UID.into()));

        let child_kinds = case
            .child_kinds
            .clone()
            .or_else(|| settings.child_kinds.clone());
        let mut children = Vec::new();
        for (i, child) in case.children.iter().enumerate() {
            let kind = kind_of(child).expect("checked when the case is loaded");
            if let Some(kinds) = &child_kinds
                && !kinds.contains(&kind)
            {
                return Err(format!(
                    "children[{i}]: {kind} is not a declared child kind: add it to childKinds (or the controller's spec.children)"
                ));
            }
            let mut child = child.clone();
            let meta = child["metadata"]
                .as_object_mut()
                .expect("checked when the case is loaded");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if ns != namespace => {
                    return Err(format!(
                        "children[{i}].metadata.namespace: {ns:?} is not the parent's namespace {namespace:?}"
                    ));
                }
                Some(_) => {}
                None => {
                    meta.insert("namespace".into(), Value::String(namespace.clone()));
                }
            }
            children.push(child);
        }

        let mut related = case.related.clone();
        if let Some(declared) = &settings.related {
            if let Some(unknown) = related.keys().find(|k| !declared.contains(k)) {
                return Err(format!(
                    "related.{unknown}: the controller has no spec.related entry named {unknown:?} (it has: {})",
                    declared.join(", ")
                ));
            }
            for name in declared {
                related.entry(name.clone()).or_default();
            }
        }
        let related_targets = related
            .values()
            .filter_map(|r| r.object.as_ref())
            .filter_map(|o| {
                let kind = kind_of(o)?;
                Some(ObjRef {
                    api_version: kind.api_version,
                    kind: kind.kind,
                    namespace: namespace.clone(),
                    name: o["metadata"]["name"].as_str()?.into(),
                })
            })
            .collect();
        let name = if settings.name.is_empty() {
            DEFAULT_CONTROLLER.to_string()
        } else {
            settings.name.clone()
        };
        Ok(Inputs {
            identity: Identity::new(&namespace, &name),
            controller: ControllerInfo {
                name,
                namespace,
                config: case
                    .config
                    .clone()
                    .or_else(|| settings.config.clone())
                    .unwrap_or(Value::Null),
            },
            parent,
            child_kinds,
            children,
            related,
            related_targets,
            finalizing: finalizing.unwrap_or(case.finalizing),
        })
    }

    /// The plugin request and the owned set, as `controller.rs` builds them: every declared
    /// kind has an entry in `request.children`, possibly empty.
    pub fn request(&self) -> (ReconcileRequest, Vec<Owned>) {
        let mut by_kind: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        for kind in self.child_kinds.iter().flatten() {
            by_kind
                .entry(wasmop_abi::child_key(&kind.api_version, &kind.kind))
                .or_default();
        }
        let mut owned = Vec::new();
        for child in &self.children {
            let Some(kind) = kind_of(child) else { continue };
            let name = child["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            owned.push(Owned {
                target: ObjRef {
                    api_version: kind.api_version.clone(),
                    kind: kind.kind.clone(),
                    namespace: self.controller.namespace.clone(),
                    name: name.clone(),
                },
                uid: child["metadata"]["uid"].as_str().unwrap_or_default().into(),
            });
            by_kind
                .entry(wasmop_abi::child_key(&kind.api_version, &kind.kind))
                .or_default()
                .insert(name, child.clone());
        }
        let request = ReconcileRequest {
            abi_version: ABI_VERSION.into(),
            controller: self.controller.clone(),
            object: self.parent.clone(),
            children: by_kind,
            related: self.related.clone(),
            finalizing: self.finalizing,
        };
        (request, owned)
    }

    /// The export this call uses.
    pub fn export(&self) -> &'static str {
        if self.finalizing {
            FINALIZE_EXPORT
        } else {
            RECONCILE_EXPORT
        }
    }
}

fn kind_of(obj: &Value) -> Option<KindRef> {
    Some(KindRef {
        api_version: obj["apiVersion"].as_str()?.into(),
        kind: obj["kind"].as_str()?.into(),
    })
}

/// A valid response and the operator's plan for it.
#[derive(Clone, Debug)]
pub struct Planned {
    pub response: ReconcileResponse,
    pub plan: Plan,
}

/// One call: what the plugin logged, how long it ran, and its planned answer or the error the
/// operator would report (same type and message as a live reconcile).
#[derive(Debug)]
pub struct Evaluation {
    pub logs: Vec<LogLine>,
    pub elapsed: Option<Duration>,
    pub result: Result<Planned, context::Error>,
}

/// Calls the plugin with `inputs` and plans its answer, exactly as a reconcile would, without
/// writing anything.
pub async fn evaluate(
    plugin: &Arc<LoadedPlugin>,
    inputs: &Inputs,
    logs: &PluginLogs,
) -> Evaluation {
    let (request, owned) = inputs.request();
    let input = serde_json::to_vec(&request).expect("requests serialise");
    drop(logs.take()); // lines from before this call are not its own
    let call = plugin.call(inputs.export(), input).await;
    let logs = logs.take();
    let output = match call {
        Ok(output) => output,
        Err(e) => {
            return Evaluation {
                logs,
                elapsed: None,
                result: Err(e.into()),
            };
        }
    };
    let elapsed = Some(output.elapsed);
    let response: ReconcileResponse = match serde_json::from_slice(&output.output) {
        Ok(r) => r,
        Err(source) => {
            return Evaluation {
                logs,
                elapsed,
                result: Err(context::Error::InvalidOutput { source }),
            };
        }
    };
    let child_kinds = inputs.child_kinds.clone().unwrap_or_else(|| {
        let current = inputs.children.iter().filter_map(kind_of);
        let returned = response.children.iter().filter_map(kind_of);
        current
            .chain(returned)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    });
    let input = plan::Input {
        identity: &inputs.identity,
        parent: &inputs.parent,
        child_kinds: &child_kinds,
        related: &inputs.related_targets,
        owned: &owned,
        finalizing: inputs.finalizing,
    };
    // The operator's default response limits (an admin may set others with `wasmop run`).
    let limits = plan::ResponseLimits::default();
    let result = limits
        .check_output(output.output.len())
        .and_then(|()| limits.check(&response))
        .and_then(|()| plan::plan(&input, response.clone()))
        .map(|plan| Planned { response, plan })
        .map_err(context::Error::from);
    Evaluation {
        logs,
        elapsed,
        result,
    }
}

/// Reads, decodes (gzip/zstd like a ConfigMap source) and compiles a plugin file.
///
/// # Errors
/// Unreadable file, not wasm, or a module that does not compile/instantiate.
pub async fn load_plugin(
    path: &Path,
    limits: &Limits,
    cache_dir: Option<PathBuf>,
) -> Result<Arc<LoadedPlugin>> {
    let shown = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| Error::Read {
        path: shown.clone(),
        source,
    })?;
    let bytes = source::decode(&raw).map_err(|source| Error::Source {
        path: shown.clone(),
        source,
    })?;
    let host = Host::new(cache_dir.clone()).map_err(|source| Error::Cache {
        path: cache_dir.unwrap_or_default().display().to_string(),
        source,
    })?;
    host.load(&bytes, limits, 1)
        .await
        .map_err(|source| Error::Load {
            path: shown,
            source,
        })
}

/// The writes the operator would make for a plan, in the order it makes them.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Writes {
    /// Every apply is made with this server-side-apply field manager, forced.
    pub field_manager: String,
    /// Server-side applies: children, then `apply` patches, then the status subresource.
    pub apply: Vec<ApplyWrite>,
    /// Owned children no longer returned: deleted with a uid precondition.
    pub prune: Vec<PruneWrite>,
    pub events: Vec<Event>,
    /// When the parent is reconciled again without a change (after the clamp to a day and
    /// to the controller's resyncPeriod); absent: at the resyncPeriod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requeue_after_seconds: Option<u64>,
    /// From `finalize`: the operator removes its finalizer from the parent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub finalized: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyWrite {
    /// `child`, `patch` or `status` (the parent's status subresource).
    pub write: &'static str,
    pub target: String,
    pub body: Value,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneWrite {
    pub target: String,
    pub uid: String,
}

impl Writes {
    pub fn of(plan: &Plan, identity: &Identity, resync: Option<Duration>) -> Writes {
        let apply = |write, a: &plan::Apply| ApplyWrite {
            write,
            target: a.target.to_string(),
            body: a.body.clone(),
        };
        let mut applies: Vec<ApplyWrite> =
            plan.children.iter().map(|a| apply("child", a)).collect();
        applies.extend(plan.patches.iter().map(|a| apply("patch", a)));
        applies.extend(plan.status.iter().map(|a| apply("status", a)));
        let requeue = match (plan.requeue_after, resync) {
            (Some(r), Some(resync)) => Some(r.min(resync)),
            (r, _) => r,
        };
        Writes {
            field_manager: identity.field_manager.clone(),
            apply: applies,
            prune: plan
                .prune
                .iter()
                .map(|o| PruneWrite {
                    target: o.target.to_string(),
                    uid: o.uid.clone(),
                })
                .collect(),
            events: plan.events.clone(),
            requeue_after_seconds: requeue.map(|d| d.as_secs()),
            finalized: plan.finalized,
        }
    }
}

/// The document `wasmop eval CASE` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    plugin: PluginInfo<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    /// Lines the plugin logged during the call, oldest first.
    logs: &'a [LogLine],
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a ReconcileResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    writes: Option<Writes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorReport>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PluginInfo<'a> {
    file: String,
    sha256: &'a str,
    export: &'static str,
    limits: EffectiveLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<f64>,
}

/// The limits the call ran with, defaults filled in.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EffectiveLimits {
    #[serde(rename = "memoryMiB")]
    memory_mib: u32,
    timeout_ms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    fuel: Option<u64>,
}

#[derive(Serialize)]
struct ErrorReport {
    /// The reason the operator would report (`PluginTimeout`, `InvalidResponse`, ...).
    reason: &'static str,
    message: String,
}

fn settings_and_limits(opts: &Options) -> Result<(Settings, Limits)> {
    let settings = match &opts.controller {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let limits = Limits {
        memory_mib: opts.memory_mib.or(settings.limits.memory_mib),
        timeout_ms: opts.timeout_ms.or(settings.limits.timeout_ms),
        fuel: opts.fuel.or(settings.limits.fuel),
    };
    Ok((settings, limits))
}

/// `wasmop eval PLUGIN CASE`: one call, printed as a YAML or JSON document on `out`.
/// Returns whether the call succeeded (its response was valid and planned).
///
/// # Errors
/// Unusable inputs: unreadable or invalid case, controller or plugin file.
pub async fn eval_case(
    opts: &Options,
    case_path: &Path,
    logs: &PluginLogs,
    out: &mut dyn Write,
) -> Result<bool> {
    let (settings, limits) = settings_and_limits(opts)?;
    let case = Case::load(case_path)?;
    let inputs =
        Inputs::from_case(&case, &settings, opts.finalizing).map_err(|message| Error::Case {
            path: case_path.display().to_string(),
            message,
        })?;
    let plugin = load_plugin(&opts.plugin, &limits, opts.cache_dir.clone()).await?;
    let evaluation = evaluate(&plugin, &inputs, logs).await;
    let mut notes = Vec::new();
    if inputs.child_kinds.is_none() {
        notes.push("no childKinds in the case and no --controller: every kind the plugin returned was accepted as declared".to_string());
    }
    let (response, writes, error) = match &evaluation.result {
        Ok(p) => (
            Some(&p.response),
            Some(Writes::of(&p.plan, &inputs.identity, settings.resync)),
            None,
        ),
        Err(e) => (
            None,
            None,
            Some(ErrorReport {
                reason: e.reason(),
                message: e.to_string(),
            }),
        ),
    };
    let report = Report {
        plugin: PluginInfo {
            file: opts.plugin.display().to_string(),
            sha256: &plugin.sha256,
            export: inputs.export(),
            limits: EffectiveLimits {
                memory_mib: limits.memory_mib(),
                timeout_ms: limits.timeout_ms(),
                fuel: limits.fuel,
            },
            elapsed_ms: evaluation
                .elapsed
                .map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
        },
        notes,
        logs: &evaluation.logs,
        response,
        writes,
        error,
    };
    match opts.format {
        Format::Yaml => out.write_all(
            serde_yaml::to_string(&report)
                .expect("reports serialise")
                .as_bytes(),
        )?,
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialise")
        )?,
    }
    if let Err(e) = &evaluation.result {
        eprintln!("error: {e}");
    }
    Ok(evaluation.result.is_ok())
}

/// `wasmop eval PLUGIN --test DIR`: every case file in `dir` with an `expect` block, one
/// `ok`/`FAIL` line each (with a diff and the plugin's logs on failure), then a line
/// `N passed, M failed`. Returns whether every case passed.
///
/// # Errors
/// The directory or the plugin cannot be read, or there is no case with `expect` in it.
pub async fn test_dir(
    opts: &Options,
    dir: &Path,
    logs: &PluginLogs,
    out: &mut dyn Write,
) -> Result<bool> {
    let (settings, limits) = settings_and_limits(opts)?;
    let read_err = |source| Error::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let plugin = load_plugin(&opts.plugin, &limits, opts.cache_dir.clone()).await?;
    let (mut passed, mut failed) = (0, 0);
    for path in &files {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let case = match Case::load(path) {
            Ok(case) => case,
            Err(e) => {
                failed += 1;
                writeln!(out, "FAIL  {name}: {e}")?;
                continue;
            }
        };
        let Some(expect) = &case.expect else {
            writeln!(out, "skip  {name}: no expect block")?;
            continue;
        };
        let inputs = match Inputs::from_case(&case, &settings, opts.finalizing) {
            Ok(inputs) => inputs,
            Err(message) => {
                failed += 1;
                writeln!(out, "FAIL  {name}: {message}")?;
                continue;
            }
        };
        let evaluation = evaluate(&plugin, &inputs, logs).await;
        match case::check(expect, &evaluation) {
            Verdict::Pass => {
                passed += 1;
                let ms = evaluation
                    .elapsed
                    .map(|d| format!(" ({:.1} ms)", d.as_secs_f64() * 1e3))
                    .unwrap_or_default();
                writeln!(out, "ok    {name}{ms}")?;
            }
            Verdict::Fail { summary, diff } => {
                failed += 1;
                writeln!(out, "FAIL  {name}: {summary}")?;
                for line in diff.lines() {
                    writeln!(out, "    {line}")?;
                }
                for line in &evaluation.logs {
                    writeln!(out, "    plugin log: {line}")?;
                }
            }
        }
    }
    if passed + failed == 0 {
        return Err(Error::NoCases {
            dir: dir.display().to_string(),
        });
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn case(v: Value) -> Case {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn case_inputs_fill_namespace_and_uid_and_key_children_by_kind() {
        let c = case(json!({
            "object": {"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site"}},
            "children": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "site", "uid": "d-1"}}],
            "childKinds": [{"apiVersion": "v1", "kind": "ConfigMap"}, {"apiVersion": "apps/v1", "kind": "Deployment"}],
        }));
        let inputs = Inputs::from_case(&c, &Settings::default(), None).unwrap();
        assert_eq!(inputs.parent["metadata"]["namespace"], "default");
        assert_eq!(inputs.parent["metadata"]["uid"], PLACEHOLDER_UID);
        assert_eq!(inputs.identity.field_manager, "wasmop.dev/default.eval");
        let (request, owned) = inputs.request();
        assert_eq!(
            request.children["ConfigMap.v1"].len(),
            0,
            "declared kinds are present, empty"
        );
        assert_eq!(
            request.children["Deployment.apps/v1"]["site"]["metadata"]["uid"],
            "d-1"
        );
        assert_eq!(owned[0].uid, "d-1");
        assert_eq!(inputs.export(), RECONCILE_EXPORT);
    }

    #[test]
    fn case_inputs_refuse_what_the_operator_never_sends() {
        let object = json!({"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site", "namespace": "a"}});
        let settings = Settings {
            namespace: Some("b".into()),
            related: Some(vec!["infra".into()]),
            ..Default::default()
        };
        let err = Inputs::from_case(&case(json!({"object": object})), &settings, None).unwrap_err();
        assert!(
            err.starts_with(
                "object.metadata.namespace: \"a\" is not the WasmController's namespace \"b\""
            ),
            "{err}"
        );
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
        let undeclared = json!({"object": object, "childKinds": [], "children": [secret]});
        let err = Inputs::from_case(&case(undeclared), &Settings::default(), None).unwrap_err();
        assert!(
            err.starts_with("children[0]: Secret.v1 is not a declared child kind"),
            "{err}"
        );
        let settings = Settings {
            related: Some(vec!["infra".into()]),
            ..Default::default()
        };
        let err = Inputs::from_case(
            &case(json!({"object": object, "related": {"other": {}}})),
            &settings,
            None,
        )
        .unwrap_err();
        assert!(
            err.starts_with("related.other: the controller has no spec.related entry"),
            "{err}"
        );
        let ok =
            Inputs::from_case(&case(json!({"object": object})), &settings, Some(true)).unwrap();
        assert!(
            ok.related.contains_key("infra"),
            "declared entries are always present"
        );
        assert_eq!(ok.export(), FINALIZE_EXPORT);
    }

    #[test]
    fn the_sample_controller_yaml_gives_its_settings() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/website/wasmcontroller.yaml");
        let s = Settings::load(&path).unwrap();
        assert_eq!(s.name, "website");
        assert_eq!(s.child_kinds.unwrap().len(), 2);
        assert_eq!(s.config, Some(json!({"replicas": 2})));
        assert_eq!((s.limits.memory_mib(), s.limits.timeout_ms()), (32, 500));
        assert_eq!(s.resync, Some(Duration::from_secs(300)));
    }

    #[test]
    fn requeue_is_capped_at_the_resync_period() {
        let plan = Plan {
            requeue_after: Some(Duration::from_secs(900)),
            ..Default::default()
        };
        let id = Identity::new("ns", "c");
        assert_eq!(
            Writes::of(&plan, &id, Some(Duration::from_secs(300))).requeue_after_seconds,
            Some(300)
        );
        assert_eq!(
            Writes::of(&plan, &id, None).requeue_after_seconds,
            Some(900)
        );
    }
}
