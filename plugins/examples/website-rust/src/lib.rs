//! Example wasmop plugin: a `Website` parent produces a ConfigMap (its page) and a Deployment
//! (nginx serving it), and reports what it made in status. Behaviour:
//! plugins/examples/WEBSITE.md.
//!
//! Written with wasmop-pdk (`plugins/pdk-rust`). Its tests run natively (`cargo test -p
//! website-plugin`) against the golden cases the Go example must match byte for byte
//! (`plugins/examples/website-go/testdata/cases.json`).

use wasmop_pdk::prelude::*;

const DEFAULT_IMAGE: &str = "nginx:1.27";

/// Computes the desired children and status of one Website.
///
/// # Errors
/// `spec.replicas` that is not a non-negative integer.
pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse> {
    let name = req.name();
    let spec = req.spec();
    // Lenient on purpose (WEBSITE.md): a non-string image or content reads as unset.
    let image = spec["image"].as_str().unwrap_or(DEFAULT_IMAGE);
    let replicas = match spec.u64("replicas")? {
        Some(r) => r,
        None => req.config()["replicas"].as_u64().unwrap_or(1),
    };
    let content = spec["content"].as_str().filter(|c| !c.is_empty());
    let labels = [
        ("app.kubernetes.io/name", name),
        ("app.kubernetes.io/managed-by", "wasmop"),
    ];
    let selector = json!({ "app.kubernetes.io/name": name });

    let mut out = ReconcileResponse::default();
    let mut container =
        json!({ "name": "web", "image": image, "ports": [{ "containerPort": 80 }] });
    let mut pod_spec = json!({});
    if let Some(content) = content {
        let cm_name = format!("{name}-content");
        container["volumeMounts"] =
            json!([{ "name": "content", "mountPath": "/usr/share/nginx/html" }]);
        pod_spec["volumes"] = json!([{ "name": "content", "configMap": { "name": cm_name } }]);
        out.push_child(
            child("v1", "ConfigMap", &cm_name)
                .labels(labels)
                .field("data", json!({ "index.html": content })),
        );
    }
    pod_spec["containers"] = json!([container]);
    out.push_child(child("apps/v1", "Deployment", name).labels(labels).field(
        "spec",
        json!({
            "replicas": replicas,
            "selector": { "matchLabels": selector },
            "template": { "metadata": { "labels": selector }, "spec": pod_spec },
        }),
    ));

    let available = req
        .child("apps/v1", "Deployment", name)
        .and_then(|d| d["status"]["availableReplicas"].as_u64())
        .unwrap_or(0);
    let made: Vec<String> = out.children.iter().map(reference).collect();
    let new: Vec<String> = out
        .children
        .iter()
        .filter(|c| req.existing(c).is_none())
        .map(reference)
        .collect();
    for r in new {
        out.normal("Created", format!("created {r}"));
    }
    out.set_status(json!({
        "phase": if available >= replicas { "Ready" } else { "Progressing" },
        "observedGeneration": req.generation(),
        "replicas": replicas,
        "availableReplicas": available,
        "children": made,
    }));
    Ok(out)
}

/// Nothing outside the cluster to clean up.
pub fn finalize(_req: &ReconcileRequest) -> Result<ReconcileResponse> {
    Ok(finalized())
}

wasmop_pdk::export!(reconcile = reconcile, finalize = finalize);

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden cases shared with the Go example: the request, which export, and the exact
    /// response bytes (or error message) the plugin must produce.
    #[test]
    fn every_golden_case_gives_exactly_the_recorded_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../website-go/testdata/cases.json"
        );
        let text = std::fs::read_to_string(path).expect("golden cases are committed");
        let doc: Value = serde_json::from_str(&text).unwrap();
        let cases = doc["cases"].as_array().expect("a `cases` list").clone();
        assert!(cases.len() >= 10, "the golden file lost cases");
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let input = serde_json::to_vec(&case["request"]).unwrap();
            let got = match case["export"].as_str().unwrap() {
                "reconcile" => wasmop_pdk::call_json(&input, reconcile),
                "finalize" => wasmop_pdk::call_json(&input, finalize),
                other => panic!("{name}: unknown export {other}"),
            };
            match (got, case["response"].as_str(), case["error"].as_str()) {
                (Ok(bytes), Some(want), None) => {
                    assert_eq!(String::from_utf8(bytes).unwrap(), want, "{name}")
                }
                (Err(e), None, Some(want)) => assert_eq!(e.to_string(), want, "{name}"),
                (got, _, _) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn negative_replicas_is_an_error_naming_the_field() {
        let req = ReconcileRequest {
            object: json!({"metadata": {"name": "site"}, "spec": {"replicas": -1}}),
            ..Default::default()
        };
        let err = reconcile(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.replicas must be a non-negative integer"
        );
    }
}
