//! `wasmop-js-build app.js -o app.wasm`: the interim command line for [`wasmop_js_build`]
//! until the operator grows `wasmop js build`. CLI parsing and printing only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use wasmop_js_build::{Builder, WasmOpt};

/// Build a pre-initialised wasmop plugin from one JavaScript file (bundle first: no imports).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The JavaScript source: an ES module exporting `reconcile` (and optionally `finalize`).
    input: PathBuf,
    /// Where to write the plugin.
    #[arg(short, long)]
    output: PathBuf,
    /// The wasmop JavaScript runtime (`make plugins` builds it).
    #[arg(long, env = wasmop_js_build::RUNTIME_ENV)]
    runtime: Option<PathBuf>,
    /// Shrink the result with binaryen's `wasm-opt -Oz` when it is installed.
    #[arg(long)]
    wasm_opt: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let source = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("reading {}: {e}", args.input.display()))?;
    let runtime_path = args
        .runtime
        .clone()
        .unwrap_or_else(wasmop_js_build::default_runtime_path);
    let runtime = wasmop_js_build::load_runtime(&runtime_path).map_err(|e| e.to_string())?;
    let file_name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin.js".to_string());
    let plugin = Builder::new(&runtime)
        .file_name(file_name)
        .wasm_opt(if args.wasm_opt {
            WasmOpt::IfInstalled
        } else {
            WasmOpt::Off
        })
        .build(&source)
        .map_err(|e| e.to_string())?;
    eprint!("{}", plugin.console);
    if args.wasm_opt && !plugin.wasm_opt_ran {
        eprintln!(
            "note: wasm-opt is not installed (Debian: binaryen); the plugin is not optimised"
        );
    }
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(&args.output, &plugin.wasm)
        .map_err(|e| format!("writing {}: {e}", args.output.display()))?;
    eprintln!(
        "wrote {} ({} bytes{}, exports reconcile{}) in {:.2?}",
        args.output.display(),
        plugin.wasm.len(),
        if plugin.wasm_opt_ran {
            ", wasm-opt -Oz"
        } else {
            ""
        },
        if plugin.has_finalize {
            " and finalize"
        } else {
            ""
        },
        started.elapsed()
    );
    Ok(())
}
