//! libFuzzer entry point for the `mupdate` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("mupdate").expect("registered")(data));
