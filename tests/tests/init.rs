//! End to end: docs/from-zero.md, run as written, once per language. Each section's shell
//! blocks run in one `bash -euo pipefail` in a temporary directory outside this checkout, with
//! a PATH holding only an "installation" of wasmop (a copy of the binary, and for TypeScript a
//! copy of its JavaScript runtime named by `WASMOP_JS_RUNTIME`) and the local control plane's
//! kubectl, as admin. So `wasmop init` writes a project, its own Makefile builds it (cargo,
//! standard Go, npm + tsc + esbuild + `wasmop js build`) and runs its fixture suite, and the
//! generated CRD, `wasmop rbac`'s Role, the plugin ConfigMap and the WasmController go to the
//! local control plane, where the real operator (as its least-privilege account) reconciles
//! the example parent. Then the test checks, through the API, the parent's status and its
//! child, and that no generated file names a path into this repository.
//!
//! Cargo resolves crates offline (`CARGO_NET_OFFLINE`, from the registry cache the workspace
//! build filled); Go takes go-pdk from the module cache or proxy; npm needs the npm registry.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use wasmop_e2e::{Operator, operator, root};

/// The shell blocks of the section `## {heading}` of docs/from-zero.md, in order.
fn tutorial_steps(heading: &str) -> Result<String> {
    let doc = std::fs::read_to_string(root().join("docs/from-zero.md"))?;
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .ok_or_else(|| anyhow!("docs/from-zero.md has no section ## {heading}"))?;
    let section = &doc[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut steps = String::new();
    let mut in_block = false;
    for line in section.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, step) => {
                steps.push_str(step);
                steps.push('\n');
            }
            _ => {}
        }
    }
    ensure!(
        steps.contains("wasmop init") && steps.contains("kubectl get"),
        "the {heading} section runs from wasmop init to kubectl get:\n{steps}"
    );
    Ok(steps)
}

/// A directory outside the checkout with `bin/` (wasmop, kubectl) and `share/` (the JS
/// runtime): what installing wasmop gives a user.
fn installation(lang: &str, kubectl: &Path) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "wasmop-from-zero-{lang}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    ensure!(
        !dir.starts_with(root()),
        "{} is inside the checkout",
        dir.display()
    );
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("share"))?;
    std::fs::create_dir_all(dir.join("work"))?;
    std::fs::copy(wasmop_e2e::wasmop_bin()?, dir.join("bin/wasmop"))?;
    std::os::unix::fs::symlink(kubectl, dir.join("bin/kubectl"))?;
    let runtime = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("wasm32-wasip1/plugin/wasmop_js_runtime.wasm");
    std::fs::copy(&runtime, dir.join("share/wasmop_js_runtime.wasm"))
        .with_context(|| format!("{}: build it with `make plugins`", runtime.display()))?;
    Ok(dir)
}

/// Runs `steps` as the tutorial's reader would; returns their standard output.
async fn run_tutorial(
    cp: &localcp::ControlPlane,
    op: &Operator,
    install: &Path,
    steps: &str,
) -> Result<String> {
    let path = format!(
        "{}:{}",
        install.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = install.join("tutorial.log");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail -x\n{steps}"))
        .current_dir(install.join("work"))
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig())
        .env(
            "WASMOP_JS_RUNTIME",
            install.join("share/wasmop_js_runtime.wasm"),
        )
        .env("WASMOP_CACHE_DIR", install.join("cache"))
        .env("CARGO_NET_OFFLINE", "true")
        // The project's own target dir and toolchain file, not this workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?);
    let started = Instant::now();
    let out = cmd.output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let trace = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "tutorial in {} took {:.0} s, exit {:?}",
        install.display(),
        started.elapsed().as_secs_f64(),
        out.status.code()
    );
    if !out.status.success() {
        let tail: Vec<&str> = trace.lines().rev().take(60).collect();
        bail!(
            "a tutorial step failed ({}):\n--- stdout\n{stdout}\n--- trace (last 60 lines)\n{}\n--- operator\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            op.log_tail(30)
        );
    }
    Ok(stdout)
}

/// Generated files (not build output) that name a path into this repository.
fn paths_into_the_repository(project: &Path) -> Result<Vec<String>> {
    let repo = root().to_string_lossy().into_owned();
    let mut found = Vec::new();
    let mut dirs = vec![project.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !matches!(name.as_ref(), "target" | "node_modules" | "dist") {
                    dirs.push(path);
                }
            } else if !name.starts_with("plugin.wasm")
                && std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&repo))
            {
                found.push(path.display().to_string());
            }
        }
    }
    Ok(found)
}

/// The tutorial for one language, then what a user would check.
async fn from_zero(heading: &str, lang: &str) -> Result<()> {
    let (cp, op) = operator().await?;
    let steps = tutorial_steps(heading)?;
    let install = installation(lang, &cp.kubectl_path())?;
    let stdout = run_tutorial(cp, op, &install, &steps).await?;

    let (group, ns, project) = (
        format!("{lang}.example.com"),
        format!("demo-{lang}"),
        install.join(format!("work/greeting-{lang}")),
    );
    // The fixture suite ran (make test) and passed all its cases.
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    // explain found nothing blocking with the Role `wasmop rbac` printed.
    assert!(stdout.contains("Nothing blocks progress"), "{stdout}");
    // The last step, kubectl get: the parent Ready and its child.
    let last = stdout
        .rsplit("Nothing blocks progress")
        .next()
        .unwrap_or_default();
    assert!(
        last.contains(&format!("greeting.{group}/hello"))
            && last.contains("Ready")
            && last.contains("configmap/hello-greeting"),
        "kubectl get shows the parent and its child:\n{stdout}"
    );

    let client = cp.client().await?;
    let parents: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource {
            group: group.clone(),
            version: "v1".into(),
            api_version: format!("{group}/v1"),
            kind: "Greeting".into(),
            plural: "greetings".into(),
        },
    );
    let parent = parents.get("hello").await?;
    let message = format!("hello from greeting-{lang}");
    assert_eq!(parent.data["status"]["phase"], "Ready");
    assert_eq!(parent.data["status"]["message"], message.as_str());
    let child = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("hello-greeting")
        .await?;
    assert_eq!(
        child.data.unwrap_or_default().get("message"),
        Some(&message)
    );
    let owner = &child.metadata.owner_references.unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Greeting", "hello", Some(true))
    );

    let leaks = paths_into_the_repository(&project)?;
    assert!(
        leaks.is_empty(),
        "generated files name the repository: {leaks:?}"
    );
    let _ = std::fs::remove_dir_all(&install);
    Ok(())
}

#[tokio::test]
async fn from_zero_in_rust_builds_tests_and_reconciles_outside_the_repository() -> Result<()> {
    from_zero("Rust", "rust").await
}

#[tokio::test]
async fn from_zero_in_go_builds_tests_and_reconciles_outside_the_repository() -> Result<()> {
    from_zero("Go", "go").await
}

#[tokio::test]
async fn from_zero_in_typescript_builds_tests_and_reconciles_outside_the_repository() -> Result<()>
{
    from_zero("TypeScript", "ts").await
}
