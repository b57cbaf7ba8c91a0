//! libFuzzer entry point for the `config` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("config").expect("registered")(data));
