//! Field declaration order of the ABI structs, read from serde itself.
//!
//! JSON Schema objects are unordered (and `serde_json` sorts them), but Rust serialises a
//! struct's fields in declaration order. The Go emitter declares fields in that order so a Go
//! plugin's response is byte-for-byte what a Rust plugin writes. serde's derived
//! `Deserialize` hands its field names (after `rename`) to
//! [`serde::Deserializer::deserialize_struct`]; a deserializer that only records them gives the
//! order without a sample value of each type.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};
use wasmop_abi::{
    ControllerInfo, Event, ReconcileRequest, ReconcileResponse, Related, RelatedTarget,
};

/// Every struct in the ABI, by its schema name, with its JSON field names in declaration order.
///
/// # Caveats
/// A struct added to `wasmop-abi` must be added here too; until it is, the generator stops with
/// [`crate::Error::NoFieldOrder`] naming it.
pub fn declared_fields() -> BTreeMap<String, Vec<String>> {
    [
        fields_of::<ReconcileRequest>(),
        fields_of::<ControllerInfo>(),
        fields_of::<Related>(),
        fields_of::<RelatedTarget>(),
        fields_of::<ReconcileResponse>(),
        fields_of::<Event>(),
    ]
    .into_iter()
    .map(|(name, fields)| {
        (
            name.to_owned(),
            fields.iter().map(|f| (*f).to_owned()).collect(),
        )
    })
    .collect()
}

/// The struct name and field names serde's derive passes to `deserialize_struct`.
fn fields_of<T: DeserializeOwned>() -> (&'static str, &'static [&'static str]) {
    let mut seen = None;
    // The recorder always fails (it has no data to give); only what it recorded matters.
    let _ = T::deserialize(Recorder { seen: &mut seen });
    seen.unwrap_or_else(|| {
        panic!(
            "{} does not deserialize as a struct",
            std::any::type_name::<T>()
        )
    })
}

struct Recorder<'a> {
    seen: &'a mut Option<(&'static str, &'static [&'static str])>,
}

#[derive(Debug)]
struct Recorded;

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names recorded; no data to deserialize")
    }
}

impl std::error::Error for Recorded {}

impl de::Error for Recorded {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Recorded
    }
}

impl<'de> de::Deserializer<'de> for Recorder<'_> {
    type Error = Recorded;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Recorded> {
        Err(Recorded)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Recorded> {
        *self.seen = Some((name, fields));
        Err(Recorded)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_fields_come_in_rust_declaration_order() {
        let all = declared_fields();
        assert_eq!(
            all["ReconcileResponse"],
            [
                "children",
                "status",
                "apply",
                "requeueAfterSeconds",
                "events",
                "finalized"
            ]
        );
        assert_eq!(all["Event"], ["type", "reason", "message"]);
    }
}
