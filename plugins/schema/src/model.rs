//! The ABI as the emitters see it: named types, their fields in declaration order, each
//! field's type and whether Rust always serialises it.
//!
//! [`Abi::from_schema`] reads the JSON Schema that schemars generates for `wasmop-abi`. It
//! understands exactly the shapes that schema uses (objects, maps, arrays, nullable scalars,
//! one string enum, references) and refuses anything else with an error that says where to
//! teach it, so a new ABI construct can never be emitted wrongly in silence.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The whole ABI: the version it describes and every named type, in reading order
/// (request first, then response; each type followed by the types it introduces).
#[derive(Clone, Debug, PartialEq)]
pub struct Abi {
    /// The schema's `$id`, e.g. `https://wasmop.dev/abi/wasmop.dev/v1alpha1.json`.
    pub id: String,
    pub title: String,
    /// The root's properties (`request`, `response`) and the types they name.
    pub roots: Vec<(String, String)>,
    pub defs: Vec<Def>,
}

/// One named type (`$defs` entry).
#[derive(Clone, Debug, PartialEq)]
pub struct Def {
    pub name: String,
    pub doc: Option<String>,
    pub kind: DefKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DefKind {
    /// A JSON object with known fields. `closed` is true when unknown fields are rejected
    /// (`deny_unknown_fields` in Rust, `additionalProperties: false` in the schema).
    Struct { fields: Vec<Field>, closed: bool },
    /// A string with a fixed set of values.
    StringEnum { values: Vec<String> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The JSON name (camelCase).
    pub name: String,
    pub doc: Option<String>,
    pub ty: Ty,
    pub presence: Presence,
    /// The schema `default`: what a missing field means.
    pub default: Option<Value>,
}

/// When a field appears in JSON that Rust serialises. Go's `omitempty` and TypeScript's `?`
/// follow from this, so that a Go plugin writes the same JSON a Rust plugin writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Listed in `required`: always present.
    Required,
    /// Has a schema `default`: may be missing on input, always written by Rust.
    Defaulted,
    /// Neither: Rust skips it when empty/none/false (`skip_serializing_if`).
    OmittedWhenEmpty,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    /// Any JSON value (schema `true` or a schema without `type`).
    Any,
    String,
    Bool,
    /// An integer; `format` is schemars' name such as `uint64` or `int32`.
    Int {
        signed: bool,
        bits: u8,
    },
    Float,
    Array(Box<Ty>),
    /// An object used as a map from string keys.
    Map(Box<Ty>),
    /// `null` or the inner type.
    Nullable(Box<Ty>),
    /// A named type from [`Abi::defs`].
    Ref(String),
}

impl Abi {
    /// Reads the schemars output of `wasmop_abi::schema()`. `order` gives each struct's
    /// fields in Rust declaration order (JSON Schema objects lose it).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a schema construct the emitters do not know, naming where.
    pub fn from_schema(schema: &Value, order: &BTreeMap<String, Vec<String>>) -> Result<Self> {
        let root = obj(schema, "the schema root")?;
        let defs_json = root
            .get("$defs")
            .and_then(Value::as_object)
            .ok_or_else(|| unsupported("the schema root", "it has no `$defs` object"))?;
        let root_props = root
            .get("properties")
            .and_then(Value::as_object)
            .ok_or_else(|| unsupported("the schema root", "it has no `properties`"))?;

        let mut parsed = BTreeMap::new();
        for (name, def) in defs_json {
            parsed.insert(name.clone(), parse_def(name, def, order)?);
        }

        // Reading order: walk from the root's properties, depth first, fields in order.
        let mut roots = Vec::new();
        let mut seen = Vec::<String>::new();
        for (prop, schema) in root_props {
            let Ty::Ref(name) = parse_ty(schema, &format!("root property `{prop}`"))? else {
                return Err(unsupported(
                    &format!("root property `{prop}`"),
                    "it is not a $ref",
                ));
            };
            roots.push((prop.clone(), name.clone()));
            visit(&name, &parsed, &mut seen)?;
        }
        // Keep the request before the response whatever the root's key order is.
        roots.sort_by_key(|(prop, _)| prop != "request");
        seen.clear();
        for (_, name) in &roots {
            visit(name, &parsed, &mut seen)?;
        }
        let defs = seen.iter().map(|n| parsed[n].clone()).collect::<Vec<_>>();
        if let Some(unused) = parsed.keys().find(|n| !seen.contains(n)) {
            return Err(unsupported(
                &format!("$defs/{unused}"),
                "no field refers to it",
            ));
        }

        Ok(Abi {
            id: str_field(root, "$id", "the schema root")?.to_owned(),
            title: str_field(root, "title", "the schema root")?.to_owned(),
            roots,
            defs,
        })
    }

    pub fn def(&self, name: &str) -> Option<&Def> {
        self.defs.iter().find(|d| d.name == name)
    }

    /// The ABI version: the `$id` path after `/abi/`, without `.json`.
    pub fn version(&self) -> &str {
        let tail = self
            .id
            .split_once("/abi/")
            .map_or(self.id.as_str(), |(_, t)| t);
        tail.strip_suffix(".json").unwrap_or(tail)
    }
}

fn visit(name: &str, defs: &BTreeMap<String, Def>, seen: &mut Vec<String>) -> Result<()> {
    if seen.iter().any(|s| s == name) {
        return Ok(());
    }
    let def = defs
        .get(name)
        .ok_or_else(|| unsupported(&format!("$ref {name}"), "it names no `$defs` entry"))?;
    seen.push(name.to_owned());
    if let DefKind::Struct { fields, .. } = &def.kind {
        for f in fields {
            for r in f.ty.refs() {
                visit(r, defs, seen)?;
            }
        }
    }
    Ok(())
}

impl Ty {
    /// The named types this type mentions.
    pub fn refs(&self) -> Vec<&str> {
        match self {
            Ty::Ref(n) => vec![n],
            Ty::Array(t) | Ty::Map(t) | Ty::Nullable(t) => t.refs(),
            _ => vec![],
        }
    }
}

fn parse_def(name: &str, def: &Value, order: &BTreeMap<String, Vec<String>>) -> Result<Def> {
    let at = format!("$defs/{name}");
    let o = obj(def, &at)?;
    let doc = o
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ty = o.get("type").and_then(Value::as_str);
    let kind = match (ty, o.get("enum"), o.get("properties")) {
        (Some("string"), Some(Value::Array(values)), None) => DefKind::StringEnum {
            values: values
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| unsupported(&at, "an enum value is not a string"))
                })
                .collect::<Result<_>>()?,
        },
        (Some("object"), None, Some(Value::Object(props))) => {
            let required: Vec<&str> = o
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let declared = order.get(name).ok_or_else(|| Error::NoFieldOrder {
                name: name.to_owned(),
            })?;
            let mut fields = Vec::with_capacity(props.len());
            for key in declared {
                let Some(schema) = props.get(key) else {
                    continue;
                };
                let fat = format!("{at}.{key}");
                let presence = if required.contains(&key.as_str()) {
                    Presence::Required
                } else if schema.get("default").is_some() {
                    Presence::Defaulted
                } else {
                    Presence::OmittedWhenEmpty
                };
                fields.push(Field {
                    name: key.clone(),
                    doc: schema
                        .get("description")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    ty: parse_ty(schema, &fat)?,
                    presence,
                    default: schema.get("default").cloned(),
                });
            }
            if let Some(stray) = props.keys().find(|k| !declared.contains(k)) {
                return Err(Error::FieldOrderStale {
                    name: name.to_owned(),
                    field: stray.clone(),
                });
            }
            let closed = o.get("additionalProperties") == Some(&Value::Bool(false));
            DefKind::Struct { fields, closed }
        }
        _ => {
            return Err(unsupported(
                &at,
                "only objects with `properties` and string enums are understood",
            ));
        }
    };
    Ok(Def {
        name: name.to_owned(),
        doc,
        kind,
    })
}

fn parse_ty(schema: &Value, at: &str) -> Result<Ty> {
    let o = match schema {
        Value::Bool(true) => return Ok(Ty::Any),
        _ => obj(schema, at)?,
    };
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let name = r
            .strip_prefix("#/$defs/")
            .ok_or_else(|| unsupported(at, "its $ref does not point into #/$defs/"))?;
        return Ok(Ty::Ref(name.to_owned()));
    }
    if let Some(any_of) = o.get("anyOf").and_then(Value::as_array) {
        // schemars writes Option<Named> as anyOf [ {$ref}, {type: null} ].
        let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
        return match any_of.as_slice() {
            [a, b] if is_null(b) => Ok(Ty::Nullable(Box::new(parse_ty(a, at)?))),
            [a, b] if is_null(a) => Ok(Ty::Nullable(Box::new(parse_ty(b, at)?))),
            _ => Err(unsupported(at, "anyOf other than [T, null]")),
        };
    }
    match o.get("type") {
        None => Ok(Ty::Any),
        Some(Value::String(t)) => scalar_or_container(t, o, at),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            match names.as_slice() {
                [t, "null"] | ["null", t] => {
                    Ok(Ty::Nullable(Box::new(scalar_or_container(t, o, at)?)))
                }
                _ => Err(unsupported(at, "a type list other than [T, \"null\"]")),
            }
        }
        Some(_) => Err(unsupported(at, "`type` is neither a string nor a list")),
    }
}

fn scalar_or_container(t: &str, o: &Map<String, Value>, at: &str) -> Result<Ty> {
    Ok(match t {
        "string" if o.contains_key("enum") => {
            return Err(unsupported(
                at,
                "an inline enum (make it a named Rust enum)",
            ));
        }
        "string" => Ty::String,
        "boolean" => Ty::Bool,
        "number" => Ty::Float,
        "integer" => {
            let format = o.get("format").and_then(Value::as_str).unwrap_or("int64");
            let (signed, bits) = match format {
                "uint8" => (false, 8),
                "uint16" => (false, 16),
                "uint32" => (false, 32),
                "uint64" | "uint" => (false, 64),
                "int8" => (true, 8),
                "int16" => (true, 16),
                "int32" => (true, 32),
                "int64" | "int" => (true, 64),
                other => return Err(unsupported(at, &format!("integer format `{other}`"))),
            };
            Ty::Int { signed, bits }
        }
        "array" => Ty::Array(Box::new(match o.get("items") {
            None => Ty::Any,
            Some(items) => parse_ty(items, &format!("{at}[]"))?,
        })),
        "object" => {
            if o.contains_key("properties") {
                return Err(unsupported(
                    at,
                    "an inline object (make it a named Rust struct)",
                ));
            }
            Ty::Map(Box::new(match o.get("additionalProperties") {
                None => Ty::Any,
                Some(v) => parse_ty(v, &format!("{at}{{}}"))?,
            }))
        }
        other => return Err(unsupported(at, &format!("type `{other}`"))),
    })
}

fn obj<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| unsupported(at, "it is not a JSON object"))
}

fn str_field<'a>(o: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str> {
    o.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| unsupported(at, &format!("it has no string `{key}`")))
}

fn unsupported(at: &str, what: &str) -> Error {
    Error::Unsupported {
        at: at.to_owned(),
        what: what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, f)| (n.to_string(), f.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn tiny(props: Value, required: Value) -> Value {
        json!({
            "$id": "https://wasmop.dev/abi/x/v1.json", "title": "t",
            "properties": { "request": { "$ref": "#/$defs/Req" } },
            "$defs": { "Req": { "type": "object", "properties": props, "required": required } }
        })
    }

    #[test]
    fn fields_follow_declaration_order_not_schema_key_order() {
        let s = tiny(
            json!({"a": {"type": "string"}, "b": {"type": "string"}}),
            json!([]),
        );
        let abi = Abi::from_schema(&s, &order(&[("Req", &["b", "a"])])).unwrap();
        let DefKind::Struct { fields, .. } = &abi.defs[0].kind else {
            panic!()
        };
        assert_eq!(
            fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
    }

    #[test]
    fn presence_comes_from_required_and_default() {
        let s = tiny(
            json!({"r": {"type": "string"}, "d": {"type": "boolean", "default": false},
                   "o": {"type": ["integer", "null"], "format": "uint64"}}),
            json!(["r"]),
        );
        let abi = Abi::from_schema(&s, &order(&[("Req", &["r", "d", "o"])])).unwrap();
        let DefKind::Struct { fields, .. } = &abi.defs[0].kind else {
            panic!()
        };
        let p: Vec<_> = fields.iter().map(|f| f.presence).collect();
        use Presence::*;
        assert_eq!(p, [Required, Defaulted, OmittedWhenEmpty]);
        assert_eq!(
            fields[2].ty,
            Ty::Nullable(Box::new(Ty::Int {
                signed: false,
                bits: 64
            }))
        );
    }

    #[test]
    fn an_inline_object_is_refused_with_where_and_how_to_fix() {
        let s = tiny(
            json!({"x": {"type": "object", "properties": {}}}),
            json!([]),
        );
        let err = Abi::from_schema(&s, &order(&[("Req", &["x"])]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("$defs/Req.x") && err.contains("named Rust struct"),
            "{err}"
        );
    }

    #[test]
    fn a_field_missing_from_the_declaration_order_is_reported() {
        let s = tiny(
            json!({"a": {"type": "string"}, "new": {"type": "string"}}),
            json!([]),
        );
        let err = Abi::from_schema(&s, &order(&[("Req", &["a"])]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Req") && err.contains("new"), "{err}");
    }

    #[test]
    fn version_is_the_id_path_after_abi() {
        let s = tiny(json!({}), json!([]));
        let abi = Abi::from_schema(&s, &order(&[("Req", &[])])).unwrap();
        assert_eq!(abi.version(), "x/v1");
    }
}
