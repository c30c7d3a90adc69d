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

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use wasmop_abi::{FINALIZE_EXPORT, RECONCILE_EXPORT};

use crate::cli::eval::logs::PluginLogs;
use crate::cli::eval::{self, Inputs};
use crate::cluster::access::{self, Access};
use crate::cluster::api_error::readable;
use crate::cluster::rbac;
use crate::crd::{KindRef, WasmController};
use crate::plugin::LoadedPlugin;
use crate::plugin::source;
use crate::reconcile::plan::{self, Identity, ObjRef};
use crate::reconcile::{context, execute, related};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not KIND/NAME, e.g. website/hello or websites.example.com/hello")]
    Target(String),
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{action}: {}", readable(.source))]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("no WasmController in namespace {namespace} reconciles {kind:?}{found}")]
    NoController {
        namespace: String,
        kind: String,
        found: String,
    },
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound {
        kind: String,
        name: String,
        namespace: String,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of `wasmop explain`.
#[derive(Clone, Debug)]
pub struct Options {
    /// `KIND/NAME`: KIND is a kind, plural or `kind.group` (case-insensitive).
    pub target: String,
    /// Default: the kubeconfig context's namespace.
    pub namespace: Option<String>,
    /// Default: KUBECONFIG, ~/.kube/config, in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Run this local plugin file instead of the controller's source ("what would my new
    /// plugin do here?").
    pub plugin: Option<PathBuf>,
    /// Compiled-plugin cache (None: compile every time).
    pub cache_dir: Option<PathBuf>,
}

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

/// The text of one controller's explanation and what blocks it.
#[derive(Default)]
struct Report {
    text: String,
    blocking: Vec<String>,
    /// What could not be checked (so "nothing blocks" is not overstated).
    unchecked: Vec<String>,
}

impl Report {
    fn heading(&mut self, title: impl std::fmt::Display) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(&format!("{title}\n"));
    }

    fn line(&mut self, line: impl std::fmt::Display) {
        self.text.push_str(&format!("  {line}\n"));
    }

    fn block(&mut self, why: impl Into<String>) {
        self.blocking.push(why.into());
    }
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

async fn discover(client: &Client, kind: &KindRef) -> Result<ApiResource, kube::Error> {
    let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), &kind.kind);
    kube::discovery::pinned_kind(client, &gvk)
        .await
        .map(|(ar, _)| ar)
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

/// What a reconcile of the parent reads, as the dry run found it.
struct Gathered {
    /// The parent as the plugin is given it ([`crate::cluster::kinds::clean`]).
    parent: Value,
    parent_uid: String,
    /// The parent is being deleted, so the plugin (if it runs) is called through its finalize
    /// export.
    finalizing: bool,
    children: Children,
    related: RelatedInputs,
    /// False when the plugin is not run: the parent is being deleted and this controller does
    /// not finalize it, a child kind is not served, or a related entry cannot be resolved.
    plugin_runs: bool,
}

/// The children this controller owns, and the child kinds they were listed from.
struct Children {
    /// Each kind of `spec.children` the API server serves, with its resource.
    resources: Vec<(KindRef, ApiResource)>,
    /// The children carrying this controller's label and controlled by the parent, cleaned,
    /// by (apiVersion, kind, name).
    owned: BTreeMap<(String, String, String), Value>,
    /// Every kind of `spec.children` is served.
    all_served: bool,
}

/// What the plugin is told about the `spec.related` entries.
struct RelatedInputs {
    /// By entry name.
    values: BTreeMap<String, wasmop_abi::Related>,
    /// The related objects an `apply` patch may target.
    targets: Vec<ObjRef>,
    /// Every entry resolved (the operator fails the reconcile before calling the plugin
    /// otherwise).
    all_resolved: bool,
}

/// Reads and reports what the controller reads for the parent `name`: the parent itself, the
/// children this controller owns and the related objects.
///
/// # Errors
/// The parent does not exist or cannot be read, or a served child kind cannot be listed.
async fn gather(
    client: &Client,
    ns: &str,
    name: &str,
    wc: &WasmController,
    identity: &Identity,
    parent_resource: &ApiResource,
    report: &mut Report,
) -> Result<Gathered> {
    // The parent: existence, deletion and finalizers.
    let parent = read_parent(client, ns, name, &wc.spec.parent.kind, parent_resource).await?;
    let parent_json = crate::cluster::kinds::clean(parent.clone(), parent_resource);
    let parent_uid = parent.uid().unwrap_or_default();
    let reconciled = report_parent(&parent, wc, name, identity, report);

    // The children this controller owns, as the operator sees them.
    let children = gather_children(client, ns, wc, identity, &parent_uid, report).await?;

    // Related objects: what the plugin is told, and what is missing.
    let related = resolve_related(client, ns, wc, &parent_json, report).await;

    Ok(Gathered {
        plugin_runs: reconciled && children.all_served && related.all_resolved,
        parent: parent_json,
        parent_uid,
        finalizing: parent.metadata.deletion_timestamp.is_some(),
        children,
        related,
    })
}

/// Reads the parent `name` of kind `kind`.
///
/// # Errors
/// It cannot be read, or does not exist.
async fn read_parent(
    client: &Client,
    ns: &str,
    name: &str,
    kind: &str,
    resource: &ApiResource,
) -> Result<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, resource)
        .get_opt(name)
        .await
        .map_err(|source| Error::Api {
            action: format!("reading {kind} {name}"),
            source,
        })?
        .ok_or_else(|| Error::NotFound {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.into(),
        })
}

/// Reports the parent's uid, generation, finalizers and deletion. Returns false when wasmop no
/// longer reconciles it: it is being deleted and this controller does not finalize it
/// (`spec.plugin.finalize` is off, or the parent lacks this controller's finalizer).
fn report_parent(
    parent: &DynamicObject,
    wc: &WasmController,
    name: &str,
    identity: &Identity,
    report: &mut Report,
) -> bool {
    let spec = &wc.spec;
    report.heading("Parent");
    report.line(format!(
        "uid {}, generation {}, resourceVersion {}",
        parent.uid().unwrap_or_default(),
        parent
            .metadata
            .generation
            .map_or("-".into(), |g| g.to_string()),
        parent.resource_version().unwrap_or_default()
    ));
    let finalizer = identity.finalizer();
    let finalizers = parent.finalizers().to_vec();
    let has_ours = finalizers.contains(&finalizer);
    let foreign: Vec<&String> = finalizers.iter().filter(|f| **f != finalizer).collect();
    report.line(if finalizers.is_empty() {
        "finalizers: none".to_string()
    } else {
        format!("finalizers: {}", finalizers.join(", "))
    });
    let mut reconciled = true;
    if let Some(ts) = &parent.metadata.deletion_timestamp {
        report.line(format!("being deleted since {}", ts.0));
        let waits = if foreign.is_empty() {
            String::new()
        } else {
            format!(
                "; its deletion waits for finalizers {} (not this controller's)",
                foreign
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        if spec.plugin.finalize && has_ours {
            report.line(format!("wasmop calls the plugin's finalize export and removes {finalizer} once it returns finalized: true"));
            if !foreign.is_empty() {
                report.block(format!(
                    "{} {name} is being deleted{waits}",
                    spec.parent.kind
                ));
            }
        } else {
            reconciled = false;
            report.block(format!("{} {name} is being deleted: wasmop no longer reconciles it (the garbage collector removes its children){waits}", spec.parent.kind));
        }
    } else if spec.plugin.finalize && !has_ours {
        report.line(format!(
            "wasmop adds its finalizer {finalizer} on the next reconcile"
        ));
    }
    reconciled
}

/// Lists and reports, for each kind of `spec.children`, the objects carrying this controller's
/// label that the parent (`parent_uid`) controls. A kind the API server does not serve blocks.
///
/// # Errors
/// A served child kind cannot be listed.
async fn gather_children(
    client: &Client,
    ns: &str,
    wc: &WasmController,
    identity: &Identity,
    parent_uid: &str,
    report: &mut Report,
) -> Result<Children> {
    let spec = &wc.spec;
    report.heading(format!(
        "Current children ({}={}, controlled by this {})",
        plan::CONTROLLER_LABEL,
        identity.label_value(),
        spec.parent.kind
    ));
    let mut children = Children {
        resources: Vec::new(),
        owned: BTreeMap::new(),
        all_served: true,
    };
    for (i, kind) in spec.children.iter().enumerate() {
        let resource = match discover(client, kind).await {
            Ok(r) => r,
            Err(e) => {
                report.block(format!(
                    "spec.children[{i}]: {kind} is not served by the API server: {}",
                    readable(&e)
                ));
                children.all_served = false;
                continue;
            }
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let params = ListParams::default().labels(&format!(
            "{}={}",
            plan::CONTROLLER_LABEL,
            identity.label_value()
        ));
        let list = api.list(&params).await.map_err(|source| Error::Api {
            action: format!("listing {} in {ns}", resource.plural),
            source,
        })?;
        for obj in list.items {
            if obj
                .owner_references()
                .iter()
                .any(|o| o.uid == parent_uid && o.controller == Some(true))
            {
                report.line(format!("{}/{}", kind.kind, obj.name_any()));
                children.owned.insert(
                    (kind.api_version.clone(), kind.kind.clone(), obj.name_any()),
                    crate::cluster::kinds::clean(obj, &resource),
                );
            }
        }
        children.resources.push((kind.clone(), resource));
    }
    if children.owned.is_empty() {
        report.line("none");
    }
    Ok(children)
}

/// Resolves each `spec.related` entry against `parent` as the operator does, and reports what
/// the plugin is told. An entry whose object is null (with the reason why), or that cannot be
/// resolved, blocks.
async fn resolve_related(
    client: &Client,
    ns: &str,
    wc: &WasmController,
    parent: &Value,
    report: &mut Report,
) -> RelatedInputs {
    let mut related = RelatedInputs {
        values: BTreeMap::new(),
        targets: Vec::new(),
        all_resolved: true,
    };
    if !wc.spec.related.is_empty() {
        report.heading("Related");
    }
    for entry in &wc.spec.related {
        match related::resolve(&related::Reads::Direct(client), entry, parent, ns).await {
            Ok(resolved) => {
                report_resolved(entry, &resolved, report);
                related.values.insert(entry.name.clone(), resolved.related);
                related.targets.extend(resolved.targets);
            }
            Err(e) => {
                // The operator fails the reconcile before calling the plugin.
                report.line(format!("{}: {e}", entry.name));
                report.block(e.to_string());
                related.all_resolved = false;
            }
        }
    }
    related
}

/// What one entry resolved to. A reference that cannot be resolved (as the operator reports
/// it on the WasmController) or an object that is null blocks.
fn report_resolved(
    entry: &crate::crd::RelatedSpec,
    resolved: &related::Resolved,
    report: &mut Report,
) {
    let name = &entry.name;
    for problem in &resolved.unresolved {
        report.line(format!("{name}: unresolved reference {problem}"));
        report.block(format!("related {name}: {}", problem.message));
    }
    let value = &resolved.related;
    if !value.targets.is_empty() {
        for (target, t) in resolved
            .targets
            .iter()
            .zip(value.targets.iter().filter(|t| t.object.is_some()))
        {
            report.line(format!(
                "{name}: {}/{} ({}), contract {}",
                target.kind,
                target.name,
                target.api_version,
                compact(&serde_json::to_value(&t.contract).unwrap_or_default())
            ));
            report_contract(name, target, &t.contract, &t.matched, report);
        }
        return;
    }
    match (&value.reason, resolved.targets.first()) {
        (Some(reason), _) => {
            if resolved.unresolved.is_empty() {
                report.line(format!("{name}: {reason}"));
                report.block(format!("related {name}: {reason}"));
            }
        }
        (None, Some(t)) => {
            report.line(format!(
                "{name}: {}/{} ({}), contract {}",
                t.kind,
                t.name,
                t.api_version,
                compact(&serde_json::to_value(&value.contract).unwrap_or_default())
            ));
            report_contract(name, t, &value.contract, &value.matched, report);
        }
        (None, None) => report.line(format!(
            "{name}: {} object(s) selected",
            value.objects.len()
        )),
    }
}

/// Names each contract field, the path it was read from and the related object, and blocks on
/// a contract field that is `false` (a readiness the parent waits for, Cluster API style).
fn report_contract(
    entry: &str,
    target: &ObjRef,
    contract: &BTreeMap<String, Value>,
    matched: &BTreeMap<String, String>,
    report: &mut Report,
) {
    for (field, v) in contract {
        let path = matched.get(field).map_or("?", String::as_str);
        let from = format!("{path} of {} {}", target.kind, target.name);
        report.line(format!("  {field} = {} (from {from})", compact(v)));
        if *v == Value::Bool(false) {
            report.block(format!(
                "related {entry}: contract field {field} is false (from {from}); the parent waits for it"
            ));
        }
    }
}

/// Runs the plugin on what was gathered, through the same path as a live reconcile
/// ([`eval::evaluate`]), and reports its logs, run time and plan. Returns the plan, or None
/// (and blocks) when the plugin cannot be loaded or fails.
#[allow(clippy::too_many_arguments)] // what one plugin call needs
async fn run_plugin(
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
async fn load_plugin(
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
fn loader(opts: &Options) -> source::Loader {
    source::Loader::new(
        true,
        wasmop_js_build::default_runtime_path(),
        opts.cache_dir.clone(),
    )
}

/// Reports what the plan wants written. When `finalizing`, also whether the plugin has
/// finalized; blocks while it has not (wasmop keeps its finalizer).
fn report_plan(plan: &plan::Plan, finalizing: bool, report: &mut Report) {
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

/// Reports how each write in `plan` differs from the live objects: children to create, children
/// held by someone else (which blocks), changed fields of children, the parent's status and
/// patches, and children to prune.
async fn compare(
    client: &Client,
    ns: &str,
    plan: &plan::Plan,
    identity: &Identity,
    gathered: &Gathered,
    report: &mut Report,
) {
    report.heading("Differences from the live objects");
    let parent = &gathered.parent;
    let mut changes = 0;
    for apply in &plan.children {
        let shown = format!("{}/{}", apply.target.kind, apply.target.name);
        let live = match live_child(client, ns, &apply.target, &gathered.children).await {
            Ok(live) => live,
            Err(e) => {
                report.line(format!("{shown}: cannot read it: {}", readable(&e)));
                continue;
            }
        };
        let Some(live) = live else {
            changes += 1;
            report.line(format!("{shown}: missing, will be created"));
            continue;
        };
        if !ours_or_adoptable(&apply.target, &live, &gathered.parent_uid, identity, report) {
            continue;
        }
        changes += report_differences(&shown, &apply.body, &live, report);
    }
    if let Some(status) = &plan.status {
        changes += report_differences("status", &status.body["status"], &parent["status"], report);
    }
    for patch in &plan.patches {
        let shown = format!("patch {}/{}", patch.target.kind, patch.target.name);
        if patch.target.name == parent["metadata"]["name"] && patch.target.kind == parent["kind"] {
            changes += report_differences(&shown, &patch.body, parent, report);
        } else {
            changes += 1;
            report.line(format!("{shown}: a related object; applied as returned"));
        }
    }
    for o in &plan.prune {
        changes += 1;
        report.line(format!(
            "{}/{}: owned but no longer returned, will be deleted",
            o.target.kind, o.target.name
        ));
    }
    if changes == 0 {
        report.line("none: the live objects match the plan, a reconcile now writes nothing");
    }
}

/// The live object a child `apply` targets, cleaned: the owned child listed while gathering,
/// else read now. None when it does not exist, or its kind is not a served child kind.
///
/// # Errors
/// Reading it failed.
async fn live_child(
    client: &Client,
    ns: &str,
    target: &ObjRef,
    children: &Children,
) -> Result<Option<Value>, kube::Error> {
    let key = (
        target.api_version.clone(),
        target.kind.clone(),
        target.name.clone(),
    );
    if let Some(live) = children.owned.get(&key) {
        return Ok(Some(live.clone()));
    }
    let resource = children
        .resources
        .iter()
        .find(|(k, _)| k.api_version == target.api_version && k.kind == target.kind)
        .map(|(_, r)| r);
    match resource {
        Some(r) => Ok(Api::<DynamicObject>::namespaced_with(client.clone(), ns, r)
            .get_opt(&target.name)
            .await?
            .map(|o| crate::cluster::kinds::clean(o, r))),
        None => Ok(None),
    }
}

/// Whether the plan may apply to `live`, an existing object it targets: true when it is this
/// controller's child or annotated to be adopted by it (the operator's own ownership rule,
/// [`execute::ownership`]); otherwise reports who holds it and blocks (the reconcile fails
/// with `ChildConflict`).
fn ours_or_adoptable(
    target: &ObjRef,
    live: &Value,
    parent_uid: &str,
    identity: &Identity,
    report: &mut Report,
) -> bool {
    let shown = format!("{}/{}", target.kind, target.name);
    let Ok(obj) = serde_json::from_value::<DynamicObject>(live.clone()) else {
        return true; // an object as the API server returned it always reads back
    };
    let wc_name = identity.controller.as_str();
    match execute::ownership(identity, parent_uid, target, &obj) {
        execute::Ownership::Ours => true,
        execute::Ownership::Adoptable => {
            report.line(format!(
                "{shown}: exists, annotated {}={wc_name}: the next reconcile adopts it",
                context::ADOPT_ANNOTATION
            ));
            true
        }
        execute::Ownership::Foreign(conflict) => {
            report.line(format!("{shown}: exists and {}", conflict.holder));
            let hand_over = if conflict.adoptable {
                format!(
                    ", or annotate it {}={wc_name} to hand it over",
                    context::ADOPT_ANNOTATION
                )
            } else {
                String::new()
            };
            report.block(format!("{conflict}: wasmop never takes over an object it did not create (ChildConflict); rename the child or delete the object{hand_over}"));
            false
        }
    }
}

/// Prints the fields of `desired` whose live values differ; returns 1 if any did.
fn report_differences(shown: &str, desired: &Value, live: &Value, report: &mut Report) -> usize {
    const SHOWN: usize = 12;
    let mut diffs = Vec::new();
    differences(desired, Some(live), "", &mut diffs);
    if diffs.is_empty() {
        report.line(format!("{shown}: up to date"));
        return 0;
    }
    for d in diffs.iter().take(SHOWN) {
        report.line(format!("{shown}: {d}"));
    }
    if diffs.len() > SHOWN {
        report.line(format!(
            "{shown}: ... and {} more fields",
            diffs.len() - SHOWN
        ));
    }
    1
}

/// Every field set in `desired` whose value is not the live one (lists compared by index when
/// their lengths agree, else as a whole). Fields only the live object has are ignored: the
/// API server defaults them, or another manager owns them.
fn differences(desired: &Value, live: Option<&Value>, path: &str, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Null, None | Some(Value::Null)) => {}
        (Value::Object(d), Some(Value::Object(l))) => {
            for (k, v) in d {
                differences(v, l.get(k), &join(path, k), out);
            }
        }
        // Name each field the live object lacks, not the missing parent.
        (Value::Object(d), None | Some(Value::Null)) if !d.is_empty() => {
            for (k, v) in d {
                differences(v, None, &join(path, k), out);
            }
        }
        (Value::Array(d), Some(Value::Array(l))) if d.len() == l.len() => {
            for (i, (dv, lv)) in d.iter().zip(l).enumerate() {
                differences(dv, Some(lv), &format!("{path}[{i}]"), out);
            }
        }
        (d, Some(l)) if same(d, l) => {}
        (d, l) => {
            let path = if path.is_empty() {
                "(whole object)"
            } else {
                path
            };
            out.push(format!(
                "{path}: live {}, desired {}",
                l.map_or("unset".into(), compact),
                compact(d)
            ));
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn join(path: &str, key: &str) -> String {
    let simple = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), simple) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// A value on one line, shortened.
fn compact(v: &Value) -> String {
    const MAX: usize = 80;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reports which of the permissions the controller needs its ServiceAccount has, by
/// SubjectAccessReview: every verb of [`rbac::rules`] (what the operator uses for this spec,
/// whatever the plugin answers; what `wasmop rbac` prints) and what the plan's `apply` patches
/// add. Each one it lacks blocks. When the reviews cannot be made, says so and notes the
/// permissions as not checked.
async fn check_access(
    client: &Client,
    ns: &str,
    wc: &WasmController,
    parent: &ApiResource,
    gathered: &Gathered,
    plan: Option<&plan::Plan>,
    report: &mut Report,
) {
    let sa = &wc.spec.service_account_name;
    report.heading(format!("Permissions of ServiceAccount {ns}/{sa}"));
    let rules = needed_rules(client, wc, parent, gathered, plan).await;
    let access = Access::new(client.clone());
    let mut allowed: Vec<(String, Vec<&str>)> = Vec::new();
    for rule in &rules {
        let names: Vec<Option<&str>> = if rule.names.is_empty() {
            vec![None]
        } else {
            rule.names.iter().map(|n| Some(n.as_str())).collect()
        };
        let shown = match names.as_slice() {
            [Some(name)] => format!("{} {name}", rule.resource),
            _ => rule.resource.clone(),
        };
        for name in names {
            for verb in &rule.verbs {
                let checked = access
                    .require_one(ns, sa, verb, &rule.group, &rule.resource, name)
                    .await;
                match checked {
                    Ok(()) => match allowed.iter_mut().find(|(r, _)| *r == shown) {
                        Some((_, verbs)) => verbs.push(verb),
                        None => allowed.push((shown.clone(), vec![verb])),
                    },
                    Err(e @ access::Error::Denied { .. }) => {
                        report.line(format!("DENIED {verb} {shown}"));
                        report.block(format!("{e} ({})", rule.why));
                    }
                    Err(access::Error::Review(kube::Error::Api(status))) if status.code == 403 => {
                        report.line(format!(
                            "not checked: you may not create SubjectAccessReviews ({}), so what {sa} may do is unknown; ask an admin to run wasmop explain, or check its Role",
                            status.message
                        ));
                        report
                            .unchecked
                            .push(format!("the permissions of ServiceAccount {ns}/{sa}"));
                        return;
                    }
                    Err(e) => {
                        report.line(format!("not checked: {e}"));
                        report
                            .unchecked
                            .push(format!("the permissions of ServiceAccount {ns}/{sa}"));
                        return;
                    }
                }
            }
        }
    }
    for (resource, verbs) in allowed {
        report.line(format!("allowed {resource}: {}", verbs.join(", ")));
    }
}

/// The rules a reconcile of the parent needs: [`rbac::rules`] for the spec, with the kinds
/// as the API server serves them (the related kinds the parent's references name, the
/// selector kinds), and `patch` on what the plan's `apply` patches target. Kinds the API
/// server does not serve are left out (they are reported as blocking elsewhere).
async fn needed_rules(
    client: &Client,
    wc: &WasmController,
    parent: &ApiResource,
    gathered: &Gathered,
    plan: Option<&plan::Plan>,
) -> Vec<rbac::Rule> {
    let spec = &wc.spec;
    let mut related = Vec::new();
    let mut resources: Vec<(ObjRef, ApiResource)> = Vec::new();
    for target in &gathered.related.targets {
        let kind = KindRef {
            api_version: target.api_version.clone(),
            kind: target.kind.clone(),
        };
        if let Ok(r) = discover(client, &kind).await {
            related.push(rbac::RelatedKind::Kind {
                group: r.group.clone(),
                plural: r.plural.clone(),
            });
            resources.push((target.clone(), r));
        }
    }
    for entry in spec.related.iter().filter(|e| e.ref_.is_none()) {
        if let (Some(api_version), Some(kind)) = (&entry.api_version, &entry.kind)
            && let Ok(r) = discover(
                client,
                &KindRef {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                },
            )
            .await
        {
            related.push(rbac::RelatedKind::Kind {
                group: r.group,
                plural: r.plural,
            });
        }
    }
    let kinds = rbac::Kinds {
        parent: parent.clone(),
        children: gathered
            .children
            .resources
            .iter()
            .map(|(_, r)| r.clone())
            .collect(),
        related,
    };
    let mut rules = rbac::rules(spec, &kinds);
    let patched = plan
        .map(|p| p.patches.iter().map(|a| &a.target))
        .into_iter()
        .flatten();
    rules.extend(rbac::for_patches(patched, |target| {
        if target.kind == parent.kind && target.api_version == parent.api_version {
            return Some(parent.clone());
        }
        resources
            .iter()
            .find(|(t, _)| t.kind == target.kind && t.api_version == target.api_version)
            .map(|(_, r)| r.clone())
    }));
    rules
}

#[cfg(test)]
mod tests {
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
