//! The builder's reusable part: the manifest model and the problem reports every stage uses.
//! The `policy-builder` binary wires the stages; the fuzz harness reads manifests through here.

pub mod manifest;
pub mod report;
