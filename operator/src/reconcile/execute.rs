//! Executes a validated [`Plan`] as the team's ServiceAccount: decides for each desired child
//! whether it is ours to write, skips what is unchanged, dry-runs everything, then writes in
//! plan order and records the plugin's events.
//!
//! # Guarantees
//! - **Never touch what isn't ours.** A child is written only if it does not exist (created
//!   by an apply that fails if it exists by then, [`NO_OBJECT_HAS_THIS_VERSION`]) or is
//!   controlled by this parent through this controller (server-side applied with a
//!   `metadata.uid` precondition, so an object deleted and recreated by someone else meanwhile
//!   is refused too). An existing object that
//!   is not ours fails the whole reconcile with [`Error::ChildConflict`] before anything is
//!   written, unless whoever may write it annotated it [`ADOPT_ANNOTATION`] with this
//!   controller's name and nothing else controls it.
//! - Every write but the first is dry-run (concurrently) before any is made, and the first is
//!   made first, so a response the API server would refuse writes nothing, with one documented
//!   exception: a write refused because a child that an earlier write creates is not found yet
//!   (a Pod whose ServiceAccount is in the same response) lets the writes before it go through
//!   and retries in [`DEPENDENCY_RETRY`] ([`Error::WaitingForDependencies`]); each round
//!   creates at least one more child, so it converges.
//! - A steady state sends nothing, and neither does a restart when nothing changed: an apply is
//!   skipped when the live object is still at the resourceVersion our last identical apply
//!   produced, or when its managedFields entry of ours and its values show the apply would
//!   change nothing ([`unchanged`]); drift someone else made is corrected.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use wasmop_abi::EventType;

use crate::cluster::kinds;
use crate::reconcile::context::{ADOPT_ANNOTATION, Conflict, Error, Result, Runtime};
use crate::reconcile::plan::{self, Apply, Identity, ObjRef, Owned, Plan};
use crate::reconcile::unchanged;

/// How soon a parent whose writes wait for a dependency created in the same round is retried.
pub const DEPENDENCY_RETRY: Duration = Duration::from_secs(1);

/// Whose a live object of a desired child's name is.
pub(crate) enum Ownership {
    Ours,
    /// Not controlled by anything, and annotated to be adopted by this controller.
    Adoptable,
    Foreign(Conflict),
}

/// Whose `live`, an existing object named like a desired child `target`, is, for the
/// controller of `identity` and the parent of `parent_uid` (also what `wasmop explain` shows).
pub(crate) fn ownership(
    identity: &Identity,
    parent_uid: &str,
    target: &ObjRef,
    live: &DynamicObject,
) -> Ownership {
    let label = live.labels().get(plan::CONTROLLER_LABEL);
    let ours_label = identity.label_value();
    let controller = live
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let conflict = |holder: String, adoptable: bool| {
        Ownership::Foreign(Conflict {
            target: target.clone(),
            holder,
            adoptable,
        })
    };
    match controller {
        Some(o) if o.uid == parent_uid && label == Some(&ours_label) => Ownership::Ours,
        Some(o) => {
            let through = match label {
                Some(l) if o.uid == parent_uid => {
                    format!(" (the same parent, through WasmController {l})")
                }
                Some(l) if *l == ours_label => " (another parent of this controller)".into(),
                Some(l) => format!(" (through WasmController {l})"),
                None => String::new(),
            };
            conflict(
                format!("is controlled by {} {}{through}", o.kind, o.name),
                false,
            )
        }
        None if live.annotations().get(ADOPT_ANNOTATION) == Some(&identity.controller) => {
            Ownership::Adoptable
        }
        None => {
            let mut managers: Vec<&str> = live
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter_map(|m| m.manager.as_deref())
                .collect();
            managers.dedup();
            let made_by = if managers.is_empty() {
                "someone else".to_string()
            } else {
                managers.join(", ")
            };
            conflict(
                format!("has no controller and was written by {made_by}"),
                true,
            )
        }
    }
}

/// One write of a plan.
pub(crate) enum Write<'a> {
    /// A child that does not exist yet: an apply that fails if it exists by then.
    Create {
        apply: &'a Apply,
        resource: ApiResource,
    },
    /// A server-side apply; `uid`: the live object it must still be (a precondition).
    Apply {
        target: &'static str,
        apply: &'a Apply,
        resource: ApiResource,
        subresource_status: bool,
        uid: Option<String>,
        /// The target as last seen (from the caches); None when unknown (a related object),
        /// which never counts as unchanged.
        live: Option<Live<'a>>,
        adopt: bool,
    },
    Prune {
        owned: &'a Owned,
        resource: ApiResource,
    },
}

/// A write's target as last seen: the parent being reconciled, or a child from its cache.
pub(crate) enum Live<'a> {
    Parent(&'a DynamicObject),
    Cached(Arc<DynamicObject>),
}

impl std::ops::Deref for Live<'_> {
    type Target = DynamicObject;
    fn deref(&self) -> &DynamicObject {
        match self {
            Live::Parent(parent) => parent,
            Live::Cached(cached) => cached,
        }
    }
}

/// Executes a plan: decide ownership, skip what is unchanged, dry-run the rest, then write it.
pub(crate) async fn execute(rt: &Runtime, parent: &DynamicObject, plan: &Plan) -> Result<()> {
    let mut writes = child_writes(rt, parent, plan)?;
    for owned in &plan.prune {
        writes.push(Write::Prune {
            owned,
            resource: rt.child_resource(&owned.target)?,
        });
    }
    for apply in &plan.patches {
        let to_parent = apply.target.kind == rt.parent.resource.kind
            && apply.target.api_version == rt.parent.resource.api_version
            && apply.target.name == parent.name_any();
        writes.push(Write::Apply {
            target: "patch",
            apply,
            resource: patch_resource(rt, apply).await?,
            subresource_status: false,
            uid: None,
            live: to_parent.then_some(Live::Parent(parent)),
            adopt: false,
        });
    }
    if let Some(status) = &plan.status {
        writes.push(Write::Apply {
            target: "status",
            apply: status,
            resource: rt.parent.resource.clone(),
            subresource_status: true,
            uid: parent.uid(),
            live: Some(Live::Parent(parent)),
            adopt: false,
        });
    }
    writes.retain(|w| !unchanged(rt, parent, w));
    if writes.is_empty() && plan.events.is_empty() {
        return Ok(());
    }

    let (ready, waiting) = dry_run(rt, parent, &writes).await?;
    for write in &writes[..ready] {
        let rv = write_one(rt, parent, write, false).await?;
        record(rt, parent, write, rv).await;
    }
    if let Some(source) = waiting {
        return Err(Error::WaitingForDependencies {
            written: ready,
            source: Box::new(source),
        });
    }
    publish_events(rt, parent, &plan.events).await
}

/// How many dry runs of one reconcile are in flight at once.
const DRY_RUNS_AT_ONCE: usize = 8;

/// The dry run: the API server checks schema, admission and RBAC of every write but the first
/// without writing anything, all at once. The first needs none: it is written first, so if it
/// is refused nothing has been written. Returns how many writes may go ahead: all of them, or
/// those before the first one refused because a child that an earlier write creates is not
/// found yet (with that refusal); any other refusal is the error and nothing is written.
async fn dry_run(
    rt: &Runtime,
    parent: &DynamicObject,
    writes: &[Write<'_>],
) -> Result<(usize, Option<Error>)> {
    // Collected first: a stream holding the closure would not be `Send` for every lifetime.
    let dry_runs: Vec<_> = writes
        .iter()
        .skip(1)
        .map(|write| write_one(rt, parent, write, true))
        .collect();
    let results: Vec<Result<Option<String>>> = futures::stream::iter(dry_runs)
        .buffered(DRY_RUNS_AT_ONCE)
        .collect()
        .await;
    for (i, result) in (1..).zip(results) {
        if let Err(error) = result {
            if !needs_earlier_create(&error, &writes[..i]) {
                return Err(error);
            }
            return Ok((i, Some(error)));
        }
    }
    Ok((writes.len(), None))
}

/// Whether a refused dry run says that an object created by one of `earlier` is not found
/// (the API server's wording: `serviceaccount "web" not found`), so it can pass once that
/// object exists. Anything else (RBAC, schema, a conflict) is a real refusal.
fn needs_earlier_create(error: &Error, earlier: &[Write<'_>]) -> bool {
    let Error::Write {
        source: kube::Error::Api(status),
        ..
    } = error
    else {
        return false;
    };
    earlier.iter().any(|w| match w {
        Write::Create { apply, .. } => status
            .message
            .contains(&format!("\"{}\" not found", apply.target.name)),
        _ => false,
    })
}

/// The writes of the desired children, or [`Error::ChildConflict`] naming every one that
/// exists and is not ours (then nothing at all is written).
fn child_writes<'a>(
    rt: &Runtime,
    parent: &'a DynamicObject,
    plan: &'a Plan,
) -> Result<Vec<Write<'a>>> {
    let parent_uid = parent.uid().unwrap_or_default();
    let mut writes = Vec::new();
    let mut conflicts = Vec::new();
    for apply in &plan.children {
        let resource = rt.child_resource(&apply.target)?;
        let Some(live) = rt.live_child(&resource, &apply.target) else {
            writes.push(Write::Create { apply, resource });
            continue;
        };
        let adopt = match ownership(&rt.identity, &parent_uid, &apply.target, &live) {
            Ownership::Ours => false,
            Ownership::Adoptable => true,
            Ownership::Foreign(conflict) => {
                conflicts.push(conflict);
                continue;
            }
        };
        writes.push(Write::Apply {
            target: "child",
            apply,
            resource,
            subresource_status: false,
            uid: live.uid(),
            live: Some(Live::Cached(live.clone())),
            adopt,
        });
    }
    if conflicts.is_empty() {
        Ok(writes)
    } else {
        Err(Error::ChildConflict {
            controller: rt.name.clone(),
            conflicts,
        })
    }
}

/// The API resource of an `apply` patch's target: the parent, or a related object's kind.
async fn patch_resource(rt: &Runtime, apply: &Apply) -> Result<ApiResource> {
    if apply.target.kind == rt.parent.resource.kind
        && apply.target.api_version == rt.parent.resource.api_version
    {
        return Ok(rt.parent.resource.clone());
    }
    kinds::resource_of(
        &rt.client,
        &kinds::gvk(&apply.target.api_version, &apply.target.kind),
    )
    .await
    .map_err(|source| Error::Write {
        action: "discovery",
        target: apply.target.clone(),
        source,
    })
}

/// An apply that would change nothing, counted in `wasmop_applies_skipped_total`: its body is
/// what we last sent and its target is still at the resourceVersion that apply produced (this
/// process's memory), or else the live target's managedFields entry of ours and its values say
/// so ([`unchanged::apply_is_noop`]: after a restart, or when someone else wrote the object
/// without touching our fields). The second is remembered like an apply made.
fn unchanged(rt: &Runtime, parent: &DynamicObject, write: &Write<'_>) -> bool {
    let Write::Apply {
        target,
        apply,
        live: Some(live),
        subresource_status,
        ..
    } = write
    else {
        return false;
    };
    let Some(rv) = live.resource_version() else {
        return false;
    };
    let key = (apply.target.clone(), *target);
    let body = hash(&apply.body);
    let remembered = rt
        .applied
        .lock()
        .unwrap()
        .get(&parent.name_any())
        .and_then(|by_target| by_target.get(&key))
        == Some(&(body, rv.clone()));
    let unchanged = remembered || {
        let subresource = subresource_status.then_some("status");
        unchanged::apply_is_noop(live, &apply.body, &manager_of(rt, target), subresource)
    };
    if unchanged {
        if !remembered {
            rt.applied
                .lock()
                .unwrap()
                .entry(parent.name_any())
                .or_default()
                .insert(key, (body, rv));
            if *target == "status" || *target == "patch" {
                // Ours on the object all the same (`status.dependencies.patches`), as after a
                // write: a restarted operator that writes nothing still reports them.
                rt.note_written(&apply.target, &apply.body);
            }
        }
        rt.metrics
            .applies_skipped
            .with_label_values(&[rt.label().as_str(), *target])
            .inc();
    }
    unchanged
}

/// Metrics, the skip cache and the `Adopted` event after a successful write.
async fn record(rt: &Runtime, parent: &DynamicObject, write: &Write<'_>, rv: Option<String>) {
    let label = rt.label();
    let (target, apply) = match write {
        Write::Create { apply, .. } => ("child", *apply),
        Write::Apply { target, apply, .. } => (*target, *apply),
        Write::Prune { owned, .. } => {
            if rv.is_some() {
                rt.metrics.prunes.with_label_values(&[&label]).inc();
                tracing::info!(child = %owned.target, "pruned: no longer desired");
            }
            return;
        }
    };
    rt.metrics
        .applies
        .with_label_values(&[label.as_str(), target])
        .inc();
    if let Some(rv) = rv {
        rt.applied
            .lock()
            .unwrap()
            .entry(parent.name_any())
            .or_default()
            .insert((apply.target.clone(), target), (hash(&apply.body), rv));
    }
    if target == "status" || target == "patch" {
        rt.note_written(&apply.target, &apply.body);
    }
    if let Write::Apply { adopt: true, .. } = write {
        adopted(rt, parent, &apply.target).await;
    }
}

/// Logs an adoption and records it as a Normal `Adopted` event on the parent.
async fn adopted(rt: &Runtime, parent: &DynamicObject, target: &ObjRef) {
    tracing::info!(child = %target, "adopted (annotated {ADOPT_ANNOTATION}={})", rt.name);
    let note = format!(
        "adopted {target}: it was annotated {ADOPT_ANNOTATION}={}",
        rt.name
    );
    rt.publish(parent, KubeEventType::Normal, "Adopted", &note)
        .await;
}

/// Records the plugin's events on the parent.
async fn publish_events(
    rt: &Runtime,
    parent: &DynamicObject,
    events: &[wasmop_abi::Event],
) -> Result<()> {
    let reference = parent.object_ref(&rt.parent.resource);
    for ev in events {
        rt.may_write()?;
        let event = KubeEvent {
            type_: match ev.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: ev.reason.clone(),
            note: Some(ev.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(source) = rt.recorder.publish(&event, &reference).await {
            let target = ObjRef {
                api_version: "events.k8s.io/v1".into(),
                kind: "Event".into(),
                namespace: rt.namespace.clone(),
                name: ev.reason.clone(),
            };
            return Err(Error::Write {
                action: "recording an event",
                target,
                source,
            });
        }
    }
    Ok(())
}

/// Sends one write (or its dry run). Returns the resourceVersion an apply or create produced.
async fn write_one(
    rt: &Runtime,
    parent: &DynamicObject,
    write: &Write<'_>,
    dry_run: bool,
) -> Result<Option<String>> {
    rt.may_write()?; // `--shard`: not if the WasmController moved since the plugin was called
    match write {
        Write::Create { apply, resource } => create(rt, parent, apply, resource, dry_run).await,
        Write::Apply {
            target,
            apply,
            resource,
            subresource_status,
            uid,
            ..
        } => {
            let manager = manager_of(rt, target);
            let to = Target {
                force: *target == "child",
                status: *subresource_status,
                uid: uid.as_deref(),
                manager: &manager,
            };
            apply_one(rt, apply, resource, &to, dry_run).await
        }
        Write::Prune { owned, resource } => prune(rt, owned, resource, dry_run).await,
    }
}

/// The field manager an apply to `target` (`child`, `status`, `patch`) is sent as: children
/// and status share the controller's, `apply` patches have their own
/// ([`Identity::patch_manager`]). The write and the check that skips it must agree.
fn manager_of(rt: &Runtime, target: &str) -> String {
    match target {
        "patch" => rt.identity.patch_manager(),
        _ => rt.identity.field_manager.clone(),
    }
}

/// How an apply is sent.
struct Target<'a> {
    /// Take fields other managers own: only for children, which are this controller's alone.
    /// The parent and related objects are shared: a field another manager owns with another
    /// value is a [`Error::FieldConflict`], never silently taken.
    force: bool,
    /// To the status subresource.
    status: bool,
    /// Only to the object with this uid.
    uid: Option<&'a str>,
    /// The field manager: children and status share the controller's, `apply` patches have
    /// their own ([`Identity::patch_manager`]).
    manager: &'a str,
}

/// A server-side apply as this controller's field manager.
async fn apply_one(
    rt: &Runtime,
    apply: &Apply,
    resource: &ApiResource,
    to: &Target<'_>,
    dry_run: bool,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(rt.client.clone(), &apply.target.namespace, resource);
    let mut params = PatchParams::apply(to.manager);
    params.force = to.force;
    params.dry_run = dry_run;
    let (subresource_status, uid) = (to.status, to.uid);
    let mut body = apply.body.clone();
    if let Some(uid) = uid {
        body["metadata"]["uid"] = json!(uid); // the API server refuses if it is another object
    }
    let result = if subresource_status {
        api.patch_status(&apply.target.name, &params, &Patch::Apply(&body))
            .await
    } else {
        api.patch(&apply.target.name, &params, &Patch::Apply(&body))
            .await
    };
    let action = match (subresource_status, dry_run) {
        (true, true) => "a dry-run status apply",
        (true, false) => "the status apply",
        (false, true) => "a dry-run apply",
        (false, false) => "the apply",
    };
    let obj = result.map_err(|source| match source {
        kube::Error::Api(e) if e.code == 409 && !to.force && e.reason == "Conflict" => {
            Error::FieldConflict {
                target: apply.target.clone(),
                message: e.message,
            }
        }
        source => Error::Write {
            action,
            target: apply.target.clone(),
            source,
        },
    })?;
    Ok(obj.resource_version())
}

/// A `metadata.resourceVersion` no object has (etcd's first write is revision 2), sent with
/// the server-side apply that creates a child: the API server creates the object when the name
/// is free and refuses with 409 Conflict when anything has it (an apply to an existing object
/// must name its resourceVersion, if it names one). So one request creates a child, fails if
/// the name is taken by then, and leaves the fields under our `Apply` entry, as a POST followed
/// by a managedFields rewrite did in two.
const NO_OBJECT_HAS_THIS_VERSION: &str = "1";

/// Creates a new child by server-side apply that fails if the name is taken by then. A taken
/// name is looked at: ours (our cache was behind) is applied to, anything else is a conflict.
async fn create(
    rt: &Runtime,
    parent: &DynamicObject,
    apply: &Apply,
    resource: &ApiResource,
    dry_run: bool,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(rt.client.clone(), &apply.target.namespace, resource);
    let write_error = |action, source| Error::Write {
        action,
        target: apply.target.clone(),
        source,
    };
    let mut body = apply.body.clone();
    body["metadata"]["resourceVersion"] = json!(NO_OBJECT_HAS_THIS_VERSION);
    let mut params = PatchParams::apply(&rt.identity.field_manager).force();
    params.dry_run = dry_run;
    let action = if dry_run {
        "a dry-run create"
    } else {
        "the create"
    };
    match api
        .patch(&apply.target.name, &params, &Patch::Apply(&body))
        .await
    {
        Ok(created) => Ok(created.resource_version()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let live = api
                .get_opt(&apply.target.name)
                .await
                .map_err(|source| write_error("reading a child whose name is taken", source))?;
            let Some(live) = live else {
                return Err(write_error(action, kube::Error::Api(e))); // gone again: retry
            };
            let owner = ownership(
                &rt.identity,
                &parent.uid().unwrap_or_default(),
                &apply.target,
                &live,
            );
            let adopt = match owner {
                Ownership::Ours => false,
                Ownership::Adoptable => true,
                Ownership::Foreign(conflict) => {
                    tracing::info!(child = %apply.target, "the child's name was taken after the cache was read: not written");
                    return Err(Error::ChildConflict {
                        controller: rt.name.clone(),
                        conflicts: vec![conflict],
                    });
                }
            };
            let uid = live.uid();
            let to = Target {
                force: true,
                status: false,
                uid: uid.as_deref(),
                manager: &rt.identity.field_manager,
            };
            let rv = apply_one(rt, apply, resource, &to, dry_run).await?;
            if adopt && !dry_run {
                adopted(rt, parent, &apply.target).await;
            }
            Ok(rv)
        }
        Err(source) => Err(write_error(action, source)),
    }
}

/// Deletes an owned child no longer desired (uid precondition: exactly the one we made).
async fn prune(
    rt: &Runtime,
    owned: &Owned,
    resource: &ApiResource,
    dry_run: bool,
) -> Result<Option<String>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(rt.client.clone(), &owned.target.namespace, resource);
    let params = DeleteParams {
        dry_run,
        preconditions: Some(Preconditions {
            uid: Some(owned.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&owned.target.name, &params).await {
        // Some("") marks a deletion made; None a child that was already gone (not counted).
        Ok(_) => Ok(Some(String::new())),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None), // already gone
        Err(source) => Err(Error::Write {
            action: if dry_run {
                "a dry-run delete"
            } else {
                "the delete"
            },
            target: owned.target.clone(),
            source,
        }),
    }
}

impl Runtime {
    pub(crate) fn child_resource(&self, target: &ObjRef) -> Result<ApiResource> {
        self.children
            .iter()
            .find(|c| c.kind.api_version == target.api_version && c.kind.kind == target.kind)
            .map(|c| c.watch.resource.clone())
            .ok_or_else(|| Error::UnknownKind {
                target: target.clone(),
            })
    }

    /// The live object of a child's name, from the shared cache of its kind.
    fn live_child(
        &self,
        resource: &ApiResource,
        target: &ObjRef,
    ) -> Option<std::sync::Arc<DynamicObject>> {
        let watch = self.children.iter().find(|c| {
            c.watch.resource.kind == resource.kind && c.watch.resource.group == resource.group
        })?;
        let key = ObjectRef::new_with(&target.name, resource.clone()).within(&target.namespace);
        watch.watch.store.get(&key)
    }
}

fn hash(body: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.to_string().hash(&mut h);
    h.finish()
}
