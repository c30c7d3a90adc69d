//! Watches opened as a team's ServiceAccount in its namespace, shared by the controllers that
//! would open the same one.
//!
//! A watch is keyed by (namespace, ServiceAccount, kind, label selector): the parent kind is
//! watched whole in the namespace, children only through the `wasmop.dev/controller` label
//! (objects wasmop made; an object of a desired child's name without it is found by the
//! create that fails because it exists). The API server enforces the team's read RBAC on the watch
//! itself, and the operator needs no cluster-wide reads of the kinds teams name. When the last
//! user drops its handle the watch stops.
//!
//! Changes fan out on a lossy broadcast channel rather than kube-runtime's back-pressured
//! dispatcher: a slow or stopped controller can never stall a watch other controllers depend
//! on. A subscriber that falls behind gets the current store contents replayed instead
//! (reconciles are level-based, so nothing is lost).
//!
//! Each watch also indexes its objects by the uid of their controller ownerReference, so a
//! reconcile finds one parent's children without scanning every child in the namespace
//! ([`SharedKind::controlled_by`]).
//!
//! # Relists
//! kube-runtime's reflector fills its store with a new list only at `InitDone` (the objects of
//! `InitApply` are buffered until then). So nothing is sent for `InitApply`; at `InitDone`
//! every object of the new list is sent, and every object that vanished while the watch was
//! down is sent too (no longer in the store: subscribers see it is gone). An object created
//! or deleted during an outage is therefore reconciled as soon as the watch recovers, without
//! relying on resync.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// How many changes a subscriber may fall behind before it gets a replay instead.
const FANOUT_BUFFER: usize = 1024;
/// How long to wait for a new watch's initial list.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the initial list of {kind} ({api_version}) in namespace {namespace} as ServiceAccount {service_account} did not complete within {READY_TIMEOUT:?}: may that account list and watch it? (the operator's log has the API server's answer)"
    )]
    NotReady {
        api_version: String,
        kind: String,
        namespace: String,
        service_account: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who watches what: a team's account, in its namespace, one kind, optionally by label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub namespace: String,
    pub service_account: String,
    /// A label selector (children: `wasmop.dev/controller`, i.e. made by wasmop), or every object.
    pub labels: Option<String>,
}

type Key = (Scope, String, String, String); // scope, group, version, plural

/// The registry of watches.
pub struct Watches {
    metrics: Metrics,
    kinds: Mutex<HashMap<Key, Weak<SharedKind>>>,
}

/// One watch: a store of the kind's objects in scope and a change feed.
pub struct SharedKind {
    pub resource: ApiResource,
    pub scope: Scope,
    pub store: Store<DynamicObject>,
    /// Set by the watch task once the initial list is in the store. (Not
    /// `Store::wait_until_ready`: its one-shot receiver wakes only the last of several
    /// concurrent waiters, so controllers starting together stalled until their timeout.)
    ready: tokio::sync::watch::Receiver<bool>,
    tx: broadcast::Sender<Arc<DynamicObject>>,
    /// The store's objects by the uid of their controller (kept by the watch task).
    owners: Arc<Mutex<OwnerIndex>>,
    task: tokio::task::AbortHandle,
    metrics: Metrics,
}

/// Objects by the uid of their controller ownerReference. Updated as the store is, right
/// after it (so for a moment it may lag the store, as the store lags the API server).
#[derive(Default)]
struct OwnerIndex {
    by_owner: HashMap<String, HashSet<ObjectRef<DynamicObject>>>,
    owner_of: HashMap<ObjectRef<DynamicObject>, String>,
}

impl OwnerIndex {
    fn controller_uid(obj: &DynamicObject) -> Option<&str> {
        obj.metadata
            .owner_references
            .as_deref()?
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.as_str())
    }

    fn forget(&mut self, key: &ObjectRef<DynamicObject>) {
        if let Some(owner) = self.owner_of.remove(key)
            && let Some(set) = self.by_owner.get_mut(&owner)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    fn applied(&mut self, key: ObjectRef<DynamicObject>, obj: &DynamicObject) {
        let owner = Self::controller_uid(obj);
        if self.owner_of.get(&key).map(String::as_str) == owner {
            return;
        }
        self.forget(&key);
        if let Some(owner) = owner {
            self.by_owner
                .entry(owner.to_string())
                .or_default()
                .insert(key.clone());
            self.owner_of.insert(key, owner.to_string());
        }
    }

    fn rebuild(&mut self, objects: &[Arc<DynamicObject>], resource: &ApiResource) {
        *self = OwnerIndex::default();
        for obj in objects {
            self.applied(
                ObjectRef::from_obj_with(obj.as_ref(), resource.clone()),
                obj,
            );
        }
    }
}

fn kind_label(resource: &ApiResource) -> String {
    wasmop_abi::child_key(&resource.api_version, &resource.kind)
}

impl Drop for SharedKind {
    fn drop(&mut self) {
        self.task.abort();
        let labels = [kind_label(&self.resource), self.scope.namespace.clone()];
        let labels = [labels[0].as_str(), labels[1].as_str()];
        self.metrics.watches.with_label_values(&labels).dec();
        self.metrics
            .cached_objects
            .with_label_values(&labels)
            .sub(i64::try_from(self.store.len()).unwrap_or(0));
        tracing::info!(kind = %self.resource.kind, namespace = %self.scope.namespace, "watch stopped (no more users)");
    }
}

impl Watches {
    pub fn new(metrics: Metrics) -> Self {
        Watches {
            metrics,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// The watch of `resource` in `scope`, made with `client` (which acts as the scope's
    /// ServiceAccount), started if nobody holds it, once its initial list is in.
    ///
    /// # Errors
    /// [`Error::NotReady`] when the initial list does not complete in time.
    pub async fn get(
        &self,
        client: &Client,
        scope: &Scope,
        resource: &ApiResource,
    ) -> Result<Arc<SharedKind>> {
        let key = (
            scope.clone(),
            resource.group.clone(),
            resource.version.clone(),
            resource.plural.clone(),
        );
        let shared = {
            let mut kinds = self.kinds.lock().unwrap();
            kinds.retain(|_, weak| weak.strong_count() > 0);
            match kinds.get(&key).and_then(Weak::upgrade) {
                Some(shared) => shared,
                None => {
                    let shared = Arc::new(self.start(client, scope.clone(), resource.clone()));
                    kinds.insert(key, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        let mut ready = shared.ready.clone();
        let not_ready = || Error::NotReady {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespace: scope.namespace.clone(),
            service_account: scope.service_account.clone(),
        };
        tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r))
            .await
            .map_err(|_| not_ready())?
            .map_err(|_| not_ready())?;
        Ok(shared)
    }

    fn start(&self, client: &Client, scope: Scope, resource: ApiResource) -> SharedKind {
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let (tx, _) = broadcast::channel(FANOUT_BUFFER);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &scope.namespace, &resource);
        let mut config = watcher::Config::default();
        if let Some(labels) = &scope.labels {
            config = config.labels(labels);
        }
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let owners = Arc::new(Mutex::new(OwnerIndex::default()));
        let fanout = Fanout {
            feed: tx.clone(),
            owners: owners.clone(),
            store: store.clone(),
            resource: resource.clone(),
            namespace: scope.namespace.clone(),
            metrics: self.metrics.clone(),
            before_relist: Vec::new(),
        };
        let task = tokio::spawn(fanout.run(
            watcher(api, config).default_backoff().reflect(writer),
            ready_tx,
        ));
        let kind = kind_label(&resource);
        self.metrics
            .watches
            .with_label_values(&[kind.as_str(), scope.namespace.as_str()])
            .inc();
        tracing::info!(kind = %resource.kind, namespace = %scope.namespace, service_account = %scope.service_account, labels = ?scope.labels, "watch started");
        SharedKind {
            resource,
            scope,
            store,
            ready,
            tx,
            owners,
            task: task.abort_handle(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Sends a watch's changes to its subscribers once the store has them.
struct Fanout {
    feed: broadcast::Sender<Arc<DynamicObject>>,
    owners: Arc<Mutex<OwnerIndex>>,
    store: Store<DynamicObject>,
    resource: ApiResource,
    namespace: String,
    metrics: Metrics,
    /// The store's objects when a relist began.
    before_relist: Vec<Arc<DynamicObject>>,
}

impl Fanout {
    async fn run(
        mut self,
        events: impl Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>>,
        ready: tokio::sync::watch::Sender<bool>,
    ) {
        let kind = kind_label(&self.resource);
        let cached = self
            .metrics
            .cached_objects
            .with_label_values(&[kind.as_str(), self.namespace.as_str()]);
        let mut counted = 0i64;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(obj)) => {
                    let key = ObjectRef::from_obj_with(&obj, self.resource.clone());
                    self.owners.lock().unwrap().applied(key, &obj);
                    let _ = self.feed.send(Arc::new(obj)); // no subscribers yet is fine
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let key = ObjectRef::from_obj_with(&obj, self.resource.clone());
                    self.owners.lock().unwrap().forget(&key);
                    let _ = self.feed.send(Arc::new(obj));
                }
                Ok(watcher::Event::Init) => self.before_relist = self.store.state(),
                Ok(watcher::Event::InitApply(_)) => {} // not in the store before InitDone
                Ok(watcher::Event::InitDone) => {
                    self.relisted();
                    ready.send_replace(true);
                }
                Err(error) => {
                    self.metrics.watch_errors.with_label_values(&[&kind]).inc();
                    let error = crate::cluster::api_error::readable_watch(&error);
                    tracing::warn!(%kind, namespace = %self.namespace, %error, "watch error; retrying with backoff");
                }
            }
            let now = i64::try_from(self.store.len()).unwrap_or(i64::MAX);
            cached.add(now - counted);
            counted = now;
        }
    }

    /// The new list is in the store: every object of it, and every one that vanished.
    fn relisted(&mut self) {
        let now = self.store.state();
        self.owners.lock().unwrap().rebuild(&now, &self.resource);
        let present: HashSet<ObjectRef<DynamicObject>> = now
            .iter()
            .map(|o| ObjectRef::from_obj_with(o.as_ref(), self.resource.clone()))
            .collect();
        let vanished = std::mem::take(&mut self.before_relist)
            .into_iter()
            .filter(|o| {
                !present.contains(&ObjectRef::from_obj_with(o.as_ref(), self.resource.clone()))
            });
        for obj in now.into_iter().chain(vanished) {
            let _ = self.feed.send(obj);
        }
    }
}

impl SharedKind {
    /// Objects of this kind in `namespace`, from the cache.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<DynamicObject>> {
        self.store
            .state_filter(|o| o.namespace().as_deref() == Some(namespace))
    }

    /// Objects in `namespace` whose controller ownerReference has `owner_uid`, from the cache:
    /// what a scan of [`SharedKind::in_namespace`] for them finds, without the scan (a
    /// reconcile asks this for every parent, and the namespace may hold thousands of children).
    pub fn controlled_by(&self, namespace: &str, owner_uid: &str) -> Vec<Arc<DynamicObject>> {
        let keys: Vec<ObjectRef<DynamicObject>> = {
            let owners = self.owners.lock().unwrap();
            owners
                .by_owner
                .get(owner_uid)
                .map(|set| {
                    set.iter()
                        .filter(|k| k.namespace.as_deref() == Some(namespace))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        keys.iter().filter_map(|k| self.store.get(k)).collect()
    }

    /// Every object in `namespace` now, then every change to one (including deletions). The
    /// stream holds the watch open while it lives.
    pub fn subscribe(
        self: &Arc<Self>,
        namespace: String,
    ) -> impl Stream<Item = Arc<DynamicObject>> + Send + 'static {
        let rx = self.tx.subscribe(); // before the snapshot, so nothing falls in between
        let initial = self.in_namespace(&namespace);
        let live = stream::unfold(
            (rx, self.clone(), namespace),
            |(mut rx, this, ns)| async move {
                loop {
                    match rx.recv().await {
                        Ok(obj) if obj.namespace().as_deref() == Some(ns.as_str()) => {
                            return Some((vec![obj], (rx, this, ns)));
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(kind = %this.resource.kind, missed, "subscriber lagged; replaying the store");
                            let all = this.in_namespace(&ns);
                            return Some((all, (rx, this, ns)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        stream::iter(initial).chain(live.flat_map(stream::iter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap() -> ApiResource {
        ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
    }

    fn child(name: &str, owner: Option<&str>, controller: bool) -> DynamicObject {
        let refs: Vec<serde_json::Value> = owner
            .map(|uid| {
                serde_json::json!({"apiVersion": "example.com/v1", "kind": "Website",
                    "name": "p", "uid": uid, "controller": controller})
            })
            .into_iter()
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "team", "ownerReferences": refs},
        }))
        .unwrap()
    }

    fn owned(index: &OwnerIndex, uid: &str) -> Vec<String> {
        let mut names: Vec<String> = index
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .map(|k| k.name.clone())
            .collect();
        names.sort();
        names
    }

    fn key(obj: &DynamicObject) -> ObjectRef<DynamicObject> {
        ObjectRef::from_obj_with(obj, configmap())
    }

    #[test]
    fn the_owner_index_follows_applies_deletes_and_a_change_of_controller() {
        let mut index = OwnerIndex::default();
        let (a, b) = (child("a", Some("p1"), true), child("b", Some("p1"), true));
        index.applied(key(&a), &a);
        index.applied(key(&b), &b);
        index.applied(key(&b), &b); // an update that keeps the owner
        let free = child("free", Some("p1"), false); // owned, but not controlled
        index.applied(key(&free), &free);
        assert_eq!(owned(&index, "p1"), ["a", "b"]);
        let moved = child("b", Some("p2"), true);
        index.applied(key(&moved), &moved);
        assert_eq!(owned(&index, "p1"), ["a"]);
        assert_eq!(owned(&index, "p2"), ["b"]);
        let orphaned = child("a", None, false);
        index.applied(key(&orphaned), &orphaned);
        index.forget(&key(&moved));
        assert!(index.by_owner.is_empty() && index.owner_of.is_empty());
    }

    #[test]
    fn a_relist_rebuilds_the_owner_index_from_the_store() {
        let mut index = OwnerIndex::default();
        let gone = child("gone", Some("p1"), true);
        index.applied(key(&gone), &gone);
        let now = [
            Arc::new(child("c", Some("p1"), true)),
            Arc::new(child("d", Some("p3"), true)),
        ];
        index.rebuild(&now, &configmap());
        assert_eq!(owned(&index, "p1"), ["c"]);
        assert_eq!(owned(&index, "p3"), ["d"]);
    }
}
