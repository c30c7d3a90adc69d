//! The Wasm exports: `wizer.initialize` (build time only; Wizer removes it from the snapshot),
//! and the Extism plugin functions `reconcile` and `finalize`.

use std::cell::OnceCell;
use std::io::Read;

use extism_pdk::{LogLevel, Memory};

use crate::console::{self, Level};
use crate::engine::{Engine, Export, InitError};
use crate::{FILE_NAME_ENV, InitReport};

thread_local! {
    // Set once by `wizer.initialize` and captured in the snapshot; the Wasm instance is
    // single-threaded, so this is a plain static in linear memory.
    static ENGINE: OnceCell<Engine> = const { OnceCell::new() };
}

/// Evaluates the source read from standard input and reports on standard output.
#[allow(unsafe_code)] // reason: a Wasm export needs an unmangled name; no unsafe code runs
#[unsafe(export_name = "wizer.initialize")]
pub extern "C" fn wizer_initialize() {
    let report = match initialize() {
        Ok(exports) => InitReport::Ready { exports },
        Err(error) => InitReport::Failed(error),
    };
    // A failed write leaves standard output empty, which the build tool reports.
    if let Ok(line) = serde_json::to_string(&report) {
        println!("{line}");
    }
}

fn initialize() -> Result<Vec<&'static str>, InitError> {
    // Extism's host functions do not exist while Wizer runs this: console output goes to stderr.
    console::set_sink(|level, line| eprintln!("{level:?}: {line}"));
    let file_name = std::env::var(FILE_NAME_ENV).unwrap_or_else(|_| "plugin.js".to_string());
    let mut source = String::new();
    std::io::stdin()
        .read_to_string(&mut source)
        .map_err(|e| InitError::Engine {
            message: format!("reading the JavaScript source from standard input: {e}"),
        })?;
    let engine = Engine::new(&source, &file_name)?;
    // Only the source's own names reach the snapshot; the text itself is no longer needed.
    drop(source);
    let exports = [Export::Reconcile, Export::Finalize]
        .into_iter()
        .filter(|e| engine.has(*e))
        .map(Export::name)
        .collect();
    ENGINE
        .with(|cell| cell.set(engine))
        .map_err(|_| InitError::Engine {
            message: "wizer.initialize ran twice".to_string(),
        })?;
    console::set_sink(log_to_extism);
    Ok(exports)
}

fn log_to_extism(level: Level, line: &str) {
    let level = match level {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    };
    // The host frees the block after logging it (Extism's `log_*` take ownership).
    if let Ok(memory) = Memory::from_bytes(line) {
        memory.log(level);
    }
}

/// Extism export: calls the JavaScript `reconcile(request)`.
#[allow(unsafe_code)] // reason: a Wasm export needs an unmangled name; no unsafe code runs
#[unsafe(no_mangle)]
pub extern "C" fn reconcile() -> i32 {
    call(Export::Reconcile)
}

/// Extism export: calls the JavaScript `finalize(request)`. `wasmop-js-build` removes this
/// export from plugins whose source defines no `finalize`, so hosts can see it is missing.
#[allow(unsafe_code)] // reason: a Wasm export needs an unmangled name; no unsafe code runs
#[unsafe(no_mangle)]
pub extern "C" fn finalize() -> i32 {
    call(Export::Finalize)
}

fn call(export: Export) -> i32 {
    let request = extism_pdk::input_bytes();
    let result = ENGINE.with(|cell| match cell.get() {
        Some(engine) => engine.call(export, &request),
        None => Err(
            "this is the bare wasmop JavaScript runtime, not a plugin: build one from \
                     your source with `wasmop js build app.js -o app.wasm`"
                .to_string(),
        ),
    });
    let written = result.and_then(|json| {
        Memory::from_bytes(json)
            .map(Memory::set_output)
            .map_err(|e| format!("handing the response to the host: {e}"))
    });
    match written {
        Ok(()) => 0,
        Err(message) => fail(&message),
    }
}

/// Sets the Extism error for this call and returns the failure code.
fn fail(message: &str) -> i32 {
    if let Ok(memory) = Memory::from_bytes(message) {
        #[allow(unsafe_code)] // reason: Extism's only way to report an error is this import
        // SAFETY: `memory` is a live Extism block holding the message; `error_set` only records
        // its offset, and the block stays allocated until the host has read it after the call.
        unsafe {
            extism_pdk::extism::error_set(memory.offset());
        }
    }
    1
}
