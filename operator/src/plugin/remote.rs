//! Plugins from the network: `url` (pinned by sha256) and `oci` (pinned by digest, optionally
//! signed with cosign).
//!
//! A hostile tenant must not turn the operator into a client of anything it can reach (cloud
//! metadata, in-cluster services): a source may only name a host the admin allowed
//! (`--plugin-host`), plain HTTP only where the admin said so (`--insecure-plugin-host`), a
//! download is capped at [`MAX_PLUGIN_BYTES`] and [`FETCH_TIMEOUT`], and nothing is used before
//! its digest (and signature) checks out. Verified plugins are kept in the cache directory by
//! digest (and key), so a restart does not need the network.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client as OciClient, Reference};
use sha2::{Digest, Sha256};

use crate::crd::{OciSource, UrlSource};
use crate::plugin::cache::{MAX_PLUGIN_BYTES, store};

/// How long one download may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The layer media type of the Wasm OCI artifact layout.
pub const WASM_LAYER: &str = "application/wasm";
/// Its config media type.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const COSIGN_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{field}: host {host} is not one the operator may fetch plugins from: the admin allows hosts with --plugin-host (now: {allowed})"
    )]
    HostNotAllowed {
        field: &'static str,
        host: String,
        allowed: String,
    },
    #[error("{field}: {reason}")]
    BadReference { field: &'static str, reason: String },
    #[error("{field}: fetching {what}: {reason}")]
    Fetch {
        field: &'static str,
        what: String,
        reason: String,
    },
    #[error(
        "{field}: the content has sha256 {got}, not {want}: refused (fix the digest only if you reviewed this content)"
    )]
    DigestMismatch {
        field: &'static str,
        want: String,
        got: String,
    },
    #[error("{field}: more than {MAX_PLUGIN_BYTES} bytes: refused")]
    TooLarge { field: &'static str },
    #[error(
        "spec.plugin.source.oci.image: {image} is not a Wasm OCI artifact: no layer of media type {WASM_LAYER} (layers: {layers})"
    )]
    NotWasmArtifact { image: String, layers: String },
    #[error("{field}: {reason}")]
    Key { field: String, reason: String },
    #[error(
        "spec.plugin.source.oci: {image} has no cosign signature by {key}: {reason}; sign it (cosign sign --key cosign.key {image}) or fix the key"
    )]
    Unsigned {
        image: String,
        key: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cosign public key (ECDSA P-256).
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// Where it came from, for messages: `spec.plugin.source.oci.publicKey` or a file.
    pub name: String,
    /// The uncompressed EC point.
    point: Vec<u8>,
    /// sha256 of the point: names verified cache entries.
    fingerprint: String,
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo before its 65-byte uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (as `cosign generate-key-pair` writes `cosign.pub`).
    ///
    /// # Errors
    /// Not PEM, not a public key, or not ECDSA P-256.
    pub fn from_pem(name: &str, pem: &str) -> Result<PublicKey> {
        let bad = |reason: &str| Error::Key {
            field: name.into(),
            reason: format!(
                "{reason}; expected a PEM ECDSA P-256 public key (-----BEGIN PUBLIC KEY-----, as cosign generate-key-pair writes cosign.pub)"
            ),
        };
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PUBLIC KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PUBLIC KEY-----")
            .collect();
        if body.is_empty() {
            return Err(bad("no PEM PUBLIC KEY block"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| bad("the PEM block is not base64"))?;
        let point = der
            .strip_prefix(P256_SPKI_PREFIX)
            .filter(|p| p.len() == 65 && p[0] == 4)
            .ok_or_else(|| bad("not an ECDSA P-256 key"))?
            .to_vec();
        Ok(PublicKey {
            name: name.into(),
            fingerprint: hex::encode(Sha256::digest(&point)),
            point,
        })
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(message, signature)
        .is_ok()
    }
}

/// What the admin allows: hosts, plain-HTTP hosts, keys every OCI plugin must be signed by.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `host` or `host:port` entries (`*.example.com` covers subdomains); empty: no network
    /// sources at all.
    pub hosts: Vec<String>,
    /// Hosts reached over plain HTTP (development registries, a test's local server).
    pub insecure_hosts: Vec<String>,
    /// With keys here, an `oci` plugin needs a cosign signature by one of them (besides
    /// the one its spec names).
    pub keys: Vec<PublicKey>,
}

fn host_matches(entry: &str, host: &str, host_port: &str) -> bool {
    match entry.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => entry == host || entry == host_port,
    }
}

impl Policy {
    fn check(&self, field: &'static str, host: &str, port: Option<u16>) -> Result<bool> {
        let host_port = port.map_or_else(|| host.to_string(), |p| format!("{host}:{p}"));
        if !self.hosts.iter().any(|e| host_matches(e, host, &host_port)) {
            return Err(Error::HostNotAllowed {
                field,
                host: host_port,
                allowed: if self.hosts.is_empty() {
                    "none".into()
                } else {
                    self.hosts.join(", ")
                },
            });
        }
        Ok(self
            .insecure_hosts
            .iter()
            .any(|e| host_matches(e, host, &host_port)))
    }
}

/// The cache path of a verified plugin (None: no cache directory).
fn cached(cache: Option<&PathBuf>, kind: &str, key: &str) -> Option<PathBuf> {
    cache.map(|dir| dir.join(kind).join(format!("{key}.wasm")))
}

/// Downloads a `url` source and checks its sha256. Returns the bytes as served.
///
/// # Errors
/// A host not allowed, plain HTTP to a host not marked insecure, a failed or oversized
/// download, a digest mismatch.
pub async fn fetch_url(
    policy: &Policy,
    source: &UrlSource,
    cache: Option<&PathBuf>,
) -> Result<Vec<u8>> {
    const FIELD: &str = "spec.plugin.source.url";
    let url = reqwest::Url::parse(&source.url).map_err(|e| Error::BadReference {
        field: FIELD,
        reason: format!("{}: {e}", source.url),
    })?;
    let host = url.host_str().unwrap_or_default().to_string();
    let insecure = policy.check(FIELD, &host, url.port())?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        scheme => {
            return Err(Error::BadReference {
                field: FIELD,
                reason: format!(
                    "{scheme}:// is not allowed: use https:// (plain http only to a host the operator marks --insecure-plugin-host)"
                ),
            });
        }
    }
    let path = cached(cache, "url", &source.sha256);
    if let Some(path) = &path
        && let Ok(bytes) = tokio::fs::read(path).await
        && hex::encode(Sha256::digest(&bytes)) == source.sha256
    {
        return Ok(bytes);
    }
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none()) // a redirect could leave the allowed hosts
        .build()
        .map_err(|e| fetch_error(FIELD, &source.url, &e))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fetch_error(FIELD, &source.url, &e))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fetch_error(FIELD, &source.url, &e))?
    {
        if (bytes.len() + chunk.len()) as u64 > MAX_PLUGIN_BYTES {
            return Err(Error::TooLarge { field: FIELD });
        }
        bytes.extend_from_slice(&chunk);
    }
    let got = hex::encode(Sha256::digest(&bytes));
    if got != source.sha256 {
        return Err(Error::DigestMismatch {
            field: FIELD,
            want: source.sha256.clone(),
            got,
        });
    }
    if let Some(path) = &path {
        store(path, &bytes).await;
    }
    Ok(bytes)
}

fn fetch_error(field: &'static str, what: &str, e: &dyn std::error::Error) -> Error {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    Error::Fetch {
        field,
        what: what.into(),
        reason,
    }
}

/// Pulls an `oci` source by digest: the manifest (its digest checked), the one wasm layer
/// (its digest checked) and, with keys to check, a cosign signature by each key's holder.
///
/// # Errors
/// As [`fetch_url`]; not a Wasm artifact; a missing or bad signature.
pub async fn pull_oci(
    policy: &Policy,
    source: &OciSource,
    cache: Option<&PathBuf>,
) -> Result<Vec<u8>> {
    const FIELD: &str = "spec.plugin.source.oci.image";
    let reference: Reference = source.image.parse().map_err(|e| Error::BadReference {
        field: FIELD,
        reason: format!("{}: {e}", source.image),
    })?;
    let want = reference
        .digest()
        .map(str::to_string)
        .ok_or_else(|| Error::BadReference {
            field: FIELD,
            reason: format!(
                "{} has no @sha256: digest: pin the digest, not a tag",
                source.image
            ),
        })?;
    let (host, port) = split_registry(reference.resolve_registry());
    let insecure = policy.check(FIELD, &host, port)?;
    let mut keys = policy.keys.clone();
    if let Some(pem) = &source.public_key {
        keys.push(PublicKey::from_pem(
            "spec.plugin.source.oci.publicKey",
            pem,
        )?);
    }
    let mut cache_key = want.trim_start_matches("sha256:").to_string();
    for key in &keys {
        cache_key = hex::encode(Sha256::digest(format!("{cache_key}/{}", key.fingerprint)));
    }
    let path = cached(cache, "oci", &cache_key);
    if let Some(path) = &path
        && let Ok(bytes) = tokio::fs::read(path).await
    {
        return Ok(bytes); // written only after every check below passed
    }

    let client = OciClient::new(ClientConfig {
        protocol: if insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        read_timeout: Some(FETCH_TIMEOUT),
        ..ClientConfig::default()
    });
    let pull_error = |what: String, e: &dyn std::error::Error| fetch_error(FIELD, &what, e);
    let manifest = pull_manifest(&client, &reference, &want).await?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == WASM_LAYER)
        .ok_or_else(|| Error::NotWasmArtifact {
            image: source.image.clone(),
            layers: manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let wasm = pull_blob(&client, &reference, layer)
        .await
        .map_err(|e| match e {
            BlobError::TooLarge => Error::TooLarge { field: FIELD },
            BlobError::Pull(e) => pull_error(format!("layer {}", layer.digest), &e),
            BlobError::Digest(got) => Error::DigestMismatch {
                field: FIELD,
                want: layer.digest.clone(),
                got,
            },
        })?;
    for key in &keys {
        verify_signature(&client, &reference, &want, key)
            .await
            .map_err(|reason| Error::Unsigned {
                image: source.image.clone(),
                key: key.name.clone(),
                reason,
            })?;
    }
    if let Some(path) = &path {
        store(path, &wasm).await;
    }
    Ok(wasm)
}

/// `wasmop oci push`: pushes `wasm` to `reference` in the Wasm OCI artifact layout (config
/// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer), anonymously, with
/// the distribution API's two-step blob upload (POST, then PUT with the digest), which every
/// registry takes. Returns `registry/repository@sha256:<manifest digest>`, what
/// `spec.plugin.source.oci.image` takes: the digest of exactly the manifest bytes sent.
///
/// # Errors
/// The reference does not parse, or the registry refuses the push.
pub async fn push(reference: &str, wasm: Vec<u8>, plain_http: bool) -> anyhow::Result<String> {
    let reference: Reference = reference.parse()?;
    let scheme = if plain_http { "http" } else { "https" };
    let base = format!("{scheme}://{}", reference.resolve_registry());
    let repo = reference.repository();
    let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let layer_digest = digest(&wasm);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip1",
        "layerDigests": [layer_digest],
    }))?;
    let descriptor = |media_type: &str, bytes: &[u8]| serde_json::json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        "config": descriptor(WASM_CONFIG, &config),
        "layers": [descriptor(WASM_LAYER, &wasm)],
    }))?;
    for blob in [config, wasm] {
        let started = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await?
            .error_for_status()?;
        let location = started
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("{base}: the upload has no Location"))?;
        let mut url = reqwest::Url::parse(&base)?.join(location)?;
        url.query_pairs_mut().append_pair("digest", &digest(&blob));
        http.put(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(blob)
            .send()
            .await?
            .error_for_status()?;
    }
    let tag = reference.tag().unwrap_or("latest");
    http.put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header(
            reqwest::header::CONTENT_TYPE,
            oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        )
        .body(manifest.clone())
        .send()
        .await?
        .error_for_status()?;
    Ok(format!(
        "{}/{repo}@{}",
        reference.registry(),
        digest(&manifest)
    ))
}

fn split_registry(registry: &str) -> (String, Option<u16>) {
    match registry.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => (host.into(), port.parse().ok()),
        _ => (registry.into(), None),
    }
}

/// The manifest at `reference`, whose bytes must hash to `want` (`sha256:<hex>`).
async fn pull_manifest(
    client: &OciClient,
    reference: &Reference,
    want: &str,
) -> Result<OciImageManifest> {
    const FIELD: &str = "spec.plugin.source.oci.image";
    let (raw, _) = client
        .pull_manifest_raw(
            reference,
            &RegistryAuth::Anonymous,
            &[
                oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
            ],
        )
        .await
        .map_err(|e| fetch_error(FIELD, &format!("the manifest of {reference}"), &e))?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
    if got != want {
        return Err(Error::DigestMismatch {
            field: FIELD,
            want: want.into(),
            got,
        });
    }
    serde_json::from_slice(&raw).map_err(|e| Error::BadReference {
        field: FIELD,
        reason: format!("the manifest of {reference} is not an OCI image manifest: {e}"),
    })
}

enum BlobError {
    Pull(oci_client::errors::OciDistributionError),
    TooLarge,
    /// The sha256 the content had.
    Digest(String),
}

/// A blob, capped and checked against its descriptor's digest.
async fn pull_blob(
    client: &OciClient,
    reference: &Reference,
    layer: &OciDescriptor,
) -> Result<Vec<u8>, BlobError> {
    if layer.size < 0 || layer.size as u64 > MAX_PLUGIN_BYTES {
        return Err(BlobError::TooLarge);
    }
    let mut out = Vec::with_capacity(layer.size as usize);
    client
        .pull_blob(reference, layer, &mut out)
        .await
        .map_err(BlobError::Pull)?;
    if out.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(BlobError::TooLarge);
    }
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    if got != layer.digest {
        return Err(BlobError::Digest(got));
    }
    Ok(out)
}

/// Whether a cosign signature by `key` for manifest digest `digest` is stored beside it (the
/// tag `sha256-<hex>.sig` of the same repository, one simple-signing layer per signature).
/// Returns why not.
async fn verify_signature(
    client: &OciClient,
    reference: &Reference,
    digest: &str,
    key: &PublicKey,
) -> Result<(), String> {
    let tag = format!("{}.sig", digest.replace(':', "-"));
    let sig_ref = Reference::with_tag(
        reference.registry().to_string(),
        reference.repository().to_string(),
        tag.clone(),
    );
    let (raw, _) = client
        .pull_manifest_raw(
            &sig_ref,
            &RegistryAuth::Anonymous,
            &[
                oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
                oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
            ],
        )
        .await
        .map_err(|e| format!("no signature manifest at tag {tag} ({e})"))?;
    let manifest: OciImageManifest = serde_json::from_slice(&raw)
        .map_err(|e| format!("the signature manifest {tag} is not an OCI manifest: {e}"))?;
    let mut seen = 0;
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == COSIGN_LAYER)
    {
        seen += 1;
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(COSIGN_SIGNATURE))
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        else {
            continue;
        };
        let Ok(payload) = pull_blob(client, &sig_ref, layer).await else {
            continue;
        };
        if key.verify(&payload, &signature) && signs(&payload, digest) {
            return Ok(());
        }
    }
    Err(format!(
        "{seen} signature(s) at tag {tag}, none by this key for {digest}"
    ))
}

/// Whether a simple-signing payload is a cosign signature of manifest `digest`.
fn signs(payload: &[u8], digest: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return false;
    };
    v["critical"]["type"] == "cosign container image signature"
        && v["critical"]["image"]["docker-manifest-digest"] == digest
}

#[cfg(test)]
mod tests {
    use super::*;

    // A P-256 key pair made for this test (PKCS#8 private key, SPKI public key).
    fn key_pair() -> (ring::signature::EcdsaKeyPair, String) {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(ring::signature::KeyPair::public_key(&pair).as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki);
        (
            pair,
            format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
        )
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_for_its_digest() {
        let (pair, pem) = key_pair();
        let (_, other_pem) = key_pair();
        let key = PublicKey::from_pem("k", &pem).unwrap();
        let other = PublicKey::from_pem("o", &other_pem).unwrap();
        let payload = br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#;
        let sig = pair
            .sign(&ring::rand::SystemRandom::new(), payload)
            .unwrap();
        assert!(key.verify(payload, sig.as_ref()));
        assert!(!other.verify(payload, sig.as_ref()));
        assert!(signs(payload, "sha256:ab"));
        assert!(!signs(payload, "sha256:cd"));
    }

    #[test]
    fn keys_that_are_not_p256_pem_are_refused_with_the_expected_format() {
        let err = PublicKey::from_pem("spec.plugin.source.oci.publicKey", "hello").unwrap_err();
        assert!(err.to_string().contains("BEGIN PUBLIC KEY"), "{err}");
        let rsa_like = "-----BEGIN PUBLIC KEY-----\nMAwwCgYIKoZIzj0EAwI=\n-----END PUBLIC KEY-----";
        assert!(PublicKey::from_pem("k", rsa_like).is_err());
    }

    #[test]
    fn hosts_must_be_allowed_and_plain_http_marked() {
        let policy = Policy {
            hosts: vec![
                "registry.example.com".into(),
                "*.corp.example".into(),
                "127.0.0.1:5000".into(),
            ],
            insecure_hosts: vec!["127.0.0.1:5000".into()],
            keys: Vec::new(),
        };
        assert!(!policy.check("f", "registry.example.com", None).unwrap());
        assert!(!policy.check("f", "r.corp.example", Some(443)).unwrap());
        assert!(policy.check("f", "127.0.0.1", Some(5000)).unwrap());
        let err = policy
            .check("f", "169.254.169.254", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--plugin-host"), "{err}");
        assert!(policy.check("f", "127.0.0.1", Some(5001)).is_err());
        assert_eq!(
            split_registry("localhost:5000"),
            ("localhost".into(), Some(5000))
        );
    }
}
