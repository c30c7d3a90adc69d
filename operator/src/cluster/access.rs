//! Least privilege: the clients that act as a WasmController's ServiceAccount, and a cached
//! SubjectAccessReview check for what is read on its behalf from the operator's shared caches.
//!
//! Writes always go through [`impersonated`] clients, so the API server enforces the team's
//! RBAC. Reads come from shared watches made with the operator's own account, so before a
//! plugin sees a kind in a namespace, [`Access::require`] asks the API server whether the
//! team's account could have read it itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client, Config};

use crate::cluster::api_error::readable;

/// How long an "allowed" access review answer is trusted.
pub const REVIEW_TTL: Duration = Duration::from_secs(30);
/// How long a "denied" answer is trusted: shorter, so a team that fixes its RBAC sees its
/// controller start within seconds.
pub const DENIED_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "ServiceAccount {namespace}/{service_account} may not {verb} {resource} in namespace {namespace}: grant it with a Role and RoleBinding (rules: apiGroups [{group:?}], resources [{resource:?}], verbs [{verb:?}])"
    )]
    Denied {
        namespace: String,
        service_account: String,
        verb: String,
        group: String,
        resource: String,
    },
    #[error("asking the API server for an access review: {}", readable(.0))]
    Review(#[source] kube::Error),
    #[error("building a client impersonating {user}: {}", readable(.source))]
    Client {
        user: String,
        #[source]
        source: kube::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The user name Kubernetes gives a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A client that acts as `namespace/service_account` (the API server adds the account's groups).
///
/// # Errors
/// The client cannot be built from `base`.
pub fn impersonated(base: &Config, namespace: &str, service_account: &str) -> Result<Client> {
    let mut config = base.clone();
    let user = service_account_user(namespace, service_account);
    config.auth_info.impersonate = Some(user.clone());
    config.auth_info.impersonate_groups = None;
    Client::try_from(config).map_err(|source| Error::Client { user, source })
}

type Key = (String, String, String, String, String, Option<String>); // ns, sa, verb, group, resource, name

/// Cached access reviews, made with the operator's own client.
pub struct Access {
    client: Client,
    cache: Mutex<HashMap<Key, (bool, Instant)>>,
}

impl Access {
    pub fn new(client: Client) -> Self {
        Access {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Succeeds when `namespace/service_account` may `verb` each `(group, resource)` in `namespace`.
    ///
    /// # Errors
    /// [`Error::Denied`] naming the first missing permission and the Role rule that grants it.
    pub async fn require(
        &self,
        namespace: &str,
        service_account: &str,
        verbs: &[&str],
        resources: &[(String, String)],
    ) -> Result<()> {
        for (group, resource) in resources {
            for verb in verbs {
                self.require_one(namespace, service_account, verb, group, resource, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Succeeds when `namespace/service_account` may `verb` `resource` (a plural, or
    /// `plural/subresource`) of `group` in `namespace`, the object `name` when given.
    ///
    /// # Errors
    /// [`Error::Denied`] naming the permission and the Role rule that grants it.
    pub async fn require_one(
        &self,
        namespace: &str,
        service_account: &str,
        verb: &str,
        group: &str,
        resource: &str,
        name: Option<&str>,
    ) -> Result<()> {
        if self
            .allowed(namespace, service_account, verb, group, resource, name)
            .await?
        {
            return Ok(());
        }
        Err(Error::Denied {
            namespace: namespace.into(),
            service_account: service_account.into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
        })
    }

    async fn allowed(
        &self,
        namespace: &str,
        sa: &str,
        verb: &str,
        group: &str,
        resource: &str,
        name: Option<&str>,
    ) -> Result<bool> {
        let key = (
            namespace.into(),
            sa.into(),
            verb.into(),
            group.into(),
            resource.into(),
            name.map(String::from),
        );
        if let Some((allowed, at)) = self.cache.lock().unwrap().get(&key)
            && at.elapsed() < if *allowed { REVIEW_TTL } else { DENIED_TTL }
        {
            return Ok(*allowed);
        }
        let (plural, subresource) = match resource.split_once('/') {
            Some((plural, sub)) => (plural, Some(sub)),
            None => (resource, None),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(service_account_user(namespace, sa)),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.into()),
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(plural.into()),
                    subresource: subresource.map(String::from),
                    name: name.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::Review)?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.cache
            .lock()
            .unwrap()
            .insert(key, (allowed, Instant::now()));
        Ok(allowed)
    }
}
