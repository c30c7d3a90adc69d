//! Plugin load benchmarks: what `Host::load` costs (compile and start the first instance)
//! with and without the on-disk compiled cache, and what one more instance costs.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};
use wasmop::plugin::{Budget, Host};

use crate::calls::limits;
use crate::stats::Runs;

#[derive(Clone, Debug, Default)]
pub struct PluginLoad {
    pub label: &'static str,
    pub size_bytes: usize,
    /// `Host::load` without the on-disk cache (ms).
    pub uncached_ms: Runs,
    /// `Host::load` from a warm on-disk cache (ms).
    pub cached_ms: Runs,
    /// Of which Extism's `CompiledPlugin::new` from the cache (wasmtime's cache lookup:
    /// hashing the module, decompressing and loading the machine code) (ms).
    pub cache_hit_compile_ms: Runs,
    /// Instantiating and starting one more instance of compiled code (ms).
    pub instantiate_ms: Runs,
}

/// `runs_uncached` cold loads and `runs_cached` cached loads per plugin; `cache` is emptied
/// first.
pub async fn run(
    plugins: &[(&'static str, &'static str)],
    cache: &Path,
    runs_uncached: usize,
    runs_cached: usize,
) -> Result<Vec<PluginLoad>> {
    let _ = std::fs::remove_dir_all(cache);
    std::fs::create_dir_all(cache)?;
    let limits = limits();
    let mut out = Vec::new();
    for &(label, file) in plugins {
        let wasm = crate::plugin_bytes(file)?;
        let bytes = wasmop::plugin::source::decode(&wasm)?;
        let mut load = PluginLoad {
            label,
            size_bytes: wasm.len(),
            ..Default::default()
        };
        for _ in 0..runs_uncached {
            let host = Host::with_budget(None, Budget::default())?;
            let started = Instant::now();
            let plugin = host.load(&bytes, &limits, 1).await?;
            load.uncached_ms.push(started.elapsed().as_secs_f64() * 1e3);
            drop(plugin);
        }
        // The first cached load fills the cache.
        let host = Host::with_budget(Some(cache.to_path_buf()), Budget::default())?;
        drop(host.load(&bytes, &limits, 1).await?);
        for _ in 0..runs_cached {
            let host = Host::with_budget(Some(cache.to_path_buf()), Budget::default())?;
            let started = Instant::now();
            let plugin = host.load(&bytes, &limits, 1).await?;
            load.cached_ms.push(started.elapsed().as_secs_f64() * 1e3);
            drop(plugin);
        }
        let config = cache.join("wasmtime-cache.toml");
        tokio::task::block_in_place(|| {
            for _ in 0..runs_cached {
                let manifest = Manifest::new([Wasm::data(wasm.clone())])
                    .with_memory_max(limits.memory_mib() * 16)
                    .with_timeout(std::time::Duration::from_millis(limits.timeout_ms().into()))
                    .disallow_all_hosts();
                let builder = PluginBuilder::new(manifest)
                    .with_wasi(true)
                    .with_fuel_limit(u64::MAX)
                    .with_initialization_fuel_limit(1_000_000_000)
                    .with_cache_config(&config);
                let started = Instant::now();
                let compiled = CompiledPlugin::new(builder)?;
                load.cache_hit_compile_ms
                    .push(started.elapsed().as_secs_f64() * 1e3);
                drop(compiled);
            }
            instantiate(&wasm, &limits, runs_cached, &mut load)
        })?;
        out.push(load);
    }
    Ok(out)
}

/// `runs` times: one more instance of already compiled code (WASI blocks on tokio: called
/// off the async workers).
fn instantiate(
    wasm: &[u8],
    limits: &wasmop::crd::Limits,
    runs: usize,
    load: &mut PluginLoad,
) -> Result<()> {
    {
        let manifest = Manifest::new([Wasm::data(wasm.to_vec())])
            .with_memory_max(limits.memory_mib() * 16)
            .disallow_all_hosts();
        let compiled = CompiledPlugin::new(
            PluginBuilder::new(manifest)
                .with_wasi(true)
                .with_fuel_limit(u64::MAX)
                .with_initialization_fuel_limit(1_000_000_000)
                .with_cache_disabled(),
        )?;
        for _ in 0..runs {
            let started = Instant::now();
            let mut plugin = Plugin::new_from_compiled(&compiled)?;
            // Runs start-up (initialisers) as the operator's start-up probe does.
            let _ = plugin.call::<&[u8], Vec<u8>>("\0bench-startup", &[]);
            load.instantiate_ms
                .push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}
