//! Fuzz target `ext_proc_stream`: the body is `policy_fuzz_harness::ext_proc_stream`, which the normal tests also run
//! on every input kept under `fuzz/regressions/ext_proc_stream/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_fuzz_harness::ext_proc_stream(data));
