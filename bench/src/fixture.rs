//! The request every call benchmark sends: a realistic Website reconcile.
//!
//! The parent is about 5 KB as the plugin sees it (labels, annotations including kubectl's
//! last-applied configuration, a 3 KB page in `spec.content`), and the request carries three
//! current children: the page's ConfigMap, the Deployment (with status) and a stale ConfigMap
//! a previous version made (which the plan prunes). The objects are built as the informer
//! cache holds them (with managedFields), so the operator path strips them as it does live.

use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value, json};
use wasmop_abi::{ABI_VERSION, ControllerInfo, ReconcileRequest};
use wasmop_e2e::website::website_resource;

pub const NAMESPACE: &str = "team-bench";
pub const CONTROLLER: &str = "website";
pub const PARENT: &str = "shop";
const UID: &str = "5b0f6c1e-8d3f-4c4e-9a55-2f1d1d7a0b11";

pub fn configmap_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
}

pub fn deployment_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&())
}

/// A page of `bytes` bytes of HTML.
pub fn page(bytes: usize) -> String {
    let mut html = String::from("<html><body><h1>Shop</h1>");
    let mut i = 0;
    while html.len() + 16 < bytes {
        html.push_str(&format!("<p>item {i:04}</p>"));
        i += 1;
    }
    html.push_str("</body></html>");
    html
}

fn managed_fields(manager: &str) -> Value {
    json!([{
        "manager": manager, "operation": "Apply", "apiVersion": "v1",
        "time": "2026-11-26T10:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/name": {}}}, "f:spec": {"f:replicas": {}}}
    }])
}

/// The parent, as the cache holds it.
pub fn parent() -> DynamicObject {
    let content = page(4000);
    let spec = json!({"image": "nginx:1.27", "replicas": 2, "content": content});
    let last_applied = json!({"apiVersion": "example.com/v1", "kind": "Website",
        "metadata": {"name": PARENT, "namespace": NAMESPACE}, "spec": {"image": "nginx:1.27", "replicas": 2}});
    serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Website",
        "metadata": {
            "name": PARENT, "namespace": NAMESPACE, "uid": UID, "resourceVersion": "123456",
            "generation": 3, "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": {"team": "shop", "tier": "frontend", "environment": "production"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": last_applied.to_string(),
                "example.com/owner": "shop-team@example.com",
                "example.com/runbook": "https://runbooks.example.com/shop/website-frontend-operations",
            },
            "finalizers": ["wasmop.dev/website"],
            "managedFields": managed_fields("kubectl-client-side-apply"),
        },
        "spec": spec,
        "status": {"phase": "Ready", "observedGeneration": 2, "replicas": 2, "availableReplicas": 2,
                   "children": ["ConfigMap/shop-content", "Deployment/shop"]},
    }))
    .expect("a valid object")
}

fn owner_refs() -> Value {
    json!([{"apiVersion": "example.com/v1", "kind": "Website", "name": PARENT, "uid": UID,
            "controller": true, "blockOwnerDeletion": true}])
}

fn child_meta(name: &str, n: u32) -> Value {
    json!({
        "name": name, "namespace": NAMESPACE, "uid": format!("00000000-0000-0000-0000-00000000000{n}"),
        "resourceVersion": format!("12345{n}"), "creationTimestamp": "2026-11-26T10:00:01Z",
        "labels": {"app.kubernetes.io/name": PARENT, "app.kubernetes.io/managed-by": "wasmop",
                   "wasmop.dev/controller": CONTROLLER},
        "ownerReferences": owner_refs(),
        "managedFields": managed_fields("wasmop.dev/team-bench.website"),
    })
}

/// The parent's three current children, as the cache holds them: (resource, object).
pub fn children() -> Vec<(ApiResource, DynamicObject)> {
    let cm = |name: &str, n: u32, data: Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": child_meta(name, n), "data": data}))
        .expect("a valid object")
    };
    let deployment: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": child_meta(PARENT, 2),
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": PARENT}},
                 "template": {"metadata": {"labels": {"app.kubernetes.io/name": PARENT}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                        "ports": [{"containerPort": 80}],
                                        "volumeMounts": [{"name": "content", "mountPath": "/usr/share/nginx/html"}]}],
                                       "volumes": [{"name": "content", "configMap": {"name": "shop-content"}}]}}},
        "status": {"replicas": 2, "availableReplicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                   "observedGeneration": 1,
                   "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]},
    }))
    .expect("a valid object");
    vec![
        (
            configmap_resource(),
            cm("shop-content", 1, json!({"index.html": page(3000)})),
        ),
        (deployment_resource(), deployment),
        (
            configmap_resource(),
            cm("shop-old", 3, json!({"note": "made by an earlier version"})),
        ),
    ]
}

/// The request the operator builds from [`parent`] and [`children`] (with `kinds::clean`).
pub fn request() -> ReconcileRequest {
    let object = wasmop::cluster::kinds::clean(parent(), &website_resource());
    let mut request = ReconcileRequest {
        abi_version: ABI_VERSION.into(),
        controller: ControllerInfo {
            name: CONTROLLER.into(),
            namespace: NAMESPACE.into(),
            config: json!({"replicas": 2}),
        },
        object,
        children: Default::default(),
        related: Default::default(),
        finalizing: false,
    };
    for (resource, obj) in children() {
        let key = wasmop_abi::child_key(&resource.api_version, &resource.kind);
        let name = obj.metadata.name.clone().unwrap_or_default();
        request
            .children
            .entry(key)
            .or_default()
            .insert(name, wasmop::cluster::kinds::clean(obj, &resource));
    }
    request
}

/// [`request`] as the bytes sent to the plugin.
pub fn request_bytes() -> Vec<u8> {
    serde_json::to_vec(&request()).expect("requests serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_about_five_kilobytes_and_three_children_ride_along() {
        let parent = serde_json::to_vec(&request().object).unwrap().len();
        assert!((4500..6500).contains(&parent), "parent is {parent} bytes");
        let children: usize = request().children.values().map(|m| m.len()).sum();
        assert_eq!(children, 3);
    }

    #[test]
    fn the_website_logic_answers_the_request_natively() {
        let out = wasmop_pdk::call_json(&request_bytes(), website_plugin::reconcile).unwrap();
        let resp: wasmop_abi::ReconcileResponse = serde_json::from_slice(&out).unwrap();
        assert_eq!(resp.children.len(), 2);
    }
}
