//! Helpers for the sharding tests (`tests/tests/sharding*.rs`): a control plane of the test's
//! own with an audit log, the operator's documented account with its shard-Lease Role,
//! replicas started with `--shard`, teams with one Website WasmController each, parents, the
//! assignment as `status.shard` shows it, and the audit log's proof that no two replicas wrote
//! for one WasmController at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use localcp::{ControlPlane, Options};
use serde_json::{Value, json};
use wasmop::cluster::ring::{self, Ring};

use crate::website::{
    apply_controller, create_website, put_plugin, team_namespace, wasmcontroller_resource,
    website_resource,
};
use crate::{
    RestartableOperator, account_kubeconfig, eventually, install_crds, kubectl_stdin, plugin, root,
    wait_aggregated,
};

/// Lease timings of the replicas (short, so a takeover is quick).
pub const LEASE: Duration = Duration::from_secs(8);
pub const RENEW: Duration = Duration::from_secs(5);
pub const RETRY: Duration = Duration::from_secs(1);

/// How long the tests wait for a state that depends on Leases and plugin loads.
pub const SETTLE: Duration = Duration::from_secs(120);

/// Every write at Metadata level (who, what, when, with which user agent: the operator names
/// its shard there), the assignment writes (`wasmcontrollers/status`) with their body; no
/// Lease renewals (they are not writes of a WasmController).
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: Request
    resources: [{group: wasmop.dev, resources: [wasmcontrollers/status]}]
    verbs: [patch, update]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"#;

/// A control plane of the test's own, its audit log and the operator's namespace.
pub struct Cluster {
    pub cp: ControlPlane,
    pub client: kube::Client,
    pub audit: PathBuf,
    /// The operator's namespace (its account, the shard Leases).
    pub op_ns: String,
    dir: PathBuf,
}

impl Cluster {
    /// Starts a control plane with an audit log, installs the CRDs and the operator's account
    /// (`samples/operator/rbac.yaml` and `rbac-sharding.yaml`, the Website release rule).
    ///
    /// # Errors
    /// The control plane does not start, or applying the RBAC fails.
    pub async fn start(name: &str) -> Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "wasmop-e2e-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        let (policy, audit) = (dir.join("policy.yaml"), dir.join("audit.log"));
        std::fs::write(&policy, AUDIT_POLICY)?;
        let cp = ControlPlane::start(Options {
            extra_apiserver_args: vec![
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", audit.display()),
            ],
            reuse_from_env: false,
            ..Options::default()
        })
        .await?;
        install_crds(&cp)?;
        let client = cp.client().await?;
        let op_ns = localcp::create_test_namespace(&client, "wasmop-system").await?;
        for file in [
            "samples/operator/rbac.yaml",
            "samples/operator/rbac-sharding.yaml",
        ] {
            let rbac = std::fs::read_to_string(root().join(file))?.replace("wasmop-system", &op_ns);
            kubectl_stdin(&cp, &["apply", "-f", "-"], Some(&rbac))?;
        }
        let kinds = std::fs::read_to_string(root().join("samples/website/operator-rbac.yaml"))?;
        kubectl_stdin(&cp, &["apply", "-f", "-"], Some(&kinds))?;
        wait_aggregated(&client, "wasmop-release-finalizers").await?;
        Ok(Cluster {
            cp,
            client,
            audit,
            op_ns,
            dir,
        })
    }

    /// Starts replica `name` (`--shard --shard-name=<name>`) with a token of its own, through
    /// `kubeconfig` when given (a fault proxy's), and waits until it holds its Lease.
    ///
    /// # Errors
    /// It does not become ready within 60 s.
    pub async fn replica(
        &self,
        name: &str,
        kubeconfig: Option<&Path>,
    ) -> Result<RestartableOperator> {
        let own = account_kubeconfig(&self.cp, &self.op_ns, "wasmop")?;
        let kubeconfig = kubeconfig.unwrap_or(&own);
        let args = [
            "--shard".to_string(),
            format!("--shard-name={name}"),
            format!("--leader-elect-namespace={}", self.op_ns),
            format!("--leader-elect-lease-duration={}s", LEASE.as_secs()),
            format!("--leader-elect-renew-deadline={}s", RENEW.as_secs()),
            format!("--leader-elect-retry-period={}s", RETRY.as_secs()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RestartableOperator::start_with(kubeconfig, &args).await
    }

    /// `n` team namespaces, each with the Website sample's account, plugin and WasmController
    /// `website`.
    ///
    /// # Errors
    /// Any API call fails.
    pub async fn teams(&self, n: usize) -> Result<Vec<String>> {
        let wasm = plugin("website-rust");
        let mut teams = Vec::new();
        for i in 0..n {
            let ns = team_namespace(&self.cp, &self.client, &format!("team{i}")).await?;
            put_plugin(&self.client, &ns, "website", wasm.clone()).await?;
            apply_controller(
                &self.client,
                &ns,
                "website",
                "website",
                json!({}),
                json!({}),
            )
            .await?;
            teams.push(ns);
        }
        Ok(teams)
    }

    /// The ring keys of the teams' WasmControllers.
    pub fn keys(teams: &[String]) -> Vec<String> {
        teams.iter().map(|ns| ring::key(ns, "website")).collect()
    }

    /// What `status.shard` says of every WasmController: ring key → (shard, running).
    ///
    /// # Errors
    /// The list fails.
    pub async fn assignment(&self) -> Result<BTreeMap<String, (String, bool)>> {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &wasmcontroller_resource());
        let mut out = BTreeMap::new();
        for wc in api.list(&ListParams::default()).await? {
            let shard = &wc.data["status"]["shard"];
            let key = ring::key(
                &wc.metadata.namespace.clone().unwrap_or_default(),
                &wc.metadata.name.clone().unwrap_or_default(),
            );
            out.insert(
                key,
                (
                    shard["name"].as_str().unwrap_or_default().to_string(),
                    !shard["since"].is_null(),
                ),
            );
        }
        Ok(out)
    }

    /// Waits until every key runs on the shard the ring over `live` puts it on; returns the
    /// assignment and how long that took.
    ///
    /// # Errors
    /// It does not happen within [`SETTLE`] (the error shows the difference).
    pub async fn wait_assigned(
        &self,
        keys: &[String],
        live: &[&str],
    ) -> Result<(BTreeMap<String, String>, Duration)> {
        let began = Instant::now();
        let want = expected(keys, live);
        let last = std::sync::Mutex::new(BTreeMap::new());
        let got = eventually(SETTLE, &format!("the assignment over {live:?}"), || async {
            let now = self.assignment().await?;
            *last.lock().unwrap() = now.clone();
            let ok = want
                .iter()
                .all(|(k, shard)| now.get(k) == Some(&(shard.clone(), true)));
            Ok(ok.then_some(()))
        })
        .await;
        if let Err(e) = got {
            let last = last.into_inner().unwrap();
            let wrong: Vec<String> = want
                .iter()
                .filter(|(k, s)| last.get(*k) != Some(&((*s).clone(), true)))
                .map(|(k, s)| format!("{k}: want {s}, got {:?}", last.get(k)))
                .collect();
            bail!("{e}\n{}", wrong.join("\n"));
        }
        Ok((want, began.elapsed()))
    }

    /// Creates `n` Websites `site-<i>` spread round-robin over `teams`, with content `step-0`.
    ///
    /// # Errors
    /// A create fails.
    pub async fn parents(&self, teams: &[String], n: usize) -> Result<Vec<(String, String)>> {
        let mut parents = Vec::new();
        for i in 0..n {
            let ns = teams[i % teams.len()].clone();
            let name = format!("site-{i}");
            create_website(&self.client, &ns, &name, json!({"content": "step-0"})).await?;
            parents.push((ns, name));
        }
        Ok(parents)
    }

    /// Sets every parent's content to `step-<step>`.
    ///
    /// # Errors
    /// A patch fails.
    pub async fn set_step(&self, parents: &[(String, String)], step: usize) -> Result<()> {
        for (ns, name) in parents {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &website_resource());
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"content": format!("step-{step}")}})),
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until every parent's ConfigMap says `step-<step>` and each team namespace holds
    /// exactly its parents' ConfigMaps (nothing missing, nothing extra); returns how long.
    ///
    /// # Errors
    /// It does not happen within [`SETTLE`] (the error names what differs).
    pub async fn wait_converged(
        &self,
        parents: &[(String, String)],
        step: usize,
    ) -> Result<Duration> {
        let began = Instant::now();
        let want = format!("step-{step}");
        let mut by_ns: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (ns, name) in parents {
            by_ns
                .entry(ns)
                .or_default()
                .insert(format!("{name}-content"));
        }
        eventually(SETTLE, &format!("every parent at {want}"), || async {
            for (ns, names) in &by_ns {
                let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                let list = cms
                    .list(&ListParams::default().labels("app.kubernetes.io/managed-by=wasmop"))
                    .await?;
                let mut seen = BTreeSet::new();
                for cm in list {
                    let page = cm.data.as_ref().and_then(|d| d.get("index.html"));
                    if page != Some(&want) {
                        return Ok(None);
                    }
                    seen.insert(cm.metadata.name.unwrap_or_default());
                }
                if seen != *names {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await?;
        Ok(began.elapsed())
    }
}

impl Cluster {
    /// A client acting as `user` (the admin impersonating), as `kubectl --as` would.
    ///
    /// # Errors
    /// The kubeconfig cannot be read.
    pub async fn impersonating(&self, user: &str) -> Result<kube::Client> {
        let file = kube::config::Kubeconfig::read_from(self.cp.kubeconfig())?;
        let mut config =
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await?;
        config.auth_info.impersonate = Some(user.into());
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("WASMOP_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where the ring over `live` puts each key.
pub fn expected(keys: &[String], live: &[&str]) -> BTreeMap<String, String> {
    let ring = Ring::new(live.iter().copied());
    keys.iter()
        .map(|k| (k.clone(), ring.owner(k).unwrap_or_default().to_string()))
        .collect()
}

/// Keys whose shard differs between two assignments.
pub fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    before
        .iter()
        .filter(|(k, s)| after.get(*k) != Some(s))
        .map(|(k, _)| k.clone())
        .collect()
}

/// One write for a WasmController's namespace, from the audit log.
#[derive(Debug, Clone)]
struct Write {
    when: String,
    shard: String,
    what: String,
    assignment: Option<Assignment>,
}

/// A write of `status.shard`.
#[derive(Debug, Clone, PartialEq)]
enum Assignment {
    /// The writer took the WasmController (`since` set).
    Takes,
    /// The writer handed it over to this shard (no `since`).
    HandsOver(String),
}
/// What the audit log says about each team namespace's WasmController.
#[derive(Debug, Default)]
pub struct Audit {
    /// Namespace → the shards that ran it, in order.
    pub owners: BTreeMap<String, Vec<String>>,
    /// Namespace → writes by a replica that did not hold the WasmController at the time.
    pub violations: BTreeMap<String, Vec<String>>,
    /// For each move: from the old owner's last write (its handover, when it handed over) to
    /// the new owner's taking it.
    pub gaps: Vec<Duration>,
    /// Namespace → every write, in order (to show where a violation happened).
    pub timelines: BTreeMap<String, Vec<String>>,
}

/// Reads the audit log at `path` for the writes of replicas (user agent `wasmop/… shard/<name>`)
/// in `teams`, and checks each against the assignment writes: a replica writes for a
/// WasmController only after it took it (`since` set) and before it or another one handed it
/// over or took it ([`check`]). The
/// writes that lost a race to take a WasmController (409 Conflict on `status.shard`) are the
/// assignment working and not counted.
///
/// # Errors
/// The log cannot be read or parsed.
pub fn audit(path: &Path, teams: &[String]) -> Result<Audit> {
    let teams: BTreeSet<&str> = teams.iter().map(String::as_str).collect();
    let mut writes: BTreeMap<String, Vec<Write>> = BTreeMap::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let event: Value = serde_json::from_str(line)?;
        if event["stage"] != "ResponseComplete" {
            continue;
        }
        let Some(shard) = event["userAgent"]
            .as_str()
            .and_then(|ua| ua.split(" shard/").nth(1))
        else {
            continue;
        };
        let ns = event["objectRef"]["namespace"].as_str().unwrap_or_default();
        if !teams.contains(ns) {
            continue;
        }
        let object = &event["objectRef"];
        let assignment = (object["resource"] == "wasmcontrollers"
            && object["subresource"] == "status")
            .then(|| &event["requestObject"]["status"]["shard"])
            .filter(|s| s.is_object())
            .map(|s| match s["since"].is_null() {
                false => Assignment::Takes,
                true => Assignment::HandsOver(s["name"].as_str().unwrap_or_default().into()),
            });
        let code = event["responseStatus"]["code"].as_i64().unwrap_or(0);
        if assignment.is_some() && code == 409 {
            continue;
        }
        writes.entry(ns.to_string()).or_default().push(Write {
            when: event["requestReceivedTimestamp"]
                .as_str()
                .context("requestReceivedTimestamp")?
                .to_string(),
            shard: shard.trim().to_string(),
            what: format!(
                "{} {}{} {} ({code}){}",
                event["verb"].as_str().unwrap_or_default(),
                object["resource"].as_str().unwrap_or_default(),
                object["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                object["name"].as_str().unwrap_or_default(),
                event["requestObject"]["status"]
                    .as_object()
                    .map(|s| format!(" status {:?}", s.keys().collect::<Vec<_>>()))
                    .unwrap_or_default()
            ),
            assignment: assignment.filter(|_| code < 300),
        });
    }
    let mut out = Audit::default();
    for (ns, mut list) in writes {
        // RFC 3339 with microseconds, always the same number of digits: sorts as text.
        list.sort_by(|a, b| a.when.cmp(&b.when));
        check(&ns, &list, &mut out);
    }
    Ok(out)
}

/// Follows one WasmController's writes: a take (always allowed: it is conditional) makes its
/// writer the runner; a handover, by the runner or the shard it was handed to, leaves it to
/// the named shard; any other write must be the runner's.
fn check(ns: &str, list: &[Write], out: &mut Audit) {
    let mut runner: Option<&str> = None;
    let mut designee: Option<&str> = None;
    let mut last: Option<(&str, &str)> = None; // the last runner's last write
    for w in list {
        let allowed = match &w.assignment {
            Some(Assignment::Takes) => {
                if let Some((before, when)) = last
                    && before != w.shard
                {
                    out.gaps.push(gap(when, &w.when));
                }
                let owners = out.owners.entry(ns.into()).or_default();
                if owners.last() != Some(&w.shard) {
                    owners.push(w.shard.clone());
                }
                (runner, designee) = (Some(w.shard.as_str()), None);
                true
            }
            Some(Assignment::HandsOver(to)) => {
                let ok = runner == Some(w.shard.as_str()) || designee == Some(w.shard.as_str());
                (runner, designee) = (None, Some(to.as_str()));
                ok
            }
            None => runner == Some(w.shard.as_str()),
        };
        let mark = match &w.assignment {
            Some(Assignment::Takes) => " TAKES".to_string(),
            Some(Assignment::HandsOver(to)) => format!(" HANDS OVER to {to}"),
            None => String::new(),
        };
        out.timelines
            .entry(ns.into())
            .or_default()
            .push(format!("{} {} {}{mark}", w.when, w.shard, w.what));
        if !allowed {
            out.violations.entry(ns.into()).or_default().push(format!(
                "{} {} {}{mark} while {} ran it",
                w.when,
                w.shard,
                w.what,
                runner.unwrap_or("nobody")
            ));
        }
        if runner == Some(w.shard.as_str()) || w.assignment.is_some() {
            last = Some((&w.shard, &w.when));
        }
    }
}

fn gap(from: &str, to: &str) -> Duration {
    let parse = |t: &str| t.parse::<k8s_openapi::jiff::Timestamp>().ok();
    match (parse(from), parse(to)) {
        (Some(a), Some(b)) => Duration::try_from(b.duration_since(a)).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

/// Percentiles of `d` for a printed summary: (min, median, max).
pub fn spread(d: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut d = d.to_vec();
    d.sort();
    Some((*d.first()?, d[d.len() / 2], *d.last()?))
}
