//! [`ResponseExt`]: filling a [`ReconcileResponse`] — children, status, events.

use serde_json::Value;
use wasmop_abi::{Event, EventType, ReconcileResponse};

/// Helpers on [`ReconcileResponse`] (in the prelude). The fields stay public: use them
/// directly when that reads better.
pub trait ResponseExt {
    /// Appends a desired child (a [`crate::Child`] or any JSON object). Order is kept: list
    /// children in a stable order so a steady state writes nothing.
    fn push_child(&mut self, child: impl Into<Value>) -> &mut Self;
    /// Sets the status to apply to the parent.
    fn set_status(&mut self, status: impl Into<Value>) -> &mut Self;
    /// Records a `Normal` event on the parent.
    fn normal(&mut self, reason: &str, message: impl Into<String>) -> &mut Self;
    /// Records a `Warning` event on the parent.
    fn warning(&mut self, reason: &str, message: impl Into<String>) -> &mut Self;
}

impl ResponseExt for ReconcileResponse {
    fn push_child(&mut self, child: impl Into<Value>) -> &mut Self {
        self.children.push(child.into());
        self
    }

    fn set_status(&mut self, status: impl Into<Value>) -> &mut Self {
        self.status = Some(status.into());
        self
    }

    fn normal(&mut self, reason: &str, message: impl Into<String>) -> &mut Self {
        self.events.push(event(EventType::Normal, reason, message));
        self
    }

    fn warning(&mut self, reason: &str, message: impl Into<String>) -> &mut Self {
        self.events.push(event(EventType::Warning, reason, message));
        self
    }
}

fn event(type_: EventType, reason: &str, message: impl Into<String>) -> Event {
    Event {
        type_,
        reason: reason.to_owned(),
        message: message.into(),
    }
}

/// The response of a `finalize` that has nothing to clean up: `finalized: true`.
pub fn finalized() -> ReconcileResponse {
    ReconcileResponse {
        finalized: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child;
    use serde_json::json;

    #[test]
    fn children_and_events_keep_the_order_they_were_added_in() {
        let mut r = ReconcileResponse::default();
        r.push_child(child("v1", "ConfigMap", "a"))
            .push_child(json!({"kind": "X"}))
            .normal("Created", "created a")
            .warning("Slow", "slow");
        assert_eq!(r.children[0]["metadata"]["name"], "a");
        assert_eq!(r.children[1]["kind"], "X");
        assert_eq!(r.events[0].type_, EventType::Normal);
        assert_eq!(r.events[1].reason, "Slow");
    }

    #[test]
    fn finalized_serialises_as_finalized_true_and_no_children() {
        let v = serde_json::to_value(finalized()).unwrap();
        assert_eq!(v, json!({"children": [], "finalized": true}));
    }
}
