//! `make image` without a Docker engine: hack/image.sh packs the wasmop binary under test, its
//! shared libraries and the JS runtime with the pinned crane and pushes the image to a real
//! local registry (`crane registry serve`). The pulled image has the configuration the chart
//! relies on, its filesystem runs wasmop with nothing from the host, the JS runtime beside it
//! builds a plugin, and a second build gives the same digest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use wasmop_e2e::{root, tool, wasmop_bin};

/// `crane registry serve` on a free loopback port; killed when dropped.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(crane: &Path) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(crane)
            .args(["registry", "serve", "--address", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let registry = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            if Instant::now() > deadline {
                bail!("crane registry serve did not listen on {}", registry.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// hack/image.sh with the binary under test, pushed to `reference`; returns the digest.
fn build_image(reference: &str) -> Result<String> {
    let out = output(
        Command::new("bash")
            .arg(root().join("hack/image.sh"))
            .arg("--binary")
            .arg(wasmop_bin()?)
            .args(["--tag", "e2e", "--push", reference]),
    )?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// The file under `dir` named `name` (first found, depth first).
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && !path.is_symlink()
            && let Some(found) = find(&path, name)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn image_built_without_docker_runs_wasmop_and_its_js_runtime_from_a_local_registry() -> Result<()> {
    let crane = tool("crane")?;
    let registry = Registry::start(&crane)?;
    let reference = format!("{}/wasmop:e2e", registry.addr);
    let digest = build_image(&reference)?;
    assert!(digest.starts_with("sha256:"), "{digest}");
    let pushed = output(Command::new(&crane).args(["digest", "--insecure", &reference]))?;
    assert_eq!(pushed.trim(), digest);

    let config: Value = serde_json::from_str(&output(Command::new(&crane).args([
        "config",
        "--insecure",
        &reference,
    ]))?)?;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/wasmop");
    assert_eq!(config["config"]["User"], "65532:65532");
    let env = config["config"]["Env"].to_string();
    assert!(
        env.contains("WASMOP_JS_RUNTIME=/usr/local/lib/wasmop/wasmop_js_runtime.wasm"),
        "{env}"
    );

    // The image's filesystem, from the registry.
    let dir = std::env::temp_dir().join(format!("wasmop-e2e-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let tarball = dir.join("fs.tar");
    output(
        Command::new(&crane)
            .args(["export", "--insecure", &reference])
            .arg(&tarball),
    )?;
    let fs = dir.join("fs");
    std::fs::create_dir_all(&fs)?;
    output(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&fs),
    )?;

    // Run the image's wasmop with the image's own loader and libraries only.
    let loader = find(&fs, "ld-linux-x86-64.so.2").context("no dynamic loader in the image")?;
    let libc = find(&fs, "libc.so.6").context("no libc in the image")?;
    let run = |args: &[&str]| {
        output(
            Command::new(&loader)
                .arg("--library-path")
                .arg(libc.parent().expect("a directory"))
                .arg(fs.join("usr/local/bin/wasmop"))
                .args(args)
                .env_clear(),
        )
    };
    let version = run(&["--version"])?;
    assert!(version.starts_with("wasmop "), "{version}");

    // The JS runtime beside it pre-initialises a plugin.
    let js = root().join("target/plugins/website-js.js");
    let built = dir.join("website.wasm");
    run(&[
        "js",
        "build",
        &js.to_string_lossy(),
        "-o",
        &built.to_string_lossy(),
        "--runtime",
        &fs.join("usr/local/lib/wasmop/wasmop_js_runtime.wasm")
            .to_string_lossy(),
    ])?;
    assert!(std::fs::read(&built)?.starts_with(b"\0asm"));

    // Reproducible: the same inputs give the same digest.
    assert_eq!(build_image(&reference)?, digest);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
