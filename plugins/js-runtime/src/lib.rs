//! The wasmop JavaScript runtime: QuickJS (through `rquickjs`) packaged as an Extism plugin
//! that runs a user's `reconcile(request)` / `finalize(request)`.
//!
//! This crate builds to `wasmop_js_runtime.wasm` for `wasm32-wasip1` (`make plugins`). That
//! file alone is not a plugin: `wasmop-js-build` instantiates it once at build time, feeds the
//! user's source to the `wizer.initialize` export on standard input, and snapshots the memory
//! (Wizer), exactly as `extism-js` and Javy do. The snapshot starts with the source already
//! evaluated, so a host pays neither parsing nor evaluation again.
//!
//! Modules:
//! - [`engine`]: QuickJS runtime and context, evaluation of the source, calls, error text.
//!   Host-testable.
//! - [`console`]: the `console` global, logging to a swappable sink.
//! - `exports` (wasm32 only): the Wasm exports `wizer.initialize`, `reconcile`, `finalize`.
//!
//! # The build protocol (runtime side; `wasmop-js-build` is the other side)
//! - Standard input: the JavaScript source (UTF-8). Environment: [`FILE_NAME_ENV`] names it in
//!   error positions and stack traces.
//! - Standard output: exactly one JSON line, [`InitReport`].
//! - Standard error: whatever the source printed with `console.*` while it was evaluated.

pub mod console;
pub mod engine;
#[cfg(target_arch = "wasm32")]
mod exports;

use serde::Serialize;

/// The environment variable holding the source's file name during initialisation.
pub const FILE_NAME_ENV: &str = "WASMOP_JS_FILE_NAME";

/// The one line `wizer.initialize` writes to standard output.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub enum InitReport {
    /// The source is evaluated; `exports` names the ABI entry points it defines.
    Ready { exports: Vec<&'static str> },
    /// The source cannot become a plugin; the snapshot must not be used.
    Failed(engine::InitError),
}
