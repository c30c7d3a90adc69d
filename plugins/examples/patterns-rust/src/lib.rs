//! Example wasmop plugin for two samples, chosen by `config.pattern`:
//!
//! - `cleanup` (samples/finalizers): several controllers, each with its own finalizer on one
//!   object. Reconcile writes nothing; `finalize` records a `CleanedUp` Event and lets the
//!   object go, or, with `config.waitFor` set to an annotation, waits until the object carries
//!   that annotation (a stand-in for "the backup finished").
//! - `defaults` (samples/selector): every ConfigMap the `defaults` related entry selects (by
//!   label, sorted by name) is merged into `status.defaults`; a change to one of them
//!   re-reconciles the parents at once.
//!
//! Tests run natively: `cargo test -p patterns-plugin`.

use wasmop_pdk::prelude::*;

/// # Errors
/// An unknown `config.pattern`.
pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse> {
    match req.config().str("pattern")? {
        Some("cleanup") => Ok(ReconcileResponse::default()), // the finalizer is the point
        Some("defaults") => Ok(defaults(req)),
        other => Err(Error::msg(format!(
            "config.pattern must be \"cleanup\" or \"defaults\", got {other:?}"
        ))),
    }
}

/// Merges the selected ConfigMaps' data, later names winning, into `status.defaults`.
fn defaults(req: &ReconcileRequest) -> ReconcileResponse {
    let mut merged = wasmop_pdk::serde_json::Map::new();
    let mut from = Vec::new();
    for cm in req
        .related("defaults")
        .map(|r| r.objects.as_slice())
        .unwrap_or_default()
    {
        from.push(cm["metadata"]["name"].clone());
        if let Some(data) = cm["data"].as_object() {
            merged.extend(data.clone());
        }
    }
    let mut out = ReconcileResponse::default();
    out.set_status(json!({ "defaults": merged, "defaultsFrom": from }));
    out
}

/// # Errors
/// `config.name` or `config.waitFor` that is not a string.
pub fn finalize(req: &ReconcileRequest) -> Result<ReconcileResponse> {
    let config = req.config();
    let name = config.str("name")?.unwrap_or("cleanup");
    let kind = req.object["kind"].as_str().unwrap_or("object");
    if let Some(annotation) = config.str("waitFor")?
        && req.object["metadata"]["annotations"][annotation].is_null()
    {
        let mut out = ReconcileResponse::default();
        out.normal(
            "WaitingForCleanup",
            format!(
                "{name}: waiting for annotation {annotation} on {kind} {}",
                req.name()
            ),
        );
        return Ok(out);
    }
    let mut out = finalized();
    out.normal(
        "CleanedUp",
        format!("{name}: cleaned up {kind} {}", req.name()),
    );
    Ok(out)
}

wasmop_pdk::export!(reconcile = reconcile, finalize = finalize);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(config: Value, annotations: Value, related: Value) -> ReconcileRequest {
        serde_json::from_value(json!({
            "abiVersion": "1",
            "controller": {"name": "c", "namespace": "team-a", "config": config},
            "object": {"apiVersion": "cluster.example.com/v1beta2", "kind": "Machine",
                       "metadata": {"name": "m", "annotations": annotations}},
            "children": {}, "related": related, "finalizing": true,
        }))
        .unwrap()
    }

    #[test]
    fn cleanup_waits_for_its_annotation_then_lets_go() {
        let config =
            json!({"pattern": "cleanup", "name": "backup", "waitFor": "backup.example.com/done"});
        let waiting = finalize(&request(config.clone(), json!({}), json!({}))).unwrap();
        assert!(!waiting.finalized);
        assert_eq!(waiting.events[0].reason, "WaitingForCleanup");
        let done = finalize(&request(
            config,
            json!({"backup.example.com/done": "yes"}),
            json!({}),
        ))
        .unwrap();
        assert!(done.finalized);
        assert_eq!(done.events[0].message, "backup: cleaned up Machine m");
    }

    #[test]
    fn defaults_merge_the_selected_config_maps_in_name_order() {
        let related = json!({"defaults": {"object": null, "contract": {}, "missing": [], "objects": [
            {"metadata": {"name": "a"}, "data": {"region": "eu", "size": "small"}},
            {"metadata": {"name": "b"}, "data": {"size": "large"}}]}});
        let out = reconcile(&request(json!({"pattern": "defaults"}), json!({}), related)).unwrap();
        assert_eq!(
            out.status.unwrap(),
            json!({"defaults": {"region": "eu", "size": "large"}, "defaultsFrom": ["a", "b"]})
        );
        assert!(reconcile(&request(json!({}), json!({}), json!({}))).is_err());
    }
}
