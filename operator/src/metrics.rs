//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! Names follow Prometheus' conventions: a `wasmop_` prefix, `_total` counters, `_seconds` and
//! `_bytes` units, an `_info` gauge for what is loaded. docs/operations.md lists every metric;
//! the alerts in deploy/chart/wasmop/files/alerts.yaml and the dashboard in
//! deploy/dashboards/wasmop.json use them (`promtool test rules` checks the alerts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric the operator exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The full name of every metric registered (`wasmop_reconciles_total`, ...): what the
    /// docs may name (a test checks docs/operations.md against it).
    pub names: Vec<String>,
    /// Reconciles by controller (`namespace/name`) and result (`success` or an error label).
    pub reconciles: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    pub plugin_call_seconds: HistogramVec,
    /// Plugin failures by controller and reason (timeout, trap, out_of_memory, invalid_output, ...).
    pub plugin_failures: IntCounterVec,
    /// Server-side applies sent, by controller and target (`child`, `status`, `patch`, `finalizer`).
    pub applies: IntCounterVec,
    /// Applies skipped because they would change nothing: the object is still what our last
    /// identical apply made, or its managedFields and values show it already has it.
    pub applies_skipped: IntCounterVec,
    pub prunes: IntCounterVec,
    /// Controllers running.
    pub controllers: IntGauge,
    /// `wasmop_plugin_info{controller, sha256} 1` for each plugin loaded.
    pub plugin_info: IntGaugeVec,
    /// 1 when the controller runs (its `Ready` condition is True), by controller.
    pub controller_ready: IntGaugeVec,
    /// Parents whose last reconcile failed, by controller (`Degraded` when above 0).
    pub parents_failing: IntGaugeVec,
    /// Linear memory reserved by the plugins loaded, and the operator's budget for it.
    pub plugin_memory_reserved_bytes: IntGauge,
    pub plugin_memory_budget_bytes: IntGauge,
    /// Plugin calls running now, and how many may run at once.
    pub plugin_calls_running: IntGauge,
    pub plugin_call_slots: IntGauge,
    /// 1 while this replica holds the leader Lease, or its shard Lease (`--shard`), or runs
    /// without either.
    pub leader: IntGauge,
    /// Watches open, by `kind` (`Kind.apiVersion`) and `namespace`: each opened as a team's
    /// account in its namespace, shared by the controllers of that account.
    pub watches: IntGaugeVec,
    /// Objects held in the watch caches, by `kind` and `namespace`.
    pub cached_objects: IntGaugeVec,
    pub watch_errors: IntCounterVec,
    /// Reconciles postponed by the per-parent rate limit, by controller.
    pub reconciles_throttled: IntCounterVec,
    /// `--shard`: the assignment of WasmControllers to replicas.
    pub shard: ShardMetrics,
}

/// The metrics of `--shard`.
#[derive(Clone)]
pub struct ShardMetrics {
    /// WasmControllers assigned to this replica (`shard` is its name).
    pub controllers: IntGaugeVec,
    /// WasmControllers this replica took (`in`) or handed over (`out`), by reason (`new`,
    /// `rebalance`, `dead_shard`).
    pub moves: IntCounterVec,
    /// From deciding to hand a WasmController over to the handover written (its controller
    /// stopped in between).
    pub drain_seconds: Histogram,
    /// The longest any WasmController has been without a ready shard running it, as this
    /// replica sees it (0 when none).
    pub unassigned_seconds: Gauge,
    /// The shard Lease duration (the alert compares the above with it).
    pub lease_duration_seconds: Gauge,
    /// The ring's shards by state (`ready`, `expired`, `uncertain`, `dead`), as this replica
    /// sees them.
    pub states: IntGaugeVec,
}

impl ShardMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        let seconds =
            |name: &str, help: &str| r.register(Gauge::new(name, help).expect("valid metric"));
        ShardMetrics {
            controllers: r.gauges(
                "shard_controllers",
                "WasmControllers assigned to this shard",
                &["shard"],
            ),
            moves: r.counters(
                "shard_moves_total",
                "WasmControllers taken (in) or handed over (out), by reason",
                &["direction", "reason"],
            ),
            drain_seconds: r.register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shard_drain_duration_seconds",
                        "From deciding to hand a WasmController over to the handover written",
                    )
                    .buckets(DRAIN_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            unassigned_seconds: seconds(
                "shard_unassigned_seconds",
                "Longest time any WasmController has been without a ready shard running it",
            ),
            lease_duration_seconds: seconds(
                "shard_lease_duration_seconds",
                "The shard Lease duration",
            ),
            states: r.gauges(
                "shards",
                "The ring's shards by state, as this replica sees them",
                &["state"],
            ),
        }
    }
}

/// Drain time buckets, in seconds: stopping a controller waits for its in-flight reconciles
/// (a plugin call is at most 60 s; the stop gives up after 30 s).
pub const DRAIN_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0,
];

/// Plugin call latency buckets, in seconds: from a fast Rust plugin (~50 µs) up to the longest
/// `spec.plugin.limits.timeoutMs` the CRD accepts (60 s), so a timeout lands in a bucket of its
/// own instead of `+Inf`.
pub const PLUGIN_CALL_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    15.0, 60.0,
];

/// Whole reconcile latency buckets, in seconds: a reconcile is a plugin call plus API requests
/// (dry run, applies, prunes), so up to twice the longest plugin timeout.
pub const RECONCILE_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 120.0,
];

/// Creates metrics and registers each once in its registry.
struct Registrar<'a>(&'a Registry, std::cell::RefCell<Vec<String>>);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.1
            .borrow_mut()
            .extend(m.desc().iter().map(|d| format!("wasmop_{}", d.fq_name)));
        self.0
            .register(Box::new(m.clone()))
            .expect("registered once");
        m
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// Latency histograms by controller.
    fn histograms(&self, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets);
        self.register(HistogramVec::new(opts, &["controller"]).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("wasmop".into()), None).expect("valid prefix");
        let r = Registrar(&registry, Default::default());
        let (by, hist) = (
            |n, h, l| r.counters(n, h, l),
            |n, h, b| r.histograms(n, h, b),
        );
        let (gauge, gauges) = (|n, h| r.gauge(n, h), |n, h, l| r.gauges(n, h, l));
        Metrics {
            watches: gauges(
                "watches",
                "Watches open, by kind and namespace (shared per team account)",
                &["kind", "namespace"],
            ),
            cached_objects: gauges(
                "cached_objects",
                "Objects in the watch caches, by kind and namespace",
                &["kind", "namespace"],
            ),
            reconciles_throttled: by(
                "reconciles_throttled_total",
                "Reconciles postponed by the per-parent rate limit",
                &["controller"],
            ),
            reconciles: by(
                "reconciles_total",
                "Reconciles by controller and result",
                &["controller", "result"],
            ),
            reconcile_seconds: hist(
                "reconcile_duration_seconds",
                "Whole reconcile latency",
                RECONCILE_BUCKETS.to_vec(),
            ),
            plugin_call_seconds: hist(
                "plugin_call_duration_seconds",
                "Plugin call latency",
                PLUGIN_CALL_BUCKETS.to_vec(),
            ),
            plugin_failures: by(
                "plugin_failures_total",
                "Plugin failures by controller and reason",
                &["controller", "reason"],
            ),
            applies: by(
                "applies_total",
                "Server-side applies sent",
                &["controller", "target"],
            ),
            applies_skipped: by(
                "applies_skipped_total",
                "Applies skipped: they would change nothing (unchanged since our last apply, or the live object already has it)",
                &["controller", "target"],
            ),
            prunes: by(
                "prunes_total",
                "Children deleted because the plugin no longer returns them",
                &["controller"],
            ),
            watch_errors: by(
                "watch_errors_total",
                "Watch errors by kind (retried with backoff)",
                &["kind"],
            ),
            controllers: gauge("controllers", "WasmControllers running"),
            plugin_info: gauges(
                "plugin_info",
                "The plugin each controller runs (value 1), by controller and sha256",
                &["controller", "sha256"],
            ),
            controller_ready: gauges(
                "controller_ready",
                "1 when the controller runs (Ready condition True)",
                &["controller"],
            ),
            parents_failing: gauges(
                "parents_failing",
                "Parents whose last reconcile failed (Degraded when above 0)",
                &["controller"],
            ),
            plugin_memory_reserved_bytes: gauge(
                "plugin_memory_reserved_bytes",
                "Plugin linear memory reserved by the plugins loaded (memoryMiB x instances)",
            ),
            plugin_memory_budget_bytes: gauge(
                "plugin_memory_budget_bytes",
                "The operator's plugin memory budget (--plugin-memory-budget-mib)",
            ),
            plugin_calls_running: gauge("plugin_calls_running", "Plugin calls running now"),
            plugin_call_slots: gauge(
                "plugin_call_slots",
                "Plugin calls that may run at once (--max-concurrent-plugin-calls)",
            ),
            leader: gauge(
                "leader",
                "1 while this replica holds its Lease (leader or shard) or runs without one",
            ),
            shard: ShardMetrics::new(&r),
            // After every family above (the shard ones too) has been registered.
            names: r.1.take(),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

/// What `/readyz` reports: a replica is ready when it leads and the manager's first list of
/// WasmControllers is in (its watches are synced), or when it is a standby waiting for the
/// Lease (ready to take over; a standby that were never ready would stall every rolling update).
#[derive(Clone, Default)]
pub struct Readiness {
    /// Set by the manager once its WasmController watch has listed everything.
    pub synced: Arc<AtomicBool>,
    /// 0 starting, [`STANDBY`], [`LEADER`] or [`SHARD`].
    role: Arc<AtomicU8>,
    /// `--shard`: the replica holds its shard Lease.
    holding: Arc<AtomicBool>,
}

const STANDBY: u8 = 1;
const LEADER: u8 = 2;
const SHARD: u8 = 3;

impl Readiness {
    /// This replica waits for the leader Lease.
    pub fn standby(&self) {
        self.role.store(STANDBY, Ordering::Relaxed);
    }

    /// This replica leads (or runs without leader election).
    pub fn leader(&self) {
        self.role.store(LEADER, Ordering::Relaxed);
    }

    /// This replica is a shard (`--shard`): ready while it holds its shard Lease (`tenures`
    /// says 0 when it does not) and its WasmControllers are listed.
    pub fn shard(&self, mut tenures: tokio::sync::watch::Receiver<u64>) {
        self.role.store(SHARD, Ordering::Relaxed);
        let holding = self.holding.clone();
        tokio::spawn(async move {
            loop {
                holding.store(*tenures.borrow_and_update() != 0, Ordering::Relaxed);
                if tenures.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// `/readyz`'s status and body.
    fn probe(&self) -> (StatusCode, &'static str) {
        if self.role.load(Ordering::Relaxed) == SHARD {
            return match (
                self.holding.load(Ordering::Relaxed),
                self.synced.load(Ordering::Relaxed),
            ) {
                (true, true) => (
                    StatusCode::OK,
                    "ok: shard, holding its Lease, watches synced\n",
                ),
                (true, false) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "starting: shard, watches not synced yet\n",
                ),
                (false, _) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: shard, does not hold its shard Lease (taking it, or cannot renew it)\n",
                ),
            };
        }
        match (
            self.role.load(Ordering::Relaxed),
            self.synced.load(Ordering::Relaxed),
        ) {
            (LEADER, true) => (StatusCode::OK, "ok: leader, watches synced\n"),
            (LEADER, false) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: leader, watches not synced yet\n",
            ),
            (STANDBY, _) => (
                StatusCode::OK,
                "ok: standby, waiting for the leader Lease\n",
            ),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        }
    }
}

/// Called before each `/metrics` scrape to set gauges read from elsewhere (plugin memory, calls).
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Serves `/metrics`, `/healthz` and `/readyz` (see [`Readiness`]).
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    refresh: Refresh,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, readiness, refresh) =
                (metrics.clone(), readiness.clone(), refresh.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (status, body) = match req.uri().path() {
                            "/metrics" => {
                                refresh(&metrics);
                                (StatusCode::OK, metrics.render())
                            }
                            "/healthz" => (StatusCode::OK, "ok\n".into()),
                            "/readyz" => {
                                let (status, body) = readiness.probe();
                                (status, body.into())
                            }
                            _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_is_ready_for_a_synced_leader_and_for_a_standby_only() {
        let r = Readiness::default();
        assert_eq!(r.probe().0, StatusCode::SERVICE_UNAVAILABLE);
        r.standby();
        assert_eq!(r.probe().0, StatusCode::OK);
        assert!(r.probe().1.contains("standby"));
        r.leader();
        assert_eq!(r.probe().0, StatusCode::SERVICE_UNAVAILABLE);
        r.synced.store(true, Ordering::Relaxed);
        assert_eq!(r.probe(), (StatusCode::OK, "ok: leader, watches synced\n"));
    }

    #[test]
    fn buckets_reach_the_longest_plugin_timeout() {
        // The CRD's own maximum of spec.plugin.limits.timeoutMs.
        let schema = serde_json::to_value(schemars::schema_for!(crate::crd::Limits)).unwrap();
        let max_ms = schema["properties"]["timeoutMs"]["maximum"]
            .as_f64()
            .unwrap();
        let longest = max_ms / 1000.0;
        assert!(PLUGIN_CALL_BUCKETS.last().copied() >= Some(longest));
        assert!(RECONCILE_BUCKETS.last().copied() > Some(longest));
        assert!(PLUGIN_CALL_BUCKETS.is_sorted() && RECONCILE_BUCKETS.is_sorted());
    }

    /// Every metric family the operator exports (counters, gauges and histograms alike).
    fn families(m: &Metrics) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: Vec<&dyn Collector> = vec![
            &m.reconciles,
            &m.reconcile_seconds,
            &m.plugin_call_seconds,
            &m.plugin_failures,
            &m.applies,
            &m.applies_skipped,
            &m.prunes,
            &m.controllers,
            &m.plugin_info,
            &m.controller_ready,
            &m.parents_failing,
            &m.plugin_memory_reserved_bytes,
            &m.plugin_memory_budget_bytes,
            &m.plugin_calls_running,
            &m.plugin_call_slots,
            &m.leader,
            &m.watches,
            &m.cached_objects,
            &m.watch_errors,
            &m.reconciles_throttled,
            &m.shard.controllers,
            &m.shard.moves,
            &m.shard.drain_seconds,
            &m.shard.unassigned_seconds,
            &m.shard.lease_duration_seconds,
            &m.shard.states,
        ];
        collectors
            .iter()
            .flat_map(|c| {
                c.desc()
                    .into_iter()
                    .map(|d| format!("wasmop_{}", d.fq_name))
            })
            .collect()
    }

    #[test]
    fn alerts_dashboard_and_docs_name_only_metrics_that_exist() {
        let known = families(&Metrics::new());
        let sources = [
            (
                "alerts",
                include_str!("../../deploy/chart/wasmop/files/alerts.yaml"),
            ),
            (
                "dashboard",
                include_str!("../../deploy/dashboards/wasmop.json"),
            ),
            (
                "docs/operations.md",
                include_str!("../../docs/operations.md"),
            ),
        ];
        for (what, text) in sources {
            let mut used = 0;
            for (i, _) in text.match_indices("wasmop_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                if name == "wasmop_" || family.starts_with("wasmop_e2e") {
                    continue;
                }
                used += 1;
                assert!(
                    known.iter().any(|k| k == family),
                    "{what} names {name}, which the operator does not export"
                );
            }
            assert!(used > 5, "{what} names only {used} metrics");
        }
        // And every metric is documented.
        for name in &known {
            assert!(
                sources[2].1.contains(&format!("`{name}`")),
                "docs/operations.md does not list `{name}`"
            );
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.plugin_info.with_label_values(&["a/b", "00"]).set(1);
        m.plugin_failures
            .with_label_values(&["a/b", "timeout"])
            .inc();
        let text = m.render();
        assert!(text.contains("wasmop_plugin_info{controller=\"a/b\",sha256=\"00\"} 1"));
        assert!(
            text.contains("wasmop_plugin_failures_total{controller=\"a/b\",reason=\"timeout\"} 1")
        );
        for family in m.registry.gather() {
            let name = family.name();
            let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(counter, name.ends_with("_total"), "{name}");
            assert!(!name.contains("loaded"), "{name}: an _info metric instead");
        }
    }
}
