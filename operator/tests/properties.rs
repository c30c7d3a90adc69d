//! Property tests (issue 20, point 7): whatever a plugin returns and whatever a
//! WasmController spec holds, the operator neither panics nor accepts what it promises to
//! reject, and every rejection says where the problem is.
//!
//! - Plugin responses (`plan::plan`): arbitrary JSON, responses shaped like the ABI with
//!   arbitrary values, valid responses, and valid responses with exactly one injected fault.
//! - Spec handling: `manager::parse_duration` against the CRD's `resyncPeriod` pattern,
//!   `WasmControllerSpec` from arbitrary JSON, `related::validate` on arbitrary JSONPaths.
//! - `plan::Identity`: field managers, label values and finalizers within Kubernetes' limits.
//!
//! 512 cases per property (`PROPTEST_CASES=n` for more); the whole file runs in a few
//! seconds in a debug build. Failures are not persisted to files: a failure found here becomes a named
//! regression test at the end of this file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jsonpath_rust::JsonPath;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use serde_json::{Map, Value, json};
use wasmop::crd::{KindRef, RelatedSpec, WasmControllerSpec};
use wasmop::manager::parse_duration;
use wasmop::reconcile::plan::{
    self, CONTROLLER_LABEL, Identity, Input, MAX_REQUEUE, ObjRef, Owned, Plan,
};
use wasmop_abi::ReconcileResponse;

/// `cases` per property, or `PROPTEST_CASES` for a longer run.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        // Generous: some strategies filter (DNS names) or assume (valid pairs).
        max_global_rejects: cases.max(1024),
        max_local_rejects: (cases * 16).max(65_536),
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------------------------------------
// The reconcile every response is planned for.
// ------------------------------------------------------------------------------------------

const PARENT_API_VERSION: &str = "example.com/v1";
const PARENT_KIND: &str = "Website";
const PARENT_NAME: &str = "site";
const NAMESPACE: &str = "team-a";
const PARENT_UID: &str = "u-1";
/// The declared child kinds (`spec.children`).
const KINDS: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
];
/// The one related object resolved for the call (an allowed `apply` target).
const RELATED: (&str, &str, &str) = ("example.com/v1", "Infra", "infra");
/// The write order `plan` promises (plan.rs `KIND_ORDER`).
const KIND_ORDER: &[&str] = &[
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Role",
    "RoleBinding",
    "Service",
];
/// Metadata the API server owns, stripped from echoed objects.
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

struct Fixture {
    identity: Identity,
    parent: Value,
    kinds: Vec<KindRef>,
    related: Vec<ObjRef>,
    owned: Vec<Owned>,
    finalizing: bool,
}

impl Fixture {
    fn new(owned: Vec<Owned>, finalizing: bool) -> Self {
        Fixture {
            identity: Identity::new(NAMESPACE, "website"),
            parent: json!({"apiVersion": PARENT_API_VERSION, "kind": PARENT_KIND,
                "metadata": {"name": PARENT_NAME, "namespace": NAMESPACE, "uid": PARENT_UID}}),
            kinds: KINDS
                .iter()
                .map(|(api_version, kind)| KindRef {
                    api_version: (*api_version).into(),
                    kind: (*kind).into(),
                })
                .collect(),
            related: vec![obj_ref(RELATED.0, RELATED.1, RELATED.2)],
            owned,
            finalizing,
        }
    }

    fn input(&self) -> Input<'_> {
        Input {
            identity: &self.identity,
            parent: &self.parent,
            child_kinds: &self.kinds,
            related: &self.related,
            owned: &self.owned,
            finalizing: self.finalizing,
        }
    }
}

fn obj_ref(api_version: &str, kind: &str, name: &str) -> ObjRef {
    ObjRef {
        api_version: api_version.into(),
        kind: kind.into(),
        namespace: NAMESPACE.into(),
        name: name.into(),
    }
}

fn parent_ref() -> ObjRef {
    obj_ref(PARENT_API_VERSION, PARENT_KIND, PARENT_NAME)
}

fn declared(api_version: &str, kind: &str) -> bool {
    KINDS.contains(&(api_version, kind))
}

// ------------------------------------------------------------------------------------------
// Oracles, written independently of the code under test.
// ------------------------------------------------------------------------------------------

/// The name rule `plan` applies: Kubernetes' DNS-1123 subdomain (it used to be looser: see
/// `names_with_empty_or_dash_edged_dns_labels_are_refused_with_their_path`).
fn plan_name_ok(s: &str) -> bool {
    dns_subdomain(s)
}

/// Kubernetes' `IsDNS1123Label`: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63.
fn dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-')
}

/// Kubernetes' `IsDNS1123Subdomain`: dot-separated DNS labels, at most 253 in all.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
            !l.is_empty()
                && l.starts_with(alnum)
                && l.ends_with(alnum)
                && l.chars().all(|c| alnum(c) || c == '-')
        })
}

/// A label value / the name part of a qualified name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn qualified_name_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// An Event reason `plan` accepts: `^[A-Z][A-Za-z0-9]{0,127}$`.
fn reason_ok(s: &str) -> bool {
    s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Matches `^([0-9]+(ms|s|m|h))+$` and returns each number with its unit in milliseconds.
fn duration_terms(s: &str) -> Option<Vec<(String, u128)>> {
    let b = s.as_bytes();
    let (mut i, mut terms) = (0, Vec::new());
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = s[start..i].to_string();
        let unit = match (b.get(i), b.get(i + 1)) {
            (Some(b'm'), Some(b's')) => {
                i += 2;
                1
            }
            (Some(b's'), _) => {
                i += 1;
                1_000
            }
            (Some(b'm'), _) => {
                i += 1;
                60_000
            }
            (Some(b'h'), _) => {
                i += 1;
                3_600_000
            }
            _ => return None,
        };
        terms.push((digits, unit));
    }
    (!terms.is_empty()).then_some(terms)
}

/// The total of matched terms in milliseconds (None when it does not fit a u128).
fn duration_total(terms: &[(String, u128)]) -> Option<u128> {
    terms.iter().try_fold(0u128, |total, (digits, unit)| {
        let n: u128 = digits.parse().ok()?;
        total.checked_add(n.checked_mul(*unit)?)
    })
}

// ------------------------------------------------------------------------------------------
// Arbitrary JSON.
// ------------------------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "ownerReferences",
    "uid",
    "controller",
    "generateName",
    "resourceVersion",
    "managedFields",
    "children",
    "status",
    "apply",
    "events",
    "type",
    "reason",
    "message",
    "requeueAfterSeconds",
    "finalized",
    "data",
    "spec",
    "a",
    "b",
];

const STRINGS: &[&str] = &[
    "",
    "v1",
    "apps/v1",
    "example.com/v1",
    "ConfigMap",
    "Deployment",
    "Service",
    "Secret",
    "Website",
    "Infra",
    "site",
    "infra",
    "team-a",
    "team-b",
    "u-1",
    "u-2",
    "a",
    "Normal",
    "Warning",
    "Synced",
    "wasmop.dev/controller",
];

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(STRINGS).prop_map(str::to_owned),
        2 => any::<String>(),
        // Any char at all: NUL, control characters, surrogates' neighbours, ...
        1 => prop::collection::vec(any::<char>(), 0..16).prop_map(String::from_iter),
        1 => "[a-z0-9.-]{0,12}",
        1 => "[a-zA-Z0-9 ]{1000,1100}",
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        text().prop_map(Value::String),
    ]
    .boxed()
}

fn object(entries: Vec<(String, Value)>) -> Value {
    Value::Object(entries.into_iter().collect())
}

/// Any JSON value: nested, wide, deep.
fn json() -> BoxedStrategy<Value> {
    let nested = scalar().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8).prop_map(object),
        ]
    });
    prop_oneof![
        8 => nested,
        // Wide.
        1 => prop::collection::vec(scalar(), 100..400).prop_map(Value::Array),
        1 => prop::collection::vec(("[a-z]{1,6}", scalar()), 50..200).prop_map(|kv| {
            Value::Object(kv.into_iter().collect())
        }),
        // Deep: a value wrapped in up to 300 arrays and objects.
        1 => (scalar(), prop::collection::vec(prop::option::of(prop::sample::select(KEYS)), 1..300))
            .prop_map(|(leaf, wraps)| wraps.into_iter().fold(leaf, |v, w| match w {
                Some(k) => json!({ k: v }),
                None => json!([v]),
            })),
    ]
    .boxed()
}

/// Some of `entries`, each kept or left out.
fn sparse(entries: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        entries
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect(),
    )
}

fn or_json(s: impl Strategy<Value = Value> + 'static, weight: u32) -> BoxedStrategy<Value> {
    prop_oneof![weight => s, 1 => json()].boxed()
}

fn string_from(choices: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop::sample::select(choices)
        .prop_map(|s| Value::String(s.into()))
        .boxed()
}

// ------------------------------------------------------------------------------------------
// Names.
// ------------------------------------------------------------------------------------------

/// A valid child name; small pool first, so that children collide with owned ones.
fn valid_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(&["a", "b", "web", "web-1", "x.y", "0", "site", "infra"][..])
            .prop_map(str::to_owned),
        2 => "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,2}",
        1 => "[a-z0-9]{253}",
    ]
    .boxed()
}

/// A string `plan` must refuse as a name.
fn invalid_name() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[A-Z][a-z0-9]{0,8}",
        "[a-z0-9]{1,5}[A-Z_ /:@][a-z0-9]{1,5}",
        "[-.][a-z0-9]{1,8}",
        "[a-z0-9]{1,8}[-.]",
        "[a-z0-9]{254,300}",
        "[a-z]{1,4}[éß日١٢][a-z]{0,3}",
        any::<String>().prop_filter("valid", |s| !plan_name_ok(s)),
    ]
    .boxed()
}

fn name_ish() -> BoxedStrategy<Value> {
    prop_oneof![
        5 => valid_name().prop_map(Value::String),
        2 => invalid_name().prop_map(Value::String),
        1 => json(),
    ]
    .boxed()
}

fn label_map() -> BoxedStrategy<Map<String, Value>> {
    prop::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8})?", "[a-z0-9]{0,8}", 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
        .boxed()
}

fn parent_owner_reference() -> Value {
    json!({"apiVersion": PARENT_API_VERSION, "kind": PARENT_KIND, "name": PARENT_NAME,
           "uid": PARENT_UID, "controller": true, "blockOwnerDeletion": true})
}

// ------------------------------------------------------------------------------------------
// Responses shaped like the ABI, with arbitrary values anywhere.
// ------------------------------------------------------------------------------------------

fn metadata_ish() -> BoxedStrategy<Value> {
    let owner_reference = prop_oneof![
        3 => Just(parent_owner_reference()),
        1 => string_from(&["u-2", "", "U-1"]).prop_map(|uid| json!({"kind": PARENT_KIND, "uid": uid})),
        1 => json(),
    ];
    let fields = (
        prop::option::of(name_ish()),
        prop::option::of(or_json(string_from(&[NAMESPACE, "team-b"]), 4)),
        prop::option::of(or_json(label_map().prop_map(Value::Object), 3)),
        prop::option::of(or_json(
            prop::collection::vec(owner_reference, 0..3).prop_map(Value::Array),
            3,
        )),
        prop::option::of(or_json(string_from(&["x-"]), 1)),
        prop::option::of(json()),
    );
    or_json(
        fields.prop_map(|(name, ns, labels, refs, generate_name, uid)| {
            sparse(vec![
                ("name", name),
                ("namespace", ns),
                ("labels", labels),
                ("ownerReferences", refs),
                ("generateName", generate_name),
                ("uid", uid),
            ])
        }),
        6,
    )
}

/// A child or `apply` patch: identity fields biased towards declared kinds, the parent and
/// the related object.
fn object_ish() -> BoxedStrategy<Value> {
    (
        prop::option::of(or_json(
            string_from(&["v1", "apps/v1", "example.com/v1", "example.com/v2"]),
            4,
        )),
        prop::option::of(or_json(
            string_from(&[
                "ConfigMap",
                "Deployment",
                "Service",
                "ServiceAccount",
                "Secret",
                "Website",
                "Infra",
            ]),
            4,
        )),
        prop::option::of(metadata_ish()),
        prop::option::of(json()),
        prop::option::of(json()),
    )
        .prop_map(|(api_version, kind, metadata, data, status)| {
            sparse(vec![
                ("apiVersion", api_version),
                ("kind", kind),
                ("metadata", metadata),
                ("data", data),
                ("status", status),
            ])
        })
        .boxed()
}

fn event_ish() -> BoxedStrategy<Value> {
    (
        prop::option::weighted(
            0.9,
            or_json(
                prop_oneof![
                    6 => string_from(&["Normal", "Warning"]),
                    1 => string_from(&["Error", "normal", ""]),
                ],
                8,
            ),
        ),
        prop::option::weighted(
            0.9,
            or_json(
                prop_oneof![
                    3 => valid_reason(),
                    1 => invalid_reason(),
                ]
                .prop_map(Value::String),
                8,
            ),
        ),
        prop::option::weighted(
            0.9,
            or_json(
                prop_oneof![3 => valid_message(), 1 => long_message()].prop_map(Value::String),
                8,
            ),
        ),
        prop::option::weighted(0.05, json()),
    )
        .prop_map(|(type_, reason, message, extra)| {
            sparse(vec![
                ("type", type_),
                ("reason", reason),
                ("message", message),
                ("note", extra),
            ])
        })
        .boxed()
}

fn response_ish() -> BoxedStrategy<Value> {
    let list = |item: BoxedStrategy<Value>| {
        or_json(prop::collection::vec(item, 0..6).prop_map(Value::Array), 5)
    };
    (
        prop::option::of(list(object_ish())),
        prop::option::of(json()),
        prop::option::of(list(object_ish())),
        prop::option::of(or_json(any::<u64>().prop_map(Value::from), 8)),
        prop::option::of(list(event_ish())),
        prop::option::of(or_json(any::<bool>().prop_map(Value::Bool), 3)),
        prop::option::of(prop::option::weighted(0.1, json())),
    )
        .prop_map(
            |(children, status, apply, requeue, events, finalized, unknown)| {
                sparse(vec![
                    ("children", children),
                    ("status", status),
                    ("apply", apply),
                    ("requeueAfterSeconds", requeue),
                    ("events", events),
                    ("finalized", finalized),
                    ("unknownField", unknown.flatten()),
                ])
            },
        )
        .boxed()
}

fn owned() -> BoxedStrategy<Vec<Owned>> {
    prop::collection::vec((0..KINDS.len(), valid_name()), 0..5)
        .prop_map(|owned| {
            owned
                .into_iter()
                .map(|(k, name)| Owned {
                    target: obj_ref(KINDS[k].0, KINDS[k].1, &name),
                    uid: format!("uid-{k}-{name}"),
                })
                .collect()
        })
        .boxed()
}

// ------------------------------------------------------------------------------------------
// Valid responses, and exactly one fault injected into one.
// ------------------------------------------------------------------------------------------

fn valid_reason() -> BoxedStrategy<String> {
    prop_oneof![
        8 => "[A-Z][A-Za-z0-9]{0,12}",
        1 => "[A-Z][A-Za-z0-9]{127}",
    ]
    .boxed()
}

fn invalid_reason() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9][A-Za-z0-9]{0,8}",
        "[A-Z][A-Za-z0-9]{0,5}[ _.:/é-][A-Za-z0-9]{0,5}",
        "[A-Z][A-Za-z0-9]{128,140}",
        "[ÉÀÜ][a-z]{0,5}",
        any::<String>().prop_filter("valid", |s| !reason_ok(s)),
    ]
    .boxed()
}

fn valid_message() -> BoxedStrategy<String> {
    prop_oneof![
        8 => ".{0,64}",
        1 => "[a-z ]{1024}",
        // 1024 bytes exactly, in 2-byte characters.
        1 => Just("é".repeat(512)),
    ]
    .boxed()
}

fn long_message() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z ]{1025,1100}",
        Just(format!("{}x", "é".repeat(512))),
        Just("日".repeat(342)), // 1026 bytes, 342 characters
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct Valid {
    children: Vec<Value>,
    apply: Vec<Value>,
    events: Vec<Value>,
    status: Option<Value>,
    requeue: Option<u64>,
    finalized: bool,
}

impl Valid {
    fn to_json(&self) -> Value {
        let mut r = json!({"children": self.children, "apply": self.apply, "events": self.events,
                           "finalized": self.finalized});
        if let Some(status) = &self.status {
            r["status"] = status.clone();
        }
        if let Some(seconds) = self.requeue {
            r["requeueAfterSeconds"] = seconds.into();
        }
        r
    }
}

/// A valid child of declared kind `k`, with optional echoes of what the API server set.
fn valid_child(k: usize, name: String) -> BoxedStrategy<Value> {
    (
        prop::option::of(label_map()),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(json()),
    )
        .prop_map(
            move |(labels, explicit_ns, echo_owner, echo_server, data)| {
                let mut meta = json!({"name": name});
                if let Some(labels) = labels {
                    meta["labels"] = Value::Object(labels);
                }
                if explicit_ns {
                    meta["namespace"] = NAMESPACE.into();
                }
                if echo_owner {
                    meta["ownerReferences"] = json!([parent_owner_reference()]);
                }
                if echo_server {
                    meta["uid"] = "child-uid".into();
                    meta["resourceVersion"] = "42".into();
                    meta["managedFields"] = json!([{"manager": "kubectl"}]);
                }
                let mut child =
                    json!({"apiVersion": KINDS[k].0, "kind": KINDS[k].1, "metadata": meta});
                if let Some(data) = data {
                    child["data"] = data;
                }
                child
            },
        )
        .boxed()
}

fn valid_patch() -> BoxedStrategy<Value> {
    (
        any::<bool>(),
        prop::option::of(label_map()),
        any::<bool>(),
        prop::option::of(json()),
    )
        .prop_map(|(to_parent, labels, explicit_ns, spec)| {
            let (api_version, kind, name) = if to_parent {
                (PARENT_API_VERSION, PARENT_KIND, PARENT_NAME)
            } else {
                RELATED
            };
            let mut patch =
                json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
            if let Some(labels) = labels {
                patch["metadata"]["labels"] = Value::Object(labels);
            }
            if explicit_ns {
                patch["metadata"]["namespace"] = NAMESPACE.into();
            }
            if let Some(spec) = spec {
                patch["spec"] = spec;
            }
            patch
        })
        .boxed()
}

fn valid_event() -> BoxedStrategy<Value> {
    (
        string_from(&["Normal", "Warning"]),
        valid_reason(),
        valid_message(),
    )
        .prop_map(
            |(type_, reason, message)| json!({"type": type_, "reason": reason, "message": message}),
        )
        .boxed()
}

fn valid_response() -> BoxedStrategy<Valid> {
    let children = prop::collection::btree_set((0..KINDS.len(), valid_name()), 0..6)
        .prop_map(Vec::from_iter)
        .prop_shuffle()
        .prop_flat_map(|ids| {
            ids.into_iter()
                .map(|(k, name)| valid_child(k, name))
                .collect::<Vec<_>>()
        });
    let status = prop::option::of(prop::collection::vec((key(), json()), 0..4).prop_map(object));
    (
        children,
        // One patch per target: a second patch to an object is refused (it would replace the
        // first under the one patch field manager).
        prop::collection::vec(valid_patch(), 0..3).prop_map(|mut patches| {
            let mut seen = Vec::new();
            patches.retain(|p| {
                let target = (p["kind"].clone(), p["metadata"]["name"].clone());
                let first = !seen.contains(&target);
                seen.push(target);
                first
            });
            patches
        }),
        prop::collection::vec(valid_event(), 0..3),
        status,
        prop::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(
            |(children, apply, events, status, requeue, finalized)| Valid {
                children,
                apply,
                events,
                status,
                requeue,
                finalized,
            },
        )
        .boxed()
}

/// One thing wrong with an otherwise valid response.
#[derive(Clone, Debug)]
enum Fault {
    ChildNotObject(Value),
    ChildMetadataNotObject(Value),
    /// None: removed.
    ChildApiVersion(Option<Value>),
    ChildKind(Option<Value>),
    ChildUndeclared(String, String),
    /// None: removed.
    ChildName(Option<Value>),
    ChildNamespace(Value),
    /// A second child with the identity of the chosen one, inserted after it.
    ChildDuplicate(Index),
    ChildOwnerReferences(Value),
    ChildLabels(Value),
    EventReason(String),
    EventMessage(String),
    ApplyNotObject(Value),
    ApplyTarget(String, String, String),
    ApplyNamespace(Value),
    ApplyName(Option<Value>),
    ApplyParentStatus(Value),
    Status(Value),
}

fn not_object() -> BoxedStrategy<Value> {
    json().prop_filter("object", |v| !v.is_object()).boxed()
}

fn not_string() -> BoxedStrategy<Value> {
    json().prop_filter("string", |v| !v.is_string()).boxed()
}

fn fault() -> BoxedStrategy<Fault> {
    let missing_or_bad = || {
        prop::option::of(prop_oneof![
            Just(Value::String(String::new())),
            not_string()
        ])
    };
    let other_namespace = prop_oneof![
        3 => "[a-z0-9-]{0,12}"
            .prop_filter("parent's", |s| s != NAMESPACE)
            .prop_map(Value::String),
        1 => string_from(&["Team-A", "team-a ", " team-a", "team-a."]),
        1 => not_string(),
    ];
    let foreign_refs = prop_oneof![
        2 => (
            prop::collection::vec(Just(parent_owner_reference()), 0..3),
            prop_oneof![
                "[a-z0-9-]{0,8}"
                    .prop_filter("parent's", |s| s != PARENT_UID)
                    .prop_map(|uid| json!({"kind": PARENT_KIND, "name": PARENT_NAME, "uid": uid})),
                Just(json!({"kind": PARENT_KIND, "name": PARENT_NAME})),
                any::<i64>().prop_map(|uid| json!({"uid": uid})),
                not_object(),
            ],
            any::<Index>(),
        )
            .prop_map(|(mut refs, foreign, at)| {
                refs.insert(at.index(refs.len() + 1), foreign);
                Value::Array(refs)
            }),
        1 => json().prop_filter("array", |v| !v.is_array()),
    ];
    let undeclared = (
        prop::sample::select(&["v1", "apps/v1", "example.com/v1", "V1", ""][..]),
        prop::sample::select(
            &[
                "ConfigMap",
                "Deployment",
                "Service",
                "Secret",
                "Website",
                "configmap",
                "Configmap",
            ][..],
        ),
    )
        .prop_filter("declared or empty", |(v, k)| {
            !v.is_empty() && !declared(v, k)
        })
        .prop_map(|(v, k)| (v.to_owned(), k.to_owned()));
    let other_target = (
        prop::sample::select(&["example.com/v1", "example.com/v2", "v1"][..]),
        prop::sample::select(&["Website", "Infra", "ConfigMap"][..]),
        prop_oneof![
            prop::sample::select(&["site", "infra", "other"][..]).prop_map(str::to_owned),
            valid_name(),
        ],
    )
        .prop_filter("parent or related", |(v, k, n)| {
            let t = obj_ref(v, k, n);
            t != parent_ref() && t != obj_ref(RELATED.0, RELATED.1, RELATED.2)
        })
        .prop_map(|(v, k, n)| (v.to_owned(), k.to_owned(), n));
    prop_oneof![
        not_object().prop_map(Fault::ChildNotObject),
        not_object().prop_map(Fault::ChildMetadataNotObject),
        missing_or_bad().prop_map(Fault::ChildApiVersion),
        missing_or_bad().prop_map(Fault::ChildKind),
        undeclared.prop_map(|(v, k)| Fault::ChildUndeclared(v, k)),
        prop::option::of(prop_oneof![
            3 => invalid_name().prop_map(Value::String),
            1 => not_string(),
        ])
        .prop_map(Fault::ChildName),
        other_namespace.clone().prop_map(Fault::ChildNamespace),
        any::<Index>().prop_map(Fault::ChildDuplicate),
        foreign_refs.prop_map(Fault::ChildOwnerReferences),
        not_object().prop_map(Fault::ChildLabels),
        invalid_reason().prop_map(Fault::EventReason),
        long_message().prop_map(Fault::EventMessage),
        not_object().prop_map(Fault::ApplyNotObject),
        other_target.prop_map(|(v, k, n)| Fault::ApplyTarget(v, k, n)),
        other_namespace.prop_map(Fault::ApplyNamespace),
        prop::option::of(prop_oneof![
            3 => invalid_name().prop_map(Value::String),
            1 => not_string(),
        ])
        .prop_map(Fault::ApplyName),
        json().prop_map(Fault::ApplyParentStatus),
        json()
            .prop_filter("object or null", |v| !v.is_object() && !v.is_null())
            .prop_map(Fault::Status),
    ]
    .boxed()
}

fn set(v: &mut Value, key: &str, value: Option<Value>) {
    let map = v.as_object_mut().expect("an object");
    match value {
        Some(value) => map.insert(key.into(), value),
        None => map.remove(key),
    };
}

/// Injects `fault` at entry `at` of its list (adding a valid entry to an empty list).
/// Returns the faulty entry's path and the path the problem must be reported at.
fn inject(r: &mut Valid, fault: Fault, at: Index) -> (String, String) {
    use Fault::*;
    match fault {
        ChildNotObject(_)
        | ChildMetadataNotObject(_)
        | ChildApiVersion(_)
        | ChildKind(_)
        | ChildUndeclared(..)
        | ChildName(_)
        | ChildNamespace(_)
        | ChildDuplicate(_)
        | ChildOwnerReferences(_)
        | ChildLabels(_) => {
            if r.children.is_empty() {
                r.children
                    .push(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "injected-child"}}));
            }
            let i = at.index(r.children.len());
            let entry = format!("children[{i}]");
            let child = &mut r.children[i];
            let path = match fault {
                ChildNotObject(v) => {
                    *child = v;
                    entry.clone()
                }
                ChildMetadataNotObject(v) => {
                    child["metadata"] = v;
                    format!("{entry}.metadata")
                }
                ChildApiVersion(v) => {
                    set(child, "apiVersion", v);
                    format!("{entry}.apiVersion")
                }
                ChildKind(v) => {
                    set(child, "kind", v);
                    format!("{entry}.kind")
                }
                ChildUndeclared(api_version, kind) => {
                    child["apiVersion"] = api_version.into();
                    child["kind"] = kind.into();
                    format!("{entry}.kind")
                }
                ChildName(v) => {
                    set(&mut child["metadata"], "name", v);
                    format!("{entry}.metadata.name")
                }
                ChildNamespace(v) => {
                    child["metadata"]["namespace"] = v;
                    format!("{entry}.metadata.namespace")
                }
                ChildOwnerReferences(v) => {
                    child["metadata"]["ownerReferences"] = v;
                    format!("{entry}.metadata.ownerReferences")
                }
                ChildLabels(v) => {
                    child["metadata"]["labels"] = v;
                    format!("{entry}.metadata.labels")
                }
                ChildDuplicate(after) => {
                    let copy = child.clone();
                    let len = r.children.len();
                    let j = i + 1 + after.index(len - i);
                    r.children.insert(j, copy);
                    let entry = format!("children[{j}]");
                    return (entry.clone(), format!("{entry}.metadata.name"));
                }
                _ => unreachable!(),
            };
            (entry, path)
        }
        EventReason(_) | EventMessage(_) => {
            if r.events.is_empty() {
                r.events
                    .push(json!({"type": "Normal", "reason": "Synced", "message": ""}));
            }
            let i = at.index(r.events.len());
            let entry = format!("events[{i}]");
            let path = match fault {
                EventReason(s) => {
                    r.events[i]["reason"] = s.into();
                    format!("{entry}.reason")
                }
                EventMessage(s) => {
                    r.events[i]["message"] = s.into();
                    format!("{entry}.message")
                }
                _ => unreachable!(),
            };
            (entry, path)
        }
        ApplyNotObject(_) | ApplyTarget(..) | ApplyNamespace(_) | ApplyName(_)
        | ApplyParentStatus(_) => {
            if r.apply.is_empty() {
                r.apply.push(
                    json!({"apiVersion": PARENT_API_VERSION, "kind": PARENT_KIND,
                                    "metadata": {"name": PARENT_NAME}}),
                );
            }
            let i = at.index(r.apply.len());
            let entry = format!("apply[{i}]");
            let patch = &mut r.apply[i];
            let path = match fault {
                ApplyNotObject(v) => {
                    *patch = v;
                    entry.clone()
                }
                ApplyTarget(api_version, kind, name) => {
                    patch["apiVersion"] = api_version.into();
                    patch["kind"] = kind.into();
                    patch["metadata"]["name"] = name.into();
                    entry.clone()
                }
                ApplyNamespace(v) => {
                    patch["metadata"]["namespace"] = v;
                    format!("{entry}.metadata.namespace")
                }
                ApplyName(v) => {
                    set(&mut patch["metadata"], "name", v);
                    format!("{entry}.metadata.name")
                }
                ApplyParentStatus(v) => {
                    patch["apiVersion"] = PARENT_API_VERSION.into();
                    patch["kind"] = PARENT_KIND.into();
                    patch["metadata"]["name"] = PARENT_NAME.into();
                    patch["status"] = v;
                    format!("{entry}.status")
                }
                _ => unreachable!(),
            };
            (entry, path)
        }
        Status(v) => {
            r.status = Some(v);
            ("status".into(), "status".into())
        }
    }
}

// ------------------------------------------------------------------------------------------
// What every outcome of `plan` must satisfy.
// ------------------------------------------------------------------------------------------

fn kind_rank(kind: &str) -> usize {
    KIND_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KIND_ORDER.len())
}

/// Plans `response` twice (the same result both times) and checks whichever outcome.
fn plan_and_check(
    fx: &Fixture,
    response: &ReconcileResponse,
) -> Result<Result<Plan, Vec<plan::Problem>>, TestCaseError> {
    let run = || match plan::plan(&fx.input(), response.clone()) {
        Ok(plan) => Ok(Ok(plan)),
        Err(plan::Error::Invalid { problems }) => Ok(Err(problems)),
        Err(other) => Err(TestCaseError::fail(format!(
            "the parent is fine, yet: {other}"
        ))),
    };
    let (first, second) = (run()?, run()?);
    prop_assert_eq!(&first, &second, "plan is not deterministic");
    match &first {
        Ok(plan) => check_plan(fx, response, plan)?,
        Err(problems) => check_problems(response, problems)?,
    }
    Ok(first)
}

fn check_problems(
    response: &ReconcileResponse,
    problems: &[plan::Problem],
) -> Result<(), TestCaseError> {
    prop_assert!(!problems.is_empty(), "Invalid without a problem");
    for p in problems {
        prop_assert!(!p.message.is_empty(), "problem without a message: {:?}", p);
        let indexed = [
            ("children[", response.children.len()),
            ("apply[", response.apply.len()),
            ("events[", response.events.len()),
        ];
        let in_list = indexed.iter().find_map(|(prefix, len)| {
            let rest = p.path.strip_prefix(prefix)?;
            let (i, _) = rest.split_once(']')?;
            Some(i.parse::<usize>().is_ok_and(|i| i < *len))
        });
        prop_assert!(
            in_list == Some(true) || p.path == "status" || p.path.starts_with("status."),
            "problem path {:?} names no entry of the response: {:?}",
            p.path,
            p
        );
    }
    Ok(())
}

fn check_plan(
    fx: &Fixture,
    response: &ReconcileResponse,
    plan: &Plan,
) -> Result<(), TestCaseError> {
    let mut desired = BTreeSet::new();
    for child in &plan.children {
        let t = &child.target;
        prop_assert!(
            declared(&t.api_version, &t.kind),
            "undeclared kind planned: {}",
            t
        );
        prop_assert_eq!(&t.namespace, NAMESPACE);
        prop_assert!(plan_name_ok(&t.name), "bad name planned: {:?}", t.name);
        prop_assert!(desired.insert(t.clone()), "child planned twice: {}", t);
        let body = &child.body;
        prop_assert_eq!(&body["apiVersion"], &json!(t.api_version));
        prop_assert_eq!(&body["kind"], &json!(t.kind));
        let meta = &body["metadata"];
        prop_assert_eq!(&meta["name"], &json!(t.name));
        prop_assert_eq!(&meta["namespace"], &json!(NAMESPACE));
        let refs = meta["ownerReferences"].as_array();
        prop_assert!(
            refs.is_some_and(|r| r.len() == 1),
            "not exactly one ownerReference: {}",
            meta
        );
        let owner = &meta["ownerReferences"][0];
        prop_assert_eq!(&owner["uid"], &json!(PARENT_UID));
        prop_assert_eq!(&owner["controller"], &json!(true));
        prop_assert_eq!(&owner["kind"], &json!(PARENT_KIND));
        prop_assert_eq!(&owner["apiVersion"], &json!(PARENT_API_VERSION));
        prop_assert_eq!(&owner["name"], &json!(PARENT_NAME));
        prop_assert_eq!(
            &meta["labels"][CONTROLLER_LABEL],
            &json!(fx.identity.label_value())
        );
        for f in SERVER_FIELDS {
            prop_assert!(meta.get(f).is_none(), "{} kept in {}", f, meta);
        }
    }
    let ranks: Vec<_> = plan
        .children
        .iter()
        .map(|c| kind_rank(&c.target.kind))
        .collect();
    prop_assert!(
        ranks.is_sorted(),
        "children not in write order: {:?}",
        ranks
    );
    if fx.finalizing {
        prop_assert!(plan.children.is_empty() && plan.prune.is_empty());
    } else {
        prop_assert_eq!(plan.children.len(), response.children.len());
        // Prune is exactly the owned children not desired, in cache order.
        let expected: Vec<_> = fx
            .owned
            .iter()
            .filter(|o| !desired.contains(&o.target))
            .cloned()
            .collect();
        prop_assert_eq!(&plan.prune, &expected);
    }
    for pruned in &plan.prune {
        prop_assert!(
            !desired.contains(&pruned.target),
            "desired child pruned: {}",
            pruned.target
        );
    }
    prop_assert_eq!(plan.patches.len(), response.apply.len());
    for patch in &plan.patches {
        let to_parent = patch.target == parent_ref();
        prop_assert!(
            to_parent || fx.related.contains(&patch.target),
            "patch to {}",
            patch.target
        );
        prop_assert!(!(to_parent && patch.body.get("status").is_some()));
    }
    match (&plan.status, &response.status) {
        (None, None) => {}
        (Some(status), Some(returned)) => {
            prop_assert_eq!(&status.target, &parent_ref());
            prop_assert_eq!(&status.body["status"], returned);
            prop_assert_eq!(&status.body["metadata"]["name"], &json!(PARENT_NAME));
        }
        (planned, returned) => prop_assert!(false, "status {:?} for {:?}", planned, returned),
    }
    prop_assert_eq!(&plan.events, &response.events);
    prop_assert_eq!(
        plan.requeue_after,
        response
            .requeue_after_seconds
            .map(|s| Duration::from_secs(s).min(MAX_REQUEUE))
    );
    prop_assert_eq!(plan.finalized, response.finalized);
    Ok(())
}

/// Deserialises `value` like the host does, then plans it if it is a response at all.
fn check_value(fx: &Fixture, value: Value) -> Result<(), TestCaseError> {
    match serde_json::from_value::<ReconcileResponse>(value) {
        Err(e) => prop_assert!(!e.to_string().is_empty()),
        Ok(response) => {
            let _outcome = plan_and_check(fx, &response)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Any JSON at all.
    #[test]
    fn arbitrary_json_never_panics_and_problems_name_their_entry(
        value in json(), owned in owned(), finalizing in any::<bool>(),
    ) {
        check_value(&Fixture::new(owned, finalizing), value)?;
    }

    /// JSON shaped like a response, with arbitrary values anywhere.
    #[test]
    fn response_shaped_json_never_panics_and_problems_name_their_entry(
        value in response_ish(), owned in owned(), finalizing in any::<bool>(),
    ) {
        check_value(&Fixture::new(owned, finalizing), value)?;
    }

    /// A valid response is planned as it is: declared children beside the parent, owned by
    /// it and labelled, in write order; prune is exactly what is owned and no longer desired.
    #[test]
    fn valid_responses_are_planned(valid in valid_response(), owned in owned()) {
        let fx = Fixture::new(owned, false);
        let response: ReconcileResponse = serde_json::from_value(valid.to_json())
            .map_err(|e| TestCaseError::fail(format!("valid response refused: {e}")))?;
        let planned = plan_and_check(&fx, &response)?;
        prop_assert!(planned.is_ok(), "valid response refused: {:?}", planned);
    }

    /// One fault in a valid response: refused, naming the fault's path, and nothing else.
    #[test]
    fn one_fault_is_refused_at_its_path(
        mut valid in valid_response(), fault in fault(), at in any::<Index>(), owned in owned(),
    ) {
        let (entry, path) = inject(&mut valid, fault, at);
        let fx = Fixture::new(owned, false);
        let response: ReconcileResponse = serde_json::from_value(valid.to_json())
            .map_err(|e| TestCaseError::fail(format!("does not deserialise: {e}")))?;
        let Err(problems) = plan_and_check(&fx, &response)? else {
            return Err(TestCaseError::fail(format!("accepted a fault at {path}")));
        };
        prop_assert!(
            problems.iter().any(|p| p.path == path),
            "expected a problem at {}, got {:?}", path, problems
        );
        for p in &problems {
            prop_assert!(
                p.path == entry || p.path.starts_with(&format!("{entry}.")),
                "a problem outside the faulty entry {}: {:?}", entry, problems
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// Spec handling.
// ------------------------------------------------------------------------------------------

/// `spec.resyncPeriod`'s pattern, read from the CRD the API server enforces.
fn resync_pattern() -> String {
    let crd = serde_json::to_value(wasmop::crd::crd()).expect("the CRD serialises");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["resyncPeriod"]["pattern"]
        .as_str()
        .expect("resyncPeriod has a pattern")
        .to_owned()
}

#[test]
fn the_crd_pattern_is_the_one_these_properties_check() {
    assert_eq!(resync_pattern(), r"^([0-9]+(ms|s|m|h))+$");
}

/// Strings matching the CRD pattern, generated from the pattern itself (numbers of up to 32
/// digits).
fn matching_duration() -> BoxedStrategy<String> {
    let pattern = resync_pattern();
    let body = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .expect("an anchored pattern");
    proptest::string::string_regex(body)
        .expect("proptest handles the pattern")
        .boxed()
}

fn duration_ish() -> BoxedStrategy<String> {
    prop_oneof![
        2 => any::<String>(),
        3 => "[0-9msh]{0,12}",
        3 => "([0-9]{1,4}(ms|s|m|h)){1,4}",
        2 => "[0-9 +.umshµ-]{0,10}",
        2 => matching_duration(),
        // A matching string with one character changed or inserted.
        2 => (matching_duration(), any::<Index>(), any::<char>(), any::<bool>()).prop_map(
            |(s, at, c, replace)| {
                let mut chars: Vec<char> = s.chars().collect();
                let i = at.index(chars.len() + 1);
                if replace && i < chars.len() {
                    chars[i] = c;
                } else {
                    chars.insert(i, c);
                }
                chars.into_iter().collect()
            }
        ),
    ]
    .boxed()
}

/// Whether the total fits the u64 milliseconds `parse_duration` adds up (the CRD pattern has
/// no bound; a longer period than ~584 million years is refused as invalid).
fn total_fits_u64(terms: &[(String, u128)]) -> bool {
    duration_total(terms).is_some_and(|t| t <= u128::from(u64::MAX))
}

proptest! {
    #![proptest_config(config(512))]

    /// `parse_duration` gives a duration only for what the CRD accepts, and then its value.
    #[test]
    fn parse_duration_accepts_only_what_the_crd_pattern_accepts(s in duration_ish()) {
        let parsed = parse_duration(&s);
        let terms = duration_terms(&s);
        if let Some(d) = parsed {
            let terms = terms.ok_or_else(|| {
                TestCaseError::fail(format!("{s:?} parsed to {d:?} but the CRD refuses it"))
            })?;
            prop_assert!(d > Duration::ZERO);
            prop_assert_eq!(Some(d.as_millis()), duration_total(&terms), "{:?}", s);
        }
    }

    /// Everything the CRD accepts with a positive total that fits u64 milliseconds parses.
    #[test]
    fn parse_duration_agrees_with_the_crd_pattern(s in duration_ish()) {
        let parsed = parse_duration(&s);
        match duration_terms(&s) {
            None => prop_assert_eq!(parsed, None, "{:?} is refused by the CRD", s),
            Some(terms) if total_fits_u64(&terms) => {
                let total = duration_total(&terms).expect("fits");
                prop_assert_eq!(
                    parsed.map(|d| d.as_millis()),
                    (total > 0).then_some(total),
                    "{:?}", s
                );
            }
            Some(_) => prop_assert_eq!(parsed, None, "{:?} overflows", s),
        }
    }
}

fn kind_ref_ish() -> BoxedStrategy<Value> {
    or_json(
        (
            prop::option::of(or_json(string_from(&["v1", "apps/v1", ""]), 3)),
            prop::option::of(or_json(string_from(&["ConfigMap", "Website", ""]), 3)),
        )
            .prop_map(|(v, k)| sparse(vec![("apiVersion", v), ("kind", k)])),
        4,
    )
}

fn jsonpath_ish() -> BoxedStrategy<String> {
    let segment = prop_oneof![
        "\\.[a-z]{1,6}",
        "\\.\\.[a-z]{1,4}",
        Just(".*".to_owned()),
        Just("..*".to_owned()),
        Just("[*]".to_owned()),
        "\\[-?[0-9]{1,3}\\]",
        "\\[[0-9]{15,25}\\]",
        "\\[-?[0-9]{0,3}:-?[0-9]{0,3}(:-?[0-9]{0,3})?\\]",
        "\\['[a-z .'\\\\]{0,5}'\\]",
        "\\[\"[a-z ]{0,5}\"\\]",
        "\\[[0-9],[0-9]\\]",
        "\\[\\?@\\.[a-z]{1,4} ?(==|!=|<|>|<=|>=) ?('[a-z]{0,3}'|-?[0-9]{1,3}(\\.[0-9])?|true|false|null|@\\.[a-z])\\]",
        "\\[\\?\\(?!?@(\\.[a-z]{1,4})?\\)?( ?(&&|\\|\\|) ?@\\.[a-z])?\\]",
        "\\[\\?(length|count|match|search|value)\\((@(\\.[a-z]{1,3})?|'[a-z.*]{0,4}')(, ?'[a-z.*(\\[]{0,4}')?\\)( ?[<>=!]=? ?[0-9])?\\]",
    ];
    prop_oneof![
        2 => any::<String>(),
        2 => "[$@.\\[\\]*?()'\"=<>!&|,:0-9a-z -]{0,40}",
        6 => (
            prop_oneof![8 => Just("$"), 1 => Just("@"), 1 => Just("")],
            prop::collection::vec(segment, 0..6),
        )
            .prop_map(|(root, segments)| format!("{root}{}", segments.concat())),
        // Deep nesting, on both sides of jsonpath-rust's limit of 128 (contract paths have no
        // length limit in the CRD).
        1 => (
            1usize..200,
            prop::sample::select(&[("(", ")"), ("!(", ")"), ("(@.a == 1 && ", ")"), ("@.a[?", "]")][..]),
        )
            .prop_map(|(n, (open, close))| format!("$[?{}@.a{}]", open.repeat(n), close.repeat(n))),
    ]
    .boxed()
}

fn related_ish() -> BoxedStrategy<Value> {
    let selector = or_json(
        (
            prop::option::of(label_map().prop_map(Value::Object)),
            prop::option::of(or_json(
                prop::collection::vec(
                    (
                        "[a-z]{1,4}",
                        string_from(&["In", "NotIn", "Exists", "Nope"]),
                        prop::collection::vec("[a-z]{0,3}", 0..3),
                    )
                        .prop_map(
                            |(k, op, values)| json!({"key": k, "operator": op, "values": values}),
                        ),
                    0..3,
                )
                .prop_map(Value::Array),
                3,
            )),
        )
            .prop_map(|(labels, exprs)| {
                sparse(vec![("matchLabels", labels), ("matchExpressions", exprs)])
            }),
        3,
    );
    (
        prop::option::of(or_json(
            "[a-zA-Z][a-zA-Z0-9_-]{0,10}".prop_map(Value::String),
            4,
        )),
        prop::option::of(or_json(jsonpath_ish().prop_map(Value::String), 4)),
        prop::option::of(or_json(
            prop::collection::vec(
                ("[a-z.]{0,8}", prop::option::of("[A-Z][a-z]{0,6}"))
                    .prop_map(|(g, k)| json!({"group": g, "kind": k})),
                0..3,
            )
            .prop_map(Value::Array),
            3,
        )),
        prop::option::of(or_json(
            prop::collection::btree_map("[a-z]{1,6}", jsonpath_ish(), 0..3).prop_map(|m| json!(m)),
            3,
        )),
        prop::option::of(kind_ref_ish()),
        prop::option::of(selector),
    )
        .prop_map(|(name, ref_, allowed, contract, kind, selector)| {
            let mut entry = sparse(vec![
                ("name", name),
                ("ref", ref_),
                ("allowedKinds", allowed),
                ("contract", contract),
                ("selector", selector),
            ]);
            if let (Some(Value::Object(kind)), Value::Object(map)) = (kind, &mut entry) {
                map.extend(kind);
            }
            entry
        })
        .boxed()
}

fn spec_ish() -> BoxedStrategy<Value> {
    let plugin = or_json(
        (
            prop::option::of(or_json(
                prop_oneof![
                    ("[a-z-]{0,8}", "[a-z.]{0,8}")
                        .prop_map(|(n, k)| json!({"configMap": {"name": n, "key": k}})),
                    "[a-z/.]{0,12}".prop_map(|f| json!({"file": f})),
                    Just(json!({"configMap": {"name": "p", "key": "k"}, "file": "/p.wasm"})),
                    Just(json!({})),
                ],
                4,
            )),
            prop::option::of(json()),
            prop::option::of(or_json(
                (any::<u32>(), any::<i64>(), any::<u64>())
                    .prop_map(|(m, t, f)| json!({"memoryMiB": m, "timeoutMs": t, "fuel": f})),
                3,
            )),
            prop::option::of(or_json(any::<bool>().prop_map(Value::Bool), 3)),
        )
            .prop_map(|(source, config, limits, finalize)| {
                sparse(vec![
                    ("source", source),
                    ("config", config),
                    ("limits", limits),
                    ("finalize", finalize),
                ])
            }),
        6,
    );
    (
        prop::option::of(kind_ref_ish()),
        prop::option::of(or_json(
            prop::collection::vec(kind_ref_ish(), 0..4).prop_map(Value::Array),
            4,
        )),
        prop::option::of(or_json(
            prop::collection::vec(related_ish(), 0..3).prop_map(Value::Array),
            4,
        )),
        prop::option::of(plugin),
        prop::option::of(or_json("[a-z-]{0,10}".prop_map(Value::String), 3)),
        prop::option::of(or_json(duration_ish().prop_map(Value::String), 3)),
        prop::option::of(or_json(any::<i64>().prop_map(Value::from), 2)),
    )
        .prop_map(
            |(parent, children, related, plugin, sa, resync, concurrency)| {
                sparse(vec![
                    ("parent", parent),
                    ("children", children),
                    ("related", related),
                    ("plugin", plugin),
                    ("serviceAccountName", sa),
                    ("resyncPeriod", resync),
                    ("maxConcurrentReconciles", concurrency),
                ])
            },
        )
        .boxed()
}

fn related(name: &str, ref_: Option<String>, contract: BTreeMap<String, String>) -> RelatedSpec {
    RelatedSpec {
        name: name.into(),
        ref_,
        allowed_kinds: Vec::new(),
        contract,
        contract_fields: BTreeMap::new(),
        contract_versions: vec![],
        api_version: None,
        kind: None,
        selector: None,
    }
}

/// `related::validate` either accepts every path of the entry or names the entry and one of
/// its paths.
fn check_related(entry: &RelatedSpec) -> Result<(), TestCaseError> {
    match wasmop::reconcile::related::validate(entry) {
        Ok(()) => {}
        Err(e) => {
            let message = e.to_string();
            prop_assert!(
                message.starts_with(&format!("spec.related[{}]", entry.name)),
                "{:?} does not name the entry",
                message
            );
            let wasmop::reconcile::related::Error::BadPath { name, path, .. } = &e else {
                return Err(TestCaseError::fail(format!("not BadPath: {e}")));
            };
            prop_assert_eq!(name, &entry.name);
            prop_assert!(
                entry.ref_.as_ref() == Some(path) || entry.contract.values().any(|p| p == path),
                "{:?} is none of the entry's paths",
                path
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Any spec JSON deserialises or not without panicking; one that does survives a round
    /// trip, and its resync period and related paths can be checked without panicking.
    #[test]
    fn specs_from_arbitrary_json_never_panic(value in prop_oneof![4 => spec_ish(), 1 => json()]) {
        match serde_json::from_value::<WasmControllerSpec>(value) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok(spec) => {
                let again: WasmControllerSpec =
                    serde_json::from_value(serde_json::to_value(&spec).expect("serialises"))
                        .map_err(|e| TestCaseError::fail(format!("round trip: {e}")))?;
                prop_assert_eq!(&again, &spec);
                if let Some(period) = &spec.resync_period {
                    let _ = parse_duration(period);
                }
                for entry in &spec.related {
                    check_related(entry)?;
                }
            }
        }
    }

    /// Any JSONPath in `ref` or `contract`: accepted, or refused naming the entry.
    #[test]
    fn related_paths_are_validated_without_panicking(
        name in "[a-zA-Z][a-zA-Z0-9_-]{0,62}",
        ref_ in prop::option::of(jsonpath_ish()),
        contract in prop::collection::btree_map("[a-z]{1,8}", jsonpath_ish(), 0..3),
    ) {
        check_related(&related(&name, ref_, contract))?;
    }

    /// A path `validate` accepts can be evaluated on any parent or referenced object (what
    /// `related::resolve` does with user data) without panicking.
    #[test]
    fn validated_paths_evaluate_on_any_object_without_panicking(
        path in jsonpath_ish(), value in json(),
    ) {
        let entry = related("r", Some(path.clone()), BTreeMap::new());
        if wasmop::reconcile::related::validate(&entry).is_ok() {
            let hits = value.query(&path);
            prop_assert!(hits.is_ok(), "validated path {:?} failed: {:?}", path, hits.err());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Identities.
// ------------------------------------------------------------------------------------------

fn namespace() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
        1 => "[a-z0-9]{1,3}",
        1 => "[a-z0-9]{63}",
    ]
    .boxed()
}

/// A DNS subdomain of up to 253 characters, biased towards the lengths where shortening
/// starts (`<namespace>.<name>` around 63).
fn object_name() -> BoxedStrategy<String> {
    let label = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?";
    prop_oneof![
        2 => prop::collection::vec(label, 1..6).prop_map(|labels| {
            let joined = labels.join(".");
            let cut = &joined[..joined.len().min(253)];
            cut.trim_end_matches(['-', '.']).to_owned()
        }),
        2 => "[a-z0-9]([a-z0-9.-]{50,70}[a-z0-9])",
        1 => "[a-z0-9]{1,10}",
        1 => "[a-z0-9]([a-z0-9.-]{251}[a-z0-9])",
    ]
    .prop_filter("a DNS subdomain", |s| dns_subdomain(s))
    .boxed()
}

fn check_identity(ns: &str, name: &str) -> Result<Identity, TestCaseError> {
    let id = Identity::new(ns, name);
    prop_assert_eq!(&id.controller, name);
    let fm = &id.field_manager;
    prop_assert!(fm.len() <= 128, "field manager {:?} too long", fm);
    let part = fm
        .strip_prefix("wasmop.dev/")
        .ok_or_else(|| TestCaseError::fail(format!("field manager {fm:?}")))?;
    prop_assert!(
        part.chars().count() <= 63,
        "reporting controller name {:?}",
        part
    );
    prop_assert!(
        part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric()),
        "{:?} must start and end with a letter or digit",
        part
    );
    prop_assert!(id.finalizer_manager().len() <= 128);
    let label = id.label_value();
    prop_assert!(
        qualified_name_part(&label),
        "label value {:?} (at most 63, alphanumeric at both ends)",
        label
    );
    let finalizer = id.finalizer();
    let finalizer_name = finalizer
        .strip_prefix("wasmop.dev/")
        .ok_or_else(|| TestCaseError::fail(format!("finalizer {finalizer:?}")))?;
    prop_assert!(
        qualified_name_part(finalizer_name),
        "finalizer {:?}",
        finalizer
    );
    Ok(id)
}

/// A second (namespace, name) close to the first: same namespace, a name differing in one
/// character, one character longer or shorter, or the name's first character moved to the
/// namespace.
fn near(ns: &str, name: &str, how: u8, at: Index, c: char) -> (String, String) {
    let mut chars: Vec<char> = name.chars().collect();
    let i = at.index(chars.len());
    match how % 4 {
        0 => chars[i] = c,
        1 => chars.push(c),
        2 if chars.len() > 1 => {
            chars.pop();
        }
        _ if chars.len() > 1 => {
            let first = chars.remove(0);
            return (format!("{ns}{first}"), chars.into_iter().collect());
        }
        _ => chars.push(c),
    }
    (ns.to_owned(), chars.into_iter().collect())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn identities_fit_kubernetes_limits(ns in namespace(), name in object_name()) {
        prop_assume!(dns_label(&ns));
        check_identity(&ns, &name)?;
    }

    /// Distinct (namespace, name) pairs give distinct field managers: unrelated pairs and
    /// pairs that differ in one place. (A name crafted to spell out another's shortened id
    /// cannot exist: see `a_shortened_field_manager_is_never_a_name_another_controller_could_have`.)
    #[test]
    fn distinct_controllers_have_distinct_field_managers(
        a in (namespace(), object_name()),
        b in (namespace(), object_name()),
        how in any::<u8>(), at in any::<Index>(), c in prop::sample::select(&['a', 'z', '0', '9', '-', '.'][..]),
        use_near in any::<bool>(),
    ) {
        let b = if use_near { near(&a.0, &a.1, how, at, c) } else { b };
        prop_assume!(dns_label(&a.0) && dns_label(&b.0));
        prop_assume!(dns_subdomain(&a.1) && dns_subdomain(&b.1));
        prop_assume!(a != b);
        let (x, y) = (check_identity(&a.0, &a.1)?, check_identity(&b.0, &b.1)?);
        prop_assert_ne!(&x.field_manager, &y.field_manager, "{:?} and {:?}", a, b);
        if a.0 == b.0 {
            // Same namespace: label values and finalizers must differ too.
            prop_assert_ne!(x.label_value(), y.label_value(), "{:?} and {:?}", a, b);
            prop_assert_ne!(x.finalizer(), y.finalizer(), "{:?} and {:?}", a, b);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Regressions: what the properties found, with their shrunk inputs (all fixed).
// ------------------------------------------------------------------------------------------

fn problems_of(response: Value) -> Vec<plan::Problem> {
    let fx = Fixture::new(Vec::new(), false);
    let response = serde_json::from_value(response.clone()).expect("a response");
    match plan::plan(&fx.input(), response) {
        Err(plan::Error::Invalid { problems }) => problems,
        other => panic!("accepted: {other:?}"),
    }
}

/// The CRD accepts a number of any length before each unit; `parse_duration` refuses any
/// above u32::MAX, so such a WasmController passes `kubectl apply` and then sits in
/// `InvalidSpec` ("is not a duration like 30s, 5m or 1h").
#[test]
fn resync_periods_with_numbers_over_u32_max_parse() {
    let s = "4300000000ms"; // shrunk by parse_duration_agrees_with_the_crd_pattern
    assert!(duration_terms(s).is_some(), "the CRD accepts {s:?}");
    assert_eq!(
        parse_duration(s),
        Some(Duration::from_millis(4_300_000_000))
    );
}

/// `<namespace>.<name>` over 63 characters is shortened to its first 54 characters, '-' and
/// 8 hex digits of its sha256: a valid name in itself. The controller of that name in the
/// same namespace gets the same field manager (and so takes over the other's applied fields).
#[test]
fn a_shortened_field_manager_is_never_a_name_another_controller_could_have() {
    // Shrunk by a pair property where the second name is crafted from the first's id.
    let (ns, name) = (
        "0",
        "0a-a0aa0aa.0a00a0a0a0a00a0a-000-0-0-a-00-00a--00a-a-00-aa-aa-a",
    );
    let long = Identity::new(ns, name);
    let crafted = long
        .field_manager
        .strip_prefix(&format!("wasmop.dev/{ns}."))
        .expect("shortened ids keep the namespace")
        .to_owned();
    // The shortened id carries '_', which no object name may: no controller can be named so.
    assert!(
        !dns_subdomain(&crafted),
        "{crafted:?} must not be a valid name"
    );
}

/// The same for label values and finalizers (the controller's name shortened to 63): two
/// controllers of one namespace and parent kind then take each other's children as their
/// own (ownership is the parent's uid plus this label) and share a finalizer.
#[test]
fn a_shortened_label_value_is_never_a_name_another_controller_could_have() {
    // Shrunk by a property crafting the second name from the first.
    let name = "0-aa--0a0aa-0-0aa0aa000a.0a0a00a---a---aaa-0-0-00000-aa000-aa0aa";
    let long = Identity::new("ns", name);
    let crafted = long.label_value();
    // The shortened label carries '_', which no object name may: no controller can be named so.
    assert!(
        !dns_subdomain(&crafted),
        "{crafted:?} must not be a valid name"
    );
}

/// `plan` checks names against a looser rule than Kubernetes' DNS-1123 subdomain: empty
/// DNS labels and labels starting or ending with '-' pass, and are refused only by the dry
/// run, without a path into the response.
#[test]
fn names_with_empty_or_dash_edged_dns_labels_are_refused_with_their_path() {
    for name in ["0.-0" /* shrunk */, "a..b", "a-.b"] {
        assert!(!dns_subdomain(name));
        let problems = problems_of(json!({"children": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}]}));
        assert!(
            problems
                .iter()
                .any(|p| p.path == "children[0].metadata.name"),
            "{name:?}: {problems:?}"
        );
    }
}

/// The labels check promises "an object of strings" but checks only for an object: a
/// number is accepted and refused only by the dry run (and null is sent to the API server).
#[test]
fn labels_whose_values_are_not_strings_are_refused_with_their_path() {
    for labels in [json!({"a": null}) /* shrunk */, json!({"a": 1})] {
        let problems = problems_of(
            json!({"children": [{"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": labels}}]}),
        );
        assert!(
            problems
                .iter()
                .any(|p| p.path == "children[0].metadata.labels"),
            "{labels}: {problems:?}"
        );
    }
}

/// A bad JSONPath in `contract` is reported as the entry's `.ref`.
#[test]
fn a_bad_contract_path_is_reported_as_the_contract_field() {
    let contract = BTreeMap::from([("ready".to_owned(), "$[".to_owned())]);
    let entry = related("infra", Some("$.spec.infraRef".into()), contract);
    let message = wasmop::reconcile::related::validate(&entry)
        .expect_err("`$[` is not a JSONPath")
        .to_string();
    assert!(
        message.starts_with("spec.related[infra].contract"),
        "{message}"
    );
}
