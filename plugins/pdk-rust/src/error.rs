//! The PDK's error: what a helper or the call boundary reports, worded for the person who
//! reads it on the parent object (the host shows the message verbatim).

use std::fmt::Display;

/// Everything that can fail in a plugin written with this crate.
///
/// The `Display` text is the whole message the host reports: it names the field and what it
/// must be, e.g. `spec.replicas must be a non-negative integer`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field exists but has the wrong type or range.
    #[error("{field} must be {expected}")]
    InvalidField {
        /// Dotted path as the user wrote it, e.g. `spec.replicas`.
        field: String,
        /// What would be accepted, e.g. `a non-negative integer`.
        expected: &'static str,
    },
    /// A field exists but does not deserialize into the type the plugin asked for.
    #[error("{field} is not valid: {source}")]
    Decode {
        field: String,
        #[source]
        source: serde_json::Error,
    },
    /// The host's input is not a request this plugin understands.
    #[error(
        "the request is not a wasmop {abi} ReconcileRequest ({source}); rebuild the plugin \
         against the wasmop-pdk that matches the operator",
        abi = wasmop_abi::ABI_VERSION
    )]
    BadRequest {
        #[source]
        source: serde_json::Error,
    },
    /// The plugin's own failure, reported verbatim (see [`Error::msg`]).
    #[error("{0}")]
    Plugin(String),
}

impl Error {
    /// A plugin failure with exactly this message.
    pub fn msg(message: impl Display) -> Self {
        Error::Plugin(message.to_string())
    }

    /// `<field> must be <expected>`.
    pub fn invalid(field: impl Into<String>, expected: &'static str) -> Self {
        Error::InvalidField {
            field: field.into(),
            expected,
        }
    }
}

/// `Result` with the PDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_field_reads_as_one_sentence() {
        let e = Error::invalid("spec.replicas", "a non-negative integer");
        assert_eq!(
            e.to_string(),
            "spec.replicas must be a non-negative integer"
        );
    }

    #[test]
    fn a_plugin_message_is_kept_verbatim() {
        assert_eq!(Error::msg("no can do").to_string(), "no can do");
    }
}
