//! libFuzzer entry point for the `frame` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("frame").expect("registered")(data));
