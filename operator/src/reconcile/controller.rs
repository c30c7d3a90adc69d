//! The reconcile path of one WasmController, top-down: [`reconcile`] gathers a parent's
//! inputs from the shared caches, calls the plugin, validates its answer into a
//! [`plan::Plan`], and executes the plan as the team's ServiceAccount.
//!
//! [`Runtime`] is everything one running WasmController needs; the manager
//! (`manager.rs`) builds one per WasmController and replaces it when the spec or plugin
//! changes. [`run`] drives it with a kube-runtime `Controller` over the shared watches.
//!
//! # Guarantees
//! - Nothing is written for an invalid response; how a valid one is written (ownership of
//!   children, dry run, write order) is `execute.rs`.
//! - With `--shard`, every write (dry runs, Events and finalizers included) first checks that
//!   this replica still runs the WasmController ([`Runtime::may_write`]): a plugin result
//!   computed before a move, or before this replica lost its shard Lease, is never written.
//! - Deleting a parent, turning `finalize` off or annotating a parent to skip it never leaves
//!   this controller's finalizer behind (`finalizers.rs`).
//! - A parent that is gone is forgotten: its failure leaves `Degraded`, its per-parent state
//!   is evicted.
//! - Failures requeue the parent with exponential backoff and are reported on the
//!   WasmController's `Degraded` condition and as a Warning event on the parent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType as KubeEventType;
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument;
use wasmop_abi::{ControllerInfo, FINALIZE_EXPORT, RECONCILE_EXPORT, ReconcileResponse};

use crate::crd::KindRef;
use crate::reconcile::context::{Error, Failure, Result, Runtime};
use crate::reconcile::execute::{self, DEPENDENCY_RETRY};
use crate::reconcile::finalizers::{self, SKIP_ANNOTATION};
use crate::reconcile::plan::{self, ObjRef, Owned};
use crate::reconcile::related;
use crate::reconcile::request;

/// Runs the controller until `shutdown` fires, then finishes in-flight reconciles and returns.
pub async fn run(rt: Arc<Runtime>, shutdown: oneshot::Receiver<()>) {
    let ns = rt.namespace.clone();
    let parent_ar = rt.parent.resource.clone();
    let concurrency = rt
        .spec
        .max_concurrent_reconciles
        .unwrap_or(crate::crd::DEFAULT_CONCURRENCY);
    // A parent that is no longer in the cache when its change arrives was deleted.
    let parents = {
        let rt = rt.clone();
        rt.parent.clone().subscribe(ns.clone()).inspect(move |obj| {
            let key = ObjectRef::from_obj_with(obj.as_ref(), rt.parent.resource.clone());
            if rt.parent.store.get(&key).is_none() {
                rt.forget(&obj.name_any());
            }
        })
    };
    let mut controller =
        Controller::for_shared_stream_with(parents, rt.parent.store.clone(), parent_ar.clone())
            .with_config(ControllerConfig::default().concurrency(concurrency));
    for child in &rt.children {
        let (par, label) = (parent_ar.clone(), rt.identity.label_value());
        controller = controller.watches_shared_stream_with(
            child.watch.subscribe(ns.clone()),
            move |obj| owner_of(&obj, &par, &label),
            child.watch.resource.clone(),
        );
    }
    // Changes of related objects, as the parents that refer to them (`triggers.rs`).
    if let Some(rx) = rt.triggers.lock().unwrap().take() {
        let related = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|trigger| (trigger, rx))
        });
        controller = controller.reconcile_on(related);
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
    if let Err(wait) = rt.admit(&name) {
        return Ok(Action::requeue(wait)); // the plugin is not called
    }
    let span = tracing::info_span!("reconcile", controller = %rt.label(), parent = %name);
    let started = Instant::now();
    let result = reconcile_parent(&parent, &rt)
        .instrument(span.clone())
        .await
        .map(|outcome| outcome.action);
    if let Err(error) = &result
        && Runtime::moved(error)
    {
        // `--shard`: the WasmController is moving to another replica, which reconciles this
        // parent from scratch; this one stops without a word (no failure, no Event).
        span.in_scope(|| tracing::debug!("{error}"));
        return Ok(Action::await_change());
    }
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
            rt.board.withdraw(&label, Some(&name));
            if rt.failures.lock().unwrap().remove(&name).is_some() {
                let _ = rt.health.send(());
            }
        }
        Err(error) => {
            rt.metrics
                .reconciles
                .with_label_values(&[&label, error.metric_label()])
                .inc();
            if let Error::FieldConflict { target, message } = error {
                rt.board
                    .report(&label, &rt.identity, &name, target, message)
                    .await;
            }
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
                rt.publish(
                    &parent,
                    KubeEventType::Warning,
                    &failure.reason,
                    &failure.message,
                )
                .await;
            }
        }
    }
    result
}

fn error_policy(parent: Arc<DynamicObject>, error: &Error, rt: Arc<Runtime>) -> Action {
    if let Error::WaitingForDependencies { .. } = error {
        return Action::requeue(DEPENDENCY_RETRY); // progress was made: not a failure to back off
    }
    let mut backoff = rt.backoff.lock().unwrap();
    let delays = backoff.entry(parent.name_any()).or_insert_with(|| {
        Box::new(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(MAX_BACKOFF)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    });
    let delay = delays.next().unwrap_or(MAX_BACKOFF);
    if error.is_transient() {
        // The API server or the network had a moment: retrying soon is what converges; the
        // long backoff is for what only a person can fix (a plugin, a grant, a conflict).
        return Action::requeue(delay.min(TRANSIENT_MAX_BACKOFF));
    }
    Action::requeue(delay)
}

/// The longest retry delay of a failing parent.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The longest retry delay after a transient API error (5xx, 429, a connection that failed):
/// with a few percent of requests failing, a reconcile of a dozen requests fails often enough
/// that an uncapped backoff would leave some parents waiting minutes.
pub const TRANSIENT_MAX_BACKOFF: Duration = Duration::from_secs(15);

/// What a reconcile of one parent did.
pub(crate) struct Outcome {
    pub action: Action,
    /// This controller's finalizer was removed from the parent.
    pub released: bool,
}

impl Outcome {
    fn released() -> Self {
        Outcome {
            action: Action::await_change(),
            released: true,
        }
    }
}

/// The reconcile of one parent, top-down.
pub(crate) async fn reconcile_parent(parent: &DynamicObject, rt: &Runtime) -> Result<Outcome> {
    // 1. Deletion and our finalizer (releasing it shows the plugin nothing, so comes first).
    let holds = rt.finalizers.held_by(parent);
    let finalizing = parent.metadata.deletion_timestamp.is_some();
    if holds && !rt.spec.plugin.finalize {
        rt.finalizers.remove(parent).await?; // `finalize` was turned off
        if finalizing {
            return Ok(Outcome::released());
        }
    }
    if finalizing && !(rt.spec.plugin.finalize && holds) {
        // The garbage collector removes the children.
        return Ok(Outcome {
            action: Action::await_change(),
            released: false,
        });
    }
    if finalizing && parent.annotations().get(SKIP_ANNOTATION) == Some(&rt.name) {
        rt.finalizers.remove(parent).await?;
        let note = format!(
            "finalize of WasmController {} skipped: the parent is annotated {SKIP_ANNOTATION}={}",
            rt.name, rt.name
        );
        tracing::warn!("{note}");
        rt.publish(parent, KubeEventType::Warning, "FinalizeSkipped", &note)
            .await;
        return Ok(Outcome::released());
    }

    // 2. The team's account must (still) be able to read what the plugin is shown.
    require_read_access(rt).await?;
    if rt.spec.plugin.finalize && !finalizing && !holds {
        rt.finalizers.add(parent).await?;
    }

    // 3. Gather the inputs: parent and children from the shared caches, related objects as the account.
    let shown = request::shown(parent, &rt.parent.resource, true);
    let parent_json = shown.value.expect("asked for the value");
    let (owned, children) = gather_children(rt, parent);
    let name = parent.name_any();
    let related = gather_related(rt, parent, &parent_json, &name).await?;
    let controller = ControllerInfo {
        name: rt.name.clone(),
        namespace: rt.namespace.clone(),
        config: rt.spec.plugin.config.clone().unwrap_or(Value::Null),
    };
    let input = request::encode(
        &controller,
        &shown.text,
        &children,
        &related.inputs,
        finalizing,
    );

    // 4. Call the plugin.
    let export = if finalizing {
        FINALIZE_EXPORT
    } else {
        RECONCILE_EXPORT
    };
    let output = rt.plugin.call(export, input).await?;
    rt.metrics
        .plugin_call_seconds
        .with_label_values(&[&rt.label()])
        .observe(output.elapsed.as_secs_f64());
    rt.limits.check_output(output.output.len())?;
    let response: ReconcileResponse =
        serde_json::from_slice(&output.output).map_err(|source| Error::InvalidOutput { source })?;
    rt.limits.check(&response)?;

    // 5. Validate the whole response into a plan.
    let child_kinds: Vec<KindRef> = rt.children.iter().map(|c| c.kind.clone()).collect();
    let input = plan::Input {
        identity: &rt.identity,
        parent: &parent_json,
        child_kinds: &child_kinds,
        related: &related.targets,
        owned: &owned,
        finalizing,
    };
    let plan = plan::plan(&input, response)?;

    // 6. Execute it: what is ours to write, dry run, then write.
    execute::execute(rt, parent, &plan).await?;
    if finalizing && plan.finalized {
        rt.finalizers.remove(parent).await?;
        return Ok(Outcome::released());
    }
    let mut requeue = plan.requeue_after.map_or(rt.resync, |r| r.min(rt.resync));
    if related.retry {
        requeue = requeue.min(related::UNRESOLVED_RETRY); // no watch sees a CRD installed
    }
    Ok(Outcome {
        action: Action::requeue(requeue),
        released: false,
    })
}

/// One more `finalize` of a parent being deleted whose controller has stopped (the
/// WasmController is going, or `finalize` was turned off): what the release makes of it.
impl finalizers::Finalize for Runtime {
    async fn finalize(&self, parent: &DynamicObject) -> finalizers::Finalized {
        finalize_once(parent, self).await
    }
}

async fn finalize_once(parent: &DynamicObject, rt: &Runtime) -> finalizers::Finalized {
    match reconcile_parent(parent, rt).await {
        Ok(outcome) if outcome.released => finalizers::Finalized::Released,
        Ok(_) => finalizers::Finalized::NotYet,
        Err(Error::Forbidden(error)) => {
            tracing::info!(parent = %parent.name_any(), %error, "the team's account can no longer finalize: releasing");
            finalizers::Finalized::CannotFinalize
        }
        Err(error) => {
            tracing::info!(parent = %parent.name_any(), %error, "finalize failed; retrying until the grace period ends");
            finalizers::Finalized::NotYet
        }
    }
}

/// A parent's related objects as the plugin gets them, the objects it may patch, and whether
/// a reference waits for something only a retry sees.
struct RelatedInputs {
    inputs: BTreeMap<String, wasmop_abi::Related>,
    targets: Vec<ObjRef>,
    retry: bool,
}

/// Step 3b: resolves every `spec.related` entry as the team's account, noting what each
/// reference points at (so a change re-reconciles this parent). Contract violations and
/// references that cannot be resolved are reported (`Unresolved`), not fatal: the plugin
/// still runs and sees `reason`.
async fn gather_related(
    rt: &Runtime,
    parent: &DynamicObject,
    parent_json: &Value,
    name: &str,
) -> Result<RelatedInputs> {
    let mut out = RelatedInputs {
        inputs: BTreeMap::new(),
        targets: Vec::new(),
        retry: false,
    };
    let mut unresolved = Vec::new();
    rt.tracker.begin(name);
    let reads = related::Reads::Tracked {
        tracker: &rt.tracker,
        parent: name,
    };
    for spec in &rt.spec.related {
        let resolved = related::resolve(&reads, spec, parent_json, &rt.namespace).await?;
        let violations = resolved.related.violations.iter().chain(
            resolved
                .related
                .targets
                .iter()
                .flat_map(|t| t.violations.iter()),
        );
        for violation in violations {
            let note = format!(
                "spec.related[{}]: contract violation: {violation}",
                spec.name
            );
            rt.publish(parent, KubeEventType::Warning, "ContractViolation", &note)
                .await;
        }
        out.retry |= resolved.retry;
        out.targets.extend(resolved.targets);
        unresolved.extend(resolved.unresolved);
        out.inputs.insert(spec.name.clone(), resolved.related);
    }
    for problem in rt.note_unresolved(name, unresolved) {
        rt.publish(
            parent,
            KubeEventType::Warning,
            "UnresolvedReference",
            &problem.to_string(),
        )
        .await;
    }
    Ok(out)
}

/// The account may still `get`, `list` and `watch` the parent and child kinds (an access
/// review, cached: a revoked grant stops reconciles within [`access::REVIEW_TTL`]).
async fn require_read_access(rt: &Runtime) -> Result<()> {
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
            crate::cluster::rbac::PARENT, // what the watches of the parent and child kinds need
            &readable,
        )
        .await?;
    Ok(())
}

/// This controller's current children of `parent` (from the caches): as plan input and as the
/// plugin's `request.children` (every declared kind present, possibly empty).
fn gather_children(rt: &Runtime, parent: &DynamicObject) -> (Vec<Owned>, request::Children) {
    let uid = parent.uid().unwrap_or_default();
    let label = rt.identity.label_value();
    let mut owned = Vec::new();
    let mut by_kind = BTreeMap::new();
    for child in &rt.children {
        let mut by_name = BTreeMap::new();
        for obj in child.watch.controlled_by(&rt.namespace, &uid) {
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
            by_name.insert(
                name,
                request::shown(&obj, &child.watch.resource, false).text,
            );
        }
        by_kind.insert(
            wasmop_abi::child_key(&child.kind.api_version, &child.kind.kind),
            by_name,
        );
    }
    (owned, by_kind)
}
