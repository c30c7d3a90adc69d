//! How each write of the plan differs from the live objects.

use kube::api::DynamicObject;
use kube::{Api, Client};
use serde_json::Value;

use super::gather::Children;
use super::gather::Gathered;
use super::report::{Report, Result, compact};
use crate::cluster::api_error::readable;
use crate::reconcile::plan::{self, Identity, ObjRef};
use crate::reconcile::unchanged::removed_fields;
pub(super) use crate::reconcile::unchanged::{join, same};
use crate::reconcile::{context, execute};

/// Reports how each write in `plan` differs from the live objects: children to create, children
/// held by someone else (which blocks), changed fields of children, the parent's status and
/// patches, and children to prune.
pub(super) async fn compare(
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
        let managed = gathered.children.managed_of(&apply.target);
        let removed = removed_fields(managed, &apply.body, &identity.field_manager, None);
        changes += report_differences(&shown, &apply.body, &live, removed, report);
    }
    if let Some(status) = &plan.status {
        let removed = removed_fields(
            &gathered.parent_managed,
            &status.body,
            &identity.field_manager,
            Some("status"),
        );
        changes += report_differences(
            "status",
            &status.body["status"],
            &parent["status"],
            removed,
            report,
        );
    }
    for patch in &plan.patches {
        let shown = format!("patch {}/{}", patch.target.kind, patch.target.name);
        if patch.target.name == parent["metadata"]["name"] && patch.target.kind == parent["kind"] {
            let manager = identity.patch_manager();
            let removed = removed_fields(&gathered.parent_managed, &patch.body, &manager, None);
            changes += report_differences(&shown, &patch.body, parent, removed, report);
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
pub(super) async fn live_child(
    client: &Client,
    ns: &str,
    target: &ObjRef,
    children: &Children,
) -> Result<Option<Value>, kube::Error> {
    if let Some(live) = children.owned.get(&Children::key(target)) {
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
pub(super) fn ours_or_adoptable(
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

/// Prints the fields of `desired` whose live values differ, and the fields `removed` (set by
/// this controller's last apply, left out of this one: the apply removes them); returns 1 if
/// there were any.
pub(super) fn report_differences(
    shown: &str,
    desired: &Value,
    live: &Value,
    removed: Vec<String>,
    report: &mut Report,
) -> usize {
    const SHOWN: usize = 12;
    let mut diffs = Vec::new();
    differences(desired, Some(live), "", &mut diffs);
    diffs.extend(removed.into_iter().map(|path| {
        format!("{path}: set by this controller before, no longer returned: the apply removes it")
    }));
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
pub(super) fn differences(
    desired: &Value,
    live: Option<&Value>,
    path: &str,
    out: &mut Vec<String>,
) {
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
