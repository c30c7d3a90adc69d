//! Building desired objects: [`child`] starts a Kubernetes object with `apiVersion`, `kind`
//! and `metadata.name`; the builder adds labels, annotations and top-level fields.
//!
//! Leave `metadata.namespace` out: the host puts every child in the parent's namespace, adds
//! the controller ownerReference and applies it with server-side apply.

use serde_json::{Map, Value, json};

/// A desired object under construction. Turn it into a [`Value`] with `.into()` (or push it
/// with [`crate::ResponseExt::push_child`], which accepts it directly).
#[derive(Clone, Debug, PartialEq)]
pub struct Child(Value);

/// A new object `{"apiVersion", "kind", "metadata": {"name"}}`.
///
/// ```
/// use wasmop_pdk::{child, json, Value};
/// let cm: Value = child("v1", "ConfigMap", "site-content")
///     .label("app.kubernetes.io/name", "site")
///     .field("data", json!({"index.html": "<h1>hi</h1>"}))
///     .into();
/// assert_eq!(cm["metadata"]["labels"]["app.kubernetes.io/name"], "site");
/// ```
pub fn child(api_version: &str, kind: &str, name: &str) -> Child {
    Child(json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}))
}

impl Child {
    /// Adds (or replaces) one `metadata.labels` entry.
    pub fn label(self, key: &str, value: &str) -> Self {
        self.meta_entry("labels", key, value)
    }

    /// Adds every pair to `metadata.labels`.
    pub fn labels<'k, 'v>(self, pairs: impl IntoIterator<Item = (&'k str, &'v str)>) -> Self {
        pairs.into_iter().fold(self, |c, (k, v)| c.label(k, v))
    }

    /// Adds (or replaces) one `metadata.annotations` entry.
    pub fn annotation(self, key: &str, value: &str) -> Self {
        self.meta_entry("annotations", key, value)
    }

    /// Sets a top-level field such as `spec` or `data`.
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.object_mut().insert(key.to_owned(), value.into());
        self
    }

    /// `Kind/name`, as used in status summaries and event messages.
    pub fn reference(&self) -> String {
        reference(&self.0)
    }

    /// The object as JSON.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    fn meta_entry(mut self, map: &str, key: &str, value: &str) -> Self {
        let meta = self
            .object_mut()
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let entries = meta.entry(map).or_insert_with(|| json!({}));
            if let Some(entries) = entries.as_object_mut() {
                entries.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        self
    }

    fn object_mut(&mut self) -> &mut Map<String, Value> {
        self.0
            .as_object_mut()
            .expect("child() always builds a JSON object")
    }
}

impl From<Child> for Value {
    fn from(c: Child) -> Value {
        c.0
    }
}

/// `Kind/name` of any object (empty parts when absent), e.g. `Deployment/site`.
pub fn reference(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_has_identity_labels_annotations_and_fields() {
        let v: Value = child("apps/v1", "Deployment", "site")
            .labels([("a", "1"), ("b", "2")])
            .annotation("note", "x")
            .field("spec", json!({"replicas": 2}))
            .into();
        assert_eq!(
            v,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "site", "labels": {"a": "1", "b": "2"},
                                "annotations": {"note": "x"}},
                   "spec": {"replicas": 2}})
        );
    }

    #[test]
    fn reference_is_kind_slash_name() {
        assert_eq!(child("v1", "ConfigMap", "c").reference(), "ConfigMap/c");
    }
}
