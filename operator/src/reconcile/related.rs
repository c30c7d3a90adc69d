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
use wasmop_abi::Related;

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
    #[error(
        "spec.related[{name}]: reference {found} names kind {kind} in group {group:?}, which spec.related[{name}].allowedKinds does not list (references are denied unless their kind is listed); add {{group: {group:?}, kind: {kind}}} to allowedKinds if the plugin should read it"
    )]
    KindNotAllowed {
        name: String,
        found: String,
        group: String,
        kind: String,
    },
    #[error(
        "spec.related[{name}]: reference {found} points into another namespace: only objects in the parent's namespace {namespace:?} can be related; drop the reference's namespace field"
    )]
    OtherNamespace {
        name: String,
        found: String,
        namespace: String,
    },
    #[error("spec.related[{name}]: kind {gvk} is not served by the API server: {}", readable(.source))]
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

/// Resolves one entry for `parent`. Returns the resolved value and, for a `ref`, the
/// referenced object's identity (an allowed `apply` target).
///
/// # Errors
/// Disallowed kinds, other namespaces, unknown kinds, read failures (e.g. forbidden).
pub async fn resolve(
    reads: &Reads<'_>,
    spec: &RelatedSpec,
    parent: &Value,
    namespace: &str,
) -> Result<(Related, Option<ObjRef>)> {
    if let Some(path) = &spec.ref_ {
        return resolve_ref(reads, spec, path, parent, namespace).await;
    }
    let (Some(api_version), Some(kind)) = (&spec.api_version, &spec.kind) else {
        return Ok((Related::default(), None)); // ruled out by the CRD's CEL rules
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
    Ok((
        Related {
            objects,
            ..Default::default()
        },
        None,
    ))
}

async fn resolve_ref(
    reads: &Reads<'_>,
    spec: &RelatedSpec,
    path: &str,
    parent: &Value,
    namespace: &str,
) -> Result<(Related, Option<ObjRef>)> {
    let missing_all = |reason: String| Related {
        missing: spec.contract.keys().cloned().collect(),
        reason: Some(reason),
        ..Default::default()
    };
    let Some(reference) = first(parent, path) else {
        return Ok((
            missing_all(format!("{path} is not set on the parent")),
            None,
        ));
    };
    let field = |k: &str| reference.get(k).and_then(Value::as_str).map(String::from);
    let (Some(api_version), Some(kind), Some(name)) =
        (field("apiVersion"), field("kind"), field("name"))
    else {
        return Ok((
            missing_all(format!(
                "{path} must hold apiVersion, kind and name; found {reference}"
            )),
            None,
        ));
    };
    let found = format!("{kind}/{name} ({api_version})");
    if field("namespace").is_some_and(|ns| ns != namespace) {
        return Err(Error::OtherNamespace {
            name: spec.name.clone(),
            found,
            namespace: namespace.into(),
        });
    }
    let gvk = crate::cluster::kinds::gvk(&api_version, &kind);
    // Deny by default: an empty list allows nothing (the CRD requires one entry with `ref`).
    let allowed = spec
        .allowed_kinds
        .iter()
        .any(|a| a.group == gvk.group && a.kind.as_ref().is_none_or(|k| *k == kind));
    if !allowed {
        return Err(Error::KindNotAllowed {
            name: spec.name.clone(),
            found,
            group: gvk.group,
            kind,
        });
    }
    let resource = discover(reads.client(), &spec.name, &gvk).await?;
    let target = ObjRef {
        api_version: api_version.clone(),
        kind: kind.clone(),
        namespace: namespace.into(),
        name: name.clone(),
    };
    let Some(obj) = reads.get(spec, &resource, namespace, &name).await? else {
        return Ok((missing_all(format!("{found} does not exist")), None));
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
    Ok((
        Related {
            object: Some(obj),
            objects: Vec::new(),
            contract: read.contract,
            missing: read.missing,
            matched: read.matched,
            violations: read.violations,
            reason,
        },
        Some(target),
    ))
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
            let err = resolve(
                &Reads::Direct(&client),
                &ref_entry(allowed),
                &parent,
                "team-a",
            )
            .await
            .unwrap_err();
            assert!(matches!(err, Error::KindNotAllowed { .. }), "{what}: {err}");
            assert!(
                err.to_string()
                    .contains("spec.related[infra].allowedKinds does not list"),
                "{what}: {err}"
            );
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
    fn contract_fields_try_their_paths_in_order_and_check_the_type() {
        use crate::crd::{ContractField, ContractType};
        let spec = RelatedSpec {
            name: "infra".into(),
            ref_: Some("$.spec.infraRef".into()),
            allowed_kinds: vec![],
            contract: BTreeMap::new(),
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
