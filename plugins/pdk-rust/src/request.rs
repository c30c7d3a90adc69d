//! [`RequestExt`]: reading a [`ReconcileRequest`] — the parent's name, spec and status, the
//! plugin config, current children by kind and name, related objects and their contracts.

use serde_json::Value;
use wasmop_abi::{ReconcileRequest, Related, child_key};

use crate::Fields;

static NULL: Value = Value::Null;

/// Helpers on [`ReconcileRequest`] (in the prelude).
pub trait RequestExt {
    /// The parent's `metadata.name` (empty only in hand-written test requests).
    fn name(&self) -> &str;
    /// The parent's `metadata.namespace`, when namespaced.
    fn namespace(&self) -> Option<&str>;
    /// The parent's `metadata.generation`, 0 when absent.
    fn generation(&self) -> i64;
    /// The parent's `spec`, with errors reported as `spec.<field>`.
    fn spec(&self) -> Fields<'_>;
    /// The parent's current `status` (what the last reconcile wrote), as `status.<field>`.
    fn status(&self) -> Fields<'_>;
    /// The WasmController's `spec.plugin.config`, with errors reported under that path.
    fn config(&self) -> Fields<'_>;
    /// The current child `kind`/`name` of `api_version` owned by this controller.
    fn child(&self, api_version: &str, kind: &str, name: &str) -> Option<&Value>;
    /// The current child with the apiVersion, kind and `metadata.name` of `desired`.
    fn existing(&self, desired: &Value) -> Option<&Value>;
    /// Every current child of one kind, by name (sorted).
    fn children_of<'a>(
        &'a self,
        api_version: &str,
        kind: &str,
    ) -> Box<dyn Iterator<Item = (&'a str, &'a Value)> + 'a>;
    /// A resolved `spec.related` entry by its name.
    fn related(&self, name: &str) -> Option<&Related>;
    /// The contract fields of a related `ref` entry, reported as `related.<name>.contract.<field>`.
    /// Empty when the entry is unknown or its object does not exist.
    fn contract(&self, related: &str) -> Fields<'_>;
    /// The parent's current `status.conditions` (empty when none).
    fn conditions(&self) -> &[Value];
}

impl RequestExt for ReconcileRequest {
    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }

    fn generation(&self) -> i64 {
        self.object["metadata"]["generation"].as_i64().unwrap_or(0)
    }

    fn spec(&self) -> Fields<'_> {
        Fields::new("spec", self.object.get("spec").unwrap_or(&NULL))
    }

    fn status(&self) -> Fields<'_> {
        Fields::new("status", self.object.get("status").unwrap_or(&NULL))
    }

    fn config(&self) -> Fields<'_> {
        Fields::new("WasmController spec.plugin.config", &self.controller.config)
    }

    fn child(&self, api_version: &str, kind: &str, name: &str) -> Option<&Value> {
        self.children.get(&child_key(api_version, kind))?.get(name)
    }

    fn existing(&self, desired: &Value) -> Option<&Value> {
        let api_version = desired["apiVersion"].as_str()?;
        let kind = desired["kind"].as_str()?;
        let name = desired["metadata"]["name"].as_str()?;
        self.child(api_version, kind, name)
    }

    fn children_of<'a>(
        &'a self,
        api_version: &str,
        kind: &str,
    ) -> Box<dyn Iterator<Item = (&'a str, &'a Value)> + 'a> {
        match self.children.get(&child_key(api_version, kind)) {
            Some(by_name) => Box::new(by_name.iter().map(|(n, v)| (n.as_str(), v))),
            None => Box::new(std::iter::empty()),
        }
    }

    fn related(&self, name: &str) -> Option<&Related> {
        self.related.get(name)
    }

    fn contract(&self, related: &str) -> Fields<'_> {
        let path = format!("related.{related}.contract");
        match self.related.get(related) {
            Some(r) => Fields::from_map(path, &r.contract),
            None => Fields::new(path, &NULL),
        }
    }

    fn conditions(&self) -> &[Value] {
        self.object["status"]["conditions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmop_abi::ControllerInfo;

    fn request() -> ReconcileRequest {
        ReconcileRequest {
            object: json!({
                "metadata": {"name": "site", "namespace": "team-a", "generation": 3},
                "spec": {"replicas": 2},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }),
            controller: ControllerInfo {
                config: json!({"replicas": "x"}),
                ..Default::default()
            },
            children: [(
                "Deployment.apps/v1".to_owned(),
                [(
                    "site".to_owned(),
                    json!({"status": {"availableReplicas": 1}}),
                )]
                .into(),
            )]
            .into(),
            related: [(
                "infra".to_owned(),
                Related {
                    contract: [("ready".to_owned(), json!("yes"))].into(),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_reads_name_namespace_and_generation() {
        let r = request();
        assert_eq!(
            (r.name(), r.namespace(), r.generation()),
            ("site", Some("team-a"), 3)
        );
        assert_eq!(ReconcileRequest::default().generation(), 0);
    }

    #[test]
    fn a_current_child_is_found_by_kind_and_name_or_by_a_desired_object() {
        let r = request();
        assert!(r.child("apps/v1", "Deployment", "site").is_some());
        assert!(r.child("v1", "ConfigMap", "site").is_none());
        let desired =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "site"}});
        assert_eq!(
            r.existing(&desired).unwrap()["status"]["availableReplicas"],
            1
        );
        assert_eq!(
            r.children_of("apps/v1", "Deployment")
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["site"]
        );
    }

    #[test]
    fn config_and_contract_errors_name_where_the_user_set_the_field() {
        let r = request();
        assert_eq!(
            r.config().u64("replicas").unwrap_err().to_string(),
            "WasmController spec.plugin.config.replicas must be a non-negative integer"
        );
        assert_eq!(
            r.contract("infra").bool("ready").unwrap_err().to_string(),
            "related.infra.contract.ready must be true or false"
        );
        assert_eq!(r.contract("absent").bool("ready").unwrap(), None);
    }

    #[test]
    fn current_conditions_come_from_the_parent_status() {
        assert_eq!(request().conditions()[0]["type"], "Ready");
        assert!(ReconcileRequest::default().conditions().is_empty());
    }
}
