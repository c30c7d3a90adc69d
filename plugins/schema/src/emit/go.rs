//! Go types (`plugins/go/wasmop/abi_gen.go`) for the Go PDK, package `wasmop`.
//!
//! # Guarantees
//! Marshalling a generated struct writes what `serde_json` writes for the Rust type: fields in
//! Rust declaration order, `omitempty` exactly where Rust skips a field, nil maps and slices of
//! always-written fields as `{}`/`[]` rather than `null`, and no HTML escaping (through the
//! package's hand-written `Marshal`). Output is already `gofmt`-formatted: every field is its own
//! alignment section (blank line between fields), so no column padding is needed.

use std::fmt::Write as _;

use super::{banner, plain_doc, version_line};
use crate::model::{Abi, DefKind, Field, Presence, Ty};
use crate::{Error, Result};

/// # Errors
/// [`Error::Unsupported`] when a JSON field name cannot become a Go identifier.
pub fn emit(abi: &Abi) -> Result<String> {
    let mut out = String::new();
    out.push_str(banner());
    let _ = write!(
        out,
        "\npackage wasmop\n\n\
         // ABIVersion is the ABI version every request carries in AbiVersion.\n\
         // {}\n\
         const ABIVersion = {:?}\n",
        version_line(abi),
        abi.version()
    );
    for def in &abi.defs {
        out.push('\n');
        let summary = match &def.kind {
            DefKind::Struct { closed: true, .. } => {
                "(the host rejects JSON with fields it does not know)"
            }
            DefKind::Struct { closed: false, .. } => "",
            DefKind::StringEnum { .. } => "(a string, one of the constants below)",
        };
        type_doc(&mut out, &def.name, def.doc.as_deref(), summary);
        match &def.kind {
            DefKind::StringEnum { values } => {
                let _ = writeln!(out, "type {} string", def.name);
                let _ = writeln!(out, "\n// Values of {}.\nconst (", def.name);
                let names: Vec<String> = values
                    .iter()
                    .map(|v| format!("{}{}", def.name, go_ident(v)))
                    .collect();
                let width = names.iter().map(String::len).max().unwrap_or(0);
                for (name, value) in names.iter().zip(values) {
                    let _ = writeln!(out, "\t{name:width$} {} = {value:?}", def.name);
                }
                out.push_str(")\n");
            }
            DefKind::Struct { fields, .. } => {
                let _ = writeln!(out, "type {} struct {{", def.name);
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    if let Some(doc) = &f.doc {
                        for line in plain_doc(doc).lines() {
                            comment_line(&mut out, "\t", line);
                        }
                    }
                    let omit = if f.presence == Presence::OmittedWhenEmpty {
                        ",omitempty"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        out,
                        "\t{} {} `json:\"{}{omit}\"`",
                        field_ident(&def.name, f)?,
                        go_field_ty(f),
                        f.name
                    );
                }
                out.push_str("}\n");
                marshal_fn(&mut out, &def.name, fields)?;
            }
        }
    }
    Ok(out)
}

/// A `MarshalJSON` that writes nil maps/slices of always-written fields as `{}`/`[]`, as Rust
/// does, and marshals without HTML escaping.
fn marshal_fn(out: &mut String, name: &str, fields: &[Field]) -> Result<()> {
    let _ = write!(
        out,
        "\n// MarshalJSON writes {name} as serde_json writes the Rust type: no HTML escaping,\n\
         // and always-present maps and lists as {{}} and [] even when nil.\n\
         func (v {name}) MarshalJSON() ([]byte, error) {{\n\
         \ttype plain {name}\n\
         \tp := plain(v)\n"
    );
    for f in fields {
        if f.presence == Presence::OmittedWhenEmpty {
            continue;
        }
        if let Ty::Array(_) | Ty::Map(_) = f.ty {
            let ident = field_ident(name, f)?;
            let _ = write!(
                out,
                "\tif p.{ident} == nil {{\n\t\tp.{ident} = {}{{}}\n\t}}\n",
                go_ty(&f.ty)
            );
        }
    }
    out.push_str("\treturn Marshal(p)\n}\n");
    Ok(())
}

fn go_field_ty(f: &Field) -> String {
    match (&f.ty, f.presence) {
        // `omitempty` never omits a struct value; a pointer can be nil.
        (Ty::Ref(n), Presence::OmittedWhenEmpty) => format!("*{n}"),
        (ty, _) => go_ty(ty),
    }
}

fn go_ty(ty: &Ty) -> String {
    match ty {
        Ty::Any => "any".into(),
        Ty::String => "string".into(),
        Ty::Bool => "bool".into(),
        Ty::Int { signed: true, bits } => format!("int{bits}"),
        Ty::Int {
            signed: false,
            bits,
        } => format!("uint{bits}"),
        Ty::Float => "float64".into(),
        Ty::Array(t) => format!("[]{}", go_ty(t)),
        Ty::Map(t) => format!("map[string]{}", go_ty(t)),
        Ty::Nullable(t) => match **t {
            // Already nil-able.
            Ty::Any | Ty::Array(_) | Ty::Map(_) | Ty::Nullable(_) => go_ty(t),
            _ => format!("*{}", go_ty(t)),
        },
        Ty::Ref(n) => n.clone(),
    }
}

fn field_ident(def: &str, f: &Field) -> Result<String> {
    let ident = go_ident(&f.name);
    let ok = ident.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(ident)
    } else {
        Err(Error::Unsupported {
            at: format!("$defs/{def}.{}", f.name),
            what: "a JSON name that is not a Go identifier once capitalised (rename it in \
                   wasmop-abi or teach plugins/schema/src/emit/go.rs a mapping)"
                .into(),
        })
    }
}

/// `abiVersion` → `AbiVersion`, `type` → `Type`.
fn go_ident(json: &str) -> String {
    let mut c = json.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn type_doc(out: &mut String, name: &str, doc: Option<&str>, note: &str) {
    let text = doc.map(plain_doc).unwrap_or_default();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let head = match (first.is_empty(), note.is_empty()) {
        (true, true) => format!("{name} is an ABI type."),
        (true, false) => format!("{name} is an ABI type {note}."),
        (false, _) => format!("{name}: {first}"),
    };
    comment_line(out, "", &head);
    for line in lines {
        comment_line(out, "", line);
    }
    if !first.is_empty() && !note.is_empty() {
        comment_line(out, "", "");
        let mut n = note.trim_matches(|c| c == '(' || c == ')').to_owned();
        if let Some(c) = n.get(..1) {
            n.replace_range(..1, &c.to_uppercase());
        }
        comment_line(out, "", &format!("{n}."));
    }
}

fn comment_line(out: &mut String, indent: &str, line: &str) {
    if line.is_empty() {
        let _ = writeln!(out, "{indent}//");
    } else {
        let _ = writeln!(out, "{indent}// {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: Ty, presence: Presence) -> Field {
        Field {
            name: name.into(),
            doc: None,
            ty,
            presence,
            default: None,
        }
    }

    #[test]
    fn optional_scalars_become_pointers_and_any_stays_any() {
        let u = Ty::Nullable(Box::new(Ty::Int {
            signed: false,
            bits: 64,
        }));
        assert_eq!(go_ty(&u), "*uint64");
        assert_eq!(go_ty(&Ty::Nullable(Box::new(Ty::Any))), "any");
        assert_eq!(
            go_ty(&Ty::Map(Box::new(Ty::Map(Box::new(Ty::Any))))),
            "map[string]map[string]any"
        );
    }

    #[test]
    fn skipped_struct_fields_are_pointers_so_omitempty_can_omit_them() {
        let f = field("x", Ty::Ref("Event".into()), Presence::OmittedWhenEmpty);
        assert_eq!(go_field_ty(&f), "*Event");
    }

    #[test]
    fn marshal_fills_only_always_written_collections() {
        let mut out = String::new();
        let fields = [
            field(
                "children",
                Ty::Array(Box::new(Ty::Any)),
                Presence::Defaulted,
            ),
            field(
                "apply",
                Ty::Array(Box::new(Ty::Any)),
                Presence::OmittedWhenEmpty,
            ),
        ];
        marshal_fn(&mut out, "R", &fields).unwrap();
        assert!(
            out.contains("p.Children = []any{}") && !out.contains("p.Apply"),
            "{out}"
        );
    }

    #[test]
    fn a_json_name_that_is_no_go_identifier_is_refused() {
        let f = field("x-y", Ty::String, Presence::Required);
        assert!(
            field_ident("D", &f)
                .unwrap_err()
                .to_string()
                .contains("$defs/D.x-y")
        );
    }
}
