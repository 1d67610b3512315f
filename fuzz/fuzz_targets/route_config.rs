//! Fuzz target `route_config`: the body is `policy_fuzz_harness::route_config`, which the normal tests also run
//! on every input kept under `fuzz/regressions/route_config/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_fuzz_harness::route_config(data));
