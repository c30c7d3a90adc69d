//! The reconcile path of one WasmController, top-down: [`reconcile`] gathers a parent's
//! inputs from the shared caches, calls the plugin, validates its answer into a
//! [`plan::Plan`], and executes the plan as the team's ServiceAccount.
//!
//! [`Runtime`] is everything one running WasmController needs; the manager
//! (`manager.rs`) builds one per WasmController and replaces it when the spec or plugin
//! changes. [`run`] drives it with a kube-runtime `Controller` over the shared watches.
//!
//! # Guarantees
//! - Nothing is written for an invalid response, and every write of a valid one is first sent
//!   as a server-side dry run: a response the API server would reject (schema, admission,
//!   RBAC) writes nothing at all.
//! - A steady-state reconcile writes nothing: an apply is skipped when the live object is
//!   still exactly the one our last identical apply produced (same resourceVersion), and the
//!   API server treats any identical apply as a no-op anyway.
//! - Failures requeue the parent with exponential backoff and are reported on the
//!   WasmController's `Degraded` condition and as a Warning event on the parent.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use wasmop_abi::{
    ABI_VERSION, ControllerInfo, EventType, FINALIZE_EXPORT, RECONCILE_EXPORT, ReconcileRequest,
    ReconcileResponse,
};

use crate::access::{self, Access};
use crate::crd::{KindRef, WasmControllerSpec};
use crate::metrics::Metrics;
use crate::plan::{self, Apply, Identity, ObjRef, Owned};
use crate::plugin::{self, LoadedPlugin};
use crate::related;
use crate::watches::SharedKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Forbidden(#[from] access::Error),
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    #[error(
        "plugin output is not a valid {ABI_VERSION} response: {source}. Return JSON with only children, status, apply, requeueAfterSeconds, events, finalized"
    )]
    InvalidOutput {
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Plan(#[from] plan::Error),
    #[error(transparent)]
    Related(#[from] related::Error),
    #[error("the API server rejected {action} of {target}: {source}")]
    Write {
        action: &'static str,
        target: ObjRef,
        #[source]
        source: kube::Error,
    },
    #[error("{target} is not a declared child or related kind, so it cannot be written")]
    UnknownKind { target: ObjRef },
}

impl Error {
    /// The `result` label of `wasmop_reconciles_total` and `kind` of plugin failures.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Forbidden(_) => "forbidden",
            Error::Plugin(e) => e.metric_label(),
            Error::InvalidOutput { .. } | Error::Plan(_) | Error::UnknownKind { .. } => {
                "invalid_output"
            }
            Error::Related(_) => "related",
            Error::Write { .. } => "write_failed",
        }
    }

    /// UpperCamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Forbidden(_) => "Forbidden",
            Error::Plugin(e) => e.reason(),
            Error::InvalidOutput { .. } | Error::Plan(_) | Error::UnknownKind { .. } => {
                "InvalidResponse"
            }
            Error::Related(_) => "RelatedUnavailable",
            Error::Write { .. } => "WriteRejected",
        }
    }

    fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            Error::Plugin(_)
                | Error::InvalidOutput { .. }
                | Error::Plan(_)
                | Error::UnknownKind { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A declared child kind and its shared watch.
pub struct ChildKind {
    pub kind: KindRef,
    pub watch: Arc<SharedKind>,
}

/// What an apply last produced: (hash of the body we sent, resourceVersion it resulted in).
type AppliedAs = (u64, String);

/// The last failure of a parent, for status conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// Everything one running WasmController needs.
pub struct Runtime {
    pub namespace: String,
    pub name: String,
    pub identity: Identity,
    pub spec: WasmControllerSpec,
    /// Acts as the WasmController's ServiceAccount.
    pub client: Client,
    pub parent: Arc<SharedKind>,
    pub children: Vec<ChildKind>,
    pub plugin: Arc<LoadedPlugin>,
    pub access: Arc<Access>,
    pub metrics: Metrics,
    pub resync: Duration,
    recorder: Recorder,
    /// What we last applied, by target: (hash of the body, resourceVersion it produced).
    applied: Mutex<HashMap<(ObjRef, &'static str), AppliedAs>>,
    backoff: Mutex<HashMap<String, Box<dyn Iterator<Item = Duration> + Send>>>,
    /// Current failures by parent name; the manager reports them on the WasmController.
    pub failures: Mutex<BTreeMap<String, Failure>>,
    health: mpsc::UnboundedSender<()>,
}

impl Runtime {
    #[allow(clippy::too_many_arguments)] // one constructor, called once by the manager
    pub fn new(
        namespace: String,
        name: String,
        spec: WasmControllerSpec,
        client: Client,
        parent: Arc<SharedKind>,
        children: Vec<ChildKind>,
        plugin: Arc<LoadedPlugin>,
        access: Arc<Access>,
        metrics: Metrics,
        resync: Duration,
        health: mpsc::UnboundedSender<()>,
    ) -> Self {
        let identity = Identity::new(&namespace, &name);
        let reporter = Reporter {
            controller: identity.field_manager.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Runtime {
            namespace,
            name,
            identity,
            spec,
            client,
            parent,
            children,
            plugin,
            access,
            metrics,
            resync,
            recorder,
            applied: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            health,
        }
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Runs the controller until `shutdown` fires, then finishes in-flight reconciles and returns.
pub async fn run(rt: Arc<Runtime>, shutdown: oneshot::Receiver<()>) {
    let ns = rt.namespace.clone();
    let parent_ar = rt.parent.resource.clone();
    let concurrency = rt
        .spec
        .max_concurrent_reconciles
        .unwrap_or(crate::crd::DEFAULT_CONCURRENCY);
    let mut controller = Controller::for_shared_stream_with(
        rt.parent.subscribe(ns.clone()),
        rt.parent.store.clone(),
        parent_ar.clone(),
    )
    .with_config(ControllerConfig::default().concurrency(concurrency));
    for child in &rt.children {
        let (par, label) = (parent_ar.clone(), rt.identity.label_value());
        controller = controller.watches_shared_stream_with(
            child.watch.subscribe(ns.clone()),
            move |obj| owner_of(&obj, &par, &label),
            child.watch.resource.clone(),
        );
    }
    controller
        .graceful_shutdown_on(shutdown.map(|_| ()))
        .run(reconcile, error_policy, rt)
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The parent a child belongs to: its controller ownerReference, if it is of the parent kind
/// and the child carries this controller's label.
fn owner_of(
    child: &DynamicObject,
    parent: &ApiResource,
    label: &str,
) -> Option<ObjectRef<DynamicObject>> {
    if child
        .labels()
        .get(plan::CONTROLLER_LABEL)
        .map(String::as_str)
        != Some(label)
    {
        return None;
    }
    let owner = child.owner_references().iter().find(|o| {
        o.controller == Some(true) && o.kind == parent.kind && o.api_version == parent.api_version
    })?;
    Some(ObjectRef::new_with(&owner.name, parent.clone()).within(&child.namespace()?))
}

/// Reconciles one parent, recording metrics and failures.
async fn reconcile(parent: Arc<DynamicObject>, rt: Arc<Runtime>) -> Result<Action> {
    let name = parent.name_any();
    let span = tracing::info_span!("reconcile", controller = %rt.label(), parent = %name);
    let started = Instant::now();
    let result = reconcile_parent(&parent, &rt)
        .instrument(span.clone())
        .await;
    let label = rt.label();
    rt.metrics
        .reconcile_seconds
        .with_label_values(&[&label])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            rt.metrics
                .reconciles
                .with_label_values(&[&label, "success"])
                .inc();
            rt.backoff.lock().unwrap().remove(&name);
            if rt.failures.lock().unwrap().remove(&name).is_some() {
                let _ = rt.health.send(());
            }
        }
        Err(error) => {
            rt.metrics
                .reconciles
                .with_label_values(&[&label, error.metric_label()])
                .inc();
            if error.is_plugin_failure() {
                rt.metrics
                    .plugin_failures
                    .with_label_values(&[&label, error.metric_label()])
                    .inc();
            }
            let failure = Failure {
                reason: error.reason().into(),
                message: error.to_string(),
            };
            let changed = rt
                .failures
                .lock()
                .unwrap()
                .insert(name.clone(), failure.clone())
                != Some(failure.clone());
            if changed {
                span.in_scope(|| tracing::warn!(reason = %failure.reason, "{}", failure.message));
                let _ = rt.health.send(());
                // One Warning event per distinct failure, not per retry.
                let event = KubeEvent {
                    type_: KubeEventType::Warning,
                    reason: failure.reason.clone(),
                    note: Some(truncate(&failure.message, 1024)),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                if let Err(e) = rt
                    .recorder
                    .publish(&event, &parent.object_ref(&rt.parent.resource))
                    .await
                {
                    tracing::debug!(error = %e, "could not record a Warning event (does the account may create events?)");
                }
            }
        }
    }
    result
}

fn error_policy(parent: Arc<DynamicObject>, _error: &Error, rt: Arc<Runtime>) -> Action {
    let mut backoff = rt.backoff.lock().unwrap();
    let delays = backoff.entry(parent.name_any()).or_insert_with(|| {
        Box::new(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(300))
                .with_jitter()
                .without_max_times()
                .build(),
        )
    });
    Action::requeue(delays.next().unwrap_or(Duration::from_secs(300)))
}

/// The reconcile of one parent, top-down.
async fn reconcile_parent(parent: &DynamicObject, rt: &Runtime) -> Result<Action> {
    // 1. The team's account must be able to read what the plugin is shown.
    let mut readable: Vec<(String, String)> = vec![(
        rt.parent.resource.group.clone(),
        rt.parent.resource.plural.clone(),
    )];
    readable.extend(rt.children.iter().map(|c| {
        (
            c.watch.resource.group.clone(),
            c.watch.resource.plural.clone(),
        )
    }));
    rt.access
        .require(
            &rt.namespace,
            &rt.spec.service_account_name,
            &["get", "list", "watch"],
            &readable,
        )
        .await?;

    // 2. Deletion and our finalizer.
    let finalizer = rt.identity.finalizer();
    let has_finalizer = parent.finalizers().contains(&finalizer);
    let finalizing = parent.metadata.deletion_timestamp.is_some();
    if finalizing && !(rt.spec.plugin.finalize && has_finalizer) {
        return Ok(Action::await_change()); // the garbage collector removes the children
    }
    if rt.spec.plugin.finalize && !finalizing && !has_finalizer {
        set_finalizer(rt, parent, true).await?;
    }

    // 3. Gather the inputs: parent and children from the shared caches, related objects as the account.
    let parent_json = related::clean(parent.clone(), &rt.parent.resource);
    let (owned, children) = gather_children(rt, parent);
    let mut related_inputs = BTreeMap::new();
    let mut related_targets = Vec::new();
    for spec in &rt.spec.related {
        let (value, target) =
            related::resolve(&rt.client, spec, &parent_json, &rt.namespace).await?;
        related_inputs.insert(spec.name.clone(), value);
        related_targets.extend(target);
    }
    let request = ReconcileRequest {
        abi_version: ABI_VERSION.into(),
        controller: ControllerInfo {
            name: rt.name.clone(),
            namespace: rt.namespace.clone(),
            config: rt.spec.plugin.config.clone().unwrap_or(Value::Null),
        },
        object: parent_json.clone(),
        children,
        related: related_inputs,
        finalizing,
    };

    // 4. Call the plugin.
    let export = if finalizing {
        FINALIZE_EXPORT
    } else {
        RECONCILE_EXPORT
    };
    let input = serde_json::to_vec(&request).expect("requests serialise");
    let output = rt.plugin.call(export, input).await?;
    rt.metrics
        .plugin_call_seconds
        .with_label_values(&[&rt.label()])
        .observe(output.elapsed.as_secs_f64());
    let response: ReconcileResponse =
        serde_json::from_slice(&output.output).map_err(|source| Error::InvalidOutput { source })?;

    // 5. Validate the whole response into a plan.
    let child_kinds: Vec<KindRef> = rt.children.iter().map(|c| c.kind.clone()).collect();
    let input = plan::Input {
        identity: &rt.identity,
        parent: &parent_json,
        child_kinds: &child_kinds,
        related: &related_targets,
        owned: &owned,
        finalizing,
    };
    let plan = plan::plan(&input, response)?;

    // 6. Execute it: dry run everything that changes, then write.
    execute(rt, parent, &plan).await?;
    if finalizing && plan.finalized {
        set_finalizer(rt, parent, false).await?;
    }
    let requeue = plan.requeue_after.map_or(rt.resync, |r| r.min(rt.resync));
    Ok(Action::requeue(requeue))
}

/// This controller's current children of `parent` (from the caches): as plan input and as the
/// plugin's `request.children` (every declared kind present, possibly empty).
fn gather_children(
    rt: &Runtime,
    parent: &DynamicObject,
) -> (Vec<Owned>, BTreeMap<String, BTreeMap<String, Value>>) {
    let uid = parent.uid().unwrap_or_default();
    let label = rt.identity.label_value();
    let mut owned = Vec::new();
    let mut by_kind = BTreeMap::new();
    for child in &rt.children {
        let mut by_name = BTreeMap::new();
        for obj in child.watch.in_namespace(&rt.namespace) {
            let ours = obj.labels().get(plan::CONTROLLER_LABEL) == Some(&label)
                && obj
                    .owner_references()
                    .iter()
                    .any(|o| o.uid == uid && o.controller == Some(true));
            if !ours {
                continue;
            }
            let name = obj.name_any();
            owned.push(Owned {
                target: ObjRef {
                    api_version: child.kind.api_version.clone(),
                    kind: child.kind.kind.clone(),
                    namespace: rt.namespace.clone(),
                    name: name.clone(),
                },
                uid: obj.uid().unwrap_or_default(),
            });
            by_name.insert(name, related::clean((*obj).clone(), &child.watch.resource));
        }
        by_kind.insert(
            wasmop_abi::child_key(&child.kind.api_version, &child.kind.kind),
            by_name,
        );
    }
    (owned, by_kind)
}

/// One write of a plan.
enum Write<'a> {
    Apply {
        target: &'static str,
        apply: &'a Apply,
        resource: ApiResource,
        subresource_status: bool,
    },
    Prune {
        owned: &'a Owned,
        resource: ApiResource,
    },
}

/// Executes a plan: skip what is unchanged, dry-run the rest, then write it for real.
async fn execute(rt: &Runtime, parent: &DynamicObject, plan: &plan::Plan) -> Result<()> {
    let mut writes = Vec::new();
    for apply in &plan.children {
        let resource = rt.child_resource(&apply.target)?;
        writes.push(Write::Apply {
            target: "child",
            apply,
            resource,
            subresource_status: false,
        });
    }
    for owned in &plan.prune {
        writes.push(Write::Prune {
            owned,
            resource: rt.child_resource(&owned.target)?,
        });
    }
    for apply in &plan.patches {
        let resource = if apply.target.kind == rt.parent.resource.kind
            && apply.target.api_version == rt.parent.resource.api_version
        {
            rt.parent.resource.clone()
        } else {
            let gvk = crate::manager::gvk(&KindRef {
                api_version: apply.target.api_version.clone(),
                kind: apply.target.kind.clone(),
            });
            related::resource_of(&rt.client, &gvk)
                .await
                .map_err(|source| Error::Write {
                    action: "discovery",
                    target: apply.target.clone(),
                    source,
                })?
        };
        writes.push(Write::Apply {
            target: "patch",
            apply,
            resource,
            subresource_status: false,
        });
    }
    if let Some(status) = &plan.status {
        writes.push(Write::Apply {
            target: "status",
            apply: status,
            resource: rt.parent.resource.clone(),
            subresource_status: true,
        });
    }

    let label = rt.label();
    writes.retain(|w| match w {
        Write::Apply {
            target,
            apply,
            resource,
            subresource_status,
        } => {
            let live_rv = if *subresource_status
                || apply.target.kind == rt.parent.resource.kind
                    && apply.target.name == parent.name_any()
                    && *target == "patch"
            {
                parent.resource_version()
            } else {
                rt.live_resource_version(resource, &apply.target)
            };
            let unchanged = live_rv.is_some_and(|rv| {
                rt.applied
                    .lock()
                    .unwrap()
                    .get(&(apply.target.clone(), *target))
                    == Some(&(hash(&apply.body), rv))
            });
            if unchanged {
                rt.metrics
                    .applies_skipped
                    .with_label_values(&[label.as_str(), *target])
                    .inc();
            }
            !unchanged
        }
        Write::Prune { .. } => true,
    });
    if writes.is_empty() && plan.events.is_empty() {
        return Ok(());
    }

    // Dry run: the API server checks schema, admission and RBAC without writing anything.
    for write in &writes {
        write_one(rt, write, true).await?;
    }
    for write in &writes {
        let rv = write_one(rt, write, false).await?;
        match write {
            Write::Apply { target, apply, .. } => {
                rt.metrics
                    .applies
                    .with_label_values(&[label.as_str(), *target])
                    .inc();
                if let Some(rv) = rv {
                    rt.applied
                        .lock()
                        .unwrap()
                        .insert((apply.target.clone(), *target), (hash(&apply.body), rv));
                }
            }
            Write::Prune { owned, .. } => {
                rt.metrics.prunes.with_label_values(&[&label]).inc();
                tracing::info!(child = %owned.target, "pruned: no longer desired");
            }
        }
    }

    let reference = parent.object_ref(&rt.parent.resource);
    for ev in &plan.events {
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

/// Sends one write (or its dry run). Returns the resourceVersion an apply produced.
async fn write_one(rt: &Runtime, write: &Write<'_>, dry_run: bool) -> Result<Option<String>> {
    match write {
        Write::Apply {
            apply,
            resource,
            subresource_status,
            ..
        } => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(rt.client.clone(), &apply.target.namespace, resource);
            let mut params = PatchParams::apply(&rt.identity.field_manager).force();
            params.dry_run = dry_run;
            let result = if *subresource_status {
                api.patch_status(&apply.target.name, &params, &Patch::Apply(&apply.body))
                    .await
            } else {
                api.patch(&apply.target.name, &params, &Patch::Apply(&apply.body))
                    .await
            };
            let action = match (subresource_status, dry_run) {
                (true, true) => "a dry-run status apply",
                (true, false) => "the status apply",
                (false, true) => "a dry-run apply",
                (false, false) => "the apply",
            };
            let obj = result.map_err(|source| Error::Write {
                action,
                target: apply.target.clone(),
                source,
            })?;
            Ok(obj.resource_version())
        }
        Write::Prune { owned, resource } => {
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
                Ok(_) => Ok(None),
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
    }
}

/// Adds or removes this controller's finalizer on `parent` with its own field manager (so
/// `apply` patches to the parent never drop it by accident).
async fn set_finalizer(rt: &Runtime, parent: &DynamicObject, present: bool) -> Result<()> {
    let resource = &rt.parent.resource;
    let mut body = json!({
        "apiVersion": resource.api_version, "kind": resource.kind,
        "metadata": {"name": parent.name_any(), "namespace": rt.namespace},
    });
    if present {
        body["metadata"]["finalizers"] = json!([rt.identity.finalizer()]);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(rt.client.clone(), &rt.namespace, resource);
    let manager = format!("{}-finalizer", rt.identity.field_manager);
    let target = ObjRef {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
        namespace: rt.namespace.clone(),
        name: parent.name_any(),
    };
    api.patch(
        &parent.name_any(),
        &PatchParams::apply(&manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Write {
        action: if present {
            "adding the finalizer"
        } else {
            "removing the finalizer"
        },
        target,
        source,
    })?;
    rt.metrics
        .applies
        .with_label_values(&[&rt.label(), "finalizer"])
        .inc();
    Ok(())
}

impl Runtime {
    fn child_resource(&self, target: &ObjRef) -> Result<ApiResource> {
        self.children
            .iter()
            .find(|c| c.kind.api_version == target.api_version && c.kind.kind == target.kind)
            .map(|c| c.watch.resource.clone())
            .ok_or_else(|| Error::UnknownKind {
                target: target.clone(),
            })
    }

    fn live_resource_version(&self, resource: &ApiResource, target: &ObjRef) -> Option<String> {
        let watch = self.children.iter().find(|c| {
            c.watch.resource.kind == resource.kind && c.watch.resource.group == resource.group
        })?;
        let key = ObjectRef::new_with(&target.name, resource.clone()).within(&target.namespace);
        watch
            .watch
            .store
            .get(&key)
            .and_then(|o| o.resource_version())
    }
}

fn hash(body: &Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.to_string().hash(&mut h);
    h.finish()
}

/// `s` cut to at most `max` bytes (on a character boundary), marked with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
