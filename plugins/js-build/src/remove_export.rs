//! Dropping one export from a module, copying every other section byte for byte.

use wasm_encoder::{ExportSection, Module, RawSection};
use wasmparser::{Parser, Payload};

/// `wasm` without the export called `name` (unchanged when there is none).
pub(crate) fn remove_export(
    wasm: &[u8],
    name: &str,
) -> Result<Vec<u8>, wasmparser::BinaryReaderError> {
    let mut module = Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export?;
                if export.name != name {
                    exports.export(export.name, export.kind.into(), export.index);
                }
            }
            module.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            let range = range.start as usize..range.end as usize;
            module.section(&RawSection {
                id,
                data: &wasm[range],
            });
        }
    }
    Ok(module.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports(wasm: &[u8]) -> Vec<String> {
        Parser::new(0)
            .parse_all(wasm)
            .filter_map(|p| match p.unwrap() {
                Payload::ExportSection(r) => Some(
                    r.into_iter()
                        .map(|e| e.unwrap().name.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn only_the_named_export_goes_and_the_module_stays_valid() {
        let mut module = Module::new();
        let mut types = wasm_encoder::TypeSection::new();
        types.ty().function([], []);
        module.section(&types);
        let mut functions = wasm_encoder::FunctionSection::new();
        functions.function(0);
        module.section(&functions);
        let mut exports_section = ExportSection::new();
        exports_section.export("reconcile", wasm_encoder::ExportKind::Func, 0);
        exports_section.export("finalize", wasm_encoder::ExportKind::Func, 0);
        module.section(&exports_section);
        let mut code = wasm_encoder::CodeSection::new();
        let mut body = wasm_encoder::Function::new([]);
        body.instructions().end();
        code.function(&body);
        module.section(&code);
        module.section(&wasm_encoder::CustomSection {
            name: "note".into(),
            data: b"kept".into(),
        });
        let wasm = module.finish();

        let out = remove_export(&wasm, "finalize").unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        assert_eq!(exports(&out), ["reconcile"]);
        assert!(
            out.windows(4).any(|w| w == b"kept"),
            "custom sections are copied"
        );
        assert_eq!(remove_export(&wasm, "absent").unwrap(), wasm);
    }
}
