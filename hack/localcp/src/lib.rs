//! Local control plane launcher (see issue 10).
