//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the operator exports. Cheap to clone (all handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconciles by controller (`namespace/name`) and result (`success` or an error label).
    pub reconciles: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    pub plugin_call_seconds: HistogramVec,
    /// Plugin failures by controller and kind (timeout, trap, out_of_memory, invalid_output, ...).
    pub plugin_failures: IntCounterVec,
    /// Server-side applies sent, by controller and target (`child`, `status`, `patch`, `finalizer`).
    pub applies: IntCounterVec,
    /// Applies skipped because the object already had exactly what we last applied.
    pub applies_skipped: IntCounterVec,
    pub prunes: IntCounterVec,
    /// Controllers running, plugins loaded, shared watches open.
    pub controllers: IntGauge,
    pub plugins_loaded: IntGaugeVec,
    /// Watches open, by `kind` (`Kind.apiVersion`) and `namespace`: each opened as a team's
    /// account in its namespace, shared by the controllers of that account.
    pub watches: IntGaugeVec,
    /// Objects held in the watch caches, by `kind` and `namespace`.
    pub cached_objects: IntGaugeVec,
    pub watch_errors: IntCounterVec,
    /// Reconciles postponed by the per-parent rate limit, by controller.
    pub reconciles_throttled: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("wasmop".into()), None).expect("valid prefix");
        let by = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("registered once");
            m
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let m = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["controller"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("registered once");
            m
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let plugins_loaded = IntGaugeVec::new(
            Opts::new("plugins_loaded", "Plugins loaded, by controller and sha256"),
            &["controller", "sha256"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(plugins_loaded.clone()))
            .expect("registered once");
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
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
                prometheus::exponential_buckets(0.0005, 2.5, 12).unwrap(),
            ),
            plugin_call_seconds: hist(
                "plugin_call_duration_seconds",
                "Plugin call latency",
                prometheus::exponential_buckets(0.00005, 2.5, 12).unwrap(),
            ),
            plugin_failures: by(
                "plugin_failures_total",
                "Plugin failures by controller and kind",
                &["controller", "kind"],
            ),
            applies: by(
                "applies_total",
                "Server-side applies sent",
                &["controller", "target"],
            ),
            applies_skipped: by(
                "applies_skipped_total",
                "Applies skipped: object unchanged since our last apply",
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
            plugins_loaded,
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

/// Serves `/metrics`, `/healthz` and `/readyz` (ready once the manager's first list is in).
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (metrics, ready) = (metrics.clone(), ready.clone());
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/metrics" => (StatusCode::OK, metrics.render()),
                                "/healthz" => (StatusCode::OK, "ok\n".into()),
                                "/readyz" if ready.load(Ordering::Relaxed) => {
                                    (StatusCode::OK, "ok\n".into())
                                }
                                "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
                                _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                            };
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
