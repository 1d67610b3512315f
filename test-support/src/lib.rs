//! What the tests share: small [`policies`] that exercise the engine's semantics (for the core's
//! and the hosts' tests), the end-to-end harness that runs an engine behind a real Envoy
//! ([`envoy`], for the end-to-end and the builder's tests), and signed tokens with a JWKS
//! endpoint ([`jwt`], for the JWT sample's and the end-to-end tests).
#![allow(
    missing_debug_implementations,
    clippy::new_without_default,
    reason = "test fixtures: never printed, built only where a test says so"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "the harness polls processes it started, on test threads of its own"
)]

pub mod envoy;
pub mod jwt;
pub mod policies;
pub mod redis;
