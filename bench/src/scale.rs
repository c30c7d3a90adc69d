//! Memory and scale: one operator with 1, 10 and 100 WasmControllers, each in its own
//! namespace (its own ServiceAccount, as separate teams would have) with one Website; RSS,
//! watches held on kube-apiserver, and how long a new parent's reconcile takes as controllers
//! are added. Once with the same plugin bytes everywhere, once with distinct plugins (the
//! same wasm with a custom section naming the controller: a different sha256 each). Against
//! as many native controller processes.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use wasmop_e2e::website;

use crate::e2e::{Bench, delete_wc, free_port, rss_mib, wait_wc_ready};
use crate::stats::Runs;

#[derive(Clone, Debug, Default)]
pub struct Step {
    pub controllers: usize,
    pub rss_mib: f64,
    /// Watches open on kube-apiserver beyond those before the operator's controllers started.
    pub watches: f64,
    /// Seconds from creating a parent to its status being written (a few probes).
    pub latency_ms: Runs,
    /// Seconds to add this step's controllers (Ready and their first parent reconciled).
    pub add_s: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ScaleReport {
    pub same: Vec<Step>,
    pub distinct: Vec<Step>,
    pub native: Vec<Step>,
    /// RSS of the operator with no WasmController.
    pub idle_rss_mib: f64,
    /// With the most distinct plugins, after a restart (every plugin a cache hit, no
    /// compiler heap left over): (controllers, RSS MiB).
    pub distinct_restarted: Option<(usize, f64)>,
}

/// `wasm` with a custom section `wasmop-bench` holding `tag`: another sha256, the same code.
pub fn with_custom_section(wasm: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wasmop-bench";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Waits until the Website `name` in `ns` carries a reconcile's status.
async fn wait_parent(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    wasmop_e2e::eventually(
        Duration::from_secs(120),
        &format!("Website {ns}/{name} reconciled"),
        || async {
            let w = website::get_website(client, ns, name).await?;
            Ok(w.data["status"]["children"]
                .as_array()
                .is_some()
                .then_some(()))
        },
    )
    .await
}

/// Latency of a new parent's first reconcile in a few of `namespaces`, polled finely.
async fn probe(bench: &Bench, namespaces: &[String], tag: &str) -> Result<Runs> {
    let mut runs = Runs::default();
    let picks: Vec<&String> = if namespaces.len() <= 3 {
        namespaces.iter().collect()
    } else {
        vec![
            &namespaces[0],
            &namespaces[namespaces.len() / 2],
            &namespaces[namespaces.len() - 1],
        ]
    };
    for (i, ns) in picks.into_iter().enumerate() {
        let name = format!("probe-{tag}-{i}");
        let started = Instant::now();
        website::create_website(&bench.admin, ns, &name, json!({"content": "hi"})).await?;
        loop {
            let w = website::get_website(&bench.admin, ns, &name).await?;
            if w.data["status"]["children"].as_array().is_some() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("probe {ns}/{name} not reconciled in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runs.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(runs)
}

/// Runs the memory and scale phase with `steps` (e.g. 1, 10, 100) controllers.
pub async fn run(bench: &Bench, steps: &[usize]) -> Result<ScaleReport> {
    let max = steps.iter().copied().max().unwrap_or(1);
    let namespaces = bench.namespaces("bench-scale", max).await?;
    let wasm = crate::plugin_bytes("website-rust")?;
    let mut report = ScaleReport::default();
    for distinct in [false, true] {
        let mode = if distinct { "distinct" } else { "same" };
        let (op, kubeconfig) = bench.operator().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = op.pid().unwrap_or(0);
        report.idle_rss_mib = rss_mib(pid);
        let watches_before = bench.watches().await?;
        let mut added = 0;
        let mut out = Vec::new();
        for &k in steps {
            eprintln!("bench: scale, {mode} plugin, {k} controllers");
            let started = Instant::now();
            let batch = &namespaces[added..k];
            futures::future::try_join_all(batch.iter().enumerate().map(|(j, ns)| {
                let wasm = if distinct {
                    with_custom_section(&wasm, &format!("{ns}-{}", added + j))
                } else {
                    wasm.clone()
                };
                let client = bench.admin.clone();
                async move {
                    website::put_plugin(&client, ns, &format!("plugin-{mode}"), wasm).await?;
                    website::apply_controller(
                        &client,
                        ns,
                        &format!("site-{mode}"),
                        &format!("plugin-{mode}"),
                        json!({"replicas": 1}),
                        json!({}),
                    )
                    .await?;
                    website::create_website(
                        &client,
                        ns,
                        &format!("w-{mode}"),
                        json!({"content": "hello"}),
                    )
                    .await?;
                    wait_wc_ready(&client, ns, &format!("site-{mode}")).await?;
                    wait_parent(&client, ns, &format!("w-{mode}")).await
                }
            }))
            .await?;
            let add_s = started.elapsed().as_secs_f64();
            added = k;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let latency_ms = probe(bench, &namespaces[..k], &format!("{mode}-{k}")).await?;
            out.push(Step {
                controllers: k,
                rss_mib: rss_mib(pid),
                watches: bench.watches().await? - watches_before,
                latency_ms,
                add_s,
            });
        }
        if distinct {
            // The same controllers in a fresh process: every plugin comes from the cache.
            op.stop(wasmop_e2e::StopWith::Term, Duration::from_secs(10))
                .await?;
            op.spawn()?;
            op.wait_ready(Duration::from_secs(60)).await?;
            let k = added as f64;
            wasmop_e2e::eventually(
                Duration::from_secs(120),
                "every plugin loaded after the restart",
                || async {
                    let loaded = op.metric("wasmop_plugin_info", &[]).await?;
                    Ok((loaded >= k).then_some(()))
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pid = op.pid().unwrap_or(0);
            report.distinct_restarted = Some((added, rss_mib(pid)));
        }
        // Stop this mode's controllers before the next operator starts.
        let wc = format!("site-{mode}");
        futures::future::try_join_all(
            namespaces[..added]
                .iter()
                .map(|ns| delete_wc(&bench.admin, ns, &wc)),
        )
        .await?;
        // And the parents, so the next mode's controllers start from empty namespaces.
        for ns in &namespaces[..added] {
            let api: kube::Api<kube::api::DynamicObject> =
                kube::Api::namespaced_with(bench.admin.clone(), ns, &website::website_resource());
            api.delete_collection(&Default::default(), &Default::default())
                .await?;
        }
        drop(op);
        drop(kubeconfig);
        if distinct {
            report.distinct = out;
        } else {
            report.same = out;
        }
    }

    // Native: one process per namespace, one Website each.
    let native_ns = bench.namespaces("bench-native-scale", max).await?;
    let watches_before = bench.watches().await?;
    let mut procs = Vec::new();
    let mut added = 0;
    for &k in steps {
        eprintln!("bench: scale, native, {k} processes");
        let started = Instant::now();
        for ns in &native_ns[added..k] {
            let port = free_port()?;
            procs.push((bench.native(ns, port, 600)?, port));
            website::create_website(&bench.admin, ns, "w-native", json!({"content": "hello"}))
                .await?;
        }
        for ns in &native_ns[added..k] {
            wait_parent(&bench.admin, ns, "w-native").await?;
        }
        let add_s = started.elapsed().as_secs_f64();
        added = k;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let latency_ms = probe(bench, &native_ns[..k], &format!("native-{k}")).await?;
        report.native.push(Step {
            controllers: k,
            rss_mib: procs.iter().map(|(p, _)| rss_mib(p.pid())).sum(),
            watches: bench.watches().await? - watches_before,
            latency_ms,
            add_s,
        });
    }
    for (mut p, _) in procs {
        bench.supervisor.stop_proc(&mut p, Duration::from_secs(2));
    }
    Ok(report)
}
