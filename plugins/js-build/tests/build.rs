//! Builds small JavaScript plugins with the real runtime and calls them through Extism, the
//! way the operator will.
//!
//! The runtime is `target/wasm32-wasip1/plugin/wasmop_js_runtime.wasm` (or `$WASMOP_JS_RUNTIME`),
//! which `make plugins` builds. These tests fail, naming that command, when it is missing or
//! older than the runtime's sources: a host `cargo test` cannot build a wasm32 cdylib itself
//! without the WASI C toolchain settings that live in the Makefile.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use extism::Plugin;
use serde_json::{Value, json};
use wasmop_js_build::{Builder, Error};

fn runtime() -> &'static [u8] {
    static RUNTIME: OnceLock<Vec<u8>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let path = wasmop_js_build::default_runtime_path();
        let wasm = wasmop_js_build::load_runtime(&path).unwrap_or_else(|e| {
            panic!(
                "\n\n*** {e}\n*** run `make plugins` first; these tests need the real runtime\n\n"
            )
        });
        if let Some(newer) = newer_source(&path) {
            panic!(
                "\n\n*** {} is older than {}\n*** run `make plugins` to rebuild the runtime\n\n",
                path.display(),
                newer.display()
            );
        }
        wasm
    })
}

/// A runtime source file modified after the runtime wasm was built, if any.
fn newer_source(wasm: &Path) -> Option<std::path::PathBuf> {
    if std::env::var_os(wasmop_js_build::RUNTIME_ENV).is_some() {
        return None; // an explicitly chosen runtime is taken as it is
    }
    let built = std::fs::metadata(wasm).and_then(|m| m.modified()).ok()?;
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../js-runtime");
    let mut files = vec![crate_dir.join("Cargo.toml")];
    files.extend(
        std::fs::read_dir(crate_dir.join("src"))
            .ok()?
            .flatten()
            .map(|e| e.path()),
    );
    files.into_iter().find(|f| {
        std::fs::metadata(f)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > built)
    })
}

fn build(source: &str) -> Result<wasmop_js_build::Plugin, Error> {
    Builder::new(runtime()).file_name("app.js").build(source)
}

fn load(source: &str) -> Plugin {
    let plugin = build(source).unwrap_or_else(|e| panic!("{e}"));
    Plugin::new(plugin.wasm, [], true).expect("the built plugin loads in Extism with WASI")
}

fn call(plugin: &mut Plugin, export: &str, request: &Value) -> Result<Value, String> {
    plugin
        .call::<&str, &str>(export, &request.to_string())
        .map(|out| serde_json::from_str(out).expect("the plugin returns JSON"))
        .map_err(|e| e.to_string())
}

const ECHO: &str = r#"
let calls = 0;
export function reconcile(request) {
  calls++;
  const name = request.object.metadata.name;
  return {
    children: [{ apiVersion: "v1", kind: "ConfigMap", metadata: { name }, data: { calls: String(calls) } }],
    status: { seen: request.controller.config.replicas },
  };
}
"#;

#[test]
fn js_plugin_round_trips_a_request_through_extism() {
    let mut plugin = load(ECHO);
    let request = json!({
        "abiVersion": wasmop_abi::ABI_VERSION,
        "controller": { "name": "c", "namespace": "n", "config": { "replicas": 3 } },
        "object": { "metadata": { "name": "site" } },
    });
    let response = call(&mut plugin, "reconcile", &request).unwrap();
    let typed: wasmop_abi::ReconcileResponse = serde_json::from_value(response.clone()).unwrap();
    assert_eq!(typed.children[0]["metadata"]["name"], "site");
    assert_eq!(typed.status, Some(json!({ "seen": 3 })));
    // The runtime and the module's state live as long as the instance.
    let again = call(&mut plugin, "reconcile", &request).unwrap();
    assert_eq!(again["children"][0]["data"]["calls"], "2");
}

#[test]
fn js_exception_becomes_an_extism_error_with_its_message_and_stack() {
    let mut plugin = load(
        "export function reconcile(request) {\n  if (request.bad) {\n    throw new Error('spec.replicas must be a non-negative integer');\n  }\n  return {};\n}\n",
    );
    let error = call(&mut plugin, "reconcile", &json!({ "bad": true })).unwrap_err();
    let mut lines = error.lines();
    assert_eq!(
        lines.next(),
        Some("spec.replicas must be a non-negative integer"),
        "{error}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains("at reconcile (app.js:3")),
        "{error}"
    );
    // A failed call leaves the instance usable.
    assert_eq!(
        call(&mut plugin, "reconcile", &json!({})).unwrap(),
        json!({})
    );
}

#[test]
fn syntax_error_fails_the_build_with_its_line_and_column() {
    let error =
        build("export function reconcile(request) {\n  return { children: [ };\n}\n").unwrap_err();
    match &error {
        Error::Syntax {
            file,
            line,
            column,
            message,
        } => {
            assert_eq!((file.as_str(), *line), ("app.js", Some(2)), "{error}");
            assert!(
                column.is_some() && message.starts_with("SyntaxError"),
                "{error}"
            );
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    assert!(error.to_string().starts_with("app.js:2:"), "{error}");
}

#[test]
fn throwing_while_evaluating_fails_the_build_with_the_position() {
    let error =
        build("const config = JSON.parse('{');\nexport function reconcile() { return {}; }")
            .unwrap_err();
    assert!(
        matches!(error, Error::Exception { line: Some(1), .. }),
        "{error:?}"
    );
}

#[test]
fn missing_reconcile_fails_the_build_and_says_how_to_export_it() {
    let error =
        build("function reconcile() { return {}; }\nexport const version = 1;").unwrap_err();
    assert!(
        matches!(&error, Error::MissingReconcile { exports, .. } if exports == &["version"]),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("export function reconcile"),
        "{error}"
    );
}

#[test]
fn finalize_is_exported_only_when_the_source_defines_it() {
    let without = load("export const reconcile = () => ({});");
    assert!(without.function_exists("reconcile") && !without.function_exists("finalize"));

    let mut with = load(
        "export const reconcile = () => ({});\nexport const finalize = (r) => ({ finalized: r.finalizing });",
    );
    assert_eq!(
        call(&mut with, "finalize", &json!({ "finalizing": true })).unwrap(),
        json!({ "finalized": true })
    );
}

#[test]
fn commonjs_bundles_as_extism_js_expects_them_work_too() {
    let mut plugin = load("module.exports = { reconcile: (r) => ({ status: { n: r.n } }) };");
    assert_eq!(
        call(&mut plugin, "reconcile", &json!({ "n": 1 })).unwrap(),
        json!({ "status": { "n": 1 } })
    );
}

#[test]
fn the_same_source_builds_to_the_same_bytes() {
    let source = "const started = Date.now(); const r = Math.random();\nexport function reconcile() { return { status: { started, r } }; }";
    let (a, b) = (build(source).unwrap(), build(source).unwrap());
    assert!(a.wasm == b.wasm, "two builds of one source differ");
    // The build-time clock is the epoch, whatever the build machine's time.
    let mut plugin = Plugin::new(a.wasm, [], true).unwrap();
    assert_eq!(
        call(&mut plugin, "reconcile", &json!({})).unwrap()["status"]["started"],
        0
    );
}

#[test]
fn console_at_build_time_is_returned_and_at_run_time_goes_to_extism_logs() {
    static LOGS: Mutex<String> = Mutex::new(String::new());
    extism::set_log_callback(|line: &str| LOGS.lock().unwrap().push_str(line), "info")
        .expect("no other test installs a log subscriber");

    let built = build("console.log('loaded', { v: 1 });\nexport function reconcile() { console.warn('reconciling'); return {}; }").unwrap();
    assert_eq!(built.console, "Info: loaded {\"v\":1}\n");
    let mut plugin = Plugin::new(built.wasm, [], true).unwrap();
    call(&mut plugin, "reconcile", &json!({})).unwrap();
    let logs = LOGS.lock().unwrap().clone();
    assert!(
        logs.contains("WARN") && logs.contains("reconciling"),
        "{logs}"
    );
}

#[test]
fn a_built_plugin_is_refused_as_a_runtime() {
    let plugin = build(ECHO).unwrap();
    let error = Builder::new(&plugin.wasm).build(ECHO).unwrap_err();
    assert!(matches!(error, Error::NotARuntime { .. }), "{error:?}");
    assert!(error.to_string().contains("make plugins"), "{error}");
}

#[test]
fn the_bare_runtime_says_it_is_not_a_plugin() {
    let mut bare = Plugin::new(runtime(), [], true).unwrap();
    let error = call(&mut bare, "reconcile", &json!({})).unwrap_err();
    assert!(error.contains("wasmop js build"), "{error}");
}

#[test]
fn wasm_opt_output_still_loads_in_extism_when_binaryen_is_installed() {
    let built = Builder::new(runtime())
        .wasm_opt(wasmop_js_build::WasmOpt::IfInstalled)
        .build(ECHO)
        .unwrap();
    let plain = build(ECHO).unwrap();
    if built.wasm_opt_ran {
        assert!(
            built.wasm.len() < plain.wasm.len(),
            "wasm-opt -Oz made the plugin larger"
        );
    }
    let mut plugin =
        Plugin::new(built.wasm, [], true).expect("Extism accepts the optimised module");
    let request =
        json!({ "controller": { "config": {} }, "object": { "metadata": { "name": "x" } } });
    assert!(call(&mut plugin, "reconcile", &request).is_ok());
}

#[test]
fn an_endless_loop_in_top_level_code_fails_the_build_instead_of_hanging_it() {
    let started = std::time::Instant::now();
    let error = build("while (true) {}\nexport function reconcile() { return {}; }").unwrap_err();
    assert!(matches!(error, Error::TooLong { .. }), "{error:?}");
    assert!(error.to_string().contains("endless loop"), "{error}");
    eprintln!("the fuel budget ran out after {:.1?}", started.elapsed());
}
