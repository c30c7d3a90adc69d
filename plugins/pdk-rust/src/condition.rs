//! Status conditions (`metav1.Condition` shape) that keep `lastTransitionTime` stable.
//!
//! A steady-state reconcile must write nothing, so an unchanged condition must come out
//! byte-for-byte as it went in. [`conditions`] follows `meta.SetStatusCondition` in
//! apimachinery: `lastTransitionTime` is carried over from the parent's current status unless
//! the condition's `status` changed (or it is new), and only then is `now` used.

use serde_json::{Value, json};
use wasmop_abi::ReconcileRequest;

use crate::RequestExt;

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// One desired condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// UpperCamelCase, e.g. `Ready`.
    pub type_: String,
    pub status: ConditionStatus,
    /// UpperCamelCase machine-readable cause, e.g. `ReplicasAvailable`.
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: &str,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.to_owned(),
            status: status.into(),
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The `status.conditions` list to write: `desired` in the given order, each with
/// `observedGeneration` (the parent's generation) and a `lastTransitionTime`.
///
/// `desired` is the complete set this plugin owns; conditions it leaves out are dropped.
///
/// # Guarantees
/// When no condition's `status` changed, the times are the current ones, so the list equals
/// what the last reconcile wrote (given the same generation) and applying it is a no-op.
/// `now` is only used for conditions that are new or changed status.
pub fn conditions(
    req: &ReconcileRequest,
    desired: impl IntoIterator<Item = Condition>,
    now: &str,
) -> Value {
    let current = req.conditions();
    let generation = req.generation();
    let list = desired
        .into_iter()
        .map(|c| {
            let previous = current.iter().find(|p| p["type"] == c.type_.as_str());
            let kept_time = previous
                .filter(|p| p["status"] == c.status.as_str())
                .and_then(|p| p["lastTransitionTime"].as_str());
            json!({
                "type": c.type_,
                "status": c.status.as_str(),
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": kept_time.unwrap_or(now),
            })
        })
        .collect();
    Value::Array(list)
}

/// The current UTC time as RFC 3339 (`2026-11-22T23:22:44Z`), for [`conditions`].
///
/// # Caveats
/// Reads the WASI clock: available on `wasm32-wasip1` (the host enables WASI) and natively.
/// `wasm32-unknown-unknown` has no clock, so this function does not exist there; build such a
/// plugin for `wasm32-wasip1`, or pass a time you have.
#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(current: Value) -> ReconcileRequest {
        ReconcileRequest {
            object: json!({"metadata": {"generation": 4}, "status": {"conditions": current}}),
            ..Default::default()
        }
    }

    const OLD: &str = "2026-01-01T00:00:00Z";
    const NOW: &str = "2026-11-22T12:00:00Z";

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time_so_steady_state_writes_nothing() {
        let written = conditions(
            &request(json!([])),
            [Condition::new("Ready", true, "Up", "ok")],
            OLD,
        );
        let again = conditions(
            &request(written.clone()),
            [Condition::new("Ready", true, "Up", "ok")],
            NOW,
        );
        assert_eq!(again, written);
    }

    #[test]
    fn transition_time_changes_only_when_status_changes() {
        let current = json!([{"type": "Ready", "status": "True", "lastTransitionTime": OLD}]);
        let cases = [
            (Condition::new("Ready", true, "Other", "new message"), OLD),
            (Condition::new("Ready", false, "Down", "x"), NOW),
            (Condition::new("Synced", true, "New", "x"), NOW),
        ];
        for (cond, want) in cases {
            let out = conditions(&request(current.clone()), [cond.clone()], NOW);
            assert_eq!(out[0]["lastTransitionTime"], want, "{cond:?}");
            assert_eq!(out[0]["observedGeneration"], 4);
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
