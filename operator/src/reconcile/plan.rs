//! Turns a plugin response into a plan of writes: validate everything first, then describe
//! the server-side applies (children, `apply` patches, status) and the prune set.
//!
//! Pure: no I/O, no clock. The controller executes the plan.
//!
//! # Guarantees
//! - The whole response is validated before anything is written: one problem anywhere means
//!   [`Error::Invalid`] listing every problem (with its JSON path and the fix), and no writes.
//! - A child can only be of a declared kind, in the parent's namespace; it is given a
//!   controller ownerReference to the parent and the `wasmop.dev/controller` label, so pruning
//!   can never delete what this controller did not create. (Whether an existing object of that
//!   name is ours to write is decided against the live object by the controller.)
//! - Children come out in write order: kinds others depend on first ([`KIND_ORDER`]).
//! - `apply` patches may only target the parent or a related object resolved for this call.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value, json};
use wasmop_abi::{Event, ReconcileResponse};

use crate::crd::KindRef;

/// Label on every child: which WasmController made it.
pub const CONTROLLER_LABEL: &str = "wasmop.dev/controller";
/// Longest `requeueAfterSeconds` honoured (a day); longer values are clamped.
pub const MAX_REQUEUE: Duration = Duration::from_secs(86_400);
/// Metadata the API server owns; a plugin that echoes a live object back gets these stripped.
const SERVER_FIELDS: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// An object identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} ({}) in {}",
            self.kind, self.name, self.api_version, self.namespace
        )
    }
}

/// A child this controller currently owns (from the shared caches).
#[derive(Clone, Debug, PartialEq)]
pub struct Owned {
    pub target: ObjRef,
    pub uid: String,
}

/// Who is writing.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The WasmController's name.
    pub controller: String,
    /// SSA field manager and Event reporting controller, `wasmop.dev/<id>` where `<id>` is
    /// `<namespace>.<name>` shortened to 63 characters with a hash (Kubernetes allows 128
    /// bytes for a field manager and a 63-character name part in a reporting controller).
    pub field_manager: String,
}

impl Identity {
    pub fn new(namespace: &str, name: &str) -> Self {
        Identity {
            controller: name.into(),
            field_manager: format!(
                "wasmop.dev/{}",
                short_name(&format!("{namespace}.{name}"), 63)
            ),
        }
    }

    /// The field manager of this controller's finalizer on parents (its own, so an `apply`
    /// patch the plugin sends to the parent can never drop the finalizer by omission).
    pub fn finalizer_manager(&self) -> String {
        format!("{}-finalizer", self.field_manager)
    }

    /// The field manager of this controller's `apply` patches to the parent and related
    /// objects (decorator pattern). Its own, so a patch can never strip the fields this
    /// controller's children or status are applied with (one field manager owns exactly what
    /// its last apply to an object sent).
    pub fn patch_manager(&self) -> String {
        format!("{}-patch", self.field_manager)
    }

    /// The controller id (`<namespace>.<name>`, shortened) behind one of this controller's
    /// field managers, as found in a managedFields entry or a conflict message.
    pub fn of_manager(manager: &str) -> Option<&str> {
        let id = manager.strip_prefix("wasmop.dev/")?;
        Some(
            id.strip_suffix("-patch")
                .or_else(|| id.strip_suffix("-finalizer"))
                .unwrap_or(id),
        )
    }

    /// The `wasmop.dev/controller` label value (label values are at most 63 characters).
    pub fn label_value(&self) -> String {
        short_name(&self.controller, 63)
    }

    /// This controller's finalizer on parents.
    pub fn finalizer(&self) -> String {
        format!("wasmop.dev/{}", short_name(&self.controller, 63))
    }
}

/// `name` if it fits in `max` bytes, else a prefix of it, `_` and 8 hex digits of its sha256.
/// `_` is allowed in label values, finalizer and field-manager names but in no object name,
/// so a shortened id can never equal another controller's name spelled out.
fn short_name(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.into();
    }
    let digest = crate::plugin::source::sha256_hex(name.as_bytes());
    format!(
        "{}_{}",
        name[..max - 9].trim_end_matches(['-', '.']),
        &digest[..8]
    )
}

/// Everything [`plan`] needs besides the response.
pub struct Input<'a> {
    pub identity: &'a Identity,
    /// The parent as the API server returned it.
    pub parent: &'a Value,
    pub child_kinds: &'a [KindRef],
    /// Related objects resolved for this call: the only other `apply` targets allowed.
    pub related: &'a [ObjRef],
    pub owned: &'a [Owned],
    /// True during `finalize`: children are neither applied nor pruned.
    pub finalizing: bool,
}

/// One server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    pub target: ObjRef,
    pub body: Value,
}

/// The validated writes of one reconcile, in the order they are executed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub children: Vec<Apply>,
    pub prune: Vec<Owned>,
    pub patches: Vec<Apply>,
    /// SSA body for the parent's status subresource.
    pub status: Option<Apply>,
    pub events: Vec<Event>,
    pub requeue_after: Option<Duration>,
    pub finalized: bool,
}

/// One thing wrong with a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// JSON path in the response, e.g. `children[1].metadata.name`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Operator-wide limits on one plugin response (`wasmop run` flags). A response over any of
/// them writes nothing ([`Error::TooLarge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseLimits {
    pub children: usize,
    pub events: usize,
    pub apply: usize,
    pub output_bytes: usize,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits {
            children: 500,
            events: 50,
            apply: 50,
            output_bytes: 8 << 20,
        }
    }
}

impl ResponseLimits {
    /// The size of the raw output, before it is parsed.
    ///
    /// # Errors
    /// [`Error::TooLarge`] naming the limit and the flag that sets it.
    pub fn check_output(&self, bytes: usize) -> Result<()> {
        too_large(
            "bytes of output",
            bytes,
            self.output_bytes,
            "max-response-bytes",
        )
    }

    /// The number of children, events and `apply` patches.
    ///
    /// # Errors
    /// [`Error::TooLarge`] for the first one over its limit.
    pub fn check(&self, response: &ReconcileResponse) -> Result<()> {
        too_large(
            "children",
            response.children.len(),
            self.children,
            "max-response-children",
        )?;
        too_large(
            "events",
            response.events.len(),
            self.events,
            "max-response-events",
        )?;
        too_large(
            "apply patches",
            response.apply.len(),
            self.apply,
            "max-response-apply",
        )
    }
}

fn too_large(what: &'static str, count: usize, limit: usize, flag: &'static str) -> Result<()> {
    if count > limit {
        return Err(Error::TooLarge {
            what,
            count,
            limit,
            flag,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid plugin response, nothing was written: {}", list(.problems))]
    Invalid { problems: Vec<Problem> },
    #[error(
        "response too large, nothing was written: {count} {what}, over the limit of {limit} (the operator's --{flag}; return fewer, or ask the admin to raise it)"
    )]
    TooLarge {
        what: &'static str,
        count: usize,
        limit: usize,
        flag: &'static str,
    },
    #[error("parent has no metadata.{field}")]
    Parent { field: &'static str },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Validates `response` and plans its writes.
///
/// # Errors
/// [`Error::Invalid`] with every problem found; nothing in the response is then applied.
pub fn plan(input: &Input<'_>, response: ReconcileResponse) -> Result<Plan> {
    let parent = parent_ref(input.parent)?;
    let uid = input.parent["metadata"]["uid"]
        .as_str()
        .ok_or(Error::Parent { field: "uid" })?;
    let mut problems = Vec::new();
    let mut bad = |path: String, message: String| problems.push(Problem { path, message });

    let (children, desired) = if input.finalizing {
        (Vec::new(), BTreeSet::new()) // children are neither applied nor pruned
    } else {
        plan_children(input, &parent, uid, response.children, &mut bad)
    };
    let patches = plan_patches(input, &parent, response.apply, &mut bad);
    let status = plan_status(input, &parent, response.status, &mut bad);
    check_events(&response.events, &mut bad);
    if !problems.is_empty() {
        return Err(Error::Invalid { problems });
    }

    let prune = if input.finalizing {
        Vec::new()
    } else {
        input
            .owned
            .iter()
            .filter(|o| !desired.contains(&key(&o.target)))
            .cloned()
            .collect()
    };
    Ok(Plan {
        children,
        prune,
        patches,
        status,
        events: response.events,
        requeue_after: response
            .requeue_after_seconds
            .filter(|s| *s > 0) // 0 is "no requeue", as in controller-runtime
            .map(|s| Duration::from_secs(s).min(MAX_REQUEUE)),
        finalized: response.finalized,
    })
}

/// A child's identity within the parent's namespace: (apiVersion, kind, name).
type ChildKey = (String, String, String);

fn key(target: &ObjRef) -> ChildKey {
    (
        target.api_version.clone(),
        target.kind.clone(),
        target.name.clone(),
    )
}

/// Validates the desired children and gives each the ownerReference and label. Returns them
/// in write order, and the set of desired child keys (everything else owned is pruned).
fn plan_children(
    input: &Input<'_>,
    parent: &ObjRef,
    uid: &str,
    returned: Vec<Value>,
    bad: &mut impl FnMut(String, String),
) -> (Vec<Apply>, BTreeSet<ChildKey>) {
    let mut children = Vec::new();
    let mut desired = BTreeSet::new();
    for (i, child) in returned.into_iter().enumerate() {
        let path = format!("children[{i}]");
        let Some((target, mut body)) = object_ref(child, &parent.namespace, &path, bad) else {
            continue;
        };
        let declared = input
            .child_kinds
            .iter()
            .any(|k| k.api_version == target.api_version && k.kind == target.kind);
        if !declared {
            bad(
                format!("{path}.kind"),
                format!(
                    "{} {} is not declared in spec.children: add {{apiVersion: {}, kind: {}}} to spec.children or stop returning it",
                    target.kind, target.api_version, target.api_version, target.kind
                ),
            );
            continue;
        }
        if !desired.insert(key(&target)) {
            bad(
                format!("{path}.metadata.name"),
                format!(
                    "duplicate child {} {}: each child must be returned once",
                    target.kind, target.name
                ),
            );
            continue;
        }
        if let Err(message) = strip_parent_owner_reference(&mut body, uid) {
            bad(format!("{path}.metadata.ownerReferences"), message);
            continue;
        }
        let meta = body["metadata"]
            .as_object_mut()
            .expect("checked by object_ref");
        meta.insert(
            "ownerReferences".into(),
            json!([{
                "apiVersion": input.parent["apiVersion"], "kind": input.parent["kind"],
                "name": parent.name, "uid": uid, "controller": true, "blockOwnerDeletion": true,
            }]),
        );
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        match labels.as_object_mut() {
            Some(labels) => {
                for (key, value) in labels.iter() {
                    if let Some(problem) = label_problem(key, value) {
                        bad(format!("{path}.metadata.labels"), problem);
                    }
                }
                labels.insert(
                    CONTROLLER_LABEL.into(),
                    Value::String(input.identity.label_value()),
                );
            }
            None => bad(
                format!("{path}.metadata.labels"),
                "must be an object of strings".into(),
            ),
        }
        children.push(Apply { target, body });
    }
    children.sort_by_key(|c| kind_order(&c.target.kind)); // stable: otherwise response order
    (children, desired)
}

/// Validates `apply` patches: only to the parent (not its status) or a related object.
fn plan_patches(
    input: &Input<'_>,
    parent: &ObjRef,
    returned: Vec<Value>,
    bad: &mut impl FnMut(String, String),
) -> Vec<Apply> {
    let mut patches = Vec::new();
    let mut seen: Vec<(ObjRef, usize)> = Vec::new();
    for (i, patch) in returned.into_iter().enumerate() {
        let path = format!("apply[{i}]");
        let Some((target, body)) = object_ref(patch, &parent.namespace, &path, bad) else {
            continue;
        };
        if target != *parent && !input.related.contains(&target) {
            bad(
                path,
                format!(
                    "{} {} is neither the parent nor a related object of this call: apply may only patch those",
                    target.kind, target.name
                ),
            );
            continue;
        }
        if body.get("status").is_some() && target == *parent {
            bad(
                format!("{path}.status"),
                "set the parent's status with the top-level `status` field instead".into(),
            );
            continue;
        }
        if let Some((_, first)) = seen.iter().find(|(t, _)| *t == target) {
            bad(
                path,
                format!(
                    "{} {} is already patched by apply[{first}]: merge them into one patch (with one field manager, a second patch to an object replaces the first)",
                    target.kind, target.name
                ),
            );
            continue;
        }
        seen.push((target.clone(), i));
        patches.push(Apply { target, body });
    }
    patches
}

/// The fields an apply body sets, as the API server spells them in conflicts (`.status.ready`,
/// `.metadata.labels.team`): leaves, or objects [`FIELD_DEPTH`] deep; lists as a whole. The
/// target's own identity (apiVersion, kind, name, namespace) is not a field it writes.
pub fn written_fields(body: &Value) -> Vec<String> {
    fn walk(value: &Value, path: String, depth: usize, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if depth < FIELD_DEPTH && !map.is_empty() => {
                for (key, v) in map {
                    walk(v, format!("{path}.{key}"), depth + 1, out);
                }
            }
            _ => out.push(path),
        }
    }
    let mut out = Vec::new();
    let Some(map) = body.as_object() else {
        return out;
    };
    for (key, value) in map {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    if !matches!(k.as_str(), "name" | "namespace" | "uid") {
                        walk(v, format!(".metadata.{k}"), 2, &mut out);
                    }
                }
            }
            _ => walk(value, format!(".{key}"), 1, &mut out),
        }
    }
    out
}

/// How deep [`written_fields`] names fields.
pub const FIELD_DEPTH: usize = 4;

/// Wraps the returned status for the parent's status subresource.
fn plan_status(
    input: &Input<'_>,
    parent: &ObjRef,
    returned: Option<Value>,
    bad: &mut impl FnMut(String, String),
) -> Option<Apply> {
    match returned {
        None => None,
        Some(Value::Object(status)) => Some(Apply {
            target: parent.clone(),
            body: json!({
                "apiVersion": input.parent["apiVersion"], "kind": input.parent["kind"],
                "metadata": {"name": parent.name, "namespace": parent.namespace},
                "status": status,
            }),
        }),
        Some(other) => {
            bad(
                "status".into(),
                format!("must be an object, got {}", type_name(&other)),
            );
            None
        }
    }
}

fn check_events(events: &[Event], bad: &mut impl FnMut(String, String)) {
    for (i, ev) in events.iter().enumerate() {
        let reason_ok = !ev.reason.is_empty()
            && ev.reason.len() <= 128
            && ev
                .reason
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
            && ev.reason.chars().all(|c| c.is_ascii_alphanumeric());
        if !reason_ok {
            bad(
                format!("events[{i}].reason"),
                format!(
                    "{:?} must be UpperCamelCase, 1-128 letters and digits, e.g. Synced",
                    ev.reason
                ),
            );
        }
        if ev.message.len() > 1024 {
            bad(
                format!("events[{i}].message"),
                "is longer than 1024 bytes: shorten it".into(),
            );
        }
    }
}

/// Kinds other children commonly depend on, in the order they are written (what Helm does
/// too); every other kind follows in the order the plugin returned it.
const KIND_ORDER: &[&str] = &[
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Role",
    "RoleBinding",
    "Service",
];

fn kind_order(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// Accepts a child echoed back with its ownerReference to this parent (wasmop sets it again)
/// and rejects any other ownerReference.
fn strip_parent_owner_reference(body: &mut Value, parent_uid: &str) -> Result<(), String> {
    let Some(refs) = body["metadata"].get("ownerReferences") else {
        return Ok(());
    };
    let only_parent = refs
        .as_array()
        .is_some_and(|refs| refs.iter().all(|r| r["uid"].as_str() == Some(parent_uid)));
    if !only_parent {
        return Err(
            "only an ownerReference to this parent may be returned (wasmop sets it \
             itself): remove the others"
                .into(),
        );
    }
    body["metadata"]
        .as_object_mut()
        .expect("checked by object_ref")
        .remove("ownerReferences");
    Ok(())
}

fn parent_ref(parent: &Value) -> Result<ObjRef> {
    let s = |v: &Value, field| v.as_str().map(String::from).ok_or(Error::Parent { field });
    Ok(ObjRef {
        api_version: s(&parent["apiVersion"], "apiVersion")?,
        kind: s(&parent["kind"], "kind")?,
        namespace: s(&parent["metadata"]["namespace"], "namespace")?,
        name: s(&parent["metadata"]["name"], "name")?,
    })
}

/// Checks the identity fields of a returned object and fills in the namespace.
fn object_ref(
    mut obj: Value,
    namespace: &str,
    path: &str,
    bad: &mut impl FnMut(String, String),
) -> Option<(ObjRef, Value)> {
    let Value::Object(map) = &mut obj else {
        bad(
            path.into(),
            format!("must be an object, got {}", type_name(&obj)),
        );
        return None;
    };
    let mut field = |key: &str| match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => {
            bad(
                format!("{path}.{key}"),
                format!(
                    "is required (a non-empty string), e.g. {}",
                    if key == "kind" { "ConfigMap" } else { "v1" }
                ),
            );
            None
        }
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        bad(format!("{path}.metadata"), "must be an object".into());
        return None;
    };
    for f in SERVER_FIELDS {
        meta.remove(*f);
    }
    let name = match meta.get("name") {
        Some(Value::String(n)) if is_dns_subdomain(n) => Some(n.clone()),
        Some(Value::String(n)) => {
            bad(
                format!("{path}.metadata.name"),
                format!(
                    "{n:?} is not a valid name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                ),
            );
            None
        }
        _ => {
            bad(format!("{path}.metadata.name"), "is required (generateName is not supported: names must be stable so reconciles are idempotent)".into());
            None
        }
    };
    match meta.get("namespace") {
        None => {
            meta.insert("namespace".into(), Value::String(namespace.into()));
        }
        Some(Value::String(ns)) if ns == namespace => {}
        Some(other) => {
            bad(
                format!("{path}.metadata.namespace"),
                format!(
                    "{other} is not the parent's namespace {namespace:?}: omit it, objects live beside their parent"
                ),
            );
            return None;
        }
    }
    Some((
        ObjRef {
            api_version: api_version?,
            kind: kind?,
            namespace: namespace.into(),
            name: name?,
        },
        obj,
    ))
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters,
/// digits and '-', each starting and ending with a letter or digit.
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

/// Why a label is not valid, if it is not: a key `[prefix/]name` (prefix a DNS subdomain,
/// name at most 63 of `[A-Za-z0-9_.-]` starting and ending alphanumeric) and a string value
/// (empty, or such a name).
fn label_problem(key: &str, value: &Value) -> Option<String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let key_ok = match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && name_ok(name),
        None => name_ok(key),
    };
    if !key_ok {
        return Some(format!(
            "{key:?} is not a valid label key: [prefix/]name, name at most 63 letters, digits, '-', '_' or '.'"
        ));
    }
    match value {
        Value::String(v) if v.is_empty() || name_ok(v) => None,
        Value::String(v) => Some(format!(
            "{key}: {v:?} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )),
        other => Some(format!("{key}: must be a string, got {}", type_name(other))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmop_abi::EventType;

    fn parent() -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Website",
               "metadata": {"name": "site", "namespace": "team-a", "uid": "u-1"}})
    }
    fn kinds() -> Vec<KindRef> {
        vec![
            KindRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
            },
            KindRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
            },
        ]
    }
    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}})
    }
    fn owned(name: &str) -> Owned {
        Owned {
            target: ObjRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: "team-a".into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
        }
    }
    fn run(response: Value, owned: &[Owned]) -> Result<Plan> {
        run_as(response, owned, false)
    }
    fn run_as(response: Value, owned: &[Owned], finalizing: bool) -> Result<Plan> {
        let id = Identity::new("team-a", "website");
        let (p, k) = (parent(), kinds());
        let input = Input {
            identity: &id,
            parent: &p,
            child_kinds: &k,
            related: &[],
            owned,
            finalizing,
        };
        plan(&input, serde_json::from_value(response).unwrap())
    }
    fn problems(r: Result<Plan>) -> Vec<String> {
        match r {
            Err(Error::Invalid { problems }) => problems
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn children_get_namespace_owner_reference_and_controller_label() {
        let plan = run(json!({"children": [cm("a")]}), &[]).unwrap();
        let body = &plan.children[0].body;
        assert_eq!(body["metadata"]["namespace"], "team-a");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(body["metadata"]["labels"][CONTROLLER_LABEL], "website");
    }

    #[test]
    fn owned_children_no_longer_desired_are_pruned_and_desired_ones_kept() {
        let plan = run(
            json!({"children": [cm("keep")]}),
            &[owned("keep"), owned("gone")],
        )
        .unwrap();
        assert_eq!(plan.prune, vec![owned("gone")]);
    }

    #[test]
    fn one_bad_child_rejects_the_whole_response() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        let p = problems(run(
            json!({"children": [cm("ok"), secret], "status": {"x": 1}}),
            &[owned("ok")],
        ));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("children[1].kind: Secret v1 is not declared in spec.children"),
            "{p:?}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let cases = [
            (
                json!({"children": [{"kind": "ConfigMap", "metadata": {"name": "a"}}]}),
                "children[0].apiVersion: is required",
            ),
            (
                json!({"children": [cm("Bad_Name")]}),
                "children[0].metadata.name: \"Bad_Name\" is not a valid name",
            ),
            (
                json!({"children": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "x-"}}]}),
                "children[0].metadata.name: is required",
            ),
            (
                json!({"children": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "other"}}]}),
                "children[0].metadata.namespace: \"other\" is not the parent's namespace",
            ),
            (
                json!({"children": [cm("a"), cm("a")]}),
                "children[1].metadata.name: duplicate child ConfigMap a",
            ),
            (
                json!({"children": ["nope"]}),
                "children[0]: must be an object, got a string",
            ),
            (
                json!({"status": [1]}),
                "status: must be an object, got an array",
            ),
            (
                json!({"events": [{"type": "Normal", "reason": "not camel", "message": "m"}]}),
                "events[0].reason: \"not camel\" must be UpperCamelCase",
            ),
            (
                json!({"apply": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}]}),
                "apply[0]: Secret x is neither the parent nor a related object",
            ),
            (
                json!({"apply": [{"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site"}, "status": {}}]}),
                "apply[0].status: set the parent's status with the top-level `status` field",
            ),
            (
                json!({"apply": [
                    {"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site", "labels": {"a": "b"}}},
                    {"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site", "annotations": {"c": "d"}}}]}),
                "apply[1]: Website site is already patched by apply[0]: merge them",
            ),
            (
                json!({"children": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "ownerReferences": [{"uid": "other"}]}}]}),
                "children[0].metadata.ownerReferences: only an ownerReference to this parent",
            ),
        ];
        for (response, expected) in cases {
            let p = problems(run(response.clone(), &[]));
            assert!(
                p.iter().any(|m| m.starts_with(expected)),
                "{response}: expected {expected:?}, got {p:?}"
            );
        }
    }

    #[test]
    fn server_populated_metadata_is_stripped_from_echoed_objects() {
        let mut child = cm("a");
        child["metadata"]["resourceVersion"] = json!("42");
        child["metadata"]["uid"] = json!("x");
        let plan = run(json!({"children": [child]}), &[]).unwrap();
        let meta = &plan.children[0].body["metadata"];
        assert!(meta.get("resourceVersion").is_none() && meta.get("uid").is_none());
    }

    #[test]
    fn status_is_wrapped_for_the_status_subresource() {
        let plan = run(json!({"status": {"phase": "Ready"}}), &[]).unwrap();
        let status = plan.status.unwrap();
        assert_eq!(status.body["kind"], "Website");
        assert_eq!(status.body["metadata"]["name"], "site");
        assert_eq!(status.body["status"]["phase"], "Ready");
    }

    #[test]
    fn patches_to_the_parent_are_allowed_and_requeue_is_clamped() {
        let patch = json!({"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site", "labels": {"x": "y"}}});
        let plan = run(
            json!({"apply": [patch], "requeueAfterSeconds": 999_999,
                              "events": [{"type": "Warning", "reason": "Slow", "message": "m"}]}),
            &[],
        )
        .unwrap();
        assert_eq!(plan.patches.len(), 1);
        assert_eq!(plan.requeue_after, Some(MAX_REQUEUE));
        assert_eq!(plan.events[0].type_, EventType::Warning);
    }

    #[test]
    fn requeue_zero_means_no_requeue_and_oversized_responses_are_refused() {
        let plan = run(json!({"requeueAfterSeconds": 0}), &[]).unwrap();
        assert_eq!(plan.requeue_after, None);
        let limits = ResponseLimits {
            children: 2,
            ..Default::default()
        };
        let response: ReconcileResponse =
            serde_json::from_value(json!({"children": [cm("a"), cm("b"), cm("c")]})).unwrap();
        let err = limits.check(&response).unwrap_err().to_string();
        assert!(
            err.starts_with("response too large, nothing was written: 3 children, over the limit of 2 (the operator's --max-response-children"),
            "{err}"
        );
        assert!(limits.check_output(9 << 20).is_err());
    }

    #[test]
    fn finalizing_neither_applies_nor_prunes_children() {
        let response = json!({"children": [cm("y")], "finalized": true});
        let plan = run_as(response, &[owned("x")], true).unwrap();
        assert!(plan.children.is_empty() && plan.prune.is_empty() && plan.finalized);
    }

    #[test]
    fn long_controller_names_give_valid_label_values() {
        let id = Identity::new("ns", &"a".repeat(100));
        assert_eq!(id.label_value().len(), 63);
        assert!(id.finalizer().len() <= "wasmop.dev/".len() + 63);
    }

    #[test]
    fn written_fields_are_named_like_the_api_servers_conflicts() {
        let body = json!({"apiVersion": "v1", "kind": "X",
            "metadata": {"name": "a", "namespace": "n", "labels": {"team": "a"}},
            "status": {"ready": true, "conditions": [{"type": "A"}], "deep": {"a": {"b": {"c": 1}}}}});
        assert_eq!(
            written_fields(&body),
            [
                ".metadata.labels.team",
                ".status.conditions",
                ".status.deep.a.b",
                ".status.ready"
            ]
        );
    }

    #[test]
    fn field_managers_and_reporters_fit_kubernetes_limits_for_the_longest_names() {
        let long = Identity::new(&"n".repeat(63), &"w".repeat(253));
        let (prefix, name) = long.field_manager.split_once('/').unwrap();
        assert_eq!(prefix, "wasmop.dev");
        assert!(name.len() <= 63, "reporting controller name part: {name}");
        assert!(long.finalizer_manager().len() <= 128);
        let other = Identity::new(&"n".repeat(63), &format!("{}x", "w".repeat(252)));
        assert_ne!(
            long.field_manager, other.field_manager,
            "shortening keeps ids distinct"
        );
        assert_eq!(Identity::new("a", "b").field_manager, "wasmop.dev/a.b");
    }

    #[test]
    fn an_echoed_child_with_its_owner_reference_to_this_parent_is_accepted() {
        let mut child = cm("a");
        child["metadata"]["ownerReferences"] = json!([{"apiVersion": "example.com/v1",
            "kind": "Website", "name": "site", "uid": "u-1", "controller": true}]);
        child["metadata"]["managedFields"] = json!([{"manager": "x"}]);
        let plan = run(json!({"children": [child]}), &[owned("a")]).unwrap();
        let refs = &plan.children[0].body["metadata"]["ownerReferences"];
        assert_eq!(refs.as_array().unwrap().len(), 1);
        assert_eq!(refs[0]["uid"], "u-1");
        assert!(plan.prune.is_empty());
    }

    #[test]
    fn children_are_written_dependencies_first_then_in_response_order() {
        let child = |kind: &str, name: &str| json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}});
        let id = Identity::new("team-a", "website");
        let kinds: Vec<KindRef> = ["Pod", "ServiceAccount", "ConfigMap", "Service"]
            .iter()
            .map(|k| KindRef {
                api_version: "v1".into(),
                kind: (*k).into(),
            })
            .collect();
        let p = parent();
        let input = Input {
            identity: &id,
            parent: &p,
            child_kinds: &kinds,
            related: &[],
            owned: &[],
            finalizing: false,
        };
        let response = json!({"children": [child("Pod", "b"), child("Service", "s"), child("Pod", "a"),
                                           child("ConfigMap", "c"), child("ServiceAccount", "sa")]});
        let plan = plan(&input, serde_json::from_value(response).unwrap()).unwrap();
        let order: Vec<_> = plan
            .children
            .iter()
            .map(|c| c.target.name.as_str())
            .collect();
        assert_eq!(order, ["sa", "c", "s", "b", "a"]);
    }
}
