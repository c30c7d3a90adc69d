//! `wasmop-pdk`: write a wasmop plugin in Rust as one plain, natively testable function.
//!
//! ```
//! use wasmop_pdk::prelude::*;
//!
//! /// One ConfigMap per parent, named after it.
//! pub fn reconcile(req: &ReconcileRequest) -> Result<ReconcileResponse> {
//!     let greeting = req.spec().str("greeting")?.unwrap_or("hello");
//!     let mut out = ReconcileResponse::default();
//!     let cm = child("v1", "ConfigMap", req.name()).field("data", json!({"greeting": greeting}));
//!     if req.existing(cm.as_value()).is_none() {
//!         out.normal("Created", format!("created {}", cm.reference()));
//!     }
//!     out.push_child(cm).set_status(json!({"phase": "Ready"}));
//!     Ok(out)
//! }
//!
//! wasmop_pdk::export!(reconcile);
//! # let req = ReconcileRequest { object: json!({"metadata": {"name": "a"}}), ..Default::default() };
//! # assert_eq!(reconcile(&req).unwrap().children[0]["data"]["greeting"], "hello");
//! ```
//!
//! - The ABI types ([`ReconcileRequest`], [`ReconcileResponse`], ...) are `wasmop-abi`'s,
//!   re-exported; `serde_json`'s [`Value`] and [`json!`] too.
//! - [`export!`] makes the Extism exports `reconcile` (and `finalize`) — only when compiling for
//!   `wasm32`. Natively the function is an ordinary function: `cargo test -p <plugin>` tests it.
//! - [`call_json`] is the export's body (bytes in, bytes or message out) for tests that want
//!   the exact JSON the host would see.
//! - Reading: [`RequestExt`] (`req.spec()`, `req.config()`, `req.child(..)`, `req.contract(..)`),
//!   typed field reads with errors naming the field ([`Fields`]).
//! - Writing: [`child`] builds objects, [`ResponseExt`] adds children, status and events,
//!   [`conditions`] keeps `lastTransitionTime` stable so a steady state writes nothing.
//!
//! Build a plugin with `cargo build -p <plugin> --target wasm32-unknown-unknown --profile
//! plugin` (or `wasm32-wasip1` when it needs the clock, see [`now`]). See `docs/plugins-rust.md`.

#![forbid(unsafe_code)]

mod call;
mod condition;
mod error;
mod fields;
mod object;
mod request;
mod response;

pub use call::{ByRef, ByValue, Handler, call_json};
#[cfg(not(all(target_family = "wasm", target_os = "unknown")))]
pub use condition::now;
pub use condition::{Condition, ConditionStatus, conditions, rfc3339};
pub use error::{Error, Result};
pub use fields::Fields;
pub use object::{Child, child, reference};
pub use request::RequestExt;
pub use response::{ResponseExt, finalized};

pub use serde_json::{self, Value, json};
pub use wasmop_abi::{
    self as abi, ABI_VERSION, ControllerInfo, Event, EventType, ReconcileRequest,
    ReconcileResponse, Related, child_key,
};

#[doc(hidden)]
pub use call::private as __private;

/// Everything a plugin usually needs: `use wasmop_pdk::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Child, Condition, ConditionStatus, Error, Event, EventType, Fields, ReconcileRequest,
        ReconcileResponse, RequestExt, ResponseExt, Result, Value, child, conditions, finalized,
        json, reference,
    };
}

/// Exports plugin functions to the Extism host (wasm builds only; a no-op natively).
///
/// ```ignore
/// wasmop_pdk::export!(reconcile);                                  // `reconcile` only
/// wasmop_pdk::export!(reconcile = my_reconcile, finalize = my_finalize);
/// ```
///
/// Each function is a [`Handler`]: `fn(&ReconcileRequest)` or `fn(ReconcileRequest)`
/// returning `Result<ReconcileResponse, E: Display>`. An `Err` becomes a failed call (return
/// code 1) whose message is the error's `Display` text, verbatim.
///
/// Use it once per crate, at the crate root. It defines the module `__wasmop_exports` and the
/// functions `__wasmop_reconcile`/`__wasmop_finalize` there.
///
/// # Caveats
/// The exports come from extism-pdk's `#[plugin_fn]`, whose expansion contains `#[no_mangle]`
/// and an `unsafe` block; the generated module allows `unsafe_code` for itself. So the plugin
/// crate must set `unsafe_code = "deny"` rather than the workspace's `forbid` (which cannot be
/// allowed locally): `[lints.rust] unsafe_code = "deny"` instead of `[lints] workspace = true`.
#[macro_export]
macro_rules! export {
    ($reconcile:path $(,)?) => {
        $crate::export!(reconcile = $reconcile);
    };
    (reconcile = $reconcile:path $(, finalize = $finalize:path)? $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        fn __wasmop_reconcile(
            input: &[u8],
        ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::Error> {
            $crate::call_json(input, $reconcile)
        }

        $(
            #[cfg(target_arch = "wasm32")]
            #[doc(hidden)]
            fn __wasmop_finalize(
                input: &[u8],
            ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::Error> {
                $crate::call_json(input, $finalize)
            }
        )?

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __wasmop_exports {
            // extism-pdk's #[plugin_fn] expands to the `#[no_mangle] extern "C"` shim the host
            // calls, with an `unsafe` block to set the error message.
            #![allow(unsafe_code)]
            use $crate::__private::extism_pdk;

            #[extism_pdk::plugin_fn]
            pub fn reconcile(
                input: ::std::vec::Vec<u8>,
            ) -> extism_pdk::FnResult<::std::vec::Vec<u8>> {
                $crate::__private::to_fn_result(super::__wasmop_reconcile(&input))
            }

            $(
                #[extism_pdk::plugin_fn]
                pub fn finalize(
                    input: ::std::vec::Vec<u8>,
                ) -> extism_pdk::FnResult<::std::vec::Vec<u8>> {
                    let _ = stringify!($finalize);
                    $crate::__private::to_fn_result(super::__wasmop_finalize(&input))
                }
            )?
        }
    };
}
