//! Example wasmop plugin for two samples, chosen by `config.pattern`:
//!
//! - `cleanup` (samples/finalizers): several controllers, each with its own finalizer on one
//!   object. Reconcile writes nothing; `finalize` records a `CleanedUp` Event and lets the
//!   object go, or, with `config.waitFor` set to an annotation, waits until the object carries
//!   that annotation (a stand-in for "the backup finished").
//! - `defaults` (samples/selector): every ConfigMap the `defaults` related entry selects (by
//!   label, sorted by name) is merged into the data of the parent's child ConfigMap
//!   `<parent>-defaults` (a child, not status: the real Cluster API Machine's status schema
//!   keeps no field of ours); a change to one of them re-reconciles the parents at once.
//! - `machine` (tests/tests/real_apis.rs, on the real Cluster API Machine v1beta2): reads its
//!   infrastructure object's readiness through the `infrastructureRef` contract (whichever
//!   contract version the object implements) and reports it in the Machine's own status
//!   fields: `initialization.infrastructureProvisioned`, the `InfrastructureReady` condition
//!   (its message names the object, the version it was read at and the path) and `phase`.
//! - `policy` (samples/policy, Gateway API policy attachment, GEP-713): a policy lists its
//!   targets in `spec.targetRefs`; each target gets an ancestor status with an `Accepted`
//!   condition, and each existing one an annotation carrying the policy's `spec.timeout`
//!   (the decorator part: the annotation is the plugin's own field on a route it does not own).
//!
//! Built for wasm32-wasip1 (conditions read the WASI clock). Tests run natively:
//! `cargo test -p patterns-plugin`.

use wasmop_pdk::prelude::*;

/// # Errors
/// An unknown `config.pattern`.
pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse> {
    match req.config().str("pattern")? {
        Some("cleanup") => Ok(ReconcileResponse::default()), // the finalizer is the point
        Some("defaults") => Ok(defaults(req)),
        Some("machine") => Ok(machine(req, &wasmop_pdk::now())),
        Some("policy") => Ok(policy(req, &wasmop_pdk::now())),
        other => Err(Error::msg(format!(
            "config.pattern must be \"cleanup\", \"defaults\", \"machine\" or \"policy\", got {other:?}"
        ))),
    }
}

/// Merges the selected ConfigMaps' data, later names winning, into the child ConfigMap
/// `<parent>-defaults`; its annotation `defaults.example.com/from` lists the sources.
fn defaults(req: &ReconcileRequest) -> ReconcileResponse {
    let mut merged = wasmop_pdk::serde_json::Map::new();
    let mut from = Vec::new();
    for cm in req
        .related("defaults")
        .map(|r| r.objects.as_slice())
        .unwrap_or_default()
    {
        from.push(cm["metadata"]["name"].as_str().unwrap_or_default());
        if let Some(data) = cm["data"].as_object() {
            merged.extend(data.clone());
        }
    }
    let mut out = ReconcileResponse::default();
    out.push_child(
        wasmop_pdk::child("v1", "ConfigMap", &format!("{}-defaults", req.name()))
            .annotation("defaults.example.com/from", &from.join(","))
            .field("data", merged),
    );
    out
}

/// A Cluster API v1beta2 Machine's infrastructure readiness, in the Machine's own status.
fn machine(req: &ReconcileRequest, now: &str) -> ReconcileResponse {
    let related = req.related("infrastructureRef");
    let object = related.and_then(|r| r.object.as_ref());
    let ready = related
        .and_then(|r| r.contract.get("ready"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (phase, reason, message) = match object {
        None => (
            "Pending",
            "InfrastructureNotFound",
            related
                .and_then(|r| r.reason.clone())
                .unwrap_or_else(|| "no infrastructure object".into()),
        ),
        Some(o) => {
            let path = related
                .and_then(|r| r.matched.get("ready"))
                .map_or("no contract path", String::as_str);
            let what = format!(
                "{} ({}, {path})",
                wasmop_pdk::reference(o),
                o["apiVersion"].as_str().unwrap_or_default()
            );
            if ready {
                ("Provisioned", "Provisioned", what)
            } else {
                ("Provisioning", "NotProvisioned", what)
            }
        }
    };
    let condition = Condition::new("InfrastructureReady", ready, reason, message);
    let mut out = ReconcileResponse::default();
    out.set_status(json!({
        "phase": phase,
        "initialization": {"infrastructureProvisioned": ready},
        "conditions": conditions(req, [condition], now),
    }));
    out
}

/// The controller name a policy's ancestor statuses carry.
const POLICY_CONTROLLER: &str = "example.com/route-policy";

/// GEP-713: an `Accepted` ancestor status per target, and the policy's annotation on each
/// target that exists.
fn policy(req: &ReconcileRequest, now: &str) -> ReconcileResponse {
    #[cfg(target_family = "wasm")] // the host's log; which policies a change reached
    extism_pdk::info!("policy {}", req.name());
    let timeout = req.object["spec"]["timeout"].as_str().unwrap_or("30s");
    let previous = req.object["status"]["ancestors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let annotation = format!("policy.example.com/{}", req.name());
    let mut out = ReconcileResponse::default();
    let mut ancestors = Vec::new();
    let targets = req
        .related("targetRefs")
        .map(|r| r.targets.as_slice())
        .unwrap_or_default();
    for target in targets {
        let r = &target.reference;
        let ancestor = json!({"group": r["group"], "kind": r["kind"], "name": r["name"]});
        let (status, reason, message) = match &target.object {
            Some(route) => {
                out.apply.push(json!({
                    "apiVersion": route["apiVersion"], "kind": route["kind"],
                    "metadata": {"name": route["metadata"]["name"],
                                 "annotations": {&annotation: timeout}},
                }));
                ("True", "Accepted", format!("timeout {timeout} applied"))
            }
            None => (
                "False",
                "TargetNotFound",
                target.reason.clone().unwrap_or_default(),
            ),
        };
        let kept = previous
            .iter()
            .find(|a| a["ancestorRef"] == ancestor)
            .and_then(|a| a["conditions"].as_array()?.first().cloned())
            .filter(|c| c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_owned));
        ancestors.push(json!({
            "ancestorRef": ancestor,
            "controllerName": POLICY_CONTROLLER,
            "conditions": [{
                "type": "Accepted", "status": status, "reason": reason, "message": message,
                "observedGeneration": req.generation(),
                "lastTransitionTime": kept.as_deref().unwrap_or(now),
            }],
        }));
    }
    out.set_status(json!({ "ancestors": ancestors }));
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
            "object": {"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
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
    fn a_machine_reports_its_infrastructure_in_its_own_status_fields() {
        let related = json!({"infrastructureRef": {"object": {"apiVersion": "infrastructure.example.com/v1alpha1",
            "kind": "LabMachine", "metadata": {"name": "lab-0"}}, "contract": {"ready": true},
            "matched": {"ready": "$.status.initialization.provisioned"}}});
        let out = reconcile_at(json!({"pattern": "machine"}), related, "machine");
        let status = out.status.unwrap();
        assert_eq!(status["phase"], "Provisioned");
        assert_eq!(status["initialization"]["infrastructureProvisioned"], true);
        let c = &status["conditions"][0];
        assert_eq!(
            (c["type"].as_str(), c["status"].as_str()),
            (Some("InfrastructureReady"), Some("True"))
        );
        assert_eq!(
            c["message"],
            "LabMachine/lab-0 (infrastructure.example.com/v1alpha1, $.status.initialization.provisioned)"
        );
        let missing = json!({"infrastructureRef": {"object": null, "reason": "LabMachine lab-1 does not exist"}});
        let status = reconcile_at(json!({"pattern": "machine"}), missing, "machine")
            .status
            .unwrap();
        assert_eq!(status["phase"], "Pending");
        assert_eq!(
            status["conditions"][0]["message"],
            "LabMachine lab-1 does not exist"
        );
    }

    #[test]
    fn a_policy_accepts_each_existing_target_and_annotates_it() {
        let route = |n: &str| json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": n}});
        let r =
            |n: &str| json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": n});
        let related = json!({"targetRefs": {"object": null, "targets": [
            {"ref": r("a"), "object": route("a")},
            {"ref": r("b"), "object": null, "reason": "HTTPRoute b does not exist"}]}});
        let out = reconcile_at(json!({"pattern": "policy"}), related, "policy");
        let ancestors = &out.status.unwrap()["ancestors"];
        assert_eq!(ancestors[0]["ancestorRef"], r("a"));
        assert_eq!(ancestors[0]["conditions"][0]["status"], "True");
        assert_eq!(ancestors[1]["conditions"][0]["reason"], "TargetNotFound");
        assert_eq!(out.apply.len(), 1);
        assert_eq!(
            out.apply[0]["metadata"]["annotations"]["policy.example.com/m"],
            "30s"
        );
    }

    fn reconcile_at(config: Value, related: Value, _what: &str) -> ReconcileResponse {
        let mut req = request(config, json!({}), related);
        req.finalizing = false;
        match req.config().str("pattern").unwrap() {
            Some("machine") => machine(&req, "2026-12-06T00:00:00Z"),
            _ => policy(&req, "2026-12-06T00:00:00Z"),
        }
    }

    #[test]
    fn defaults_merge_the_selected_config_maps_in_name_order() {
        let related = json!({"defaults": {"object": null, "contract": {}, "missing": [], "objects": [
            {"metadata": {"name": "a"}, "data": {"region": "eu", "size": "small"}},
            {"metadata": {"name": "b"}, "data": {"size": "large"}}]}});
        let out = reconcile(&request(json!({"pattern": "defaults"}), json!({}), related)).unwrap();
        assert_eq!(out.status, None);
        assert_eq!(
            out.children,
            [json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "m-defaults", "annotations": {"defaults.example.com/from": "a,b"}},
                    "data": {"region": "eu", "size": "large"}})]
        );
        assert!(reconcile(&request(json!({}), json!({}), json!({}))).is_err());
    }
}
