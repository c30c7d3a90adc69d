//! Plugins: where their bytes come from and how they run.
//!
//! - [`host`] (re-exported here): the Extism host, the only module that names extism or
//!   wasmtime: compile cache, lanes and instances, limits, the operator-wide budget, error
//!   classification.
//! - [`source`]: a WasmController's plugin bytes from a ConfigMap (wasm or JavaScript), a URL,
//!   an OCI registry or a file, and their sha256.
//! - [`cache`]: the size cap and the cache file writer both kinds of source use.
//! - [`remote`]: `url` and `oci` sources: the hosts an admin allows, digests, cosign signatures.

pub mod cache;
pub mod host;
pub mod remote;
pub mod source;

pub use host::*;
