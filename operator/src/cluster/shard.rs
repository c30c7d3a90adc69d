//! Shards (`wasmop run --shard`): every replica holds a Lease of its own, and every replica
//! watches all of them to know which shards are alive; the manager spreads the WasmControllers
//! over the ready ones with a consistent-hash ring (`ring.rs`) and moves them with a drain
//! handshake (`manager/assign.rs`).
//!
//! The protocol is timebertt/kubernetes-controller-sharding's (docs/design.md), computed by the
//! replicas themselves instead of a sharder Deployment:
//! - A shard Lease is named after its replica, `holderIdentity` is that same name, and it is
//!   labelled [`RING_LABEL`]`=<ring>`. The replica renews it like a leader Lease
//!   (`leader.rs`: client-go's algorithm), and runs WasmControllers only while it holds it.
//! - Each replica sees every shard in one of four [`State`]s, by its own clock (so clock skew
//!   cannot make a live shard look dead): `ready`, `expired` (its own timestamps say it is
//!   overdue, but this replica has not yet seen it stay unchanged for a lease duration),
//!   `uncertain` (unchanged for a lease duration: some replica takes the Lease over now) and
//!   `dead` (released, or taken over: `holderIdentity` is not its name).
//! - Only a dead shard's WasmControllers are claimed by others. A Lease is taken over with a
//!   write conditional on the `resourceVersion` this replica saw, so it succeeds only if the
//!   holder really stopped renewing; the holder gave up all its controllers at its renew
//!   deadline, which is shorter than the lease duration ([`Fence`]).
//! - A dead Lease that no WasmController names any more is deleted after [`ORPHAN_AFTER`].
//!
//! # Guarantees
//! - [`Fence::allows`] is false from the moment this replica's renew deadline passed without a
//!   renewal (or it released its Lease), before any other replica may take the Lease over.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{oneshot, watch};

use crate::cluster::leader::{self, Elector};
use crate::cluster::ring::Ring;
use crate::metrics::Metrics;

/// The label naming a shard Lease's ring (one ring per wasmop installation).
pub const RING_LABEL: &str = "wasmop.dev/ring";
/// How long a dead shard's Lease stays after no WasmController names it any more.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(60);

/// How a replica takes part in sharding.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This replica's shard: its Lease's name and `holderIdentity` (the Pod's name).
    pub name: String,
    /// The ring's name ([`RING_LABEL`]).
    pub ring: String,
    /// Where the shard Leases live (the operator's namespace).
    pub namespace: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Settings {
    fn elector(&self) -> leader::Settings {
        leader::Settings {
            lease_name: self.name.clone(),
            namespace: self.namespace.clone(),
            identity: self.name.clone(),
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            labels: BTreeMap::from([(RING_LABEL.to_string(), self.ring.clone())]),
            process: Some(leader::default_identity()),
        }
    }

    /// Checks the durations (as leader election does) and that the name can be a Lease's.
    ///
    /// # Errors
    /// Durations out of order; a name that is not a DNS subdomain of at most 253 characters.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.elector().validate()?;
        let ok = !self.name.is_empty()
            && self.name.len() <= 253
            && self.name.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(SettingsError::Name {
                name: self.name.clone(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Durations(#[from] leader::SettingsError),
    #[error(
        "--shard-name {name:?}: a shard is named by its Lease, so this must be a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253 characters), like the Pod's name the chart passes"
    )]
    Name { name: String },
}

/// A shard as one replica sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Held by its replica and renewed: WasmControllers are assigned to it.
    Ready,
    /// Its own timestamps say it missed its renewal, but this replica has not seen it stay
    /// unchanged for a lease duration yet (it may only be this replica's clock): it keeps its
    /// WasmControllers and gets no new ones.
    Expired,
    /// Unchanged for a lease duration by this replica's clock: its replica has given up its
    /// controllers; replicas take the Lease over (which makes it dead).
    Uncertain,
    /// Released, or taken over: its WasmControllers move.
    Dead,
}

impl State {
    pub const ALL: [State; 4] = [State::Ready, State::Expired, State::Uncertain, State::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Expired => "expired",
            State::Uncertain => "uncertain",
            State::Dead => "dead",
        }
    }
}

/// The state of shard Lease `lease`, whose record this replica has seen unchanged for
/// `unchanged_for`, at wall-clock time `now`.
pub fn state(lease: &Lease, unchanged_for: Duration, now: k8s_openapi::jiff::Timestamp) -> State {
    let spec = lease.spec.clone().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(lease.name_any().as_str()) {
        return State::Dead;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    if unchanged_for >= duration {
        return State::Uncertain;
    }
    let overdue = spec.renew_time.is_none_or(|MicroTime(renewed)| {
        let expires = renewed.checked_add(duration).unwrap_or(renewed);
        expires < now
    });
    if overdue {
        State::Expired
    } else {
        State::Ready
    }
}

/// What this replica sees of the ring at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// This replica's shard name.
    pub me: String,
    /// The shard Leases have been listed at least once (before that nothing is decided).
    pub synced: bool,
    /// Every shard Lease of the ring, by name.
    pub states: BTreeMap<String, State>,
    /// The ready shards and this replica (decisions are only made while it holds its Lease,
    /// so it is on its own ring whatever the Lease watch has shown so far).
    pub ring: Ring,
}

impl View {
    pub fn state(&self, shard: &str) -> Option<State> {
        self.states.get(shard).copied()
    }

    /// The shard the WasmController with ring key `key` belongs on.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.owner(key)
    }
}

/// This replica's hold on its Lease: 0 while it does not hold it, else the number of the
/// tenure (each acquisition starts a new one).
#[derive(Clone, Debug, Default)]
pub struct Tenure(Arc<AtomicU64>);

impl Tenure {
    /// The current tenure, 0 when the Lease is not held.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, epoch: u64) {
        self.0.store(epoch, Ordering::SeqCst);
    }
}

/// Whether one running WasmController may still write: it was confirmed as this replica's in
/// the current tenure. Checked right before every write of a reconcile, so a plugin result
/// computed before a move or before the Lease was lost is never written after it.
#[derive(Clone, Debug)]
pub struct Fence {
    tenure: Tenure,
    owned: Arc<AtomicU64>,
}

impl Fence {
    /// A fence that always allows (no sharding: this process owns everything).
    pub fn open() -> Fence {
        let fence = Fence {
            tenure: Tenure::default(),
            owned: Arc::new(AtomicU64::new(1)),
        };
        fence.tenure.set(1);
        fence
    }

    /// A closed fence that follows `tenure`.
    pub fn new(tenure: &Tenure) -> Fence {
        Fence {
            tenure: tenure.clone(),
            owned: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn allows(&self) -> bool {
        let tenure = self.tenure.current();
        tenure != 0 && self.owned.load(Ordering::SeqCst) == tenure
    }

    /// The WasmController is this replica's for tenure `epoch`.
    pub fn own(&self, epoch: u64) {
        self.owned.store(epoch, Ordering::SeqCst);
    }

    /// It is not (any more).
    pub fn close(&self) {
        self.owned.store(0, Ordering::SeqCst);
    }

    /// The tenure it was confirmed in, if it is still this replica's.
    pub fn epoch(&self) -> Option<u64> {
        Some(self.owned.load(Ordering::SeqCst)).filter(|e| *e != 0)
    }
}

/// This replica's membership of the ring: its own Lease and its view of the others'.
pub struct Membership {
    settings: Settings,
    tenure: Tenure,
    tenures: watch::Receiver<u64>,
    view: watch::Receiver<Arc<View>>,
    /// Shards some WasmController names (kept by the manager): their Leases are not deleted.
    named: Arc<Mutex<BTreeSet<String>>>,
    stop: Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>,
}

impl Membership {
    /// Starts holding this replica's Lease and watching the ring's.
    pub fn start(client: Client, settings: Settings, metrics: Metrics) -> Arc<Membership> {
        let tenure = Tenure::default();
        let (tenure_tx, tenures) = watch::channel(0);
        let (view_tx, view) = watch::channel(Arc::new(View {
            me: settings.name.clone(),
            ..View::default()
        }));
        let (stop, stop_rx) = oneshot::channel();
        let named = Arc::new(Mutex::new(BTreeSet::new()));
        let elector = Elector::new(client.clone(), settings.elector());
        tokio::spawn(hold_own(
            elector,
            tenure.clone(),
            tenure_tx,
            metrics.clone(),
            stop_rx,
        ));
        let watcher = Watcher {
            api: Api::namespaced(client, &settings.namespace),
            settings: settings.clone(),
            tenure: tenure.clone(),
            named: named.clone(),
            seen: BTreeMap::new(),
            absent: BTreeMap::new(),
            metrics,
        };
        tokio::spawn(watcher.run(view_tx));
        Arc::new(Membership {
            settings,
            tenure,
            tenures,
            view,
            named,
            stop: Mutex::new(Some(stop)),
        })
    }

    pub fn me(&self) -> &str {
        &self.settings.name
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn tenure(&self) -> &Tenure {
        &self.tenure
    }

    /// Changes of the tenure (0: the Lease is not held).
    pub fn tenures(&self) -> watch::Receiver<u64> {
        self.tenures.clone()
    }

    /// The current view, and its changes.
    pub fn view(&self) -> watch::Receiver<Arc<View>> {
        self.view.clone()
    }

    /// The shards WasmControllers are assigned to now.
    pub fn note_named(&self, names: BTreeSet<String>) {
        *self.named.lock().unwrap() = names;
    }

    /// Stops renewing and clears this replica's Lease, so the others take its WasmControllers
    /// at once. Call only once every controller has stopped.
    pub async fn release(&self) {
        let stop = self.stop.lock().unwrap().take();
        if let Some(stop) = stop {
            let (done_tx, done) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = done.await;
            }
        }
    }
}

/// Holds this replica's Lease: takes it, renews it, and when a renewal fails for the renew
/// deadline, ends the tenure (every [`Fence`] closes) and tries to take it again.
async fn hold_own(
    mut elector: Elector,
    tenure: Tenure,
    tenures: watch::Sender<u64>,
    metrics: Metrics,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut epoch = 0;
    let done = loop {
        tokio::select! {
            () = elector.acquire() => {}
            done = &mut stop => break done.ok(),
        }
        epoch += 1;
        tenure.set(epoch);
        metrics.leader.set(1);
        let _ = tenures.send(epoch);
        tracing::info!(shard = %elector.settings().identity, tenure = epoch, "holding the shard Lease: taking on WasmControllers");
        let stopped = tokio::select! {
            () = elector.hold() => None,
            done = &mut stop => Some(done.ok()),
        };
        tenure.set(0);
        metrics.leader.set(0);
        let _ = tenures.send(0);
        if let Some(done) = stopped {
            break done;
        }
        tracing::error!(shard = %elector.settings().identity, "lost the shard Lease: every controller stops writing now; trying to take it again");
    };
    tenure.set(0);
    metrics.leader.set(0);
    if let Err(error) = elector.release().await {
        tracing::warn!(error = %crate::cluster::api_error::readable(&error), "could not release the shard Lease; the others take over once it expires");
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// A shard Lease as this replica has seen it.
struct Seen {
    lease: Lease,
    /// When its record last changed, by this replica's clock.
    changed: Instant,
    /// Since when it has been dead, by this replica's clock.
    dead_since: Option<Instant>,
}

/// Watches the ring's Leases; publishes the [`View`]; takes over uncertain Leases, deletes
/// orphaned ones, and stands in for a Lease some WasmController names but that is gone.
struct Watcher {
    api: Api<Lease>,
    settings: Settings,
    tenure: Tenure,
    named: Arc<Mutex<BTreeSet<String>>>,
    seen: BTreeMap<String, Seen>,
    /// Named shards without a Lease, since when.
    absent: BTreeMap<String, Instant>,
    metrics: Metrics,
}

impl Watcher {
    async fn run(mut self, view: watch::Sender<Arc<View>>) {
        let (store, writer) = reflector::store();
        let config =
            watcher::Config::default().labels(&format!("{RING_LABEL}={}", self.settings.ring));
        let mut events = std::pin::pin!(
            watcher(self.api.clone(), config)
                .default_backoff()
                .reflect(writer)
        );
        let mut synced = false;
        let mut tick = tokio::time::interval(self.settings.retry_period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(watcher::Event::InitDone)) => synced = true,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(error = %crate::cluster::api_error::readable_watch(&error), "shard Lease watch error; retrying with backoff");
                    }
                    None => return,
                },
                _ = tick.tick() => {}
            }
            let states = self.refresh(&store);
            if synced {
                self.act(states.clone()).await;
            }
            let next = Arc::new(self.view(synced, states));
            view.send_if_modified(|current| {
                let changed = **current != *next;
                if changed {
                    *current = next.clone();
                }
                changed
            });
        }
    }

    /// Takes in the store's Leases; returns each shard's state now.
    fn refresh(&mut self, store: &Store<Lease>) -> BTreeMap<String, State> {
        let at = Instant::now();
        let wall = k8s_openapi::jiff::Timestamp::now();
        let leases = store.state();
        self.seen
            .retain(|name, _| leases.iter().any(|l| l.name_any() == *name));
        let mut states = BTreeMap::new();
        for lease in leases {
            let name = lease.name_any();
            let seen = self.seen.entry(name.clone()).or_insert_with(|| Seen {
                lease: (*lease).clone(),
                changed: at,
                dead_since: None,
            });
            if seen.lease.resource_version() != lease.resource_version() {
                seen.lease = (*lease).clone();
                seen.changed = at;
            }
            let state = state(&seen.lease, at.duration_since(seen.changed), wall);
            match (state, seen.dead_since) {
                (State::Dead, None) => seen.dead_since = Some(at),
                (State::Dead, Some(_)) => {}
                (_, _) => seen.dead_since = None,
            }
            states.insert(name, state);
        }
        states
    }

    fn view(&self, synced: bool, states: BTreeMap<String, State>) -> View {
        let me = &self.settings.name;
        let ready = states
            .iter()
            .filter(|(name, state)| **state == State::Ready && *name != me)
            .map(|(name, _)| name.clone());
        let ring = Ring::new(ready.chain([me.clone()]));
        for s in State::ALL {
            let n = states.values().filter(|v| **v == s).count();
            self.metrics
                .shard
                .states
                .with_label_values(&[s.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        View {
            me: me.clone(),
            synced,
            states,
            ring,
        }
    }

    /// Takeovers, orphan deletion and stand-ins, while this replica holds its own Lease (a
    /// replica that cannot renew its own is likely cut off too, and must not judge others).
    async fn act(&mut self, states: BTreeMap<String, State>) {
        if self.tenure.current() == 0 {
            return;
        }
        let named = self.named.lock().unwrap().clone();
        let me = self.settings.name.clone();
        for (name, state) in &states {
            if *name == me {
                continue;
            }
            match state {
                State::Uncertain => self.take_over(name).await,
                State::Dead => self.delete_orphan(name, &named).await,
                _ => {}
            }
        }
        let now = Instant::now();
        self.absent
            .retain(|name, _| named.contains(name) && !states.contains_key(name));
        for name in named {
            if name == me || states.contains_key(&name) {
                continue;
            }
            let since = *self.absent.entry(name.clone()).or_insert(now);
            if now.duration_since(since) >= self.settings.lease_duration {
                self.stand_in(&name).await;
            }
        }
    }

    /// The takeover record: held by this replica (so dead for everyone), for twice the lease
    /// duration (so the shard's own replica, should it come back, waits until every replica
    /// has seen it dead).
    fn taken_over(&self, mut spec: LeaseSpec) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(15);
        spec.holder_identity = Some(self.settings.name.clone());
        spec.lease_duration_seconds = Some(2 * seconds);
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec
    }

    /// Takes over `name`'s Lease, conditional on the record this replica saw unchanged.
    async fn take_over(&mut self, name: &str) {
        let Some(seen) = self.seen.get(name) else {
            return;
        };
        let mut lease = seen.lease.clone();
        lease.spec = Some(self.taken_over(lease.spec.clone().unwrap_or_default()));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::warn!(
                shard = name,
                "took over the shard Lease: it was not renewed for a lease duration; its WasmControllers move"
            ),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {} // it changed
            Err(error) => {
                tracing::warn!(shard = name, error = %crate::cluster::api_error::readable(&error), "could not take over the shard Lease")
            }
        }
    }

    /// Deletes a Lease dead for [`ORPHAN_AFTER`] that no WasmController names.
    async fn delete_orphan(&mut self, name: &str, named: &BTreeSet<String>) {
        let Some(seen) = self.seen.get(name) else {
            return;
        };
        let orphaned = seen
            .dead_since
            .is_some_and(|since| since.elapsed() >= ORPHAN_AFTER);
        if !orphaned || named.contains(name) {
            return;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: seen.lease.resource_version(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => tracing::info!(shard = name, "deleted the orphaned shard Lease"),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
            Err(error) => {
                tracing::warn!(shard = name, error = %crate::cluster::api_error::readable(&error), "could not delete the orphaned shard Lease")
            }
        }
    }

    /// A WasmController names shard `name`, whose Lease has been gone for a lease duration
    /// (deleted by hand): create it dead, so the WasmController moves by the usual path (a
    /// create fails if its replica made it again meanwhile).
    async fn stand_in(&mut self, name: &str) {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(
                    RING_LABEL.to_string(),
                    self.settings.ring.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(self.taken_over(LeaseSpec::default())),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => tracing::warn!(
                shard = name,
                "a WasmController names a shard without a Lease: created it as taken over, so its WasmControllers move"
            ),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(error) => {
                tracing::warn!(shard = name, error = %crate::cluster::api_error::readable(&error), "could not create a stand-in shard Lease")
            }
        }
        self.absent.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};

    use super::*;

    fn lease(name: &str, holder: Option<&str>, renewed: Option<Timestamp>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(15),
                renew_time: renewed.map(MicroTime),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_shard_is_ready_expired_uncertain_or_dead_by_its_lease_and_this_replicas_clock() {
        let now = Timestamp::now();
        let ago = |s: i64| now.checked_sub(SignedDuration::from_secs(s)).unwrap();
        let secs = Duration::from_secs;
        let cases = [
            // (holder, renewed, unchanged for by our clock, state)
            (Some("r1"), Some(ago(2)), secs(1), State::Ready),
            (Some("r1"), Some(ago(20)), secs(1), State::Expired), // its clock, or its death
            (Some("r1"), Some(ago(2)), secs(15), State::Uncertain), // our clock says so
            (Some("r1"), None, secs(0), State::Expired),
            (None, Some(ago(2)), secs(0), State::Dead), // released
            (Some("r2"), Some(ago(2)), secs(0), State::Dead), // taken over
            (Some(""), Some(ago(2)), secs(0), State::Dead),
        ];
        for (holder, renewed, unchanged, want) in cases {
            assert_eq!(
                state(&lease("r1", holder, renewed), unchanged, now),
                want,
                "holder {holder:?}, renewed {renewed:?}, unchanged for {unchanged:?}"
            );
        }
    }

    #[test]
    fn a_fence_allows_only_in_the_tenure_it_was_confirmed_in() {
        let tenure = Tenure::default();
        let fence = Fence::new(&tenure);
        assert!(!fence.allows());
        tenure.set(1);
        assert!(!fence.allows(), "not confirmed yet");
        fence.own(1);
        assert!(fence.allows());
        tenure.set(0); // the renew deadline passed
        assert!(!fence.allows());
        tenure.set(2); // the Lease is held again: a new tenure needs a new confirmation
        assert!(!fence.allows());
        fence.own(2);
        assert!(fence.allows());
        fence.close();
        assert!(!fence.allows());
        assert!(Fence::open().allows());
    }

    #[test]
    fn shard_names_must_be_lease_names() {
        let settings = |name: &str| Settings {
            name: name.into(),
            ring: "wasmop".into(),
            namespace: "wasmop-system".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        assert!(settings("wasmop-7d9f-x2k4p").validate().is_ok());
        assert!(settings("r1.example").validate().is_ok());
        for bad in ["", "Upper", "under_score", "-dash", "dot."] {
            assert!(
                matches!(settings(bad).validate(), Err(SettingsError::Name { .. })),
                "{bad:?}"
            );
        }
    }
}
