//! {{name}}: the wasmop plugin for {{kind}} ({{api_version}}).
//!
//! `reconcile` is a plain function: `cargo test` runs the tests below natively, and
//! `wasmop_pdk::export!` turns it into the Extism export only in the wasm build
//! (`make build`). The fixture suite in fixtures/ runs the built plugin (`make test`).
//! Declared child kinds (deploy/wasmcontroller.yaml): {{children_list}}.

use wasmop_pdk::prelude::*;

/// Desired children and status of one {{kind}}. Deterministic: the same request gives the same
/// response, so a steady state writes nothing.
///
/// # Errors
/// A `spec.message` that is not a string (the message names the field).
pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse> {
    let message = req.spec().str("message")?.unwrap_or("hello");
    let mut out = ReconcileResponse::default();
{{#configmap}}
    let name = req.name();
    let config_map = child("v1", "ConfigMap", &format!("{name}-greeting"))
        .label("app.kubernetes.io/managed-by", "wasmop")
        .field("data", json!({ "message": message }));
    if req.existing(config_map.as_value()).is_none() {
        out.normal("Created", format!("created {}", config_map.reference()));
    }
    out.push_child(config_map);
{{/configmap}}
    // Return every child this parent should have: children this controller made that are not
    // returned any more are deleted.
    out.set_status(json!({
        "phase": "Ready",
        "observedGeneration": req.generation(),
        "message": message,
    }));
    Ok(out)
}

wasmop_pdk::export!(reconcile);

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
    fn the_status_carries_the_message() {
        let out = reconcile(&request(json!({ "message": "bonjour" }))).unwrap();
        assert_eq!(out.status.unwrap()["message"], "bonjour");
    }

    #[test]
    fn a_message_that_is_not_a_string_names_the_field() {
        let err = reconcile(&request(json!({ "message": 42 }))).unwrap_err();
        assert_eq!(err.to_string(), "spec.message must be a string");
    }
}
