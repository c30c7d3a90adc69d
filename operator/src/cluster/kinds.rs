//! Kinds and objects in general: a kind's API resource by discovery (cached), and an object
//! as a plugin sees it. Used by the reconcile path for parents, children, related objects
//! and `apply` targets alike.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
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

/// An object as a plugin sees it: with apiVersion/kind, without managedFields.
pub fn clean(mut obj: DynamicObject, resource: &ApiResource) -> Value {
    obj.types = Some(kube::core::TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    obj.metadata.managed_fields = None;
    serde_json::to_value(obj).expect("objects serialise")
}
