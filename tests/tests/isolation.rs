//! End to end: one team's plugin cannot hot-loop or flood (issue 20). Real control plane, real
//! `wasmop`, the real misbehave plugin.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use serde_json::json;
use wasmop_e2e::website::{
    WAIT, apply_controller, condition, create_website, create_website_in_mode, put_plugin,
    team_namespace, wait_ready,
};
use wasmop_e2e::{eventually, operator, plugin};

/// A plugin whose status changes on every write (each write changes the parent, each change
/// reconciles it) is held to the documented per-parent rate, reported on the WasmController.
#[tokio::test]
async fn a_hot_looping_plugin_is_held_to_the_rate_limit_and_reported() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "hotloop").await?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    apply_controller(
        &client,
        &ns,
        "ctl",
        "misbehave",
        json!({"mode": "churn"}),
        json!({}),
    )
    .await?;
    wait_ready(&client, &ns, "ctl", op).await?;
    let label = format!("{ns}/ctl");
    let reconciles = async || {
        op.metric("wasmop_reconciles_total", &[("controller", &label)])
            .await
    };
    let before = reconciles().await?;
    create_website(&client, &ns, "site", json!({})).await?;
    let started = Instant::now();
    let (_, reason, message) = eventually(WAIT, "Throttled=True", || async {
        Ok(condition(&client, &ns, "ctl", "Throttled")
            .await?
            .filter(|(s, _, _)| s == "True"))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(20)))?;
    assert_eq!(reason, "RateLimited", "{message}");
    assert!(message.contains("Website site"), "{message}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let made = reconciles().await? - before;
    let throttled = op
        .metric(
            "wasmop_reconciles_throttled_total",
            &[("controller", &label)],
        )
        .await?;
    eprintln!("{made} reconciles and {throttled} held back in {elapsed:.1} s");
    // A burst of 10, then 1 per second (+2 for the start and the boundary).
    let bound = 10.0 + elapsed + 2.0;
    assert!(
        made <= bound,
        "{made} reconciles in {elapsed:.1} s, more than {bound:.0}"
    );
    assert!(throttled >= 1.0);
    Ok(())
}

/// A response of 10,000 children is refused whole: nothing written, the limit named.
#[tokio::test]
async fn an_oversized_response_writes_nothing_and_names_the_limit() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "flood").await?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    let extra = json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                                  "config": {"mode": "many", "count": 10000},
                                  "limits": {"timeoutMs": 5000, "memoryMiB": 64}}});
    apply_controller(&client, &ns, "ctl", "misbehave", json!({}), extra).await?;
    wait_ready(&client, &ns, "ctl", op).await?;
    create_website(&client, &ns, "site", json!({})).await?;
    let (_, reason, message) = eventually(WAIT, "Degraded=True", || async {
        Ok(condition(&client, &ns, "ctl", "Degraded")
            .await?
            .filter(|(s, _, _)| s == "True"))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(20)))?;
    assert_eq!(reason, "ResponseTooLarge", "{message}");
    assert!(
        message.contains("10000 children, over the limit of 500")
            && message.contains("--max-response-children"),
        "{message}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let written = configmaps
        .list(&ListParams::default().labels("wasmop.dev/controller"))
        .await?;
    assert!(written.items.is_empty(), "nothing written");
    Ok(())
}

/// One controller's plugin loops into its timeout while another controller runs the same
/// plugin bytes with the same limits (so an engine shared by digest and limits would be
/// shared here) making long, healthy calls: the healthy calls never time out (a timeout
/// interrupts its own call only), over at least 30 calls overlapping the timeouts. The timeout
/// is 2 s and a healthy call takes 10-50 ms on a quiet machine: 40 times the headroom, because
/// under `make test` several control planes share two cores and a healthy call that really
/// runs past its deadline is a timeout of its own, not the neighbour's.
#[tokio::test]
async fn a_looping_plugin_never_times_out_another_controllers_calls() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "neighbours").await?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    let spec = |config: serde_json::Value| {
        json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                          "config": config, "limits": {"timeoutMs": 2000, "memoryMiB": 32}},
               "maxConcurrentReconciles": 4})
    };
    let looping = spec(json!({"mode": "loop"}));
    apply_controller(&client, &ns, "looping", "misbehave", json!({}), looping).await?;
    // About 10-50 ms a call: long enough to be in flight when a loop's timeout fires.
    let healthy = spec(json!({"mode": "slow", "spins": 30_000_000u64}));
    apply_controller(&client, &ns, "healthy", "misbehave", json!({}), healthy).await?;
    wait_ready(&client, &ns, "looping", op).await?;
    wait_ready(&client, &ns, "healthy", op).await?;
    // Both controllers reconcile every Website of the namespace: each parent costs loops into
    // the timeout (retried with backoff) and slow healthy calls, interleaved over seconds.
    for i in 0..30 {
        create_website(&client, &ns, &format!("site-{i}"), json!({})).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let (looping_label, healthy_label) = (format!("{ns}/looping"), format!("{ns}/healthy"));
    let timeouts = async || {
        op.metric(
            "wasmop_plugin_failures_total",
            &[("controller", &looping_label), ("reason", "timeout")],
        )
        .await
    };
    eventually(
        WAIT,
        "30 markers and 10 timeouts of the looping controller",
        || async {
            let made = configmaps
                .list(&ListParams::default().labels("wasmop.dev/controller=healthy"))
                .await?
                .items
                .len();
            Ok((made >= 30 && timeouts().await? >= 10.0).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(20)))?;
    let healthy_failures = op
        .metric(
            "wasmop_plugin_failures_total",
            &[("controller", &healthy_label)],
        )
        .await?;
    let healthy_calls = op
        .metric(
            "wasmop_reconciles_total",
            &[("controller", &healthy_label), ("result", "success")],
        )
        .await?;
    eprintln!(
        "{} timeouts of the looping controller; {healthy_calls} successful reconciles and {healthy_failures} plugin failures of the healthy one",
        timeouts().await?
    );
    assert!(healthy_calls >= 30.0);
    assert_eq!(
        healthy_failures, 0.0,
        "no call of the healthy controller was interrupted"
    );
    Ok(())
}

/// A plugin call blocks the task it runs in (`plugin/host.rs`, "Where a call runs"); every
/// reconcile is a task of its own (kube-runtime's `Controller::run` spawns them), so a parent
/// whose call loops until its timeout does not hold up the same controller's other parents,
/// their watches or their writes. The loop is
/// still running (nothing has timed out yet, a call is in flight) when the healthy parent's
/// child is already written; a controller whose reconciles shared one blocked task would write
/// it only after the timeout.
#[tokio::test]
async fn a_looping_call_holds_up_only_its_own_parent() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "own-task").await?;
    put_plugin(&client, &ns, "misbehave", plugin("misbehave")).await?;
    // The timeout leaves minutes of headroom over a healthy reconcile, even under `make test`.
    let spec = json!({"plugin": {"source": {"configMap": {"name": "misbehave", "key": "plugin.wasm"}},
                                 "limits": {"timeoutMs": 60_000, "memoryMiB": 32}},
                      "maxConcurrentReconciles": 2});
    apply_controller(&client, &ns, "one", "misbehave", json!({}), spec).await?;
    wait_ready(&client, &ns, "one", op).await?;
    create_website_in_mode(&client, &ns, "stuck", "loop").await?;
    let label = format!("{ns}/one");
    // The plugin logs this just before it loops (in the reconcile's span, naming the controller).
    eventually(WAIT, "the looping call to be running", || async {
        let log = op.log_tail(100_000);
        Ok(log
            .lines()
            .any(|l| l.contains("looping stuck") && l.contains(&label))
            .then_some(()))
    })
    .await?;
    create_website(&client, &ns, "quick", json!({})).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the healthy parent's marker", || async {
        Ok(configmaps.get_opt("quick-marker").await?.map(|_| ()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(20)))?;
    let timeouts = op
        .metric(
            "wasmop_plugin_failures_total",
            &[("controller", &label), ("reason", "timeout")],
        )
        .await?;
    assert_eq!(timeouts, 0.0, "the looping call is still running");
    assert!(configmaps.get_opt("stuck-marker").await?.is_none());
    Ok(())
}
