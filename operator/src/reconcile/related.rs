//! Resolves `spec.related` entries into the plugin's `request.related`: a referenced object
//! read through its contract fields (Cluster-API-style API contracts), or the objects
//! matching a label selector. Reads are made as the controller's account (from watches the
//! controller opens as that account, or directly for `wasmop explain`), so RBAC decides what
//! a plugin may see.

use std::collections::BTreeMap;

use jsonpath_rust::JsonPath;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::Value;
use wasmop_abi::{Related, RelatedTarget};

use crate::cluster::api_error::readable;
use crate::crd::RelatedSpec;
use crate::reconcile::plan::ObjRef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "spec.related[{name}].contractFields.{field}: {field} is in contract too: name each contract field once"
    )]
    ContractFieldTwice { name: String, field: String },
    #[error("spec.related[{name}].{field}: {path:?} is not a valid JSONPath: {message}")]
    BadPath {
        name: String,
        /// `ref` or `contract.<field>`.
        field: String,
        path: String,
        message: String,
    },
    #[error("spec.related[{name}]: discovering {gvk}: {}", readable(.source))]
    Discovery {
        name: String,
        gvk: String,
        #[source]
        source: kube::Error,
    },
    #[error("spec.related[{name}]: reading {what}: {}", readable(.source))]
    Read {
        name: String,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("spec.related[{name}]: {kind}: {message}")]
    Watch {
        name: String,
        kind: String,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks the JSONPaths of an entry once, when the controller starts.
///
/// # Errors
/// [`Error::BadPath`] naming the entry and the path.
pub fn validate(spec: &RelatedSpec) -> Result<()> {
    if let Some(field) = spec
        .contract_fields
        .keys()
        .find(|f| spec.contract.contains_key(*f))
    {
        return Err(Error::ContractFieldTwice {
            name: spec.name.clone(),
            field: field.clone(),
        });
    }
    let probe = Value::Object(Default::default());
    let contract = spec
        .contract
        .iter()
        .map(|(f, p)| (format!("contract.{f}"), p));
    let contract_fields = spec.contract_fields.iter().flat_map(|(f, cf)| {
        cf.paths
            .iter()
            .enumerate()
            .map(move |(i, p)| (format!("contractFields.{f}.paths[{i}]"), p))
    });
    let paths = spec
        .ref_
        .iter()
        .map(|p| ("ref".to_string(), p))
        .chain(contract)
        .chain(contract_fields);
    for (field, path) in paths {
        if let Err(e) = probe.query(path) {
            return Err(Error::BadPath {
                name: spec.name.clone(),
                field,
                path: path.clone(),
                message: e.to_string(),
            });
        }
    }
    Ok(())
}

fn first(value: &Value, path: &str) -> Option<Value> {
    value
        .query(path)
        .ok()
        .and_then(|hits| hits.first().map(|v| (*v).clone()))
}

/// Where related objects are read from.
pub enum Reads<'a> {
    /// Straight from the API server with this client (`wasmop explain`).
    Direct(&'a Client),
    /// From watches opened as the team's account, noting for `parent` what it refers to, so
    /// a change to a related object re-reconciles exactly the parents that refer to it
    /// ([`crate::reconcile::triggers`]).
    Tracked {
        tracker: &'a crate::reconcile::triggers::Tracker,
        parent: &'a str,
    },
}

impl Reads<'_> {
    fn client(&self) -> &Client {
        match self {
            Reads::Direct(client) => client,
            Reads::Tracked { tracker, .. } => tracker.client(),
        }
    }

    /// The client CRD labels are read with: the operator's own account for a running
    /// controller (a team need not read CRDs), the caller's for `wasmop explain`.
    fn crds(&self) -> &Client {
        match self {
            Reads::Direct(client) => client,
            Reads::Tracked { tracker, .. } => tracker.operator(),
        }
    }

    async fn get(
        &self,
        spec: &RelatedSpec,
        resource: &ApiResource,
        namespace: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>> {
        let read = |source| Error::Read {
            name: spec.name.clone(),
            what: format!("{} {name}", resource.kind),
            source,
        };
        match self {
            Reads::Direct(client) => {
                Api::<DynamicObject>::namespaced_with((*client).clone(), namespace, resource)
                    .get_opt(name)
                    .await
                    .map_err(read)
            }
            Reads::Tracked { tracker, parent } => tracker
                .get(parent, resource, name)
                .await
                .map_err(|e| watch_error(e, spec, resource)),
        }
    }

    async fn list(
        &self,
        spec: &RelatedSpec,
        resource: &ApiResource,
        namespace: &str,
        selector: Option<String>,
    ) -> Result<Vec<DynamicObject>> {
        match self {
            Reads::Direct(client) => {
                let mut params = ListParams::default();
                if let Some(selector) = &selector {
                    params = params.labels(selector);
                }
                let api: Api<DynamicObject> =
                    Api::namespaced_with((*client).clone(), namespace, resource);
                Ok(api
                    .list(&params)
                    .await
                    .map_err(|source| Error::Read {
                        name: spec.name.clone(),
                        what: format!("{} list", resource.kind),
                        source,
                    })?
                    .items)
            }
            Reads::Tracked { tracker, .. } => tracker
                .list(resource, selector)
                .await
                .map_err(|e| watch_error(e, spec, resource)),
        }
    }
}

/// A failed read from the related watches, as an error naming the entry.
fn watch_error(
    e: crate::reconcile::triggers::Error,
    spec: &RelatedSpec,
    resource: &ApiResource,
) -> Error {
    use crate::reconcile::triggers::Error as Read;
    Error::Watch {
        name: spec.name.clone(),
        kind: format!("{} ({})", resource.kind, resource.api_version),
        message: match e {
            Read::Access(e) => format!("{e} (related objects are watched as the account)"),
            Read::Watch(e) => e.to_string(),
        },
    }
}

/// One `spec.related` entry resolved for one parent.
#[derive(Debug, Default)]
pub struct Resolved {
    /// What the plugin gets under `request.related`.
    pub related: Related,
    /// The referenced objects that exist: allowed `apply` targets.
    pub targets: Vec<ObjRef>,
    /// References that cannot be resolved: reported on the WasmController and the parent.
    pub unresolved: Vec<Unresolved>,
    /// A reference waits for something no watch sees (a kind not served yet, a CRD label):
    /// the parent is retried after [`UNRESOLVED_RETRY`].
    pub retry: bool,
}

/// How soon a parent is reconciled again whose reference names a kind that is not served, or
/// whose CRD lacks the contract label (no watch would see either change).
pub const UNRESOLVED_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// A reference that cannot be resolved, by the field it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unresolved {
    /// `spec.related[infra] ($.spec.infrastructureRef)`, with `[i]` for a list's reference.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Resolves one entry for `parent`: its value for the plugin, the objects it may patch, and
/// the references that cannot be resolved (the plugin is still called; `reason` says why).
///
/// # Errors
/// Read failures (e.g. the account may not watch the kind) and failed discovery requests.
pub async fn resolve(
    reads: &Reads<'_>,
    spec: &RelatedSpec,
    parent: &Value,
    namespace: &str,
) -> Result<Resolved> {
    if let Some(path) = &spec.ref_ {
        return resolve_ref(reads, spec, path, parent, namespace).await;
    }
    let (Some(api_version), Some(kind)) = (&spec.api_version, &spec.kind) else {
        return Ok(Resolved::default()); // ruled out by the CRD's CEL rules
    };
    let gvk = crate::cluster::kinds::gvk(api_version, kind);
    let resource = discover(reads.client(), &spec.name, &gvk).await?;
    let selector = spec.selector.as_ref().map(selector_string);
    let list = reads.list(spec, &resource, namespace, selector).await?;
    let mut objects: Vec<Value> = list
        .into_iter()
        .map(|o| crate::cluster::kinds::clean(o, &resource))
        .collect();
    objects.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    Ok(Resolved {
        related: Related {
            objects,
            ..Default::default()
        },
        ..Default::default()
    })
}

/// A reference in one of the shapes wasmop follows.
#[derive(Debug, PartialEq)]
struct Reference {
    group: String,
    /// None: `apiGroup`/`group` without a version (resolved by [`kinds::resource_by_group`]).
    version: Option<String>,
    kind: String,
    name: String,
    namespace: Option<String>,
}

impl Reference {
    /// `{apiVersion, kind, name}`, `{apiGroup, kind, name}` (Cluster API v1beta2) or `{group,
    /// kind, name}` (Gateway API), each with an optional `namespace`; other keys are ignored.
    fn parse(value: &Value) -> Option<Reference> {
        let field = |k: &str| value.get(k).and_then(Value::as_str);
        let non_empty = |k: &str| field(k).filter(|s| !s.is_empty()).map(String::from);
        let (kind, name) = (non_empty("kind")?, non_empty("name")?);
        let (group, version) = match field("apiVersion") {
            Some(api_version) => {
                let gvk = crate::cluster::kinds::gvk(api_version, &kind);
                (
                    gvk.group,
                    Some(gvk.version).filter(|v| !v.is_empty())?.into(),
                )
            }
            None => (field("apiGroup").or(field("group"))?.to_string(), None),
        };
        Some(Reference {
            group,
            version,
            kind,
            name,
            namespace: non_empty("namespace"),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        match &self.version {
            Some(v) if self.group.is_empty() => write!(f, "{}/{} ({v})", self.kind, self.name),
            Some(v) => write!(f, "{}/{} ({group}/{v})", self.kind, self.name),
            None => write!(f, "{}/{} (group {group})", self.kind, self.name),
        }
    }
}

/// One reference resolved (a single `ref`, or one of a list).
#[derive(Default)]
struct One {
    object: Option<Value>,
    read: ContractRead,
    reason: Option<String>,
    target: Option<ObjRef>,
    problem: Option<String>,
    retry: bool,
}

impl One {
    /// Not resolved: the plugin gets `reason`, the WasmController and the parent the problem.
    fn unresolved(spec: &RelatedSpec, message: String, retry: bool) -> Self {
        One {
            read: ContractRead {
                missing: all_fields(spec),
                ..Default::default()
            },
            reason: Some(message.clone()),
            problem: Some(message),
            retry,
            ..Default::default()
        }
    }
}

fn all_fields(spec: &RelatedSpec) -> Vec<String> {
    let mut fields: Vec<String> = spec
        .contract
        .keys()
        .chain(spec.contract_fields.keys())
        .cloned()
        .collect();
    fields.sort();
    fields
}

async fn resolve_ref(
    reads: &Reads<'_>,
    spec: &RelatedSpec,
    path: &str,
    parent: &Value,
    namespace: &str,
) -> Result<Resolved> {
    let hits: Vec<Value> = parent
        .query(path)
        .map(|hits| hits.into_iter().filter(|v| !v.is_null()).cloned().collect())
        .unwrap_or_default();
    let field = |i: Option<usize>| match i {
        None => format!("spec.related[{}] ({path})", spec.name),
        Some(i) => format!("spec.related[{}] ({path}[{i}])", spec.name),
    };
    let list = match hits.as_slice() {
        [] => {
            let mut related = Related {
                missing: all_fields(spec),
                reason: Some(format!("{path} is not set on the parent")),
                ..Default::default()
            };
            related.missing.dedup();
            return Ok(Resolved {
                related,
                ..Default::default()
            });
        }
        [Value::Array(items)] => items.clone(),
        [one] => {
            let one = resolve_one(reads, spec, one, namespace, path).await?;
            let mut resolved = Resolved::default();
            resolved.note(&one, field(None));
            resolved.related = Related {
                object: one.object,
                objects: Vec::new(),
                contract: one.read.contract,
                missing: one.read.missing,
                matched: one.read.matched,
                violations: one.read.violations,
                reason: one.reason,
                targets: Vec::new(),
            };
            return Ok(resolved);
        }
        several => several.to_vec(),
    };
    let mut resolved = Resolved::default();
    for (i, reference) in list.iter().enumerate() {
        let one = resolve_one(reads, spec, reference, namespace, path).await?;
        resolved.note(&one, field(Some(i)));
        resolved.related.targets.push(RelatedTarget {
            reference: reference.clone(),
            object: one.object,
            contract: one.read.contract,
            missing: one.read.missing,
            matched: one.read.matched,
            violations: one.read.violations,
            reason: one.reason,
        });
    }
    if resolved.related.targets.is_empty() {
        resolved.related.reason = Some(format!("{path} is an empty list"));
    }
    Ok(resolved)
}

impl Resolved {
    fn note(&mut self, one: &One, field: String) {
        self.targets.extend(one.target.clone());
        self.retry |= one.retry;
        if let Some(message) = &one.problem {
            self.unresolved.push(Unresolved {
                field,
                message: message.clone(),
            });
        }
    }
}

/// Resolves one reference value: its shape, namespace, kind, version and object.
async fn resolve_one(
    reads: &Reads<'_>,
    spec: &RelatedSpec,
    value: &Value,
    namespace: &str,
    path: &str,
) -> Result<One> {
    let Some(reference) = Reference::parse(value) else {
        let message = format!(
            "{path} must hold a reference with kind, name and one of apiVersion, apiGroup or group; found {value}"
        );
        return Ok(One::unresolved(spec, message, false));
    };
    let found = reference.to_string();
    if let Some(ns) = reference.namespace.as_ref().filter(|ns| *ns != namespace) {
        let message = format!(
            "{found} is in namespace {ns:?}: only objects in the parent's namespace {namespace:?} can be related; drop the reference's namespace"
        );
        return Ok(One::unresolved(spec, message, false));
    }
    // Deny by default: an empty list allows nothing (the CRD requires one entry with `ref`).
    let allowed = spec.allowed_kinds.iter().any(|a| {
        a.group == reference.group && a.kind.as_ref().is_none_or(|k| *k == reference.kind)
    });
    if !allowed {
        let message = format!(
            "{found}: kind {} of group {:?} is not in spec.related[{}].allowedKinds (references are denied unless their kind is listed); add {{group: {:?}, kind: {}}} to allowedKinds if the plugin should read it",
            reference.kind, reference.group, spec.name, reference.group, reference.kind
        );
        return Ok(One::unresolved(spec, message, false));
    }
    let resource = match resource_of(reads, spec, &reference).await? {
        Ok(resource) => resource,
        Err(message) => return Ok(One::unresolved(spec, format!("{found}: {message}"), true)),
    };
    let target = ObjRef {
        api_version: resource.api_version.clone(),
        kind: reference.kind.clone(),
        namespace: namespace.into(),
        name: reference.name.clone(),
    };
    let Some(obj) = reads
        .get(spec, &resource, namespace, &reference.name)
        .await?
    else {
        return Ok(One::unresolved(
            spec,
            format!("{found} does not exist"),
            false,
        ));
    };
    let obj = crate::cluster::kinds::clean(obj, &resource);
    let read = read_contract(spec, &obj, &found);
    let reason = (!read.missing.is_empty()).then(|| {
        let fields: Vec<String> = read
            .missing
            .iter()
            .map(|field| format!("{field} (at {})", contract_paths(spec, field).join(" or ")))
            .collect();
        let mut reason = format!(
            "{found} does not set contract field(s) {}",
            fields.join(", ")
        );
        if !read.violations.is_empty() {
            reason += &format!(" ({})", read.violations.join("; "));
        }
        reason
    });
    Ok(One {
        object: Some(obj),
        read,
        reason,
        target: Some(target),
        problem: None,
        retry: false,
    })
}

/// The API resource of a reference: by its apiVersion, or by group and kind (the contract's
/// CRD label, else the preferred version). `Ok(Err(message))` when there is none to read:
/// the kind is not served, or its CRD does not declare the contract.
async fn resource_of(
    reads: &Reads<'_>,
    spec: &RelatedSpec,
    reference: &Reference,
) -> Result<std::result::Result<ApiResource, String>> {
    use crate::cluster::kinds::{self, GroupKindError};
    let discovery = |source| Error::Discovery {
        name: spec.name.clone(),
        gvk: format!("{} in group {:?}", reference.kind, reference.group),
        source,
    };
    match &reference.version {
        Some(version) => {
            let gvk = GroupVersionKind::gvk(&reference.group, version, &reference.kind);
            match kinds::resource_of(reads.client(), &gvk).await {
                Ok(resource) => Ok(Ok(resource)),
                Err(kube::Error::Discovery(_)) => Ok(Err("the kind is not served".into())),
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    Ok(Err("the kind is not served".into()))
                }
                Err(source) => Err(discovery(source)),
            }
        }
        None => match kinds::resource_by_group(
            reads.client(),
            reads.crds(),
            &reference.group,
            &reference.kind,
            &spec.contract_versions,
        )
        .await
        {
            Ok(resource) => Ok(Ok(resource)),
            Err(GroupKindError::Api(source)) => Err(discovery(source)),
            Err(e) => Ok(Err(e.to_string())),
        },
    }
}

/// The JSONPaths a contract field is read from, in the order they are tried.
pub fn contract_paths<'a>(spec: &'a RelatedSpec, field: &str) -> Vec<&'a str> {
    match (spec.contract.get(field), spec.contract_fields.get(field)) {
        (Some(path), _) => vec![path.as_str()],
        (None, Some(cf)) => cf.paths.iter().map(String::as_str).collect(),
        (None, None) => Vec::new(),
    }
}

/// What the contract fields of an entry read from one object.
#[derive(Debug, Default, PartialEq)]
struct ContractRead {
    contract: BTreeMap<String, Value>,
    matched: BTreeMap<String, String>,
    missing: Vec<String>,
    violations: Vec<String>,
}

/// Reads `contract` (one path each) and `contractFields` (paths tried in order, the first
/// present one decides; a value of the wrong type is a violation and counts as missing).
fn read_contract(spec: &RelatedSpec, obj: &Value, found: &str) -> ContractRead {
    let mut read = ContractRead::default();
    for (field, path) in &spec.contract {
        match first(obj, path) {
            Some(v) => {
                read.contract.insert(field.clone(), v);
                read.matched.insert(field.clone(), path.clone());
            }
            None => read.missing.push(field.clone()),
        }
    }
    for (field, cf) in &spec.contract_fields {
        let hit = cf
            .paths
            .iter()
            .find_map(|path| first(obj, path).map(|v| (path, v)));
        match hit {
            Some((path, v)) if cf.type_.is_none_or(|t| t.matches(&v)) => {
                read.contract.insert(field.clone(), v);
                read.matched.insert(field.clone(), path.clone());
            }
            Some((path, v)) => {
                let want = cf.type_.map_or("", |t| t.name());
                read.violations.push(format!(
                    "{field}: {found} has {v} at {path}, not a {want} as the contract requires"
                ));
                read.missing.push(field.clone());
            }
            None => read.missing.push(field.clone()),
        }
    }
    read.missing.sort();
    read
}

async fn discover(client: &Client, name: &str, gvk: &GroupVersionKind) -> Result<ApiResource> {
    crate::cluster::kinds::resource_of(client, gvk)
        .await
        .map_err(|source| Error::Discovery {
            name: name.into(),
            gvk: format!("{}/{} {}", gvk.group, gvk.version, gvk.kind),
            source,
        })
}

pub(crate) fn selector_string(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            _ => format!("!{}", expr.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contract_fields_are_read_by_jsonpath() {
        let obj = json!({"status": {"ready": true, "address": "10.0.0.1"}});
        assert_eq!(first(&obj, "$.status.ready"), Some(json!(true)));
        assert_eq!(first(&obj, "$.status.missing"), None);
    }

    /// A client to a port nothing listens on: the kind check comes before any request.
    fn unreachable_client() -> Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    fn ref_entry(allowed_kinds: Vec<crate::crd::GroupKind>) -> RelatedSpec {
        RelatedSpec {
            name: "infra".into(),
            ref_: Some("$.spec.infraRef".into()),
            allowed_kinds,
            contract: BTreeMap::new(),
            contract_fields: BTreeMap::new(),
            contract_versions: vec![],
            api_version: None,
            kind: None,
            selector: None,
        }
    }

    #[tokio::test]
    async fn a_reference_is_denied_unless_its_kind_is_listed_in_allowed_kinds() {
        let client = unreachable_client();
        let parent =
            json!({"spec": {"infraRef": {"apiVersion": "v1", "kind": "Secret", "name": "db"}}});
        let configmaps = crate::crd::GroupKind {
            group: String::new(),
            kind: Some("ConfigMap".into()),
        };
        for (what, allowed) in [
            ("empty allowedKinds", vec![]),
            ("another kind", vec![configmaps]),
        ] {
            let resolved = resolve(
                &Reads::Direct(&client),
                &ref_entry(allowed),
                &parent,
                "team-a",
            )
            .await
            .unwrap();
            // Not read, not fatal: reported, and the plugin is told why.
            assert_eq!(resolved.related.object, None, "{what}");
            assert!(resolved.targets.is_empty(), "{what}");
            let [problem] = resolved.unresolved.as_slice() else {
                panic!("{what}: {:?}", resolved.unresolved)
            };
            assert_eq!(problem.field, "spec.related[infra] ($.spec.infraRef)");
            assert!(
                problem
                    .message
                    .contains("is not in spec.related[infra].allowedKinds"),
                "{what}: {problem}"
            );
            assert_eq!(resolved.related.reason.as_ref(), Some(&problem.message));
        }
        // A listed kind gets past the check (and on to discovery, which fails here).
        let core = crate::crd::GroupKind {
            group: String::new(),
            kind: None,
        };
        let err = resolve(
            &Reads::Direct(&client),
            &ref_entry(vec![core]),
            &parent,
            "team-a",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Discovery { .. }), "{err}");
    }

    #[test]
    fn references_are_read_in_the_three_shapes_wasmop_follows() {
        let parse = |v: Value| Reference::parse(&v);
        let want = |group: &str, version: Option<&str>| Reference {
            group: group.into(),
            version: version.map(String::from),
            kind: "M".into(),
            name: "m".into(),
            namespace: None,
        };
        assert_eq!(
            parse(json!({"apiVersion": "infra.example.com/v1beta1", "kind": "M", "name": "m"})),
            Some(want("infra.example.com", Some("v1beta1")))
        );
        // Cluster API v1beta2 ContractVersionedObjectReference: no version.
        assert_eq!(
            parse(json!({"apiGroup": "infra.example.com", "kind": "M", "name": "m"})),
            Some(want("infra.example.com", None))
        );
        // Gateway API LocalPolicyTargetReference, "" for the core group; sectionName ignored.
        assert_eq!(
            parse(json!({"group": "", "kind": "M", "name": "m", "sectionName": "http"})),
            Some(want("", None))
        );
        assert_eq!(
            parse(json!({"apiVersion": "v1", "kind": "M", "name": "m", "namespace": "a"}))
                .and_then(|r| r.namespace),
            Some("a".into())
        );
        for bad in [
            json!({"kind": "M", "name": "m"}),
            json!({"group": "g", "name": "m"}),
            json!({"group": "g", "kind": "M", "name": ""}),
            json!("M/m"),
        ] {
            assert_eq!(parse(bad.clone()), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_list_of_references_gives_one_target_each_and_reports_each_problem() {
        let client = unreachable_client();
        let parent = json!({"spec": {"targetRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "Secret", "name": "a"},
            {"kind": "HTTPRoute", "name": "no-group"},
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "b", "namespace": "other"},
        ]}});
        let mut spec = ref_entry(vec![crate::crd::GroupKind {
            group: "gateway.networking.k8s.io".into(),
            kind: Some("HTTPRoute".into()),
        }]);
        spec.ref_ = Some("$.spec.targetRefs".into());
        let resolved = resolve(&Reads::Direct(&client), &spec, &parent, "team-a")
            .await
            .unwrap();
        let related = &resolved.related;
        assert_eq!(related.object, None);
        assert_eq!(related.targets.len(), 3);
        assert_eq!(related.targets[1].reference["name"], "no-group");
        let fields: Vec<&str> = resolved
            .unresolved
            .iter()
            .map(|u| u.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.related[infra] ($.spec.targetRefs[0])",
                "spec.related[infra] ($.spec.targetRefs[1])",
                "spec.related[infra] ($.spec.targetRefs[2])",
            ]
        );
        assert!(resolved.unresolved[0].message.contains("allowedKinds"));
        assert!(
            resolved.unresolved[1]
                .message
                .contains("must hold a reference")
        );
        assert!(
            resolved.unresolved[2]
                .message
                .contains("only objects in the parent's namespace")
        );
        for (t, u) in related.targets.iter().zip(&resolved.unresolved) {
            assert_eq!(t.reason.as_ref(), Some(&u.message));
        }
        // An unset or empty list is no problem (the plugin is told).
        for parent in [json!({"spec": {}}), json!({"spec": {"targetRefs": []}})] {
            let resolved = resolve(&Reads::Direct(&client), &spec, &parent, "team-a")
                .await
                .unwrap();
            assert!(resolved.unresolved.is_empty(), "{parent}");
            assert!(resolved.related.reason.is_some(), "{parent}");
        }
    }

    #[test]
    fn contract_fields_try_their_paths_in_order_and_check_the_type() {
        use crate::crd::{ContractField, ContractType};
        let spec = RelatedSpec {
            name: "infra".into(),
            ref_: Some("$.spec.infraRef".into()),
            allowed_kinds: vec![],
            contract: BTreeMap::new(),
            contract_versions: vec![],
            contract_fields: BTreeMap::from([(
                "ready".to_string(),
                ContractField {
                    paths: vec![
                        "$.status.initialization.provisioned".into(),
                        "$.status.ready".into(),
                    ],
                    type_: Some(ContractType::Boolean),
                },
            )]),
            api_version: None,
            kind: None,
            selector: None,
        };
        let v1beta2 = json!({"status": {"initialization": {"provisioned": true}, "ready": false}});
        let read = read_contract(&spec, &v1beta2, "Infra/a");
        assert_eq!(read.contract["ready"], json!(true));
        assert_eq!(read.matched["ready"], "$.status.initialization.provisioned");
        let v1beta1 = json!({"status": {"ready": true}});
        let read = read_contract(&spec, &v1beta1, "Infra/a");
        assert_eq!(read.matched["ready"], "$.status.ready");
        let wrong = json!({"status": {"ready": "yes"}});
        let read = read_contract(&spec, &wrong, "Infra/a");
        assert!(read.contract.is_empty());
        assert_eq!(read.missing, vec!["ready".to_string()]);
        assert_eq!(
            read.violations,
            vec![
                "ready: Infra/a has \"yes\" at $.status.ready, not a boolean as the contract requires"
                    .to_string()
            ]
        );
    }

    #[test]
    fn a_bad_jsonpath_is_reported_with_the_entry_name() {
        let spec = RelatedSpec {
            name: "infra".into(),
            ref_: Some("$.spec[".into()),
            allowed_kinds: vec![],
            contract: BTreeMap::new(),
            contract_fields: BTreeMap::new(),
            contract_versions: vec![],
            api_version: None,
            kind: None,
            selector: None,
        };
        let err = validate(&spec).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.related[infra].ref: \"$.spec[\" is not a valid JSONPath"),
            "{err}"
        );
    }
}
