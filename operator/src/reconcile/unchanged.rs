//! Whether a server-side apply would change nothing, judged from the live object alone: its
//! managedFields entry for our field manager and the values there. This is what lets a
//! restarted operator (which remembers nothing) skip every write when nothing changed, while
//! drift made by someone else is still corrected. Pure: no I/O.
//!
//! An apply of `body` by field manager `m` is a no-op exactly when
//! 1. every field `m` owns (its `Apply` entry, for the same subresource and apiVersion) is
//!    still in `body`: otherwise the apply would remove a field the plugin stopped returning;
//! 2. every value in `body` is already on the live object: otherwise someone changed or
//!    removed a field we set (drift), or the plugin wants something new.
//!
//! Both checks err towards "changed": a list whose length differs (another manager added an
//! element) or a value the API server normalises (`cpu: 0.5` read back as `500m`) make the
//! apply go out. That write is a no-op at the API server, and the in-memory record of it
//! (execute.rs) skips it from then on. A list key the server defaults (a port's `protocol`)
//! and the body leaves out is matched, not counted as a change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::DynamicObject;
use serde_json::{Map, Value};

/// The managedFields entry of an apply by `manager` to `subresource` (`None`: the object
/// itself), if the live object has one.
fn entry<'a>(
    managed: &'a [ManagedFieldsEntry],
    manager: &str,
    subresource: Option<&str>,
) -> Option<&'a ManagedFieldsEntry> {
    managed.iter().find(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref().filter(|s| !s.is_empty()) == subresource
    })
}

/// Whether applying `body` to `live` as `manager` (to `subresource`) would change nothing.
pub(crate) fn apply_is_noop(
    live: &DynamicObject,
    body: &Value,
    manager: &str,
    subresource: Option<&str>,
) -> bool {
    let managed = live.metadata.managed_fields.as_deref().unwrap_or_default();
    // Never applied by us (or created another way), or a field set of another version (not
    // translated): apply.
    let Some(fields) = applied_fields(managed, body, manager, subresource) else {
        return false;
    };
    let mut removed = Vec::new();
    missing(fields, body, None, &mut removed);
    if !removed.is_empty() {
        return false;
    }
    let Some(want) = body.as_object() else {
        return false;
    };
    want.iter().all(|(key, value)| match key.as_str() {
        "apiVersion" | "kind" => true, // the entry's apiVersion was compared above
        // A body never carries managedFields (plan.rs strips them), so they are not compared.
        "metadata" => serde_json::to_value(&live.metadata).is_ok_and(|meta| contains(&meta, value)),
        _ => match live.data.get(key) {
            Some(have) => contains(have, value),
            None => value.is_null(),
        },
    })
}

/// The fields `manager` set by its last apply (to `subresource`) that `body` leaves out, so
/// applying `body` removes them (or hands them to another manager that also sets them), as
/// paths (`metadata.labels["a/b"]`, `spec.ports[port=80]`). `managed`: the live object's
/// managedFields. Empty when `manager` never applied, or applied another apiVersion (the API
/// server converts between versions; this does not).
pub(crate) fn removed_fields(
    managed: &[ManagedFieldsEntry],
    body: &Value,
    manager: &str,
    subresource: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(fields) = applied_fields(managed, body, manager, subresource) {
        missing(fields, body, Some(""), &mut out);
    }
    out
}

/// The fieldsV1 set of `manager`'s last apply to `subresource`, when it was of `body`'s
/// apiVersion (a set of another version is not translated).
fn applied_fields<'a>(
    managed: &'a [ManagedFieldsEntry],
    body: &Value,
    manager: &str,
    subresource: Option<&str>,
) -> Option<&'a Value> {
    let entry = entry(managed, manager, subresource)?;
    (entry.api_version.as_deref() == body["apiVersion"].as_str())
        .then_some(&entry.fields_v1.as_ref()?.0)
}

/// Adds to `out` each path of the fieldsV1 set `fields` that `body` lacks: `f:<name>` a map
/// key, `k:{...}` a list element with those key fields, `v:<json>` a set element, `i:<n>` an
/// index, `.` the node itself. A path element this version does not know counts as missing
/// (so the apply goes out). `path`: where `fields` sits, to name each missing field; `None`
/// (the skip check, on every write) names none and stops at the first, building no strings.
fn missing(fields: &Value, body: &Value, path: Option<&str>, out: &mut Vec<String>) {
    let Some(fields) = fields.as_object() else {
        return; // a leaf
    };
    for (element, sub) in fields {
        if path.is_none() && !out.is_empty() {
            return;
        }
        if element == "." {
            continue;
        }
        if let Some(key) = element.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Map<String, Value>>(key) else {
                out.push(path.map(|p| format!("{p}[{key}]")).unwrap_or_default());
                continue;
            };
            let here = path.map(|p| format!("{p}[{}]", shown_key(&key)));
            // Some element with these keys must hold everything below (the first that does).
            let mut best: Option<Vec<String>> = None;
            for e in elements_by_key(body, &key) {
                let mut below = Vec::new();
                missing(sub, e, here.as_deref(), &mut below);
                if best.as_ref().is_none_or(|b| below.len() < b.len()) {
                    best = Some(below);
                }
                if best.as_ref().is_some_and(Vec::is_empty) {
                    break; // this element holds everything below
                }
            }
            match best {
                Some(below) => out.extend(below),
                None => out.push(here.unwrap_or_default()),
            }
            continue;
        }
        let (found, here) = if let Some(name) = element.strip_prefix("f:") {
            (body.get(name), path.map(|p| join(p, name)))
        } else if let Some(value) = element.strip_prefix("v:") {
            let found = serde_json::from_str::<Value>(value)
                .ok()
                .and_then(|v| body.as_array()?.iter().find(|e| same(e, &v)));
            (found, path.map(|p| format!("{p}[{value}]")))
        } else if let Some(index) = element.strip_prefix("i:") {
            let found = index.parse::<usize>().ok().and_then(|i| body.get(i));
            (found, path.map(|p| format!("{p}[{index}]")))
        } else {
            (None, path.map(|p| format!("{p}[{element}]")))
        };
        match found {
            Some(child) => missing(sub, child, here.as_deref(), out),
            None => out.push(here.unwrap_or_default()),
        }
    }
}

/// A list element's key fields as a path shows them: `port=80,protocol=TCP`.
fn shown_key(key: &Map<String, Value>) -> String {
    key.iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `path.key`, or `path["key"]` when the key is not a plain name.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// The elements of the list `body` with the key fields `key`. A key field the element leaves
/// out matches too: the API server fills in a defaulted key (a port's `protocol: TCP`) without
/// owning the field, while a key field the element sets is owned, and so checked, below it.
fn elements_by_key<'a>(
    body: &'a Value,
    key: &'a Map<String, Value>,
) -> impl Iterator<Item = &'a Value> + 'a {
    body.as_array().into_iter().flatten().filter(|e| {
        key.iter()
            .all(|(k, v)| e.get(k.as_str()).is_none_or(|have| same(have, v)))
    })
}

/// Whether `have` (the live value) holds everything in `want` (what the apply sends): maps
/// key by key (more keys on the live side are others' or defaults), lists element by element
/// with the same length, anything else equal.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want.iter().all(|(k, w)| match have.get(k) {
            Some(h) => contains(h, w),
            None => w.is_null(),
        }),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| contains(h, w))
        }
        _ => same(have, want),
    }
}

/// Equal values, numbers by value (`2` and `2.0` are one number to the API server).
pub(crate) fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MANAGER: &str = "wasmop.dev/team-a.website";

    /// A live ConfigMap as the API server returns it after our apply of [`body`], plus what
    /// others added: a label, an annotation and their own managedFields entry.
    fn live(fields: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "site", "namespace": "team-a", "uid": "u-2", "resourceVersion": "7",
                "labels": {"wasmop.dev/controller": "website", "team": "web"},
                "annotations": {"note": "kept"},
                "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Website",
                    "name": "site", "uid": "u-1", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [
                    {"manager": MANAGER, "operation": "Apply", "apiVersion": "v1",
                     "fieldsType": "FieldsV1", "fieldsV1": fields},
                    {"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                     "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
                ],
            },
            "data": {"index.html": "<h1>hi</h1>", "extra": "x"},
        }))
        .unwrap()
    }

    fn body() -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "site", "namespace": "team-a",
                "labels": {"wasmop.dev/controller": "website"},
                "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Website",
                    "name": "site", "uid": "u-1", "controller": true, "blockOwnerDeletion": true}]},
            "data": {"index.html": "<h1>hi</h1>"}})
    }

    fn ours() -> Value {
        json!({"f:metadata": {
                "f:labels": {".": {}, "f:wasmop.dev/controller": {}},
                "f:ownerReferences": {".": {}, "k:{\"uid\":\"u-1\"}": {}}},
            "f:data": {".": {}, "f:index.html": {}}})
    }

    #[test]
    fn the_same_body_on_an_object_others_added_to_is_a_no_op() {
        assert!(apply_is_noop(&live(ours()), &body(), MANAGER, None));
    }

    #[test]
    fn a_changed_or_removed_value_is_drift_to_correct() {
        let mut changed = live(ours());
        changed.data["data"]["index.html"] = json!("<h1>edited</h1>");
        assert!(!apply_is_noop(&changed, &body(), MANAGER, None));
        let mut removed = live(ours());
        removed
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("wasmop.dev/controller");
        assert!(!apply_is_noop(&removed, &body(), MANAGER, None));
        let mut owner = live(ours());
        owner.metadata.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert!(!apply_is_noop(&owner, &body(), MANAGER, None));
    }

    #[test]
    fn a_field_the_plugin_stopped_returning_is_removed_by_an_apply() {
        let mut fields = ours();
        fields["f:data"]["f:old"] = json!({});
        assert!(!apply_is_noop(&live(fields), &body(), MANAGER, None));
    }

    #[test]
    fn the_fields_an_apply_would_remove_are_named_by_path() {
        let managed = |fields: Value| live(fields).metadata.managed_fields.unwrap();
        assert!(removed_fields(&managed(ours()), &body(), MANAGER, None).is_empty());
        let mut fields = ours();
        fields["f:data"]["f:old"] = json!({});
        fields["f:metadata"]["f:labels"]["f:app.kubernetes.io/name"] = json!({});
        fields["f:spec"] =
            json!({"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {"f:name": {}}}});
        assert_eq!(
            removed_fields(&managed(fields.clone()), &body(), MANAGER, None),
            [
                "data.old",
                "metadata.labels[\"app.kubernetes.io/name\"]",
                "spec",
            ]
        );
        // Below a list element: the element is there, one of its fields is not.
        let mut with_port = body();
        with_port["spec"] = json!({"ports": [{"port": 80}]});
        let removed = removed_fields(&managed(fields), &with_port, MANAGER, None);
        assert_eq!(
            removed.last().unwrap(),
            "spec.ports[port=80,protocol=TCP].name"
        );
        // Another manager's fields, another subresource or another apiVersion: nothing.
        assert!(removed_fields(&managed(ours()), &json!({}), "someone-else", None).is_empty());
        assert!(removed_fields(&managed(ours()), &json!({}), MANAGER, Some("status")).is_empty());
        let mut v2 = body();
        v2["apiVersion"] = json!("v2");
        assert!(removed_fields(&managed(ours()), &v2, MANAGER, None).is_empty());
    }

    #[test]
    fn a_new_field_in_the_body_is_applied() {
        let mut body = body();
        body["data"]["new"] = json!("v");
        assert!(!apply_is_noop(&live(ours()), &body, MANAGER, None));
    }

    #[test]
    fn without_our_apply_entry_or_of_another_version_or_subresource_it_applies() {
        assert!(!apply_is_noop(&live(ours()), &body(), "someone-else", None));
        assert!(!apply_is_noop(
            &live(ours()),
            &body(),
            MANAGER,
            Some("status")
        ));
        let mut other = live(ours());
        other.metadata.managed_fields.as_mut().unwrap()[0].api_version = Some("v2".into());
        assert!(!apply_is_noop(&other, &body(), MANAGER, None));
        let mut updated = live(ours());
        updated.metadata.managed_fields.as_mut().unwrap()[0].operation = Some("Update".into());
        assert!(!apply_is_noop(&updated, &body(), MANAGER, None));
    }

    #[test]
    fn lists_by_key_and_by_position() {
        let dep = |image: &str, extra_port: bool| -> DynamicObject {
            let mut ports = vec![json!({"containerPort": 80, "protocol": "TCP"})];
            if extra_port {
                ports.push(json!({"containerPort": 81, "protocol": "TCP"}));
            }
            serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "site", "namespace": "team-a", "managedFields": [
                    {"manager": MANAGER, "operation": "Apply", "apiVersion": "apps/v1",
                     "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {
                        "f:containers": {"k:{\"name\":\"web\"}": {
                            ".": {}, "f:name": {}, "f:image": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}, "f:protocol": {}}}}}}}}}}]},
                "spec": {"replicas": 2.0, "template": {"spec": {"containers": [{
                    "name": "web", "image": image, "imagePullPolicy": "IfNotPresent",
                    "ports": ports}]}}},
            }))
            .unwrap()
        };
        let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "site", "namespace": "team-a"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{
                "name": "web", "image": "nginx",
                "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}}});
        assert!(apply_is_noop(&dep("nginx", false), &body, MANAGER, None));
        assert!(!apply_is_noop(&dep("httpd", false), &body, MANAGER, None));
        // Another element in the live list: the apply goes out (a no-op at the server).
        assert!(!apply_is_noop(&dep("nginx", true), &body, MANAGER, None));
        // A key the server defaulted (a port's protocol) and the body leaves out: the live
        // object has it (checked), our entry owns the element but not the field.
        let mut bare = body.clone();
        bare["spec"]["template"]["spec"]["containers"][0]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("protocol");
        let mut defaulted = dep("nginx", false);
        defaulted.metadata.managed_fields.as_mut().unwrap()[0]
            .fields_v1
            .as_mut()
            .unwrap()
            .0["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:ports"]
            ["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]
            .as_object_mut()
            .unwrap()
            .remove("f:protocol");
        assert!(apply_is_noop(&defaulted, &bare, MANAGER, None));
        // Owned (it was sent before), left out now: the apply must go out.
        assert!(!apply_is_noop(&dep("nginx", false), &bare, MANAGER, None));
    }

    #[test]
    fn a_status_apply_is_judged_by_its_own_entry() {
        let parent: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "example.com/v1", "kind": "Website",
            "metadata": {"name": "site", "namespace": "team-a", "uid": "u-1", "managedFields": [
                {"manager": MANAGER, "operation": "Apply", "apiVersion": "example.com/v1",
                 "subresource": "status",
                 "fieldsV1": {"f:status": {".": {}, "f:phase": {}, "f:conditions": {}}}}]},
            "spec": {"content": "x"},
            "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let status = json!({"apiVersion": "example.com/v1", "kind": "Website",
            "metadata": {"name": "site", "namespace": "team-a", "uid": "u-1"},
            "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(apply_is_noop(&parent, &status, MANAGER, Some("status")));
        assert!(!apply_is_noop(&parent, &status, MANAGER, None));
        let mut other = status.clone();
        other["status"]["phase"] = json!("Progressing");
        assert!(!apply_is_noop(&parent, &other, MANAGER, Some("status")));
        let mut fewer = status;
        fewer["status"]
            .as_object_mut()
            .unwrap()
            .remove("conditions");
        assert!(!apply_is_noop(&parent, &fewer, MANAGER, Some("status")));
    }
}
