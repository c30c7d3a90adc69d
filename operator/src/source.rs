//! Where plugin bytes come from: a ConfigMap key or (for development) a file. Decompresses
//! gzip/zstd by magic bytes, checks that the result is WebAssembly, and computes its sha256,
//! which names the plugin everywhere else (compile cache, status, metrics).

use std::io::Read;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use crate::api_error::readable;
use crate::crd::PluginSource;

/// Decompressed plugins larger than this are refused (a zip bomb must not take the operator down).
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

const WASM_MAGIC: &[u8] = b"\0asm";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "ConfigMap {namespace}/{name} not found: create it (kubectl create configmap {name} --from-file={key}=plugin.wasm) or fix spec.plugin.source.configMap.name"
    )]
    ConfigMapNotFound {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "ConfigMap {namespace}/{name} has no key {key:?} in binaryData or data (keys: {keys}); fix spec.plugin.source.configMap.key"
    )]
    KeyNotFound {
        namespace: String,
        name: String,
        key: String,
        keys: String,
    },
    #[error("reading ConfigMap {namespace}/{name} as the controller's service account: {}", readable(.source))]
    ConfigMapRead {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "spec.plugin.source.file is disabled: start the operator with --allow-file-plugins (development only) or use spec.plugin.source.configMap"
    )]
    FileSourceDisabled,
    #[error("reading plugin file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "plugin is not WebAssembly (first bytes {magic}): ConfigMap binaryData must hold a .wasm module, optionally gzip- or zstd-compressed"
    )]
    NotWasm { magic: String },
    #[error("decompressing {encoding} plugin: {source}")]
    Decompress {
        encoding: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin is larger than {MAX_PLUGIN_BYTES} bytes once decompressed")]
    TooLarge,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Plugin bytes as loaded, with their identity.
#[derive(Clone)]
pub struct PluginBytes {
    pub wasm: std::sync::Arc<[u8]>,
    pub sha256: String,
    /// `none`, `gzip` or `zstd`.
    pub encoding: &'static str,
}

impl std::fmt::Debug for PluginBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PluginBytes(sha256={}, {} bytes, {})",
            self.sha256,
            self.wasm.len(),
            self.encoding
        )
    }
}

/// Fetches the plugin named by `source`, reading ConfigMaps with `client` (the controller's
/// impersonated client, so a team can only load what its account may read).
///
/// # Errors
/// Missing ConfigMap or key, read failures, non-wasm or oversized content.
pub async fn load(
    client: &Client,
    namespace: &str,
    source: &PluginSource,
    allow_files: bool,
) -> Result<PluginBytes> {
    let raw = if let Some(cm) = &source.config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let found = api
            .get_opt(&cm.name)
            .await
            .map_err(|source| Error::ConfigMapRead {
                namespace: namespace.into(),
                name: cm.name.clone(),
                source,
            })?;
        let found = found.ok_or_else(|| Error::ConfigMapNotFound {
            namespace: namespace.into(),
            name: cm.name.clone(),
            key: cm.key.clone(),
        })?;
        config_map_key(&found, &cm.key).ok_or_else(|| Error::KeyNotFound {
            namespace: namespace.into(),
            name: cm.name.clone(),
            key: cm.key.clone(),
            keys: keys_of(&found),
        })?
    } else if let Some(path) = &source.file {
        if !allow_files {
            return Err(Error::FileSourceDisabled);
        }
        tokio::fs::read(path).await.map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?
    } else {
        unreachable!("the CRD's CEL rule requires exactly one source")
    };
    decode(&raw)
}

fn config_map_key(cm: &ConfigMap, key: &str) -> Option<Vec<u8>> {
    if let Some(b) = cm.binary_data.as_ref().and_then(|d| d.get(key)) {
        return Some(b.0.clone());
    }
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes().to_vec())
}

fn keys_of(cm: &ConfigMap) -> String {
    let mut keys: Vec<&str> = cm
        .binary_data
        .iter()
        .flat_map(|d| d.keys())
        .map(String::as_str)
        .collect();
    keys.extend(cm.data.iter().flat_map(|d| d.keys()).map(String::as_str));
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

/// Decompresses (by magic bytes) and identifies plugin bytes.
///
/// # Errors
/// Content that is not wasm once decompressed, or larger than [`MAX_PLUGIN_BYTES`].
pub fn decode(raw: &[u8]) -> Result<PluginBytes> {
    let (wasm, encoding) = if raw.starts_with(GZIP_MAGIC) {
        (
            read_capped(flate2::read::GzDecoder::new(raw), "gzip")?,
            "gzip",
        )
    } else if raw.starts_with(ZSTD_MAGIC) {
        let dec = zstd::stream::read::Decoder::new(raw).map_err(|source| Error::Decompress {
            encoding: "zstd",
            source,
        })?;
        (read_capped(dec, "zstd")?, "zstd")
    } else {
        (raw.to_vec(), "none")
    };
    if wasm.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(Error::TooLarge);
    }
    if !wasm.starts_with(WASM_MAGIC) {
        return Err(Error::NotWasm {
            magic: hex::encode(&wasm[..wasm.len().min(4)]),
        });
    }
    Ok(PluginBytes {
        sha256: sha256_hex(&wasm),
        wasm: wasm.into(),
        encoding,
    })
}

fn read_capped(r: impl Read, encoding: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(MAX_PLUGIN_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|source| Error::Decompress { encoding, source })?;
    if out.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(Error::TooLarge);
    }
    Ok(out)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TINY_WASM: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn raw_gzip_and_zstd_plugins_decode_to_the_same_digest() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(TINY_WASM).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(TINY_WASM, 19).unwrap();
        let raw = decode(TINY_WASM).unwrap();
        for (bytes, enc) in [(&gz, "gzip"), (&zs, "zstd")] {
            let d = decode(bytes).unwrap();
            assert_eq!((d.sha256.as_str(), d.encoding), (raw.sha256.as_str(), enc));
        }
    }

    #[test]
    fn non_wasm_content_is_rejected_with_its_magic() {
        let err = decode(b"hello world").unwrap_err().to_string();
        assert!(
            err.contains("68656c6c") && err.contains("not WebAssembly"),
            "{err}"
        );
    }

    #[test]
    fn a_zip_bomb_is_refused() {
        let zeros = vec![0u8; (MAX_PLUGIN_BYTES + 10) as usize];
        let zs = zstd::encode_all(&zeros[..], 3).unwrap();
        assert!(matches!(decode(&zs), Err(Error::TooLarge)));
    }
}
