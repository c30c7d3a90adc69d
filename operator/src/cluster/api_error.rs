//! How an error from the API server reads to a person: the server's own reason and message
//! (`Forbidden: events.events.k8s.io "x" is forbidden: User "system:serviceaccount:team-a:web"
//! cannot patch resource "events" in API group "events.k8s.io" ...`), never the Rust debug dump
//! that kube's own `Display` appends (`ApiError: ... (Status { status: Some(Failure), ... })`).
//!
//! Every condition, Event, log line and `wasmop explain` line that carries a [`kube::Error`]
//! formats it through [`readable`] (or [`readable_watch`] for a watch's error).

use std::fmt;

use kube::core::Status;
use kube::runtime::watcher;

/// A [`kube::Error`] that displays as a person reads it.
pub struct Readable<'a>(&'a kube::Error);

/// `e` for a message: `<reason>: <message>` for an answer of the API server, kube's own text
/// for anything else (a connection, TLS or decoding failure, which carries no debug dump).
pub fn readable(e: &kube::Error) -> Readable<'_> {
    Readable(e)
}

impl fmt::Display for Readable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            kube::Error::Api(status) => write_status(f, status),
            other => write!(f, "{other}"),
        }
    }
}

fn write_status(f: &mut fmt::Formatter<'_>, status: &Status) -> fmt::Result {
    match (status.reason.is_empty(), status.message.is_empty()) {
        (false, false) => write!(f, "{}: {}", status.reason, status.message),
        (true, false) => write!(f, "{}", status.message),
        (false, true) => write!(f, "{} (HTTP {})", status.reason, status.code),
        (true, true) => write!(f, "the API server answered HTTP {}", status.code),
    }
}

/// Whether the API server refused `e` as forbidden (HTTP 403).
pub fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 403)
}

/// A watch's error for a log line or condition, with the API server's answer as in [`readable`].
pub fn readable_watch(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("listing: {}", readable(e)),
        watcher::Error::WatchStartFailed(e) => format!("starting the watch: {}", readable(e)),
        watcher::Error::WatchFailed(e) => format!("watching: {}", readable(e)),
        watcher::Error::WatchError(status) => {
            format!(
                "the watch ended: {}",
                Readable(&kube::Error::Api(status.clone()))
            )
        }
        other => other.to_string(),
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), marked with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden() -> kube::Error {
        kube::Error::Api(Box::new(Status {
            status: Some(kube::core::response::StatusSummary::Failure),
            code: 403,
            message: r#"events.events.k8s.io "site.1" is forbidden: User "system:serviceaccount:team-a:web" cannot patch resource "events" in API group "events.k8s.io" in the namespace "team-a""#.into(),
            reason: "Forbidden".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn an_api_error_reads_as_the_servers_reason_and_message_without_a_debug_dump() {
        let text = readable(&forbidden()).to_string();
        assert_eq!(
            text,
            r#"Forbidden: events.events.k8s.io "site.1" is forbidden: User "system:serviceaccount:team-a:web" cannot patch resource "events" in API group "events.k8s.io" in the namespace "team-a""#
        );
        // kube's own Display is what this module exists to replace.
        assert!(forbidden().to_string().contains("Status {"));
        assert!(!text.contains("Status {") && !text.contains("Some("));
    }

    #[test]
    fn a_watch_error_carries_the_same_readable_answer() {
        let text = readable_watch(&watcher::Error::InitialListFailed(forbidden()));
        assert!(
            text.starts_with("listing: Forbidden: events.events.k8s.io"),
            "{text}"
        );
        assert!(!text.contains("Status {"), "{text}");
    }

    #[test]
    fn an_answer_without_a_message_still_says_something() {
        let bare = kube::Error::Api(Box::new(Status {
            code: 500,
            ..Default::default()
        }));
        assert_eq!(
            readable(&bare).to_string(),
            "the API server answered HTTP 500"
        );
    }
}
