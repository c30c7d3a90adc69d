//! Plugin call benchmarks: the Website logic as a native function, behind a loopback HTTP
//! hook, and as the Rust, JS and Go plugins, both as a bare Extism call and through the
//! operator's own path (gather, serialise, dispatch, call, parse, plan) broken down by step.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};
use hyper::body::Bytes;
use serde_json::json;
use wasmop::crd::{KindRef, Limits};
use wasmop::plugin::{Budget, Host, LoadedPlugin};
use wasmop::reconcile::plan::{self, Identity, ObjRef, Owned, ResponseLimits};
use wasmop::reconcile::request;
use wasmop_abi::{RECONCILE_EXPORT, ReconcileResponse};

use crate::fixture;
use crate::stats::{Percentiles, Runs, us};

/// The plugins measured: (label, file under target/plugins without `.wasm`). The last is the
/// Rust plugin built with the size-first `plugin-small` profile (`hack/bench.sh` builds it),
/// measured in the same runs as the default `plugin` profile's.
pub const PLUGINS: [(&str, &str); 4] = [
    ("Rust", "website-rust"),
    ("JS", "website-js"),
    ("Go", "website-go"),
    ("Rust, size profile", "website-rust-small"),
];

/// Every limit on, as a WasmController would set them: memory, wall-clock timeout and fuel.
pub fn limits() -> Limits {
    Limits {
        memory_mib: Some(64),
        timeout_ms: Some(1000),
        fuel: Some(10_000_000_000),
    }
}

/// p50 and p99 over several runs (µs).
#[derive(Clone, Debug, Default)]
pub struct Figure {
    pub p50: Runs,
    pub p99: Runs,
}

impl Figure {
    fn add(&mut self, samples: &mut [Duration]) {
        let p = Percentiles::of(samples);
        self.p50.push(us(p.p50));
        self.p99.push(us(p.p99));
    }
}

/// The operator's path for one plugin, step by step (µs).
#[derive(Clone, Debug, Default)]
pub struct Breakdown {
    /// `request::shown` of the parent and its children: their JSON, from the cache or by
    /// `kinds::clean` and serialising.
    pub gather: Figure,
    /// `request::encode`: the request written around the objects' JSON.
    pub serialise: Figure,
    /// Waiting for a call slot, `block_in_place` (the worker's other tasks handed to another
    /// thread), taking a lane and (every 256th call) starting a fresh instance: `LoadedPlugin::call` minus the time in the plugin.
    pub dispatch: Figure,
    /// Time inside the plugin as `LoadedPlugin::call` reports it.
    pub plugin: Figure,
    /// Output size check, parsing the response, response limits.
    pub parse: Figure,
    /// `plan::plan`: validation and the SSA bodies.
    pub plan: Figure,
    /// All of the above, timed as one.
    pub total: Figure,
}

#[derive(Clone, Debug, Default)]
pub struct PluginCalls {
    pub label: &'static str,
    pub size_bytes: usize,
    /// A bare `Plugin::call` on one reused instance with the operator's limits.
    pub bare: Figure,
    /// The same without fuel metering (the operator always meters fuel, to bound start-up).
    pub bare_no_fuel: Figure,
    pub operator: Breakdown,
    /// The same with every object changed since the last call (nothing cached).
    pub changed: Breakdown,
}

#[derive(Clone, Debug, Default)]
pub struct CallReport {
    pub request_bytes: usize,
    pub parent_bytes: usize,
    pub iterations: usize,
    pub runs: usize,
    pub native: Figure,
    pub hook: Figure,
    /// The hook through the operator's path: the same gather, serialise, parse and plan as a
    /// plugin call, so the hook is charged what the operator does around it (like for like).
    pub hook_operator: Breakdown,
    pub plugins: Vec<PluginCalls>,
}

/// A bare Extism plugin built as the operator builds one (`plugin.rs` `compile`).
pub fn bare_plugin(wasm: &[u8], limits: &Limits, fuel: bool) -> Result<Plugin> {
    let manifest = Manifest::new([Wasm::data(wasm.to_vec())])
        .with_memory_max(limits.memory_mib().saturating_mul(16))
        .with_timeout(Duration::from_millis(limits.timeout_ms().into()))
        .disallow_all_hosts();
    let mut builder = PluginBuilder::new(manifest)
        .with_wasi(true)
        .with_cache_disabled();
    if fuel {
        builder = builder
            .with_fuel_limit(limits.fuel.unwrap_or(u64::MAX))
            .with_initialization_fuel_limit(u64::from(limits.timeout_ms()) * 1_000_000);
    }
    let compiled = CompiledPlugin::new(builder)?;
    Plugin::new_from_compiled(&compiled)
}

/// The plugin loaded by the operator's host, as a WasmController with `limits` would get it.
pub async fn loaded(host: &Host, wasm: &[u8], limits: &Limits) -> Result<Arc<LoadedPlugin>> {
    let bytes = wasmop::plugin::source::decode(wasm)?;
    Ok(host.load(&bytes, limits, 1).await?)
}

/// Everything `plan::plan` needs that the operator takes from its runtime.
struct PlanContext {
    identity: Identity,
    child_kinds: Vec<KindRef>,
    owned: Vec<Owned>,
    limits: ResponseLimits,
}

impl PlanContext {
    fn new() -> Self {
        let owned = fixture::children()
            .into_iter()
            .map(|(resource, obj)| Owned {
                target: ObjRef {
                    api_version: resource.api_version,
                    kind: resource.kind,
                    namespace: fixture::NAMESPACE.into(),
                    name: obj.metadata.name.unwrap_or_default(),
                },
                uid: obj.metadata.uid.unwrap_or_default(),
            })
            .collect();
        PlanContext {
            identity: Identity::new(fixture::NAMESPACE, fixture::CONTROLLER),
            child_kinds: vec![
                KindRef {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                },
                KindRef {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                },
            ],
            owned,
            limits: ResponseLimits::default(),
        }
    }
}

/// Per-step durations of one operator-path call.
struct Steps([Duration; 7]);

/// What the operator's path calls: a loaded plugin, or the loopback HTTP hook.
enum Callee<'a> {
    Plugin(&'a Arc<LoadedPlugin>),
    Hook(&'a mut crate::hook::Client),
}

/// One reconcile's plugin part, as `controller.rs` `reconcile_parent` does it (steps 3–5),
/// with the operator's own request functions. `changed`: every object has a resourceVersion
/// not seen before (nothing cached), as after a write; else as on a resync or when only a
/// related object changed.
async fn operator_path(
    callee: &mut Callee<'_>,
    fx: &Fixture<'_>,
    changed: Option<usize>,
) -> Result<Steps> {
    let Fixture {
        ctx,
        parent,
        children,
    } = fx;
    let bump = |obj: &kube::api::DynamicObject| {
        let mut obj = obj.clone();
        if let Some(i) = changed {
            let rv = obj.metadata.resource_version.take().unwrap_or_default();
            obj.metadata.resource_version = Some(format!("{rv}-{i}"));
        }
        obj
    };
    let parent = bump(parent);
    let children: Vec<_> = children.iter().map(|(r, o)| (r, bump(o))).collect();
    let t0 = Instant::now();
    let shown = request::shown(&parent, &wasmop_e2e::website::website_resource(), true);
    let parent_json = shown.value.expect("asked for the value");
    let mut by_kind: request::Children = Default::default();
    for (resource, obj) in &children {
        by_kind
            .entry(wasmop_abi::child_key(&resource.api_version, &resource.kind))
            .or_default()
            .insert(
                obj.metadata.name.clone().unwrap_or_default(),
                request::shown(obj, resource, false).text,
            );
    }
    let controller = wasmop_abi::ControllerInfo {
        name: fixture::CONTROLLER.into(),
        namespace: fixture::NAMESPACE.into(),
        config: json!({"replicas": 2}),
    };
    let t1 = Instant::now();
    let input = request::encode(
        &controller,
        &shown.text,
        &by_kind,
        &Default::default(),
        false,
    );
    let t2 = Instant::now();
    let (output, inside) = match callee {
        Callee::Plugin(plugin) => {
            let output = plugin.call(RECONCILE_EXPORT, input).await?;
            (Bytes::from(output.output), output.elapsed)
        }
        Callee::Hook(hook) => hook.call(Bytes::from(input)).await?,
    };
    let t3 = Instant::now();
    ctx.limits.check_output(output.len())?;
    let response: ReconcileResponse = serde_json::from_slice(&output)?;
    ctx.limits.check(&response)?;
    let t4 = Instant::now();
    let input = plan::Input {
        identity: &ctx.identity,
        parent: &parent_json,
        child_kinds: &ctx.child_kinds,
        related: &[],
        owned: &ctx.owned,
        finalizing: false,
    };
    let plan = plan::plan(&input, response)?;
    let t5 = Instant::now();
    std::hint::black_box(plan);
    let call = t3 - t2;
    Ok(Steps([
        t1 - t0,
        t2 - t1,
        call.saturating_sub(inside),
        inside,
        t4 - t3,
        t5 - t4,
        t5 - t0,
    ]))
}

/// How many slices a run is cut into (see [`run`]).
const SLICES: usize = 10;

/// One run's samples of one plugin's variants.
#[derive(Default)]
struct PluginSamples {
    bare: Vec<Duration>,
    no_fuel: Vec<Duration>,
    operator: [Vec<Duration>; 7],
    changed: [Vec<Duration>; 7],
}

impl Breakdown {
    fn add(&mut self, steps: &mut [Vec<Duration>; 7]) {
        let [g, s, d, p, r, pl, t] = steps;
        self.gather.add(g);
        self.serialise.add(s);
        self.dispatch.add(d);
        self.plugin.add(p);
        self.parse.add(r);
        self.plan.add(pl);
        self.total.add(t);
    }
}

/// `n` timed calls of the native function after `warm` untimed ones.
fn native_calls(input: &[u8], warm: usize, n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..warm + n {
        let started = Instant::now();
        let out = wasmop_pdk::call_json(std::hint::black_box(input), website_plugin::reconcile)?;
        let elapsed = started.elapsed();
        std::hint::black_box(out);
        if i >= warm {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// `n` timed bare calls of `plugin` after `warm` untimed ones.
fn bare_calls(plugin: &mut Plugin, input: &[u8], warm: usize, n: usize) -> Result<Vec<Duration>> {
    // WASI blocks on tokio inside calls: off the async workers, as the operator does.
    tokio::task::block_in_place(|| {
        let mut samples = Vec::with_capacity(n);
        for i in 0..warm + n {
            let started = Instant::now();
            let out: Vec<u8> = plugin.call(RECONCILE_EXPORT, input)?;
            let elapsed = started.elapsed();
            std::hint::black_box(out);
            if i >= warm {
                samples.push(elapsed);
            }
        }
        Ok(samples)
    })
}

/// The fixture's parts `operator_path` works on.
struct Fixture<'a> {
    ctx: &'a PlanContext,
    parent: &'a kube::api::DynamicObject,
    children: &'a [(kube::api::ApiResource, kube::api::DynamicObject)],
}

/// `n` timed calls through the operator's path after `warm` untimed ones, appended to `steps`.
/// `fresh`: give every object a resourceVersion not seen before (counting on from it).
async fn path_calls(
    callee: &mut Callee<'_>,
    fx: &Fixture<'_>,
    mut fresh: Option<&mut usize>,
    (warm, n): (usize, usize),
    steps: &mut [Vec<Duration>; 7],
) -> Result<()> {
    for i in 0..warm + n {
        let changed = fresh.as_deref_mut().map(|f| {
            *f += 1;
            *f
        });
        let s = operator_path(callee, fx, changed).await?;
        if i >= warm {
            for (v, d) in steps.iter_mut().zip(s.0) {
                v.push(d);
            }
        }
    }
    Ok(())
}

/// Runs the call benchmarks: `runs` runs of `iterations` calls per variant, interleaved.
pub async fn run(
    exe: &Path,
    plugins: &[(&'static str, &'static str)],
    iterations: usize,
    runs: usize,
) -> Result<CallReport> {
    let input = fixture::request_bytes();
    let mut report = CallReport {
        request_bytes: input.len(),
        parent_bytes: serde_json::to_vec(&fixture::request().object)?.len(),
        iterations,
        runs,
        ..Default::default()
    };
    let expected = wasmop_pdk::call_json(&input, website_plugin::reconcile)?;

    let server = crate::hook::Server::start(exe)?;
    let mut hook = crate::hook::Client::connect(server.addr).await?;
    let body = Bytes::from(input.clone());
    let (out, _) = hook.call(body.clone()).await?;
    if out != expected {
        bail!("the HTTP hook's answer differs from the native function's");
    }

    let limits = limits();
    // Calls never wait for a slot here: one caller.
    let host = Host::with_budget(None, Budget::default())?;
    let ctx = PlanContext::new();
    let parent = fixture::parent();
    let children = fixture::children();
    let mut loaded_plugins = Vec::new();
    for &(label, file) in plugins {
        let wasm = crate::plugin_bytes(file)?;
        // WASI blocks on tokio inside calls: off the async workers, as the operator does.
        let (bare, no_fuel, out) = tokio::task::block_in_place(|| {
            let mut bare =
                bare_plugin(&wasm, &limits, true).with_context(|| format!("{label} plugin"))?;
            let no_fuel = bare_plugin(&wasm, &limits, false)?;
            let out: Vec<u8> = bare.call(RECONCILE_EXPORT, &input[..])?;
            anyhow::Ok((bare, no_fuel, out))
        })?;
        if out != expected {
            bail!("the {label} plugin's answer differs from the native function's");
        }
        let loaded = loaded(&host, &wasm, &limits).await?;
        report.plugins.push(PluginCalls {
            label,
            size_bytes: wasm.len(),
            ..Default::default()
        });
        loaded_plugins.push((bare, no_fuel, loaded));
    }

    // Interleaved: each run is cut into slices, and every variant takes its share of calls in
    // each slice, so load that drifts during a run hits every variant alike.
    let fx = Fixture {
        ctx: &ctx,
        parent: &parent,
        children: &children,
    };
    let warmup = (iterations / 20).max(10);
    let per_slice = iterations.div_ceil(SLICES).max(1);
    let mut fresh = 0usize; // a new resourceVersion for every "changed" call
    for _ in 0..runs {
        let mut native = Vec::new();
        let mut hook_bare = Vec::new();
        let mut hook_path: [Vec<Duration>; 7] = Default::default();
        let mut plugin_samples: Vec<PluginSamples> = loaded_plugins
            .iter()
            .map(|_| PluginSamples::default())
            .collect();
        for slice in 0..SLICES {
            let warm = if slice == 0 { warmup } else { 0 };
            native.extend(native_calls(&input, warm, per_slice)?);
            for i in 0..warm + per_slice {
                let (out, elapsed) = hook.call(body.clone()).await?;
                std::hint::black_box(out);
                if i >= warm {
                    hook_bare.push(elapsed);
                }
            }
            let mut callee = Callee::Hook(&mut hook);
            path_calls(&mut callee, &fx, None, (warm, per_slice), &mut hook_path).await?;
            for ((bare, no_fuel, loaded), samples) in
                loaded_plugins.iter_mut().zip(&mut plugin_samples)
            {
                samples
                    .bare
                    .extend(bare_calls(bare, &input, warm, per_slice)?);
                samples
                    .no_fuel
                    .extend(bare_calls(no_fuel, &input, warm, per_slice)?);
                let mut callee = Callee::Plugin(&*loaded);
                path_calls(
                    &mut callee,
                    &fx,
                    None,
                    (warm, per_slice),
                    &mut samples.operator,
                )
                .await?;
                path_calls(
                    &mut callee,
                    &fx,
                    Some(&mut fresh),
                    (warm, per_slice),
                    &mut samples.changed,
                )
                .await?;
            }
        }
        report.native.add(&mut native);
        report.hook.add(&mut hook_bare);
        report.hook_operator.add(&mut hook_path);
        for (p, mut samples) in report.plugins.iter_mut().zip(plugin_samples) {
            p.bare.add(&mut samples.bare);
            p.bare_no_fuel.add(&mut samples.no_fuel);
            p.operator.add(&mut samples.operator);
            p.changed.add(&mut samples.changed);
        }
    }
    drop(server);
    Ok(report)
}
