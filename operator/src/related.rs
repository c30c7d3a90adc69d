//! Resolves `spec.related` entries into the plugin's `request.related`: a referenced object
//! read through its contract fields (Cluster-API-style API contracts), or the objects
//! matching a label selector. Reads are made with the controller's impersonated client, so
//! RBAC decides what a plugin may see.

use std::collections::BTreeMap;

use jsonpath_rust::JsonPath;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::Value;
use wasmop_abi::Related;

use crate::crd::RelatedSpec;
use crate::plan::ObjRef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spec.related[{name}].ref: {path:?} is not a valid JSONPath: {message}")]
    BadPath {
        name: String,
        path: String,
        message: String,
    },
    #[error(
        "spec.related[{name}]: reference {found} names kind {kind} in group {group:?}, which spec.related[{name}].allowedKinds does not allow"
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
    #[error("spec.related[{name}]: kind {gvk} is not served by the API server: {source}")]
    Discovery {
        name: String,
        gvk: String,
        #[source]
        source: kube::Error,
    },
    #[error("spec.related[{name}]: reading {what}: {source}")]
    Read {
        name: String,
        what: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks the JSONPaths of an entry once, when the controller starts.
///
/// # Errors
/// [`Error::BadPath`] naming the entry and the path.
pub fn validate(spec: &RelatedSpec) -> Result<()> {
    let probe = Value::Object(Default::default());
    let paths = spec.ref_.iter().chain(spec.contract.values());
    for path in paths {
        if let Err(e) = probe.query(path) {
            return Err(Error::BadPath {
                name: spec.name.clone(),
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

/// Resolves one entry for `parent`. Returns the resolved value and, for a `ref`, the
/// referenced object's identity (an allowed `apply` target).
///
/// # Errors
/// Disallowed kinds, other namespaces, unknown kinds, read failures (e.g. forbidden).
pub async fn resolve(
    client: &Client,
    spec: &RelatedSpec,
    parent: &Value,
    namespace: &str,
) -> Result<(Related, Option<ObjRef>)> {
    if let Some(path) = &spec.ref_ {
        return resolve_ref(client, spec, path, parent, namespace).await;
    }
    let (Some(api_version), Some(kind)) = (&spec.api_version, &spec.kind) else {
        return Ok((Related::default(), None)); // ruled out by the CRD's CEL rules
    };
    let gvk = gvk_of(api_version, kind);
    let resource = discover(client, &spec.name, &gvk).await?;
    let mut params = ListParams::default();
    if let Some(selector) = &spec.selector {
        params = params.labels(&selector_string(selector));
    }
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let list = api.list(&params).await.map_err(|source| Error::Read {
        name: spec.name.clone(),
        what: format!("{kind} list"),
        source,
    })?;
    let mut objects: Vec<Value> = list
        .items
        .into_iter()
        .map(|o| clean(o, &resource))
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
    client: &Client,
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
    let gvk = gvk_of(&api_version, &kind);
    let allowed = spec.allowed_kinds.is_empty()
        || spec
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
    let resource = discover(client, &spec.name, &gvk).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let target = ObjRef {
        api_version: api_version.clone(),
        kind: kind.clone(),
        namespace: namespace.into(),
        name: name.clone(),
    };
    let Some(obj) = api.get_opt(&name).await.map_err(|source| Error::Read {
        name: spec.name.clone(),
        what: found.clone(),
        source,
    })?
    else {
        return Ok((missing_all(format!("{found} does not exist")), None));
    };
    let obj = clean(obj, &resource);
    let mut contract = BTreeMap::new();
    let mut missing = Vec::new();
    for (field, path) in &spec.contract {
        match first(&obj, path) {
            Some(v) => {
                contract.insert(field.clone(), v);
            }
            None => missing.push(field.clone()),
        }
    }
    let reason = (!missing.is_empty()).then(|| {
        format!(
            "{found} does not set contract field(s) {}",
            missing.join(", ")
        )
    });
    Ok((
        Related {
            object: Some(obj),
            objects: Vec::new(),
            contract,
            missing,
            reason,
        },
        Some(target),
    ))
}

fn gvk_of(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

async fn discover(client: &Client, name: &str, gvk: &GroupVersionKind) -> Result<ApiResource> {
    resource_of(client, gvk)
        .await
        .map_err(|source| Error::Discovery {
            name: name.into(),
            gvk: format!("{}/{} {}", gvk.group, gvk.version, gvk.kind),
            source,
        })
}

/// How long a discovered kind is trusted before it is looked up again.
const DISCOVERY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The API resource serving `gvk`, from a process-wide cache: related objects and `apply`
/// targets are resolved on every reconcile, and a discovery request each time is waste.
///
/// # Errors
/// The kind is not served (not cached, so a CRD installed later is found).
pub(crate) async fn resource_of(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<ApiResource, kube::Error> {
    type Cache = std::sync::Mutex<
        std::collections::HashMap<GroupVersionKind, (ApiResource, std::time::Instant)>,
    >;
    static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(Default::default);
    if let Some((ar, at)) = CACHE.lock().unwrap().get(gvk)
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(ar.clone());
    }
    let (ar, _) = kube::discovery::pinned_kind(client, gvk).await?;
    CACHE
        .lock()
        .unwrap()
        .insert(gvk.clone(), (ar.clone(), std::time::Instant::now()));
    Ok(ar)
}

/// An object as a plugin sees it: with apiVersion/kind, without managedFields.
pub fn clean(mut obj: DynamicObject, resource: &ApiResource) -> Value {
    obj.types = Some(kube::core::TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    obj.metadata.managed_fields = None;
    serde_json::to_value(obj).expect("objects serialise")
}

fn selector_string(
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

    #[test]
    fn a_bad_jsonpath_is_reported_with_the_entry_name() {
        let spec = RelatedSpec {
            name: "infra".into(),
            ref_: Some("$.spec[".into()),
            allowed_kinds: vec![],
            contract: BTreeMap::new(),
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
