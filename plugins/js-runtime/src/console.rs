//! `console.log/info/debug/warn/error` for plugin JavaScript.
//!
//! Output goes to a swappable sink: standard error while the source is evaluated at build time
//! (Extism's host functions do not exist then), Extism's log functions once the plugin runs, so
//! the operator shows plugin logs next to its own. Arguments are joined by spaces; strings print
//! as themselves, errors as their message and stack, everything else as JSON when it has a JSON
//! form (objects, arrays, numbers) and as `String(value)` otherwise.

use std::cell::Cell;

use rquickjs::function::Rest;
use rquickjs::{Coerced, Ctx, FromJs, Function, Object, Value};

/// The level of one console line; mirrors Extism's log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Where console lines go.
pub type Sink = fn(Level, &str);

thread_local! {
    // A Wasm instance is single-threaded, so this is one static; it is part of the snapshot.
    static SINK: Cell<Sink> = const { Cell::new(discard) };
}

fn discard(_: Level, _: &str) {}

/// Routes every later `console.*` call to `sink`.
pub fn set_sink(sink: Sink) {
    SINK.with(|s| s.set(sink));
}

fn emit(level: Level, line: &str) {
    SINK.with(|s| (s.get())(level, line));
}

/// Defines the global `console` object in `ctx`.
pub fn install<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<()> {
    let console = Object::new(ctx.clone())?;
    for (name, level) in [
        ("log", Level::Info),
        ("info", Level::Info),
        ("debug", Level::Debug),
        ("warn", Level::Warn),
        ("error", Level::Error),
    ] {
        let function = Function::new(ctx.clone(), move |ctx: Ctx<'js>, args: Rest<Value<'js>>| {
            emit(level, &format_args(&ctx, args.0));
        })?
        .with_name(name)?;
        console.set(name, function)?;
    }
    ctx.globals().set("console", console)
}

/// Formats console arguments the way a reader expects from Node.js, minus colours.
fn format_args<'js>(ctx: &Ctx<'js>, args: Vec<Value<'js>>) -> String {
    let mut line = String::new();
    for (i, arg) in args.into_iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(&format_value(ctx, arg));
    }
    line
}

/// One value as text: a string as itself, an Error with its stack, else JSON or `String(v)`.
pub(crate) fn format_value<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> String {
    if let Some(s) = value.as_string() {
        return s.to_string().unwrap_or_default();
    }
    if value.is_error() {
        return describe_exception(ctx, value);
    }
    let as_json = !(value.is_undefined() || value.is_function() || value.is_symbol());
    if as_json {
        // JSON.stringify throws on cycles and BigInt; those fall through to String(v).
        if let Ok(Some(json)) = ctx.json_stringify(value.clone())
            && let Ok(json) = json.to_string()
        {
            return json;
        }
        // The failed stringify left its exception pending; it is not the user's error.
        let _ = ctx.catch();
    }
    match Coerced::<String>::from_js(ctx, value) {
        Ok(Coerced(s)) => s,
        Err(_) => {
            let _ = ctx.catch();
            String::from("<unprintable value>")
        }
    }
}

/// Renders a thrown value: `[Name: ]message` then the stack for errors, else the value as text.
pub(crate) fn describe_exception<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> String {
    let Some(error) = value.as_exception() else {
        return format_value(ctx, value);
    };
    let message = error.message().unwrap_or_default();
    let name: Option<String> = error.get("name").ok().flatten();
    let mut text = match name.as_deref() {
        Some(n) if !n.is_empty() && n != "Error" => format!("{n}: {message}"),
        _ => message,
    };
    if let Some(stack) = error.stack() {
        let stack = stack.trim_end();
        if !stack.is_empty() {
            text.push('\n');
            text.push_str(stack);
        }
    }
    text
}
