//! Case files: a plugin call's inputs as YAML (the parent, its current children, related
//! objects, config) and, for test suites, what the call must produce (`expect`).
//!
//! Format and semantics are documented in `docs/eval-and-explain.md`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use wasmop_abi::Related;

use super::{Error, Evaluation, Result};
use crate::crd::KindRef;

/// The keys an `expect` block may hold.
pub const EXPECT_KEYS: &[&str] = &[
    "children",
    "status",
    "events",
    "requeueAfterSeconds",
    "apply",
    "prune",
    "finalized",
    "error",
];

/// One case file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    /// Free text shown nowhere but in the file: what the case is about.
    #[serde(default)]
    pub description: Option<String>,
    /// The parent, as the API server would return it.
    pub object: Value,
    /// The parent's current children (this controller's): they become `request.children` and
    /// the set a plan prunes from.
    #[serde(default)]
    pub children: Vec<Value>,
    /// `request.related`, by entry name, in the ABI's shape.
    #[serde(default)]
    pub related: BTreeMap<String, Related>,
    /// `controller.config`; overrides `--controller`'s `spec.plugin.config`.
    #[serde(default)]
    pub config: Option<Value>,
    /// The declared child kinds; overrides `--controller`'s `spec.children`.
    #[serde(default)]
    pub child_kinds: Option<Vec<KindRef>>,
    /// Call `finalize` for a parent being deleted instead of `reconcile`.
    #[serde(default)]
    pub finalizing: bool,
    /// What the call must produce (only `--test` reads it).
    #[serde(default)]
    pub expect: Option<Map<String, Value>>,
}

impl Case {
    /// Reads and checks a case file.
    ///
    /// # Errors
    /// [`Error::Read`] or [`Error::Case`] naming the file and the field.
    pub fn load(path: &Path) -> Result<Case> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let case: Case = serde_yaml::from_str(&text).map_err(|e| Error::Case {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        case.check().map_err(|message| Error::Case {
            path: path.display().to_string(),
            message,
        })?;
        Ok(case)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let field = |v: &Value, path: &str| match v.pointer(path) {
            Some(Value::String(s)) if !s.is_empty() => Ok(()),
            _ => Err(format!(
                "object{}: is required (a non-empty string)",
                path.replace('/', ".")
            )),
        };
        if !self.object.is_object() {
            return Err(
                "object: must be the parent object (a mapping with apiVersion, kind, metadata)"
                    .into(),
            );
        }
        for path in ["/apiVersion", "/kind", "/metadata/name"] {
            field(&self.object, path)?;
        }
        for (i, child) in self.children.iter().enumerate() {
            for path in ["/apiVersion", "/kind", "/metadata/name"] {
                field(child, path)
                    .map_err(|m| format!("children[{i}]{}", m.trim_start_matches("object")))?;
            }
        }
        if let Some(expect) = &self.expect {
            if let Some(unknown) = expect.keys().find(|k| !EXPECT_KEYS.contains(&k.as_str())) {
                return Err(format!(
                    "expect.{unknown}: unknown key; an expect block may hold {}",
                    EXPECT_KEYS.join(", ")
                ));
            }
            if expect.contains_key("error") && expect.len() > 1 {
                return Err("expect.error: a failing call produces nothing else; expect either error or the other keys".into());
            }
            if expect.get("error").is_some_and(|e| !e.is_string()) {
                return Err(
                    "expect.error: must be a string (a substring of the error message)".into(),
                );
            }
        }
        Ok(())
    }
}

/// How a case compared with its expectations.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// `summary` says what went wrong; `diff` is a unified diff (YAML) of expected vs actual,
    /// empty when there is nothing to compare (e.g. an unexpected error).
    Fail {
        summary: String,
        diff: String,
    },
}

/// Compares an evaluation with an `expect` block.
pub fn check(expect: &Map<String, Value>, evaluation: &Evaluation) -> Verdict {
    if let Some(wanted) = expect.get("error").and_then(Value::as_str) {
        return match &evaluation.result {
            Err(e) if e.to_string().contains(wanted) => Verdict::Pass,
            Err(e) => Verdict::Fail {
                summary: "the call failed with a different error".into(),
                diff: diff(&json!({"error": wanted}), &json!({"error": e.to_string()})),
            },
            Ok(_) => Verdict::Fail {
                summary: format!("expected an error containing {wanted:?}, but the call succeeded"),
                diff: diff(&json!({"error": wanted}), &json!({"error": null})),
            },
        };
    }
    let planned = match &evaluation.result {
        Ok(planned) => planned,
        Err(e) => {
            return Verdict::Fail {
                summary: format!("the call failed: {e}"),
                diff: String::new(),
            };
        }
    };
    let response = &planned.response;
    let mut actual = Map::new();
    for key in expect.keys() {
        let value = match key.as_str() {
            "children" => Value::Array(response.children.clone()),
            "status" => response.status.clone().unwrap_or(Value::Null),
            "events" => serde_json::to_value(&response.events).expect("events serialise"),
            "requeueAfterSeconds" => response
                .requeue_after_seconds
                .map_or(Value::Null, Value::from),
            "apply" => Value::Array(response.apply.clone()),
            "prune" => planned
                .plan
                .prune
                .iter()
                .map(|o| Value::String(format!("{}/{}", o.target.kind, o.target.name)))
                .collect(),
            "finalized" => Value::Bool(response.finalized),
            _ => unreachable!("keys are checked when the case is loaded"),
        };
        actual.insert(key.clone(), value);
    }
    let expected = Value::Object(expect.clone());
    let actual = Value::Object(actual);
    if expected == actual {
        Verdict::Pass
    } else {
        let keys: Vec<&str> = expect
            .keys()
            .filter(|k| expect[*k] != actual[k.as_str()])
            .map(String::as_str)
            .collect();
        Verdict::Fail {
            summary: format!(
                "{} differ{}",
                keys.join(", "),
                if keys.len() == 1 { "s" } else { "" }
            ),
            diff: diff(&expected, &actual),
        }
    }
}

/// A unified diff of two values as YAML.
pub fn diff(expected: &Value, actual: &Value) -> String {
    let (a, b) = (to_yaml(expected), to_yaml(actual));
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string()
}

fn to_yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("JSON values serialise as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::eval::Planned;
    use crate::reconcile::plan::Plan;
    use wasmop_abi::ReconcileResponse;

    fn evaluation(response: Value) -> Evaluation {
        let response: ReconcileResponse = serde_json::from_value(response).unwrap();
        Evaluation {
            logs: vec![],
            elapsed: None,
            result: Ok(Planned {
                response,
                plan: Plan::default(),
            }),
        }
    }

    fn expect(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn matching_expectations_pass_and_a_changed_value_shows_in_the_diff() {
        let ev = evaluation(json!({"status": {"phase": "Ready", "replicas": 2}, "events": []}));
        assert_eq!(
            check(
                &expect(json!({"status": {"phase": "Ready", "replicas": 2}, "events": []})),
                &ev
            ),
            Verdict::Pass
        );
        let Verdict::Fail { summary, diff } = check(
            &expect(json!({"status": {"phase": "Ready", "replicas": 3}})),
            &ev,
        ) else {
            panic!("expected a failure")
        };
        assert_eq!(summary, "status differs");
        assert!(
            diff.contains("-  replicas: 3\n") && diff.contains("+  replicas: 2\n"),
            "{diff}"
        );
        assert!(diff.starts_with("--- expected\n+++ actual\n"), "{diff}");
    }

    #[test]
    fn an_expected_error_matches_by_substring() {
        let failed = Evaluation {
            logs: vec![],
            elapsed: None,
            result: Err(crate::reconcile::context::Error::Plugin(
                crate::plugin::Error::Failed {
                    message: "spec.replicas must be a non-negative integer".into(),
                },
            )),
        };
        assert_eq!(
            check(&expect(json!({"error": "non-negative integer"})), &failed),
            Verdict::Pass
        );
        assert!(matches!(
            check(&expect(json!({"error": "something else"})), &failed),
            Verdict::Fail { .. }
        ));
        assert!(matches!(
            check(&expect(json!({"error": "x"})), &evaluation(json!({}))),
            Verdict::Fail { .. }
        ));
        assert!(
            matches!(check(&expect(json!({"events": []})), &failed), Verdict::Fail { diff, .. } if diff.is_empty())
        );
    }

    #[test]
    fn unknown_expect_keys_and_missing_identity_fields_are_case_errors() {
        let cases = [
            (
                json!({"object": {"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}}, "expect": {"evnts": []}}),
                "expect.evnts: unknown key",
            ),
            (
                json!({"object": {"apiVersion": "v1", "kind": "X", "metadata": {}}}),
                "object.metadata.name: is required",
            ),
            (
                json!({"object": {"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}}, "children": [{"kind": "ConfigMap"}]}),
                "children[0].apiVersion: is required",
            ),
            (
                json!({"object": {"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}}, "expect": {"error": "x", "events": []}}),
                "expect.error: a failing call",
            ),
        ];
        for (case, wanted) in cases {
            let case: Case = serde_json::from_value(case).unwrap();
            let err = case.check().unwrap_err();
            assert!(err.starts_with(wanted), "{err}");
        }
    }
}
