//! The Extism host against real plugins built from source by `make plugins`: the good
//! example and the deliberately bad one. No cluster needed.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use wasmop::crd::Limits;
use wasmop::plugin::{Error, Host, LoadedPlugin};
use wasmop_abi::{ABI_VERSION, ControllerInfo, ReconcileRequest, ReconcileResponse};

fn plugin_bytes(name: &str) -> wasmop::source::PluginBytes {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let path = target.join("plugins").join(format!("{name}.wasm"));
    let raw = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make plugins` first", path.display()));
    wasmop::source::decode(&raw).expect("a wasm plugin")
}

fn request(config: Value, spec: Value) -> Vec<u8> {
    serde_json::to_vec(&ReconcileRequest {
        abi_version: ABI_VERSION.into(),
        controller: ControllerInfo { name: "t".into(), namespace: "ns".into(), config },
        object: json!({"apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": "site", "namespace": "ns"}, "spec": spec}),
        ..Default::default()
    })
    .unwrap()
}

async fn load(name: &str, limits: Limits) -> Arc<LoadedPlugin> {
    let host = Host::new(None).unwrap();
    host.load(&plugin_bytes(name), &limits, 2)
        .await
        .expect("plugin loads")
}

fn small_limits() -> Limits {
    Limits {
        memory_mib: Some(16),
        timeout_ms: Some(300),
        fuel: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_website_plugin_answers_with_children_and_status() {
    let plugin = load("website-rust", Limits::default()).await;
    let out = plugin
        .call(
            "reconcile",
            request(json!({"replicas": 2}), json!({"content": "x"})),
        )
        .await
        .unwrap();
    let response: ReconcileResponse = serde_json::from_slice(&out.output).unwrap();
    let kinds: Vec<_> = response
        .children
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment"]);
    assert_eq!(response.children[1]["spec"]["replicas"], 2);
    assert_eq!(response.status.unwrap()["phase"], "Progressing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_error_carries_the_plugin_message() {
    let plugin = load("website-rust", Limits::default()).await;
    let err = plugin
        .call("reconcile", request(json!({}), json!({"replicas": -3})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Failed { message } if message == "spec.replicas must be a non-negative integer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_plugins_are_stopped_and_classified() {
    let plugin = load("misbehave", small_limits()).await;
    for (mode, label) in [
        ("loop", "timeout"),
        ("oom", "out_of_memory"),
        ("panic", "trap"),
        ("error", "plugin_error"),
    ] {
        let err = plugin
            .call("reconcile", request(json!({"mode": mode}), json!({})))
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), label, "mode {mode}: {err}");
    }
    // After all that, the same loaded plugin still serves good calls on fresh instances.
    let out = plugin
        .call("reconcile", request(json!({"mode": "marker"}), json!({})))
        .await
        .unwrap();
    let response: ReconcileResponse = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(response.children[0]["metadata"]["name"], "site-marker");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_names_the_limit_to_raise() {
    let plugin = load("misbehave", small_limits()).await;
    let err = plugin
        .call("reconcile", request(json!({"mode": "loop"}), json!({})))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("300 ms (spec.plugin.limits.timeoutMs)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_limits_stop_runaway_loops_deterministically() {
    let plugin = load(
        "misbehave",
        Limits {
            fuel: Some(5_000_000),
            timeout_ms: Some(10_000),
            ..small_limits()
        },
    )
    .await;
    let err = plugin
        .call("reconcile", request(json!({"mode": "loop"}), json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.metric_label(), "out_of_fuel", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_export_is_reported_by_name() {
    let plugin = load("misbehave", small_limits()).await;
    assert!(plugin.has_export("finalize").unwrap());
    assert!(!plugin.has_export("validate").unwrap());
    let err = plugin
        .call("validate", request(json!({}), json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingExport { export } if export == "validate"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_a_plugin_fail_to_load_with_a_compile_error() {
    let host = Host::new(None).unwrap();
    let bytes = wasmop::source::decode(b"\0asm\x01\0\0\0\x01\x05garbage").unwrap();
    let err = host
        .load(&bytes, &Limits::default(), 1)
        .await
        .err()
        .expect("load fails");
    assert_eq!(err.metric_label(), "compile", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_plugin_and_limits_are_compiled_once() {
    let host = Host::new(None).unwrap();
    let bytes = plugin_bytes("website-rust");
    let a = host.load(&bytes, &Limits::default(), 2).await.unwrap();
    let b = host.load(&bytes, &Limits::default(), 2).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let c = host.load(&bytes, &small_limits(), 2).await.unwrap();
    assert!(!Arc::ptr_eq(&a, &c), "different limits compile separately");
}
