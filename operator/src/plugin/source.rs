//! Where plugin bytes come from: a ConfigMap key, JavaScript source in a ConfigMap (built
//! here with the operator's JavaScript runtime), a URL or an OCI registry ([`crate::plugin::remote`]),
//! or (for development) a file. Decompresses
//! gzip/zstd by magic bytes, checks that the result is WebAssembly, and computes its sha256,
//! which names the plugin everywhere else (compile cache, status, metrics).

use std::io::Read;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use crate::cluster::api_error::readable;
use crate::crd::{ConfigMapKey, PluginSource};

pub use super::cache::MAX_PLUGIN_BYTES;
use super::cache::store;

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
    #[error(
        "ConfigMap {namespace}/{name} key {key} (spec.plugin.source.javaScript) is not UTF-8 text: it must hold JavaScript source; a built .wasm goes under spec.plugin.source.configMap"
    )]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "the operator cannot build JavaScript plugins: {source}. Start it with --js-runtime (or WASMOP_JS_RUNTIME) naming wasmop_js_runtime.wasm, or ship a built plugin under spec.plugin.source.configMap (wasmop js build)"
    )]
    JsRuntime {
        #[source]
        source: wasmop_js_build::Error,
    },
    #[error(transparent)]
    Remote(#[from] crate::plugin::remote::Error),
    #[error("building the JavaScript in ConfigMap {namespace}/{name} key {key}: {source}")]
    JavaScript {
        namespace: String,
        name: String,
        key: String,
        #[source]
        source: wasmop_js_build::Error,
    },
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

/// How plugin sources are turned into bytes: operator-wide settings and caches.
pub struct Loader {
    /// Allow `spec.plugin.source.file` (development only).
    pub allow_files: bool,
    /// The JavaScript runtime `javaScript` sources are built with.
    js_runtime: PathBuf,
    /// Where built JavaScript plugins are kept, by digest (none: build every time).
    cache_dir: Option<PathBuf>,
    /// One JavaScript build at a time: a build takes a core for a second or two.
    js_builds: tokio::sync::Semaphore,
    /// Which hosts `url` and `oci` sources may name, and the keys OCI plugins need.
    pub remote: crate::plugin::remote::Policy,
}

impl Loader {
    pub fn new(allow_files: bool, js_runtime: PathBuf, cache_dir: Option<PathBuf>) -> Self {
        Loader {
            allow_files,
            js_runtime,
            cache_dir,
            js_builds: tokio::sync::Semaphore::new(1),
            remote: crate::plugin::remote::Policy::default(),
        }
    }

    /// With the admin's policy for `url` and `oci` sources.
    pub fn with_remote(mut self, remote: crate::plugin::remote::Policy) -> Self {
        self.remote = remote;
        self
    }

    /// Builds (or takes from the cache) the plugin of JavaScript `source`, named by the digest
    /// of the runtime and the source.
    async fn javascript(&self, source: String, file_name: &str) -> Result<PluginBytes, JsError> {
        let runtime = wasmop_js_build::load_runtime(&self.js_runtime).map_err(JsError::Runtime)?;
        let digest = {
            let mut h = Sha256::new();
            h.update(Sha256::digest(&runtime));
            h.update(source.as_bytes());
            hex::encode(h.finalize())
        };
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join("js").join(format!("{digest}.wasm")));
        if let Some(path) = &cached
            && let Ok(wasm) = tokio::fs::read(path).await
            && let Ok(bytes) = decode(&wasm)
        {
            return Ok(PluginBytes {
                encoding: "javascript",
                ..bytes
            });
        }
        let _turn = self.js_builds.acquire().await.expect("never closed");
        let name = file_name.to_string();
        let started = std::time::Instant::now();
        let plugin = tokio::task::spawn_blocking(move || {
            wasmop_js_build::Builder::new(&runtime)
                .file_name(name)
                .build(&source)
        })
        .await
        .expect("the build does not panic")
        .map_err(JsError::Build)?;
        tracing::info!(
            bytes = plugin.wasm.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built a JavaScript plugin"
        );
        if let Some(path) = &cached {
            store(path, &plugin.wasm).await;
        }
        let bytes = decode(&plugin.wasm).map_err(JsError::Decode)?;
        Ok(PluginBytes {
            encoding: "javascript",
            ..bytes
        })
    }
}

enum JsError {
    Runtime(wasmop_js_build::Error),
    Build(wasmop_js_build::Error),
    Decode(Error),
}

/// Fetches the plugin named by `source`, reading ConfigMaps with `client` (the controller's
/// impersonated client, so a team can only load what its account may read).
///
/// # Errors
/// Missing ConfigMap or key, read failures, non-wasm or oversized content, JavaScript that
/// does not build.
pub async fn load(
    client: &Client,
    namespace: &str,
    source: &PluginSource,
    loader: &Loader,
) -> Result<PluginBytes> {
    let raw = if let Some(cm) = source.config_map_key() {
        let raw = read_config_map(client, namespace, cm).await?;
        if source.java_script.is_some() {
            let text = String::from_utf8(raw).map_err(|_| Error::NotText {
                namespace: namespace.into(),
                name: cm.name.clone(),
                key: cm.key.clone(),
            })?;
            return loader.javascript(text, &cm.key).await.map_err(|e| match e {
                JsError::Runtime(source) => Error::JsRuntime { source },
                JsError::Build(source) => Error::JavaScript {
                    namespace: namespace.into(),
                    name: cm.name.clone(),
                    key: cm.key.clone(),
                    source,
                },
                JsError::Decode(e) => e,
            });
        }
        raw
    } else if let Some(url) = &source.url {
        crate::plugin::remote::fetch_url(&loader.remote, url, loader.cache_dir.as_ref()).await?
    } else if let Some(oci) = &source.oci {
        crate::plugin::remote::pull_oci(&loader.remote, oci, loader.cache_dir.as_ref()).await?
    } else if let Some(path) = &source.file {
        if !loader.allow_files {
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

async fn read_config_map(client: &Client, namespace: &str, cm: &ConfigMapKey) -> Result<Vec<u8>> {
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
    })
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
