//! The manager: watches WasmControllers and keeps one running [`Runtime`] per
//! object — started on create, replaced when the spec or the plugin bytes change (hot reload,
//! the last good plugin kept running when a new one fails to load), stopped on delete. No
//! operator restart is ever needed.
//!
//! Each WasmController gets its own task (a "slot"), so a slow plugin compile for one team
//! never delays another's. A slot reports what it sees on the WasmController's status:
//! `Ready` (plugin loaded, controller running) and `Degraded` (some parents failing).
//!
//! With `--shard`, every replica keeps a slot per WasmController, and a slot runs its
//! controller only while the WasmController is assigned to this replica (`assign.rs`); the
//! others write nothing for it.

mod assign;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wasmop_abi::{FINALIZE_EXPORT, RECONCILE_EXPORT};

use crate::cluster::access::{self, Access};
use crate::cluster::api_error::readable;
use crate::cluster::shard::{Fence, Membership};
use crate::cluster::watches::{self, Watches};
use crate::crd::{
    Dependencies, KindRef, PatchDependency, PluginSource, PluginStatus, WasmController,
    WasmControllerStatus,
};
use crate::metrics::Metrics;
use crate::plugin::source;
use crate::plugin::{self, Host};
use crate::reconcile::conflicts::Board;
use crate::reconcile::context::{self, ChildKind, Runtime};
use crate::reconcile::controller;
use crate::reconcile::finalizers::{
    self, Finalizers, WASMCONTROLLER_FINALIZER, WASMCONTROLLER_FINALIZER_MANAGER,
};
use crate::reconcile::plan::Identity;
use crate::reconcile::related;

/// The field manager of everything the operator itself writes (WasmController status).
pub const FIELD_MANAGER: &str = "wasmop";
/// Longest wait between retries of a WasmController that failed to start.
const RETRY_MAX: Duration = Duration::from_secs(60);

fn retry_delays() -> Box<dyn Iterator<Item = Duration> + Send> {
    use backon::BackoffBuilder;
    Box::new(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_factor(1.5)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times()
            .build(),
    )
}

/// Delays between writes of a refused status: 1 s doubling to 30 s.
fn status_retry_delays() -> Box<dyn Iterator<Item = Duration> + Send> {
    use backon::BackoffBuilder;
    Box::new(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(30))
            .without_max_times()
            .build(),
    )
}

/// A signal a slot sends itself again and again, each time after the next of its delays,
/// until dropped by whoever no longer needs it.
struct Retry {
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    pending: tokio::task::AbortHandle,
}

impl Retry {
    /// Schedules `signal` after the next delay of `previous` (or of `delays()` when there is
    /// none), cancelling what `previous` had pending; returns the delay.
    fn next(
        previous: Option<Retry>,
        delays: fn() -> Box<dyn Iterator<Item = Duration> + Send>,
        fallback: Duration,
        signals: &mpsc::UnboundedSender<Signal>,
        signal: Signal,
    ) -> (Retry, Duration) {
        let mut delays = match previous {
            Some(previous) => {
                previous.pending.abort();
                previous.delays
            }
            None => delays(),
        };
        let delay = delays.next().unwrap_or(fallback);
        let pending = signal_after(signals, delay, signal);
        (Retry { delays, pending }, delay)
    }

    fn cancel(self) {
        self.pending.abort();
    }
}

/// Sends `signal` to the slot after `delay`; the handle cancels it.
fn signal_after(
    signals: &mpsc::UnboundedSender<Signal>,
    delay: Duration,
    signal: Signal,
) -> tokio::task::AbortHandle {
    let again = signals.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = again.send(signal);
    })
    .abort_handle()
}

/// The shortest `spec.resyncPeriod` accepted.
pub const MIN_RESYNC: Duration = Duration::from_secs(10);

/// How long a replaced or deleted controller may take to finish in-flight reconciles.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Why a WasmController cannot run (reported on its `Ready` condition).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{field}: {kind} is not served by the API server: install its CRD or fix {field} ({})", readable(.source)
    )]
    KindNotServed {
        field: String,
        kind: KindRef,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{field}: {kind} is cluster-scoped; a WasmController reconciles namespaced kinds in its own namespace"
    )]
    ClusterScoped { field: String, kind: KindRef },
    #[error(
        "spec.resyncPeriod: {value:?} is not a duration of at least 10s like 30s, 5m or 1h (a resync reconciles every parent; faster is a hot loop)"
    )]
    BadResync { value: String },
    #[error(transparent)]
    Access(#[from] access::Error),
    #[error(transparent)]
    Source(#[from] source::Error),
    #[error(transparent)]
    Plugin(#[from] plugin::Error),
    #[error(transparent)]
    Related(#[from] related::Error),
    #[error(transparent)]
    Watch(#[from] watches::Error),
    #[error(transparent)]
    Release(#[from] finalizers::Error),
    #[error("{} the WasmController's own finalizer: {}", if *present { "adding" } else { "removing" }, readable(.source))]
    OwnFinalizer {
        present: bool,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::KindNotServed { .. } => "KindNotServed",
            Error::ClusterScoped { .. } => "ClusterScopedKind",
            Error::BadResync { .. } => "InvalidSpec",
            Error::Access(_) => "Forbidden",
            Error::Source(source::Error::JavaScript { .. } | source::Error::NotText { .. }) => {
                "PluginBuildFailed"
            }
            Error::Source(source::Error::Remote(
                crate::plugin::remote::Error::DigestMismatch { .. }
                | crate::plugin::remote::Error::Unsigned { .. }
                | crate::plugin::remote::Error::Key { .. },
            )) => "PluginNotVerified",
            Error::Source(_) => "PluginSourceUnavailable",
            Error::Plugin(e) => e.reason(),
            Error::Related(_) => "InvalidSpec",
            Error::Watch(_) => "WatchNotReady",
            Error::Release(_) | Error::OwnFinalizer { .. } => "FinalizerNotReleased",
        }
    }
}

/// Operator-wide shared state.
pub struct Context {
    /// The operator's own client (WasmControllers, access reviews, finalizer release).
    pub client: Client,
    /// The base configuration impersonated clients are derived from.
    pub config: kube::Config,
    pub watches: Arc<Watches>,
    pub host: Host,
    pub access: Arc<Access>,
    pub metrics: Metrics,
    /// Turns plugin sources into bytes (and builds JavaScript sources).
    pub loader: Arc<crate::plugin::source::Loader>,
    /// Operator-wide limits on one plugin response.
    pub response_limits: crate::reconcile::plan::ResponseLimits,
    /// Which controller contests which other's fields (reported on both).
    pub board: Arc<crate::reconcile::conflicts::Board>,
    /// `--shard`: this replica's shard Lease and its view of the others'.
    pub shard: Option<Arc<Membership>>,
}

type Key = (String, String);

enum Signal {
    /// Re-read the spec and the plugin source; restart if either changed.
    Sync,
    /// Only the set of failing parents changed: refresh conditions.
    Health,
    /// `--shard`: the shards or this replica's tenure changed: decide who runs it again.
    Assign,
    /// The operator is shutting down.
    Stop,
}

/// Runs until `shutdown` resolves, then stops every controller gracefully.
pub async fn run(ctx: Arc<Context>, ready: Arc<AtomicBool>, shutdown: impl Future<Output = ()>) {
    let api: Api<WasmController> = Api::all(ctx.client.clone());
    let (store, writer) = reflector::store();
    let mut events = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
    );
    let mut slots: HashMap<Key, (mpsc::UnboundedSender<Signal>, JoinHandle<()>)> = HashMap::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shards = ctx.shard.as_deref().map(ShardChanges::new);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = &mut shutdown => break,
            changed = next_shard_change(shards.as_mut()) => {
                if changed {
                    for (tx, _) in slots.values() {
                        let _ = tx.send(Signal::Assign);
                    }
                }
                if let (Some(changes), Some(shard)) = (shards.as_mut(), ctx.shard.as_deref()) {
                    changes.tally(&store, shard, &ctx.metrics);
                }
                continue;
            }
        };
        let keys: Vec<Key> = match event {
            Some(Ok(watcher::Event::Apply(wc) | watcher::Event::Delete(wc))) => {
                vec![(wc.namespace().unwrap_or_default(), wc.name_any())]
            }
            // A (re)list lands in the store only at InitDone: a slot woken for an InitApply
            // would not find its WasmController yet and take it for deleted. So every slot is
            // synced once the list is in: each listed object, and each one that vanished.
            Some(Ok(watcher::Event::InitDone)) => {
                ready.store(true, Ordering::Relaxed);
                let mut keys: Vec<Key> = store
                    .state()
                    .iter()
                    .map(|wc| (wc.namespace().unwrap_or_default(), wc.name_any()))
                    .collect();
                keys.extend(slots.keys().cloned());
                keys.sort();
                keys.dedup();
                keys
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
            Some(Err(error)) => {
                let error = crate::cluster::api_error::readable_watch(&error);
                tracing::warn!(%error, "WasmController watch error; retrying with backoff");
                continue;
            }
            None => break,
        };
        for key in keys {
            let alive = slots
                .get(&key)
                .is_some_and(|(tx, task)| !task.is_finished() && tx.send(Signal::Sync).is_ok());
            if !alive {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(Signal::Sync);
                let task = tokio::spawn(slot(
                    ctx.clone(),
                    key.clone(),
                    store.clone(),
                    tx.clone(),
                    rx,
                ));
                slots.insert(key, (tx, task));
            }
        }
        slots.retain(|_, (_, task)| !task.is_finished());
    }
    tracing::info!(
        controllers = slots.len(),
        "shutting down: stopping controllers"
    );
    // All at once: a graceful stop must fit the Pod's termination grace period (and the leader
    // Lease is released only after it), whatever the number of controllers.
    let stopping = slots.into_values().map(|(tx, task)| {
        let _ = tx.send(Signal::Stop);
        task
    });
    futures::future::join_all(stopping).await;
}

/// `--shard`: what makes every slot decide again (the view of the shards, this replica's
/// tenure), and the bookkeeping of assignments across all WasmControllers.
struct ShardChanges {
    view: tokio::sync::watch::Receiver<Arc<crate::cluster::shard::View>>,
    tenures: tokio::sync::watch::Receiver<u64>,
    tick: tokio::time::Interval,
    /// WasmControllers no ready shard runs, since when (by this replica's clock).
    unassigned: HashMap<Key, std::time::Instant>,
}

impl ShardChanges {
    fn new(shard: &Membership) -> Self {
        let period = shard.settings().retry_period;
        ShardChanges {
            view: shard.view(),
            tenures: shard.tenures(),
            tick: tokio::time::interval(period),
            unassigned: HashMap::new(),
        }
    }

    /// Metrics of the assignment, and the shards WasmControllers name (their Leases stay).
    fn tally(&mut self, store: &Store<WasmController>, shard: &Membership, metrics: &Metrics) {
        use crate::cluster::shard::State;
        let view = shard.view().borrow().clone();
        if !view.synced {
            return;
        }
        let (me, holding) = (shard.me(), shard.tenure().current() != 0);
        let now = std::time::Instant::now();
        let (mut named, mut mine) = (std::collections::BTreeSet::new(), 0);
        let mut listed = std::collections::HashSet::new();
        for wc in store.state() {
            let key = (wc.namespace().unwrap_or_default(), wc.name_any());
            let assigned = wc.status.as_ref().and_then(|s| s.shard.as_ref());
            let running = assigned.is_some_and(|a| {
                a.since.is_some()
                    && if a.name == me {
                        holding
                    } else {
                        matches!(view.state(&a.name), Some(State::Ready | State::Expired))
                    }
            });
            if let Some(a) = assigned {
                mine += usize::from(a.name == me);
                named.insert(a.name.clone());
            }
            if running {
                self.unassigned.remove(&key);
            } else {
                self.unassigned.entry(key.clone()).or_insert(now);
            }
            listed.insert(key);
        }
        self.unassigned.retain(|k, _| listed.contains(k));
        let longest = self.unassigned.values().map(|t| now - *t).max();
        metrics
            .shard
            .unassigned_seconds
            .set(longest.unwrap_or_default().as_secs_f64());
        metrics
            .shard
            .controllers
            .with_label_values(&[me])
            .set(i64::try_from(mine).unwrap_or(i64::MAX));
        shard.note_named(named);
    }
}

/// Waits for the next change of the shards or tenure (true), or the next tally (false);
/// forever without `--shard`.
async fn next_shard_change(changes: Option<&mut ShardChanges>) -> bool {
    let Some(c) = changes else {
        return std::future::pending().await;
    };
    tokio::select! {
        Ok(()) = c.view.changed() => true,
        Ok(()) = c.tenures.changed() => true,
        _ = c.tick.tick() => false,
    }
}

/// A running controller and what it was started from.
struct Running {
    fingerprint: u64,
    /// How the plugin source was compressed (`none`, `gzip`, `zstd`).
    encoding: &'static str,
    runtime: Arc<Runtime>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The life of one WasmController: what runs for it, and what it is waiting for.
struct Slot {
    ctx: Arc<Context>,
    ns: String,
    name: String,
    span: tracing::Span,
    signals: mpsc::UnboundedSender<Signal>,
    health: mpsc::UnboundedSender<()>,
    running: Option<Running>,
    source_watch: Option<(PluginSource, tokio::task::AbortHandle)>,
    load_error: Option<Error>,
    /// A start that failed (RBAC not granted yet, CRD not installed yet, ConfigMap missing,
    /// ...) is retried with backoff, so fixing the cause is enough: no edit of the
    /// WasmController.
    retry: Option<Retry>,
    /// A pending re-check of the `Throttled` condition.
    recheck: Option<tokio::task::AbortHandle>,
    /// A status write that failed is written again after this backoff (1 s doubling to 30 s),
    /// since nothing else may come along to write it: the last change of a condition (a
    /// parent recovering) would otherwise stay unwritten for good.
    status_retry: Option<Retry>,
    /// Whether this replica may write for the WasmController (`--shard`; always, without).
    fence: Fence,
}

/// Runs one WasmController's slot until it is deleted (and has released its parents) or the
/// operator stops.
async fn slot(
    ctx: Arc<Context>,
    key: Key,
    store: Store<WasmController>,
    signals: mpsc::UnboundedSender<Signal>,
    mut rx: mpsc::UnboundedReceiver<Signal>,
) {
    let (ns, name) = key;
    let span = tracing::info_span!("wasmcontroller", controller = %format!("{ns}/{name}"));
    let (health_tx, mut health_rx) = mpsc::unbounded_channel::<()>();
    let health_forward = {
        let signals = signals.clone();
        tokio::spawn(async move {
            while health_rx.recv().await.is_some() {
                if signals.send(Signal::Health).is_err() {
                    break;
                }
            }
        })
    };
    let fence = ctx
        .shard
        .as_ref()
        .map_or_else(Fence::open, |shard| Fence::new(shard.tenure()));
    let mut slot = Slot {
        ctx,
        ns,
        name,
        span,
        signals,
        health: health_tx,
        running: None,
        source_watch: None,
        load_error: None,
        retry: None,
        recheck: None,
        status_retry: None,
        fence,
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if batch.iter().any(|s| matches!(s, Signal::Stop)) {
            break;
        }
        let mut sync = batch.iter().any(|s| matches!(s, Signal::Sync));
        let Some(mut wc) = store.get(&ObjectRef::new(&slot.name).within(&slot.ns)) else {
            tracing::info!(parent: &slot.span, "WasmController deleted: stopping its controller");
            break;
        };
        if let Some(shard) = slot.ctx.shard.clone() {
            let Some((assigned, taken)) = slot.assign(&shard, wc).await else {
                continue; // not this replica's to run
            };
            (wc, sync) = (assigned, sync || taken);
        }
        if wc.metadata.deletion_timestamp.is_some() {
            if slot.deleting(&wc).await {
                break;
            }
            continue;
        }
        slot.handle(&wc, sync).await;
    }
    health_forward.abort();
    slot.shutdown().await;
}

impl Slot {
    /// One round of a WasmController this replica runs: sync what runs with it when asked,
    /// then report on its status.
    async fn handle(&mut self, wc: &WasmController, sync: bool) {
        if sync {
            self.sync(wc).await;
        }
        let status = write_status(
            &self.ctx,
            wc,
            self.running.as_ref(),
            self.load_error.as_ref(),
            &self.fence,
        )
        .await;
        self.after_status_write(status);
        self.record_health();
        if let Some(after) = throttle_recheck(self.running.as_ref()) {
            let timer = signal_after(&self.signals, after, Signal::Health);
            if let Some(old) = self.recheck.replace(timer) {
                old.abort();
            }
        }
    }

    /// Stops everything that runs for the WasmController and closes its fence, writing
    /// nothing (`--shard`: it is not, or no longer, this replica's).
    async fn park(&mut self) {
        self.fence.close();
        self.stop_all().await;
        self.load_error = None;
        self.forget_health();
    }

    /// Drops this WasmController's health gauges (another replica reports them now).
    fn forget_health(&self) {
        let label = format!("{}/{}", self.ns, self.name);
        let metrics = &self.ctx.metrics;
        let _ = metrics.controller_ready.remove_label_values(&[&label]);
        let _ = metrics.parents_failing.remove_label_values(&[&label]);
    }

    /// `wasmop_controller_ready` and `wasmop_parents_failing`: what the `Ready` and `Degraded`
    /// conditions say, for alerts.
    fn record_health(&self) {
        let label = format!("{}/{}", self.ns, self.name);
        let failing = self
            .running
            .as_ref()
            .map_or(0, |r| r.runtime.failures.lock().unwrap().len());
        let metrics = &self.ctx.metrics;
        metrics
            .controller_ready
            .with_label_values(&[&label])
            .set(i64::from(self.running.is_some()));
        metrics
            .parents_failing
            .with_label_values(&[&label])
            .set(i64::try_from(failing).unwrap_or(i64::MAX));
    }

    /// Brings what runs in line with `wc`: its finalizer, the controller, the source watch.
    async fn sync(&mut self, wc: &WasmController) {
        let holds = wc
            .finalizers()
            .iter()
            .any(|f| f == WASMCONTROLLER_FINALIZER);
        if wc.spec.plugin.finalize
            && !holds
            && let Err(error) = set_wc_finalizer(&self.ctx, wc, true, &self.fence).await
        {
            // Before any parent gets a finalizer, so deleting the WasmController releases them.
            self.retry_later(error);
            return;
        }
        match prepare(
            &self.ctx,
            wc,
            self.running.as_ref(),
            &self.health,
            &self.fence,
        )
        .await
        {
            Ok(new) => {
                self.load_error = None;
                if let Some(retry) = self.retry.take() {
                    retry.cancel();
                }
                if let Some(new) = new {
                    if let Some(old) = self.running.take() {
                        stop(&self.ctx, old).await;
                    }
                    tracing::info!(parent: &self.span, sha256 = %new.runtime.plugin.sha256, "controller started");
                    self.running = Some(new);
                }
            }
            Err(error) => self.retry_later(error),
        }
        self.watch_source(wc);
        let finalizing_off = !wc.spec.plugin.finalize
            && holds
            && self
                .running
                .as_ref()
                .is_none_or(|r| !r.runtime.spec.plugin.finalize);
        if finalizing_off {
            // `finalize` was turned off: release every parent, then the WasmController.
            let released = async {
                release(&self.ctx, wc, None, &self.fence).await?;
                set_wc_finalizer(&self.ctx, wc, false, &self.fence).await
            }
            .await;
            if let Err(error) = released {
                self.retry_later(error);
            }
        }
    }

    /// Hot reload: watch the plugin's ConfigMap for as long as the source is the same, unless
    /// the account cannot read it (the retry notices when it can).
    fn watch_source(&mut self, wc: &WasmController) {
        let source = &wc.spec.plugin.source;
        let readable = !matches!(
            self.load_error,
            Some(Error::Access(_) | Error::Source(source::Error::ConfigMapRead { .. }))
        );
        if (!readable || self.source_watch.as_ref().map(|(s, _)| s) != Some(source))
            && let Some((_, old)) = self.source_watch.take()
        {
            old.abort();
        }
        if readable
            && self.source_watch.is_none()
            && let Some(task) = watch_source(&self.ctx, wc, self.signals.clone())
        {
            self.source_watch = Some((source.clone(), task));
        }
    }

    /// Records `error` and asks for another sync after a backoff delay.
    fn retry_later(&mut self, error: Error) {
        let previous = self.retry.take();
        let (retry, delay) = Retry::next(
            previous,
            retry_delays,
            RETRY_MAX,
            &self.signals,
            Signal::Sync,
        );
        tracing::warn!(parent: &self.span, reason = error.reason(), retry_in = ?delay, "{error}");
        self.retry = Some(retry);
        self.load_error = Some(error);
    }

    /// The WasmController is being deleted: stop its controller (so it adds no finalizer),
    /// release every parent it holds, then let it go. True when done.
    async fn deleting(&mut self, wc: &WasmController) -> bool {
        let stopped = match self.running.take() {
            Some(old) => {
                let runtime = old.runtime.clone();
                stop(&self.ctx, old).await;
                Some(runtime)
            }
            None => None,
        };
        if !wc
            .finalizers()
            .iter()
            .any(|f| f == WASMCONTROLLER_FINALIZER)
        {
            return true;
        }
        let released = async {
            release(&self.ctx, wc, stopped.as_deref(), &self.fence).await?;
            set_wc_finalizer(&self.ctx, wc, false, &self.fence).await?;
            Ok::<_, Error>(())
        }
        .await;
        match released {
            Ok(()) => {
                tracing::info!(parent: &self.span, "every parent released: the WasmController can go");
                true
            }
            Err(error) => {
                let status = write_ready(
                    &self.ctx,
                    wc,
                    error.reason(),
                    &error.to_string(),
                    &self.fence,
                )
                .await;
                if let Err(e) = status {
                    tracing::warn!(parent: &self.span, error = %readable(&e), "could not update WasmController status");
                }
                self.retry_later(error);
                false
            }
        }
    }

    async fn shutdown(mut self) {
        self.stop_all().await;
        self.forget_health();
    }

    /// A failed status write is tried again after a backoff (a `Health` signal); a write that
    /// went through ends the retries.
    fn after_status_write(&mut self, status: Result<(), kube::Error>) {
        let previous = self.status_retry.take();
        let Err(error) = status else {
            if let Some(retry) = previous {
                retry.cancel();
            }
            return;
        };
        let (retry, after) = Retry::next(
            previous,
            status_retry_delays,
            Duration::from_secs(30),
            &self.signals,
            Signal::Health,
        );
        tracing::warn!(parent: &self.span, error = %readable(&error), retry_in_s = after.as_secs(), "could not update WasmController status");
        self.status_retry = Some(retry);
    }

    /// Stops the controller, the source watch and every pending timer.
    async fn stop_all(&mut self) {
        if let Some(recheck) = self.recheck.take() {
            recheck.abort();
        }
        if let Some(retry) = self.status_retry.take() {
            retry.cancel();
        }
        if let Some((_, task)) = self.source_watch.take() {
            task.abort();
        }
        if let Some(retry) = self.retry.take() {
            retry.cancel();
        }
        if let Some(old) = self.running.take() {
            stop(&self.ctx, old).await;
        }
    }
}

/// Removes this WasmController's finalizer from every parent in its namespace, showing
/// progress on its `Ready` condition. With `finalize` (the stopped controller), parents
/// already being deleted get `finalize` first (bounded by `FINALIZE_GRACE`).
async fn release(
    ctx: &Context,
    wc: &WasmController,
    finalize: Option<&Runtime>,
    fence: &Fence,
) -> Result<(), Error> {
    let ns = wc.namespace().unwrap_or_default();
    let parent_ar = match resolve(&ctx.client, "spec.parent", &wc.spec.parent).await {
        Ok(ar) => ar,
        Err(Error::KindNotServed { .. } | Error::ClusterScoped { .. }) => return Ok(()), // no parents
        Err(error) => return Err(error),
    };
    let releaser = Finalizers {
        resource: parent_ar,
        namespace: ns.clone(),
        identity: Identity::new(&ns, &wc.name_any()),
        team: access::impersonated(&ctx.config, &ns, &wc.spec.service_account_name)?,
        operator: ctx.client.clone(),
        fence: fence.clone(),
    };
    let mut release = finalizers::Release::new(&releaser).await?;
    let mut shown = None;
    loop {
        let left = release.round(finalize).await?;
        if shown != Some(left) {
            shown = Some(left);
            let message = format!(
                "releasing finalizers: {left} of {} {} left",
                release.total, wc.spec.parent.kind
            );
            if let Err(error) = write_ready(ctx, wc, "Releasing", &message, fence).await {
                tracing::warn!(error = %readable(&error), "could not update WasmController status");
            }
        }
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Adds or removes the WasmController's own finalizer (uid precondition: never recreates it).
async fn set_wc_finalizer(
    ctx: &Context,
    wc: &WasmController,
    present: bool,
    fence: &Fence,
) -> Result<(), Error> {
    if !fence.allows() {
        return Ok(()); // `--shard`: another replica runs it now
    }
    let mut body = json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController",
        "metadata": {"name": wc.name_any(), "namespace": wc.namespace(), "uid": wc.uid()},
    });
    if present {
        body["metadata"]["finalizers"] = json!([WASMCONTROLLER_FINALIZER]);
    }
    let api: Api<WasmController> =
        Api::namespaced(ctx.client.clone(), &wc.namespace().unwrap_or_default());
    let params = PatchParams::apply(WASMCONTROLLER_FINALIZER_MANAGER).force();
    match api
        .patch(&wc.name_any(), &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()), // gone
        Err(source) => Err(Error::OwnFinalizer { present, source }),
    }
}

/// Writes only the `Ready` condition (while the WasmController is being deleted).
async fn write_ready(
    ctx: &Context,
    wc: &WasmController,
    reason: &str,
    message: &str,
    fence: &Fence,
) -> Result<(), kube::Error> {
    let ready = condition("Ready", "False", reason, message, wc.metadata.generation);
    apply_status(ctx, wc, json!({"conditions": [ready]}), fence).await
}

/// Server-side applies `status` to the WasmController's status as the operator.
async fn apply_status(
    ctx: &Context,
    wc: &WasmController,
    status: serde_json::Value,
    fence: &Fence,
) -> Result<(), kube::Error> {
    if !fence.allows() {
        return Ok(()); // `--shard`: another replica runs it now
    }
    let api: Api<WasmController> =
        Api::namespaced(ctx.client.clone(), &wc.namespace().unwrap_or_default());
    let body =
        json!({"apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController", "status": status});
    api.patch_status(
        &wc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Works out what should run for `wc`. `Ok(None)`: what runs is already right.
async fn prepare(
    ctx: &Context,
    wc: &WasmController,
    running: Option<&Running>,
    health: &mpsc::UnboundedSender<()>,
    fence: &Fence,
) -> Result<Option<Running>, Error> {
    let ns = wc.namespace().unwrap_or_default();
    let spec = &wc.spec;
    let client = access::impersonated(&ctx.config, &ns, &spec.service_account_name)?;
    let resync = parse_duration(
        spec.resync_period
            .as_deref()
            .unwrap_or(crate::crd::DEFAULT_RESYNC),
    )
    .filter(|d| *d >= MIN_RESYNC)
    .ok_or_else(|| Error::BadResync {
        value: spec.resync_period.clone().unwrap_or_default(),
    })?;
    for related in &spec.related {
        related::validate(related)?;
    }
    let parent_ar = resolve(&ctx.client, "spec.parent", &spec.parent).await?;
    let mut child_ars = Vec::new();
    for (i, kind) in spec.children.iter().enumerate() {
        child_ars.push((
            kind.clone(),
            resolve(&ctx.client, &format!("spec.children[{i}]"), kind).await?,
        ));
    }
    let mut readable = vec![(parent_ar.group.clone(), parent_ar.plural.clone())];
    readable.extend(
        child_ars
            .iter()
            .map(|(_, ar)| (ar.group.clone(), ar.plural.clone())),
    );
    ctx.access
        .require(
            &ns,
            &spec.service_account_name,
            crate::cluster::rbac::PARENT, // what the watches of the parent and child kinds need
            &readable,
        )
        .await?;

    let bytes = source::load(&client, &ns, &spec.plugin.source, &ctx.loader).await?;
    let fingerprint = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(spec)
            .expect("specs serialise")
            .hash(&mut h);
        bytes.sha256.hash(&mut h);
        h.finish()
    };
    if running.is_some_and(|r| r.fingerprint == fingerprint && !r.task.is_finished()) {
        return Ok(None);
    }
    let concurrency = usize::from(
        spec.max_concurrent_reconciles
            .unwrap_or(crate::crd::DEFAULT_CONCURRENCY),
    );
    let plugin = ctx
        .host
        .load_replacing(
            &bytes,
            &spec.plugin.limits,
            concurrency,
            running.map(|r| r.runtime.plugin.as_ref()), // a reload needs no room for both
        )
        .await?;
    for (export, needed) in [
        (RECONCILE_EXPORT, true),
        (FINALIZE_EXPORT, spec.plugin.finalize),
    ] {
        if needed && !plugin.has_export(export)? {
            return Err(plugin::Error::MissingExport {
                export: export.into(),
            }
            .into());
        }
    }
    let (parent, children) = open_watches(ctx, &client, wc, parent_ar, child_ars).await?;
    let runtime = Arc::new(Runtime::new(
        ns.clone(),
        wc.name_any(),
        spec.clone(),
        client,
        ctx.client.clone(),
        parent,
        children,
        plugin.clone(),
        ctx.access.clone(),
        ctx.metrics.clone(),
        resync,
        ctx.response_limits,
        ctx.watches.clone(),
        health.clone(),
        ctx.board.clone(),
        fence.clone(),
    ));
    let label = format!("{ns}/{}", wc.name_any());
    ctx.metrics
        .plugin_info
        .with_label_values(&[&label, &plugin.sha256])
        .set(1);
    ctx.metrics.controllers.inc();
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(controller::run(runtime.clone(), stop_rx));
    Ok(Some(Running {
        fingerprint,
        encoding: bytes.encoding,
        runtime,
        stop: stop_tx,
        task,
    }))
}

/// The watches of the parent and child kinds, as the team's account in its namespace;
/// children only through wasmop's label (any controller's: one watch per kind serves every
/// controller of this account and namespace).
async fn open_watches(
    ctx: &Context,
    client: &Client,
    wc: &WasmController,
    parent: kube::api::ApiResource,
    children: Vec<(KindRef, kube::api::ApiResource)>,
) -> Result<(Arc<watches::SharedKind>, Vec<ChildKind>), Error> {
    let scope = |labels| watches::Scope {
        namespace: wc.namespace().unwrap_or_default(),
        service_account: wc.spec.service_account_name.clone(),
        labels,
    };
    let parent = ctx.watches.get(client, &scope(None), &parent).await?;
    let selector = Some(crate::reconcile::plan::CONTROLLER_LABEL.to_string());
    let mut kinds = Vec::new();
    for (kind, ar) in children {
        kinds.push(ChildKind {
            kind,
            watch: ctx
                .watches
                .get(client, &scope(selector.clone()), &ar)
                .await?,
        });
    }
    Ok((parent, kinds))
}

/// Stops a controller: in-flight reconciles finish (up to [`STOP_GRACE`]), then it is gone.
async fn stop(ctx: &Context, old: Running) {
    let _ = old.stop.send(());
    let abort = old.task.abort_handle();
    if tokio::time::timeout(STOP_GRACE, old.task).await.is_err() {
        abort.abort();
    }
    let label = format!("{}/{}", old.runtime.namespace, old.runtime.name);
    ctx.board
        .unregister(&old.runtime.identity, &label, old.runtime.board_token);
    let _ = ctx
        .metrics
        .plugin_info
        .remove_label_values(&[&label, &old.runtime.plugin.sha256]);
    ctx.metrics.controllers.dec();
}

/// Resolves a kind by discovery (as the operator) and checks that it is namespaced.
async fn resolve(
    client: &Client,
    field: &str,
    kind: &KindRef,
) -> Result<kube::api::ApiResource, Error> {
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk(kind))
        .await
        .map_err(|source| Error::KindNotServed {
            field: field.into(),
            kind: kind.clone(),
            source,
        })?;
    if caps.scope != Scope::Namespaced {
        return Err(Error::ClusterScoped {
            field: field.into(),
            kind: kind.clone(),
        });
    }
    Ok(ar)
}

fn gvk(kind: &KindRef) -> GroupVersionKind {
    GroupVersionKind::gvk(kind.group(), kind.version(), &kind.kind)
}

/// Watches the plugin's ConfigMap (as the team's account) and asks for a sync on any change.
fn watch_source(
    ctx: &Context,
    wc: &WasmController,
    signals: mpsc::UnboundedSender<Signal>,
) -> Option<tokio::task::AbortHandle> {
    let cm = wc.spec.plugin.source.config_map_key()?;
    let ns = wc.namespace().unwrap_or_default();
    let client = access::impersonated(&ctx.config, &ns, &wc.spec.service_account_name).ok()?;
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", cm.name));
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut listed = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => listed = true,
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) if listed => {
                    if signals.send(Signal::Sync).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(error = %crate::cluster::api_error::readable_watch(&error), "plugin ConfigMap watch error; retrying")
                }
            }
        }
    });
    Some(task.abort_handle())
}

/// Writes `Ready`/`Degraded` conditions and the plugin identity, only when they changed.
async fn write_status(
    ctx: &Context,
    wc: &WasmController,
    running: Option<&Running>,
    load_error: Option<&Error>,
    fence: &Fence,
) -> Result<(), kube::Error> {
    let generation = wc.metadata.generation;
    let (ready, reason, message) = match (running, load_error) {
        (Some(r), None) => (
            "True",
            "Running".to_string(),
            format!(
                "plugin {:.12} loaded; reconciling {} objects",
                r.runtime.plugin.sha256, wc.spec.parent.kind
            ),
        ),
        (Some(r), Some(e)) => (
            "True",
            "RunningPreviousPlugin".to_string(),
            format!(
                "the updated spec or plugin cannot be used, still running plugin {:.12}: {e}",
                r.runtime.plugin.sha256
            ),
        ),
        (None, Some(e)) => ("False", e.reason().to_string(), e.to_string()),
        (None, None) => ("False", "Starting".to_string(), "starting".to_string()),
    };
    let mut conditions = vec![condition("Ready", ready, &reason, &message, generation)];
    if let Some(r) = running {
        let failures = r.runtime.failures.lock().unwrap().clone();
        conditions.push(match failures.iter().next() {
            None => condition(
                "Degraded",
                "False",
                "AllReconciled",
                "every parent reconciled successfully",
                generation,
            ),
            Some((parent, f)) => {
                let more = if failures.len() > 1 {
                    format!(" (and {} more failing)", failures.len() - 1)
                } else {
                    String::new()
                };
                condition(
                    "Degraded",
                    "True",
                    &f.reason,
                    &format!("{} {parent}: {}{more}", wc.spec.parent.kind, f.message),
                    generation,
                )
            }
        });
        conditions.push(throttled_condition(
            &r.runtime,
            &wc.spec.parent.kind,
            generation,
        ));
        conditions.push(contested_condition(&ctx.board, &r.runtime, generation));
        conditions.push(references_condition(
            &r.runtime,
            &wc.spec.parent.kind,
            generation,
        ));
    }
    let current = wc.status.clone().unwrap_or_default();
    for c in &mut conditions {
        if let Some(old) = current
            .conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    let status = WasmControllerStatus {
        conditions,
        plugin: running
            .map(|r| PluginStatus {
                sha256: r.runtime.plugin.sha256.clone(),
                size_bytes: r.runtime.plugin.size_bytes,
                encoding: r.encoding.into(),
            })
            .or(current.plugin.clone()),
        observed_generation: generation,
        dependencies: Some(dependencies(wc, running)),
        shard: current.shard.clone(),
    };
    if status == current {
        return Ok(());
    }
    let mut status = json!(status);
    if let Some(fields) = status.as_object_mut() {
        fields.remove("shard"); // written by the assignment alone (`assign.rs`)
    }
    apply_status(ctx, wc, status, fence).await
}

/// What the spec declares, and the fields the running controller has been seen writing.
fn dependencies(wc: &WasmController, running: Option<&Running>) -> Dependencies {
    let mut deps = wc.spec.dependencies();
    if let Some(r) = running {
        deps.patches = r
            .runtime
            .written
            .lock()
            .unwrap()
            .iter()
            .map(|(kind, fields)| PatchDependency {
                kind: kind.clone(),
                fields: fields.iter().cloned().collect(),
            })
            .collect();
    } else if let Some(old) = wc.status.as_ref().and_then(|s| s.dependencies.as_ref()) {
        deps.patches = old.patches.clone(); // not running now: what it wrote when it last was
    }
    deps
}

/// How long a parent the rate limit held back is reported after the last time it was.
pub const THROTTLE_SHOWN: Duration = Duration::from_secs(60);

/// `Throttled`: whether the per-parent rate limit held any parent back in the last
/// [`THROTTLE_SHOWN`]. Older entries are dropped here.
fn throttled_condition(rt: &Runtime, kind: &str, generation: Option<i64>) -> Condition {
    let mut throttled = rt.throttled.lock().unwrap();
    throttled.retain(|_, at| at.elapsed() < THROTTLE_SHOWN);
    match throttled.keys().next() {
        None => condition(
            "Throttled",
            "False",
            "WithinRate",
            "no parent is reconciled faster than the rate limit",
            generation,
        ),
        Some(parent) => {
            let more = match throttled.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            condition(
                "Throttled",
                "True",
                "RateLimited",
                &format!(
                    "{kind} {parent}{more}: reconciled more often than {} in a burst and {}/s; held to that rate. Is requeueAfterSeconds too small, or does the plugin write a status that changes on every reconcile?",
                    context::RATE_BURST,
                    context::RATE_PER_SECOND
                ),
                generation,
            )
        }
    }
}

/// `ReferencesResolved`: whether every parent's `spec.related` references resolve (a kind
/// outside `allowedKinds`, one not served, an object that does not exist, a reference of an
/// unknown shape are not fatal to a reconcile, so without this only the plugin would know).
fn references_condition(rt: &Runtime, kind: &str, generation: Option<i64>) -> Condition {
    let unresolved = rt.unresolved.lock().unwrap();
    let Some((parent, problems)) = unresolved.iter().next() else {
        return condition(
            "ReferencesResolved",
            "True",
            "AllResolved",
            "every reference of every parent resolves",
            generation,
        );
    };
    let first = &problems[0];
    let mut more = Vec::new();
    if problems.len() > 1 {
        more.push(format!("{} more of this parent", problems.len() - 1));
    }
    if unresolved.len() > 1 {
        more.push(format!("{} more parents", unresolved.len() - 1));
    }
    let more = if more.is_empty() {
        String::new()
    } else {
        format!(" (and {})", more.join(", "))
    };
    condition(
        "ReferencesResolved",
        "False",
        "UnresolvedReference",
        &format!("{kind} {parent}: {first}{more}"),
        generation,
    )
}

/// `Contested`: whether another controller's writes are refused because they contest fields
/// this one owns (that controller is `Degraded` with `FieldConflict`; this one would otherwise
/// never know, as its own writes succeed).
fn contested_condition(board: &Board, rt: &Runtime, generation: Option<i64>) -> Condition {
    let contests = board.against(&rt.identity);
    match contests.first() {
        None => condition(
            "Contested",
            "False",
            "NoConflicts",
            "no other controller writes fields this one owns",
            generation,
        ),
        Some(first) => {
            let more = match contests.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            condition(
                "Contested",
                "True",
                "FieldConflict",
                &format!("{first}{more}"),
                generation,
            )
        }
    }
}

/// When the `Throttled` condition may change by time alone (an entry ages out).
fn throttle_recheck(running: Option<&Running>) -> Option<Duration> {
    let throttled = running?.runtime.throttled.lock().unwrap();
    let oldest = throttled.values().min()?;
    Some(THROTTLE_SHOWN.saturating_sub(oldest.elapsed()) + Duration::from_secs(1))
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: crate::cluster::api_error::truncate(message, 4096),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total_ms: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next()? {
                's' => (1_000, 1),
                'm' => (60_000, 1),
                'h' => (3_600_000, 1),
                _ => return None,
            }
        };
        total_ms = total_ms.checked_add(n.checked_mul(unit_ms)?)?;
        rest = &rest[len..];
    }
    (total_ms > 0).then(|| Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_kubernetes_ones() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration(""), None);
    }
}
