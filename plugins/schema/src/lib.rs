//! `wasmop-schema`: the one generator of the plugin ABI's artefacts.
//!
//! The Rust types in `wasmop-abi` are the source. From `wasmop_abi::schema()` this crate writes:
//!
//! | file | what |
//! |---|---|
//! | `plugins/schema/abi.schema.json` | the JSON Schema, pretty-printed |
//! | `plugins/ts/abi.d.ts` | TypeScript declarations for JS/TS plugins |
//! | `plugins/go/wasmop/abi_gen.go` | Go types for the Go PDK |
//! | `docs/abi.md` | the ABI reference |
//!
//! The emitters are written here rather than borrowed from a schema-to-code tool: the schema is
//! small, the Go output must serialise exactly as serde does (field order, `omitempty`, no
//! `null` for empty lists) which no general tool promises, and the drift check stays hermetic
//! (no Node or network in `cargo test`).
//!
//! Modules: [`model`] reads the schema into a small typed form, [`order`] recovers Rust field
//! order, [`emit`] holds one emitter per language. `cargo run -p wasmop-schema` writes the
//! files; `-- --check` (and the test `committed_artefacts_match_the_abi`) fails on drift.

pub mod emit;
pub mod model;
pub mod order;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Errors of the generator. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the ABI schema has {what} at {at}; the emitters do not support it: change the Rust \
         type in plugins/abi or teach plugins/schema/src/model.rs the shape"
    )]
    Unsupported { at: String, what: String },
    #[error(
        "the ABI struct {name} has no known field order: add `fields_of::<{name}>()` to \
         declared_fields() in plugins/schema/src/order.rs"
    )]
    NoFieldOrder { name: String },
    #[error(
        "the schema of {name} has field `{field}` that serde does not declare: the field order \
         in plugins/schema/src/order.rs is stale for {name}"
    )]
    FieldOrderStale { name: String, field: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}\nrun `cargo run -p wasmop-schema` and commit the result")]
    Drift(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One generated file: its path relative to the repository root, and its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artefact {
    pub path: &'static str,
    pub contents: String,
}

/// The repository root as seen from this crate's sources (`plugins/schema/../..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every artefact, generated from `wasmop_abi::schema()`.
///
/// # Errors
/// When the schema uses a construct the emitters do not know (see [`Error`]).
pub fn artefacts() -> Result<Vec<Artefact>> {
    let schema = wasmop_abi::schema();
    let abi = model::Abi::from_schema(&schema, &order::declared_fields())?;
    let mut json = serde_json::to_string_pretty(&schema).expect("a JSON value serialises");
    json.push('\n');
    Ok(vec![
        Artefact {
            path: "plugins/schema/abi.schema.json",
            contents: json,
        },
        Artefact {
            path: "plugins/ts/abi.d.ts",
            contents: emit::ts::emit(&abi),
        },
        Artefact {
            path: "plugins/go/wasmop/abi_gen.go",
            contents: emit::go::emit(&abi)?,
        },
        Artefact {
            path: "docs/abi.md",
            contents: emit::markdown::emit(&abi),
        },
    ])
}

/// Writes every artefact under `root`, creating directories. Returns the paths it changed.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write(root: &Path) -> Result<Vec<&'static str>> {
    let mut changed = Vec::new();
    for a in artefacts()? {
        let path = root.join(a.path);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(a.contents.as_str()) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                action: "create directory",
                path: dir.to_owned(),
                source,
            })?;
        }
        std::fs::write(&path, &a.contents).map_err(|source| Error::Io {
            action: "write",
            path: path.clone(),
            source,
        })?;
        changed.push(a.path);
    }
    Ok(changed)
}

/// Compares every artefact with the file under `root`.
///
/// # Errors
/// [`Error::Drift`] listing each stale or missing file with its first differing lines.
pub fn check(root: &Path) -> Result<()> {
    let mut report = String::new();
    for a in artefacts()? {
        match std::fs::read_to_string(root.join(a.path)) {
            Ok(on_disk) if on_disk == a.contents => {}
            Ok(on_disk) => {
                let _ = writeln!(report, "{} is stale:", a.path);
                report.push_str(&first_difference(&on_disk, &a.contents));
            }
            Err(e) => {
                let _ = writeln!(
                    report,
                    "{} cannot be read ({e}); it should be generated",
                    a.path
                );
            }
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(Error::Drift(report))
    }
}

/// A short diff-like excerpt: the first differing line with two lines of context, as
/// `-` (committed) and `+` (generated) lines, and the size of the difference.
fn first_difference(committed: &str, generated: &str) -> String {
    let old: Vec<&str> = committed.lines().collect();
    let new: Vec<&str> = generated.lines().collect();
    let first = old
        .iter()
        .zip(&new)
        .position(|(a, b)| a != b)
        .unwrap_or(old.len().min(new.len()));
    // Re-align on the first common line after the change, if there is one nearby.
    let (mut o_end, mut n_end) = (old.len(), new.len());
    'search: for (oi, o) in old.iter().enumerate().skip(first).take(40) {
        for (ni, n) in new.iter().enumerate().skip(first).take(40) {
            if o == n && !o.trim().is_empty() {
                (o_end, n_end) = (oi, ni);
                break 'search;
            }
        }
    }
    let mut out = String::new();
    let ctx = first.saturating_sub(2);
    let _ = writeln!(out, "  @@ line {} @@", first + 1);
    for l in &old[ctx..first] {
        let _ = writeln!(out, "    {l}");
    }
    const SHOWN: usize = 12;
    for l in old[first..o_end].iter().take(SHOWN) {
        let _ = writeln!(out, "  - {l}");
    }
    for l in new[first..n_end].iter().take(SHOWN) {
        let _ = writeln!(out, "  + {l}");
    }
    if o_end - first > SHOWN || n_end - first > SHOWN {
        let _ = writeln!(
            out,
            "    ... ({} lines committed, {} generated differ)",
            o_end - first,
            n_end - first
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_artefacts_match_the_abi() {
        if let Err(e) = check(&repo_root()) {
            panic!("{e}");
        }
    }

    #[test]
    fn a_changed_line_is_shown_as_minus_and_plus_with_its_line_number() {
        let d = first_difference("a\nb\nc\nd\n", "a\nb\nX\nd\n");
        assert!(
            d.contains("@@ line 3 @@") && d.contains("  - c") && d.contains("  + X"),
            "{d}"
        );
        assert!(!d.contains("- d"), "{d}");
    }

    #[test]
    fn check_names_a_missing_file_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("wasmop-schema-{}", std::process::id()));
        let err = check(&dir).unwrap_err().to_string();
        assert!(err.contains("docs/abi.md cannot be read"), "{err}");
        assert!(err.contains("cargo run -p wasmop-schema"), "{err}");
    }

    #[test]
    fn rust_skips_exactly_the_fields_the_model_calls_omitted_when_empty() {
        // The model infers presence from the schema; serde is the truth. Serialise empty values
        // and compare which keys appear.
        use wasmop_abi::{
            ControllerInfo, ReconcileRequest, ReconcileResponse, Related, RelatedTarget,
        };
        let abi =
            model::Abi::from_schema(&wasmop_abi::schema(), &order::declared_fields()).unwrap();
        let empties = [
            (
                "ReconcileRequest",
                serde_json::to_value(ReconcileRequest::default()),
            ),
            (
                "ControllerInfo",
                serde_json::to_value(ControllerInfo::default()),
            ),
            ("Related", serde_json::to_value(Related::default())),
            (
                "RelatedTarget",
                serde_json::to_value(RelatedTarget::default()),
            ),
            (
                "ReconcileResponse",
                serde_json::to_value(ReconcileResponse::default()),
            ),
        ];
        for (name, value) in empties {
            let value = value.unwrap();
            let Some(model::Def {
                kind: model::DefKind::Struct { fields, .. },
                ..
            }) = abi.def(name)
            else {
                panic!("{name} is not a struct in the model")
            };
            for f in fields {
                let written = value.get(&f.name).is_some();
                let omitted = f.presence == model::Presence::OmittedWhenEmpty;
                assert_eq!(
                    written, !omitted,
                    "{name}.{}: serde and the model disagree",
                    f.name
                );
            }
        }
    }
}
