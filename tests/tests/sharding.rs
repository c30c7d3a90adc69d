//! Sharding end to end (`wasmop run --shard`): replicas of the real binary, each with a token
//! of the operator's documented account (plus its shard-Lease Role), on a control plane of the
//! test's own whose audit log records every write with the replica's user agent.
//!
//! - 3 replicas spread 30 WasmControllers exactly as the consistent-hash ring says, and each
//!   runs only its own; 200 parents converge.
//! - A 4th replica takes exactly the WasmControllers the ring moves to it (about 1/4) and no
//!   other moves; two SIGTERMed replicas hand theirs over (only theirs move); a SIGKILLed one's
//!   move once its Lease is taken over; it comes back under the same name and gets its share
//!   back. The parents converge after every step.
//! - A replica that can reach the API server for everything but its Lease stops writing
//!   before another replica takes its WasmControllers.
//! - A WasmController's author cannot choose its replica (labels, annotations and status are
//!   hers to try, through impersonation) and a team can neither read nor write shard Leases.
//!
//! In each, the audit log proves that no replica wrote for a WasmController while another one
//! held it. Handover times are printed, not asserted (figures belong to benchmarks).

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use localcp::{FaultConfig, FaultProxy};
use serde_json::json;
use wasmop_e2e::shards::{self, Cluster, LEASE, expected, moved};
use wasmop_e2e::{RestartableOperator, StopWith, eventually};

/// The tests' timings must not depend on each other's load.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Checks the audit log and prints what it shows.
fn no_overlap(cluster: &Cluster, teams: &[String], what: &str) -> Result<shards::Audit> {
    let audit = shards::audit(&cluster.audit, teams)?;
    let moves: usize = audit
        .owners
        .values()
        .map(|o| o.len().saturating_sub(1))
        .sum();
    eprintln!(
        "{what}: audit: {} WasmControllers, {moves} moves, old owner's last write to new owner's take: {:?}",
        audit.owners.len(),
        shards::spread(&audit.gaps)
    );
    if !audit.violations.is_empty() {
        let shown: Vec<String> = audit
            .violations
            .iter()
            .map(|(ns, v)| {
                format!(
                    "{ns}:\n  {}\nits writes:\n  {}",
                    v.join("\n  "),
                    audit.timelines[ns].join("\n  ")
                )
            })
            .collect();
        bail!(
            "writes by a replica that did not hold the WasmController:\n{}",
            shown.join("\n")
        );
    }
    Ok(audit)
}

/// What each replica runs (`wasmop_controllers`) is exactly what is assigned to it.
async fn each_runs_its_own(
    replicas: &[(&str, &RestartableOperator)],
    assigned: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    for (name, op) in replicas {
        let want = assigned.values().filter(|s| s == name).count() as f64;
        eventually(
            shards::SETTLE,
            &format!("{name} to run {want} controllers"),
            || async { Ok((op.metric("wasmop_controllers", &[]).await? == want).then_some(())) },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn controllers_spread_move_minimally_and_hand_over_on_shutdown_and_crash() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("sharding").await?;
    let r1 = cluster.replica("r1", None).await?;
    let r2 = cluster.replica("r2", None).await?;
    let r3 = cluster.replica("r3", None).await?;
    let teams = cluster.teams(30).await?;
    let keys = Cluster::keys(&teams);
    let parents = cluster.parents(&teams, 200).await?;

    // Spread: exactly as the ring says, each replica running its own.
    let (three, took) = cluster.wait_assigned(&keys, &["r1", "r2", "r3"]).await?;
    let count = |a: &std::collections::BTreeMap<String, String>, s: &str| {
        a.values().filter(|v| *v == s).count()
    };
    eprintln!(
        "spread over 3: r1 {}, r2 {}, r3 {} ({took:?} to assign)",
        count(&three, "r1"),
        count(&three, "r2"),
        count(&three, "r3")
    );
    each_runs_its_own(&[("r1", &r1), ("r2", &r2), ("r3", &r3)], &three).await?;
    let took = cluster.wait_converged(&parents, 0).await?;
    eprintln!("200 parents converged at step 0 in {took:?}");

    // Scale out 3 -> 4: only what the ring gives r4 moves, all of it to r4.
    let r4 = cluster.replica("r4", None).await?;
    let (four, took) = cluster
        .wait_assigned(&keys, &["r1", "r2", "r3", "r4"])
        .await?;
    let to_r4 = moved(&three, &four);
    ensure!(
        to_r4.iter().all(|k| four[k] == "r4"),
        "a move between old replicas: {to_r4:?}"
    );
    eprintln!("3 -> 4: {} of 30 moved to r4 in {took:?}", to_r4.len());
    let audit = no_overlap(&cluster, &teams, "after 3 -> 4")?;
    let moves: usize = audit.owners.values().map(|o| o.len() - 1).sum();
    ensure!(
        moves == to_r4.len(),
        "{moves} moves for {} WasmControllers the ring moved",
        to_r4.len()
    );
    cluster.set_step(&parents, 1).await?;
    eprintln!(
        "step 1 converged in {:?}",
        cluster.wait_converged(&parents, 1).await?
    );

    // Scale in 4 -> 2 by SIGTERM: r3's and r4's move, nothing else.
    let began = Instant::now();
    let (s3, s4) = tokio::join!(
        r3.stop(StopWith::Term, Duration::from_secs(40)),
        r4.stop(StopWith::Term, Duration::from_secs(40))
    );
    ensure!(!s3?.forced && !s4?.forced, "a replica needed SIGKILL");
    let (two, _) = cluster.wait_assigned(&keys, &["r1", "r2"]).await?;
    let handed = moved(&four, &two);
    ensure!(
        handed.iter().all(|k| four[k] == "r3" || four[k] == "r4"),
        "a WasmController of r1 or r2 moved: {handed:?}"
    );
    eprintln!(
        "4 -> 2 (SIGTERM): {} moved, all taken {:?} after the signals",
        handed.len(),
        began.elapsed()
    );
    cluster.set_step(&parents, 2).await?;
    eprintln!(
        "step 2 converged in {:?}",
        cluster.wait_converged(&parents, 2).await?
    );

    // SIGKILL r2: its WasmControllers move once its Lease is taken over, to r1.
    let began = Instant::now();
    r2.stop(StopWith::Kill, Duration::ZERO).await?;
    let (one, _) = cluster.wait_assigned(&keys, &["r1"]).await?;
    eprintln!(
        "SIGKILL of r2: its {} taken by r1 {:?} after the kill (lease {LEASE:?})",
        moved(&two, &one).len(),
        began.elapsed()
    );
    ensure!(
        r1.log_tail(2000).contains("took over the shard Lease"),
        "{}",
        r1.log_tail(30)
    );
    cluster.set_step(&parents, 3).await?;
    eprintln!(
        "step 3 converged in {:?}",
        cluster.wait_converged(&parents, 3).await?
    );

    // r2 comes back under its name: it waits out the takeover, then gets its share back.
    let began = Instant::now();
    r2.spawn()?;
    r2.wait_ready(Duration::from_secs(90)).await?;
    let (back, _) = cluster.wait_assigned(&keys, &["r1", "r2"]).await?;
    ensure!(back == two, "r2 came back to another share than before");
    eprintln!(
        "r2 restarted: its share back {:?} after the start",
        began.elapsed()
    );
    cluster.set_step(&parents, 4).await?;
    eprintln!(
        "step 4 converged in {:?}",
        cluster.wait_converged(&parents, 4).await?
    );
    each_runs_its_own(&[("r1", &r1), ("r2", &r2)], &back).await?;

    for op in [&r1, &r2] {
        op.stop(StopWith::Term, Duration::from_secs(40)).await?;
    }
    no_overlap(&cluster, &teams, "whole run")?;
    Ok(())
}

/// Lease requests through r1's proxy fail from `cut` on: r1 still reaches the API server for
/// everything else, so only its fence stops it from writing. Parents keep changing meanwhile.
#[tokio::test]
async fn a_replica_that_cannot_renew_its_lease_stops_writing_before_another_takes_over()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("sharding-cut").await?;
    let proxy = FaultProxy::start(&cluster.cp, FaultConfig::default()).await?;
    let r1 = cluster.replica("r1", Some(proxy.kubeconfig())).await?;
    let r2 = cluster.replica("r2", None).await?;
    let r3 = cluster.replica("r3", None).await?;
    let mut teams = cluster.teams(12).await?;
    // The ring hashes namespace names with random suffixes: about one run in 130 it gives r1
    // none of 12, and this test needs r1 to hold some. One more team until it does.
    while !expected(&Cluster::keys(&teams), &["r1", "r2", "r3"])
        .values()
        .any(|s| s == "r1")
    {
        teams.extend(cluster.teams(1).await?);
    }
    let keys = Cluster::keys(&teams);
    let parents = cluster.parents(&teams, 36).await?;
    let (three, _) = cluster.wait_assigned(&keys, &["r1", "r2", "r3"]).await?;
    cluster.wait_converged(&parents, 0).await?;
    ensure!(
        three.values().any(|s| s == "r1"),
        "the ring gave r1 nothing: {three:?}"
    );

    r1.note("every Lease request through the proxy fails from now on");
    let cut = Instant::now();
    proxy.set_config(FaultConfig {
        error_500_per_mille: 1000,
        max_faults: u64::MAX,
        only_paths_containing: Some("/leases".into()),
        ..FaultConfig::default()
    });
    // Keep r1's controllers busy while it loses its Lease: a new step every half second.
    let mut step = 0;
    let two = expected(&keys, &["r2", "r3"]);
    let mut not_ready_after = None;
    loop {
        step += 1;
        cluster.set_step(&parents, step).await?;
        if not_ready_after.is_none() && r1.readyz().await != Some(200) {
            not_ready_after = Some(cut.elapsed());
        }
        let now = cluster.assignment().await?;
        if two
            .iter()
            .all(|(k, s)| now.get(k) == Some(&(s.clone(), true)))
        {
            break;
        }
        ensure!(
            cut.elapsed() < 4 * LEASE,
            "r1's WasmControllers did not move:\n{now:?}\n{}",
            r2.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "r1 cut off from its Lease: unready {not_ready_after:?} after the cut, its WasmControllers on r2/r3 {:?} after it",
        cut.elapsed()
    );
    ensure!(
        r1.log_tail(2000).contains("lost the shard Lease"),
        "{}",
        r1.log_tail(30)
    );
    cluster.wait_converged(&parents, step).await?;
    let audit = no_overlap(&cluster, &teams, "cut")?;
    ensure!(
        audit
            .owners
            .values()
            .any(|o| o.first().map(String::as_str) == Some("r1") && o.len() > 1),
        "no WasmController moved away from r1: {:?}",
        audit.owners
    );

    // The partition heals: r1 takes its Lease again (once the takeover record expired) and
    // gets its share back.
    proxy.set_config(FaultConfig::default());
    let began = Instant::now();
    cluster.wait_assigned(&keys, &["r1", "r2", "r3"]).await?;
    eprintln!("healed: r1's share back {:?} after", began.elapsed());
    cluster.set_step(&parents, step + 1).await?;
    cluster.wait_converged(&parents, step + 1).await?;
    for op in [&r1, &r2, &r3] {
        op.stop(StopWith::Term, Duration::from_secs(40)).await?;
    }
    no_overlap(&cluster, &teams, "cut and healed")?;
    Ok(())
}

/// A WasmController's author (a user with the documented author Role, through impersonation)
/// labels, annotates and tries to write the status of her WasmController to put it on another
/// replica: nothing moves. Neither she nor her team's ServiceAccount may read or write shard
/// Leases.
#[tokio::test]
async fn an_author_cannot_choose_a_replica_and_teams_cannot_touch_shard_leases() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start("sharding-tenant").await?;
    let r1 = cluster.replica("r1", None).await?;
    let r2 = cluster.replica("r2", None).await?;
    let mut teams = cluster.teams(1).await?;
    // The author's namespace: its own (the audit tells WasmControllers apart by namespace).
    let ns = &wasmop_e2e::website::team_namespace(&cluster.cp, &cluster.client, "alice").await?;
    wasmop_e2e::website::put_plugin(
        &cluster.client,
        ns,
        "website",
        wasmop_e2e::plugin("website-rust"),
    )
    .await?;
    let author_role = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: wasmcontroller-author, namespace: {ns} }}
rules:
  - apiGroups: [wasmop.dev]
    resources: [wasmcontrollers]
    verbs: [get, list, watch, create, update, patch, delete]
  - apiGroups: [""]
    resources: [serviceaccounts]
    resourceNames: [website-controller]
    verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: wasmcontroller-author, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: wasmcontroller-author }}
subjects: [ {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: alice }} ]
"#
    );
    wasmop_e2e::kubectl_stdin(&cluster.cp, &["apply", "-f", "-"], Some(&author_role))?;
    let alice = cluster.impersonating("alice").await?;
    let team_sa = cluster
        .impersonating(&format!("system:serviceaccount:{ns}:website-controller"))
        .await?;

    // A WasmController the ring puts on r1, which its author asks, every way she can, to put
    // on r2.
    let name = (0..)
        .map(|i| format!("pick-{i}"))
        .find(|n| {
            expected(&[wasmop::cluster::ring::key(ns, n)], &["r1", "r2"])
                .values()
                .all(|s| s == "r1")
        })
        .expect("some name lands on r1");
    let wcs: Api<DynamicObject> = Api::namespaced_with(
        alice.clone(),
        ns,
        &wasmop_e2e::website::wasmcontroller_resource(),
    );
    let body = json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController",
        "metadata": {"name": name,
            "labels": {"wasmop.dev/shard": "r2", "shard.alpha.sharding.timebertt.dev/wasmop": "r2"},
            "annotations": {"wasmop.dev/shard": "r2"}},
        "spec": {
            "parent": {"apiVersion": "example.com/v1", "kind": "Website"},
            "children": [{"apiVersion": "v1", "kind": "ConfigMap"}],
            "plugin": {"source": {"configMap": {"name": "website", "key": "plugin.wasm"}}},
            "serviceAccountName": "website-controller",
        },
        "status": {"shard": {"name": "r2", "since": "2026-01-01T00:00:00.000000Z"}},
    });
    wcs.patch(&name, &PatchParams::apply("alice"), &Patch::Apply(&body))
        .await?;
    let mut keys = Cluster::keys(&teams);
    keys.push(wasmop::cluster::ring::key(ns, &name));
    teams.push(ns.clone());
    cluster.wait_assigned(&keys, &["r1", "r2"]).await?;
    let shard_of = |wc: &DynamicObject| wc.data["status"]["shard"].clone();
    let taken = shard_of(&wcs.get(&name).await?);
    ensure!(taken["name"] == "r1", "{taken}");

    // She relabels it, and writes its status: the first changes nothing, the second is refused.
    let moves_in = r2
        .metric("wasmop_shard_moves_total", &[("direction", "in")])
        .await?;
    wcs.patch(&name, &PatchParams::default(), &Patch::Merge(json!({
        "metadata": {"labels": {"wasmop.dev/shard": "r1"}, "annotations": {"wasmop.dev/shard": null}}})))
        .await?;
    wcs.patch(&name, &PatchParams::default(), &Patch::Merge(json!({
        "metadata": {"labels": {"wasmop.dev/shard": "r2", "shard.alpha.sharding.timebertt.dev/wasmop": null,
                                "drain.alpha.sharding.timebertt.dev/wasmop": "true"}}})))
        .await?;
    let status = wcs
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"shard": {"name": "r2", "since": null}}})),
        )
        .await;
    ensure!(
        forbidden(&status),
        "the author wrote status.shard: {status:?}"
    );
    // Whatever the replicas were to do about it, they do within a few retry periods.
    tokio::time::sleep(4 * shards::RETRY).await;
    let after = shard_of(&wcs.get(&name).await?);
    ensure!(
        after == taken,
        "the author's labels moved it: {taken} -> {after}"
    );
    ensure!(
        r2.metric("wasmop_shard_moves_total", &[("direction", "in")])
            .await?
            == moves_in,
        "r2 took something"
    );

    // Shard Leases: neither the author nor the team's account may read or write them.
    for (who, client) in [("alice", &alice), ("the team's ServiceAccount", &team_sa)] {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(client.clone(), &cluster.op_ns);
        ensure!(
            forbidden(&leases.list(&ListParams::default()).await),
            "{who} listed shard Leases"
        );
        ensure!(
            forbidden(&leases.get("r1").await),
            "{who} read a shard Lease"
        );
        let takeover = json!({"spec": {"holderIdentity": "intruder"}});
        ensure!(
            forbidden(
                &leases
                    .patch("r1", &PatchParams::default(), &Patch::Merge(&takeover))
                    .await
            ),
            "{who} wrote a shard Lease"
        );
        let fake = serde_json::from_value(
            json!({"metadata": {"name": "r9", "labels": {"wasmop.dev/ring": "wasmop"}},
            "spec": {"holderIdentity": "r9"}}),
        )?;
        ensure!(
            forbidden(&leases.create(&Default::default(), &fake).await),
            "{who} created a shard Lease"
        );
    }
    for op in [&r1, &r2] {
        op.stop(StopWith::Term, Duration::from_secs(40)).await?;
    }
    no_overlap(&cluster, &teams, "tenant")?;
    Ok(())
}

fn forbidden<T: std::fmt::Debug>(result: &kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(e)) if e.code == 403)
}
