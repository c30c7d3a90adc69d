//! [`Fields`]: typed reads from one JSON object (a parent's `spec`, the plugin config, a
//! related object's contract) with errors that name the field by its full path.
//!
//! Two ways to read, on purpose:
//! - the typed methods ([`Fields::u64`], [`Fields::str`], [`Fields::get`], ...) return
//!   `Ok(None)` when the field is absent or `null` and an [`Error`] naming the field when it
//!   has the wrong type, so a user sees `spec.replicas must be a non-negative integer`;
//! - indexing (`fields["image"]`) is `serde_json`'s lenient access: any wrong type reads as
//!   `Value::Null`, for fields where falling back to a default is the intended behaviour.

use std::collections::BTreeMap;
use std::ops::Index;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, Result};

static NULL: Value = Value::Null;

/// A JSON object and the path it was read from (for error messages).
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    path: String,
    source: Source<'a>,
}

#[derive(Clone, Copy, Debug)]
enum Source<'a> {
    Value(&'a Value),
    Map(&'a BTreeMap<String, Value>),
}

impl<'a> Fields<'a> {
    /// Fields of `value`, reported as `path.<field>`. A non-object `value` (including null)
    /// reads as an object with no fields.
    pub fn new(path: impl Into<String>, value: &'a Value) -> Self {
        Fields {
            path: path.into(),
            source: Source::Value(value),
        }
    }

    /// Fields of a string-keyed map (such as a related object's `contract`).
    pub fn from_map(path: impl Into<String>, map: &'a BTreeMap<String, Value>) -> Self {
        Fields {
            path: path.into(),
            source: Source::Map(map),
        }
    }

    /// The dotted path of a field, e.g. `spec.replicas`.
    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn lookup(&self, key: &str) -> Option<&'a Value> {
        match self.source {
            Source::Value(v) => v.get(key),
            Source::Map(m) => m.get(key),
        }
    }

    /// The field's raw value; `None` when absent or null.
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.lookup(key).filter(|v| !v.is_null())
    }

    /// True when the field is present and not null.
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// A nested object, e.g. `spec.fields("template")`; absent reads as empty.
    pub fn fields(&self, key: &str) -> Fields<'a> {
        Fields::new(self.path_of(key), self.raw(key).unwrap_or(&NULL))
    }

    /// # Errors
    /// [`Error::InvalidField`] when present and not a string.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// # Errors
    /// [`Error::InvalidField`] when present and not an integer in `0..=u64::MAX`.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// # Errors
    /// [`Error::InvalidField`] when present and not an integer in the `i64` range.
    pub fn i64(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", Value::as_i64)
    }

    /// # Errors
    /// [`Error::InvalidField`] when present and not a number.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    /// # Errors
    /// [`Error::InvalidField`] when present and not `true`/`false`.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "true or false", Value::as_bool)
    }

    /// # Errors
    /// [`Error::InvalidField`] when present and not a list.
    pub fn list(&self, key: &str) -> Result<Option<&'a [Value]>> {
        self.typed(key, "a list", |v| v.as_array().map(Vec::as_slice))
    }

    /// The field deserialized into any serde type (a struct of your own, a `Vec<String>`...).
    ///
    /// # Errors
    /// [`Error::Decode`] naming the field, with serde's reason.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.raw(key)
            .map(|v| {
                T::deserialize(v).map_err(|source| Error::Decode {
                    field: self.path_of(key),
                    source,
                })
            })
            .transpose()
    }

    fn typed<T>(
        &self,
        key: &str,
        expected: &'static str,
        read: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .ok_or_else(|| Error::invalid(self.path_of(key), expected)),
        }
    }
}

/// Lenient access: `fields["image"].as_str()`; absent or wrong-typed reads as null.
impl Index<&str> for Fields<'_> {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        self.lookup(key).unwrap_or(&NULL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_and_null_fields_read_as_none() {
        let v = json!({"a": null});
        let f = Fields::new("spec", &v);
        assert_eq!(f.u64("a").unwrap(), None);
        assert_eq!(f.u64("b").unwrap(), None);
        assert!(!f.has("a"));
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_the_full_path() {
        let cases = [
            (
                json!({"replicas": -1}),
                "spec.replicas must be a non-negative integer",
            ),
            (
                json!({"replicas": 1.5}),
                "spec.replicas must be a non-negative integer",
            ),
            (
                json!({"replicas": "2"}),
                "spec.replicas must be a non-negative integer",
            ),
        ];
        for (v, want) in cases {
            let err = Fields::new("spec", &v).u64("replicas").unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn nested_fields_report_the_nested_path() {
        let v = json!({"tls": {"enabled": "yes"}});
        let spec = Fields::new("spec", &v);
        let tls = spec.fields("tls");
        assert_eq!(
            tls.bool("enabled").unwrap_err().to_string(),
            "spec.tls.enabled must be true or false"
        );
    }

    #[test]
    fn get_deserializes_and_names_the_field_on_failure() {
        let v = json!({"ports": [80, 443], "bad": ["x"]});
        let f = Fields::new("spec", &v);
        assert_eq!(f.get::<Vec<u16>>("ports").unwrap(), Some(vec![80, 443]));
        let err = f.get::<Vec<u16>>("bad").unwrap_err().to_string();
        assert!(err.starts_with("spec.bad is not valid: "), "{err}");
    }

    #[test]
    fn indexing_is_lenient() {
        let v = json!({"image": 5});
        let f = Fields::new("spec", &v);
        assert_eq!(f["image"].as_str().unwrap_or("nginx"), "nginx");
        assert!(f["missing"].is_null());
        assert!(Fields::new("spec", &Value::Null)["x"].is_null());
    }
}
