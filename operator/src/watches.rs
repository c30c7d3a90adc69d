//! One watch per kind, shared by every controller that needs it.
//!
//! The first controller that asks for a kind starts a cluster-wide watcher + reflector for it;
//! later ones share the store and subscribe to its changes; when the last user drops its
//! handle the watch stops. So the hundredth WasmController over `ConfigMap` costs no new watch.
//!
//! Changes fan out on a lossy broadcast channel rather than kube-runtime's back-pressured
//! dispatcher: a slow or stopped controller can never stall the watch that every other
//! controller depends on. A subscriber that falls behind gets the current store contents
//! replayed instead (reconciles are level-based, so nothing is lost).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
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
        "the initial list of {kind} ({api_version}) did not complete within {READY_TIMEOUT:?}: may the operator's own account list and watch it cluster-wide? Grant it with a ClusterRole labelled wasmop.dev/aggregate-to-watch=true (samples/operator/rbac.yaml, docs/security.md)"
    )]
    NotReady { api_version: String, kind: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The registry of shared watches.
pub struct Watches {
    client: Client,
    metrics: Metrics,
    kinds: Mutex<HashMap<(String, String, String), Weak<SharedKind>>>,
}

/// One kind's watch: a store of every object of the kind and a change feed.
pub struct SharedKind {
    pub resource: ApiResource,
    pub store: Store<DynamicObject>,
    /// Set by the watch task once the initial list is in the store. (Not
    /// `Store::wait_until_ready`: its one-shot receiver wakes only the last of several
    /// concurrent waiters, so controllers starting together stalled until their timeout.)
    ready: tokio::sync::watch::Receiver<bool>,
    tx: broadcast::Sender<Arc<DynamicObject>>,
    task: tokio::task::AbortHandle,
    metrics: Metrics,
}

impl Drop for SharedKind {
    fn drop(&mut self) {
        self.task.abort();
        self.metrics
            .watches
            .with_label_values(&[&wasmop_abi::child_key(
                &self.resource.api_version,
                &self.resource.kind,
            )])
            .dec();
        tracing::info!(kind = %self.resource.kind, api_version = %self.resource.api_version, "watch stopped (no more users)");
    }
}

impl Watches {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        Watches {
            client,
            metrics,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// The shared watch of `resource`, started if nobody holds it, once its initial list is in.
    ///
    /// # Errors
    /// [`Error::NotReady`] when the initial list does not complete in time.
    pub async fn get(&self, resource: &ApiResource) -> Result<Arc<SharedKind>> {
        let key = (
            resource.group.clone(),
            resource.version.clone(),
            resource.plural.clone(),
        );
        let shared = {
            let mut kinds = self.kinds.lock().unwrap();
            match kinds.get(&key).and_then(Weak::upgrade) {
                Some(shared) => shared,
                None => {
                    let shared = Arc::new(self.start(resource.clone()));
                    kinds.insert(key, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        let mut ready = shared.ready.clone();
        let not_ready = || Error::NotReady {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        };
        tokio::time::timeout(READY_TIMEOUT, ready.wait_for(|r| *r))
            .await
            .map_err(|_| not_ready())?
            .map_err(|_| not_ready())?;
        Ok(shared)
    }

    fn start(&self, resource: ApiResource) -> SharedKind {
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let (tx, _) = broadcast::channel(FANOUT_BUFFER);
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let feed = tx.clone();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let (kind, metrics) = (resource.kind.clone(), self.metrics.clone());
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .reflect(writer)
            );
            while let Some(event) = events.next().await {
                match event {
                    Ok(
                        watcher::Event::Apply(obj)
                        | watcher::Event::Delete(obj)
                        | watcher::Event::InitApply(obj),
                    ) => {
                        let _ = feed.send(Arc::new(obj)); // no subscribers yet is fine
                    }
                    Ok(watcher::Event::InitDone) => {
                        ready_tx.send_replace(true); // the store holds the initial list now
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(error) => {
                        metrics.watch_errors.with_label_values(&[&kind]).inc();
                        tracing::warn!(%kind, %error, "watch error; retrying with backoff");
                    }
                }
            }
        });
        self.metrics
            .watches
            .with_label_values(&[&wasmop_abi::child_key(
                &resource.api_version,
                &resource.kind,
            )])
            .inc();
        tracing::info!(kind = %resource.kind, api_version = %resource.api_version, "watch started");
        SharedKind {
            resource,
            store,
            ready,
            tx,
            task: task.abort_handle(),
            metrics: self.metrics.clone(),
        }
    }
}

impl SharedKind {
    /// Objects of this kind in `namespace`, from the cache.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<DynamicObject>> {
        self.store
            .state_filter(|o| o.namespace().as_deref() == Some(namespace))
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
