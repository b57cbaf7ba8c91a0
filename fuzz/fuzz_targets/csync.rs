//! libFuzzer entry point for the `csync` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("csync").expect("registered")(data));
