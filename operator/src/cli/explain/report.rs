//! What an explanation is made of: its settings, its text, what blocks, and its errors.

use std::path::PathBuf;

use kube::Client;
use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::cluster::api_error::readable;
use crate::crd::KindRef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0:?} is not KIND/NAME, e.g. website/hello or websites.example.com/hello")]
    Target(String),
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{action}: {}", readable(.source))]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("no WasmController in namespace {namespace} reconciles {kind:?}{found}")]
    NoController {
        namespace: String,
        kind: String,
        found: String,
    },
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound {
        kind: String,
        name: String,
        namespace: String,
    },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The text of one controller's explanation and what blocks it.
#[derive(Default)]
pub(super) struct Report {
    pub(super) text: String,
    pub(super) blocking: Vec<String>,
    /// What could not be checked (so "nothing blocks" is not overstated).
    pub(super) unchecked: Vec<String>,
}

impl Report {
    pub(super) fn heading(&mut self, title: impl std::fmt::Display) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(&format!("{title}\n"));
    }

    pub(super) fn line(&mut self, line: impl std::fmt::Display) {
        self.text.push_str(&format!("  {line}\n"));
    }

    pub(super) fn block(&mut self, why: impl Into<String>) {
        self.blocking.push(why.into());
    }
}

/// A value on one line, shortened.
pub(super) fn compact(v: &Value) -> String {
    const MAX: usize = 80;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The API resource of a declared kind, by discovery.
pub(super) async fn discover(client: &Client, kind: &KindRef) -> Result<ApiResource, kube::Error> {
    let gvk = GroupVersionKind::gvk(kind.group(), kind.version(), &kind.kind);
    kube::discovery::pinned_kind(client, &gvk)
        .await
        .map(|(ar, _)| ar)
}

/// Settings of `wasmop explain`.
#[derive(Clone, Debug)]
pub struct Options {
    /// `KIND/NAME`: KIND is a kind, plural or `kind.group` (case-insensitive).
    pub target: String,
    /// Default: the kubeconfig context's namespace.
    pub namespace: Option<String>,
    /// Default: KUBECONFIG, ~/.kube/config, in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Run this local plugin file instead of the controller's source ("what would my new
    /// plugin do here?").
    pub plugin: Option<PathBuf>,
    /// Compiled-plugin cache (None: compile every time).
    pub cache_dir: Option<PathBuf>,
}
