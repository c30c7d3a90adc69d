//! Leader election with a `coordination.k8s.io/v1` Lease, so several replicas can run and only
//! one of them writes.
//!
//! The algorithm is client-go's `leaderelection` (what kube-controller-manager uses), on
//! `Api<Lease>` with optimistic concurrency (every write carries the `resourceVersion` read):
//! - A candidate takes the Lease when it has no holder, or when its record has not changed for
//!   `leaseDurationSeconds` *by the candidate's own clock* (from when it first saw that record),
//!   so clock skew between machines does not matter.
//! - The leader renews every `retry_period`; when it has not renewed for `renew_deadline`
//!   (shorter than the lease duration) it gives up, and the operator exits at once: no write is
//!   ever made by a replica that may no longer hold the Lease.
//! - A graceful shutdown stops the controllers first, then clears the holder, so a standby
//!   (polling every `retry_period`) takes over at once instead of after the lease duration.
//!
//! The same code holds each replica's own shard Lease with `--shard` (`shard.rs`): the Lease
//! then carries the ring's label, and the process's token in an annotation, so a restarted
//! process of the same name (the Lease name is the Pod's) waits out its predecessor's Lease as
//! it would anyone else's instead of taking it as its own.
//!
//! kube-lease-manager 0.13 fits kube 5 but was not used: its standby sleeps until the lease
//! expires even when the holder released it (no quick handover), and a leader that cannot
//! reach the API server keeps reporting itself leader past the lease's expiry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// How a replica takes part in leader election (`wasmop run --leader-elect ...`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity in `holderIdentity` (unique per process).
    pub identity: String,
    /// How long a standby waits, after the Lease last changed, before taking it.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (and the process exits).
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to take the Lease.
    pub retry_period: Duration,
    /// Labels the Lease carries (a shard Lease: its ring's).
    pub labels: BTreeMap<String, String>,
    /// This process's token in [`PROCESS_ANNOTATION`]: a record with the right holder but
    /// another token is another process's (a shard Lease is named after the Pod, and a
    /// restarted container has the same name).
    pub process: Option<String>,
}

/// The annotation on a shard Lease naming the process that holds it.
pub const PROCESS_ANNOTATION: &str = "wasmop.dev/shard-process";

/// Settings that would allow two leaders at once.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--leader-elect-renew-deadline ({renew:?}) must be shorter than --leader-elect-lease-duration ({lease:?}): a leader must give up before a standby may take over"
    )]
    RenewNotShorterThanLease { renew: Duration, lease: Duration },
    #[error(
        "--leader-elect-retry-period ({retry:?}) must be shorter than --leader-elect-renew-deadline ({renew:?}), or the leader cannot renew in time"
    )]
    RetryNotShorterThanRenew { retry: Duration, renew: Duration },
}

impl Settings {
    /// Checks the durations' order: `retry_period < renew_deadline < lease_duration`.
    ///
    /// # Errors
    /// Any of them out of order.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.renew_deadline >= self.lease_duration {
            return Err(SettingsError::RenewNotShorterThanLease {
                renew: self.renew_deadline,
                lease: self.lease_duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(SettingsError::RetryNotShorterThanRenew {
                retry: self.retry_period,
                renew: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// This host's name: `POD_NAME`, `HOSTNAME` or the kernel's.
pub fn host_name() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "wasmop".into())
}

/// A process-unique identity: `<host>_<pid>_<start time in µs>`.
pub fn default_identity() -> String {
    let host = host_name();
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{host}_{}_{micros}", std::process::id())
}

/// What a replica last saw of the Lease, and when (by its own clock).
#[derive(Debug, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    duration_seconds: Option<i32>,
    process: Option<String>,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time,
            duration_seconds: spec.lease_duration_seconds,
            process: lease.annotations().get(PROCESS_ANNOTATION).cloned(),
        }
    }

    /// Whether the record is `settings`' process's.
    fn is(&self, settings: &Settings) -> bool {
        self.holder.as_deref() == Some(settings.identity.as_str())
            && (settings.process.is_none() || self.process == settings.process)
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    observed: Option<(Record, Instant)>,
    /// When the request that took the Lease was sent (the renew deadline counts from there).
    acquired: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, settings: Settings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            acquired: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The holder this replica last saw (for logs).
    pub fn holder(&self) -> Option<&str> {
        self.observed.as_ref()?.0.holder.as_deref()
    }

    /// Waits until this replica holds the Lease. Errors (API server unreachable, RBAC) are
    /// logged and retried every `retry_period`.
    pub async fn acquire(&mut self) {
        let mut last_holder = None;
        loop {
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.acquired = Some(attempt);
                    tracing::info!(lease = %self.lease(), identity = %self.settings.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    let holder = self.holder().map(str::to_string);
                    if holder != last_holder {
                        tracing::info!(lease = %self.lease(), holder = holder.as_deref().unwrap_or(""), "standby: another replica leads");
                        last_holder = holder;
                    }
                }
                Err(error) => {
                    tracing::warn!(lease = %self.lease(), %error, "leader election: cannot read or take the Lease; retrying");
                }
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renews the Lease while this replica holds it; returns when it has lost it (another
    /// holder, or no successful renewal for `renew_deadline`).
    pub async fn hold(&mut self) {
        let mut renewed = self.acquired.unwrap_or_else(Instant::now);
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let left = self
                .settings
                .renew_deadline
                .saturating_sub(renewed.elapsed());
            // Counted from when the request was sent, not answered: the server wrote the
            // renewal no earlier, so the standby's clock for it cannot start before ours.
            let attempt = Instant::now();
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = attempt,
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.lease(), holder = self.holder().unwrap_or(""), "lost the Lease to another replica");
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(lease = %self.lease(), %error, "could not renew the Lease; retrying")
                }
                Err(_) => {}
            }
            if renewed.elapsed() >= self.settings.renew_deadline {
                tracing::error!(lease = %self.lease(), deadline = ?self.settings.renew_deadline, "could not renew the Lease in time");
                return;
            }
        }
    }

    /// Clears the holder if it is this replica, so a standby takes over at once. Call only once
    /// nothing writes any more.
    ///
    /// # Errors
    /// The Lease cannot be read or written (a standby then waits for it to expire).
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.lease_name).await? else {
            return Ok(());
        };
        if !Record::of(&lease).is(&self.settings) {
            return Ok(());
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api
            .replace(&self.settings.lease_name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.lease(), "released the Lease");
        Ok(())
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.lease_name)
    }

    /// One round of client-go's `tryAcquireOrRenew`: `Ok(true)` when this replica holds the
    /// Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let me = self.settings.identity.clone();
        let duration = i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(15);
        let Some(mut lease) = self.api.get_opt(&self.settings.lease_name).await? else {
            let spec = LeaseSpec {
                holder_identity: Some(me),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            };
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            self.mark(&mut lease);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => self.observe(&created, true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false), // another was faster
                Err(e) => Err(e),
            };
        };
        let record = Record::of(&lease);
        if self.observed.as_ref().is_none_or(|(r, _)| *r != record) {
            self.observed = Some((record, Instant::now()));
        }
        let (record, seen) = self.observed.as_ref().expect("just set");
        let mine = record.is(&self.settings);
        let valid_for =
            Duration::from_secs(record.duration_seconds.unwrap_or(duration).max(1) as u64);
        if !mine && record.holder.is_some() && seen.elapsed() < valid_for {
            return Ok(false);
        }
        self.mark(&mut lease);
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !mine {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now());
        // `replace` sends the resourceVersion we read: a concurrent writer makes it fail (409).
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => self.observe(&updated, true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Puts this replica's labels and process token on `lease`.
    fn mark(&self, lease: &mut Lease) {
        let meta = &mut lease.metadata;
        if !self.settings.labels.is_empty() {
            let labels = meta.labels.get_or_insert_with(Default::default);
            labels.extend(self.settings.labels.clone());
        }
        if let Some(process) = &self.settings.process {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(PROCESS_ANNOTATION.into(), process.clone());
        }
    }

    fn observe(&mut self, lease: &Lease, result: bool) -> Result<bool, kube::Error> {
        let record = Record::of(lease);
        self.observed = Some((record, Instant::now()));
        Ok(result)
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lease: u64, renew: u64, retry: u64) -> Settings {
        Settings {
            lease_name: "wasmop".into(),
            namespace: "wasmop-system".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
            labels: BTreeMap::new(),
            process: None,
        }
    }

    #[test]
    fn durations_must_leave_the_leader_time_to_give_up_first() {
        assert!(settings(15, 10, 2).validate().is_ok());
        assert!(matches!(
            settings(10, 10, 2).validate(),
            Err(SettingsError::RenewNotShorterThanLease { .. })
        ));
        assert!(matches!(
            settings(15, 10, 10).validate(),
            Err(SettingsError::RetryNotShorterThanRenew { .. })
        ));
    }

    #[test]
    fn identities_differ_between_processes_started_apart() {
        let a = default_identity();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, default_identity());
    }
}
