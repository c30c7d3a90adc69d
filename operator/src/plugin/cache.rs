//! What every plugin source shares: the size cap on plugin bytes and the on-disk cache file
//! writer (built JavaScript plugins, verified `url` and `oci` downloads).

/// Decompressed plugins larger than this are refused (a zip bomb must not take the operator down).
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

/// Writes a cache file atomically (a temporary file renamed); a failure is only logged.
pub(crate) async fn store(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, path = %path.display(), "could not cache a built plugin");
    }
}
