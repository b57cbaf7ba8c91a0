//! libFuzzer entry point for the `sasl` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("sasl").expect("registered")(data));
