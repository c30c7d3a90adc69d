//! `--shard`: which replica runs a WasmController, and how it changes hands.
//!
//! The assignment lives in the WasmController's `status.shard` (`name`, and `since` once that
//! shard runs it). Only the operator writes it (the status subresource, which WasmController
//! authors are not granted), every write is conditional on the `resourceVersion` this replica
//! read, and a replica starts a controller only after a write of its own in its current tenure
//! of its shard Lease. Every replica decides for itself, from the same shard Leases:
//! - A WasmController assigned to nobody, or to a dead shard, is taken by the shard the ring
//!   puts it on (`since` is set): a write that fails if anyone else wrote it first.
//! - Its owner hands it over when the ring puts it elsewhere (a shard joined): it stops the
//!   controller (every write of it is fenced at once), then writes `name: <new shard>` without
//!   `since`: the drain handshake's acknowledgement. The new shard then takes it.
//! - A shard that was dead (taken over) or lost its tenure takes nothing back on its own: its
//!   next tenure starts with every controller stopped, each to be confirmed by a write.
//!
//! So no two replicas run one WasmController at once: a replica runs it only between its own
//! confirmation and its own handover or the end of its tenure, and another may confirm only
//! after the handover, or after the first one's Lease was taken over (which a live holder
//! prevents by renewing: the takeover is conditional too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{Context, Signal, Slot};
use crate::cluster::api_error::readable;
use crate::cluster::ring;
use crate::cluster::shard::{Membership, State, View};
use crate::crd::{ShardStatus, WasmController};

/// The field manager of `status.shard`.
pub const SHARD_MANAGER: &str = "wasmop-shard";
/// How soon a handover or confirmation that failed (not a conflict) is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// What this replica does about one WasmController.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The shard Leases have not been listed yet: change nothing.
    Wait,
    /// Not this replica's: run nothing for it, write nothing.
    Idle,
    /// This replica's, confirmed in this tenure: run it.
    Run,
    /// Take it (or confirm it after a handover or a new tenure), then run it.
    Confirm(Reason),
    /// This replica's, but the ring puts it on `to`: stop it, then hand it over.
    HandOver { to: String },
}

/// Why a WasmController comes to this replica (`wasmop_shard_moves_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Assigned to nobody yet.
    New,
    /// Its owner handed it over.
    Rebalance,
    /// Its shard is dead.
    DeadShard,
    /// Already this replica's, from an earlier tenure (not a move).
    NewTenure,
}

impl Reason {
    fn label(self) -> Option<&'static str> {
        match self {
            Reason::New => Some("new"),
            Reason::Rebalance => Some("rebalance"),
            Reason::DeadShard => Some("dead_shard"),
            Reason::NewTenure => None,
        }
    }
}

/// The decision for the WasmController with ring key `key`, assigned `assigned`, which this
/// replica confirmed in tenure `confirmed`, when the current tenure is `tenure` (0: this
/// replica does not hold its Lease).
pub(crate) fn decide(
    view: &View,
    tenure: u64,
    key: &str,
    assigned: Option<&ShardStatus>,
    confirmed: Option<u64>,
) -> Decision {
    if tenure == 0 {
        return Decision::Idle;
    }
    if !view.synced {
        return Decision::Wait;
    }
    let me = view.me.as_str();
    let desired = view.owner(key);
    let mine = desired == Some(me);
    match assigned.map(|a| (a.name.as_str(), a.since.is_some())) {
        Some((name, since)) if name == me => match desired {
            Some(to) if to != me => Decision::HandOver { to: to.into() },
            _ if confirmed == Some(tenure) => Decision::Run,
            _ if since => Decision::Confirm(Reason::NewTenure),
            _ => Decision::Confirm(Reason::Rebalance),
        },
        None | Some(("", _)) if mine => Decision::Confirm(Reason::New),
        Some((name, _)) if mine && view.state(name) == Some(State::Dead) => {
            Decision::Confirm(Reason::DeadShard)
        }
        _ => Decision::Idle,
    }
}

/// Why a write of `status.shard` did not happen.
enum WriteError {
    /// The WasmController changed since it was read (or this replica's tenure ended).
    Stale,
    Other(kube::Error),
}

impl Slot {
    /// Brings what this replica does for `wc` in line with the assignment: hands it over,
    /// takes it, or stops it. Returns the WasmController to run (as written, when this call
    /// took it) and whether it was just taken; `None` when it is not this replica's to run.
    pub(super) async fn assign(
        &mut self,
        shard: &Arc<Membership>,
        mut wc: Arc<WasmController>,
    ) -> Option<(Arc<WasmController>, bool)> {
        let key = ring::key(&self.ns, &self.name);
        for _ in 0..3 {
            let view = shard.view().borrow().clone();
            let tenure = shard.tenure().current();
            let assigned = wc.status.as_ref().and_then(|s| s.shard.as_ref());
            let decision = decide(&view, tenure, &key, assigned, self.fence.epoch());
            let written = match decision {
                Decision::Wait => return None,
                Decision::Run => return Some((wc, false)),
                Decision::Idle => {
                    self.park().await;
                    return None;
                }
                Decision::HandOver { to } => self.hand_over(shard, &wc, tenure, &to).await,
                Decision::Confirm(reason) => match self.confirm(shard, &wc, tenure, reason).await {
                    Ok(new) => return Some((new, true)),
                    Err(error) => Err(error),
                },
            };
            match written {
                Ok(()) => return None,
                Err(WriteError::Stale) => {}
                Err(WriteError::Other(error)) => {
                    tracing::warn!(parent: &self.span, error = %readable(&error), "could not write status.shard; retrying");
                    self.again_after(RETRY);
                    return None;
                }
            }
            // Read it afresh and decide again.
            let api: Api<WasmController> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            match api.get_opt(&self.name).await {
                Ok(Some(fresh)) => wc = Arc::new(fresh),
                Ok(None) => return None,
                Err(error) => {
                    tracing::warn!(parent: &self.span, error = %readable(&error), "could not read the WasmController; retrying");
                    self.again_after(RETRY);
                    return None;
                }
            }
        }
        self.again_after(RETRY);
        None
    }

    /// Takes `wc` for this replica (`name: me, since: now`) and opens its fence.
    async fn confirm(
        &mut self,
        shard: &Membership,
        wc: &WasmController,
        tenure: u64,
        reason: Reason,
    ) -> Result<Arc<WasmController>, WriteError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let status = json!({"name": shard.me(), "since": now});
        let written = write_shard(&self.ctx, shard, wc, tenure, status).await?;
        self.fence.own(tenure);
        if let Some(reason) = reason.label() {
            self.ctx
                .metrics
                .shard
                .moves
                .with_label_values(&["in", reason])
                .inc();
        }
        tracing::info!(parent: &self.span, shard = shard.me(), reason = ?reason, "took the WasmController");
        Ok(written)
    }

    /// Stops `wc`'s controller, then hands it over to shard `to` (the drain handshake's
    /// acknowledgement: `name: to`, no `since`).
    async fn hand_over(
        &mut self,
        shard: &Membership,
        wc: &WasmController,
        tenure: u64,
        to: &str,
    ) -> Result<(), WriteError> {
        let began = Instant::now();
        self.park().await;
        write_shard(
            &self.ctx,
            shard,
            wc,
            tenure,
            json!({"name": to, "since": null}),
        )
        .await?;
        let metrics = &self.ctx.metrics;
        metrics
            .shard
            .drain_seconds
            .observe(began.elapsed().as_secs_f64());
        metrics
            .shard
            .moves
            .with_label_values(&["out", "rebalance"])
            .inc();
        tracing::info!(parent: &self.span, to, drained_in = ?began.elapsed(), "handed the WasmController over");
        Ok(())
    }

    /// Asks for another assignment after `delay`.
    fn again_after(&self, delay: Duration) {
        let again = self.signals.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = again.send(Signal::Assign);
        });
    }
}

/// Writes `status.shard`, conditional on `wc`'s resourceVersion and on this replica still
/// being in tenure `tenure`.
async fn write_shard(
    ctx: &Context,
    shard: &Membership,
    wc: &WasmController,
    tenure: u64,
    status: serde_json::Value,
) -> Result<Arc<WasmController>, WriteError> {
    if shard.tenure().current() != tenure {
        return Err(WriteError::Stale);
    }
    {
        let api: Api<WasmController> =
            Api::namespaced(ctx.client.clone(), &wc.namespace().unwrap_or_default());
        let patch = json!({
            "metadata": {"resourceVersion": wc.resource_version()},
            "status": {"shard": status},
        });
        let params = PatchParams {
            field_manager: Some(SHARD_MANAGER.into()),
            ..PatchParams::default()
        };
        match api
            .patch_status(&wc.name_any(), &params, &Patch::Merge(&patch))
            .await
        {
            Ok(written) => Ok(Arc::new(written)),
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Err(WriteError::Stale),
            Err(error) => Err(WriteError::Other(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::cluster::ring::Ring;

    use super::*;

    fn view(me: &str, shards: &[(&str, State)]) -> View {
        let states: BTreeMap<String, State> =
            shards.iter().map(|(n, s)| ((*n).into(), *s)).collect();
        let ready = states
            .iter()
            .filter(|(_, s)| **s == State::Ready)
            .map(|(n, _)| n.clone());
        View {
            me: me.into(),
            synced: true,
            ring: Ring::new(ready),
            states,
        }
    }

    fn at(name: &str, since: bool) -> ShardStatus {
        ShardStatus {
            name: name.into(),
            since: since.then(|| MicroTime(k8s_openapi::jiff::Timestamp::now())),
        }
    }

    /// A key the ring of `v` puts on `shard`.
    fn key_on(v: &View, shard: &str) -> String {
        (0..)
            .map(|i| ring::key("team", &format!("wc-{i}")))
            .find(|k| v.owner(k) == Some(shard))
            .unwrap()
    }

    use State::{Dead, Expired, Ready, Uncertain};

    #[test]
    fn a_replica_without_its_lease_runs_nothing_and_one_not_synced_changes_nothing() {
        let v = view("r1", &[("r1", Ready)]);
        let k = key_on(&v, "r1");
        assert_eq!(
            decide(&v, 0, &k, Some(&at("r1", true)), Some(1)),
            Decision::Idle
        );
        let unsynced = View {
            synced: false,
            ..v.clone()
        };
        assert_eq!(decide(&unsynced, 1, &k, None, None), Decision::Wait);
    }

    #[test]
    fn new_and_orphaned_controllers_go_to_the_ring_owner_only() {
        let v = view("r1", &[("r1", Ready), ("r2", Ready), ("r3", Dead)]);
        let mine = key_on(&v, "r1");
        let theirs = key_on(&v, "r2");
        assert_eq!(
            decide(&v, 1, &mine, None, None),
            Decision::Confirm(Reason::New)
        );
        assert_eq!(decide(&v, 1, &theirs, None, None), Decision::Idle);
        let empty = at("", false);
        assert_eq!(
            decide(&v, 1, &mine, Some(&empty), None),
            Decision::Confirm(Reason::New)
        );
        assert_eq!(
            decide(&v, 1, &mine, Some(&at("r3", true)), None),
            Decision::Confirm(Reason::DeadShard)
        );
        assert_eq!(
            decide(&v, 1, &theirs, Some(&at("r3", true)), None),
            Decision::Idle
        );
    }

    #[test]
    fn a_shard_that_is_not_dead_keeps_its_controllers() {
        // Expired or uncertain: it may still be running them (its renew deadline has not
        // necessarily passed by our clock); absent: its Lease may not have reached us yet.
        for state in [Ready, Expired, Uncertain] {
            let v = view("r1", &[("r1", Ready), ("r2", state)]);
            let k = key_on(&v, "r1");
            assert_eq!(
                decide(&v, 1, &k, Some(&at("r2", true)), None),
                Decision::Idle,
                "{state:?}"
            );
        }
        let v = view("r1", &[("r1", Ready)]);
        let k = key_on(&v, "r1");
        assert_eq!(
            decide(&v, 1, &k, Some(&at("gone", true)), None),
            Decision::Idle
        );
    }

    #[test]
    fn the_owner_runs_what_the_ring_gives_it_and_hands_over_the_rest() {
        let v = view("r1", &[("r1", Ready), ("r2", Ready)]);
        let mine = key_on(&v, "r1");
        let theirs = key_on(&v, "r2");
        assert_eq!(
            decide(&v, 3, &mine, Some(&at("r1", true)), Some(3)),
            Decision::Run
        );
        assert_eq!(
            decide(&v, 3, &theirs, Some(&at("r1", true)), Some(3)),
            Decision::HandOver { to: "r2".into() }
        );
        // Handed over to r1: r1 confirms before it runs it.
        assert_eq!(
            decide(&v, 3, &mine, Some(&at("r1", false)), None),
            Decision::Confirm(Reason::Rebalance)
        );
        // Confirmed in an earlier tenure: confirmed again (a write) before it runs again.
        assert_eq!(
            decide(&v, 4, &mine, Some(&at("r1", true)), Some(3)),
            Decision::Confirm(Reason::NewTenure)
        );
        // Another replica's: never run, whatever this one confirmed before.
        assert_eq!(
            decide(&v, 3, &mine, Some(&at("r2", true)), Some(3)),
            Decision::Idle
        );
    }
}
