//! The JavaScript side: one QuickJS runtime and context, the user's source evaluated once as an
//! ES module, and calls into its `reconcile` / `finalize` with the request as a parsed object.
//!
//! Nothing here names Extism or WASI, so the engine is unit-tested natively on the host.
//!
//! # Where `reconcile` and `finalize` are found
//! In this order, the first that defines the name wins:
//! 1. the module's own exports (`export function reconcile(request) { ... }`);
//! 2. `module.exports` (CommonJS bundles, e.g. esbuild `--format=cjs`, which is what
//!    `extism-js` expects): `module` and `exports` are globals while the source runs;
//! 3. a global (`globalThis.reconcile = ...`).
//!
//! The source is always evaluated as a module (strict mode, top-level `await` allowed), so a
//! bare top-level `function reconcile` is module-private; [`InitError::MissingReconcile`] says
//! how to export it.
//!
//! # Numbers
//! JSON integers beyond 2^53 (Kubernetes has int64 and uint64 fields) would lose digits as JS
//! numbers, so the request gives them to JavaScript as `BigInt`, and any `BigInt` in a response
//! is written as a plain JSON integer. Requests without such integers take the fast path, a
//! plain `JSON.parse`.

use rquickjs::promise::PromiseState;
use rquickjs::{Context, Ctx, Function, Module, Object, Persistent, Runtime, Value};
use serde::Serialize;

use crate::console::{self, describe_exception};

/// The two entry points of the wasmop plugin ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    Reconcile,
    Finalize,
}

impl Export {
    /// The name of the JavaScript function and of the Wasm export.
    pub const fn name(self) -> &'static str {
        match self {
            Export::Reconcile => "reconcile",
            Export::Finalize => "finalize",
        }
    }
}

/// Why the user's source could not become a plugin. Serialised (JSON) to the build tool, which
/// mirrors this shape in `wasmop-js-build`: keep the two in step.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum InitError {
    /// The source does not parse. `line`/`column` are 1-based.
    Syntax {
        message: String,
        line: Option<u32>,
        column: Option<u32>,
    },
    /// The source parsed but threw (or its top-level `await` rejected) while evaluating.
    Exception {
        message: String,
        line: Option<u32>,
        column: Option<u32>,
    },
    /// No `reconcile` function was found; `exports` lists what the module does export.
    MissingReconcile { exports: Vec<String> },
    /// `reconcile` or `finalize` is defined but is not a function.
    NotAFunction { name: String, found: String },
    /// QuickJS itself failed (out of memory, a NUL byte in the source...).
    Engine { message: String },
}

/// The user's program, evaluated and ready to be called.
pub struct Engine {
    // Field order is drop order: QuickJS aborts if a persistent handle outlives its runtime.
    reconcile: Persistent<Function<'static>>,
    finalize: Option<Persistent<Function<'static>>>,
    /// `JSON.parse` with a reviver that turns unsafe integers into `BigInt`s.
    parse_exact: Persistent<Function<'static>>,
    context: Context,
    _runtime: Runtime,
}

impl Engine {
    /// Evaluates `source` (named `file_name` in errors and stack traces) and looks up its entry
    /// points.
    ///
    /// # Errors
    /// [`InitError`] when the source does not parse, throws, or defines no `reconcile`.
    pub fn new(source: &str, file_name: &str) -> Result<Engine, InitError> {
        let runtime = Runtime::new().map_err(engine_error)?;
        let context = Context::full(&runtime).map_err(engine_error)?;
        let parse_exact = context.with(|ctx| install_exact_integers(&ctx))?;
        let (reconcile, finalize) = context.with(|ctx| evaluate(&ctx, source, file_name))?;
        Ok(Engine {
            reconcile,
            finalize,
            parse_exact,
            context,
            _runtime: runtime,
        })
    }

    /// Whether the source defines `export`.
    pub fn has(&self, export: Export) -> bool {
        match export {
            Export::Reconcile => true,
            Export::Finalize => self.finalize.is_some(),
        }
    }

    /// Calls `export` with `request` (JSON text) parsed into an object and returns
    /// `JSON.stringify` of its result, awaiting it first when it is a Promise.
    ///
    /// # Errors
    /// A message for the host: for a JavaScript exception, the first line is the error's
    /// message (prefixed by its name unless that is plain `Error`), the following lines its
    /// stack.
    pub fn call(&self, export: Export, request: &[u8]) -> Result<String, String> {
        let function = match export {
            Export::Reconcile => self.reconcile.clone(),
            Export::Finalize => self.finalize.clone().ok_or_else(|| {
                "the plugin's JavaScript defines no `finalize` function: export one \
                 (`export function finalize(request)`) or set spec.plugin.finalize to false"
                    .to_string()
            })?,
        };
        let parse = has_long_digit_run(request).then(|| self.parse_exact.clone());
        self.context.with(|ctx| {
            let result = call_in(&ctx, export, function, parse, request);
            // Work the function queued but did not await must not run inside the next call.
            while ctx.execute_pending_job() {}
            result
        })
    }
}

/// Makes `BigInt`s serialise as JSON integers and returns the exact-integer request parser.
/// Both run before the user's code, so they use the pristine `JSON` object.
fn install_exact_integers(ctx: &Ctx<'_>) -> Result<Persistent<Function<'static>>, InitError> {
    let parse: Function = ctx
        .eval(
            r#"
            Object.defineProperty(BigInt.prototype, "toJSON", {
              value() { return JSON.rawJSON(this.toString()); },
              writable: true, configurable: true,
            });
            (() => {
              const parse = JSON.parse, isSafe = Number.isSafeInteger, digits = /^-?[0-9]+$/;
              const exact = (key, value, context) =>
                typeof value === "number" && !isSafe(value) && digits.test(context.source)
                  ? BigInt(context.source) : value;
              return (text) => parse(text, exact);
            })()
            "#,
        )
        .map_err(engine_error)?;
    Ok(Persistent::save(ctx, parse))
}

/// Whether `json` may hold an integer that a JS number cannot (2^53 has 16 digits). Digits in
/// strings count too: a false positive only costs the slower parse.
fn has_long_digit_run(json: &[u8]) -> bool {
    json.split(|b| !b.is_ascii_digit())
        .any(|run| run.len() >= 16)
}

fn evaluate<'js>(
    ctx: &Ctx<'js>,
    source: &str,
    file_name: &str,
) -> Result<
    (
        Persistent<Function<'static>>,
        Option<Persistent<Function<'static>>>,
    ),
    InitError,
> {
    console::install(ctx).map_err(engine_error)?;
    ctx.eval::<(), _>("globalThis.module = { exports: {} }; globalThis.exports = module.exports;")
        .map_err(engine_error)?;

    let module = Module::declare(ctx.clone(), file_name, source).map_err(|e| {
        caught(ctx, e, file_name, |message, line, column| {
            InitError::Syntax {
                message,
                line,
                column,
            }
        })
    })?;
    let threw = |e| {
        caught(ctx, e, file_name, |message, line, column| {
            InitError::Exception {
                message,
                line,
                column,
            }
        })
    };
    let (module, done) = module.eval().map_err(threw)?;
    // Top-level await: run the job queue until the module's evaluation settles.
    done.finish::<()>().map_err(threw)?;
    let namespace = module.namespace().map_err(engine_error)?;

    let reconcile =
        find(ctx, &namespace, Export::Reconcile)?.ok_or_else(|| InitError::MissingReconcile {
            exports: namespace.keys::<String>().filter_map(Result::ok).collect(),
        })?;
    let finalize = find(ctx, &namespace, Export::Finalize)?;
    Ok((
        Persistent::save(ctx, reconcile),
        finalize.map(|f| Persistent::save(ctx, f)),
    ))
}

/// Looks `export` up in the module namespace, then `module.exports`, then the globals.
fn find<'js>(
    ctx: &Ctx<'js>,
    namespace: &Object<'js>,
    export: Export,
) -> Result<Option<Function<'js>>, InitError> {
    let name = export.name();
    let globals = ctx.globals();
    let cjs: Option<Object<'js>> = globals
        .get::<_, Option<Object<'js>>>("module")
        .ok()
        .flatten()
        .and_then(|m| m.get::<_, Option<Object<'js>>>("exports").ok().flatten());
    let candidates = [Some(namespace.clone()), cjs, Some(globals)];
    for holder in candidates.into_iter().flatten() {
        let value: Value<'js> = holder.get(name).map_err(engine_error)?;
        if value.is_undefined() {
            continue;
        }
        return match value.as_function() {
            Some(f) => Ok(Some(f.clone())),
            None => Err(InitError::NotAFunction {
                name: name.to_string(),
                found: value.type_name().to_string(),
            }),
        };
    }
    Ok(None)
}

fn call_in<'js>(
    ctx: &Ctx<'js>,
    export: Export,
    function: Persistent<Function<'static>>,
    parse_exact: Option<Persistent<Function<'static>>>,
    request: &[u8],
) -> Result<String, String> {
    let name = export.name();
    let function = function.restore(ctx).map_err(|e| e.to_string())?;
    let parsed = match parse_exact {
        None => ctx.json_parse(request.to_vec()),
        Some(parse) => {
            let text = String::from_utf8_lossy(request);
            parse.restore(ctx).and_then(|p| p.call((text.as_ref(),)))
        }
    };
    let request: Value<'js> =
        parsed.map_err(|e| format!("the request is not valid JSON: {}", thrown(ctx, e)))?;
    let mut result: Value<'js> = function.call((request,)).map_err(|e| thrown(ctx, e))?;

    if let Some(promise) = result.as_promise().cloned() {
        result = match promise.finish::<Value<'js>>() {
            Ok(v) => v,
            Err(rquickjs::Error::WouldBlock) if promise.state() == PromiseState::Pending => {
                return Err(format!(
                    "`{name}` returned a Promise that never settled: a plugin has no timers \
                     or I/O to wait for, so await only values that are already there"
                ));
            }
            Err(e) => return Err(thrown(ctx, e)),
        };
    }

    if !result.is_object() || result.is_array() || result.is_function() {
        let got = if result.is_null() {
            "null"
        } else {
            result.type_name()
        };
        return Err(format!(
            "`{name}` returned {got}; it must return a response object, e.g. \
             {{ children: [], status: {{}} }}"
        ));
    }
    match ctx.json_stringify(result) {
        Ok(Some(json)) => json.to_string().map_err(|e| e.to_string()),
        Ok(None) => Err(format!("`{name}` returned a value JSON cannot represent")),
        Err(e) => Err(format!(
            "the response of `{name}` cannot be turned into JSON: {}",
            thrown(ctx, e)
        )),
    }
}

/// The pending JavaScript exception of a failed rquickjs call, as text for the host.
fn thrown(ctx: &Ctx<'_>, error: rquickjs::Error) -> String {
    if error.is_exception() {
        describe_exception(ctx, ctx.catch())
    } else {
        error.to_string()
    }
}

/// Turns a failed parse or evaluation into an [`InitError`] with the position in `file_name`.
fn caught(
    ctx: &Ctx<'_>,
    error: rquickjs::Error,
    file_name: &str,
    make: impl FnOnce(String, Option<u32>, Option<u32>) -> InitError,
) -> InitError {
    if !error.is_exception() {
        return engine_error(error);
    }
    let value = ctx.catch();
    let stack = value
        .as_object()
        .and_then(|o| o.get::<_, Option<String>>("stack").ok().flatten())
        .unwrap_or_default();
    let (line, column) = match position(&stack, file_name) {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    };
    make(describe_exception(ctx, value), line, column)
}

/// The first `file:line:column` of `file_name` in a QuickJS stack trace, whose frames read
/// `    at fn (app.js:12:9)` or `    at app.js:3:5`.
fn position(stack: &str, file_name: &str) -> Option<(u32, u32)> {
    let needle = format!("{file_name}:");
    stack.lines().find_map(|frame| {
        let rest = &frame[frame.find(&needle)? + needle.len()..];
        let mut numbers = rest.split(|c: char| !c.is_ascii_digit());
        let line = numbers.next()?.parse().ok()?;
        let column = numbers.next()?.parse().ok()?;
        Some((line, column))
    })
}

fn engine_error(error: rquickjs::Error) -> InitError {
    InitError::Engine {
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn engine(source: &str) -> Engine {
        Engine::new(source, "app.js").unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn error(source: &str) -> InitError {
        match Engine::new(source, "app.js") {
            Ok(_) => panic!("expected the source to be rejected"),
            Err(e) => e,
        }
    }

    #[test]
    fn exported_reconcile_receives_the_parsed_request_and_its_result_is_json() {
        let e =
            engine("export function reconcile(r) { return { status: { got: r.object.n + 1 } }; }");
        assert_eq!(
            e.call(Export::Reconcile, br#"{"object":{"n":41}}"#)
                .unwrap(),
            r#"{"status":{"got":42}}"#
        );
    }

    #[test]
    fn entry_points_are_found_in_exports_module_exports_and_globals() {
        for source in [
            "export function reconcile() { return {}; }",
            "export const reconcile = () => ({});",
            "module.exports = { reconcile() { return {}; } };",
            "exports.reconcile = function () { return {}; };",
            "globalThis.reconcile = function () { return {}; };",
        ] {
            let e = engine(source);
            assert_eq!(e.call(Export::Reconcile, b"{}").unwrap(), "{}", "{source}");
            assert!(!e.has(Export::Finalize), "{source}");
        }
    }

    #[test]
    fn finalize_is_optional_and_called_when_defined() {
        let e = engine(
            "export const reconcile = () => ({}); export const finalize = () => ({ finalized: true });",
        );
        assert!(e.has(Export::Finalize));
        assert_eq!(
            e.call(Export::Finalize, b"{}").unwrap(),
            r#"{"finalized":true}"#
        );
        let e = engine("export const reconcile = () => ({});");
        assert!(
            e.call(Export::Finalize, b"{}")
                .unwrap_err()
                .contains("no `finalize`")
        );
    }

    #[test]
    fn thrown_error_keeps_its_exact_message_on_the_first_line_and_the_stack_after() {
        let e = engine(
            "export function reconcile() {\n  throw new Error('spec.replicas must be a non-negative integer');\n}",
        );
        let message = e.call(Export::Reconcile, b"{}").unwrap_err();
        let mut lines = message.lines();
        assert_eq!(
            lines.next(),
            Some("spec.replicas must be a non-negative integer")
        );
        assert!(
            lines
                .next()
                .is_some_and(|l| l.contains("reconcile") && l.contains("app.js:2")),
            "{message}"
        );
    }

    #[test]
    fn type_errors_name_their_type_and_non_errors_print_as_values() {
        let e = engine("export function reconcile(r) { return r.missing.field; }");
        let message = e.call(Export::Reconcile, b"{}").unwrap_err();
        assert!(message.starts_with("TypeError: "), "{message}");
        let e = engine("export function reconcile() { throw { code: 7 }; }");
        assert_eq!(
            e.call(Export::Reconcile, b"{}").unwrap_err(),
            r#"{"code":7}"#
        );
    }

    #[test]
    fn async_reconcile_is_awaited_and_its_rejection_is_an_error() {
        let e = engine(
            "export async function reconcile(r) { await null; return { status: { n: r.n } }; }",
        );
        assert_eq!(
            e.call(Export::Reconcile, br#"{"n":1}"#).unwrap(),
            r#"{"status":{"n":1}}"#
        );
        let e =
            engine("export async function reconcile() { await null; throw new Error('later'); }");
        assert!(
            e.call(Export::Reconcile, b"{}")
                .unwrap_err()
                .starts_with("later\n")
        );
        let e = engine("export function reconcile() { return new Promise(() => {}); }");
        assert!(
            e.call(Export::Reconcile, b"{}")
                .unwrap_err()
                .contains("never settled")
        );
    }

    #[test]
    fn a_result_that_is_not_an_object_is_refused_with_what_it_was() {
        for (body, got) in [
            ("", "undefined"),
            ("return null", "null"),
            ("return [1]", "array"),
            ("return 5", "int"),
        ] {
            let e = engine(&format!("export function reconcile() {{ {body} }}"));
            let message = e.call(Export::Reconcile, b"{}").unwrap_err();
            assert!(
                message.contains(&format!("returned {got}")),
                "{body}: {message}"
            );
        }
    }

    #[test]
    fn syntax_error_reports_line_and_column() {
        let err = error("export function reconcile() {\n  return {;\n}\n");
        match err {
            InitError::Syntax {
                line,
                column,
                message,
            } => {
                assert_eq!(line, Some(2), "{message}");
                assert!(column.is_some(), "{message}");
                assert!(message.starts_with("SyntaxError: "), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn top_level_throw_is_an_exception_with_its_position() {
        let err = error("const x = 1;\nthrow new Error('boom');\nexport function reconcile() {}");
        assert!(
            matches!(&err, InitError::Exception { message, line: Some(2), .. } if message.starts_with("boom")),
            "{err:?}"
        );
    }

    #[test]
    fn missing_reconcile_lists_what_is_exported() {
        assert_eq!(
            error("export function reconcle() {}\nfunction helper() {}"),
            InitError::MissingReconcile {
                exports: vec!["reconcle".into()]
            }
        );
        assert_eq!(
            error("export const reconcile = 3;"),
            InitError::NotAFunction {
                name: "reconcile".into(),
                found: "int".into()
            }
        );
    }

    #[test]
    fn integers_beyond_2_pow_53_arrive_as_bigint_and_are_written_back_exactly() {
        let e = engine(
            "export function reconcile(r) { return { status: { types: [typeof r.big, typeof r.small, typeof r.float], \
             big: r.big, next: r.big + 1n, small: r.small, float: r.float, id: r.id } }; }",
        );
        let out = e
            .call(
                Export::Reconcile,
                br#"{"big":18446744073709551615,"small":7,"float":1e300,"id":"12345678901234567890"}"#,
            )
            .unwrap();
        assert_eq!(
            out,
            r#"{"status":{"types":["bigint","number","number"],"big":18446744073709551615,"next":18446744073709551616,"small":7,"float":1e+300,"id":"12345678901234567890"}}"#
        );
        assert!(
            has_long_digit_run(b"[9007199254740993]") && !has_long_digit_run(b"[900719925474099]")
        );
    }

    #[test]
    fn module_state_survives_between_calls() {
        let e = engine("let n = 0; export function reconcile() { n++; return { status: { n } }; }");
        e.call(Export::Reconcile, b"{}").unwrap();
        assert_eq!(
            e.call(Export::Reconcile, b"{}").unwrap(),
            r#"{"status":{"n":2}}"#
        );
    }

    thread_local! {
        static LINES: RefCell<Vec<(console::Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn console_methods_reach_the_sink_with_their_level() {
        console::set_sink(|level, line| {
            LINES.with(|l| l.borrow_mut().push((level, line.to_string())))
        });
        let e = engine(
            "export function reconcile() { console.log('a', 1, {b: [true]}, undefined); \
             console.warn(new Error('w')); console.error('e'); console.debug(1n); return {}; }",
        );
        e.call(Export::Reconcile, b"{}").unwrap();
        let lines = LINES.with(|l| l.take());
        assert_eq!(
            lines[0],
            (
                console::Level::Info,
                r#"a 1 {"b":[true]} undefined"#.to_string()
            )
        );
        assert_eq!(lines[1].0, console::Level::Warn);
        assert!(lines[1].1.starts_with("w\n"), "{:?}", lines[1]);
        assert_eq!(lines[2], (console::Level::Error, "e".to_string()));
        assert_eq!(lines[3], (console::Level::Debug, "1".to_string()));
    }

    #[test]
    fn position_reads_the_first_frame_in_the_file() {
        assert_eq!(
            position(
                "    at foo (x.js:1:1)\n    at reconcile (app.js:12:9)\n",
                "app.js"
            ),
            Some((12, 9))
        );
        assert_eq!(position("    at app.js:3:5\n", "app.js"), Some((3, 5)));
        assert_eq!(position("    at <eval>\n", "app.js"), None);
    }
}
