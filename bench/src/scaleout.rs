//! Scale-out (`--shard`): the same WasmControllers (each in its own namespace, each with its
//! own plugin: the Rust plugin with a custom section naming it, so a compile each) run by 1,
//! 2 and 3 replicas. For each count, fresh replicas (fresh names and plugin caches) are started
//! first and see each other; then the WasmControllers are created and the parents' content
//! changed, and we measure how long until every parent shows it, each replica's RSS, watches
//! and WasmControllers. Then one more replica joins, and we measure the rebalance: from its
//! start to every WasmController running where the ring puts it.
//!
//! On 2 shared cores the replicas and the API server compete for the same CPU, so throughput
//! does not scale here; what scale-out buys is memory per replica.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use wasmop_e2e::RestartableOperator;
use wasmop_e2e::website;

use crate::e2e::{Bench, delete_wc, rss_mib};
use crate::scale::with_custom_section;

#[derive(Clone, Debug, Default)]
pub struct Replica {
    pub controllers: usize,
    pub rss_mib: f64,
    /// Watches it holds: `wasmop_watches` (parent and child kinds, as the teams), one plugin
    /// ConfigMap watch per WasmController, and its own two (WasmControllers, shard Leases).
    pub watches: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Count {
    pub replicas: Vec<Replica>,
    /// From creating the WasmControllers to every parent showing the new content.
    pub converge_s: f64,
    /// From one more replica's start to every WasmController running where the ring puts it.
    pub rebalance_s: f64,
    /// WasmControllers that moved in that rebalance.
    pub moved: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ScaleOutReport {
    pub controllers: usize,
    pub parents: usize,
    pub counts: Vec<Count>,
}

const CONTROLLER: &str = "site-shard";

/// Runs the phase: `controllers` WasmControllers with `parents_each` parents each, by 1, 2, …,
/// `max_replicas` replicas.
pub async fn run(
    bench: &Bench,
    controllers: usize,
    parents_each: usize,
    max_replicas: usize,
) -> Result<ScaleOutReport> {
    let namespaces = bench.namespaces("bench-shard", controllers).await?;
    let wasm = crate::plugin_bytes("website-rust")?;
    for ns in &namespaces {
        let plugin = with_custom_section(&wasm, &format!("shard-{ns}"));
        website::put_plugin(&bench.admin, ns, "plugin-shard", plugin).await?;
        for p in 0..parents_each {
            website::create_website(&bench.admin, ns, &format!("w-{p}"), json!({"content": "0"}))
                .await?;
        }
    }
    let account = Account::new(bench).await?;
    let mut report = ScaleOutReport {
        controllers,
        parents: controllers * parents_each,
        counts: Vec::new(),
    };
    for n in 1..=max_replicas {
        eprintln!("bench: scale-out, {n} replica(s), {controllers} WasmControllers");
        let mut replicas = Vec::new();
        for i in 0..n {
            replicas.push(account.replica(&format!("s{n}-r{i}")).await?);
        }
        wait_ring(&replicas, n).await?;
        let step = format!("{n}");
        let started = Instant::now();
        for ns in &namespaces {
            set_content(bench, ns, parents_each, &step).await?;
            website::apply_controller(
                &bench.admin,
                ns,
                CONTROLLER,
                "plugin-shard",
                json!({}),
                json!({}),
            )
            .await?;
        }
        wait_content(bench, &namespaces, parents_each, &step).await?;
        let converge_s = started.elapsed().as_secs_f64();
        wait_running(&replicas, controllers).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut measured = Vec::new();
        for op in &replicas {
            let running = op.metric("wasmop_controllers", &[]).await?;
            measured.push(Replica {
                controllers: running as usize,
                rss_mib: rss_mib(op.pid().unwrap_or(0)),
                watches: op.metric("wasmop_watches", &[]).await? + running + 2.0,
            });
        }
        // One more replica joins: the rebalance.
        let joined = Instant::now();
        let before: Vec<f64> = futures::future::try_join_all(
            replicas
                .iter()
                .map(|op| op.metric("wasmop_shard_moves_total", &[("direction", "out")])),
        )
        .await?;
        replicas.push(account.replica(&format!("s{n}-r{n}")).await?);
        wait_ring(&replicas, n + 1).await?;
        wait_balanced(&replicas, controllers).await?;
        let rebalance_s = joined.elapsed().as_secs_f64();
        let mut moved = 0.0;
        for (op, b) in replicas.iter().zip(before) {
            moved += op
                .metric("wasmop_shard_moves_total", &[("direction", "out")])
                .await?
                - b;
        }
        report.counts.push(Count {
            replicas: measured,
            converge_s,
            rebalance_s,
            moved: moved as usize,
        });
        // Clean slate for the next count: no WasmController, no replica.
        futures::future::try_join_all(
            namespaces
                .iter()
                .map(|ns| delete_wc(&bench.admin, ns, CONTROLLER)),
        )
        .await?;
        for op in &replicas {
            op.stop(wasmop_e2e::StopWith::Term, Duration::from_secs(30))
                .await?;
        }
    }
    for ns in &namespaces {
        let api: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(bench.admin.clone(), ns, &website::website_resource());
        api.delete_collection(&Default::default(), &Default::default())
            .await?;
    }
    Ok(report)
}

/// The operator's documented account with its shard-Lease Role.
struct Account {
    kubeconfig: std::path::PathBuf,
    namespace: String,
    _guard: crate::e2e::RemoveOnDrop,
}

impl Account {
    async fn new(bench: &Bench) -> Result<Self> {
        let kubeconfig = wasmop_e2e::operator_account(bench.cp, true).await?;
        let namespace = kube::config::Kubeconfig::read_from(&kubeconfig)?
            .contexts
            .first()
            .and_then(|c| c.context.as_ref()?.namespace.clone())
            .context("the account's kubeconfig names no namespace")?;
        let rbac = std::fs::read_to_string(
            wasmop_e2e::root().join("samples/operator/rbac-sharding.yaml"),
        )?
        .replace("wasmop-system", &namespace);
        wasmop_e2e::kubectl_stdin(bench.cp, &["apply", "-f", "-"], Some(&rbac))?;
        let guard = crate::e2e::RemoveOnDrop(kubeconfig.parent().map(std::path::Path::to_path_buf));
        Ok(Account {
            kubeconfig,
            namespace,
            _guard: guard,
        })
    }

    async fn replica(&self, name: &str) -> Result<RestartableOperator> {
        RestartableOperator::start_with(
            &self.kubeconfig,
            &[
                "--shard",
                &format!("--shard-name={name}"),
                &format!("--leader-elect-namespace={}", self.namespace),
            ],
        )
        .await
    }
}

/// Until every replica sees `n` ready shards.
async fn wait_ring(replicas: &[RestartableOperator], n: usize) -> Result<()> {
    for op in replicas {
        wasmop_e2e::eventually(
            Duration::from_secs(60),
            "every replica seeing the ring",
            || async {
                let ready = op.metric("wasmop_shards", &[("state", "ready")]).await?;
                Ok((ready >= n as f64).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Until the replicas together run `controllers` WasmControllers.
async fn wait_running(replicas: &[RestartableOperator], controllers: usize) -> Result<()> {
    wasmop_e2e::eventually(
        Duration::from_secs(300),
        "every WasmController running",
        || async {
            let mut sum = 0.0;
            for op in replicas {
                sum += op.metric("wasmop_controllers", &[]).await?;
            }
            Ok((sum == controllers as f64).then_some(()))
        },
    )
    .await
}

/// Until each replica runs exactly what is assigned to it, and all of them everything.
async fn wait_balanced(replicas: &[RestartableOperator], controllers: usize) -> Result<()> {
    wasmop_e2e::eventually(Duration::from_secs(300), "the rebalance", || async {
        let mut sum = 0.0;
        for op in replicas {
            let running = op.metric("wasmop_controllers", &[]).await?;
            let assigned = op.metric("wasmop_shard_controllers", &[]).await?;
            if running != assigned {
                return Ok(None);
            }
            sum += running;
        }
        Ok((sum == controllers as f64).then_some(()))
    })
    .await
}

async fn set_content(bench: &Bench, ns: &str, parents: usize, content: &str) -> Result<()> {
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(bench.admin.clone(), ns, &website::website_resource());
    for p in 0..parents {
        api.patch(
            &format!("w-{p}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"content": content}})),
        )
        .await?;
    }
    Ok(())
}

/// Until every parent's ConfigMap shows `content`.
async fn wait_content(
    bench: &Bench,
    namespaces: &[String],
    parents: usize,
    content: &str,
) -> Result<()> {
    wasmop_e2e::eventually(
        Duration::from_secs(600),
        "every parent converged",
        || async {
            for ns in namespaces {
                let cms: Api<ConfigMap> = Api::namespaced(bench.admin.clone(), ns);
                let done = cms
                    .list(&ListParams::default().labels("app.kubernetes.io/managed-by=wasmop"))
                    .await?
                    .items
                    .iter()
                    .filter(|cm| {
                        cm.data
                            .as_ref()
                            .and_then(|d| d.get("index.html"))
                            .map(String::as_str)
                            == Some(content)
                    })
                    .count();
                if done < parents {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}
