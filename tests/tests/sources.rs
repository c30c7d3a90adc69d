//! End to end: plugin sources beyond a ConfigMap of wasm (issue 17). JavaScript source in a
//! ConfigMap is built by the operator with its own runtime (the artefact `wasmop js build`
//! makes), hot-reloaded on edit, and a source that does not build is refused with its line
//! while the last good plugin keeps running.

use std::time::Duration;

use anyhow::{Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use wasmop_e2e::website::{
    apply_controller, condition, create_website, team_namespace, wait_ready,
    wasmcontroller_resource,
};
use wasmop_e2e::{Operator, eventually, operator, root};

const WAIT: Duration = Duration::from_secs(60);

/// The bundled JavaScript of the TypeScript Website example (`make plugins` writes it).
fn website_js() -> String {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), std::path::PathBuf::from);
    std::fs::read_to_string(dir.join("plugins/website-js.js"))
        .expect("target/plugins/website-js.js: build the plugins first with `make plugins`")
}

async fn put_js(client: &Client, ns: &str, name: &str, source: &str) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": {"plugin.js": source}});
    api.patch(
        name,
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

async fn js_controller(client: &Client, ns: &str, name: &str, cm: &str) -> Result<()> {
    let plugin = json!({"plugin": {
        "source": {"javaScript": {"name": cm, "key": "plugin.js"}},
        "config": {"replicas": 2},
        "limits": {"timeoutMs": 1000, "memoryMiB": 64}}});
    apply_controller(client, ns, name, cm, json!({}), plugin).await
}

async fn plugin_status(client: &Client, ns: &str, name: &str) -> Result<Value> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &wasmcontroller_resource());
    Ok(api.get(name).await?.data["status"]["plugin"].clone())
}

async fn image_of(client: &Client, ns: &str, name: &str) -> Result<Option<String>> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone()))
}

async fn wait_image(client: &Client, ns: &str, want: &str, op: &Operator) -> Result<()> {
    eventually(WAIT, &format!("Deployment site runs {want}"), || async {
        Ok((image_of(client, ns, "site").await?.as_deref() == Some(want)).then_some(()))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))
}

#[tokio::test]
async fn javascript_source_in_a_config_map_is_built_by_the_operator_and_hot_reloaded() -> Result<()>
{
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "js-source").await?;
    let source = website_js();
    put_js(&client, &ns, "website-js", &source).await?;
    js_controller(&client, &ns, "website", "website-js").await?;
    wait_ready(&client, &ns, "website", op).await?;
    let first = plugin_status(&client, &ns, "website").await?;
    assert_eq!(first["encoding"], "javascript", "{first}");
    create_website(&client, &ns, "site", json!({})).await?;
    wait_image(&client, &ns, "nginx:1.27", op).await?;

    // An edit is rebuilt and hot-reloaded.
    put_js(
        &client,
        &ns,
        "website-js",
        &source.replace("\"nginx:1.27\"", "\"nginx:1.28\""),
    )
    .await?;
    wait_image(&client, &ns, "nginx:1.28", op).await?;
    let second = plugin_status(&client, &ns, "website").await?;
    assert_ne!(first["sha256"], second["sha256"]);

    // An edit that does not build is refused with its line; the last good plugin keeps running.
    let broken = format!("{source}\nexport function oops( {{\n");
    put_js(&client, &ns, "website-js", &broken).await?;
    let (_, _, message) = eventually(WAIT, "RunningPreviousPlugin", || async {
        Ok(condition(&client, &ns, "website", "Ready")
            .await?
            .filter(|(s, r, _)| s == "True" && r == "RunningPreviousPlugin"))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    assert!(
        message.contains("building the JavaScript in ConfigMap") && message.contains("plugin.js"),
        "names the ConfigMap, the key and where: {message}"
    );
    assert_eq!(
        plugin_status(&client, &ns, "website").await?["sha256"],
        second["sha256"]
    );
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &wasmop_e2e::website::website_resource(),
    );
    api.patch(
        "site",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"image": "nginx:1.29"}})),
    )
    .await?;
    wait_image(&client, &ns, "nginx:1.29", op).await?;

    // A controller whose JavaScript never built does not start, and says why.
    put_js(&client, &ns, "broken-js", "export function reconcile( {").await?;
    js_controller(&client, &ns, "broken", "broken-js").await?;
    let (_, _, message) = eventually(WAIT, "PluginBuildFailed", || async {
        Ok(condition(&client, &ns, "broken", "Ready")
            .await?
            .filter(|(s, r, _)| s == "False" && r == "PluginBuildFailed"))
    })
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    assert!(message.contains("broken-js"), "{message}");
    Ok(())
}
