//! Kinds and objects in general: a kind's API resource by discovery (cached), the version of
//! a kind named only by group (a contract's CRD label, or the preferred version), and an
//! object as a plugin sees it. Used by the reconcile path for parents, children, related objects
//! and `apply` targets alike.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::{Api, Client};
use serde_json::Value;

/// How long a discovered kind is trusted before it is looked up again.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);

/// The group/version/kind of an `apiVersion` (`group/version`, or `v1` for core) and kind.
pub fn gvk(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// The API resource serving `gvk`, from a process-wide cache: related objects and `apply`
/// targets are resolved on every reconcile, and a discovery request each time is waste.
///
/// # Errors
/// The kind is not served (not cached, so a CRD installed later is found).
pub async fn resource_of(
    client: &Client,
    gvk: &GroupVersionKind,
) -> Result<ApiResource, kube::Error> {
    type Cache = Mutex<HashMap<GroupVersionKind, (ApiResource, Instant)>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);
    if let Some((ar, at)) = CACHE.lock().unwrap().get(gvk)
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(ar.clone());
    }
    let (ar, _) = kube::discovery::pinned_kind(client, gvk).await?;
    CACHE
        .lock()
        .unwrap()
        .insert(gvk.clone(), (ar.clone(), Instant::now()));
    Ok(ar)
}

/// Why a kind named by group and kind has no API resource to read.
#[derive(Debug, thiserror::Error)]
pub enum GroupKindError {
    /// The group, or the kind in it, is not served (a CRD not installed, a typo).
    #[error("{kind} in group {group:?} is not served by the API server")]
    NotServed { group: String, kind: String },
    /// `contractVersions` is set and the kind's CRD carries none of those labels.
    #[error(
        "CRD {crd} has none of the labels {} (it does not declare that a version implements the contract{}); label the CRD, or reference it with an apiVersion",
        labels.join(", "),
        if labels_found.is_empty() { String::new() } else { format!("; its contract labels: {labels_found}") }
    )]
    NoContractVersion {
        crd: String,
        labels: Vec<String>,
        labels_found: String,
    },
    /// Discovery or the CRD read failed (the API server did not answer, or refused).
    #[error(transparent)]
    Api(kube::Error),
}

/// The API resource to read `kind` of `group` with, when a reference names no version: the
/// newest served version listed by the first of `contract_versions` (CRD labels, read with
/// `crds`, the operator's account) present on the kind's CRD, or without `contract_versions`
/// the group's preferred version. Discovery and CRD labels are cached like [`resource_of`].
///
/// # Errors
/// [`GroupKindError`]: not served, no contract label, or the API server failed.
pub async fn resource_by_group(
    client: &Client,
    crds: &Client,
    group: &str,
    kind: &str,
    contract_versions: &[String],
) -> Result<ApiResource, GroupKindError> {
    let not_served = || GroupKindError::NotServed {
        group: group.into(),
        kind: kind.into(),
    };
    let served = served_versions(client, group).await?;
    let by_version: Vec<(&str, &ApiResource)> = served
        .versions
        .iter()
        .filter_map(|(v, resources)| {
            let ar = resources.iter().find(|ar| ar.kind == kind)?;
            Some((v.as_str(), ar))
        })
        .collect();
    let Some(&(_, any)) = by_version.first() else {
        return Err(not_served());
    };
    let version = if contract_versions.is_empty() {
        let preferred = served.preferred.as_deref();
        match by_version.iter().find(|(v, _)| Some(*v) == preferred) {
            Some((v, _)) => v.to_string(),
            None => newest(by_version.iter().map(|(v, _)| *v)).unwrap_or_default(),
        }
    } else {
        let crd = format!("{}.{group}", any.plural);
        let labels = crd_labels(crds, &crd).await?;
        let served: Vec<&str> = by_version.iter().map(|(v, _)| *v).collect();
        contract_version(&labels, contract_versions, &served).ok_or_else(|| {
            GroupKindError::NoContractVersion {
                crd,
                labels: contract_versions.to_vec(),
                labels_found: contract_labels(&labels, contract_versions),
            }
        })?
    };
    by_version
        .iter()
        .find(|(v, _)| **v == version)
        .map(|(_, ar)| (*ar).clone())
        .ok_or_else(not_served)
}

/// The version of a contract: the newest of the `_`-separated versions that the first label
/// of `contract_versions` present (and naming a served version) lists.
pub fn contract_version(
    labels: &BTreeMap<String, String>,
    contract_versions: &[String],
    served: &[&str],
) -> Option<String> {
    contract_versions.iter().find_map(|label| {
        let listed = labels.get(label)?;
        newest(listed.split('_').filter(|v| served.contains(v)))
    })
}

/// The labels of the CRD that look like contract labels (same prefix as those asked for),
/// for an error message.
fn contract_labels(labels: &BTreeMap<String, String>, contract_versions: &[String]) -> String {
    let prefixes: Vec<&str> = contract_versions
        .iter()
        .filter_map(|l| l.split_once('/').map(|(p, _)| p))
        .collect();
    labels
        .iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(&format!("{p}/"))))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The highest-priority Kubernetes version (GA > beta > alpha, then by number).
fn newest<'a>(versions: impl Iterator<Item = &'a str>) -> Option<String> {
    versions
        .max_by_key(|v| kube::core::Version::parse(v).priority())
        .map(String::from)
}

/// What discovery says a group serves.
#[derive(Clone)]
struct Served {
    preferred: Option<String>,
    versions: Vec<(String, Vec<ApiResource>)>,
}

async fn served_versions(client: &Client, group: &str) -> Result<Served, GroupKindError> {
    type Cache = Mutex<HashMap<String, (Served, Instant)>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);
    if let Some((served, at)) = CACHE.lock().unwrap().get(group)
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(served.clone());
    }
    let api_group = match kube::discovery::group(client, group).await {
        Ok(g) => g,
        Err(kube::Error::Discovery(_)) => {
            return Err(GroupKindError::NotServed {
                group: group.into(),
                kind: "any kind".into(),
            });
        }
        Err(e) => return Err(GroupKindError::Api(e)),
    };
    let served = Served {
        preferred: api_group.preferred_version().map(String::from),
        versions: api_group
            .versions()
            .map(|v| {
                let resources = api_group.versioned_resources(v);
                (
                    v.to_string(),
                    resources.into_iter().map(|(ar, _)| ar).collect(),
                )
            })
            .collect(),
    };
    CACHE
        .lock()
        .unwrap()
        .insert(group.into(), (served.clone(), Instant::now()));
    Ok(served)
}

/// A CRD's labels (metadata only), cached like discovery.
async fn crd_labels(crds: &Client, name: &str) -> Result<BTreeMap<String, String>, GroupKindError> {
    type Cache = Mutex<HashMap<String, (BTreeMap<String, String>, Instant)>>;
    static CACHE: LazyLock<Cache> = LazyLock::new(Default::default);
    if let Some((labels, at)) = CACHE.lock().unwrap().get(name)
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(labels.clone());
    }
    let meta = Api::<CustomResourceDefinition>::all(crds.clone())
        .get_metadata_opt(name)
        .await
        .map_err(GroupKindError::Api)?;
    let labels = meta.and_then(|m| m.metadata.labels).unwrap_or_default();
    CACHE
        .lock()
        .unwrap()
        .insert(name.into(), (labels.clone(), Instant::now()));
    Ok(labels)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_first_contract_label_present_gives_its_newest_served_version() {
        let contracts = vec![
            "cluster.x-k8s.io/v1beta2".to_string(),
            "cluster.x-k8s.io/v1beta1".to_string(),
        ];
        let both = labels(&[
            ("cluster.x-k8s.io/v1beta1", "v1alpha3_v1alpha4"),
            ("cluster.x-k8s.io/v1beta2", "v1alpha4_v1beta1"),
        ]);
        let served = ["v1alpha3", "v1alpha4", "v1beta1", "v1"];
        assert_eq!(
            contract_version(&both, &contracts, &served).as_deref(),
            Some("v1beta1")
        );
        // Only the older contract is implemented: its label decides, even against a newer
        // served (preferred) version.
        let old = labels(&[("cluster.x-k8s.io/v1beta1", "v1alpha3_v1alpha4")]);
        assert_eq!(
            contract_version(&old, &contracts, &served).as_deref(),
            Some("v1alpha4")
        );
        // A listed version that is not served is skipped; none served: the next label.
        let stale = labels(&[
            ("cluster.x-k8s.io/v1beta2", "v2"),
            ("cluster.x-k8s.io/v1beta1", "v1alpha3"),
        ]);
        assert_eq!(
            contract_version(&stale, &contracts, &served).as_deref(),
            Some("v1alpha3")
        );
        assert_eq!(contract_version(&labels(&[]), &contracts, &served), None);
        assert_eq!(
            contract_labels(&old, &contracts),
            "cluster.x-k8s.io/v1beta1=v1alpha3_v1alpha4"
        );
    }

    #[test]
    fn versions_are_ordered_as_kubernetes_orders_them() {
        let vs = ["v1alpha1", "v1beta1", "v1beta2", "v2alpha1"];
        assert_eq!(newest(vs.into_iter()).as_deref(), Some("v1beta2"));
        assert_eq!(newest(["v1beta1", "v1"].into_iter()).as_deref(), Some("v1"));
    }
}
