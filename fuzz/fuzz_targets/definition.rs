//! Fuzz target `definition`: the body is `policy_fuzz_harness::definition`, which the normal tests also run
//! on every input kept under `fuzz/regressions/definition/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_fuzz_harness::definition(data));
