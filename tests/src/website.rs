//! Helpers for tests that drive the Website sample: its resources, plugin ConfigMaps,
//! WasmControllers and their conditions.

use std::time::Duration;

use anyhow::{Result, anyhow};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::{Operator, eventually, kubectl, kubectl_stdin};

/// How long a test waits for the operator to converge.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn website_resource() -> ApiResource {
    ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Website".into(),
        plural: "websites".into(),
    }
}

pub fn wasmcontroller_resource() -> ApiResource {
    ApiResource {
        group: "wasmop.dev".into(),
        version: "v1alpha1".into(),
        api_version: "wasmop.dev/v1alpha1".into(),
        kind: "WasmController".into(),
        plural: "wasmcontrollers".into(),
    }
}

/// The sample's ServiceAccount, Role and RoleBinding (`samples/website/rbac.yaml`).
pub fn sample_rbac() -> Result<String> {
    Ok(std::fs::read_to_string(
        crate::root().join("samples/website/rbac.yaml"),
    )?)
}

/// A namespace with `rbac` (a ServiceAccount, Role and RoleBinding) applied.
pub async fn namespace_with(
    cp: &localcp::ControlPlane,
    client: &Client,
    prefix: &str,
    rbac: &str,
) -> Result<String> {
    let ns = localcp::create_test_namespace(client, prefix).await?;
    kubectl_stdin(cp, &["apply", "-n", &ns, "-f", "-"], Some(rbac))?;
    Ok(ns)
}

/// A namespace with the sample's ServiceAccount, Role and RoleBinding.
pub async fn team_namespace(
    cp: &localcp::ControlPlane,
    client: &Client,
    prefix: &str,
) -> Result<String> {
    namespace_with(cp, client, prefix, &sample_rbac()?).await
}

pub async fn put_plugin(client: &Client, ns: &str, name: &str, wasm: Vec<u8>) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        binary_data: Some([("plugin.wasm".to_string(), ByteString(wasm))].into()),
        ..Default::default()
    };
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

/// Server-side-applies ConfigMap `name` with `data` (the test owns its fields).
pub async fn apply_config_map(client: &Client, ns: &str, name: &str, data: Value) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": data});
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

pub async fn apply_controller(
    client: &Client,
    ns: &str,
    name: &str,
    plugin_cm: &str,
    config: Value,
    extra: Value,
) -> Result<()> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &wasmcontroller_resource());
    let mut body = json!({
        "apiVersion": "wasmop.dev/v1alpha1", "kind": "WasmController",
        "metadata": {"name": name},
        "spec": {
            "parent": {"apiVersion": "example.com/v1", "kind": "Website"},
            "children": [{"apiVersion": "v1", "kind": "ConfigMap"}, {"apiVersion": "apps/v1", "kind": "Deployment"}],
            "plugin": {"source": {"configMap": {"name": plugin_cm, "key": "plugin.wasm"}}, "config": config,
                       "limits": {"timeoutMs": 500, "memoryMiB": 32}},
            "serviceAccountName": "website-controller",
            "resyncPeriod": "10m",
        }
    });
    if let (Some(spec), Some(extra)) = (body["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

pub async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<Option<(String, String, String)>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &wasmcontroller_resource());
    let wc = api.get(name).await?;
    Ok(condition_of(&wc.data, type_))
}

/// Condition `type_` of any object (as JSON): status, reason and message.
pub fn condition_of(object: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Waits for the WasmController's `Ready=True` (reason `Running`); on timeout the error
/// carries the tail of the operator's log.
pub async fn wait_ready(client: &Client, ns: &str, name: &str, op: &Operator) -> Result<()> {
    eventually(
        WAIT,
        &format!("WasmController {ns}/{name} Ready=True"),
        || async {
            Ok(condition(client, ns, name, "Ready")
                .await?
                .filter(|(s, r, _)| s == "True" && r == "Running"))
        },
    )
    .await
    .map(|_| ())
    .map_err(|e| anyhow!("{e}\noperator log:\n{}", op.log_tail(40)))
}

pub async fn create_website(client: &Client, ns: &str, name: &str, spec: Value) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Website", "metadata": {"name": name}, "spec": spec
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

/// The annotation that has the misbehave plugin treat one parent as another mode.
pub const MISBEHAVE_MODE: &str = "misbehave.example.com/mode";

/// Creates a Website (empty spec) that the misbehave plugin handles as `mode`.
pub async fn create_website_in_mode(
    client: &Client,
    ns: &str,
    name: &str,
    mode: &str,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Website",
        "metadata": {"name": name, "annotations": {MISBEHAVE_MODE: mode}}, "spec": {}
    }))?;
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

pub async fn get_website(client: &Client, ns: &str, name: &str) -> Result<DynamicObject> {
    Ok(
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &website_resource())
            .get(name)
            .await?,
    )
}

/// Lets Websites carry `spec.infraRef` (the sample CRD prunes unknown spec fields). The control
/// plane belongs to this test binary, so changing its CRD affects no other test.
pub fn allow_infra_ref(cp: &localcp::ControlPlane) -> Result<()> {
    let patch = json!([{"op": "add",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/infraRef",
        "value": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}]);
    kubectl(
        cp,
        &[
            "patch",
            "crd",
            "websites.example.com",
            "--type=json",
            "-p",
            &patch.to_string(),
        ],
    )?;
    Ok(())
}

/// Points Website `parent`'s `spec.infraRef` at `reference`, retrying for up to `timeout`
/// until the API server keeps the field (it serves the schema [`allow_infra_ref`] widened
/// only after a moment).
pub async fn set_infra_ref(
    client: &Client,
    ns: &str,
    parent: &str,
    reference: &Value,
    timeout: Duration,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &website_resource());
    eventually(
        timeout,
        &format!("Website {parent} keeping spec.infraRef"),
        || async {
            let patched = api
                .patch(
                    parent,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"infraRef": reference}})),
                )
                .await?;
            Ok((patched.data["spec"]["infraRef"] == *reference).then_some(()))
        },
    )
    .await
}
