//! Builds a wasmop plugin from JavaScript: the wasmop JavaScript runtime
//! (`plugins/js-runtime`, QuickJS) with the user's source evaluated once, here, at build time,
//! and the resulting memory snapshotted into a new module (Wizer). This is what `extism-js` and
//! Javy do; the output is an ordinary Extism plugin exporting `reconcile` (and `finalize` when
//! the source defines it).
//!
//! ```no_run
//! let runtime = wasmop_js_build::load_runtime(&wasmop_js_build::default_runtime_path())?;
//! let plugin = wasmop_js_build::build("export function reconcile(r) { return {}; }", &runtime)?;
//! # Ok::<(), wasmop_js_build::Error>(())
//! ```
//!
//! # The runtime
//! The runtime is a `wasm32-wasip1` cdylib that a host build cannot produce on its own, so this
//! crate takes its bytes as an argument. [`default_runtime_path`] is where `make plugins` puts
//! it (overridable with [`RUNTIME_ENV`]); a release of the operator ships it beside the binary.
//!
//! # Guarantees
//! - Reproducible: the same source, file name and runtime give the same bytes. The source runs
//!   with a fixed clock (1970-01-01T00:00:00Z), "random" bytes that are all zero, no arguments and no
//!   files, so nothing about the build machine reaches the snapshot.
//! - Errors in the source are reported with their position ([`Error::Syntax`]).
//! - The source is not stored in the plugin as text; QuickJS keeps it only as compiled
//!   functions (and their source text for `Function.prototype.toString`).

mod remove_export;

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Deserialize;
use wasmtime::{
    Config, Engine, Instance, Linker, Module, OptLevel, Store, StoreLimits, StoreLimitsBuilder,
    Trap, Val,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{Deterministic, WasiCtxBuilder};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

/// Overrides [`default_runtime_path`].
pub const RUNTIME_ENV: &str = "WASMOP_JS_RUNTIME";

/// The runtime's file name as cargo writes it.
pub const RUNTIME_FILE_NAME: &str = "wasmop_js_runtime.wasm";

/// The runtime export that evaluates the source (removed from the output by Wizer).
const INIT_EXPORT: &str = "wizer.initialize";
/// Must match `FILE_NAME_ENV` in `plugins/js-runtime/src/lib.rs`.
const FILE_NAME_ENV: &str = "WASMOP_JS_FILE_NAME";
/// Cap on what the source may print while it is evaluated.
const MAX_CONSOLE_BYTES: usize = 1 << 20;
/// Cap on the runtime's linear memory while the source is evaluated; it is also the most
/// memory a snapshot can start with.
const MAX_BUILD_MEMORY: usize = 256 << 20;
/// Wasm instructions (roughly) the runtime may execute while evaluating the source: about
/// 450 times what the Website example needs (4.5 million), and a few seconds of work.
const BUILD_FUEL: u64 = 2_000_000_000;

/// What can go wrong turning JavaScript into a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "cannot read the wasmop JavaScript runtime at {}: {source}; build it with `make plugins` \
         or set {RUNTIME_ENV} to its path",
        path.display()
    )]
    RuntimeNotFound {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this is not the wasmop JavaScript runtime ({reason}); pass the file `make plugins` \
         builds ({RUNTIME_FILE_NAME}), not a plugin built from it"
    )]
    NotARuntime { reason: String },
    #[error("{}: {message}", location(file, *line, *column))]
    Syntax {
        file: String,
        line: Option<u32>,
        column: Option<u32>,
        message: String,
    },
    #[error("{}: evaluating the source threw: {message}", location(file, *line, *column))]
    Exception {
        file: String,
        line: Option<u32>,
        column: Option<u32>,
        message: String,
    },
    #[error(
        "{file} defines no `reconcile` function (its exports: {}); write \
         `export function reconcile(request) {{ ... }}`, or `module.exports = {{ reconcile }}` \
         in CommonJS",
        if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
    )]
    MissingReconcile { file: String, exports: Vec<String> },
    #[error("{file}: `{name}` must be a function, but it is {found}")]
    NotAFunction {
        file: String,
        name: String,
        found: String,
    },
    #[error("the JavaScript engine failed while evaluating {file}: {message}")]
    Engine { file: String, message: String },
    /// The runtime trapped or misbehaved: a bug in the runtime, or a runtime/builder mismatch.
    #[error(
        "the JavaScript runtime crashed while evaluating {file} (rebuild it with `make plugins` \
         if it is older than this tool): {detail}"
    )]
    RuntimeCrashed { file: String, detail: String },
    #[error(
        "{file}: evaluating the top-level code did not finish within the build's budget; is \
         there an endless loop outside any function?"
    )]
    TooLong { file: String },
    #[error("snapshotting the initialised runtime failed: {0}")]
    Snapshot(String),
    #[error(
        "wasm-opt failed ({detail}); install binaryen (`apt-get install binaryen`) or build \
         without --wasm-opt"
    )]
    WasmOpt { detail: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn location(file: &str, line: Option<u32>, column: Option<u32>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

/// Where the runtime is looked for: `$WASMOP_JS_RUNTIME`, else
/// `<target dir>/wasm32-wasip1/plugin/wasmop_js_runtime.wasm` of this workspace (the target
/// dir is `$CARGO_TARGET_DIR` when set), which is where `make plugins` writes it.
pub fn default_runtime_path() -> PathBuf {
    if let Some(path) = std::env::var_os(RUNTIME_ENV) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("wasm32-wasip1/plugin").join(RUNTIME_FILE_NAME)
}

/// Reads the runtime from `path`.
///
/// # Errors
/// [`Error::RuntimeNotFound`], naming the path and how to build the file.
pub fn load_runtime(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::RuntimeNotFound {
        path: path.to_path_buf(),
        source,
    })
}

/// Builds a plugin from `js_source` with default options (file name `plugin.js`, no
/// `wasm-opt`). See [`Builder`].
///
/// # Errors
/// See [`Error`]; a syntax error carries its line and column.
pub fn build(js_source: &str, runtime_wasm: &[u8]) -> Result<Vec<u8>> {
    Builder::new(runtime_wasm).build(js_source).map(|p| p.wasm)
}

/// Whether to run binaryen's `wasm-opt -Oz` over the snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WasmOpt {
    /// Never (the default: the output then depends on nothing but the inputs).
    #[default]
    Off,
    /// When `wasm-opt` is on `PATH`; silently skipped otherwise.
    IfInstalled,
    /// Always; [`Error::WasmOpt`] when it is missing or fails.
    Required,
}

/// Options for a build.
#[derive(Clone, Debug)]
pub struct Builder<'r> {
    runtime: &'r [u8],
    file_name: String,
    wasm_opt: WasmOpt,
}

/// A built plugin.
#[derive(Clone, Debug)]
pub struct Plugin {
    /// The Extism plugin: a core Wasm module importing WASI preview 1 and Extism's kernel.
    pub wasm: Vec<u8>,
    /// Whether the source defines `finalize` (the export exists only then).
    pub has_finalize: bool,
    /// What the source printed with `console.*` while it was evaluated, one line each.
    pub console: String,
    /// Whether `wasm-opt` ran.
    pub wasm_opt_ran: bool,
}

impl<'r> Builder<'r> {
    /// A build using `runtime_wasm`, the bytes of `wasmop_js_runtime.wasm`.
    pub fn new(runtime_wasm: &'r [u8]) -> Self {
        Builder {
            runtime: runtime_wasm,
            file_name: "plugin.js".to_string(),
            wasm_opt: WasmOpt::Off,
        }
    }

    /// The name errors and JavaScript stack traces use for the source (e.g. `app.js`).
    pub fn file_name(mut self, file_name: impl Into<String>) -> Self {
        self.file_name = file_name.into();
        self
    }

    /// Whether to optimise the output with `wasm-opt`.
    pub fn wasm_opt(mut self, wasm_opt: WasmOpt) -> Self {
        self.wasm_opt = wasm_opt;
        self
    }

    /// Evaluates `js_source` in the runtime and snapshots the result.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn build(&self, js_source: &str) -> Result<Plugin> {
        check_runtime(self.runtime)?;
        let wizer = Wizer::new().init_func(INIT_EXPORT).clone();
        let (module_context, instrumented) =
            wizer
                .instrument(self.runtime)
                .map_err(|e| Error::NotARuntime {
                    reason: format!("{e:#}"),
                })?;

        let initialised = self.initialise(&instrumented, js_source)?;
        let InitRun {
            report,
            console,
            mut store,
            instance,
        } = initialised;
        let exports = match report {
            InitReport::Ready { exports } => exports,
            InitReport::Failed(failure) => return Err(failure.into_error(&self.file_name)),
        };

        let mut state = WasmtimeState {
            store: &mut store,
            instance,
        };
        let snapshot = run_ready(wizer.snapshot(&module_context, &mut state))
            .ok_or_else(|| Error::Snapshot("the snapshot did not complete synchronously".into()))?
            .map_err(|e| Error::Snapshot(format!("{e:#}")))?;

        let has_finalize = exports.iter().any(|e| e == "finalize");
        let mut wasm = if has_finalize {
            snapshot
        } else {
            remove_export::remove_export(&snapshot, "finalize").map_err(|e| {
                Error::Snapshot(format!("removing the unused `finalize` export: {e}"))
            })?
        };

        let wasm_opt_ran = match self.wasm_opt {
            WasmOpt::Off => false,
            WasmOpt::IfInstalled | WasmOpt::Required => match wasm_opt(&wasm) {
                Ok(optimised) => {
                    wasm = optimised;
                    true
                }
                Err(WasmOptError::NotInstalled) if self.wasm_opt == WasmOpt::IfInstalled => false,
                Err(e) => {
                    return Err(Error::WasmOpt {
                        detail: e.to_string(),
                    });
                }
            },
        };
        Ok(Plugin {
            wasm,
            has_finalize,
            console,
            wasm_opt_ran,
        })
    }

    /// Instantiates the instrumented runtime with the source on stdin and runs its initialiser.
    fn initialise(&self, instrumented: &[u8], js_source: &str) -> Result<InitRun> {
        let crashed = |detail: String| Error::RuntimeCrashed {
            file: self.file_name.clone(),
            detail,
        };
        let module = compile(instrumented)?;
        let engine = module.engine().clone();

        let stdout = MemoryOutputPipe::new(MAX_CONSOLE_BYTES);
        let stderr = MemoryOutputPipe::new(MAX_CONSOLE_BYTES);
        let wasi = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(js_source.as_bytes().to_vec()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .env(FILE_NAME_ENV, &self.file_name)
            .secure_random(Deterministic::new(vec![0]))
            .insecure_random(Deterministic::new(vec![0]))
            .insecure_random_seed(0)
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .build_p1();
        let limits = StoreLimitsBuilder::new()
            .memory_size(MAX_BUILD_MEMORY)
            .build();

        let mut linker: Linker<BuildState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state| &mut state.wasi)
            .map_err(|e| crashed(format!("{e:#}")))?;
        // Extism's kernel is absent at build time; the runtime does not call it while it
        // initialises (console output goes to stderr then), so a call would be a runtime bug.
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| crashed(format!("{e:#}")))?;
        let mut store = Store::new(&engine, BuildState { wasi, limits });
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(BUILD_FUEL)
            .map_err(|e| crashed(format!("{e:#}")))?;
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(|e| crashed(format!("{e:#}")))?;

        // What `Wizer::run` does: a WASI reactor's `_initialize` first, then the initialiser.
        for export in ["_initialize", INIT_EXPORT] {
            let Some(func) = instance.get_func(&mut store, export) else {
                continue;
            };
            let func = func
                .typed::<(), ()>(&store)
                .map_err(|e| crashed(format!("`{export}`: {e:#}")))?;
            if let Err(e) = func.call(&mut store, ()) {
                if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
                    return Err(Error::TooLong {
                        file: self.file_name.clone(),
                    });
                }
                let printed = String::from_utf8_lossy(&stderr.contents()).into_owned();
                return Err(crashed(format!("{e:#}\n{printed}").trim_end().to_string()));
            }
        }

        let out = stdout.contents();
        let report = serde_json::from_slice::<InitReport>(out.trim_ascii()).map_err(|e| {
            crashed(format!(
                "its report on standard output is not understood ({e}): {:?}",
                String::from_utf8_lossy(&out)
            ))
        })?;
        Ok(InitRun {
            report,
            console: String::from_utf8_lossy(&stderr.contents()).into_owned(),
            store,
            instance,
        })
    }
}

/// Compiles the instrumented runtime, reusing the last compilation when the runtime is the
/// same: a process that builds many plugins (the operator, tests) compiles it once.
fn compile(instrumented: &[u8]) -> Result<Module> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    static LAST: Mutex<Option<(u64, usize, Module)>> = Mutex::new(None);

    let key = BuildHasherDefault::<DefaultHasher>::default().hash_one(instrumented);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((k, len, module)) = last.as_ref()
        && (*k, *len) == (key, instrumented.len())
    {
        return Ok(module.clone());
    }
    let mut config = Config::new();
    // The module runs once per build: compile fast rather than well.
    config.cranelift_opt_level(OptLevel::None);
    // Top-level code must not hang a build: fuel bounds it, deterministically.
    config.consume_fuel(true);
    let engine = Engine::new(&config).map_err(|e| Error::NotARuntime {
        reason: format!("{e:#}"),
    })?;
    let module = Module::new(&engine, instrumented).map_err(|e| Error::NotARuntime {
        reason: format!("{e:#}"),
    })?;
    *last = Some((key, instrumented.len(), module.clone()));
    Ok(module)
}

/// The store's data while the source is evaluated.
struct BuildState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

struct InitRun {
    report: InitReport,
    console: String,
    store: Store<BuildState>,
    instance: Instance,
}

/// Mirrors `InitReport` in `plugins/js-runtime/src/lib.rs`.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
enum InitReport {
    Ready { exports: Vec<String> },
    Failed(InitFailure),
}

/// Mirrors `InitError` in `plugins/js-runtime/src/engine.rs`.
#[derive(Deserialize, Debug)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
enum InitFailure {
    Syntax {
        message: String,
        line: Option<u32>,
        column: Option<u32>,
    },
    Exception {
        message: String,
        line: Option<u32>,
        column: Option<u32>,
    },
    MissingReconcile {
        exports: Vec<String>,
    },
    NotAFunction {
        name: String,
        found: String,
    },
    Engine {
        message: String,
    },
}

impl InitFailure {
    fn into_error(self, file: &str) -> Error {
        let file = file.to_string();
        match self {
            InitFailure::Syntax {
                message,
                line,
                column,
            } => Error::Syntax {
                file,
                line,
                column,
                // The rest is QuickJS's one-frame stack, which repeats the position.
                message: message.lines().next().unwrap_or_default().to_string(),
            },
            InitFailure::Exception {
                message,
                line,
                column,
            } => Error::Exception {
                file,
                line,
                column,
                message,
            },
            InitFailure::MissingReconcile { exports } => Error::MissingReconcile { file, exports },
            InitFailure::NotAFunction { name, found } => Error::NotAFunction { file, name, found },
            InitFailure::Engine { message } => Error::Engine { file, message },
        }
    }
}

/// A quick check with a clear message before Wizer's own (which would say less).
fn check_runtime(wasm: &[u8]) -> Result<()> {
    let not = |reason: &str| Error::NotARuntime {
        reason: reason.to_string(),
    };
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| not(&format!("not a Wasm module: {e}")))?;
        if let wasmparser::Payload::ExportSection(exports) = payload {
            for export in exports {
                let export = export.map_err(|e| not(&format!("not a Wasm module: {e}")))?;
                if export.name == INIT_EXPORT {
                    return Ok(());
                }
            }
        }
    }
    Err(not(&format!("it has no `{INIT_EXPORT}` export")))
}

/// Lets Wizer read the instance's globals and memory.
struct WasmtimeState<'a> {
    store: &'a mut Store<BuildState>,
    instance: Instance,
}

impl InstanceState for WasmtimeState<'_> {
    async fn global_get(&mut self, name: &str, _type_hint: ValType) -> SnapshotVal {
        // Wizer asks only for globals it exported itself while instrumenting.
        let value = self
            .instance
            .get_global(&mut *self.store, name)
            .map(|g| g.get(&mut *self.store));
        match value {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            other => panic!("wizer asked for global {name:?}, which is {other:?}"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => panic!("wizer asked for memory {name:?}, which the instance does not export"),
        }
    }
}

/// Polls a future that never waits (ours answers every Wizer question at once) to completion.
fn run_ready<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// The build-time clock: always the Unix epoch, for reproducible snapshots.
struct FixedClock;

impl wasmtime_wasi::HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

#[derive(Debug, thiserror::Error)]
enum WasmOptError {
    #[error("wasm-opt is not on PATH")]
    NotInstalled,
    #[error("{0}")]
    Failed(String),
}

/// The Wasm features rustc and clang use for the runtime, named one by one: binaryen's
/// `--all-features` also allows typed function references in its output, which wasmtime's
/// default configuration (and so Extism) rejects.
const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Runs `wasm-opt -Oz` over `wasm` through temporary files.
fn wasm_opt(wasm: &[u8]) -> Result<Vec<u8>, WasmOptError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let stem = format!(
        "wasmop-js-build-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir();
    let (input, output) = (
        dir.join(format!("{stem}.in.wasm")),
        dir.join(format!("{stem}.out.wasm")),
    );
    let io = |e: std::io::Error| WasmOptError::Failed(e.to_string());
    std::fs::write(&input, wasm).map_err(io)?;
    let run = Command::new("wasm-opt")
        .arg("-Oz")
        .args(WASM_FEATURES)
        .args(["--strip-debug", "--strip-producers"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output();
    let result = match run {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(WasmOptError::NotInstalled),
        Err(e) => Err(io(e)),
        Ok(out) if !out.status.success() => Err(WasmOptError::Failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(_) => std::fs::read(&output).map_err(io),
    };
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    result
}
