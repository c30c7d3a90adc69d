//! [`FaultProxy`]: a seeded, bounded fault injector in front of an apiserver, for the faults
//! Kubernetes cannot be asked for (500s, 429s on demand, latency, watches cut mid-stream).
//!
//! The proxy listens on plain HTTP on loopback and forwards every request through a kube
//! client built from the upstream's admin kubeconfig, so it works in front of the local
//! control plane and of an existing cluster alike. Request headers pass through (including
//! `Impersonate-*`, so tests can act as a service account through it), except hop-by-hop
//! headers and `Authorization` (the upstream identity is the admin's). Upgrades (exec,
//! port-forward) are not supported.
//!
//! The proxy runs on a thread and tokio runtime of its own, so it keeps serving while the
//! test's runtime is blocked (e.g. running kubectl with `std::process`), and one proxy can
//! serve tests on any runtime.
//!
//! Decisions come from a xorshift generator seeded by [`FaultConfig::seed`] and are taken in
//! request-arrival order, so a single-threaded test sees the same faults every run.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::control_plane::ControlPlane;
use crate::kubeconfig::{self, User};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the fault proxy to a loopback port: {source}")]
    Bind {
        #[source]
        source: std::io::Error,
    },
    #[error("starting the fault proxy's thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("the fault proxy's thread ended while starting")]
    ThreadGone,
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::Error),
    #[error("creating a directory for the proxy's kubeconfig {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "FaultConfig: error_500_per_mille + error_429_per_mille is {sum}, more than 1000; lower them"
    )]
    BadRates { sum: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the proxy injects. `Default` injects nothing (a transparent proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultConfig {
    /// Seeds the decisions; the same seed and request order give the same faults.
    pub seed: u64,
    /// Chance per request, in 1/1000, of answering `500 InternalError` without forwarding.
    pub error_500_per_mille: u32,
    /// Chance per request, in 1/1000, of answering `429 TooManyRequests` (with
    /// `Retry-After: 1`) without forwarding.
    pub error_429_per_mille: u32,
    /// Delay before forwarding each request, uniform in this range (milliseconds); `0..=0`
    /// for none. Not counted as a fault and not bounded by `max_faults`.
    pub latency_ms: RangeInclusive<u64>,
    /// End every watch response after this long, as a clean end of stream (as when the
    /// apiserver's own watch timeout passes): clients must re-watch.
    pub cut_watch_after: Option<Duration>,
    /// At most this many faults (500s + 429s + cut watches) in the proxy's lifetime; after
    /// that it is transparent, so tests can assert convergence.
    pub max_faults: u64,
    /// Only requests whose path contains this get latency and faults (e.g. `/leases/`: a
    /// client that reaches the API server for everything but its Lease); `None`: all.
    pub only_paths_containing: Option<String>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            error_500_per_mille: 0,
            error_429_per_mille: 0,
            latency_ms: 0..=0,
            cut_watch_after: None,
            max_faults: 0,
            only_paths_containing: None,
        }
    }
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Requests received.
    pub requests: u64,
    /// Requests answered with an injected 500.
    pub errors_500: u64,
    /// Requests answered with an injected 429.
    pub errors_429: u64,
    /// Watch responses that were limited to `cut_watch_after`.
    pub watch_cuts: u64,
    /// Requests delayed by a non-zero latency.
    pub delayed: u64,
}

impl FaultCounts {
    /// Faults injected (errors and cut watches), the quantity `max_faults` bounds.
    pub fn faults(&self) -> u64 {
        self.errors_500 + self.errors_429 + self.watch_cuts
    }
}

/// A running fault proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    /// A directory of our own to delete on drop (when the upstream has no state dir).
    own_dir: Option<PathBuf>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    upstream: kube::Client,
    state: Mutex<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    config: FaultConfig,
    rng: XorShift,
    counts: FaultCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Error500,
    Error429,
}

#[derive(Debug, Clone, Copy)]
struct Decision {
    delay: Duration,
    fault: Fault,
    cut_after: Option<Duration>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (on its own thread; callable from any runtime).
    ///
    /// # Errors
    /// [`Error::BadRates`] for rates above 1000‰ in total; bind, client and file errors.
    pub async fn start(upstream: &ControlPlane, config: FaultConfig) -> Result<Self> {
        let sum = config.error_500_per_mille + config.error_429_per_mille;
        if sum > 1000 {
            return Err(Error::BadRates { sum });
        }
        let upstream_kubeconfig = upstream.kubeconfig().to_path_buf();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("localcp-fault-proxy".into())
            .spawn(move || run(upstream_kubeconfig, config, ready_tx, stop_rx))
            .map_err(|source| Error::Thread { source })?;
        let (addr, shared) = ready_rx.await.map_err(|_| Error::ThreadGone)??;

        let (dir, own_dir) = match upstream.dir() {
            Some(dir) => (dir.to_path_buf(), None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "localcp-proxy-{}-{}",
                    std::process::id(),
                    addr.port()
                ));
                std::fs::create_dir_all(&dir).map_err(|source| Error::Dir {
                    path: dir.clone(),
                    source,
                })?;
                (dir.clone(), Some(dir))
            }
        };
        let kubeconfig = dir.join(format!("fault-proxy-{}.kubeconfig", addr.port()));
        let proxy = Self {
            addr,
            kubeconfig,
            own_dir,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        kubeconfig::write(
            &proxy.kubeconfig,
            "localcp-fault-proxy",
            &proxy.url(),
            None,
            User::None,
        )?;
        Ok(proxy)
    }

    /// A kubeconfig whose server is the proxy (no credentials: the proxy authenticates
    /// upstream). Use it with kubectl or [`kube::Config`] as with any kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kube client talking through the proxy, bound to the calling runtime.
    ///
    /// # Errors
    /// [`Error::Kubeconfig`] when the kubeconfig cannot be read.
    pub async fn client(&self) -> Result<kube::Client> {
        Ok(kubeconfig::client(&self.kubeconfig).await?)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.shared.lock().counts
    }

    /// Replaces the fault settings (the RNG and counts carry on), e.g. to stop injecting
    /// before asserting convergence.
    pub fn set_config(&self, config: FaultConfig) {
        self.shared.lock().config = config;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Ending the accept loop drops its JoinSet, which aborts every connection; then the
        // thread's runtime shuts down.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decide(&self, is_watch: bool, path: &str) -> Decision {
        self.lock().decide(is_watch, path)
    }
}

impl State {
    /// The fate of one request; counts it.
    fn decide(&mut self, is_watch: bool, path: &str) -> Decision {
        let State {
            config,
            rng,
            counts,
        } = self;
        counts.requests += 1;
        if config
            .only_paths_containing
            .as_deref()
            .is_some_and(|only| !path.contains(only))
        {
            return Decision {
                delay: Duration::ZERO,
                fault: Fault::None,
                cut_after: None,
            };
        }
        let (lo, hi) = (*config.latency_ms.start(), *config.latency_ms.end());
        let delay_ms = if hi > lo {
            lo + rng.below(hi - lo + 1)
        } else {
            lo
        };
        if delay_ms > 0 {
            counts.delayed += 1;
        }
        let mut fault = Fault::None;
        if counts.faults() < config.max_faults {
            let roll = rng.below(1000) as u32;
            if roll < config.error_500_per_mille {
                fault = Fault::Error500;
                counts.errors_500 += 1;
            } else if roll < config.error_500_per_mille + config.error_429_per_mille {
                fault = Fault::Error429;
                counts.errors_429 += 1;
            }
        }
        let mut cut_after = None;
        if fault == Fault::None
            && is_watch
            && counts.faults() < config.max_faults
            && let Some(after) = config.cut_watch_after
        {
            cut_after = Some(after);
            counts.watch_cuts += 1;
        }
        Decision {
            delay: Duration::from_millis(delay_ms),
            fault,
            cut_after,
        }
    }
}

type Ready = Result<(SocketAddr, Arc<Shared>)>;

/// The proxy thread: a runtime of its own, the upstream client, the accept loop until `stop`.
fn run(
    upstream_kubeconfig: PathBuf,
    config: FaultConfig,
    ready: tokio::sync::oneshot::Sender<Ready>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = ready.send(Err(Error::Thread { source }));
            return;
        }
    };
    runtime.block_on(async move {
        let setup = async {
            let upstream = kubeconfig::client(&upstream_kubeconfig).await?;
            let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(|source| Error::Bind { source })?;
            let addr = listener
                .local_addr()
                .map_err(|source| Error::Bind { source })?;
            let shared = Arc::new(Shared {
                upstream,
                state: Mutex::new(State {
                    rng: XorShift::new(config.seed),
                    config,
                    counts: FaultCounts::default(),
                }),
            });
            Ok::<_, Error>((listener, addr, shared))
        };
        match setup.await {
            Err(e) => {
                let _ = ready.send(Err(e));
            }
            Ok((listener, addr, shared)) => {
                if ready.send(Ok((addr, shared.clone()))).is_ok() {
                    tokio::select! {
                        () = serve(listener, shared) => {}
                        _ = stop => {}
                    }
                }
            }
        }
    });
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("fault proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let service = service_fn(move |req| handle(req, shared.clone()));
        connections.spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("fault proxy connection: {e}");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let decision = shared.decide(is_watch(req.uri()), req.uri().path());
    if !decision.delay.is_zero() {
        tokio::time::sleep(decision.delay).await;
    }
    match decision.fault {
        Fault::Error500 => {
            return Ok(status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "localcp fault proxy: injected 500",
            ));
        }
        Fault::Error429 => {
            let mut response = status_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "localcp fault proxy: injected 429, retry after 1s",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(response);
        }
        Fault::None => {}
    }

    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("localcp fault proxy: reading the request body: {e}"),
            ));
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(path_and_query)
        .body(kube::client::Body::from(body))
        .expect("parts of a valid request stay valid");
    *upstream.headers_mut() = forwarded_headers(&parts.headers);

    let response = match shared.upstream.send(upstream).await {
        Ok(response) => response,
        Err(e) => {
            return Ok(status_response(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!("localcp fault proxy: upstream: {e}"),
            ));
        }
    };
    let (mut parts, body) = response.into_parts();
    parts.headers = forwarded_headers(&parts.headers);
    let body: ProxyBody = match decision.cut_after {
        Some(after) => CutBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(after)),
        }
        .map_err(BoxError::from)
        .boxed_unsync(),
        None => body.map_err(BoxError::from).boxed_unsync(),
    };
    Ok(Response::from_parts(parts, body))
}

fn is_watch(uri: &http::Uri) -> bool {
    uri.path().contains("/watch/")
        || uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1" || kv == "watch")
        })
}

/// Headers to pass on: all but hop-by-hop ones, `Host` (the client sets its own) and
/// `Authorization` (the upstream client authenticates).
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    const DROP: &[&str] = &[
        "connection",
        "proxy-connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "authorization",
        "proxy-authorization",
    ];
    headers
        .iter()
        .filter(|(name, _)| !DROP.contains(&name.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// A `metav1.Status` response, as the apiserver would send it.
fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let mut status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if code == StatusCode::TOO_MANY_REQUESTS {
        status["details"] = serde_json::json!({ "retryAfterSeconds": 1 });
    }
    let body = Full::new(Bytes::from(status.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A body that ends cleanly at a deadline.
struct CutBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B: Body + Unpin> Body for CutBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// xorshift64*: tiny, seedable, identical on every platform and dependency version.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so small seeds (0, 1, 2) give unrelated sequences; never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` for fault rates (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let a: Vec<u64> = {
            let mut r = XorShift::new(7);
            (0..5).map(|_| r.next()).collect()
        };
        let mut r = XorShift::new(7);
        assert_eq!(a, (0..5).map(|_| r.next()).collect::<Vec<_>>());
        let mut other = XorShift::new(8);
        assert_ne!(a[0], other.next());
    }

    #[test]
    fn watch_requests_are_recognised() {
        let cases = [
            ("/api/v1/namespaces/a/configmaps?watch=true", true),
            ("/api/v1/configmaps?resourceVersion=1&watch=1", true),
            ("/api/v1/watch/configmaps", true),
            ("/api/v1/configmaps?watchy=true", false),
            ("/api/v1/configmaps", false),
        ];
        for (uri, want) in cases {
            assert_eq!(is_watch(&uri.parse().unwrap()), want, "{uri}");
        }
    }

    #[test]
    fn forwarding_drops_hop_by_hop_and_credentials_but_keeps_impersonation() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("authorization", HeaderValue::from_static("Bearer x"));
        h.insert("host", HeaderValue::from_static("127.0.0.1:1"));
        h.insert(
            "impersonate-user",
            HeaderValue::from_static("system:serviceaccount:a:b"),
        );
        h.insert("accept", HeaderValue::from_static("application/json"));
        let out = forwarded_headers(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("impersonate-user"));
        assert!(out.contains_key("accept"));
    }

    #[test]
    fn injected_rates_follow_the_configuration_and_stop_at_max_faults() {
        let counts = |config: FaultConfig, requests: usize| {
            let mut s = State {
                rng: XorShift::new(config.seed),
                config,
                counts: FaultCounts::default(),
            };
            for i in 0..requests {
                let path = if i % 2 == 0 {
                    "/api/v1/pods"
                } else {
                    "/apis/coordination.k8s.io/v1/namespaces/n/leases/a"
                };
                s.decide(false, path);
            }
            s.counts
        };
        let c = counts(
            FaultConfig {
                error_500_per_mille: 200,
                error_429_per_mille: 100,
                max_faults: u64::MAX,
                ..FaultConfig::default()
            },
            10_000,
        );
        assert!((1700..2300).contains(&c.errors_500), "{c:?}");
        assert!((800..1200).contains(&c.errors_429), "{c:?}");
        let c = counts(
            FaultConfig {
                error_500_per_mille: 1000,
                max_faults: 3,
                ..FaultConfig::default()
            },
            100,
        );
        assert_eq!((c.requests, c.errors_500, c.faults()), (100, 3, 3));
        let c = counts(
            FaultConfig {
                latency_ms: 5..=10,
                ..FaultConfig::default()
            },
            10,
        );
        assert_eq!((c.delayed, c.faults()), (10, 0));
        // Only the Lease requests (every other one) fail.
        let c = counts(
            FaultConfig {
                error_500_per_mille: 1000,
                max_faults: u64::MAX,
                only_paths_containing: Some("/leases/".into()),
                ..FaultConfig::default()
            },
            100,
        );
        assert_eq!((c.requests, c.errors_500), (100, 50));
    }
}
