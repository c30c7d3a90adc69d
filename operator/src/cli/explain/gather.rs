//! What a reconcile of the parent reads: the parent, this controller's children, related
//! objects, each reported as the dry run finds it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use super::report::{Error, Report, Result, compact, discover};
use crate::cluster::api_error::readable;
use crate::crd::{KindRef, WasmController};
use crate::reconcile::plan::{self, Identity, ObjRef};
use crate::reconcile::related;

/// What a reconcile of the parent reads, as the dry run found it.
pub(super) struct Gathered {
    /// The parent as the plugin is given it ([`crate::cluster::kinds::clean`]).
    pub(super) parent: Value,
    /// The parent's managedFields (cleaning drops them).
    pub(super) parent_managed: Vec<ManagedFieldsEntry>,
    pub(super) parent_uid: String,
    /// The parent is being deleted, so the plugin (if it runs) is called through its finalize
    /// export.
    pub(super) finalizing: bool,
    pub(super) children: Children,
    pub(super) related: RelatedInputs,
    /// False when the plugin is not run: the parent is being deleted and this controller does
    /// not finalize it, a child kind is not served, or a related entry cannot be resolved.
    pub(super) plugin_runs: bool,
}

/// The children this controller owns, and the child kinds they were listed from.
pub(super) struct Children {
    /// Each kind of `spec.children` the API server serves, with its resource.
    pub(super) resources: Vec<(KindRef, ApiResource)>,
    /// The children carrying this controller's label and controlled by the parent, cleaned,
    /// by (apiVersion, kind, name).
    pub(super) owned: BTreeMap<(String, String, String), Value>,
    /// Their managedFields (cleaning drops them), by the same key.
    pub(super) managed: BTreeMap<(String, String, String), Vec<ManagedFieldsEntry>>,
    /// Every kind of `spec.children` is served.
    pub(super) all_served: bool,
}

impl Children {
    /// The key of `owned` and `managed` for the child `target`.
    pub(super) fn key(target: &ObjRef) -> (String, String, String) {
        (
            target.api_version.clone(),
            target.kind.clone(),
            target.name.clone(),
        )
    }

    /// The managedFields of the owned child `target` (none when it is not owned).
    pub(super) fn managed_of(&self, target: &ObjRef) -> &[ManagedFieldsEntry] {
        self.managed
            .get(&Self::key(target))
            .map_or(&[][..], Vec::as_slice)
    }
}

/// What the plugin is told about the `spec.related` entries.
pub(super) struct RelatedInputs {
    /// By entry name.
    pub(super) values: BTreeMap<String, wasmop_abi::Related>,
    /// The related objects an `apply` patch may target.
    pub(super) targets: Vec<ObjRef>,
    /// Every entry resolved (the operator fails the reconcile before calling the plugin
    /// otherwise).
    pub(super) all_resolved: bool,
}

/// Reads and reports what the controller reads for the parent `name`: the parent itself, the
/// children this controller owns and the related objects.
///
/// # Errors
/// The parent does not exist or cannot be read, or a served child kind cannot be listed.
pub(super) async fn gather(
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
        parent_managed: parent.metadata.managed_fields.clone().unwrap_or_default(),
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
pub(super) async fn read_parent(
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
pub(super) fn report_parent(
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
pub(super) async fn gather_children(
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
        managed: BTreeMap::new(),
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
                let key = (kind.api_version.clone(), kind.kind.clone(), obj.name_any());
                let managed = obj.metadata.managed_fields.clone().unwrap_or_default();
                children.managed.insert(key.clone(), managed);
                children
                    .owned
                    .insert(key, crate::cluster::kinds::clean(obj, &resource));
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
pub(super) async fn resolve_related(
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
pub(super) fn report_resolved(
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
pub(super) fn report_contract(
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
