//! `wasmop eval`, as a user runs it: the real binary, real plugins built by `make plugins`, the
//! Website fixture suite in `plugins/examples/fixtures/website/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

fn fixtures() -> PathBuf {
    root().join("plugins/examples/fixtures/website")
}

/// A plugin built by `make plugins`.
fn plugin(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let path = target.join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with `make plugins`",
        path.display()
    );
    path
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("eval-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `wasmop eval` with a compiled-plugin cache kept across test runs (the Go and JS
/// examples take seconds to compile).
fn eval(args: &[&str]) -> Output {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-cli-cache");
    Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .arg("eval")
        .args(args)
        .arg("--cache-dir")
        .arg(&cache)
        .env("WASMOP_LOG", "warn,extism::plugin=off")
        .output()
        .expect("running wasmop")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 paths")
}

#[test]
fn the_website_fixtures_pass_for_the_rust_js_and_go_examples() {
    for name in ["website-rust", "website-js", "website-go"] {
        let out = eval(&[s(&plugin(name)), "--test", s(&fixtures())]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert_eq!(
            stdout.lines().last(),
            Some("5 passed, 0 failed"),
            "{name}: {}",
            text(&out)
        );
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("ok    ")).count(),
            5,
            "{name}: {}",
            text(&out)
        );
    }
}

#[test]
fn a_changed_expectation_fails_with_a_diff_naming_the_value() {
    let dir = scratch("changed");
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let case = dir.join("content.yaml");
    let yaml = std::fs::read_to_string(&case).unwrap();
    assert!(
        yaml.contains("    observedGeneration: 3\n"),
        "the fixture changed: update this test"
    );
    std::fs::write(
        &case,
        yaml.replace("    observedGeneration: 3\n", "    observedGeneration: 9\n"),
    )
    .unwrap();

    let out = eval(&[s(&plugin("website-rust")), "--test", s(&dir)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout.contains("FAIL  content.yaml: status differs"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("--- expected") && stdout.contains("+++ actual"),
        "{}",
        text(&out)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.trim() == "-  observedGeneration: 9"),
        "{}",
        text(&out)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.trim() == "+  observedGeneration: 3"),
        "{}",
        text(&out)
    );
    assert_eq!(
        stdout.lines().last(),
        Some("4 passed, 1 failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn eval_prints_the_server_side_apply_bodies_the_operator_would_send() {
    let controller = root().join("samples/website/wasmcontroller.yaml");
    let case = fixtures().join("content.yaml");
    let out = eval(&[
        s(&plugin("website-rust")),
        s(&case),
        "--controller",
        s(&controller),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let writes = &report["writes"];
    assert_eq!(
        writes["fieldManager"], "wasmop.dev/team-a.website",
        "the controller's name and the parent's namespace"
    );
    let deployment = writes["apply"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["body"]["kind"] == "Deployment")
        .expect("a Deployment apply");
    assert_eq!(deployment["write"], "child");
    let body = &deployment["body"];
    assert_eq!(body["metadata"]["namespace"], "team-a");
    assert_eq!(
        body["metadata"]["labels"]["wasmop.dev/controller"],
        "website"
    );
    let owner = &body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Website");
    assert_eq!(owner["name"], "site");
    assert_eq!(owner["uid"], "5f1c2a9e-0000-4000-8000-000000000001");
    assert_eq!(owner["controller"], true);
    // The case's config wins over the controller's.
    assert_eq!(body["spec"]["replicas"], 2);
    let status = writes["apply"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["write"] == "status")
        .expect("a status apply");
    assert_eq!(status["body"]["status"]["phase"], "Progressing");
    assert_eq!(writes["events"].as_array().unwrap().len(), 2);
    assert_eq!(
        report["plugin"]["limits"]["timeoutMs"], 500,
        "the controller's limits"
    );

    // The default output is YAML with the same content.
    let out = eval(&[s(&plugin("website-rust")), s(&case)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout.contains("ownerReferences:")
            && stdout.contains("uid: 5f1c2a9e-0000-4000-8000-000000000001"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("wasmop.dev/controller: eval"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_finalize_export_plans_no_child_writes_and_reports_finalized() {
    let case = fixtures().join("content.yaml");
    let out = eval(&[
        s(&plugin("website-rust")),
        s(&case),
        "--export",
        "finalize",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["plugin"]["export"], "finalize");
    assert_eq!(report["writes"]["finalized"], true, "{}", text(&out));
    assert_eq!(
        report["writes"]["apply"],
        serde_json::json!([]),
        "children are neither applied nor pruned while finalizing"
    );
}

#[test]
fn misbehaving_plugins_exit_non_zero_with_the_operators_message() {
    let dir = scratch("misbehave");
    let cases = [
        (
            "loop",
            "plugin call timed out after 200 ms (spec.plugin.limits.timeoutMs)",
            "PluginTimeout",
        ),
        (
            "oom",
            "plugin ran out of memory (spec.plugin.limits.memoryMiB = 16)",
            "PluginOutOfMemory",
        ),
        (
            "garbage",
            "plugin output is not a valid wasmop.dev/v1alpha1 response",
            "InvalidResponse",
        ),
        (
            "undeclared",
            "children[1].kind: Secret v1 is not declared in spec.children",
            "InvalidResponse",
        ),
        (
            "error",
            "plugin returned an error: the plugin refuses: mode=error",
            "PluginError",
        ),
        ("panic", "plugin trapped", "PluginTrap"),
    ];
    for (mode, message, reason) in cases {
        let case = dir.join(format!("{mode}.yaml"));
        let body = format!(
            "object: {{apiVersion: example.com/v1, kind: Website, metadata: {{name: site}}}}\nconfig: {{mode: {mode}}}\nchildKinds: [{{apiVersion: v1, kind: ConfigMap}}]\n"
        );
        std::fs::write(&case, body).unwrap();
        let out = eval(&[
            s(&plugin("misbehave")),
            s(&case),
            "--timeout-ms",
            "200",
            "--memory-mib",
            "16",
            "-o",
            "json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", text(&out));
        assert!(
            stderr.contains(message),
            "{mode}: stderr names the failure: {}",
            text(&out)
        );
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{mode}: {e}: {}", text(&out)));
        assert_eq!(report["error"]["reason"], reason, "{mode}");
        assert!(
            report.get("writes").is_none(),
            "{mode}: nothing would be written"
        );
    }
}

#[test]
fn plugin_console_logs_are_captured_and_marked() {
    let runtime = std::env::var_os("WASMOP_JS_RUNTIME").map_or_else(
        || root().join("target/wasm32-wasip1/plugin/wasmop_js_runtime.wasm"),
        PathBuf::from,
    );
    assert!(
        runtime.exists(),
        "{} is missing: build the plugins first with `make plugins`",
        runtime.display()
    );
    let dir = scratch("logs");
    let js = dir.join("logger.js");
    std::fs::write(
        &js,
        "export function reconcile(req) {\n  console.log('reconciling', req.object.metadata.name);\n  console.warn('careful');\n  return {status: {seen: true}};\n}\n",
    )
    .unwrap();
    let wasm = dir.join("logger.wasm");
    let built = Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .args([
            "js",
            "build",
            s(&js),
            "-o",
            s(&wasm),
            "--runtime",
            s(&runtime),
        ])
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    let case = dir.join("case.yaml");
    std::fs::write(
        &case,
        "object: {apiVersion: example.com/v1, kind: Website, metadata: {name: site}}\n",
    )
    .unwrap();

    let out = eval(&[s(&wasm), s(&case), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["logs"],
        serde_json::json!([{"level": "INFO", "message": "reconciling site"}, {"level": "WARN", "message": "careful"}]),
        "{}",
        text(&out)
    );
}

#[test]
fn unusable_inputs_exit_2_naming_the_file_and_field() {
    let dir = scratch("inputs");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "object: {apiVersion: v1, kind: Website, metadata: {}}\n",
    )
    .unwrap();
    let cases = [
        (dir.join("absent.yaml"), "reading"),
        (bad.clone(), "object.metadata.name: is required"),
    ];
    for (case, message) in cases {
        let out = eval(&[s(&plugin("website-rust")), s(&case)]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(message) && stderr.contains(s(&case)),
            "{}",
            text(&out)
        );
    }
    let empty = scratch("empty");
    let out = eval(&[s(&plugin("website-rust")), "--test", s(&empty)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no case file"),
        "{}",
        text(&out)
    );
}
