//! End-to-end tests live in `tests/tests/`; shared helpers in this crate are for them only.
