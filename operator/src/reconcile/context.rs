//! What every step of a parent's reconcile shares, defined below the steps that use it: the
//! reconcile [`Error`] (classified once for metrics, conditions and events), and the
//! [`Runtime`] of one running WasmController (its clients, watches, plugin, per-parent state).
//!
//! The steps (`controller.rs`, `execute.rs`) import this module; it imports none of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::DynamicObject;
use kube::runtime::events::{Event as KubeEvent, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use serde_json::Value;
use tokio::sync::mpsc;
use wasmop_abi::ABI_VERSION;

use crate::cluster::access::{self, Access};
use crate::cluster::api_error::{readable, truncate};
use crate::cluster::shard::Fence;
use crate::cluster::watches::{SharedKind, Watches};
use crate::crd::{KindRef, WasmControllerSpec};
use crate::metrics::Metrics;
use crate::plugin::{self, LoadedPlugin};
use crate::reconcile::conflicts::{self, Board};
use crate::reconcile::finalizers::{self, Finalizers};
use crate::reconcile::plan::{self, Identity, ObjRef};
use crate::reconcile::related::{self, Unresolved};
use crate::reconcile::triggers::Tracker;

/// The annotation by which whoever may write an existing object hands it to a controller:
/// `wasmop.dev/adopt: <WasmController name>`.
pub const ADOPT_ANNOTATION: &str = "wasmop.dev/adopt";

/// What an apply last produced: (hash of the body we sent, resourceVersion it resulted in).
pub(crate) type AppliedAs = (u64, String);
/// Per parent: what we last applied, by target.
pub(crate) type AppliedByTarget = HashMap<(ObjRef, &'static str), AppliedAs>;

/// A desired child that exists and is not this controller's.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    pub target: ObjRef,
    /// Who controls it, as a phrase: "is controlled by Website other", "has no controller ...".
    pub holder: String,
    /// Whether the adoption annotation could hand it over (nothing else controls it).
    pub adoptable: bool,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exists and is not this controller's: it {}",
            self.target, self.holder
        )
    }
}

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
    #[error("nothing more was written: the WasmController moved to another replica (--shard)")]
    Moved,
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
            Error::Moved | Error::Finalizer(finalizers::Error::Moved { .. }) => "moved",
            Error::Write { .. } | Error::Finalizer(_) => "write_failed",
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
            Error::Moved | Error::Finalizer(finalizers::Error::Moved { .. }) => "Moved",
            Error::Write { .. } | Error::Finalizer(_) => "WriteRejected",
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

    pub(super) fn is_plugin_failure(&self) -> bool {
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
    pub(super) backoff: Mutex<HashMap<String, Box<dyn Iterator<Item = Duration> + Send>>>,
    /// Per parent: the rate limit's bucket.
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Parents the rate limit held back, and when it last did; the manager reports them.
    pub throttled: Mutex<BTreeMap<String, Instant>>,
    /// Operator-wide limits on one plugin response.
    pub limits: plan::ResponseLimits,
    /// Related objects: their watches, and which parents to reconcile when one changes.
    pub tracker: Tracker,
    /// The tracker's triggers, taken by [`run`].
    pub(super) triggers: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<DynamicObject>>>>,
    /// Current failures by parent name; the manager reports them on the WasmController.
    pub failures: Mutex<BTreeMap<String, Failure>>,
    /// References that cannot be resolved, by parent name (`ReferencesResolved`).
    pub unresolved: Mutex<BTreeMap<String, Vec<Unresolved>>>,
    pub(super) health: mpsc::UnboundedSender<()>,
    /// Fields written to objects this controller does not own (status, `apply` patches), by
    /// kind name: its `patches` dependencies, reported on the WasmController.
    pub written: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Field conflicts with other controllers, reported on both sides.
    pub board: Arc<Board>,
    pub board_token: conflicts::Token,
    /// Whether this replica may still write for this WasmController (`--shard`); checked
    /// right before every write, so nothing computed before a move is written after it.
    pub fence: Fence,
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
        fence: Fence,
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
            operator.clone(),
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
            fence: fence.clone(),
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
            unresolved: Mutex::new(BTreeMap::new()),
            health,
            written: Mutex::new(BTreeMap::new()),
            board,
            board_token,
            fence,
        }
    }

    /// # Errors
    /// [`Error::Moved`] when this replica may no longer write for the WasmController.
    pub(crate) fn may_write(&self) -> Result<()> {
        if self.fence.allows() {
            Ok(())
        } else {
            Err(Error::Moved)
        }
    }

    /// Whether a failure is the WasmController having moved (not a failure to report).
    pub(crate) fn moved(error: &Error) -> bool {
        matches!(
            error,
            Error::Moved | Error::Finalizer(finalizers::Error::Moved { .. })
        )
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
        if !self.fence.allows() {
            return;
        }
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

    /// Records the references of `parent` that cannot be resolved now, and returns those
    /// that are new since its last reconcile (each is reported as an Event once; one that
    /// stays is not reported again). A change refreshes the WasmController's status.
    pub(super) fn note_unresolved(&self, parent: &str, now: Vec<Unresolved>) -> Vec<Unresolved> {
        let mut unresolved = self.unresolved.lock().unwrap();
        let before = if now.is_empty() {
            unresolved.remove(parent)
        } else {
            unresolved.insert(parent.into(), now.clone())
        }
        .unwrap_or_default();
        drop(unresolved);
        if before != now {
            let _ = self.health.send(());
        }
        now.into_iter().filter(|p| !before.contains(p)).collect()
    }

    /// Forgets a parent that is gone: its failure, backoff and applied-skip entries.
    pub(super) fn forget(&self, parent: &str) {
        self.backoff.lock().unwrap().remove(parent);
        self.applied.lock().unwrap().remove(parent);
        self.buckets.lock().unwrap().remove(parent);
        self.tracker.forget(parent);
        self.board.withdraw(&self.label(), Some(parent));
        let throttled = self.throttled.lock().unwrap().remove(parent).is_some()
            | self.unresolved.lock().unwrap().remove(parent).is_some();
        if self.failures.lock().unwrap().remove(parent).is_some() || throttled {
            let _ = self.health.send(());
        }
    }

    /// Takes a token of `parent`'s bucket, or says how long until one is there.
    pub(super) fn admit(&self, parent: &str) -> Result<(), Duration> {
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
