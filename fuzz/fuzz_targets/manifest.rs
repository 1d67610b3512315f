//! Fuzz target `manifest`: the body is `policy_fuzz_harness::manifest`, which the normal tests also run
//! on every input kept under `fuzz/regressions/manifest/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_fuzz_harness::manifest(data));
