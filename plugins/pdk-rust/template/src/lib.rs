//! A wasmop plugin template: copy this directory, rename the package, change `reconcile`.
//!
//! The parent (say `example.com/v1, Kind=Greeting`) gets one ConfigMap holding
//! `spec.message`, a `Ready` condition, and an event the first time the ConfigMap is created.
//! `reconcile` is a plain function: `cargo test` runs the tests below natively, and
//! `export!` turns it into the Extism export only in the wasm build.

use wasmop_pdk::prelude::*;

/// Desired children and status of one parent. Deterministic: the same request gives the same
/// response, so a steady state writes nothing.
///
/// # Errors
/// A `spec.message` that is not a string (the message names the field).
pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse> {
    let name = req.name();
    let message = req.spec().str("message")?.unwrap_or("hello");

    let config_map = child("v1", "ConfigMap", &format!("{name}-greeting"))
        .label("app.kubernetes.io/managed-by", "wasmop")
        .field("data", json!({ "message": message }));

    let mut out = ReconcileResponse::default();
    if req.existing(config_map.as_value()).is_none() {
        out.normal("Created", format!("created {}", config_map.reference()));
    }
    let ready = Condition::new(
        "Ready",
        true,
        "ConfigMapApplied",
        "the greeting is published",
    );
    out.set_status(json!({
        "observedGeneration": req.generation(),
        // `now()` reads the WASI clock, so build this plugin for wasm32-wasip1; it is only
        // stamped on a condition whose status changed.
        "conditions": conditions(req, [ready], &wasmop_pdk::now()),
    }));
    out.push_child(config_map);
    Ok(out)
}

/// Called instead of `reconcile` while the parent is deleted (with `plugin.finalize: true`).
/// Children are garbage-collected by Kubernetes; clean up anything outside the cluster here.
pub fn finalize(_req: &ReconcileRequest) -> Result<ReconcileResponse> {
    Ok(finalized())
}

wasmop_pdk::export!(reconcile = reconcile, finalize = finalize);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(spec: Value) -> ReconcileRequest {
        ReconcileRequest {
            object: json!({ "metadata": { "name": "hi", "generation": 1 }, "spec": spec }),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_parent_gets_a_config_map_and_one_created_event() {
        let out = reconcile(&request(json!({ "message": "bonjour" }))).unwrap();
        assert_eq!(out.children[0]["metadata"]["name"], "hi-greeting");
        assert_eq!(out.children[0]["data"]["message"], "bonjour");
        assert_eq!(out.events[0].message, "created ConfigMap/hi-greeting");
    }

    #[test]
    fn a_steady_state_reconcile_returns_what_the_parent_already_has() {
        let first = reconcile(&request(json!({}))).unwrap();
        let mut req = request(json!({}));
        req.object["status"] = first.status.clone().unwrap();
        req.children.insert(
            wasmop_pdk::child_key("v1", "ConfigMap"),
            [("hi-greeting".to_owned(), first.children[0].clone())].into(),
        );
        let again = reconcile(&req).unwrap();
        assert_eq!(again.status, first.status, "no fresh lastTransitionTime");
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_message_that_is_not_a_string_names_the_field() {
        let err = reconcile(&request(json!({ "message": 5 }))).unwrap_err();
        assert_eq!(err.to_string(), "spec.message must be a string");
    }

    #[test]
    fn the_export_boundary_reports_the_same_message() {
        let input =
            br#"{"abiVersion":"wasmop.dev/v1alpha1","controller":{"name":"c","namespace":"n"},
                         "object":{"metadata":{"name":"hi"},"spec":{"message":5}}}"#;
        let err = wasmop_pdk::call_json(input, reconcile).unwrap_err();
        assert_eq!(err.to_string(), "spec.message must be a string");
    }
}
