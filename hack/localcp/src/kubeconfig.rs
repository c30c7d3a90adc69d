//! Writing kubeconfig files and building kube clients from them.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Errors writing or reading kubeconfigs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing kubeconfig {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "reading kubeconfig {path}: {source}; check the file exists and names a current context"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from kubeconfig {path}: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Credentials a kubeconfig user presents.
#[derive(Debug, Clone)]
pub enum User<'a> {
    /// A client certificate and key (files).
    ClientCert { cert: &'a Path, key: &'a Path },
    /// No credentials: the server side (the fault proxy) authenticates upstream.
    None,
}

/// Writes a single-context kubeconfig for `server`.
///
/// # Errors
/// [`Error::Write`] when the file cannot be written.
pub fn write(
    path: &Path,
    name: &str,
    server: &str,
    ca_cert: Option<&Path>,
    user: User<'_>,
) -> Result<()> {
    let mut cluster = serde_json::json!({ "server": server });
    if let Some(ca) = ca_cert {
        cluster["certificate-authority"] = ca.display().to_string().into();
    }
    let user = match user {
        User::ClientCert { cert, key } => serde_json::json!({
            "client-certificate": cert.display().to_string(),
            "client-key": key.display().to_string(),
        }),
        User::None => serde_json::json!({}),
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": cluster }],
        "users": [{ "name": name, "user": user }],
        "contexts": [{
            "name": name,
            "context": { "cluster": name, "user": name, "namespace": "default" },
        }],
        "current-context": name,
    });
    let yaml = serde_yaml::to_string(&config).expect("a JSON value always serializes to YAML");
    std::fs::write(path, yaml).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A kube client for the current context of the kubeconfig at `path`, with no read timeout
/// (watches are long).
///
/// # Errors
/// [`Error::Read`] or [`Error::Client`].
pub async fn client(path: &Path) -> Result<kube::Client> {
    let config = config(path).await?;
    kube::Client::try_from(config).map_err(|source| Error::Client {
        path: path.to_path_buf(),
        source,
    })
}

/// The kube [`kube::Config`] for the current context of the kubeconfig at `path`.
///
/// # Errors
/// [`Error::Read`].
pub async fn config(path: &Path) -> Result<kube::Config> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(read_err)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(read_err)?;
    config.read_timeout = None;
    Ok(config)
}
