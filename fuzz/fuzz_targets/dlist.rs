//! libFuzzer entry point for the `dlist` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("dlist").expect("registered")(data));
