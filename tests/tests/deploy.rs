//! `deploy/`: the Helm chart lints and renders what the issue asks for, the committed manifests
//! are a fresh render, they apply server-side to the real control plane, and wasmop running
//! out of cluster with a token of the chart's own ServiceAccount (not the admin), with the
//! chart's flags, reconciles the Website sample. The alerts pass `promtool check rules` and
//! `promtool test rules`. helm and promtool are the pinned ones (`hack/tools.sh`).

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};
use wasmop_e2e::website::{WAIT, apply_controller, create_website, put_plugin, team_namespace};
use wasmop_e2e::{
    RestartableOperator, account_kubeconfig, cluster, eventually, kubectl, plugin, root, tool,
    wait_aggregated,
};

const CHART: &str = "deploy/chart/wasmop";

/// Runs a tool in the workspace root; fails with its output.
fn run(bin: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .current_dir(root())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{} {} failed:\n{text}", bin.display(), args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template` of the chart (release wasmop in wasmop-system) with `sets`, as documents.
fn render(sets: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec![
        "template",
        "wasmop",
        CHART,
        "--namespace",
        "wasmop-system",
        "--kube-version",
        "1.36.0",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let text = run(&tool("helm")?, &args)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

#[test]
fn chart_lints_clean() -> Result<()> {
    let out = run(&tool("helm")?, &["lint", "--strict", CHART])?;
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
    assert!(
        !out.contains("[WARNING]") && !out.contains("[ERROR]"),
        "{out}"
    );
    Ok(())
}

/// Every key of values.yaml has a `# --` comment and a row in the chart README's table, and
/// the table names no key that does not exist.
#[test]
fn every_chart_value_is_documented() -> Result<()> {
    let chart = root().join(CHART);
    let values = std::fs::read_to_string(chart.join("values.yaml"))?;
    let readme = std::fs::read_to_string(chart.join("README.md"))?;
    let mut path: Vec<(usize, String)> = Vec::new();
    let (mut keys, mut parents) = (BTreeSet::new(), BTreeSet::new());
    let mut commented = false;
    for line in values.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.starts_with("# --") {
            commented = true;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, rest)) = trimmed.split_once(':') else {
            continue;
        };
        if key.contains(' ') {
            continue; // inside a value (e.g. a map written out under resources)
        }
        path.retain(|(i, _)| *i < indent);
        let full = path
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key])
            .collect::<Vec<_>>()
            .join(".");
        // Inside a documented value (e.g. the maps under `resources`)?
        let documented_parent = (1..=path.len()).any(|n| {
            let ancestor: Vec<&str> = path[..n].iter().map(|(_, k)| k.as_str()).collect();
            keys.contains(&ancestor.join("."))
        });
        if commented {
            keys.insert(full.clone());
        } else if rest.trim().is_empty() && !documented_parent {
            parents.insert(full.clone());
        } else if !documented_parent {
            bail!("values.yaml: `{full}` has no `# --` comment above it");
        }
        commented = false;
        path.push((indent, key.to_string()));
    }
    let table: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| {
            l.strip_prefix("| `")?
                .split_once('`')
                .map(|(k, _)| k.to_string())
        })
        .collect();
    assert_eq!(
        keys, table,
        "values.yaml's documented keys and the README table differ"
    );
    assert!(keys.len() > 30, "only {} keys found: {keys:?}", keys.len());
    Ok(())
}

#[test]
fn committed_manifests_and_operator_rbac_are_a_fresh_render() -> Result<()> {
    let out = Command::new("bash")
        .arg(root().join("hack/render-deploy.sh"))
        .arg("--check")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn chart_renders_a_hardened_operator_with_opt_in_monitoring() -> Result<()> {
    let docs = render(&[])?;
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    for kind in ["ServiceMonitor", "PrometheusRule", "Namespace"] {
        assert!(!kinds.contains(kind), "{kind} is opt-in");
    }
    let deploy = find(&docs, "Deployment").context("Deployment")?;
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for (what, value) in [
        ("requests.cpu", &c["resources"]["requests"]["cpu"]),
        ("requests.memory", &c["resources"]["requests"]["memory"]),
        ("limits.memory", &c["resources"]["limits"]["memory"]),
    ] {
        assert!(value.is_string(), "resources.{what} missing");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--leader-elect",
        "--metrics-addr=0.0.0.0:8080",
        "--cache-dir=/var/cache/wasmop/plugins",
    ] {
        assert!(args.contains(&arg), "{arg} not in {args:?}");
    }
    let cache = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| v["name"] == "plugin-cache")
        .context("plugin-cache volume")?;
    assert!(cache["emptyDir"].is_object());
    assert_eq!(
        find(&docs, "PodDisruptionBudget").unwrap()["spec"]["minAvailable"],
        1
    );

    // Opt-in monitoring: the PrometheusRule carries exactly files/alerts.yaml.
    let docs = render(&["serviceMonitor.enabled=true", "prometheusRule.enabled=true"])?;
    let monitor = find(&docs, "ServiceMonitor").context("ServiceMonitor")?;
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let rule = find(&docs, "PrometheusRule").context("PrometheusRule")?;
    let alerts: Value = serde_yaml::from_str(&std::fs::read_to_string(
        root().join(CHART).join("files/alerts.yaml"),
    )?)?;
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);

    // One replica: no PodDisruptionBudget (it would block every drain).
    let docs = render(&["replicaCount=1"])?;
    assert!(find(&docs, "PodDisruptionBudget").is_none());
    Ok(())
}

#[test]
fn chart_renders_sharding_with_the_shard_lease_role_instead_of_leader_election() -> Result<()> {
    let docs = render(&["sharding.enabled=true", "replicaCount=3"])?;
    let deploy = find(&docs, "Deployment").context("Deployment")?;
    let args: Vec<&str> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--shard",
        "--shard-ring=wasmop",
        "--leader-elect-namespace=wasmop-system",
        "--leader-elect-lease-duration=15s",
    ] {
        assert!(args.contains(&arg), "{arg} not in {args:?}");
    }
    assert!(!args.contains(&"--leader-elect"), "{args:?}");
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0]["metadata"]["name"], "wasmop-shards");
    assert_eq!(roles[0]["metadata"]["namespace"], "wasmop-system");
    let rule = &roles[0]["rules"][0];
    assert_eq!(rule["resources"], json!(["leases"]));
    assert!(rule["resourceNames"].is_null());
    // Sharding one replica is a mistake the chart names.
    let one = render(&["sharding.enabled=true", "replicaCount=1"]);
    let error = format!("{:#}", one.expect_err("sharding with one replica renders"));
    assert!(error.contains("replicaCount >= 2"), "{error}");
    Ok(())
}

#[test]
fn alerts_pass_promtool_check_and_unit_tests() -> Result<()> {
    let promtool = tool("promtool")?;
    let out = run(
        &promtool,
        &["check", "rules", "deploy/chart/wasmop/files/alerts.yaml"],
    )?;
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let out = run(
        &promtool,
        &["test", "rules", "deploy/tests/alerts_test.yaml"],
    )?;
    assert!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

/// The chart's whole Helm life cycle against the real API server: install (CRDs from `crds/`
/// skipped when present), upgrade with a changed value, uninstall removing what it made.
#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart() -> Result<()> {
    let cp = cluster().await?;
    let client = cp.client().await?;
    let ns = localcp::create_test_namespace(&client, "helm").await?;
    let helm = tool("helm")?;
    let kubeconfig = cp.kubeconfig().to_string_lossy().into_owned();
    let helm_in = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", &kubeconfig, "--namespace", &ns];
        all.extend(args);
        run(&helm, &all)
    };
    helm_in(&["install", "ci-wasmop", CHART])?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicas = |d: Deployment| d.spec.and_then(|s| s.replicas);
    assert_eq!(replicas(deployments.get("ci-wasmop").await?), Some(2));
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    assert!(roles.get_opt("ci-wasmop").await?.is_some());

    helm_in(&["upgrade", "ci-wasmop", CHART, "--set", "replicaCount=3"])?;
    assert_eq!(replicas(deployments.get("ci-wasmop").await?), Some(3));
    let status = helm_in(&["status", "ci-wasmop"])?;
    assert!(
        status.contains("REVISION: 2") && status.contains("STATUS: deployed"),
        "{status}"
    );

    helm_in(&["uninstall", "ci-wasmop", "--wait"])?;
    assert!(deployments.get_opt("ci-wasmop").await?.is_none());
    assert!(roles.get_opt("ci-wasmop").await?.is_none());
    Ok(())
}

/// Every query of the Grafana dashboard is valid PromQL: promtool parses them as recording
/// rules (the dashboard's `$namespace`/`$controller` variables sit inside string literals).
#[test]
fn dashboard_queries_are_valid_promql() -> Result<()> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("deploy/dashboards/wasmop.json"),
    )?)?;
    let mut rules = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("a target without expr")?;
            rules.push(json!({"record": format!("dashboard:query_{}", rules.len()), "expr": expr}));
        }
    }
    assert!(rules.len() >= 15, "only {} queries", rules.len());
    let file = std::env::temp_dir().join(format!("wasmop-dashboard-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]}))?,
    )?;
    let checked = run(
        &tool("promtool")?,
        &["check", "rules", &file.to_string_lossy()],
    );
    let _ = std::fs::remove_file(&file);
    assert!(checked?.contains("SUCCESS"));
    Ok(())
}

/// The manifests apply server-side as they are; wasmop then runs as the chart's ServiceAccount
/// (a token of `wasmop-system/wasmop`), with the chart's arguments (leader election included),
/// and reconciles the Website sample; `/metrics` shows it.
#[tokio::test]
async fn manifests_apply_server_side_and_the_charts_account_reconciles_a_website() -> Result<()> {
    let cp = cluster().await?;
    let client = cp.client().await?;
    let manifests = root().join("deploy/manifests/wasmop.yaml");
    let out = kubectl(
        cp,
        &["apply", "--server-side", "-f", &manifests.to_string_lossy()],
    )?;
    for made in [
        "namespace/wasmop-system serverside-applied",
        "deployment.apps/wasmop serverside-applied",
        "clusterrole.rbac.authorization.k8s.io/wasmop serverside-applied",
        "role.rbac.authorization.k8s.io/wasmop-leader-election serverside-applied",
        "poddisruptionbudget.policy/wasmop serverside-applied",
    ] {
        assert!(out.contains(made), "{made} not in:\n{out}");
    }
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), "wasmop-system");
    let template = deploy.get("wasmop").await?.spec.context("spec")?;
    assert_eq!(template.replicas, Some(2));
    // No kubelet runs here, so no Pod is ever made from it: ask the API server to admit one as
    // a dry run, under the namespace's Pod Security `restricted` level.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), "wasmop-system");
    let pod = k8s_openapi::api::core::v1::Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("wasmop-admission-check".into()),
            ..Default::default()
        },
        spec: template.template.spec,
        ..Default::default()
    };
    pods.create(
        &kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        },
        &pod,
    )
    .await
    .context("the chart's Pod is not admitted under Pod Security restricted")?;

    kubectl(
        cp,
        &[
            "apply",
            "-f",
            &root()
                .join("samples/website/operator-rbac.yaml")
                .to_string_lossy(),
        ],
    )?;
    wait_aggregated(&client, "wasmop-release-finalizers").await?;
    let kubeconfig = account_kubeconfig(cp, "wasmop-system", "wasmop")?;
    // Not the admin: the account may not, e.g., list Secrets (`can-i` exits 1 and says no).
    let can_i = Command::new(cp.kubectl_path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["auth", "can-i", "list", "secrets", "--all-namespaces"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&can_i.stdout).trim(), "no");
    let args = chart_run_args()?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let op = RestartableOperator::start_with(&kubeconfig, &args).await?;

    let ns = team_namespace(cp, &client, "deploy").await?;
    put_plugin(&client, &ns, "website", plugin("website-rust")).await?;
    apply_controller(&client, &ns, "website", "website", json!({}), json!({})).await?;
    create_website(
        &client,
        &ns,
        "home",
        json!({"content": "hello from the chart"}),
    )
    .await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the Website's ConfigMap and Deployment", || async {
        let page = configmaps
            .get_opt("home-content")
            .await?
            .and_then(|cm| cm.data?.get("index.html").cloned());
        let made = deployments.get_opt("home").await?.is_some();
        Ok((page.as_deref() == Some("hello from the chart") && made).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_tail(30)))?;

    // A parent that cannot progress (its ConfigMap's name is taken by an object not its own:
    // ChildConflict) shows as a failing parent.
    let foreign: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "taken-content"}, "data": {"owner": "someone else"}
    }))?;
    configmaps.create(&Default::default(), &foreign).await?;
    create_website(&client, &ns, "taken", json!({"content": "mine?"})).await?;
    let label = format!("{ns}/website");
    eventually(WAIT, "one failing parent in /metrics", || async {
        let failing = op
            .metric("wasmop_parents_failing", &[("controller", &label)])
            .await?;
        Ok((failing == 1.0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_tail(30)))?;

    let metrics = op.metrics().await?;
    let m = |name: &str, labels: &[(&str, &str)]| wasmop_e2e::metric_in(&metrics, name, labels);
    assert_eq!(m("wasmop_leader", &[]), 1.0, "{metrics}");
    assert!(
        m(
            "wasmop_reconciles_total",
            &[("controller", &label), ("result", "success")]
        ) >= 1.0
    );
    assert_eq!(m("wasmop_plugin_info", &[("controller", &label)]), 1.0);
    assert_eq!(m("wasmop_controller_ready", &[("controller", &label)]), 1.0);
    assert!(m("wasmop_plugin_memory_budget_bytes", &[]) > 0.0);
    let lease = kubectl(
        cp,
        &[
            "get",
            "lease",
            "wasmop",
            "-n",
            "wasmop-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    )?;
    assert!(!lease.is_empty(), "no holder of the chart's Lease");
    Ok(())
}

/// The rendered Deployment's `wasmop run` arguments, minus those a process on this machine must
/// set itself (address, cache directory: the harness picks free ones).
fn chart_run_args() -> Result<Vec<String>> {
    let docs = render(&[])?;
    let deploy = find(&docs, "Deployment").context("Deployment")?;
    Ok(deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| {
            *a != "run" && !a.starts_with("--metrics-addr") && !a.starts_with("--cache-dir")
        })
        .filter(|a| !a.starts_with("--plugin-memory-budget-mib"))
        .map(str::to_string)
        .collect())
}

/// `plugins.hosts`, `insecureHosts` and `publicKeys` reach `wasmop run` as its flags, the keys
/// through a ConfigMap mounted read-only; none of it renders by default.
#[test]
fn chart_passes_plugin_hosts_and_signing_keys_to_the_operator() -> Result<()> {
    let args_of = |docs: &[Value]| -> Vec<String> {
        find(docs, "Deployment").expect("a Deployment")["spec"]["template"]["spec"]["containers"][0]
            ["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect()
    };
    let default = render(&[])?;
    assert!(
        !args_of(&default)
            .iter()
            .any(|a| a.starts_with("--plugin-host")),
        "no network sources unless the admin lists hosts"
    );
    assert!(find(&default, "ConfigMap").is_none());
    let docs = render(&[
        "plugins.hosts={registry.example.com,*.plugins.example.com}",
        "plugins.insecureHosts={registry.example.com}",
        "plugins.publicKeys[0]=KEY-ONE",
    ])?;
    let args = args_of(&docs);
    for want in [
        "--plugin-host=registry.example.com",
        "--plugin-host=*.plugins.example.com",
        "--insecure-plugin-host=registry.example.com",
        "--plugin-public-key=/etc/wasmop/plugin-keys/key-0.pem",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
    let keys = find(&docs, "ConfigMap").expect("the keys' ConfigMap");
    assert_eq!(keys["metadata"]["name"], "wasmop-plugin-keys");
    assert_eq!(
        keys["data"]["key-0.pem"].as_str().map(str::trim),
        Some("KEY-ONE")
    );
    let pod = &find(&docs, "Deployment").expect("a Deployment")["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "plugin-keys")
        .expect("the keys are mounted");
    assert_eq!(mount["mountPath"], "/etc/wasmop/plugin-keys");
    assert_eq!(mount["readOnly"], true);
    Ok(())
}
