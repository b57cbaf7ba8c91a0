//! libFuzzer entry point for the `dsync` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("dsync").expect("registered")(data));
