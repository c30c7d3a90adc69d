//! A deliberately bad plugin for tests. `controller.config.mode` picks the behaviour:
//!
//! | mode         | what it does                                                        |
//! |--------------|---------------------------------------------------------------------|
//! | `marker` (default) | well-behaved: one ConfigMap `<parent>-marker` with `data.mode`; logs `marking <parent>` |
//! | `loop`       | logs `looping <parent>`, then never returns (the host's timeout must stop it) |
//! | `oom`        | allocates without end (the host's memory cap must stop it)           |
//! | `garbage`    | returns bytes that are not JSON                                      |
//! | `undeclared` | returns a marker ConfigMap *and* a Secret (an undeclared kind)       |
//! | `error`      | fails the call with a message                                        |
//! | `panic`      | panics (a trap)                                                      |
//! | `config`     | returns `config.children` (`{parent}` in any string becomes the parent's name) and `config.status` |
//! | `echo`       | returns every current child exactly as received (a marker when there are none) |
//! | `slow`       | `marker`, after spinning `config.spins` iterations (a long, healthy call) |
//! | `churn`      | a status that changes on every write (the parent's resourceVersion): a hot loop |
//! | `many`       | `config.count` ConfigMaps `<parent>-<i>`                              |
//! | `contract`   | status `ready`/`matched` = `related.infra.contract.ready`/`.matched.ready`; logs `contract of <parent>` |
//!
//! A parent annotated `misbehave.example.com/mode` behaves as that mode instead, so one
//! controller can have a looping parent beside healthy ones.
//!
//! `finalize` (for `spec.plugin.finalize`) follows `controller.config.finalize`: `done`
//! (default, `finalized: true`), `never` (`finalized: false`) or `fail` (an error).
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
    let mode = req.object["metadata"]["annotations"]["misbehave.example.com/mode"]
        .as_str()
        .or(req.controller.config["mode"].as_str())
        .unwrap_or("marker")
        .to_string();
    let response = match mode.as_str() {
        "loop" => {
            let name = req.object["metadata"]["name"].as_str().unwrap_or_default();
            extism_pdk::info!("looping {name}");
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
        "config" => ReconcileResponse {
            children: configured_children(&req),
            status: Some(
                req.controller
                    .config
                    .get("status")
                    .cloned()
                    .unwrap_or_else(|| json!({"phase": "Configured"})),
            ),
            ..Default::default()
        },
        "echo" => {
            let mut children: Vec<serde_json::Value> = req
                .children
                .values()
                .flat_map(|by_name| by_name.values().cloned())
                .collect();
            if children.is_empty() {
                children.push(marker(&req));
            }
            ReconcileResponse {
                children,
                status: Some(json!({"phase": "Echoed"})),
                ..Default::default()
            }
        }
        "contract" => {
            let name = req.object["metadata"]["name"].as_str().unwrap_or_default();
            extism_pdk::info!("contract of {name}");
            let infra = req.related.get("infra");
            let ready = infra.and_then(|r| r.contract.get("ready").cloned());
            let matched = infra.and_then(|r| r.matched.get("ready").cloned());
            ReconcileResponse {
                status: Some(json!({"ready": ready, "matched": matched})),
                ..Default::default()
            }
        }
        "slow" => {
            let spins = req.controller.config["spins"].as_u64().unwrap_or(0);
            let mut x: u64 = 0;
            for i in 0..spins {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            std::hint::black_box(x);
            ReconcileResponse {
                children: vec![marker(&req)],
                status: Some(json!({"phase": "Marked"})),
                ..Default::default()
            }
        }
        "churn" => ReconcileResponse {
            status: Some(json!({"seen": req.object["metadata"]["resourceVersion"]})),
            ..Default::default()
        },
        "many" => {
            let name = req.object["metadata"]["name"].as_str().unwrap_or_default();
            let count = req.controller.config["count"].as_u64().unwrap_or(1);
            ReconcileResponse {
                children: (0..count)
                    .map(|i| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-{i}")}}))
                    .collect(),
                ..Default::default()
            }
        }
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

/// `config.children`, with `{parent}` in every string replaced by the parent's name.
fn configured_children(req: &ReconcileRequest) -> Vec<serde_json::Value> {
    let parent = req.object["metadata"]["name"].as_str().unwrap_or_default();
    let mut children = req.controller.config["children"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for child in &mut children {
        substitute(child, parent);
    }
    children
}

fn substitute(value: &mut serde_json::Value, parent: &str) {
    match value {
        serde_json::Value::String(s) => *s = s.replace("{parent}", parent),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, parent)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| substitute(v, parent)),
        _ => {}
    }
}

#[plugin_fn]
pub fn finalize(Json(req): Json<ReconcileRequest>) -> FnResult<Vec<u8>> {
    match req.controller.config["finalize"].as_str().unwrap_or("done") {
        "fail" => Err(extism_pdk::Error::msg("finalize refuses: finalize=fail").into()),
        never => {
            let response = ReconcileResponse {
                finalized: never != "never",
                ..Default::default()
            };
            Ok(serde_json::to_vec(&response)?)
        }
    }
}
