//! The TypeScript Website example (`plugins/examples/website-js`) against the golden cases
//! recorded from website-rust (`plugins/examples/website-go/testdata/cases.json`).
//!
//! Needs `target/plugins/website-js.js` (its esbuild bundle) and the runtime; `make plugins`
//! (or `plugins/examples/website-js/build.sh`) makes both. The bundle is built into a plugin
//! here, so the test always runs the current runtime and builder.

use std::path::{Path, PathBuf};

use extism::Plugin;
use serde_json::Value;
use wasmop_js_build::Builder;

/// Golden cases a JavaScript plugin cannot reproduce, with why and what it answers instead.
/// `JSON.parse` makes `2.0` the number 2: JavaScript cannot see that it was written as a float.
const DIVERGENT: &[(&str, &str)] = &[(
    "float-written-replicas-fails",
    r#""replicas":2,"selector""#, // the Deployment gets 2 replicas rather than an error
)];

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "\n\n*** cannot read {}: {e}\n*** run `make plugins` first\n\n",
            path.display()
        )
    })
}

#[test]
fn website_js_reproduces_every_golden_case_of_website_rust() {
    let bundle = String::from_utf8(read(&target_dir().join("plugins/website-js.js"))).unwrap();
    let runtime = read(&wasmop_js_build::default_runtime_path());
    let built = Builder::new(&runtime)
        .file_name("website-js.js")
        .build(&bundle)
        .unwrap();
    assert!(built.has_finalize);
    let mut plugin = Plugin::new(built.wasm, [], true).unwrap();

    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/website-go/testdata/cases.json");
    let golden: Value = serde_json::from_slice(&read(&golden)).unwrap();
    let cases = golden["cases"]
        .as_array()
        .expect("cases.json has a `cases` list");
    assert!(cases.len() > 10, "cases.json looks truncated");

    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let export = case["export"].as_str().unwrap();
        // The request as recorded, with `2.0` still a float (serde_json keeps the distinction).
        let request = serde_json::to_string(&case["request"]).unwrap();
        let got = plugin
            .call::<&str, &str>(export, &request)
            .map(str::to_string);
        if let Some((_, instead)) = DIVERGENT.iter().find(|(n, _)| *n == name) {
            match &got {
                Ok(response) if response.contains(instead) => continue,
                other => panic!("{name}: the known divergence changed: {other:?}"),
            }
        }
        match (&got, case["response"].as_str(), case["error"].as_str()) {
            (Ok(response), Some(expected), _) if response == expected => {}
            // A JavaScript error carries its stack after the first line, which is the message.
            (Err(e), _, Some(expected)) if e.to_string().lines().next() == Some(expected) => {}
            _ => failures.push(format!(
                "{name}:\n  got      {got:?}\n  expected {}",
                case.get("response").or(case.get("error")).unwrap()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
