//! The Extism plugin host: the only module that names extism or wasmtime.
//!
//! A plugin is compiled once per (sha256, limits) and shared ([`Host::load`]); each concurrent
//! call takes an instance from a small pool, so parents are reconciled in parallel without
//! recompiling. Calls run on tokio's blocking pool, never on the async worker threads.
//!
//! # Guarantees
//! - Limits: linear memory is capped (`memoryMiB`), each call has a wall-clock deadline
//!   (`timeoutMs`, enforced by epoch interruption) and optionally a fuel budget. No WASI
//!   filesystem or network, and no Extism HTTP (the feature is compiled out).
//! - A reconcile is a pure function of its request: an instance whose call failed in any way
//!   is discarded, and healthy instances are recycled after [`RECYCLE_AFTER_CALLS`] calls so
//!   no state leaks between parents for long.
//! - Extism reports failures as untyped errors; they are classified into [`Error`] here, once.
//!
//! Plugin log calls (`extism_pdk::info!`, `console.log`, ...) are emitted as `tracing` events
//! inside the caller's span, so they carry the controller and object fields.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};

use crate::crd::Limits;
use crate::source::PluginBytes;

/// The `tracing` target of plugin log calls (Extism emits them from its `pdk` module).
pub const PLUGIN_LOG_TARGET: &str = "extism::pdk";

/// A healthy instance is replaced after this many calls.
pub const RECYCLE_AFTER_CALLS: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "plugin {sha256:.12} failed to compile: {message}. Is it an Extism plugin built for wasm32-unknown-unknown or wasm32-wasip1?"
    )]
    Compile { sha256: String, message: String },
    #[error(
        "plugin does not export `{export}`: export it (e.g. #[plugin_fn] pub fn {export}) or set spec.plugin.finalize: false"
    )]
    MissingExport { export: String },
    #[error(
        "plugin call timed out after {timeout_ms} ms (spec.plugin.limits.timeoutMs): make the plugin faster or raise the limit"
    )]
    Timeout { timeout_ms: u32 },
    #[error(
        "plugin ran out of memory (spec.plugin.limits.memoryMiB = {memory_mib}): allocate less or raise the limit"
    )]
    OutOfMemory { memory_mib: u32 },
    #[error(
        "plugin ran out of fuel (spec.plugin.limits.fuel = {fuel}): do less work per call or raise the limit"
    )]
    OutOfFuel { fuel: u64 },
    #[error("plugin trapped: {message}")]
    Trap { message: String },
    #[error("plugin exited with WASI exit code {code}")]
    Exit { code: i32 },
    #[error("plugin returned an error: {message}")]
    Failed { message: String },
    #[error("plugin host failure: {message}")]
    Internal { message: String },
}

impl Error {
    /// The `kind` label of `wasmop_plugin_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Compile { .. } => "compile",
            Error::MissingExport { .. } => "missing_export",
            Error::Timeout { .. } => "timeout",
            Error::OutOfMemory { .. } => "out_of_memory",
            Error::OutOfFuel { .. } => "out_of_fuel",
            Error::Trap { .. } => "trap",
            Error::Exit { .. } => "exit",
            Error::Failed { .. } => "plugin_error",
            Error::Internal { .. } => "internal",
        }
    }

    /// A short UpperCamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Compile { .. } => "PluginCompileFailed",
            Error::MissingExport { .. } => "PluginMissingExport",
            Error::Timeout { .. } => "PluginTimeout",
            Error::OutOfMemory { .. } => "PluginOutOfMemory",
            Error::OutOfFuel { .. } => "PluginOutOfFuel",
            Error::Trap { .. } => "PluginTrap",
            Error::Exit { .. } => "PluginExited",
            Error::Failed { .. } => "PluginError",
            Error::Internal { .. } => "PluginHostError",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Compiles and caches plugins.
pub struct Host {
    compiled: Mutex<HashMap<(String, Limits), Weak<LoadedPlugin>>>,
    cache_config: Option<PathBuf>,
}

impl Host {
    /// `cache_dir`: where wasmtime keeps compiled machine code across operator restarts
    /// (None disables the on-disk cache).
    ///
    /// # Errors
    /// The cache directory or its config file cannot be written.
    pub fn new(cache_dir: Option<PathBuf>) -> std::io::Result<Self> {
        let cache_config = match cache_dir {
            Some(dir) => {
                let dir = std::path::absolute(dir)?;
                std::fs::create_dir_all(&dir)?;
                let config = dir.join("wasmtime-cache.toml");
                let body = format!(
                    "[cache]\ndirectory = {:?}\n",
                    dir.join("compiled").display().to_string()
                );
                std::fs::write(&config, body)?;
                Some(config)
            }
            None => None,
        };
        Ok(Host {
            compiled: Mutex::new(HashMap::new()),
            cache_config,
        })
    }

    /// Returns the compiled plugin for these bytes and limits, compiling it (off the async
    /// threads) only when no live controller already holds it.
    ///
    /// # Errors
    /// [`Error::Compile`] when the bytes are not a loadable Extism plugin.
    pub async fn load(
        &self,
        bytes: &PluginBytes,
        limits: &Limits,
        pool_size: usize,
    ) -> Result<Arc<LoadedPlugin>> {
        let key = (bytes.sha256.clone(), limits.clone());
        if let Some(p) = self
            .compiled
            .lock()
            .unwrap()
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Ok(p);
        }
        let (wasm, sha256, limits2, cache) = (
            bytes.wasm.clone(),
            bytes.sha256.clone(),
            limits.clone(),
            self.cache_config.clone(),
        );
        let started = Instant::now();
        let compiled =
            tokio::task::spawn_blocking(move || compile(&wasm, &sha256, &limits2, cache))
                .await
                .map_err(|e| Error::Internal {
                    message: e.to_string(),
                })??;
        tracing::info!(sha256 = %bytes.sha256, elapsed_ms = started.elapsed().as_millis() as u64, "plugin compiled");
        let loaded = Arc::new(LoadedPlugin {
            sha256: bytes.sha256.clone(),
            size_bytes: bytes.wasm.len() as u64,
            limits: limits.clone(),
            compiled,
            idle: Mutex::new(Vec::new()),
            max_idle: pool_size.max(1),
        });
        // Instantiate one up front so a broken module (bad imports) fails the load, not the
        // first reconcile, and the first call is warm.
        let probe = loaded.clone();
        let first = tokio::task::spawn_blocking(move || probe.instantiate())
            .await
            .map_err(|e| Error::Internal {
                message: e.to_string(),
            })??;
        loaded.idle.lock().unwrap().push(first);
        self.compiled
            .lock()
            .unwrap()
            .insert(key, Arc::downgrade(&loaded));
        Ok(loaded)
    }
}

fn compile(
    wasm: &[u8],
    sha256: &str,
    limits: &Limits,
    cache: Option<PathBuf>,
) -> Result<CompiledPlugin> {
    let manifest = Manifest::new([Wasm::data(wasm.to_vec())])
        .with_memory_max(limits.memory_mib().saturating_mul(16)) // 64 KiB pages
        .with_timeout(Duration::from_millis(limits.timeout_ms().into()))
        .disallow_all_hosts();
    let mut builder = PluginBuilder::new(manifest).with_wasi(true);
    builder = match cache {
        Some(config) => builder.with_cache_config(config),
        None => builder.with_cache_disabled(),
    };
    if let Some(fuel) = limits.fuel {
        builder = builder.with_fuel_limit(fuel);
    }
    CompiledPlugin::new(builder).map_err(|e| Error::Compile {
        sha256: sha256.into(),
        message: format!("{e:#}"),
    })
}

/// A compiled plugin and its pool of warm instances.
pub struct LoadedPlugin {
    pub sha256: String,
    pub size_bytes: u64,
    pub limits: Limits,
    compiled: CompiledPlugin,
    idle: Mutex<Vec<Instance>>,
    max_idle: usize,
}

struct Instance {
    plugin: Plugin,
    calls: u32,
}

/// The result of one call.
#[derive(Debug)]
pub struct CallOutput {
    pub output: Vec<u8>,
    pub elapsed: Duration,
}

impl LoadedPlugin {
    fn instantiate(&self) -> Result<Instance> {
        let plugin = Plugin::new_from_compiled(&self.compiled).map_err(|e| Error::Compile {
            sha256: self.sha256.clone(),
            message: format!("{e:#}"),
        })?;
        Ok(Instance { plugin, calls: 0 })
    }

    /// Whether the plugin exports `name`.
    ///
    /// # Errors
    /// The plugin cannot be instantiated.
    pub fn has_export(&self, name: &str) -> Result<bool> {
        let inst = self.take()?;
        let has = inst.plugin.function_exists(name);
        self.put_back(inst);
        Ok(has)
    }

    fn take(&self) -> Result<Instance> {
        let pooled = self.idle.lock().unwrap().pop();
        match pooled {
            Some(inst) => Ok(inst),
            None => self.instantiate(),
        }
    }

    fn put_back(&self, inst: Instance) {
        let mut idle = self.idle.lock().unwrap();
        if inst.calls < RECYCLE_AFTER_CALLS && idle.len() < self.max_idle {
            idle.push(inst);
        }
    }

    /// Calls `export` with `input` on a pooled instance, on the blocking pool, inside the
    /// current tracing span (so plugin logs carry its fields).
    ///
    /// # Errors
    /// Every failure of the call, classified; the instance is then discarded.
    pub async fn call(self: &Arc<Self>, export: &str, input: Vec<u8>) -> Result<CallOutput> {
        let this = self.clone();
        let export = export.to_string();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| this.call_blocking(&export, &input)))
            .await
            .map_err(|e| Error::Internal {
                message: format!("plugin call panicked: {e}"),
            })?
    }

    /// The synchronous form of [`LoadedPlugin::call`] (for `wasmop eval` and benchmarks).
    ///
    /// # Errors
    /// As [`LoadedPlugin::call`].
    pub fn call_blocking(&self, export: &str, input: &[u8]) -> Result<CallOutput> {
        let mut inst = self.take()?;
        if !inst.plugin.function_exists(export) {
            self.put_back(inst);
            return Err(Error::MissingExport {
                export: export.into(),
            });
        }
        let started = Instant::now();
        let result = inst
            .plugin
            .call_get_error_code::<&[u8], Vec<u8>>(export, input);
        let elapsed = started.elapsed();
        match result {
            Ok(output) => {
                inst.calls += 1;
                self.put_back(inst);
                Ok(CallOutput { output, elapsed })
            }
            // The instance is dropped here: after any failure its state is suspect.
            Err((err, code)) => Err(self.classify(err, code)),
        }
    }

    /// The one place Extism's untyped errors become [`Error`] variants.
    fn classify(&self, err: extism::Error, code: i32) -> Error {
        if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
            return match trap {
                wasmtime::Trap::Interrupt => Error::Timeout {
                    timeout_ms: self.limits.timeout_ms(),
                },
                wasmtime::Trap::OutOfFuel => Error::OutOfFuel {
                    fuel: self.limits.fuel.unwrap_or(0),
                },
                _ => Error::Trap {
                    message: format!("{err:#}"),
                },
            };
        }
        if err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() {
            return Error::Exit { code };
        }
        // Extism reports its own limits with these exact messages (plugin.rs `raw_call`).
        match err.to_string().as_str() {
            "timeout" => Error::Timeout {
                timeout_ms: self.limits.timeout_ms(),
            },
            "oom" => Error::OutOfMemory {
                memory_mib: self.limits.memory_mib(),
            },
            "plugin ran out of fuel" => Error::OutOfFuel {
                fuel: self.limits.fuel.unwrap_or(0),
            },
            _ if err
                .chain()
                .any(|c| c.downcast_ref::<wasmtime::Trap>().is_some()) =>
            {
                Error::Trap {
                    message: format!("{err:#}"),
                }
            }
            message => Error::Failed {
                message: message.to_string(),
            },
        }
    }
}
