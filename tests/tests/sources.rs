//! End to end: plugin sources beyond a ConfigMap of wasm (issue 17). JavaScript source in a
//! ConfigMap is built by the operator with its own runtime (the artefact `wasmop js build`
//! makes), hot-reloaded on edit, and a source that does not build is refused with its line
//! while the last good plugin keeps running.

use std::time::Duration;

use anyhow::{Result, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
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
    wasmop_e2e::website::apply_config_map(client, ns, name, json!({"plugin.js": source})).await
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `port`.
async fn listening(port: u16) -> Result<()> {
    eventually(
        Duration::from_secs(30),
        &format!("127.0.0.1:{port} listening"),
        || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await
}

fn run(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

async fn source_controller(client: &Client, ns: &str, name: &str, source: Value) -> Result<()> {
    let plugin = json!({"plugin": {"source": source, "config": {"replicas": 2},
        "limits": {"timeoutMs": 1000, "memoryMiB": 32}}});
    apply_controller(client, ns, name, "unused", json!({}), plugin).await
}

async fn ready_condition(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
    op: &Operator,
) -> Result<String> {
    let (_, _, message) = eventually(
        WAIT,
        &format!("{name}: Ready {status} {reason}"),
        || async {
            Ok(condition(client, ns, name, "Ready")
                .await?
                .filter(|(s, r, _)| s == status && r == reason))
        },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", op.log_tail(30)))?;
    Ok(message)
}

/// `url` sources: fetched from an allowed host, checked against their sha256; a wrong digest
/// is refused while the last good plugin runs; a host the admin did not allow is refused.
#[tokio::test]
async fn a_url_plugin_runs_only_with_its_digest_and_from_an_allowed_host() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "url-source").await?;
    let dir = tempfile_dir("wasmop-url")?;
    let wasm = wasmop_e2e::plugin("website-rust");
    std::fs::write(dir.join("website.wasm"), &wasm)?;
    let port = free_port()?;
    let _server = Server(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    listening(port).await?;
    let sha = sha256_hex(&wasm);
    let url = format!("http://127.0.0.1:{port}/website.wasm");
    source_controller(
        &client,
        &ns,
        "website",
        json!({"url": {"url": url, "sha256": sha}}),
    )
    .await?;
    wait_ready(&client, &ns, "website", op).await?;
    assert_eq!(plugin_status(&client, &ns, "website").await?["sha256"], sha);
    create_website(&client, &ns, "site", json!({})).await?;
    wait_image(&client, &ns, "nginx:1.27", op).await?;

    // The wrong digest: refused, the last good plugin keeps running.
    let wrong = "0".repeat(64);
    source_controller(
        &client,
        &ns,
        "website",
        json!({"url": {"url": url, "sha256": wrong}}),
    )
    .await?;
    let message =
        ready_condition(&client, &ns, "website", "True", "RunningPreviousPlugin", op).await?;
    assert!(
        message.contains(&format!("has sha256 {sha}, not {wrong}")),
        "names both digests: {message}"
    );

    // A host the admin did not allow (the operator allows 127.0.0.1 only): not even fetched.
    let elsewhere = format!("http://localhost:{port}/website.wasm");
    source_controller(
        &client,
        &ns,
        "elsewhere",
        json!({"url": {"url": elsewhere, "sha256": sha}}),
    )
    .await?;
    let message = ready_condition(
        &client,
        &ns,
        "elsewhere",
        "False",
        "PluginSourceUnavailable",
        op,
    )
    .await?;
    assert!(message.contains("--plugin-host"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `oci` sources: pushed with `wasmop oci push` to a real registry (crane's), pulled by
/// digest; with a public key only when cosign signed it with that key.
#[tokio::test]
async fn an_oci_plugin_is_pulled_by_digest_and_its_cosign_signature_checked() -> Result<()> {
    let (cp, op) = operator().await?;
    let client = cp.client().await?;
    let ns = team_namespace(cp, &client, "oci-source").await?;
    let dir = tempfile_dir("wasmop-oci")?;
    let port = free_port()?;
    let _registry = Server(
        std::process::Command::new(wasmop_e2e::tool("crane")?)
            .args([
                "registry",
                "serve",
                "--address",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    listening(port).await?;
    let wasm_path = plugin_path("website-rust");
    let image = run(std::process::Command::new(wasmop_e2e::wasmop_bin()?).args([
        "oci",
        "push",
        &wasm_path,
        &format!("127.0.0.1:{port}/team/website:v1"),
        "--plain-http",
    ]))?;
    assert!(
        image.starts_with(&format!("127.0.0.1:{port}/team/website@sha256:")),
        "{image}"
    );

    source_controller(&client, &ns, "website", json!({"oci": {"image": image}})).await?;
    wait_ready(&client, &ns, "website", op).await?;
    let wasm = std::fs::read(&wasm_path)?;
    assert_eq!(
        plugin_status(&client, &ns, "website").await?["sha256"],
        sha256_hex(&wasm)
    );
    create_website(&client, &ns, "site", json!({})).await?;
    wait_image(&client, &ns, "nginx:1.27", op).await?;

    // A digest the registry does not have: refused, the last good plugin keeps running.
    let missing = format!("127.0.0.1:{port}/team/website@sha256:{}", "1".repeat(64));
    source_controller(&client, &ns, "website", json!({"oci": {"image": missing}})).await?;
    let message =
        ready_condition(&client, &ns, "website", "True", "RunningPreviousPlugin", op).await?;
    assert!(
        message.contains("spec.plugin.source.oci.image"),
        "{message}"
    );

    // Signed with cosign (key-based, no transparency log): the right key runs it, another
    // key is refused, and so is an unsigned artifact.
    let cosign_bin = wasmop_e2e::tool("cosign")?;
    let cosign = |args: &[&str]| {
        run(std::process::Command::new(&cosign_bin)
            .args(args)
            .current_dir(&dir)
            .env("COSIGN_PASSWORD", "")
            .env("HOME", &dir))
    };
    cosign(&["generate-key-pair"])?;
    std::fs::create_dir_all(dir.join("other"))?;
    run(std::process::Command::new(&cosign_bin)
        .args(["generate-key-pair"])
        .current_dir(dir.join("other"))
        .env("COSIGN_PASSWORD", "")
        .env("HOME", &dir))?;
    let unsigned = run(std::process::Command::new(wasmop_e2e::wasmop_bin()?).args([
        "oci",
        "push",
        &plugin_path("misbehave"),
        &format!("127.0.0.1:{port}/team/unsigned:v1"),
        "--plain-http",
    ]))?;
    cosign(&[
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "--allow-http-registry",
        "--allow-insecure-registry",
        "--yes",
        &image,
    ])?;
    let key = std::fs::read_to_string(dir.join("cosign.pub"))?;
    let other = std::fs::read_to_string(dir.join("other/cosign.pub"))?;
    source_controller(
        &client,
        &ns,
        "signed",
        json!({"oci": {"image": image, "publicKey": key}}),
    )
    .await?;
    wait_ready(&client, &ns, "signed", op).await?;
    source_controller(
        &client,
        &ns,
        "other-key",
        json!({"oci": {"image": image, "publicKey": other}}),
    )
    .await?;
    let message =
        ready_condition(&client, &ns, "other-key", "False", "PluginNotVerified", op).await?;
    assert!(
        message.contains("no cosign signature by spec.plugin.source.oci.publicKey"),
        "{message}"
    );
    source_controller(
        &client,
        &ns,
        "unsigned",
        json!({"oci": {"image": unsigned, "publicKey": key}}),
    )
    .await?;
    let message =
        ready_condition(&client, &ns, "unsigned", "False", "PluginNotVerified", op).await?;
    assert!(message.contains("no signature manifest"), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn plugin_path(name: &str) -> String {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), std::path::PathBuf::from)
        .join(format!("plugins/{name}.wasm"))
        .display()
        .to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn tempfile_dir(prefix: &str) -> Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("{prefix}-{}-{}", std::process::id(), free_port()?));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
