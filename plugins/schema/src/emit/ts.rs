//! TypeScript declarations (`plugins/ts/abi.d.ts`) for JavaScript and TypeScript plugins.
//!
//! Fields the host may leave out (not `required` in the schema) are optional (`?`); nullable
//! values are `T | null`. Unstructured Kubernetes objects are `Unstructured` (`any`), so that
//! `req.object.spec?.image` type-checks without casts.

use std::fmt::Write as _;

use super::{banner, plain_doc, version_line};
use crate::model::{Abi, DefKind, Presence, Ty};

pub fn emit(abi: &Abi) -> String {
    let mut out = String::new();
    out.push_str(banner());
    let _ = writeln!(out, "// {}", version_line(abi));
    out.push('\n');
    out.push_str(
        "/**\n * Unstructured JSON: a Kubernetes object or a free-form value, as the API server\n \
         * returns it. `any` on purpose: plugins read nested fields without casts.\n */\n\
         // eslint-disable-next-line @typescript-eslint/no-explicit-any\n\
         export type Unstructured = any;\n",
    );
    let _ = write!(
        out,
        "\n/** The ABI version every request carries in `abiVersion`. */\n\
         export type AbiVersion = {:?};\n",
        abi.version()
    );
    for def in &abi.defs {
        out.push('\n');
        doc_block(&mut out, "", def.doc.as_deref());
        match &def.kind {
            DefKind::StringEnum { values } => {
                let alts: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
                let _ = writeln!(out, "export type {} = {};", def.name, alts.join(" | "));
            }
            DefKind::Struct { fields, .. } => {
                let _ = writeln!(out, "export interface {} {{", def.name);
                for f in fields {
                    doc_block(&mut out, "  ", f.doc.as_deref());
                    let opt = if f.presence == Presence::Required {
                        ""
                    } else {
                        "?"
                    };
                    let _ = writeln!(out, "  {}{opt}: {};", f.name, ts_ty(&f.ty));
                }
                out.push_str("}\n");
            }
        }
    }
    out
}

fn ts_ty(ty: &Ty) -> String {
    match ty {
        Ty::Any => "Unstructured".into(),
        Ty::String => "string".into(),
        Ty::Bool => "boolean".into(),
        Ty::Int { .. } | Ty::Float => "number".into(),
        Ty::Array(t) => match **t {
            Ty::Nullable(_) => format!("({})[]", ts_ty(t)),
            _ => format!("{}[]", ts_ty(t)),
        },
        Ty::Map(t) => format!("{{ [key: string]: {} }}", ts_ty(t)),
        Ty::Nullable(t) => format!("{} | null", ts_ty(t)),
        Ty::Ref(n) => n.clone(),
    }
}

fn doc_block(out: &mut String, indent: &str, doc: Option<&str>) {
    let Some(doc) = doc else { return };
    let text = plain_doc(doc).replace("*/", "*\\/");
    let lines: Vec<&str> = text.lines().collect();
    if let [line] = lines.as_slice() {
        let _ = writeln!(out, "{indent}/** {line} */");
        return;
    }
    let _ = writeln!(out, "{indent}/**");
    for line in lines {
        if line.is_empty() {
            let _ = writeln!(out, "{indent} *");
        } else {
            let _ = writeln!(out, "{indent} * {line}");
        }
    }
    let _ = writeln!(out, "{indent} */");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_maps_and_nullable_numbers_render_as_typescript() {
        let m = Ty::Map(Box::new(Ty::Map(Box::new(Ty::Any))));
        assert_eq!(
            ts_ty(&m),
            "{ [key: string]: { [key: string]: Unstructured } }"
        );
        let n = Ty::Nullable(Box::new(Ty::Int {
            signed: false,
            bits: 64,
        }));
        assert_eq!(ts_ty(&n), "number | null");
        assert_eq!(ts_ty(&Ty::Array(Box::new(n))), "(number | null)[]");
    }
}
