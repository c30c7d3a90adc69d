//! The docs agree with the code where that can be checked mechanically: README's flag table
//! and `wasmop run --help`, the metrics docs/operations.md names and those registered, and the
//! tests docs/security.md cites as the backing of each promise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A row of README's `wasmop run` flag table.
struct Row {
    flag: String,
    env: String,
    default: String,
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().replace('`', ""))
        .collect()
}

fn readme_flags() -> Vec<Row> {
    let readme = read("README.md");
    let table = readme
        .split("## Operator flags (`wasmop run`)")
        .nth(1)
        .expect("README has the operator flags section");
    table
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let c = cells(l);
            Row {
                flag: c[0].clone(),
                env: c[1].clone(),
                default: c[2].clone(),
            }
        })
        .collect()
}

/// `wasmop run --help`, one entry per flag: (flag, the rest of its text).
fn help_flags() -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmop"))
        .args(["run", "--help"])
        .env_remove("WASMOP_METRICS_ADDR")
        .output()
        .expect("wasmop runs");
    let help = String::from_utf8(out.stdout).unwrap();
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            let flag = format!("--{}", rest.split_whitespace().next().unwrap());
            flags.push((flag, String::new()));
        } else if let Some((_, text)) = flags.last_mut() {
            text.push_str(t);
            text.push(' ');
        }
    }
    flags.retain(|(f, _)| f != "--help");
    flags
}

/// What clap says between `[name: ` and `]`.
fn bracket<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("[{name}: "))? + name.len() + 3;
    Some(&text[start..start + text[start..].find(']')?])
}

#[test]
fn every_flag_in_the_readme_is_in_run_help_with_its_env_and_default() {
    let rows = readme_flags();
    assert!(rows.len() > 10, "the table was not found");
    let help = help_flags();
    let documented: BTreeSet<&str> = rows.iter().map(|r| r.flag.as_str()).collect();
    for (flag, _) in &help {
        assert!(
            documented.contains(flag.as_str()),
            "{flag} is in `wasmop run --help` but not in README's flag table"
        );
    }
    for row in &rows {
        let Some((_, text)) = help.iter().find(|(f, _)| *f == row.flag) else {
            panic!(
                "README lists {}, which `wasmop run --help` does not have",
                row.flag
            );
        };
        match bracket(text, "env") {
            Some(env) => assert_eq!(env.trim_end_matches('='), row.env, "{}'s env", row.flag),
            None => assert!(
                row.env.is_empty() || row.env == "KUBECONFIG",
                "README gives {} the env {}, --help none",
                row.flag,
                row.env
            ),
        }
        let Some(default) = bracket(text, "default") else {
            assert!(
                !row.default.is_empty(),
                "{}: say what happens by default",
                row.flag
            );
            continue;
        };
        if text.contains("(default: ") {
            // A default computed on this machine (the CPUs): README says how.
            assert!(!row.default.is_empty(), "{}", row.flag);
        } else if default.contains('/') && !default.contains(':') {
            // A path (under the home directory, or of the build): README names where.
            let file = Path::new(default).file_name().unwrap().to_string_lossy();
            assert!(
                row.default.contains(&*file),
                "{}: README's default {:?} does not name {file}",
                row.flag,
                row.default
            );
        } else {
            assert_eq!(row.default, default, "{}'s default", row.flag);
        }
    }
}

#[test]
fn every_metric_docs_operations_md_names_is_registered() {
    let registered: BTreeSet<String> = wasmop::metrics::Metrics::new().names.into_iter().collect();
    let docs = read("docs/operations.md");
    let mut named = BTreeSet::new();
    for (i, _) in docs.match_indices("wasmop_") {
        let rest = &docs[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        named.insert(family.to_string());
    }
    assert!(named.len() > 10, "{named:?}");
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !registered.contains(*n) && !n.ends_with('_'))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md names metrics wasmop does not register: {missing:?}"
    );
}

/// The `(`test_name`, …)` list after a cited path in a cell, if any.
fn cited_names(after: &str) -> Vec<String> {
    let Some(inner) = after.strip_prefix(" (") else {
        return Vec::new();
    };
    let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
    inner
        .split(',')
        .map(|n| n.trim().trim_matches('`').to_string())
        .filter(|n| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '…')
                && n.contains(['_', '…'])
        })
        .collect()
}

#[test]
fn every_test_docs_security_md_cites_exists() {
    let docs = read("docs/security.md");
    let table = docs
        .split("## Promises and the tests that back them")
        .nth(1)
        .expect("the promises table");
    let mut cited = 0;
    for row in table.lines().filter(|l| l.starts_with('|')) {
        let cell = row.trim_end_matches('|').rsplit('|').next().unwrap();
        for (i, _) in cell.match_indices('`') {
            let rest = &cell[i + 1..];
            let Some(end) = rest.find('`') else { continue };
            let path = &rest[..end];
            if !(path.ends_with(".rs") && path.contains('/')) {
                continue;
            }
            let text = std::fs::read_to_string(repo(path))
                .unwrap_or_else(|_| panic!("docs/security.md cites {path}, which does not exist"));
            cited += 1;
            for name in cited_names(&rest[end + 1..]) {
                let found = match name.strip_prefix('…') {
                    Some(tail) => text.lines().any(|l| {
                        l.trim_start().starts_with("async fn ") || l.trim_start().starts_with("fn ")
                    } && l.contains(&format!("{tail}("))),
                    None => {
                        text.contains(&format!("fn {name}(")) || text.contains(&format!("fn {name}<"))
                    }
                };
                assert!(
                    found,
                    "docs/security.md cites {name} in {path}, which has no such test"
                );
            }
        }
    }
    assert!(cited > 20, "only {cited} citations found");
}
