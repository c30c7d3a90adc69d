//! The wasmop plugin ABI, version [`ABI_VERSION`].
//!
//! A plugin exports `reconcile` (and `finalize` when the WasmController sets
//! `plugin.finalize`). Both take a JSON [`ReconcileRequest`] and return a JSON
//! [`ReconcileResponse`]. These types are the single source of truth: the JSON Schema in
//! `plugins/schema/abi.schema.json` is generated from them (`make abi`, i.e. the
//! `wasmop-schema` crate; `wasmop schema` prints the same), and the TypeScript and Go types and
//! `docs/abi.md` are generated from that schema, each with a drift check.
//!
//! This crate has no extism dependency so that the host (`operator/`) and every PDK share it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The ABI version string carried in every request. A plugin may refuse versions it does
/// not know; the host refuses responses that are not valid for this version.
pub const ABI_VERSION: &str = "wasmop.dev/v1alpha1";

/// The export the host calls for a live parent.
pub const RECONCILE_EXPORT: &str = "reconcile";
/// The export the host calls for a parent being deleted (only with `plugin.finalize: true`).
pub const FINALIZE_EXPORT: &str = "finalize";

/// What the host hands the plugin on every call: a pure function input.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRequest {
    /// Always [`ABI_VERSION`].
    pub abi_version: String,
    /// Which WasmController this call is for, and its free-form `spec.plugin.config`.
    pub controller: ControllerInfo,
    /// The parent object, unstructured (as the API server returns it).
    pub object: Value,
    /// The parent's current children owned by this controller, by child-kind key
    /// (see [`child_key`]), then by name. Every declared child kind has an entry, empty
    /// when there are none, so a plugin can tell "none yet" from "not declared".
    #[serde(default)]
    pub children: BTreeMap<String, BTreeMap<String, Value>>,
    /// Related objects by the `name` of their `spec.related` entry.
    #[serde(default)]
    pub related: BTreeMap<String, Related>,
    /// True when the parent is being deleted and the `finalize` export is being called.
    #[serde(default)]
    pub finalizing: bool,
}

/// Identity and configuration of the calling WasmController.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControllerInfo {
    pub name: String,
    pub namespace: String,
    /// `spec.plugin.config` verbatim (null when unset).
    #[serde(default)]
    pub config: Value,
}

/// One `spec.related` entry, resolved.
///
/// A `ref` entry (API-contract pattern) fills `object` and `contract`; a `selector` entry fills
/// `objects`. One shape for both keeps the generated TypeScript and Go types simple.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Related {
    /// The referenced object; null when the reference is unset or the object does not exist.
    #[serde(default)]
    pub object: Option<Value>,
    /// The objects matching a selector entry, sorted by name.
    #[serde(default)]
    pub objects: Vec<Value>,
    /// Contract fields read from `object` by their JSONPath, by contract field name.
    /// A field that is not present in the object is absent here and listed in `missing`.
    #[serde(default)]
    pub contract: BTreeMap<String, Value>,
    /// Contract field names whose JSONPath matched nothing in `object`, or whose value had
    /// the wrong type (see `violations`).
    #[serde(default)]
    pub missing: Vec<String>,
    /// For each field in `contract`: the JSONPath its value came from (with `contractFields`,
    /// the first of its paths present in the object).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matched: BTreeMap<String, String>,
    /// Contract violations: a field whose value is not of the type `contractFields` asks
    /// for (also reported as a Warning Event on the parent). The field is in `missing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Why `object` is null, when it is (e.g. "spec.infrastructureRef is not set").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a `ref` whose JSONPath yields a list of references (Gateway API `targetRefs`):
    /// one entry per reference, in the list's order; `object` is then null.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<RelatedTarget>,
}

/// One reference of a list `ref` entry, resolved.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelatedTarget {
    /// The reference as the parent wrote it, e.g. `{group, kind, name, sectionName}`.
    #[serde(rename = "ref")]
    pub reference: Value,
    /// The referenced object; null when it cannot be resolved (see `reason`).
    #[serde(default)]
    pub object: Option<Value>,
    /// Contract fields read from `object`, by contract field name (as on the entry).
    #[serde(default)]
    pub contract: BTreeMap<String, Value>,
    /// Contract field names not present in `object` (or of the wrong type).
    #[serde(default)]
    pub missing: Vec<String>,
    /// For each field in `contract`: the JSONPath its value came from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub matched: BTreeMap<String, String>,
    /// Contract violations (also a Warning Event on the parent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Why `object` is null, when it is (e.g. "HTTPRoute b does not exist").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the plugin wants. The whole response is validated before anything is written.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReconcileResponse {
    /// The complete desired set of children, each with a controller ownerReference to the
    /// parent (created if missing, server-side applied if this controller already owns it; an
    /// existing object that is not ours fails the reconcile with ChildConflict). Owned
    /// children missing from this list are deleted.
    #[serde(default)]
    pub children: Vec<Value>,
    /// Applied to the parent's status subresource (server-side apply); null leaves it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// Extra server-side apply patches to the parent or a related object (decorator and
    /// API-contract patterns). Each names apiVersion, kind and metadata.name of its target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apply: Vec<Value>,
    /// Reconcile this parent again after this many seconds even if nothing changes (at most
    /// `resyncPeriod`). 0 means the same as leaving it out, as `RequeueAfter: 0` does in
    /// controller-runtime: the next change or resync. Every parent is held to 10 reconciles
    /// in a burst and 1 per second sustained, however often it asks or changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeue_after_seconds: Option<u64>,
    /// Kubernetes Events to record on the parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// From `finalize`: true when cleanup is complete and the parent may go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finalized: bool,
}

/// A Kubernetes Event to record on the parent.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    #[serde(rename = "type")]
    pub type_: EventType,
    /// UpperCamelCase, e.g. `Synced`.
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// The key of a child kind in [`ReconcileRequest::children`]: `Kind.apiVersion`,
/// e.g. `ConfigMap.v1` or `Deployment.apps/v1`.
pub fn child_key(api_version: &str, kind: &str) -> String {
    format!("{kind}.{api_version}")
}

/// The JSON Schema of the whole ABI: request and response as `$defs` of one document.
pub fn schema() -> Value {
    #[derive(JsonSchema)]
    #[allow(dead_code)] // only its schema is used
    #[serde(rename_all = "camelCase")]
    struct Abi {
        request: ReconcileRequest,
        response: ReconcileResponse,
    }
    let mut schema = serde_json::to_value(schemars::schema_for!(Abi)).expect("schema serialises");
    schema["$id"] = Value::String(format!("https://wasmop.dev/abi/{ABI_VERSION}.json"));
    schema["title"] = Value::String("wasmop plugin ABI".into());
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn response_with_unknown_field_is_rejected_with_its_name() {
        let err = serde_json::from_value::<ReconcileResponse>(json!({"childs": []})).unwrap_err();
        assert!(err.to_string().contains("childs"), "{err}");
    }

    #[test]
    fn empty_response_means_no_children_and_no_status() {
        let r: ReconcileResponse = serde_json::from_value(json!({})).unwrap();
        assert!(r.children.is_empty() && r.status.is_none() && !r.finalized);
    }

    #[test]
    fn child_key_uses_kind_dot_api_version() {
        assert_eq!(child_key("apps/v1", "Deployment"), "Deployment.apps/v1");
    }

    #[test]
    fn schema_names_both_request_and_response() {
        let s = schema().to_string();
        assert!(s.contains("ReconcileRequest") && s.contains("ReconcileResponse"));
    }
}
