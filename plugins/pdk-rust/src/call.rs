//! The call boundary: JSON bytes in, JSON bytes or an error message out.
//!
//! [`call_json`] is exactly what the wasm export runs, as a plain function, so a plugin's
//! tests can feed it the bytes the host would send. The [`crate::export!`] macro wraps it in
//! extism-pdk's `#[plugin_fn]` for the wasm build only.

use std::fmt::Display;

use wasmop_abi::{ReconcileRequest, ReconcileResponse};

use crate::Error;

/// A reconcile (or finalize) function the PDK can call: `fn(ReconcileRequest)` or
/// `fn(&ReconcileRequest)`, returning `Result<ReconcileResponse, E>` for any `E: Display`
/// (this crate's [`Error`], `String`, `anyhow::Error`...). The error's `Display` text is the
/// message the host reports.
///
/// `M` only tells the two argument styles apart; it is inferred.
pub trait Handler<M> {
    /// # Errors
    /// The function's error, as the message the host will report.
    fn handle(&self, req: ReconcileRequest) -> Result<ReconcileResponse, String>;
}

/// Marker for handlers that take the request by value.
#[doc(hidden)]
pub enum ByValue {}
/// Marker for handlers that borrow the request.
#[doc(hidden)]
pub enum ByRef {}

impl<F, E> Handler<(ByValue, E)> for F
where
    F: Fn(ReconcileRequest) -> Result<ReconcileResponse, E>,
    E: Display,
{
    fn handle(&self, req: ReconcileRequest) -> Result<ReconcileResponse, String> {
        self(req).map_err(|e| e.to_string())
    }
}

impl<F, E> Handler<(ByRef, E)> for F
where
    F: Fn(&ReconcileRequest) -> Result<ReconcileResponse, E>,
    E: Display,
{
    fn handle(&self, req: ReconcileRequest) -> Result<ReconcileResponse, String> {
        self(&req).map_err(|e| e.to_string())
    }
}

/// Decodes a request, calls `handler`, encodes its response: what the host sees of a call.
///
/// # Errors
/// [`Error::BadRequest`] when `input` is not a request; [`Error::Plugin`] with the handler's
/// message when it fails.
pub fn call_json<M>(input: &[u8], handler: impl Handler<M>) -> Result<Vec<u8>, Error> {
    let req: ReconcileRequest =
        serde_json::from_slice(input).map_err(|source| Error::BadRequest { source })?;
    let resp = handler.handle(req).map_err(Error::Plugin)?;
    Ok(serde_json::to_vec(&resp).expect("a ReconcileResponse always serialises: it is plain JSON"))
}

/// What the export macro needs at the call site. Not part of the API.
#[doc(hidden)]
pub mod private {
    #[cfg(target_arch = "wasm32")]
    pub use extism_pdk;

    /// The return code the export gives the host on failure (any non-zero is an error).
    pub const ERROR_CODE: i32 = 1;

    #[cfg(target_arch = "wasm32")]
    pub fn to_fn_result(r: Result<Vec<u8>, crate::Error>) -> extism_pdk::FnResult<Vec<u8>> {
        r.map_err(|e| {
            extism_pdk::WithReturnCode::new(extism_pdk::Error::msg(e.to_string()), ERROR_CODE)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn by_ref(req: &ReconcileRequest) -> Result<ReconcileResponse, String> {
        if req.finalizing {
            return Err("cannot finalize".into());
        }
        Ok(ReconcileResponse {
            status: Some(json!({"seen": req.controller.name})),
            ..Default::default()
        })
    }

    fn by_value(req: ReconcileRequest) -> Result<ReconcileResponse, Error> {
        Ok(ReconcileResponse {
            status: Some(req.object),
            ..Default::default()
        })
    }

    const REQ: &str = r#"{"abiVersion":"wasmop.dev/v1alpha1","controller":{"name":"w","namespace":"n"},"object":{"a":1}}"#;

    #[test]
    fn both_handler_styles_round_trip_json() {
        assert_eq!(
            call_json(REQ.as_bytes(), by_ref).unwrap(),
            br#"{"children":[],"status":{"seen":"w"}}"#
        );
        assert_eq!(
            call_json(REQ.as_bytes(), by_value).unwrap(),
            br#"{"children":[],"status":{"a":1}}"#
        );
    }

    #[test]
    fn a_handler_error_is_reported_verbatim() {
        let req = REQ.replace(r#""object""#, r#""finalizing":true,"object""#);
        let err = call_json(req.as_bytes(), by_ref).unwrap_err();
        assert_eq!(err.to_string(), "cannot finalize");
    }

    #[test]
    fn undecodable_input_says_what_to_rebuild() {
        let err = call_json(b"{}", by_ref).unwrap_err().to_string();
        assert!(
            err.contains("not a wasmop wasmop.dev/v1alpha1 ReconcileRequest"),
            "{err}"
        );
        assert!(err.contains("abiVersion"), "{err}");
    }
}
