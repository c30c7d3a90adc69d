//! The cluster as the operator sees it: watches, accounts, kinds, errors, the Lease.
//!
//! - [`watches`]: watches and caches opened as a team's account in its namespace, shared.
//! - [`access`]: impersonated clients and cached access reviews (least privilege).
//! - [`rbac`]: the rights a controller's ServiceAccount needs (`wasmop rbac`, checked by
//!   explain and before each reconcile).
//! - [`kinds`]: a kind's API resource (cached discovery) and an object as a plugin sees it.
//! - [`api_error`]: the API server's reason and message as a person reads them.
//! - [`leader`]: leader election with a Lease, so only one replica writes.
//! - [`shard`]: each replica's shard Lease and its view of the others' (`--shard`).
//! - [`ring`]: the consistent-hash ring that spreads WasmControllers over shards (`--shard`).

pub mod access;
pub mod api_error;
pub mod kinds;
pub mod leader;
pub mod rbac;
pub mod ring;
pub mod shard;
pub mod watches;
