//! Plugin logs for the local tools (`wasmop eval`, `wasmop explain`).
//!
//! Extism delivers a plugin's log calls (`extism_pdk::info!`, `console.log`, `pdk.Log`) as
//! `tracing` events of target [`TARGET`] on the thread that runs the call. [`PluginLogs::install`]
//! sets up the process-wide subscriber so those events are kept (every level) for printing
//! beside the call's result, while everything else goes to standard error as usual.
//!
//! # Caveats
//! Lines are collected process-wide, not per call: the tools make one call at a time and
//! [`PluginLogs::take`] the lines after each.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The `tracing` target of Extism's plugin log events (its `pdk` module).
pub const TARGET: &str = crate::plugin::PLUGIN_LOG_TARGET;

/// One line a plugin logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    pub message: String,
}

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<5} {}", self.level, self.message)
    }
}

/// The plugin log lines captured since the last [`PluginLogs::take`].
#[derive(Clone, Debug, Default)]
pub struct PluginLogs {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl PluginLogs {
    /// Installs the process-wide `tracing` subscriber: plugin log events are captured at every
    /// level (so Extism tells plugins that `trace` is on and they send everything); other
    /// events go to standard error, filtered by `WASMOP_LOG` (default `warn`, without Extism's
    /// own report of a failed call: the tools report every failure themselves, classified).
    ///
    /// # Caveats
    /// Call once per process, before the first plugin is loaded; a second call (or another
    /// subscriber already installed) leaves the first in place, and this one captures nothing.
    pub fn install() -> Self {
        let logs = PluginLogs::default();
        let env = tracing_subscriber::EnvFilter::try_from_env("WASMOP_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,extism::plugin=off"));
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(env.and(filter_fn(|meta| meta.target() != TARGET)));
        let capture = Capture(logs.clone())
            .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE));
        let _ = tracing_subscriber::registry()
            .with(stderr)
            .with(capture)
            .try_init();
        logs
    }

    /// The lines captured since the last call, oldest first.
    pub fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

struct Capture(PluginLogs);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let line = LogLine {
            level: event.metadata().level().to_string(),
            message: message.0,
        };
        self.0.lines.lock().unwrap().push(line);
    }
}

/// Extism logs the plugin's text as the event's `message` (its other field is an instance id).
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_the_plugin_target_are_captured_with_their_level() {
        let logs = PluginLogs::default();
        let subscriber = tracing_subscriber::registry().with(
            Capture(logs.clone())
                .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "extism::pdk", plugin = "id", "{}", "hello from the plugin");
            tracing::debug!(target: "extism::pdk", plugin = "id", "{}", "details");
            tracing::info!(target: "wasmop", "not a plugin line");
        });
        let lines = logs.take();
        assert_eq!(
            lines,
            vec![
                LogLine {
                    level: "INFO".into(),
                    message: "hello from the plugin".into()
                },
                LogLine {
                    level: "DEBUG".into(),
                    message: "details".into()
                },
            ]
        );
        assert!(logs.take().is_empty(), "take drains");
    }
}
