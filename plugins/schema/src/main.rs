//! `wasmop-schema [--check] [--root DIR]`: write (or check) the ABI artefacts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmop-schema: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let mut check = false;
    let mut root = wasmop_schema::repo_root();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--root" => root = PathBuf::from(args.next().context("--root needs a directory")?),
            "-h" | "--help" => {
                println!(
                    "usage: wasmop-schema [--check] [--root DIR]\n\
                     Writes the ABI schema, TypeScript, Go and Markdown generated from wasmop-abi\n\
                     under DIR (default: this repository). --check writes nothing and exits 1\n\
                     when a committed file differs."
                );
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if check {
        match wasmop_schema::check(&root) {
            Ok(()) => {
                println!("ABI artefacts are up to date");
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ wasmop_schema::Error::Drift(_)) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        }
    } else {
        let changed = wasmop_schema::write(&root)?;
        if changed.is_empty() {
            println!("ABI artefacts are up to date");
        }
        for path in changed {
            println!("wrote {path}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
