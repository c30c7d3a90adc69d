//! The layout promises of docs/design-notes.md, read from the sources themselves: the modules
//! of the operator (and of the JavaScript runtime) import one another without a circle, so a
//! reconcile reads top-down, and no function is longer than [`MAX_FUNCTION_LINES`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longer functions are split along the steps they already have.
const MAX_FUNCTION_LINES: usize = 120;

/// Every `.rs` file under `src`, by module path (`reconcile::execute`; the crate root is "").
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(parts.last().map(String::as_str), Some("mod")) {
                    parts.pop();
                }
                if matches!(parts.as_slice(), [one] if one == "lib" || one == "main") {
                    parts.clear();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    out
}

/// The code of a file without its `#[cfg(test)]` module (tests may import anything).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The module paths named after `crate::` in `code`, grouped imports expanded one level.
fn crate_paths(code: &str) -> Vec<String> {
    paths_after(code, "crate::", "")
}

/// The module paths named after `super::` in the code of module `module`, as crate paths.
fn super_paths(code: &str, module: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let prefix = if parent.is_empty() {
        String::new()
    } else {
        format!("{parent}::")
    };
    paths_after(code, "super::", &prefix)
}

fn paths_after(code: &str, marker: &str, prefix: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (i, _) in code.match_indices(marker) {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `crate::x::super::` does not occur; `abc_super::` is not ours
        }
        let rest = &code[i + marker.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let base = rest[..end].trim_end_matches(':').to_string();
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let inner = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |j| end + j)];
            for item in inner.split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                if !item.is_empty() && item != "self" {
                    paths.push(format!("{prefix}{base}::{item}"));
                }
            }
        }
        paths.push(format!("{prefix}{base}"));
    }
    paths
}

/// Import edges between modules: a path resolves to the longest module it starts with.
fn imports(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |path: &str| {
        let mut parts: Vec<&str> = path.split("::").collect();
        while !parts.is_empty() {
            let key = parts.join("::");
            if modules.contains_key(&key) {
                return Some(key);
            }
            parts.pop();
        }
        None
    };
    modules
        .iter()
        .map(|(name, path)| {
            let code = code(path);
            let mut named = crate_paths(&code);
            named.extend(super_paths(&code, name));
            let to = named
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|t| t != name)
                .collect();
            (name.clone(), to)
        })
        .collect()
}

/// Import circles: strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[v].min(s.low[w.as_str()]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w.as_str()) {
                let low = s.low[v].min(s.index[w.as_str()]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

fn crate_src(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

#[test]
fn the_operator_and_js_runtime_modules_import_one_another_without_a_circle() {
    for src in ["src", "../plugins/js-runtime/src"] {
        let modules = modules(&crate_src(src));
        assert!(modules.len() > 3, "{src}: no modules found");
        let edges = imports(&modules);
        let found = circles(&edges);
        assert!(found.is_empty(), "{src}: import circles: {found:?}");
    }
}

#[test]
fn the_circle_check_finds_a_circle() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(circles(&edges), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        super_paths(
            "use super::report::{Error, Report};",
            "cli::explain::gather"
        ),
        vec![
            "cli::explain::report::Error",
            "cli::explain::report::Report",
            "cli::explain::report"
        ]
    );
    assert_eq!(
        crate_paths("use crate::reconcile::{context, plan::Identity};"),
        vec![
            "reconcile::context",
            "reconcile::plan::Identity",
            "reconcile"
        ]
    );
}

/// Functions (`fn` at any depth) with their first line and length, by brace matching.
fn long_functions(path: &Path) -> Vec<(usize, String, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let is_fn = [
            "fn ",
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "async fn ",
        ]
        .iter()
        .chain(&[
            "pub async fn ",
            "pub(crate) async fn ",
            "pub(super) async fn ",
        ])
        .any(|p| t.starts_with(p));
        if !is_fn {
            continue;
        }
        let mut depth = 0i32;
        let mut opened = false;
        for (j, l) in lines.iter().enumerate().skip(i) {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened && depth == 0 => break,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && l.trim_end().ends_with(';')) {
                let len = j - i + 1;
                if len > MAX_FUNCTION_LINES {
                    out.push((i + 1, t.to_string(), len));
                }
                break;
            }
        }
    }
    out
}

#[test]
fn no_operator_function_is_longer_than_120_lines() {
    let mut long = Vec::new();
    for path in modules(&crate_src("src")).values() {
        for (line, head, len) in long_functions(path) {
            long.push(format!("{}:{line}: {len} lines: {head}", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "split these along their steps:\n{}",
        long.join("\n")
    );
}
