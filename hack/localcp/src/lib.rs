//! Starts the real Kubernetes control plane on loopback for wasmop's dev loop and tests
//! (DESIGN.md §5, docs/local-control-plane.md).
//!
//! `hack/build-control-plane.sh` (`make control-plane`) builds etcd, kube-apiserver,
//! kube-controller-manager and, when needed, kubectl from the pinned `k8s.io/kubernetes` Go
//! module. This crate runs them:
//!
//! - [`ControlPlane::start`] picks free loopback ports, generates a CA and certificates
//!   ([`pki`]), starts etcd, kube-apiserver (RBAC on, service-account tokens, default admission
//!   plugins) and kube-controller-manager (garbage collector, namespace and service-account
//!   controllers), writes an admin kubeconfig and waits until the API is ready.
//! - [`ControlPlane::shared`] gives one control plane per test binary.
//! - No process outlives its launcher: the children run in their own process group, watched by
//!   a small watchdog that stops them and deletes their state when the launcher goes away, even
//!   when it is SIGKILLed ([`supervisor`]).
//! - Faults Kubernetes can make real: [`ControlPlane::restart_apiserver`] (every watch drops),
//!   [`ControlPlane::compact_etcd`] (410 Gone on resume), tight priority-and-fairness limits
//!   and a short `--min-request-timeout` ([`FaultOptions`]). Faults it cannot be asked for
//!   (500s, 429s, latency, cut watches) come from a seeded, bounded [`FaultProxy`].
//! - With `KUBECONFIG` (or `WASMOP_USE_EXISTING_CLUSTER=1`) nothing is started and the same
//!   API hands out clients for that cluster ([`ControlPlane::is_external`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cp = localcp::ControlPlane::shared().await?;
//! let client = cp.client().await?;
//! let ns = localcp::create_test_namespace(&client, "demo").await?;
//! let out = cp.kubectl().args(["get", "configmaps", "-n", &ns]).output()?;
//! assert!(out.status.success());
//! # Ok(()) }
//! ```

pub mod binaries;
pub mod control_plane;
pub mod etcd;
pub mod kubeconfig;
pub mod namespace;
pub mod pki;
pub mod proxy;
pub mod supervisor;

pub use binaries::Binaries;
pub use control_plane::{ControlPlane, FaultOptions, Options, ProcessInfo};
pub use namespace::{create_test_namespace, delete_namespace};
pub use proxy::{FaultConfig, FaultCounts, FaultProxy};

/// The Kubernetes and etcd versions `hack/versions.env` pins (read at compile time, so the
/// default binary directory follows a bump without code changes).
pub mod versions {
    const VERSIONS_ENV: &str = include_str!("../../versions.env");

    fn value(key: &str) -> &'static str {
        VERSIONS_ENV
            .lines()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(str::trim)
            .unwrap_or("unknown")
    }

    /// `KUBERNETES_VERSION`, e.g. `v1.36.3`.
    pub fn kubernetes() -> &'static str {
        value("KUBERNETES_VERSION")
    }

    /// `ETCD_VERSION`, e.g. `v3.6.8`.
    pub fn etcd() -> &'static str {
        value("ETCD_VERSION")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn versions_env_pins_kubernetes_and_etcd() {
            assert!(super::kubernetes().starts_with("v1."));
            assert!(super::etcd().starts_with("v3."));
        }
    }
}
