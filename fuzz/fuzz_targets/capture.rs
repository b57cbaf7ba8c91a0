//! libFuzzer entry point for the `capture` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("capture").expect("registered")(data));
