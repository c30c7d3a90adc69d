//! A deliberately bad plugin for tests. `controller.config.mode` picks the behaviour:
//!
//! | mode         | what it does                                                        |
//! |--------------|---------------------------------------------------------------------|
//! | `marker` (default) | well-behaved: one ConfigMap `<parent>-marker` with `data.mode`; logs `marking <parent>` |
//! | `loop`       | never returns (the host's timeout must stop it)                      |
//! | `oom`        | allocates without end (the host's memory cap must stop it)           |
//! | `garbage`    | returns bytes that are not JSON                                      |
//! | `undeclared` | returns a marker ConfigMap *and* a Secret (an undeclared kind)       |
//! | `error`      | fails the call with a message                                        |
//! | `panic`      | panics (a trap)                                                      |
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code)] // extism-pdk's #[plugin_fn] expands to `extern "C"` export shims

use extism_pdk::{FnResult, Json, plugin_fn};
use serde_json::json;
use wasmop_abi::{ReconcileRequest, ReconcileResponse};

fn marker(req: &ReconcileRequest) -> serde_json::Value {
    let name = req.object["metadata"]["name"].as_str().unwrap_or_default();
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-marker")},
           "data": {"mode": "marker"}})
}

#[plugin_fn]
pub fn reconcile(Json(req): Json<ReconcileRequest>) -> FnResult<Vec<u8>> {
    let mode = req.controller.config["mode"]
        .as_str()
        .unwrap_or("marker")
        .to_string();
    let response = match mode.as_str() {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "garbage" => return Ok(b"this is not json {".to_vec()),
        "undeclared" => ReconcileResponse {
            children: vec![
                marker(&req),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stolen"}}),
            ],
            ..Default::default()
        },
        "error" => return Err(extism_pdk::Error::msg("the plugin refuses: mode=error").into()),
        "panic" => panic!("mode=panic"),
        _ => {
            extism_pdk::info!(
                "marking {}",
                req.object["metadata"]["name"].as_str().unwrap_or_default()
            );
            ReconcileResponse {
                children: vec![marker(&req)],
                status: Some(json!({"phase": "Marked"})),
                ..Default::default()
            }
        }
    };
    Ok(serde_json::to_vec(&response)?)
}
