//! Example wasmop plugin: a `Website` parent produces a ConfigMap (its page) and a Deployment
//! (nginx serving it), and reports what it made in status. Behaviour: ../WEBSITE.md.
//!
//! The logic is a plain function ([`reconcile`]) so it is unit-tested natively; the Extism
//! exports exist only in the wasm build.

use serde_json::{Value, json};
use wasmop_abi::{Event, EventType, ReconcileRequest, ReconcileResponse};

const DEFAULT_IMAGE: &str = "nginx:1.27";

/// Computes the desired children and status of one Website.
///
/// # Errors
/// `spec.replicas` that is not a non-negative integer.
pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse, String> {
    let obj = &req.object;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let spec = &obj["spec"];
    let image = spec["image"].as_str().unwrap_or(DEFAULT_IMAGE);
    let replicas = match &spec["replicas"] {
        Value::Null => req.controller.config["replicas"].as_u64().unwrap_or(1),
        v => v.as_u64().ok_or("spec.replicas must be a non-negative integer")?,
    };
    let content = spec["content"].as_str().filter(|c| !c.is_empty());
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "wasmop"});
    let selector = json!({"app.kubernetes.io/name": name});

    let mut children = Vec::new();
    let mut container = json!({"name": "web", "image": image, "ports": [{"containerPort": 80}]});
    let mut pod_spec = json!({});
    if let Some(content) = content {
        let cm_name = format!("{name}-content");
        children.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm_name, "labels": labels},
            "data": {"index.html": content},
        }));
        container["volumeMounts"] = json!([{"name": "content", "mountPath": "/usr/share/nginx/html"}]);
        pod_spec["volumes"] = json!([{"name": "content", "configMap": {"name": cm_name}}]);
    }
    pod_spec["containers"] = json!([container]);
    children.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod_spec},
        },
    }));

    let current = |kind: &str, api_version: &str, child: &str| {
        req.children
            .get(&wasmop_abi::child_key(api_version, kind))
            .and_then(|by_name| by_name.get(child))
    };
    let available = current("Deployment", "apps/v1", name)
        .and_then(|d| d["status"]["availableReplicas"].as_u64())
        .unwrap_or(0);
    let mut made = Vec::new();
    let mut events = Vec::new();
    for child in &children {
        let (kind, child_name) = (child["kind"].as_str().unwrap(), child["metadata"]["name"].as_str().unwrap());
        made.push(format!("{kind}/{child_name}"));
        if current(kind, child["apiVersion"].as_str().unwrap(), child_name).is_none() {
            events.push(Event {
                type_: EventType::Normal,
                reason: "Created".into(),
                message: format!("created {kind}/{child_name}"),
            });
        }
    }
    let status = json!({
        "phase": if available >= replicas { "Ready" } else { "Progressing" },
        "observedGeneration": obj["metadata"]["generation"].as_i64().unwrap_or(0),
        "replicas": replicas,
        "availableReplicas": available,
        "children": made,
    });
    Ok(ReconcileResponse { children, status: Some(status), events, ..Default::default() })
}

#[cfg(target_arch = "wasm32")]
mod exports {
    #![allow(unsafe_code)] // extism-pdk's #[plugin_fn] expands to the `extern "C"` export shims
    use extism_pdk::{FnResult, Json, plugin_fn};
    use wasmop_abi::{ReconcileRequest, ReconcileResponse};

    #[plugin_fn]
    pub fn reconcile(Json(req): Json<ReconcileRequest>) -> FnResult<Json<ReconcileResponse>> {
        Ok(Json(super::reconcile(&req).map_err(extism_pdk::Error::msg)?))
    }

    #[plugin_fn]
    pub fn finalize(Json(_req): Json<ReconcileRequest>) -> FnResult<Json<ReconcileResponse>> {
        Ok(Json(ReconcileResponse { finalized: true, ..Default::default() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(spec: Value) -> ReconcileRequest {
        ReconcileRequest {
            object: json!({"metadata": {"name": "site", "generation": 2}, "spec": spec}),
            ..Default::default()
        }
    }

    #[test]
    fn content_makes_a_configmap_mounted_into_the_deployment() {
        let r = reconcile(&request(json!({"content": "<h1>hi</h1>", "replicas": 3}))).unwrap();
        assert_eq!(r.children.len(), 2);
        assert_eq!(r.children[0]["data"]["index.html"], "<h1>hi</h1>");
        assert_eq!(r.children[1]["spec"]["replicas"], 3);
        assert_eq!(r.children[1]["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"], "site-content");
        assert_eq!(r.events.len(), 2, "both children are new");
        assert_eq!(r.status.unwrap()["phase"], "Progressing");
    }

    #[test]
    fn no_content_means_only_a_deployment() {
        let r = reconcile(&request(json!({}))).unwrap();
        assert_eq!(r.children.len(), 1);
        assert_eq!(r.children[0]["kind"], "Deployment");
        assert_eq!(r.children[0]["spec"]["replicas"], 1);
    }

    #[test]
    fn existing_children_emit_no_events() {
        let mut req = request(json!({}));
        req.children.insert(
            "Deployment.apps/v1".into(),
            [("site".to_string(), json!({"status": {"availableReplicas": 1}}))].into(),
        );
        let r = reconcile(&req).unwrap();
        assert!(r.events.is_empty());
        assert_eq!(r.status.unwrap()["phase"], "Ready");
    }

    #[test]
    fn negative_replicas_is_an_error_naming_the_field() {
        let err = reconcile(&request(json!({"replicas": -1}))).unwrap_err();
        assert_eq!(err, "spec.replicas must be a non-negative integer");
    }
}
