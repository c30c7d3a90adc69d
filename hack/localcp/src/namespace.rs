//! A namespace per test: unique names, a label to find leftovers, and deletion.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

/// Label on every namespace [`create_test_namespace`] makes, so leftovers from an aborted run
/// can be found (`kubectl get ns -l wasmop.dev/test`) and deleted.
pub const TEST_LABEL: &str = "wasmop.dev/test";

/// Errors creating or deleting test namespaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "prefix {prefix:?} cannot start a namespace name: use lowercase letters, digits and '-', starting with a letter, at most 40 characters"
    )]
    BadPrefix { prefix: String },
    #[error("creating namespace {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting namespace {name}: {source}")]
    Delete {
        name: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Creates a namespace named `<prefix>-<unique suffix>` labelled [`TEST_LABEL`] and returns
/// its name. Works the same on the local control plane and on an existing cluster.
///
/// # Errors
/// [`Error::BadPrefix`] for a prefix that cannot start a DNS label, [`Error::Create`] when the
/// API refuses.
pub async fn create_test_namespace(client: &kube::Client, prefix: &str) -> Result<String> {
    let valid = !prefix.is_empty()
        && prefix.len() <= 40
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Error::BadPrefix {
            prefix: prefix.to_string(),
        });
    }
    let name = format!("{}-{}", prefix.trim_end_matches('-'), unique_suffix());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_LABEL.to_string(), "true".to_string())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|source| Error::Create {
            name: name.clone(),
            source,
        })?;
    Ok(name)
}

/// Deletes a namespace without waiting for it to go (the namespace controller empties it in
/// the background). A namespace that is already gone is not an error.
///
/// # Errors
/// [`Error::Delete`] when the API refuses.
pub async fn delete_namespace(client: &kube::Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            name: name.to_string(),
            source,
        }),
    }
}

/// Eight lowercase hex digits, different for every call in this process and (with high
/// probability) across processes and runs.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser: spreads the bits so consecutive calls differ everywhere.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!("{:08x}", x as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_do_not_repeat() {
        let set: std::collections::HashSet<_> = (0..1000).map(|_| unique_suffix()).collect();
        assert_eq!(set.len(), 1000);
    }
}
