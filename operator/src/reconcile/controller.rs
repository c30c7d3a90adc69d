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
//! - Deleting a parent, turning `finalize` off or annotating a parent to skip it never leaves
//!   this controller's finalizer behind (`finalizers.rs`).
//! - A parent that is gone is forgotten: its failure leaves `Degraded`, its per-parent state
//!   is evicted.
//! - Failures requeue the parent with exponential backoff and are reported on the
//!   WasmController's `Degraded` condition and as a Warning event on the parent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use wasmop_abi::{
    ABI_VERSION, ControllerInfo, FINALIZE_EXPORT, RECONCILE_EXPORT, ReconcileRequest,
    ReconcileResponse,
};

use crate::cluster::access::{self, Access};
use crate::cluster::api_error::readable;
use crate::cluster::kinds;
use crate::cluster::watches::{SharedKind, Watches};
use crate::crd::{KindRef, WasmControllerSpec};
use crate::metrics::Metrics;
use crate::plugin::{self, LoadedPlugin};
use crate::reconcile::conflicts::{self, Board};
use crate::reconcile::execute::{
    self, ADOPT_ANNOTATION, AppliedByTarget, Conflict, DEPENDENCY_RETRY,
};
use crate::reconcile::finalizers::{self, Finalizers, SKIP_ANNOTATION};
use crate::reconcile::plan::{self, Identity, ObjRef, Owned};
use crate::reconcile::related;
use crate::reconcile::triggers::Tracker;

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
    #[error("the API server rejected {action} of {target}: {}", readable(.source))]
    Write {
        action: &'static str,
        target: ObjRef,
        #[source]
        source: kube::Error,
    },
    #[error("{target} is not a declared child or related kind, so it cannot be written")]
    UnknownKind { target: ObjRef },
    #[error("children[{target}] cannot be sent to the API server: {source}")]
    BadChild {
        target: ObjRef,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "nothing was written: {}. wasmop never takes over an object it did not create: rename the child or remove the other object{}",
        list(conflicts),
        adopt_hint(controller, conflicts)
    )]
    ChildConflict {
        controller: String,
        conflicts: Vec<Conflict>,
    },
    #[error(
        "wrote the first {written} write(s); the next waits for a child created in this round: {source}"
    )]
    WaitingForDependencies {
        written: usize,
        #[source]
        source: Box<Error>,
    },
    #[error(transparent)]
    Finalizer(#[from] finalizers::Error),
    #[error(
        "nothing more was written: another field manager owns a field of {target} that this controller sets to another value ({message}). Two controllers must not set the same field: change one plugin, or have one of them own the field"
    )]
    FieldConflict { target: ObjRef, message: String },
}

fn list(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn adopt_hint(controller: &str, conflicts: &[Conflict]) -> String {
    if conflicts.iter().any(|c| c.adoptable) {
        format!(
            ", or, to hand an uncontrolled object over, annotate it {ADOPT_ANNOTATION}={controller}"
        )
    } else {
        String::new()
    }
}

impl Error {
    /// The `result` label of `wasmop_reconciles_total` and `kind` of plugin failures.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Forbidden(_) => "forbidden",
            Error::Plugin(e) => e.metric_label(),
            Error::Plan(plan::Error::TooLarge { .. }) => "response_too_large",
            Error::InvalidOutput { .. } | Error::Plan(_) | Error::UnknownKind { .. } => {
                "invalid_output"
            }
            Error::Related(_) => "related",
            Error::Write { .. } | Error::Finalizer(_) => "write_failed",
            Error::BadChild { .. } => "invalid_output",
            Error::ChildConflict { .. } => "child_conflict",
            Error::FieldConflict { .. } => "field_conflict",
            Error::WaitingForDependencies { .. } => "waiting_for_dependencies",
        }
    }

    /// UpperCamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Forbidden(_) => "Forbidden",
            Error::Plugin(e) => e.reason(),
            Error::Plan(plan::Error::TooLarge { .. }) => "ResponseTooLarge",
            Error::InvalidOutput { .. } | Error::Plan(_) | Error::UnknownKind { .. } => {
                "InvalidResponse"
            }
            Error::Related(_) => "RelatedUnavailable",
            Error::Write { .. } | Error::Finalizer(_) => "WriteRejected",
            Error::BadChild { .. } => "InvalidResponse",
            Error::ChildConflict { .. } => "ChildConflict",
            Error::FieldConflict { .. } => "FieldConflict",
            Error::WaitingForDependencies { .. } => "WaitingForDependencies",
        }
    }

    /// A failure the API server or the network may not repeat: a 5xx or 429 answer, or no
    /// answer at all, to one of this reconcile's requests.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            Error::Write { source, .. } => source,
            Error::WaitingForDependencies { source, .. } => return source.is_transient(),
            _ => return false,
        };
        match source {
            kube::Error::Api(status) => status.code >= 500 || status.code == 429,
            kube::Error::HyperError(_) | kube::Error::Service(_) => true,
            _ => false,
        }
    }

    fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            Error::Plugin(_)
                | Error::InvalidOutput { .. }
                | Error::Plan(_)
                | Error::UnknownKind { .. }
                | Error::BadChild { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A declared child kind and its shared watch.
pub struct ChildKind {
    pub kind: KindRef,
    pub watch: Arc<SharedKind>,
}

/// The last failure of a parent, for status conditions.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// Reconciles a parent may have in a burst.
pub const RATE_BURST: f64 = 10.0;
/// At most this many fields per kind are listed in a controller's `patches` dependencies.
pub const MAX_WRITTEN_FIELDS: usize = 64;
/// Reconciles per second a parent is held to once its burst is spent.
pub const RATE_PER_SECOND: f64 = 1.0;

/// A token bucket: [`RATE_BURST`] tokens, refilled at [`RATE_PER_SECOND`]. (Hand-written
/// rather than a rate-limiting crate: its state lives and is evicted with the parent's other
/// per-parent state.)
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full() -> Self {
        Bucket {
            tokens: RATE_BURST,
            at: Instant::now(),
        }
    }

    /// Takes a token at `now`, or returns how long until one is there.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE_PER_SECOND).min(RATE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        Some(Duration::from_secs_f64(
            (1.0 - self.tokens) / RATE_PER_SECOND,
        ))
    }
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
    /// This controller's finalizer on parents.
    pub finalizers: Finalizers,
    pub(crate) recorder: Recorder,
    /// Per parent: what we last applied, by target (hash of the body, resourceVersion).
    pub(crate) applied: Mutex<HashMap<String, AppliedByTarget>>,
    backoff: Mutex<HashMap<String, Box<dyn Iterator<Item = Duration> + Send>>>,
    /// Per parent: the rate limit's bucket.
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Parents the rate limit held back, and when it last did; the manager reports them.
    pub throttled: Mutex<BTreeMap<String, Instant>>,
    /// Operator-wide limits on one plugin response.
    pub limits: plan::ResponseLimits,
    /// Related objects: their watches, and which parents to reconcile when one changes.
    pub tracker: Tracker,
    /// The tracker's triggers, taken by [`run`].
    triggers: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<DynamicObject>>>>,
    /// Current failures by parent name; the manager reports them on the WasmController.
    pub failures: Mutex<BTreeMap<String, Failure>>,
    health: mpsc::UnboundedSender<()>,
    /// Fields written to objects this controller does not own (status, `apply` patches), by
    /// kind name: its `patches` dependencies, reported on the WasmController.
    pub written: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Field conflicts with other controllers, reported on both sides.
    pub board: Arc<Board>,
    pub board_token: conflicts::Token,
}

impl Runtime {
    #[allow(clippy::too_many_arguments)] // one constructor, called once by the manager
    pub fn new(
        namespace: String,
        name: String,
        spec: WasmControllerSpec,
        client: Client,
        operator: Client,
        parent: Arc<SharedKind>,
        children: Vec<ChildKind>,
        plugin: Arc<LoadedPlugin>,
        access: Arc<Access>,
        metrics: Metrics,
        resync: Duration,
        limits: plan::ResponseLimits,
        watches: Arc<Watches>,
        health: mpsc::UnboundedSender<()>,
        board: Arc<Board>,
    ) -> Self {
        let identity = Identity::new(&namespace, &name);
        let reporter = Reporter {
            controller: identity.field_manager.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let board_token = board.register(&namespace, &identity, health.clone(), recorder.clone());
        let (triggers_tx, triggers) = mpsc::unbounded_channel();
        let tracker = Tracker::new(
            client.clone(),
            namespace.clone(),
            spec.service_account_name.clone(),
            watches,
            access.clone(),
            parent.clone(),
            triggers_tx,
        );
        let finalizers = Finalizers {
            resource: parent.resource.clone(),
            namespace: namespace.clone(),
            identity: identity.clone(),
            team: client.clone(),
            operator,
        };
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
            finalizers,
            recorder,
            applied: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            throttled: Mutex::new(BTreeMap::new()),
            limits,
            tracker,
            triggers: Mutex::new(Some(triggers)),
            failures: Mutex::new(BTreeMap::new()),
            health,
            written: Mutex::new(BTreeMap::new()),
            board,
            board_token,
        }
    }

    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Records an Event on `parent` (best effort: a missing events grant is logged).
    pub(crate) async fn publish(
        &self,
        parent: &DynamicObject,
        type_: KubeEventType,
        reason: &str,
        note: &str,
    ) {
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1024)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &parent.object_ref(&self.parent.resource))
            .await
        {
            tracing::debug!(error = %readable(&e), reason, "could not record an event (may the account create and patch events.k8s.io events?)");
        }
    }

    /// Notes the fields an apply to an object this controller does not own sets (at most
    /// [`MAX_WRITTEN_FIELDS`] per kind); a new one refreshes the WasmController's status.
    pub(crate) fn note_written(&self, target: &ObjRef, body: &Value) {
        let group = target.api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let kind = crate::crd::kind_name(group, Some(&target.kind));
        let mut written = self.written.lock().unwrap();
        let fields = written.entry(kind).or_default();
        let before = fields.len();
        for field in plan::written_fields(body) {
            if fields.len() < MAX_WRITTEN_FIELDS {
                fields.insert(field);
            }
        }
        if fields.len() != before {
            let _ = self.health.send(());
        }
    }

    /// Forgets a parent that is gone: its failure, backoff and applied-skip entries.
    fn forget(&self, parent: &str) {
        self.backoff.lock().unwrap().remove(parent);
        self.applied.lock().unwrap().remove(parent);
        self.buckets.lock().unwrap().remove(parent);
        self.tracker.forget(parent);
        self.board.withdraw(&self.label(), Some(parent));
        let throttled = self.throttled.lock().unwrap().remove(parent).is_some();
        if self.failures.lock().unwrap().remove(parent).is_some() || throttled {
            let _ = self.health.send(());
        }
    }

    /// Takes a token of `parent`'s bucket, or says how long until one is there.
    fn admit(&self, parent: &str) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap();
        let wait = buckets
            .entry(parent.into())
            .or_insert_with(Bucket::full)
            .take(Instant::now());
        drop(buckets);
        match wait {
            None => Ok(()),
            Some(wait) => {
                let first = self
                    .throttled
                    .lock()
                    .unwrap()
                    .insert(parent.into(), Instant::now())
                    .is_none();
                if first {
                    tracing::warn!(
                        parent,
                        "reconciling faster than {RATE_PER_SECOND}/s: held back (requeueAfterSeconds too small, or a status that changes on every write?)"
                    );
                    let _ = self.health.send(());
                }
                self.metrics
                    .reconciles_throttled
                    .with_label_values(&[&self.label()])
                    .inc();
                Err(wait)
            }
        }
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
    let parent_json = kinds::clean(parent.clone(), &rt.parent.resource);
    let (owned, children) = gather_children(rt, parent);
    let mut related_inputs = BTreeMap::new();
    let mut related_targets = Vec::new();
    let name = parent.name_any();
    rt.tracker.begin(&name);
    let reads = related::Reads::Tracked {
        tracker: &rt.tracker,
        parent: &name,
    };
    for spec in &rt.spec.related {
        let (value, target) = related::resolve(&reads, spec, &parent_json, &rt.namespace).await?;
        for violation in &value.violations {
            let note = format!(
                "spec.related[{}]: contract violation: {violation}",
                spec.name
            );
            rt.publish(parent, KubeEventType::Warning, "ContractViolation", &note)
                .await;
        }
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
        related: &related_targets,
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
    let requeue = plan.requeue_after.map_or(rt.resync, |r| r.min(rt.resync));
    Ok(Outcome {
        action: Action::requeue(requeue),
        released: false,
    })
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
            by_name.insert(name, kinds::clean((*obj).clone(), &child.watch.resource));
        }
        by_kind.insert(
            wasmop_abi::child_key(&child.kind.api_version, &child.kind.kind),
            by_name,
        );
    }
    (owned, by_kind)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_throttling_are_transient_refusals_are_not() {
        let write = |code: u16| Error::Write {
            action: "the apply",
            target: ObjRef {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: "n".into(),
                name: "c".into(),
            },
            source: kube::Error::Api(Box::new(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "message": "m", "reason": "r", "code": code,
                }))
                .unwrap(),
            )),
        };
        for code in [500, 503, 429] {
            assert!(write(code).is_transient(), "{code}");
        }
        for code in [400, 403, 404, 409, 422] {
            assert!(!write(code).is_transient(), "{code}");
        }
        let waiting = Error::WaitingForDependencies {
            written: 1,
            source: Box::new(write(503)),
        };
        assert!(waiting.is_transient());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_second() {
        let start = Instant::now();
        let mut bucket = Bucket::full();
        for _ in 0..10 {
            assert_eq!(bucket.take(start), None);
        }
        let wait = bucket.take(start).expect("the burst is spent");
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert_eq!(bucket.take(start + Duration::from_millis(1001)), None);
        assert!(bucket.take(start + Duration::from_millis(1002)).is_some());
    }
}
