//! Size and speed of a JavaScript plugin under Extism, for docs/plugins-javascript.md.
//!
//! ```sh
//! make plugins   # the runtime and target/plugins/website-js.js (+ website-rust.wasm)
//! cargo run -p wasmop-js-build --example measure [-- path/to/bundle.js]
//! ```
//! Dependencies (wasmtime included) are optimised even in the dev profile, so the figures are
//! representative; they are noisy on a shared machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use extism::{CompiledPlugin, Plugin, PluginBuilder};
use serde_json::json;
use wasmop_js_build::{Builder, WasmOpt};
use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn gzip(data: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap().len()
}

fn zstd19(data: &[u8]) -> usize {
    zstd::encode_all(data, 19).unwrap().len()
}

fn kib(n: usize) -> String {
    format!("{:.0} KiB", n as f64 / 1024.0)
}

/// A Website request of about 5 KB: the parent with managedFields as the API server sends it,
/// and a current Deployment child.
fn request() -> String {
    let managed: Vec<_> = (0..12)
        .map(|i| json!({"manager": format!("kubectl-{i}"), "operation": "Apply", "apiVersion": "example.com/v1",
            "time": "2026-11-22T10:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:content": {}, "f:image": {}, "f:replicas": {}}}}))
        .collect();
    json!({
        "abiVersion": "wasmop.dev/v1alpha1",
        "controller": {"name": "website", "namespace": "team-a", "config": {"replicas": 2}},
        "object": {"apiVersion": "example.com/v1", "kind": "Website",
            "metadata": {"name": "site", "namespace": "team-a", "generation": 3, "uid": "0a1b",
                "resourceVersion": "1234", "managedFields": managed},
            "spec": {"content": "<h1>hello</h1>".repeat(20), "replicas": 2}},
        "children": {"ConfigMap.v1": {}, "Deployment.apps/v1": {"site": {"apiVersion": "apps/v1",
            "kind": "Deployment", "metadata": {"name": "site"}, "status": {"availableReplicas": 2}}}},
        "related": {},
        "finalizing": false
    })
    .to_string()
}

fn measure_plugin(label: &str, wasm: &[u8], request: &str) {
    let uncached = || {
        PluginBuilder::new(wasm)
            .with_wasi(true)
            .with_cache_disabled()
    };
    let load = time(3, || uncached().build().unwrap());
    let compiled = CompiledPlugin::new(uncached()).unwrap();
    let instantiate = time(20, || Plugin::new_from_compiled(&compiled).unwrap());
    let mut first_calls = Vec::new();
    for _ in 0..10 {
        let mut p = Plugin::new_from_compiled(&compiled).unwrap();
        let start = Instant::now();
        p.call::<&str, &str>("reconcile", request).unwrap();
        first_calls.push(start.elapsed());
    }
    let mut plugin = Plugin::new_from_compiled(&compiled).unwrap();
    for _ in 0..50 {
        plugin.call::<&str, &str>("reconcile", request).unwrap();
    }
    let per_call = time(1000, || {
        plugin
            .call::<&str, &str>("reconcile", request)
            .unwrap()
            .len()
    });
    println!(
        "{label:<34} load (compile, no cache) {load:>9.1?}  instantiate {instantiate:>8.1?}  \
         first call {:>8.1?}  warm call {per_call:>8.1?}",
        median(first_calls)
    );
}

/// What pre-initialisation saves each new instance: creating the QuickJS runtime and context
/// and evaluating the source, timed as one `wizer.initialize` call in optimised code.
fn evaluate_in_wasm(runtime: &[u8], source: &str) -> Duration {
    let engine = Engine::new(&Config::new()).unwrap();
    let module = Module::new(&engine, runtime).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    linker.define_unknown_imports_as_traps(&module).unwrap();
    let instance_pre = linker.instantiate_pre(&module).unwrap();
    median(
        (0..10)
            .map(|_| {
                let wasi = WasiCtxBuilder::new()
                    .stdin(MemoryInputPipe::new(source.as_bytes().to_vec()))
                    .stdout(MemoryOutputPipe::new(1 << 16))
                    .build_p1();
                let mut store = Store::new(&engine, wasi);
                let instance = instance_pre.instantiate(&mut store).unwrap();
                let init = instance
                    .get_typed_func::<(), ()>(&mut store, "wizer.initialize")
                    .unwrap();
                let start = Instant::now();
                init.call(&mut store, ()).unwrap();
                start.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let target = target_dir();
    let bundle_path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("plugins/website-js.js"));
    let source = std::fs::read_to_string(&bundle_path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make plugins`)", bundle_path.display()));
    let runtime = wasmop_js_build::load_runtime(&wasmop_js_build::default_runtime_path()).unwrap();
    let request = request();

    let start = Instant::now();
    let plain = Builder::new(&runtime)
        .file_name("website-js.js")
        .build(&source)
        .unwrap();
    let build_time = start.elapsed();
    let start = Instant::now();
    Builder::new(&runtime)
        .file_name("website-js.js")
        .build(&source)
        .unwrap();
    let rebuild_time = start.elapsed();
    let optimised = Builder::new(&runtime)
        .file_name("website-js.js")
        .wasm_opt(WasmOpt::IfInstalled)
        .build(&source)
        .unwrap();

    println!(
        "source {}: {} bytes; request {} bytes",
        bundle_path.display(),
        source.len(),
        request.len()
    );
    println!(
        "build (instrument, compile, evaluate, snapshot): first {build_time:.2?}, \
         next (compiled runtime reused) {rebuild_time:.2?}"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "size", "raw", "gzip -9", "zstd -19"
    );
    let mut sizes = vec![
        ("runtime (not a plugin)", runtime.clone()),
        ("plugin, pre-initialised", plain.wasm.clone()),
    ];
    if optimised.wasm_opt_ran {
        sizes.push(("plugin, pre-initialised + wasm-opt", optimised.wasm.clone()));
    }
    for (label, wasm) in &sizes {
        println!(
            "{label:<34} {:>9} {:>9} {:>9}",
            kib(wasm.len()),
            kib(gzip(wasm)),
            kib(zstd19(wasm))
        );
    }

    println!(
        "evaluating the source in a fresh instance (what pre-initialisation saves per instance): {:.1?}",
        evaluate_in_wasm(&runtime, &source)
    );
    measure_plugin("website-js (pre-initialised)", &plain.wasm, &request);
    if optimised.wasm_opt_ran {
        measure_plugin(
            "website-js (pre-init + wasm-opt)",
            &optimised.wasm,
            &request,
        );
    }
    if let Ok(rust) = std::fs::read(target.join("plugins/website-rust.wasm")) {
        measure_plugin("website-rust (for comparison)", &rust, &request);
    }
}
