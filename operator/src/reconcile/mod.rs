//! The reconcile of one parent, and what it needs: read top-down from [`controller`].
//!
//! - [`controller`]: the kube-runtime controller of one WasmController and the path of one
//!   parent: finalizer, access check, gather, plugin call, plan, execute.
//! - [`context`]: what the steps share: the reconcile `Error` and a WasmController's `Runtime`.
//! - [`related`]: `spec.related`: API-contract references and selectors, resolved for a parent.
//! - [`triggers`]: related objects' watches, and the parents a change to one re-reconciles.
//! - [`request`]: the request a plugin is given, its objects' JSON cached by `resourceVersion`.
//! - [`plan`]: validates a plugin response into SSA applies and a prune set (pure).
//! - [`execute`]: writes a plan: ownership of children, dry run, create/apply/prune, events.
//! - [`unchanged`]: whether an apply would change nothing, from the live object's managedFields.
//! - [`finalizers`]: this controller's finalizer on parents: add, remove, release them all.
//! - [`conflicts`]: a field two controllers write, reported on both of them.

pub mod conflicts;
pub mod context;
pub mod controller;
pub mod execute;
pub mod finalizers;
pub mod plan;
pub mod related;
pub mod request;
pub mod triggers;
pub mod unchanged;
