//! Finding the control-plane binaries: envtest's `KUBEBUILDER_ASSETS`, then `WASMOP_K8S_BIN`,
//! then the directory `hack/build-control-plane.sh` fills by default.

use std::path::{Path, PathBuf};

use crate::versions;

/// Errors finding binaries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required binary is not in the directory that was searched.
    #[error(
        "{binary} not found in {dir} (from {source_of_dir}); build the control plane with \
         `make control-plane` (hack/build-control-plane.sh), or point KUBEBUILDER_ASSETS at \
         envtest binaries or KUBECONFIG at an existing cluster"
    )]
    Missing {
        binary: &'static str,
        dir: PathBuf,
        source_of_dir: &'static str,
    },
    /// Neither `$HOME` nor `WASMOP_K8S_BIN` says where the binaries are.
    #[error("cannot locate the control-plane binaries: HOME is not set; set WASMOP_K8S_BIN")]
    NoHome,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Paths of the control-plane binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    /// `None` with envtest assets, which ship no kube-controller-manager: then there is no
    /// garbage collector, namespace deletion never finishes and no service accounts appear.
    pub kube_controller_manager: Option<PathBuf>,
    /// The built kubectl when present, else `kubectl` from PATH (the build script builds one
    /// only when PATH has none within one minor version of the server).
    pub kubectl: PathBuf,
    /// Where the binaries came from, for messages.
    pub source: &'static str,
}

/// The directory `hack/build-control-plane.sh` writes to when `WASMOP_K8S_BIN` is unset:
/// `$HOME/.cache/wasmop/k8s-<KUBERNETES_VERSION>/bin`, outside any git clone.
///
/// # Errors
/// [`Error::NoHome`] when `HOME` is unset.
pub fn default_bin_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or(Error::NoHome)?;
    Ok(PathBuf::from(home)
        .join(".cache/wasmop")
        .join(format!("k8s-{}", versions::kubernetes()))
        .join("bin"))
}

/// The directory the build script uses: `WASMOP_K8S_BIN`, else [`default_bin_dir`].
///
/// # Errors
/// [`Error::NoHome`] when neither is available.
pub fn build_dir() -> Result<PathBuf> {
    match std::env::var_os("WASMOP_K8S_BIN").filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => default_bin_dir(),
    }
}

impl Binaries {
    /// Finds the binaries: `KUBEBUILDER_ASSETS` (envtest layout, no controller manager), else
    /// `WASMOP_K8S_BIN`, else [`default_bin_dir`].
    ///
    /// # Errors
    /// [`Error::Missing`] naming the binary, the directory and `make control-plane`.
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
            return Self::in_dir(Path::new(&dir), "KUBEBUILDER_ASSETS", false);
        }
        let from_env = std::env::var_os("WASMOP_K8S_BIN").is_some_and(|v| !v.is_empty());
        let source = if from_env {
            "WASMOP_K8S_BIN"
        } else {
            "the default build directory"
        };
        Self::in_dir(&build_dir()?, source, true)
    }

    /// The binaries in `dir`; `with_controller_manager` requires kube-controller-manager there.
    ///
    /// # Errors
    /// [`Error::Missing`] for the first binary that is not there.
    pub fn in_dir(dir: &Path, source: &'static str, with_controller_manager: bool) -> Result<Self> {
        let need = |binary: &'static str| {
            let path = dir.join(binary);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(Error::Missing {
                    binary,
                    dir: dir.to_path_buf(),
                    source_of_dir: source,
                })
            }
        };
        Ok(Self {
            etcd: need("etcd")?,
            kube_apiserver: need("kube-apiserver")?,
            kube_controller_manager: if with_controller_manager {
                Some(need("kube-controller-manager")?)
            } else {
                None
            },
            kubectl: kubectl_in(Some(dir)),
            source,
        })
    }
}

/// kubectl in `dir` when there is one, else `kubectl` (resolved through PATH when run).
pub fn kubectl_in(dir: Option<&Path>) -> PathBuf {
    dir.map(|d| d.join("kubectl"))
        .filter(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_directory_and_make_control_plane() {
        let dir = std::env::temp_dir().join("localcp-no-binaries-here");
        let err = Binaries::in_dir(&dir, "WASMOP_K8S_BIN", true).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("etcd not found"), "{msg}");
        assert!(msg.contains("localcp-no-binaries-here"), "{msg}");
        assert!(msg.contains("make control-plane"), "{msg}");
    }

    #[test]
    fn envtest_layout_needs_no_controller_manager() {
        let dir = std::env::temp_dir().join(format!("localcp-envtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for b in ["etcd", "kube-apiserver", "kubectl"] {
            let p = dir.join(b);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let bins = Binaries::in_dir(&dir, "KUBEBUILDER_ASSETS", false).unwrap();
        assert_eq!(bins.kube_controller_manager, None);
        assert_eq!(bins.kubectl, dir.join("kubectl"));
        assert!(Binaries::in_dir(&dir, "WASMOP_K8S_BIN", true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_bin_dir_is_keyed_by_the_pinned_kubernetes_version() {
        if std::env::var_os("HOME").is_some() {
            let dir = default_bin_dir().unwrap();
            assert!(dir.ends_with(format!("k8s-{}/bin", versions::kubernetes())));
        }
    }
}
