//! This controller's finalizer on parents (`wasmop.dev/<WasmController name>`, for
//! `spec.plugin.finalize`): added and removed with its own field manager and a uid
//! precondition, and released from every parent when the WasmController goes or stops
//! finalizing.
//!
//! # Guarantees
//! - Adding or removing the finalizer never recreates an object that is gone: the apply
//!   carries the parent's `metadata.uid`, which the API server checks.
//! - Nothing is stranded: [`release_all`] removes the finalizer from every parent in the
//!   namespace (giving parents already being deleted one more `finalize`, bounded by
//!   [`FINALIZE_GRACE`]). It is written as the team's account; only when the API server
//!   refuses that account (a namespace being deleted loses its Roles before its parents) is
//!   exactly this removal made with the operator's own account.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::cluster::api_error::{is_forbidden, readable};
use crate::cluster::shard::Fence;
use crate::reconcile::plan::{Identity, ObjRef};

/// The WasmController's own finalizer while its parents may hold this controller's.
pub const WASMCONTROLLER_FINALIZER: &str = "wasmop.dev/release-parents";
/// The field manager of [`WASMCONTROLLER_FINALIZER`].
pub const WASMCONTROLLER_FINALIZER_MANAGER: &str = "wasmop.dev/release-parents";
/// `wasmop.dev/skip-finalize: <WasmController name>` on a parent being deleted: remove the
/// finalizer without calling `finalize` (a way out for a `finalize` that can never succeed).
pub const SKIP_ANNOTATION: &str = "wasmop.dev/skip-finalize";
/// How long parents already being deleted get to `finalize` when their WasmController goes.
pub const FINALIZE_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} on {target}: {}", readable(.source))]
    Write {
        action: &'static str,
        target: ObjRef,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot release finalizer {finalizer} from {target}: the team's account may no longer do it ({team}) and neither may the operator ({operator}). Grant the operator get, list and patch on {resource} with a ClusterRole labelled wasmop.dev/aggregate-to-release-finalizers=true (docs/security.md)"
    )]
    NoOneMayRelease {
        finalizer: String,
        target: ObjRef,
        resource: String,
        team: String,
        operator: String,
    },
    #[error(
        "{action} on {target}: not written, this replica no longer runs the WasmController (it moved to another shard)"
    )]
    Moved {
        action: &'static str,
        target: ObjRef,
    },
}

/// Where this controller's finalizer lives and who may write it.
pub struct Finalizers {
    /// The parent kind.
    pub resource: ApiResource,
    pub namespace: String,
    pub identity: Identity,
    /// Acts as the WasmController's ServiceAccount.
    pub team: Client,
    /// The operator's own account: only to remove the finalizer when `team` may not.
    pub operator: Client,
    /// Checked before each write (`--shard`: the WasmController may have moved).
    pub fence: Fence,
}

impl Finalizers {
    fn target(&self, parent: &DynamicObject) -> ObjRef {
        self.named(&parent.name_any())
    }

    /// A parent by name (`*`: all of them).
    fn named(&self, name: &str) -> ObjRef {
        ObjRef {
            api_version: self.resource.api_version.clone(),
            kind: self.resource.kind.clone(),
            namespace: self.namespace.clone(),
            name: name.into(),
        }
    }

    /// The parent kind as RBAC names it, `<plural>.<group>`.
    fn rbac_resource(&self) -> String {
        format!("{}.{}", self.resource.plural, self.resource.group)
    }

    /// Whether `parent` carries this controller's finalizer.
    pub fn held_by(&self, parent: &DynamicObject) -> bool {
        parent.finalizers().contains(&self.identity.finalizer())
    }

    /// Adds the finalizer (as the team). A parent that is gone stays gone.
    ///
    /// # Errors
    /// The API server refuses the write.
    pub async fn add(&self, parent: &DynamicObject) -> Result<(), Error> {
        self.fenced("adding the finalizer", parent)?;
        self.apply(&self.team, parent, true)
            .await
            .map_err(|source| Error::Write {
                action: "adding the finalizer",
                target: self.target(parent),
                source,
            })
    }

    /// Removes the finalizer: as the team, or, if the API server refuses the team, as the
    /// operator (this write only). A parent that is gone stays gone.
    ///
    /// # Errors
    /// Neither account may patch the parent, or another failure.
    pub async fn remove(&self, parent: &DynamicObject) -> Result<(), Error> {
        self.fenced("removing the finalizer", parent)?;
        let write = |source| Error::Write {
            action: "removing the finalizer",
            target: self.target(parent),
            source,
        };
        let team = match self.apply(&self.team, parent, false).await {
            Ok(()) => return Ok(()),
            Err(source) if is_forbidden(&source) => readable(&source).to_string(),
            Err(source) => return Err(write(source)),
        };
        match self.apply(&self.operator, parent, false).await {
            Ok(()) => {
                tracing::info!(parent = %parent.name_any(), "finalizer removed with the operator's account: the team's account may no longer patch the parent");
                Ok(())
            }
            Err(source) if is_forbidden(&source) => Err(Error::NoOneMayRelease {
                finalizer: self.identity.finalizer(),
                target: self.target(parent),
                resource: self.rbac_resource(),
                team,
                operator: readable(&source).to_string(),
            }),
            Err(source) => Err(write(source)),
        }
    }

    fn fenced(&self, action: &'static str, parent: &DynamicObject) -> Result<(), Error> {
        if self.fence.allows() {
            return Ok(());
        }
        Err(Error::Moved {
            action,
            target: self.target(parent),
        })
    }

    /// A server-side apply of just this finalizer by its own field manager, to exactly this
    /// object (uid). 404/409 mean the object is gone (or another one by now): nothing to do.
    async fn apply(
        &self,
        client: &Client,
        parent: &DynamicObject,
        present: bool,
    ) -> Result<(), kube::Error> {
        let mut body = json!({
            "apiVersion": self.resource.api_version, "kind": self.resource.kind,
            "metadata": {"name": parent.name_any(), "namespace": self.namespace, "uid": parent.uid()},
        });
        if present {
            body["metadata"]["finalizers"] = json!([self.identity.finalizer()]);
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &self.namespace, &self.resource);
        let params = PatchParams::apply(&self.identity.finalizer_manager()).force();
        match api
            .patch(&parent.name_any(), &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Removes this controller's finalizer from every parent in the namespace, a round at a time
/// (the caller shows progress between rounds). With `finalize` (the stopped controller),
/// parents already being deleted first get `finalize` called until it succeeds or
/// [`FINALIZE_GRACE`] passes; a team account that may no longer act releases at once.
///
/// Parents are listed afresh each round (as the team, or the operator when the team may no
/// longer list them): releasing must not depend on a cache that may no longer be fed.
/// One more `finalize` call of a parent being deleted, by the stopped controller (implemented
/// by the reconcile path, which this module does not know).
pub trait Finalize: Sync {
    fn finalize(&self, parent: &DynamicObject) -> impl Future<Output = Finalized> + Send;
}

/// What one more `finalize` call of a parent being deleted came to.
pub enum Finalized {
    /// `finalize` said `finalized: true`, and the finalizer is gone.
    Released,
    /// Not finalized yet, or it failed: try again in the next round, until the grace period ends.
    NotYet,
    /// The team's account may no longer act: release the finalizer now.
    CannotFinalize,
}

pub struct Release<'a> {
    finalizers: &'a Finalizers,
    deadline: Instant,
    released: HashSet<Option<String>>,
    /// How many parents held the finalizer when the release began.
    pub total: usize,
}

impl<'a> Release<'a> {
    /// # Errors
    /// Neither account may list the parents.
    pub async fn new(finalizers: &'a Finalizers) -> Result<Self, Error> {
        let mut release = Release {
            finalizers,
            deadline: Instant::now() + FINALIZE_GRACE,
            released: HashSet::new(),
            total: 0,
        };
        release.total = release.left().await?.len();
        Ok(release)
    }

    /// Parents still holding the finalizer (not yet released by this release).
    async fn left(&self) -> Result<Vec<DynamicObject>, Error> {
        let f = self.finalizers;
        let list = async |client: &Client| {
            Api::<DynamicObject>::namespaced_with(client.clone(), &f.namespace, &f.resource)
                .list(&ListParams::default())
                .await
        };
        let parents = match list(&f.team).await {
            Ok(list) => list,
            Err(e) if is_forbidden(&e) => {
                list(&f.operator)
                    .await
                    .map_err(|source| Error::NoOneMayRelease {
                        finalizer: f.identity.finalizer(),
                        target: f.named("*"),
                        resource: f.rbac_resource(),
                        team: readable(&e).to_string(),
                        operator: readable(&source).to_string(),
                    })?
            }
            Err(source) => {
                return Err(Error::Write {
                    action: "listing the parents",
                    target: f.named("*"),
                    source,
                });
            }
        };
        Ok(parents
            .items
            .into_iter()
            .filter(|p| f.held_by(p) && !self.released.contains(&p.uid()))
            .collect())
    }

    /// One round over the parents still holding the finalizer. Returns how many are left.
    /// `finalize`, when given, is one more `finalize` call of a parent being deleted (the
    /// stopped controller's), tried until [`FINALIZE_GRACE`] has passed.
    ///
    /// # Errors
    /// A finalizer could not be removed (the caller retries later).
    pub async fn round<F: Finalize>(&mut self, finalize: Option<&F>) -> Result<usize, Error> {
        for parent in self.left().await? {
            let deleting = parent.metadata.deletion_timestamp.is_some();
            if let Some(finalize) = finalize
                && deleting
                && Instant::now() < self.deadline
            {
                match finalize.finalize(&parent).await {
                    Finalized::Released => {
                        self.released.insert(parent.uid());
                        continue;
                    }
                    Finalized::NotYet => continue, // again until the deadline
                    Finalized::CannotFinalize => {} // release it now
                }
            }
            self.finalizers.remove(&parent).await?;
            self.released.insert(parent.uid());
        }
        Ok(self.left().await?.len())
    }
}
