//! What re-reconciles a parent besides its own changes and its children's: the objects its
//! `spec.related` entries read.
//!
//! A [`Tracker`] belongs to one running controller. Related objects are read from watches it
//! opens as the team's account in the namespace (shared through [`Watches`] like any other),
//! so a reconcile makes no GET or LIST for them. Each reconcile notes which objects a parent's
//! `ref` entries point at (a reverse index: object → parents), and a change to one of them
//! sends exactly those parents to the controller. A dangling reference is noted too, so the
//! parent is reconciled when the object appears; a reference edited to point elsewhere is
//! replaced at that parent's next reconcile, and the old target stops triggering it. A change
//! to an object that a `selector` entry lists re-reconciles every parent (the selector is the
//! same for all of them).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::cluster::access::Access;
use crate::cluster::watches::{self, Scope, SharedKind, Watches};

/// A related object, by what a reference names: (group, kind, name).
type Target = (String, String, String);

/// Why a related read failed (`related.rs` turns it into an error naming the entry).
#[derive(Debug)]
pub enum Error {
    Access(crate::cluster::access::Error),
    Watch(watches::Error),
}

/// The related-object watches and reverse index of one running controller.
pub struct Tracker {
    client: Client,
    /// The operator's own client: reads CRD labels (contract versions), nothing else.
    operator: Client,
    namespace: String,
    service_account: String,
    watches: Arc<Watches>,
    access: Arc<Access>,
    /// The parent kind's watch (a selector entry's change re-reconciles every parent).
    parents: Arc<SharedKind>,
    /// Parents to reconcile, fed to the controller.
    triggers: mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
    watched: Mutex<Watched>,
    index: Arc<Mutex<Index>>,
}

/// Watches opened for related kinds, each with the task that turns its changes into
/// triggers. Keyed by (group, version, plural, selector).
type Watched = HashMap<(String, String, String, Option<String>), Watch>;

/// The reverse index, shared with the tasks that turn changes into triggers.
#[derive(Default)]
struct Index {
    /// Object → parents whose `ref` entries point at it.
    referrers: HashMap<Target, BTreeSet<String>>,
    /// Parent → what its `ref` entries pointed at in its last reconcile.
    refers: HashMap<String, BTreeSet<Target>>,
}

struct Watch {
    watch: Arc<SharedKind>,
    task: tokio::task::AbortHandle,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    #[allow(clippy::too_many_arguments)] // one constructor, called once by the manager
    pub fn new(
        client: Client,
        operator: Client,
        namespace: String,
        service_account: String,
        watches: Arc<Watches>,
        access: Arc<Access>,
        parents: Arc<SharedKind>,
        triggers: mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
    ) -> Self {
        Tracker {
            client,
            operator,
            namespace,
            service_account,
            watches,
            access,
            parents,
            triggers,
            watched: Mutex::new(HashMap::new()),
            index: Arc::new(Mutex::new(Index::default())),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn operator(&self) -> &Client {
        &self.operator
    }

    /// Starts a parent's reconcile: what it referred to before is forgotten (noted again as
    /// its references are resolved).
    pub fn begin(&self, parent: &str) {
        let mut index = self.index.lock().unwrap();
        for target in index.refers.remove(parent).unwrap_or_default() {
            if let Some(parents) = index.referrers.get_mut(&target) {
                parents.remove(parent);
                if parents.is_empty() {
                    index.referrers.remove(&target);
                }
            }
        }
    }

    /// Forgets a parent that is gone.
    pub fn forget(&self, parent: &str) {
        self.begin(parent);
    }

    /// The object `name` of `resource` (from the watch), noting that `parent` refers to it
    /// whether or not it exists.
    pub(crate) async fn get(
        &self,
        parent: &str,
        resource: &ApiResource,
        name: &str,
    ) -> Result<Option<DynamicObject>, Error> {
        let target = (
            resource.group.clone(),
            resource.kind.clone(),
            name.to_string(),
        );
        {
            let mut index = self.index.lock().unwrap();
            index
                .refers
                .entry(parent.to_string())
                .or_default()
                .insert(target.clone());
            index
                .referrers
                .entry(target)
                .or_default()
                .insert(parent.to_string());
        }
        let watch = self.watch(resource, None).await?;
        let key = ObjectRef::new_with(name, resource.clone()).within(&self.namespace);
        Ok(watch.store.get(&key).map(|o| (*o).clone()))
    }

    /// The objects of `resource` matching `selector` (from the watch).
    pub(crate) async fn list(
        &self,
        resource: &ApiResource,
        selector: Option<String>,
    ) -> Result<Vec<DynamicObject>, Error> {
        let watch = self.watch(resource, selector).await?;
        Ok(watch
            .in_namespace(&self.namespace)
            .into_iter()
            .map(|o| (*o).clone())
            .collect())
    }

    /// The watch of `resource` (with `selector`), opened as the account on first use after
    /// checking that the account may list and watch it.
    async fn watch(
        &self,
        resource: &ApiResource,
        selector: Option<String>,
    ) -> Result<Arc<SharedKind>, Error> {
        let key = (
            resource.group.clone(),
            resource.version.clone(),
            resource.plural.clone(),
            selector.clone(),
        );
        if let Some(w) = self.watched.lock().unwrap().get(&key) {
            return Ok(w.watch.clone());
        }
        self.access
            .require(
                &self.namespace,
                &self.service_account,
                crate::cluster::rbac::RELATED,
                &[(resource.group.clone(), resource.plural.clone())],
            )
            .await
            .map_err(Error::Access)?;
        let scope = Scope {
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
            labels: selector.clone(),
        };
        let watch = self
            .watches
            .get(&self.client, &scope, resource)
            .await
            .map_err(Error::Watch)?;
        let mut watched = self.watched.lock().unwrap();
        if let Some(w) = watched.get(&key) {
            return Ok(w.watch.clone()); // another reconcile opened it meanwhile
        }
        let task = tokio::spawn(fan_in(
            watch.clone(),
            selector.is_some(),
            self.namespace.clone(),
            self.parents.clone(),
            self.triggers.clone(),
            self.index.clone(),
        ));
        watched.insert(
            key,
            Watch {
                watch: watch.clone(),
                task: task.abort_handle(),
            },
        );
        Ok(watch)
    }
}

/// Turns changes of one related watch into parent triggers: the parents that refer to the
/// changed object, or (`every_parent`, a selector entry's watch) every parent.
async fn fan_in(
    watch: Arc<SharedKind>,
    every_parent: bool,
    namespace: String,
    parents: Arc<SharedKind>,
    triggers: mpsc::UnboundedSender<ObjectRef<DynamicObject>>,
    index: Arc<Mutex<Index>>,
) {
    let mut changes = std::pin::pin!(watch.subscribe(namespace.clone()));
    while let Some(obj) = changes.next().await {
        let names: Vec<String> = if every_parent {
            parents
                .in_namespace(&namespace)
                .iter()
                .map(|p| p.name_any())
                .collect()
        } else {
            let target = (
                watch.resource.group.clone(),
                watch.resource.kind.clone(),
                obj.name_any(),
            );
            index
                .lock()
                .unwrap()
                .referrers
                .get(&target)
                .map(|p| p.iter().cloned().collect())
                .unwrap_or_default()
        };
        for name in names {
            let trigger = ObjectRef::new_with(&name, parents.resource.clone()).within(&namespace);
            if triggers.send(trigger).is_err() {
                return;
            }
        }
    }
}
