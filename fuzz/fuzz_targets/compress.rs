//! libFuzzer entry point for the `compress` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("compress").expect("registered")(data));
