//! The commands besides `wasmop run`, each a tool for plugin authors and cluster users.
//!
//! - [`eval`]: `wasmop eval`: a plugin run locally against case files (plugin test suites).
//! - [`explain`]: `wasmop explain`: a dry-run reconcile of one live object, and what blocks it.
//! - [`graph`]: `wasmop graph`: controllers and the kinds they own, read, patch, finalize.
//! - [`init`]: `wasmop init`: a plugin project (Rust, Go, TypeScript) with its kit vendored.

pub mod eval;
pub mod explain;
pub mod graph;
pub mod init;
